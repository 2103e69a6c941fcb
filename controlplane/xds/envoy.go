package xds

import (
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extauthz "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	router "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	wasmfilter "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/wasm/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpopts "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	wasmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/wasm/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshguard/meshguard/controlplane/mesh"
	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/wire"
)

// Names of what the generator emits. Stable: dashboards and bootstraps use them.
const (
	ClusterAuthz        = "meshguard_authz"
	ClusterControlPlane = "meshguard_controlplane"
	// ClusterSPIREAgent is the bootstrap's static cluster of the SPIRE
	// agent's socket (SDS); see deploy/envoy/bootstrap.yaml.
	ClusterSPIREAgent = "spire_agent"
	ClusterWasmFetch  = "meshguard_wasm_fetch"

	// WasmTypeURL is the ECDS type of the meshguard filter's configuration.
	WasmTypeURL = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"

	filterExtAuthz = "envoy.filters.http.ext_authz"
	filterRouter   = "envoy.filters.http.router"
	filterHCM      = "envoy.filters.network.http_connection_manager"
	transportTLS   = "envoy.transport_sockets.tls"
	httpOptsKey    = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
	wasmRuntime    = "envoy.wasm.runtime.v8"
	wasmRootID     = "meshguard"
)

func inboundName(in mesh.Inbound) string       { return "inbound_" + in.Name }
func appCluster(in mesh.Inbound) string        { return "inbound_app_" + in.Name }
func outboundName(u mesh.ValidUpstream) string { return "outbound_" + u.Name }
func upstreamCluster(name string) string       { return "outbound|" + name }
func adsSource() *core.ConfigSource {
	return &core.ConfigSource{
		ResourceApiVersion:    core.ApiVersion_V3,
		ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}},
	}
}

// envoyResources returns the listeners, routes and clusters of an Envoy
// node serving w. Its ECDS filter config is the mesh's, built by Encode.
func (g *Generator) envoyResources(w *mesh.ValidWorkload, b *policies.Bundle) (map[resource.Type][]types.Resource, error) {
	out := map[resource.Type][]types.Resource{}
	disabled := disabledRoutes(w, b)
	for _, in := range w.Inbound {
		rc, err := g.inboundRoutes(w, in, disabled)
		if err != nil {
			return nil, err
		}
		l, err := g.inboundListener(w, in)
		if err != nil {
			return nil, err
		}
		out[resource.RouteType] = append(out[resource.RouteType], rc)
		out[resource.ListenerType] = append(out[resource.ListenerType], l)
		out[resource.ClusterType] = append(out[resource.ClusterType],
			plainCluster(appCluster(in), "127.0.0.1", in.AppPort, false))
	}
	for _, u := range w.Upstreams {
		l, err := g.outboundListener(w, u)
		if err != nil {
			return nil, err
		}
		out[resource.ListenerType] = append(out[resource.ListenerType], l)
		out[resource.RouteType] = append(out[resource.RouteType], outboundRoutes(u))
		c, err := g.mtlsCluster(upstreamCluster(u.Name), u.Address, u.Port, u.ID, w.ID, false)
		if err != nil {
			return nil, err
		}
		out[resource.ClusterType] = append(out[resource.ClusterType], c)
	}
	authz, err := g.mtlsCluster(ClusterAuthz, g.mesh.Authz.Address, g.mesh.Authz.Port, g.mesh.Authz.ID, w.ID, true)
	if err != nil {
		return nil, err
	}
	cp, err := g.mtlsCluster(ClusterControlPlane, g.mesh.ControlPlane.Address, g.mesh.ControlPlane.Port, g.mesh.ControlPlane.ID, w.ID, false)
	if err != nil {
		return nil, err
	}
	out[resource.ClusterType] = append(out[resource.ClusterType], authz, cp)
	if fetch := g.wasmFetchCluster(); fetch != nil && !w.DisableWasm {
		out[resource.ClusterType] = append(out[resource.ClusterType], fetch)
	}
	return out, nil
}

