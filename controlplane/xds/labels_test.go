package xds

import (
	"encoding/json"
	"testing"

	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extauthz "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/meshguard/meshguard/policies/wire"
)

// TestRoutesCarryTheWorkloadsLabels: two workloads of one SPIFFE ID that
// differ only in labels get routes whose ext_authz context extensions name
// every label of their own workload and say that these are all of them; the
// filter configuration lists the same labels as complete. Without this the
// authz server cannot apply a selector-scoped policy to either.
func TestRoutesCarryTheWorkloadsLabels(t *testing.T) {
	m, eb := loadCase(t, "testdata/in/versions.yaml")
	g := NewGenerator(m)
	for _, w := range m.Workloads {
		snap, err := g.Snapshot(w, eb)
		if err != nil {
			t.Fatal(err)
		}
		rc := snap.GetResources(resource.RouteType)["inbound_http"].(*route.RouteConfiguration)
		var pr extauthz.ExtAuthzPerRoute
		if err := rc.VirtualHosts[0].Routes[0].TypedPerFilterConfig[filterExtAuthz].UnmarshalTo(&pr); err != nil {
			t.Fatal(err)
		}
		ext := pr.GetCheckSettings().GetContextExtensions()
		want := map[string]string{
			wire.ContextRoute: "catalog", wire.ContextNamespace: "bookstore", wire.ContextService: "catalog",
			wire.ContextWorkload: "spiffe://cluster.local/ns/bookstore/sa/catalog", wire.ContextPolicyScope: "bookstore/" + w.Name,
			wire.ContextResolved: "true", wire.ContextLabelPrefix + "app": "catalog",
			wire.ContextLabelPrefix + "version": w.Labels["version"],
		}
		if len(ext) != len(want) {
			t.Errorf("%s: context extensions %v, want %v", w.Key, ext, want)
		}
		for k, v := range want {
			if ext[k] != v {
				t.Errorf("%s: %s = %q, want %q", w.Key, k, ext[k], v)
			}
		}

		// The HTTP filter chain: the wasm filter only where enabled.
		l := snap.GetResources(resource.ListenerType)["inbound_http"].(*listener.Listener)
		var mgr hcm.HttpConnectionManager
		if err := l.FilterChains[0].Filters[0].GetTypedConfig().UnmarshalTo(&mgr); err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, f := range mgr.HttpFilters {
			names = append(names, f.Name)
		}
		wantChain := []string{wire.FilterConfigName, filterExtAuthz, filterRouter}
		if w.DisableWasm {
			wantChain = wantChain[1:]
		}
		if len(names) != len(wantChain) {
			t.Fatalf("%s: filters %v, want %v", w.Key, names, wantChain)
		}
		for i := range names {
			if names[i] != wantChain[i] {
				t.Fatalf("%s: filters %v, want %v", w.Key, names, wantChain)
			}
		}
		_, hasFilter := snap.GetResources(resource.ExtensionConfigType)[wire.FilterConfigName]
		if hasFilter == w.DisableWasm {
			t.Errorf("%s: wasm filter config sent %v, wasm disabled %v", w.Key, hasFilter, w.DisableWasm)
		}
	}

	fc, err := g.FilterConfig(eb)
	if err != nil {
		t.Fatal(err)
	}
	var cfg wire.FilterConfig
	if err := json.Unmarshal(fc, &cfg); err != nil {
		t.Fatal(err)
	}
	v1, ok := cfg.Workloads["catalog-v1.bookstore"]
	if !ok || v1.LabelsFrom != wire.LabelsFromConfig || v1.Labels["version"] != "v1" || len(cfg.Workloads) != 1 {
		t.Fatalf("filter config workloads %+v (catalog-v2 runs no filter)", cfg.Workloads)
	}
}

// TestMeshWithoutWasm: a mesh whose Envoy nodes all run without the wasm
// filter needs no filter configuration.
func TestMeshWithoutWasm(t *testing.T) {
	m, eb := loadCase(t, "testdata/in/versions.yaml")
	for _, w := range m.Workloads {
		w.DisableWasm = true
	}
	g := NewGenerator(m)
	eb, err := g.Encode(eb.Bundle)
	if err != nil {
		t.Fatal(err)
	}
	if eb.Filter != nil {
		t.Fatal("filter configuration built for a mesh without filters")
	}
	for _, w := range m.Workloads {
		if _, err := g.Snapshot(w, eb); err != nil {
			t.Fatal(err)
		}
	}
}
