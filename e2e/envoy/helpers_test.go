//go:build e2e

package envoy

import (
	"encoding/json"
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	"google.golang.org/protobuf/encoding/protojson"
)

// TestBootstrapValidates: the bootstrap the real-Envoy test writes (the
// shipped one, adapted) decodes strictly and passes Envoy's generated
// validation, so that an Envoy run fails on meshguard's configuration, not
// on the test's. Runs without Envoy.
func TestBootstrapValidates(t *testing.T) {
	js := bootstrap(t, "catalog-envoy-e2e", "catalog.bookstore", "127.0.0.1:9901", 18000, sa("meshguard", "controlplane"), "/tmp/x/agent.sock")
	var b bootstrapv3.Bootstrap
	if err := protojson.Unmarshal(js, &b); err != nil {
		t.Fatal(err)
	}
	if err := b.ValidateAll(); err != nil {
		t.Fatal(err)
	}
	s := string(js)
	for _, want := range []string{`"cluster":"catalog.bookstore"`, `"path":"/tmp/x/agent.sock"`, `"exact":"spiffe://cluster.local/ns/meshguard/sa/controlplane"`, `"portValue":18000`} {
		if !strings.Contains(s, want) {
			t.Errorf("bootstrap lacks %s:\n%s", want, s)
		}
	}
}

// TestConfigDumpCheck reads a v3 config dump shaped as Envoy's admin
// /config_dump writes it (envoy.admin.v3 field names) and refuses one whose
// listener is still warming or that uses v2 names. Runs without Envoy.
func TestConfigDumpCheck(t *testing.T) {
	dump := `{"configs": [
 {"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump", "dynamic_active_clusters": [
   {"cluster": {"name": "meshguard_authz"}}, {"cluster": {"name": "meshguard_controlplane"}}, {"cluster": {"name": "inbound_app_http"}}]},
 {"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump", "dynamic_listeners": [
   {"name": "inbound_http", "active_state": {"version_info": "1", "listener": {"name": "inbound_http"}}}]},
 {"@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump", "dynamic_route_configs": [{"route_config": {"name": "inbound_http"}}]},
 {"@type": "type.googleapis.com/envoy.admin.v3.SecretsConfigDump", "dynamic_active_secrets": [
   {"name": "spiffe://cluster.local/ns/bookstore/sa/catalog"}, {"name": "spiffe://cluster.local"}]},
 {"@type": "type.googleapis.com/envoy.admin.v3.EcdsConfigDump", "ecds_filters": [{"ecds_filter": {"name": "meshguard-wasm"}}]}
]}`
	var d configDump
	if err := json.Unmarshal([]byte(dump), &d); err != nil {
		t.Fatal(err)
	}
	if err := d.check(true, "spiffe://cluster.local/ns/bookstore/sa/catalog"); err != nil {
		t.Fatalf("a complete dump refused: %v", err)
	}
	warming := strings.Replace(dump, `"active_state"`, `"warming_state"`, 1)
	v2 := strings.Replace(dump, `"dynamic_listeners"`, `"dynamic_active_listeners"`, 1)
	for name, bad := range map[string]string{"warming": warming, "v2 names": v2} {
		var d configDump
		if err := json.Unmarshal([]byte(bad), &d); err != nil {
			t.Fatal(err)
		}
		if err := d.check(true, "spiffe://cluster.local/ns/bookstore/sa/catalog"); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