// disabledRoutes lists the routes of w whose ext_authz call a RouteOverride
// (in w's namespace or the root namespace) disables.
func disabledRoutes(w *mesh.ValidWorkload, b *policies.Bundle) map[string]bool {
	root := b.Set.Settings.RootNamespace
	if root == "" {
		root = policies.DefaultRootNamespace
	}
	out := map[string]bool{}
	for _, ro := range b.Set.RouteOverrides {
		ns := ro.Metadata.Namespace
		if ro.Spec.DisableExtAuthz && (ns == w.Namespace || ns == root) {
			out[ro.Spec.Route] = true
		}
	}
	return out
}

// extAuthzOf tells w's wasm filter that the ext_authz server follows it
// (every inbound listener has the ext_authz filter), and on which routes
// it is disabled: there the filter decides alone.
func extAuthzOf(w *mesh.ValidWorkload, b *policies.Bundle) *wire.ExtAuthz {
	disabled := disabledRoutes(w, b)
	ea := &wire.ExtAuthz{}
	for _, in := range w.Inbound {
		for _, r := range in.Routes {
			if r.DisableExtAuthz || disabled[r.Name] {
				ea.SkipRoutes = append(ea.SkipRoutes, r.Name)
			}
		}
	}
	slices.Sort(ea.SkipRoutes)
	ea.SkipRoutes = slices.Compact(ea.SkipRoutes)
	return ea
}

// upstreamsOf names the destination of each of w's outbound clusters for
// the filter on its outbound side.
func (g *Generator) upstreamsOf(w *mesh.ValidWorkload) map[string]string {
	if len(w.Upstreams) == 0 {
		return nil
	}
	out := make(map[string]string, len(w.Upstreams))
	for _, u := range w.Upstreams {
		svc, ns := g.destinationOf(u)
		if ns != "" {
			svc += "." + ns
		}
		out[upstreamCluster(u.Name)] = svc
	}
	return out
}

// destinationOf is the service and namespace an upstream is
// (mesh.Upstream.Service says how they default).
func (g *Generator) destinationOf(u mesh.ValidUpstream) (service, namespace string) {
	if u.Service != "" {
		return u.Service, u.Namespace
	}
	agree := true
	for _, w := range g.mesh.Workloads {
		if w.ID != u.ID {
			continue
		}
		if service != "" && (service != w.Service || namespace != w.Namespace) {
			agree = false
		}
		service, namespace = w.Service, w.Namespace
	}
	if service != "" && agree {
		if u.Namespace != "" {
			namespace = u.Namespace
		}
		return service, namespace
	}
	host := strings.ToLower(strings.TrimSuffix(u.Address, "."))
	if i := strings.Index(host, ".svc"); i > 0 && (len(host) == i+4 || host[i+4] == '.') {
		if svc, ns, ok := strings.Cut(host[:i], "."); ok {
			return svc, ns
		}
	}
	return host, u.Namespace
}

