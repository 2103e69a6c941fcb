package xdsvalidate_test

import (
	"strings"
	"sync"
	"testing"

	xdstype "github.com/cncf/xds/go/xds/type/v3"
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extauthz "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	rbacfilter "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	router "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	wasmfilter "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/wasm/v3"
	tlsinspector "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	wasmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/wasm/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshguard/meshguard/internal/xdsvalidate"
)

func pack(t *testing.T, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// Valid building blocks, each broken by one case below.

func extAuthz() *extauthz.ExtAuthz {
	return &extauthz.ExtAuthz{Services: &extauthz.ExtAuthz_GrpcService{GrpcService: &core.GrpcService{
		TargetSpecifier: &core.GrpcService_EnvoyGrpc_{EnvoyGrpc: &core.GrpcService_EnvoyGrpc{ClusterName: "authz"}},
	}}}
}

func wasmPlugin() *wasmfilter.Wasm {
	return &wasmfilter.Wasm{Config: &wasmv3.PluginConfig{
		Name: "meshguard",
		Vm: &wasmv3.PluginConfig_VmConfig{VmConfig: &wasmv3.VmConfig{
			Runtime: "envoy.wasm.runtime.v8",
			Code:    &core.AsyncDataSource{Specifier: &core.AsyncDataSource_Local{Local: &core.DataSource{Specifier: &core.DataSource_Filename{Filename: "/f.wasm"}}}},
		}},
		Configuration: &anypb.Any{TypeUrl: "type.googleapis.com/google.protobuf.StringValue"},
	}}
}

func manager(t *testing.T, filters ...*hcm.HttpFilter) *hcm.HttpConnectionManager {
	return &hcm.HttpConnectionManager{
		StatPrefix: "inbound",
		RouteSpecifier: &hcm.HttpConnectionManager_RouteConfig{RouteConfig: &route.RouteConfiguration{
			Name: "r",
			VirtualHosts: []*route.VirtualHost{{Name: "v", Domains: []string{"*"}, Routes: []*route.Route{{
				Match:  &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
				Action: &route.Route_NonForwardingAction{NonForwardingAction: &route.NonForwardingAction{}},
			}}}},
		}},
		HttpFilters: append(filters, &hcm.HttpFilter{Name: "envoy.filters.http.router", ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: pack(t, &router.Router{})}}),
	}
}

func httpFilter(t *testing.T, name string, m proto.Message) *hcm.HttpFilter {
	return &hcm.HttpFilter{Name: name, ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: pack(t, m)}}
}

func listenerWith(t *testing.T, mgr proto.Message, tls proto.Message) *listener.Listener {
	l := &listener.Listener{
		Name: "l",
		Address: &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
			Address: "0.0.0.0", PortSpecifier: &core.SocketAddress_PortValue{PortValue: 8443},
		}}},
		ListenerFilters: []*listener.ListenerFilter{{Name: "envoy.filters.listener.tls_inspector", ConfigType: &listener.ListenerFilter_TypedConfig{TypedConfig: pack(t, &tlsinspector.TlsInspector{})}}},
		FilterChains: []*listener.FilterChain{{
			Filters: []*listener.Filter{{Name: "envoy.filters.network.http_connection_manager", ConfigType: &listener.Filter_TypedConfig{TypedConfig: pack(t, mgr)}}},
		}},
	}
	if tls != nil {
		l.FilterChains[0].TransportSocket = &core.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: pack(t, tls)}}
	}
	return l
}

func validatable(m proto.Message) error {
	return m.(interface{ ValidateAll() error }).ValidateAll()
}

