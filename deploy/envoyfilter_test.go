package deploy_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"

	"github.com/meshguard/meshguard/controlplane/istiogen"
	"github.com/meshguard/meshguard/internal/testbed/kubestrict"
	"github.com/meshguard/meshguard/internal/xdsvalidate"
	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/wire"
)

// patchTypes is the Envoy type of an EnvoyFilter patch value, by applyTo
// (Istio's networking/v1alpha3 EnvoyFilter).
var patchTypes = map[string]func() proto.Message{
	"LISTENER":            func() proto.Message { return &listener.Listener{} },
	"FILTER_CHAIN":        func() proto.Message { return &listener.FilterChain{} },
	"NETWORK_FILTER":      func() proto.Message { return &listener.Filter{} },
	"LISTENER_FILTER":     func() proto.Message { return &listener.ListenerFilter{} },
	"HTTP_FILTER":         func() proto.Message { return &hcm.HttpFilter{} },
	"ROUTE_CONFIGURATION": func() proto.Message { return &route.RouteConfiguration{} },
	"VIRTUAL_HOST":        func() proto.Message { return &route.VirtualHost{} },
	"HTTP_ROUTE":          func() proto.Message { return &route.Route{} },
	"CLUSTER":             func() proto.Message { return &cluster.Cluster{} },
	"EXTENSION_CONFIG":    func() proto.Message { return &core.TypedExtensionConfig{} },
	"BOOTSTRAP":           func() proto.Message { return &bootstrapv3.Bootstrap{} },
}

// envoyFilterPatches checks every config patch of an EnvoyFilter document
// as Envoy would read it: the value decodes strictly into the Envoy type
// its applyTo names (unknown fields and unlinked @types fail) and is
// validated in depth — whole for the operations that add or replace, what
// it packs for a MERGE (its own required fields come from the object it
// merges into). Other documents are skipped.
func envoyFilterPatches(doc []byte) (int, error) {
	var ef struct {
		Kind string `json:"kind"`
		Spec struct {
			ConfigPatches []struct {
				ApplyTo string `json:"applyTo"`
				Patch   struct {
					Operation string          `json:"operation"`
					Value     json.RawMessage `json:"value"`
				} `json:"patch"`
			} `json:"configPatches"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal(doc, &ef); err != nil {
		return 0, err
	}
	if ef.Kind != "EnvoyFilter" {
		return 0, nil
	}
	for i, p := range ef.Spec.ConfigPatches {
		if p.Patch.Operation == "REMOVE" {
			continue
		}
		newMsg, ok := patchTypes[p.ApplyTo]
		if !ok {
			return i, fmt.Errorf("configPatches[%d]: applyTo %q: no Envoy type known", i, p.ApplyTo)
		}
		m := newMsg()
		if err := protojson.Unmarshal(p.Patch.Value, m); err != nil {
			return i, fmt.Errorf("configPatches[%d]: value is no %T: %w", i, m, err)
		}
		validate := xdsvalidate.All
		if p.Patch.Operation == "MERGE" {
			validate = xdsvalidate.Packed
		}
		if err := validate(m); err != nil {
			return i, fmt.Errorf("configPatches[%d] (%s %s): %w", i, p.Patch.Operation, p.ApplyTo, err)
		}
	}
	return len(ef.Spec.ConfigPatches), nil
}

// TestEnvoyFilterPatches: the Envoy configuration inside the EnvoyFilters
// shipped in deploy/istio and written by `meshguard istio generate` (for
// sidecars and gateways) is what Envoy accepts, and a broken patch is
// refused.
func TestEnvoyFilterPatches(t *testing.T) {
	var streams = map[string][]byte{}
	files, err := filepath.Glob("istio/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		streams[f] = data
	}
	b, _, err := policies.NewBundle("", policies.Set{})
	if err != nil {
		t.Fatal(err)
	}
	out, err := istiogen.Generate(istiogen.Config{
		Bundle:   b,
		Provider: istiogen.Provider{Service: "meshguard-authz.meshguard.svc.cluster.local"},
		Wasm: istiogen.Wasm{URL: "oci://ghcr.io/meshguard/meshguard-filter:v0.1.0", ControlPlane: wire.ControlPlane{
			Cluster: "outbound|8443||meshguard-controlplane.meshguard.svc.cluster.local", Authority: "meshguard-controlplane.meshguard.svc.cluster.local",
		}},
		Targets: []istiogen.Target{
			{Namespace: "shop", Name: "api", Selector: map[string]string{"app": "api"}},
			{Namespace: "istio-system", Name: "ingress", Selector: map[string]string{"istio": "ingressgateway"}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if streams["istio generate"], err = out.ResourcesYAML(); err != nil {
		t.Fatal(err)
	}
	patches := 0
	for name, data := range streams {
		docs, err := kubestrict.Documents(data)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for _, doc := range docs {
			n, err := envoyFilterPatches(doc)
			if err != nil {
				t.Errorf("%s: %v", name, err)
			}
			patches += n
		}
	}
	if patches < 3 {
		t.Fatalf("%d patches checked: the shipped and generated EnvoyFilters hold at least 3", patches)
	}

	for _, bad := range []struct{ name, value, want string }{
		{"a misspelt field", `{"typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz", "bootstrap_metadata_label_key": "LABELS"}}`, "bootstrap_metadata_label_key"},
		{"an ext_authz gRPC service without a cluster", `{"typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz", "grpc_service": {"envoy_grpc": {"cluster_name": ""}}}}`, "ClusterName"},
	} {
		doc := []byte(`{"apiVersion": "networking.istio.io/v1alpha3", "kind": "EnvoyFilter", "metadata": {"name": "x"}, "spec": {"configPatches": [{"applyTo": "HTTP_FILTER", "patch": {"operation": "MERGE", "value": ` + bad.value + `}}]}}`)
		if _, err := envoyFilterPatches(doc); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%s: err = %v", bad.name, err)
		}
	}
}
