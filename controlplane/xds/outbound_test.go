package xds

import (
	"encoding/json"
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	wasmfilter "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/wasm/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshguard/meshguard/controlplane/mesh"
	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/wire"
)

const outboundMesh = `apiVersion: meshguard.dev/v1alpha1
kind: Mesh
metadata: {name: shop}
spec:
  trustDomain: example.org
  authz: {address: authz.meshguard.svc, port: 9191, spiffeID: spiffe://example.org/ns/meshguard/sa/authz}
  controlPlane: {address: controlplane.meshguard.svc, port: 8443, spiffeID: spiffe://example.org/ns/meshguard/sa/controlplane}
  wasm: {file: /etc/meshguard/meshguard.wasm}
  workloads:
  - name: web
    namespace: shop
    spiffeID: spiffe://example.org/ns/shop/sa/web
    inbound: [{name: http, port: 15006, appPort: 8080, routes: [{name: web, prefix: /}]}]
    upstreams:
    - {name: ledger, address: 10.0.0.7, port: 15006, spiffeID: spiffe://example.org/ns/pay/sa/ledger, listenPort: 9001}
    - {name: named, address: 10.0.0.8, port: 15006, spiffeID: spiffe://example.org/ns/pay/sa/ledger, listenPort: 9002, service: books, namespace: store}
    - {name: shared, address: catalog.store.svc.cluster.local, port: 15006, spiffeID: spiffe://example.org/ns/store/sa/catalog, listenPort: 9003}
    - {name: external, address: api.example.com, port: 443, spiffeID: spiffe://example.org/ns/ext/sa/gw, listenPort: 9004}
  - name: ledger
    namespace: pay
    spiffeID: spiffe://example.org/ns/pay/sa/ledger
    inbound: [{name: http, port: 15006, appPort: 8080, routes: [{name: ledger, prefix: /}]}]
  - {name: catalog-a, namespace: store, service: catalog-a, spiffeID: spiffe://example.org/ns/store/sa/catalog, inbound: [{name: http, port: 15006, appPort: 8080, routes: [{name: c, prefix: /}]}]}
  - {name: catalog-b, namespace: store, service: catalog-b, spiffeID: spiffe://example.org/ns/store/sa/catalog, inbound: [{name: http, port: 15006, appPort: 8080, routes: [{name: c, prefix: /}]}]}
  - name: legacy
    namespace: shop
    spiffeID: spiffe://example.org/ns/shop/sa/legacy
    disableWasm: true
    inbound: [{name: http, port: 15006, appPort: 8080, routes: [{name: legacy, prefix: /}]}]
    upstreams:
    - {name: ledger, address: 10.0.0.7, port: 15006, spiffeID: spiffe://example.org/ns/pay/sa/ledger, listenPort: 9001}
`

// TestOutboundSide: every Envoy listener says its traffic direction; the
// outbound listeners run the meshguard filter (the same ECDS resource)
// before the router, unless the workload disables the filter; the filter
// configuration asks each listener for its direction and names the
// destination of every outbound cluster.
func TestOutboundSide(t *testing.T) {
	m, err := mesh.Parse([]byte(outboundMesh))
	if err != nil {
		t.Fatal(err)
	}
	b, _, err := policies.NewBundle("v1", policies.Set{})
	if err != nil {
		t.Fatal(err)
	}
	g := NewGenerator(m)
	eb, err := g.Encode(b)
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"web.shop", "legacy.shop"} {
		w, _ := m.Lookup(key, "")
		snap, err := g.Snapshot(w, eb)
		if err != nil {
			t.Fatal(err)
		}
		for name, r := range snap.GetResources(resource.ListenerType) {
			l := r.(*listener.Listener)
			var mgr hcm.HttpConnectionManager
			if err := l.FilterChains[0].Filters[0].GetTypedConfig().UnmarshalTo(&mgr); err != nil {
				t.Fatal(err)
			}
			var filters []string
			for _, f := range mgr.HttpFilters {
				filters = append(filters, f.Name)
			}
			wantDir := core.TrafficDirection_INBOUND
			want := []string{wire.FilterConfigName, filterExtAuthz, filterRouter}
			if name[:len("outbound_")] == "outbound_" {
				wantDir, want = core.TrafficDirection_OUTBOUND, []string{wire.FilterConfigName, filterRouter}
			}
			if w.DisableWasm {
				want = want[1:]
			}
			if l.TrafficDirection != wantDir || !equal(filters, want) {
				t.Errorf("%s: listener %s: direction %s, filters %v; want %s, %v", key, name, l.TrafficDirection, filters, wantDir, want)
			}
		}
	}
	fc := filterConfig(t, eb)
	if fc.Direction != wire.DirectionListener {
		t.Errorf("direction %q", fc.Direction)
	}
	want := map[string]string{
		"outbound|ledger":   "ledger.pay",      // the mesh workload with its SPIFFE ID
		"outbound|named":    "books.store",     // as the mesh description names it
		"outbound|shared":   "catalog.store",   // two workloads disagree: the address
		"outbound|external": "api.example.com", // a host
	}
	got := fc.Workloads["web.shop"].Upstreams
	if len(got) != len(want) {
		t.Fatalf("upstreams %+v", got)
	}
	for c, u := range want {
		if got[c] != u {
			t.Errorf("upstream %s = %q, want %q", c, got[c], u)
		}
	}
	if _, ok := fc.Workloads["legacy.shop"]; ok {
		t.Error("a workload without the filter is in its configuration")
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// filterConfig decodes the wasm filter's configuration that eb carries.
func filterConfig(t *testing.T, eb *EncodedBundle) wire.FilterConfig {
	t.Helper()
	var w wasmfilter.Wasm
	if err := eb.Filter.TypedConfig.UnmarshalTo(&w); err != nil {
		t.Fatal(err)
	}
	var sv wrapperspb.StringValue
	if err := w.Config.Configuration.UnmarshalTo(&sv); err != nil {
		t.Fatal(err)
	}
	var fc wire.FilterConfig
	if err := json.Unmarshal([]byte(sv.Value), &fc); err != nil {
		t.Fatal(err)
	}
	return fc
}
