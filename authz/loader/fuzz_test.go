package loader

import (
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshguard/meshguard/policies/wire"
)

// FuzzDecodeResponse: any DiscoveryResponse the control plane (or a peer
// posing as it) sends is decoded without a panic; a bundle comes out only
// from a resource that holds one, and a heartbeat carries no bundle.
func FuzzDecodeResponse(f *testing.F) {
	sv, _ := anypb.New(wrapperspb.String(string(bundleJSON(f, "v1", set("one")))))
	tec, _ := anypb.New(&corev3.TypedExtensionConfig{Name: wire.BundleResourceName, TypedConfig: sv})
	wrapped, _ := anypb.New(&discoveryv3.Resource{Name: wire.BundleResourceName, Ttl: durationpb.New(30e9), Resource: tec})
	beat, _ := anypb.New(&discoveryv3.Resource{Name: wire.BundleResourceName, Ttl: durationpb.New(30e9)})
	for _, rs := range [][]*anypb.Any{{tec}, {wrapped}, {beat}, {beat, tec}, {wrapped, wrapped}, nil} {
		data, _ := proto.Marshal(&discoveryv3.DiscoveryResponse{VersionInfo: "x1", TypeUrl: wire.BundleTypeURL, Resources: rs})
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var resp discoveryv3.DiscoveryResponse
		if proto.Unmarshal(data, &resp) != nil {
			return
		}
		b, ttl, heartbeat, err := decodeResponse(&resp)
		if heartbeat && b != nil {
			t.Fatal("a heartbeat carried a bundle")
		}
		if err == nil && !heartbeat && b == nil {
			t.Fatal("no error, no heartbeat and no bundle")
		}
		if ttl < 0 {
			t.Fatalf("negative TTL %s", ttl)
		}
	})
}