func (g *Generator) inboundRoutes(w *mesh.ValidWorkload, in mesh.Inbound, disabled map[string]bool) (*route.RouteConfiguration, error) {
	vh := &route.VirtualHost{Name: inboundName(in), Domains: []string{"*"}}
	for _, r := range in.Routes {
		m := &route.RouteMatch{}
		if r.Path != "" {
			m.PathSpecifier = &route.RouteMatch_Path{Path: r.Path}
		} else {
			m.PathSpecifier = &route.RouteMatch_Prefix{Prefix: r.Prefix}
		}
		target := appCluster(in)
		if r.Upstream != "" {
			target = upstreamCluster(r.Upstream)
		}
		var perRoute *extauthz.ExtAuthzPerRoute
		if r.DisableExtAuthz || disabled[r.Name] {
			perRoute = &extauthz.ExtAuthzPerRoute{Override: &extauthz.ExtAuthzPerRoute_Disabled{Disabled: true}}
		} else {
			perRoute = &extauthz.ExtAuthzPerRoute{Override: &extauthz.ExtAuthzPerRoute_CheckSettings{
				CheckSettings: &extauthz.CheckSettings{ContextExtensions: contextExtensions(w, r)},
			}}
		}
		pr, err := marshalAny(perRoute)
		if err != nil {
			return nil, err
		}
		vh.Routes = append(vh.Routes, &route.Route{
			Name:  r.Name,
			Match: m,
			Action: &route.Route_Route{Route: &route.RouteAction{
				ClusterSpecifier: &route.RouteAction_Cluster{Cluster: target},
			}},
			TypedPerFilterConfig: map[string]*anyProto{filterExtAuthz: pr},
		})
	}
	return &route.RouteConfiguration{
		Name:         inboundName(in),
		VirtualHosts: []*route.VirtualHost{vh},
		// Requests that match no route are not forwarded anywhere.
		ValidateClusters: wrapperspb.Bool(true),
	}, nil
}

// contextExtensions are what the authz server learns of route r's target
// workload w. They come from the route configuration, which no client can
// touch: the workload's SPIFFE ID, namespace, service and every one of its
// labels (one meshguard.label.<key> each), with meshguard.resolved saying
// that these are all of them, so that a workload without labels is known to
// have none.
func contextExtensions(w *mesh.ValidWorkload, r mesh.Route) map[string]string {
	ext := make(map[string]string, 6+len(w.Labels))
	ext[wire.ContextRoute] = r.Name
	ext[wire.ContextPolicyScope] = w.Namespace + "/" + w.Name
	ext[wire.ContextNamespace] = w.Namespace
	ext[wire.ContextWorkload] = w.ID.String()
	ext[wire.ContextService] = w.Service
	ext[wire.ContextResolved] = "true"
	for k, v := range w.Labels {
		ext[wire.ContextLabelPrefix+k] = v
	}
	return ext
}

func outboundRoutes(u mesh.ValidUpstream) *route.RouteConfiguration {
	return &route.RouteConfiguration{
		Name: outboundName(u),
		VirtualHosts: []*route.VirtualHost{{
			Name:    outboundName(u),
			Domains: []string{"*"},
			Routes: []*route.Route{{
				Name:  outboundName(u),
				Match: &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
				Action: &route.Route_Route{Route: &route.RouteAction{
					ClusterSpecifier: &route.RouteAction_Cluster{Cluster: upstreamCluster(u.Name)},
				}},
			}},
		}},
	}
}

