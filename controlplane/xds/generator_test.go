package xds

import (
	"encoding/json"
	"strings"
	"testing"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extauthz "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	router "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	wasmfilter "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/wasm/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	wasmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/wasm/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/wire"
)

func TestFilterConfigCarriesTheBundle(t *testing.T) {
	m, eb := loadCase(t, "testdata/in/basic.yaml")
	g := NewGenerator(m)
	snap, err := g.Snapshot(m.Workloads[0], eb)
	if err != nil {
		t.Fatal(err)
	}
	ecds := snap.GetResources(resource.ExtensionConfigType)
	fres, ok := ecds[wire.FilterConfigName].(*core.TypedExtensionConfig)
	if !ok {
		t.Fatalf("no %s in %v", wire.FilterConfigName, ecds)
	}
	var w wasmfilter.Wasm
	if err := fres.TypedConfig.UnmarshalTo(&w); err != nil {
		t.Fatal(err)
	}
	var cfgStr wrapperspb.StringValue
	if err := w.Config.Configuration.UnmarshalTo(&cfgStr); err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(strings.NewReader(cfgStr.Value))
	dec.DisallowUnknownFields()
	var fc wire.FilterConfig
	if err := dec.Decode(&fc); err != nil {
		t.Fatalf("filter config is not wire.FilterConfig: %v", err)
	}
	// One configuration for the mesh: it names no workload and lists
	// every Envoy workload under the key nodes are matched by.
	web := fc.Workloads["web.shop"]
	if fc.Workload.ID != "" || web.ID != "spiffe://example.org/ns/shop/sa/web" || web.Namespace != "shop" || !fc.RequireMTLS {
		t.Fatalf("workload = %+v, workloads = %+v, requireMtls=%v", fc.Workload, fc.Workloads, fc.RequireMTLS)
	}
	if len(fc.Workloads) != len(m.Workloads) {
		t.Fatalf("%d workloads listed, mesh has %d", len(fc.Workloads), len(m.Workloads))
	}
	if fc.ControlPlane.Cluster != ClusterControlPlane || fc.ControlPlane.Path != wire.EventsPath {
		t.Fatalf("control plane = %+v", fc.ControlPlane)
	}
	b, err := policies.DecodeBundle(fc.Bundle)
	if err != nil {
		t.Fatalf("bundle in the filter config does not decode: %v", err)
	}
	if b.Hash != eb.Bundle.Hash {
		t.Fatal("filter config carries another bundle")
	}
	// The same bundle is served to authz servers.
	bres := ecds[wire.BundleResourceName].(*core.TypedExtensionConfig)
	var bs wrapperspb.StringValue
	if err := bres.TypedConfig.UnmarshalTo(&bs); err != nil {
		t.Fatal(err)
	}
	if bs.Value != string(fc.Bundle) {
		t.Fatal("authz bundle resource and filter bundle differ")
	}
}

func TestExtAuthzFailsClosed(t *testing.T) {
	m, eb := loadCase(t, "testdata/in/basic.yaml")
	snap, err := NewGenerator(m).Snapshot(m.Workloads[0], eb)
	if err != nil {
		t.Fatal(err)
	}
	l := snap.GetResources(resource.ListenerType)["inbound_http"].(*listener.Listener)
	mgr := resource.GetHTTPConnectionManager(l.FilterChains[0].Filters[0])
	names := []string{}
	for _, f := range mgr.HttpFilters {
		names = append(names, f.Name)
	}
	if strings.Join(names, ",") != wire.FilterConfigName+",envoy.filters.http.ext_authz,envoy.filters.http.router" {
		t.Fatalf("filter order = %v", names)
	}
	if mgr.HttpFilters[0].GetConfigDiscovery().GetDefaultConfig() != nil {
		t.Fatal("the wasm filter must have no default config (the listener warms until the policy arrives)")
	}
	if mgr.ForwardClientCertDetails != hcm.HttpConnectionManager_SANITIZE_SET {
		t.Fatal("client XFCC must be sanitized")
	}
	if l.FilterChains[0].TransportSocket == nil {
		t.Fatal("inbound listener without TLS")
	}
}