// TestRefusesBrokenNestedConfig: each message below passes go-control-plane's
// ValidateAll, because what is broken sits inside an Any; All finds it and
// names the path to it.
func TestRefusesBrokenNestedConfig(t *testing.T) {
	rbac := &rbacfilter.RBAC{Rules: &rbacv3.RBAC{Policies: map[string]*rbacv3.Policy{"p": {
		Permissions: []*rbacv3.Permission{{Rule: &rbacv3.Permission_Any{Any: true}}},
		Principals: []*rbacv3.Principal{{Identifier: &rbacv3.Principal_Authenticated_{Authenticated: &rbacv3.Principal_Authenticated{
			PrincipalName: &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_SafeRegex{SafeRegex: &matcher.RegexMatcher{}}},
		}}}},
	}}}}
	noVM := wasmPlugin()
	noVM.Config.Vm = nil
	noRuntime := wasmPlugin()
	noRuntime.Config.GetVmConfig().Runtime = ""
	emptyCluster := extAuthz()
	emptyCluster.GetGrpcService().GetEnvoyGrpc().ClusterName = ""
	noStat := manager(t)
	noStat.StatPrefix = ""
	typed := &xdstype.TypedStruct{TypeUrl: "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"}
	var err error
	if typed.Value, err = structpb.NewStruct(map[string]any{"http_filters": []any{map[string]any{"name": "envoy.filters.http.router"}}}); err != nil {
		t.Fatal(err)
	}
	unknownField := pack(t, &router.Router{})
	unknownField.Value = protowire.AppendTag(unknownField.Value, 999, protowire.VarintType)
	unknownField.Value = protowire.AppendVarint(unknownField.Value, 1)
	deep := pack(t, manager(t))
	for range 20 {
		deep = pack(t, deep)
	}

	tests := []struct {
		name string
		msg  proto.Message
		want []string // substrings of the error, the path first
	}{
		{"HCM without stat_prefix", listenerWith(t, noStat, nil),
			[]string{"filter_chains[0].filters[0].typed_config<envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager>", "StatPrefix"}},
		{"ext_authz with an empty gRPC cluster name", listenerWith(t, manager(t, httpFilter(t, "envoy.filters.http.ext_authz", emptyCluster)), nil),
			[]string{"http_filters[0].typed_config<envoy.extensions.filters.http.ext_authz.v3.ExtAuthz>", "ClusterName"}},
		{"RBAC with an empty regex", listenerWith(t, manager(t, httpFilter(t, "envoy.filters.http.rbac", rbac)), nil),
			[]string{"typed_config<envoy.extensions.filters.http.rbac.v3.RBAC>", "Regex"}},
		{"wasm filter without a VM (ECDS)", &core.TypedExtensionConfig{Name: "meshguard", TypedConfig: pack(t, noVM)},
			[]string{"typed_config<envoy.extensions.filters.http.wasm.v3.Wasm>.config", "without vm_config"}},
		{"wasm VM without a runtime", &core.TypedExtensionConfig{Name: "meshguard", TypedConfig: pack(t, noRuntime)},
			[]string{"without runtime"}},
		{"TLS context with an over-long SNI", &cluster.Cluster{
			Name: "c", TransportSocket: &core.TransportSocket{Name: "tls", ConfigType: &core.TransportSocket_TypedConfig{
				TypedConfig: pack(t, &tlsv3.UpstreamTlsContext{Sni: strings.Repeat("a", 300)}),
			}},
		}, []string{"transport_socket.typed_config<envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext>", "Sni"}},
		{"per-route ext_authz without an override", &route.RouteConfiguration{Name: "r", VirtualHosts: []*route.VirtualHost{{
			Name: "v", Domains: []string{"*"}, Routes: []*route.Route{{
				Match:                &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
				Action:               &route.Route_NonForwardingAction{NonForwardingAction: &route.NonForwardingAction{}},
				TypedPerFilterConfig: map[string]*anypb.Any{"envoy.filters.http.ext_authz": pack(t, &extauthz.ExtAuthzPerRoute{})},
			}},
		}}}, []string{`typed_per_filter_config["envoy.filters.http.ext_authz"]<envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute>`, "Override"}},
		{"a TypedStruct describing an HCM without stat_prefix", listenerWith(t, typed, nil),
			[]string{"<xds.type.v3.TypedStruct><envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager>", "StatPrefix"}},
		{"an Any without a type", &route.RouteConfiguration{Name: "r", VirtualHosts: []*route.VirtualHost{{
			Name: "v", Domains: []string{"*"}, TypedPerFilterConfig: map[string]*anypb.Any{"f": {}},
		}}}, []string{`virtual_hosts[0].typed_per_filter_config["f"]`, "without a type"}},
		{"a type that is not linked in", &core.TypedExtensionConfig{Name: "x", TypedConfig: &anypb.Any{TypeUrl: "type.googleapis.com/envoy.extensions.filters.http.nope.v3.Nope"}},
			[]string{"typed_config", "not linked into this build"}},
		{"bytes that do not decode", &core.TypedExtensionConfig{Name: "x", TypedConfig: &anypb.Any{TypeUrl: "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router", Value: []byte{0xff}}},
			[]string{"does not decode"}},
		{"a field the build does not know", &core.TypedExtensionConfig{Name: "x", TypedConfig: unknownField},
			[]string{"typed_config<envoy.extensions.filters.http.router.v3.Router>", "does not know"}},
		{"Anys nested without end", &core.TypedExtensionConfig{Name: "x", TypedConfig: deep},
			[]string{"nest deeper than"}},
	}
	// A memo that has seen the valid building blocks refuses the broken
	// ones all the same, every time.
	memo := xdsvalidate.NewMemo(1 << 10)
	for _, m := range validBlocks(t) {
		if err := memo.All(m); err != nil {
			t.Fatal(err)
		}
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := validatable(tt.msg); err != nil {
				t.Fatalf("ValidateAll already refuses it, the case shows nothing: %v", err)
			}
			for i, all := range []func(proto.Message) error{xdsvalidate.All, memo.All, memo.All} {
				err := all(tt.msg)
				if err == nil {
					t.Fatalf("accepted (run %d)", i)
				}
				for _, w := range tt.want {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error does not mention %q:\n%v", w, err)
					}
				}
			}
		})
	}
}