func (g *Generator) inboundListener(w *mesh.ValidWorkload, in mesh.Inbound) (*listener.Listener, error) {
	authz, err := marshalAny(&extauthz.ExtAuthz{
		Services: &extauthz.ExtAuthz_GrpcService{GrpcService: &core.GrpcService{
			TargetSpecifier: &core.GrpcService_EnvoyGrpc_{EnvoyGrpc: &core.GrpcService_EnvoyGrpc{ClusterName: ClusterAuthz}},
			Timeout:         durationpb.New(g.mesh.Authz.Timeout),
		}},
		TransportApiVersion:    core.ApiVersion_V3,
		FailureModeAllow:       false,
		IncludePeerCertificate: true,
		StatPrefix:             "meshguard",
		StatusOnError:          nil, // 403 on error (Envoy's default), never a pass
	})
	if err != nil {
		return nil, err
	}
	rtr, err := marshalAny(&router.Router{})
	if err != nil {
		return nil, err
	}
	manager := &hcm.HttpConnectionManager{
		StatPrefix: inboundName(in),
		CodecType:  hcm.HttpConnectionManager_AUTO,
		RouteSpecifier: &hcm.HttpConnectionManager_Rds{Rds: &hcm.Rds{
			ConfigSource:    adsSource(),
			RouteConfigName: inboundName(in),
		}},
		HttpFilters: httpFilters(w, authz, rtr),
		// Identity of the direct peer for the authz server; anything the
		// client sent in XFCC is replaced.
		ForwardClientCertDetails: hcm.HttpConnectionManager_SANITIZE_SET,
		SetCurrentClientCertDetails: &hcm.HttpConnectionManager_SetCurrentClientCertDetails{
			Uri: true,
		},
		NormalizePath:                wrapperspb.Bool(g.mesh.NormalizePath),
		MergeSlashes:                 g.mesh.NormalizePath,
		PathWithEscapedSlashesAction: hcm.HttpConnectionManager_UNESCAPE_AND_REDIRECT,
		UseRemoteAddress:             wrapperspb.Bool(true),
	}
	mgr, err := marshalAny(manager)
	if err != nil {
		return nil, err
	}
	tlsCtx, err := marshalAny(&tlsv3.DownstreamTlsContext{
		RequireClientCertificate: wrapperspb.Bool(true),
		CommonTlsContext:         g.commonTLS(w.ID, spiffeid.ID{}),
	})
	if err != nil {
		return nil, err
	}
	return &listener.Listener{
		Name:    inboundName(in),
		Address: socketAddress("0.0.0.0", in.Port),
		// The filter (direction "listener") tells the two sides apart by it.
		TrafficDirection: core.TrafficDirection_INBOUND,
		FilterChains: []*listener.FilterChain{{
			Filters: []*listener.Filter{{
				Name:       filterHCM,
				ConfigType: &listener.Filter_TypedConfig{TypedConfig: mgr},
			}},
			TransportSocket: &core.TransportSocket{
				Name:       transportTLS,
				ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: tlsCtx},
			},
		}},
	}, nil
}

// httpFilters is the inbound chain: the meshguard wasm filter (unless the
// workload disables it), ext_authz, the router.
func httpFilters(w *mesh.ValidWorkload, authz, rtr *anyProto) []*hcm.HttpFilter {
	fs := wasmFilters(w)
	return append(fs,
		&hcm.HttpFilter{Name: filterExtAuthz, ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: authz}},
		&hcm.HttpFilter{Name: filterRouter, ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: rtr}})
}

// wasmFilters is the meshguard wasm filter, unless the workload disables
// it: the same ECDS resource on both sides of the workload's traffic (the
// listener's traffic_direction tells the filter which side it is on).
func wasmFilters(w *mesh.ValidWorkload) []*hcm.HttpFilter {
	if w.DisableWasm {
		return nil
	}
	return []*hcm.HttpFilter{{
		// With config_discovery the filter's name is the ECDS resource
		// name. No default config: the listener warms until the filter
		// config (and so the policy) arrives.
		Name: wire.FilterConfigName,
		ConfigType: &hcm.HttpFilter_ConfigDiscovery{ConfigDiscovery: &core.ExtensionConfigSource{
			ConfigSource: adsSource(),
			TypeUrls:     []string{WasmTypeURL},
		}},
	}}
}

// outboundListener is where the application sends a request to upstream
// u: the meshguard wasm filter on its outbound side (the workload's own
// identity is the source, u the destination: a quarantined or anomalous
// workload is stopped here, before the request leaves the pod), then the
// router to u's mTLS cluster.
func (g *Generator) outboundListener(w *mesh.ValidWorkload, u mesh.ValidUpstream) (*listener.Listener, error) {
	rtr, err := marshalAny(&router.Router{})
	if err != nil {
		return nil, err
	}
	mgr, err := marshalAny(&hcm.HttpConnectionManager{
		StatPrefix: outboundName(u),
		CodecType:  hcm.HttpConnectionManager_AUTO,
		RouteSpecifier: &hcm.HttpConnectionManager_Rds{Rds: &hcm.Rds{
			ConfigSource:    adsSource(),
			RouteConfigName: outboundName(u),
		}},
		HttpFilters: append(wasmFilters(w),
			&hcm.HttpFilter{Name: filterRouter, ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: rtr}}),
	})
	if err != nil {
		return nil, err
	}
	return &listener.Listener{
		Name:             outboundName(u),
		Address:          socketAddress("127.0.0.1", u.ListenPort),
		TrafficDirection: core.TrafficDirection_OUTBOUND,
		FilterChains: []*listener.FilterChain{{
			Filters: []*listener.Filter{{Name: filterHCM, ConfigType: &listener.Filter_TypedConfig{TypedConfig: mgr}}},
		}},
	}, nil
}