func TestAssembleRejectsInvalidAndInconsistent(t *testing.T) {
	tests := []struct {
		name string
		res  map[resource.Type][]types.Resource
		want string
	}{
		{"invalid cluster", map[resource.Type][]types.Resource{
			resource.ClusterType: {&cluster.Cluster{Name: ""}},
		}, "Name"},
		{"listener references a missing route", map[resource.Type][]types.Resource{
			resource.ListenerType: {mustListenerWithRDS(t, "missing")},
		}, ""},
		// Broken inside an Any, where ValidateAll does not look.
		{"HTTP connection manager without stat_prefix", map[resource.Type][]types.Resource{
			resource.ListenerType: {brokenListener(t, func(m *hcm.HttpConnectionManager) { m.StatPrefix = "" })},
			resource.RouteType:    {&route.RouteConfiguration{Name: "r"}},
		}, "typed_config<envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager>: invalid HttpConnectionManager.StatPrefix"},
		{"ext_authz with an empty gRPC cluster", map[resource.Type][]types.Resource{
			resource.ListenerType: {brokenListener(t, func(m *hcm.HttpConnectionManager) {
				m.HttpFilters = append([]*hcm.HttpFilter{{Name: filterExtAuthz, ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: mustAny(&extauthz.ExtAuthz{
					Services: &extauthz.ExtAuthz_GrpcService{GrpcService: &core.GrpcService{TargetSpecifier: &core.GrpcService_EnvoyGrpc_{EnvoyGrpc: &core.GrpcService_EnvoyGrpc{}}}},
				})}}}, m.HttpFilters...)
			})},
			resource.RouteType: {&route.RouteConfiguration{Name: "r"}},
		}, "typed_config<envoy.extensions.filters.http.ext_authz.v3.ExtAuthz>: invalid ExtAuthz.GrpcService"},
		{"wasm filter config without a VM", map[resource.Type][]types.Resource{
			resource.ExtensionConfigType: {&core.TypedExtensionConfig{Name: wire.FilterConfigName, TypedConfig: mustAny(&wasmfilter.Wasm{Config: &wasmv3.PluginConfig{Name: wire.FilterConfigName}})}},
		}, "without vm_config"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := assemble(tt.res, map[resource.Type]string{})
			if err == nil {
				t.Fatal("accepted")
			}
			if tt.want != "" && !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v", err)
			}
		})
	}
}

// brokenListener is a listener with RDS route "r" whose connection manager
// break changes.
func brokenListener(t *testing.T, brk func(*hcm.HttpConnectionManager)) *listener.Listener {
	t.Helper()
	m := &hcm.HttpConnectionManager{
		StatPrefix:     "x",
		RouteSpecifier: &hcm.HttpConnectionManager_Rds{Rds: &hcm.Rds{ConfigSource: adsSource(), RouteConfigName: "r"}},
		HttpFilters:    []*hcm.HttpFilter{{Name: filterRouter, ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: mustAny(&router.Router{})}}},
	}
	brk(m)
	l := &listener.Listener{
		Name:         "l",
		Address:      socketAddress("0.0.0.0", 1),
		FilterChains: []*listener.FilterChain{{Filters: []*listener.Filter{{Name: filterHCM, ConfigType: &listener.Filter_TypedConfig{TypedConfig: mustAny(m)}}}}},
	}
	if err := l.ValidateAll(); err != nil {
		t.Fatalf("the listener must pass ValidateAll, which does not look inside its Anys: %v", err)
	}
	return l
}

func mustListenerWithRDS(t *testing.T, route string) *listener.Listener {
	t.Helper()
	mgr, err := marshalAny(&hcm.HttpConnectionManager{
		StatPrefix:     "x",
		RouteSpecifier: &hcm.HttpConnectionManager_Rds{Rds: &hcm.Rds{ConfigSource: adsSource(), RouteConfigName: route}},
		HttpFilters:    []*hcm.HttpFilter{{Name: filterRouter, ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: mustAny(&wrapperspb.StringValue{})}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return &listener.Listener{
		Name:         "l",
		Address:      socketAddress("0.0.0.0", 1),
		FilterChains: []*listener.FilterChain{{Filters: []*listener.Filter{{Name: filterHCM, ConfigType: &listener.Filter_TypedConfig{TypedConfig: mgr}}}}},
	}
}

// TestSnapshotsShareTheBundleResources: every node's snapshot holds the
// very resources Encode built (one copy of the bundle for the fleet), and
// the filter configuration is a valid, fail-closed Wasm config.
func TestSnapshotsShareTheBundleResources(t *testing.T) {
	for _, in := range []string{"testdata/in/basic.yaml", "testdata/in/overrides.yaml", "testdata/in/proxyless.yaml"} {
		m, eb := loadCase(t, in)
		g := NewGenerator(m)
		for _, w := range m.Workloads {
			snap, err := g.Snapshot(w, eb)
			if err != nil {
				t.Fatal(err)
			}
			ecds := snap.GetResources(resource.ExtensionConfigType)
			if ecds[wire.BundleResourceName] != eb.Resource {
				t.Fatalf("%s: bundle resource is not the shared one", w.Key)
			}
			if w.Proxyless {
				if _, ok := ecds[wire.FilterConfigName]; ok {
					t.Fatalf("%s: proxyless node got the wasm filter config", w.Key)
				}
				continue
			}
			if ecds[wire.FilterConfigName] != eb.Filter {
				t.Fatalf("%s: filter config is not the shared one", w.Key)
			}
		}
		if eb.Filter == nil {
			continue
		}
		if err := eb.Filter.ValidateAll(); err != nil {
			t.Fatal(err)
		}
		var decoded wasmfilter.Wasm
		if err := eb.Filter.TypedConfig.UnmarshalTo(&decoded); err != nil {
			t.Fatal(err)
		}
		if decoded.Config.FailurePolicy != wasmv3.FailurePolicy_FAIL_CLOSED || decoded.Config.Name != wire.FilterConfigName {
			t.Fatalf("%s: %+v", in, decoded.Config)
		}
	}
}

func TestSnapshotNeedsTheFilterConfig(t *testing.T) {
	m, eb := loadCase(t, "testdata/in/basic.yaml")
	bare, err := EncodeBundle(eb.Bundle)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewGenerator(m).Snapshot(m.Workloads[0], bare); err == nil || !strings.Contains(err.Error(), "Generator.Encode") {
		t.Fatalf("err = %v", err)
	}
}