func validBlocks(t *testing.T) map[string]proto.Message {
	tls := &tlsv3.DownstreamTlsContext{RequireClientCertificate: wrapperspb.Bool(true)}
	return map[string]proto.Message{
		"listener":      listenerWith(t, manager(t, httpFilter(t, "envoy.filters.http.ext_authz", extAuthz())), tls),
		"wasm (ECDS)":   &core.TypedExtensionConfig{Name: "meshguard", TypedConfig: pack(t, wasmPlugin())},
		"string (ECDS)": &core.TypedExtensionConfig{Name: "bundle", TypedConfig: pack(t, wrapperspb.String("{}"))},
	}
}

// TestAcceptsValidNestedConfig: the same building blocks, unbroken, pass; so
// do packed wrappers without a validator of their own.
func TestAcceptsValidNestedConfig(t *testing.T) {
	memo := xdsvalidate.NewMemo(2) // small: it starts over while in use
	for name, m := range validBlocks(t) {
		if err := xdsvalidate.All(m); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		for range 2 {
			if err := memo.All(m); err != nil {
				t.Errorf("%s (memo): %v", name, err)
			}
		}
	}
}

// TestMemoConcurrent: one memo, many goroutines (run with -race).
func TestMemoConcurrent(t *testing.T) {
	memo := xdsvalidate.NewMemo(8)
	blocks := validBlocks(t)
	bad := extAuthz()
	bad.GetGrpcService().GetEnvoyGrpc().ClusterName = ""
	broken := listenerWith(t, manager(t, httpFilter(t, "a", bad)), nil)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				for name, m := range blocks {
					if err := memo.All(m); err != nil {
						t.Errorf("%s: %v", name, err)
					}
				}
				if memo.All(broken) == nil {
					t.Error("broken listener accepted")
				}
			}
		}()
	}
	wg.Wait()
}

// TestReportsEveryProblem: two broken filters, two errors.
func TestReportsEveryProblem(t *testing.T) {
	bad := extAuthz()
	bad.GetGrpcService().GetEnvoyGrpc().ClusterName = ""
	mgr := manager(t, httpFilter(t, "a", bad), httpFilter(t, "b", bad))
	mgr.StatPrefix = ""
	err := xdsvalidate.All(listenerWith(t, mgr, nil))
	if err == nil {
		t.Fatal("accepted")
	}
	for _, want := range []string{"http_filters[0]", "http_filters[1]", "StatPrefix"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("no %q in %v", want, err)
		}
	}
}

// FuzzAll: whatever bytes an Any carries, All answers without panicking,
// and what it accepts decodes.
func FuzzAll(f *testing.F) {
	seed := func(m proto.Message) {
		data, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add("type.googleapis.com/"+string(m.ProtoReflect().Descriptor().FullName()), data)
	}
	seed(wasmPlugin())
	seed(extAuthz())
	seed(&anypb.Any{TypeUrl: "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"})
	seed(&xdstype.TypedStruct{TypeUrl: "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"})
	f.Fuzz(func(t *testing.T, typeURL string, value []byte) {
		m := &core.TypedExtensionConfig{Name: "x", TypedConfig: &anypb.Any{TypeUrl: typeURL, Value: value}}
		if err := xdsvalidate.All(m); err == nil {
			if _, err := m.TypedConfig.UnmarshalNew(); err != nil {
				t.Fatalf("accepted an Any that does not decode: %v", err)
			}
		}
	})
}

// TestPacked: a partial filter (no name, as an EnvoyFilter MERGE patch
// writes it) passes when what it packs is valid and fails when not; All
// refuses the partial filter itself.
func TestPacked(t *testing.T) {
	partial := &hcm.HttpFilter{ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: pack(t, &extauthz.ExtAuthz{BootstrapMetadataLabelsKey: "LABELS"})}}
	if err := xdsvalidate.Packed(partial); err != nil {
		t.Fatal(err)
	}
	if xdsvalidate.All(partial) == nil {
		t.Fatal("All accepts a filter without a name")
	}
	bad := extAuthz()
	bad.GetGrpcService().GetEnvoyGrpc().ClusterName = ""
	broken := &hcm.HttpFilter{ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: pack(t, bad)}}
	if err := xdsvalidate.Packed(broken); err == nil || !strings.Contains(err.Error(), "typed_config<envoy.extensions.filters.http.ext_authz.v3.ExtAuthz>") {
		t.Fatalf("err = %v", err)
	}
}