// commonTLS presents the SVID named after the workload's SPIFFE ID and
// validates peers against the trust bundle, both over SDS from the SPIRE
// agent; when peerID is not zero the peer's URI SAN must equal it. The SDS
// source is the cluster ClusterSPIREAgent, which the node's bootstrap
// defines: Envoy takes an xDS config source only from a statically defined
// cluster, so the control plane cannot send it.
func (g *Generator) commonTLS(selfID, peerID spiffeid.ID) *tlsv3.CommonTlsContext {
	spire := &core.ConfigSource{
		ResourceApiVersion: core.ApiVersion_V3,
		ConfigSourceSpecifier: &core.ConfigSource_ApiConfigSource{ApiConfigSource: &core.ApiConfigSource{
			ApiType:             core.ApiConfigSource_GRPC,
			TransportApiVersion: core.ApiVersion_V3,
			GrpcServices: []*core.GrpcService{{
				TargetSpecifier: &core.GrpcService_EnvoyGrpc_{EnvoyGrpc: &core.GrpcService_EnvoyGrpc{ClusterName: ClusterSPIREAgent}},
			}},
		}},
	}
	ctx := &tlsv3.CommonTlsContext{
		TlsParams: &tlsv3.TlsParameters{TlsMinimumProtocolVersion: tlsv3.TlsParameters_TLSv1_2},
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{{
			Name: selfID.String(), SdsConfig: spire,
		}},
	}
	bundle := &tlsv3.SdsSecretConfig{Name: g.mesh.BundleSecret, SdsConfig: spire}
	if peerID.IsZero() {
		ctx.ValidationContextType = &tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig{ValidationContextSdsSecretConfig: bundle}
		return ctx
	}
	ctx.ValidationContextType = &tlsv3.CommonTlsContext_CombinedValidationContext{
		CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
			DefaultValidationContext: &tlsv3.CertificateValidationContext{
				MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{{
					SanType: tlsv3.SubjectAltNameMatcher_URI,
					Matcher: &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: peerID.String()}},
				}},
			},
			ValidationContextSdsSecretConfig: bundle,
		},
	}
	return ctx
}

func (g *Generator) mtlsCluster(name, host string, port uint32, peerID, selfID spiffeid.ID, http2 bool) (*cluster.Cluster, error) {
	c := plainCluster(name, host, port, http2)
	tlsCtx, err := marshalAny(&tlsv3.UpstreamTlsContext{
		CommonTlsContext: g.commonTLS(selfID, peerID),
		Sni:              sniFor(host),
	})
	if err != nil {
		return nil, err
	}
	c.TransportSocket = &core.TransportSocket{Name: transportTLS, ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: tlsCtx}}
	return c, nil
}

func sniFor(host string) string {
	if net.ParseIP(host) != nil {
		return ""
	}
	return host
}

