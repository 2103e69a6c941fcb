package istiogen

import (
	"testing"

	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	networkingapi "istio.io/api/networking/v1alpha3"

	// The ext_authz type, so that protojson resolves the patch's Any.
	extauthz "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
)

// TestLabelsFilterPatchesIstiosExtAuthz: the EnvoyFilter matches the HTTP
// filter Istio generates for a CUSTOM provider (named
// envoy.filters.http.ext_authz in the connection manager of the inbound
// listener, istio/istio pilot/pkg/security/authz/builder) and MERGEs into it
// an ExtAuthz whose only field is bootstrap_metadata_labels_key: LABELS, the
// node metadata key of an Istio proxy's pod labels. Istio merges the patch
// value, decoded as an HttpFilter, into the generated filter; decoded the
// same way here, it must hold exactly that.
func TestLabelsFilterPatchesIstiosExtAuthz(t *testing.T) {
	out, err := Generate(baseConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(out.EnvoyFilters) != len(out.AuthorizationPolicies) {
		t.Fatalf("%d envoy filters for %d CUSTOM policies", len(out.EnvoyFilters), len(out.AuthorizationPolicies))
	}
	for i, ef := range out.EnvoyFilters {
		ap := out.AuthorizationPolicies[i]
		if ef.Namespace != ap.Namespace || ef.Name != ap.Name ||
			!equalLabels(ef.Spec.GetWorkloadSelector().GetLabels(), ap.Spec.GetSelector().GetMatchLabels()) {
			t.Errorf("envoy filter %s/%s does not select what policy %s/%s does", ef.Namespace, ef.Name, ap.Namespace, ap.Name)
		}
		if len(ef.Spec.ConfigPatches) != 1 {
			t.Fatalf("patches = %v", ef.Spec.ConfigPatches)
		}
		p := ef.Spec.ConfigPatches[0]
		sub := p.GetMatch().GetListener().GetFilterChain().GetFilter()
		if p.ApplyTo != networkingapi.EnvoyFilter_HTTP_FILTER || p.Patch.Operation != networkingapi.EnvoyFilter_Patch_MERGE ||
			sub.GetName() != "envoy.filters.network.http_connection_manager" || sub.GetSubFilter().GetName() != "envoy.filters.http.ext_authz" {
			t.Fatalf("patch does not MERGE into Istio's ext_authz filter: %v", p)
		}
		js, err := protojson.Marshal(p.Patch.Value)
		if err != nil {
			t.Fatal(err)
		}
		var f hcm.HttpFilter
		if err := (protojson.UnmarshalOptions{}).Unmarshal(js, &f); err != nil {
			t.Fatalf("patch value is not an HttpFilter: %v\n%s", err, js)
		}
		var ea extauthz.ExtAuthz
		if err := f.GetTypedConfig().UnmarshalTo(&ea); err != nil {
			t.Fatal(err)
		}
		want := &extauthz.ExtAuthz{BootstrapMetadataLabelsKey: NodeLabelsKey}
		if !proto.Equal(&ea, want) {
			t.Errorf("merged ExtAuthz = %v, want only bootstrap_metadata_labels_key", &ea)
		}
	}
}

func equalLabels(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}