func plainCluster(name, host string, port uint32, http2 bool) *cluster.Cluster {
	typ := cluster.Cluster_STRICT_DNS
	if net.ParseIP(host) != nil {
		typ = cluster.Cluster_STATIC
	}
	c := &cluster.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: typ},
		ConnectTimeout:       durationpb.New(connectTimeout),
		LbPolicy:             cluster.Cluster_ROUND_ROBIN,
		LoadAssignment: &endpoint.ClusterLoadAssignment{
			ClusterName: name,
			Endpoints: []*endpoint.LocalityLbEndpoints{{LbEndpoints: []*endpoint.LbEndpoint{{
				HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{Address: socketAddress(host, port)}},
			}}}},
		},
	}
	if typ == cluster.Cluster_STRICT_DNS {
		c.DnsLookupFamily = cluster.Cluster_V4_PREFERRED
	}
	if http2 {
		c.TypedExtensionProtocolOptions = map[string]*anyProto{httpOptsKey: mustAny(http2Options())}
	}
	return c
}

func http2Options() *httpopts.HttpProtocolOptions {
	return &httpopts.HttpProtocolOptions{
		UpstreamProtocolOptions: &httpopts.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpopts.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &httpopts.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &core.Http2ProtocolOptions{}},
		}},
	}
}

// wasmFetchCluster reaches the host of a remote wasm module; integrity comes
// from the module's sha256, which Envoy checks before loading it.
func (g *Generator) wasmFetchCluster() *cluster.Cluster {
	if g.mesh.Wasm.URL == "" {
		return nil
	}
	u, _ := url.Parse(g.mesh.Wasm.URL) // validated by mesh
	host := u.Hostname()
	port := uint32(443)
	if u.Scheme == "http" {
		port = 80
	}
	if p := u.Port(); p != "" {
		n, _ := strconv.ParseUint(p, 10, 16)
		port = uint32(n)
	}
	c := plainCluster(ClusterWasmFetch, host, port, false)
	if u.Scheme == "https" {
		c.TransportSocket = &core.TransportSocket{Name: transportTLS, ConfigType: &core.TransportSocket_TypedConfig{
			TypedConfig: mustAny(&tlsv3.UpstreamTlsContext{Sni: sniFor(host)}),
		}}
	}
	return c
}

// wasmExtensionConfig is the ECDS resource of the meshguard filter with
// plugin configuration fc. The plugin fails closed: a VM that cannot start
// or crashes denies traffic.
func (g *Generator) wasmExtensionConfig(fc []byte) (*core.TypedExtensionConfig, error) {
	code := &core.AsyncDataSource{}
	if g.mesh.Wasm.URL != "" {
		code.Specifier = &core.AsyncDataSource_Remote{Remote: &core.RemoteDataSource{
			HttpUri: &core.HttpUri{
				Uri:              g.mesh.Wasm.URL,
				HttpUpstreamType: &core.HttpUri_Cluster{Cluster: ClusterWasmFetch},
				Timeout:          durationpb.New(wasmFetchTimeout),
			},
			Sha256: g.mesh.Wasm.SHA256,
		}}
	} else {
		code.Specifier = &core.AsyncDataSource_Local{Local: &core.DataSource{
			Specifier: &core.DataSource_Filename{Filename: g.mesh.Wasm.File},
		}}
	}
	configuration, err := marshalAny(wrapperspb.String(string(fc)))
	if err != nil {
		return nil, err
	}
	tc, err := marshalAny(&wasmfilter.Wasm{Config: &wasmv3.PluginConfig{
		Name:   wire.FilterConfigName,
		RootId: wasmRootID,
		Vm: &wasmv3.PluginConfig_VmConfig{VmConfig: &wasmv3.VmConfig{
			VmId:    wasmRootID,
			Runtime: wasmRuntime,
			Code:    code,
		}},
		Configuration: configuration,
		FailurePolicy: wasmv3.FailurePolicy_FAIL_CLOSED,
	}})
	if err != nil {
		return nil, err
	}
	return &core.TypedExtensionConfig{Name: wire.FilterConfigName, TypedConfig: tc}, nil
}

func socketAddress(host string, port uint32) *core.Address {
	return &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
		Address:       host,
		PortSpecifier: &core.SocketAddress_PortValue{PortValue: port},
	}}}
}
