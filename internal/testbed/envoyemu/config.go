package envoyemu

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	wasmfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/wasm/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpoptsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	wasmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/wasm/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// The emulator reads the xDS resources the control plane sends into the
// types below, and refuses (NACKs) what it cannot honour rather than
// ignore it: an unknown HTTP filter, a route match other than prefix or
// path, a route action other than one cluster, a transport socket other
// than TLS. Fields that do not change how a request is handled here (stat
// prefixes, codec type, connect timeouts, load-balancing policy) are read
// by no one.

// Names of the extensions the emulator implements.
const (
	filterHCM      = "envoy.filters.network.http_connection_manager"
	typeHCM        = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
	typeExtAuthz   = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
	typeExtAuthzPR = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"
	typeRouter     = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
	typeWasm       = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
	typeDownTLS    = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
	typeUpTLS      = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
	typeHTTPOpts   = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
	httpOptsKey    = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
	// defaultAuthzTimeout is Envoy's grpc_service timeout when none is set.
	defaultAuthzTimeout = 200 * time.Millisecond
)

// listenerCfg is one LDS listener: an address and one filter chain whose
// only network filter is the HTTP connection manager.
type listenerCfg struct {
	name string
	addr string // host:port
	// direction is the listener's traffic_direction, which filters read
	// as listener_direction.
	direction corev3.TrafficDirection
	tls       *downstreamTLS
	hcm       *connManager
}

// downstreamTLS is a DownstreamTlsContext whose secrets come over SDS.
type downstreamTLS struct {
	requireClientCert bool
	secrets           sdsNames
}

// sdsNames are the SDS secrets a TLS context names: the certificate (the
// SVID, by SPIFFE ID) and the validation context (the trust bundle).
type sdsNames struct{ cert, validation string }

// connManager is the HTTP connection manager of a listener.
type connManager struct {
	routeConfig      string // RDS resource name
	filters          []httpFilter
	xfcc             hcmv3.HttpConnectionManager_ForwardClientCertDetails
	xfccDetails      *hcmv3.HttpConnectionManager_SetCurrentClientCertDetails
	normalizePath    bool
	mergeSlashes     bool
	escapedSlashes   hcmv3.HttpConnectionManager_PathWithEscapedSlashesAction
	useRemoteAddress bool
}

type filterKind int

const (
	kindWasm filterKind = iota
	kindExtAuthz
	kindRouter
)

// httpFilter is one entry of the connection manager's HTTP filter chain.
type httpFilter struct {
	name string
	kind filterKind
	// ecds names the filter's ECDS resource (config_discovery).
	ecds     string
	extAuthz *extAuthzCfg
}

// extAuthzCfg is the ext_authz filter's configuration.
type extAuthzCfg struct {
	cluster          string
	timeout          time.Duration
	failureModeAllow bool
	includePeerCert  bool
	statusOnError    int
	// labelsKey is bootstrap_metadata_labels_key: destination.labels come
	// from this key of the node's metadata.
	labelsKey string
}

// routeTable is one RDS route configuration.
type routeTable struct {
	name             string
	vhosts           []vhost
	validateClusters bool
}

type vhost struct {
	name    string
	domains []string
	routes  []routeCfg
	authz   *authzPerRoute // the virtual host's ext_authz per-filter config
}

type routeCfg struct {
	name         string
	prefix, path string // one is set; path matches exactly
	caseFold     bool   // case_sensitive: false
	cluster      string
	authz        *authzPerRoute
}

// authzPerRoute is an ExtAuthzPerRoute: disabled, or context extensions.
type authzPerRoute struct {
	disabled bool
	ext      map[string]string
}

// clusterCfg is one CDS cluster with a single endpoint.
type clusterCfg struct {
	name  string
	addr  string // host:port; empty for a pipe (the SPIRE agent's socket)
	tls   *upstreamTLS
	http2 bool
}

// upstreamTLS is an UpstreamTlsContext: the SVID and trust bundle over SDS,
// the peer's URI SANs it must present, the SNI to send.
type upstreamTLS struct {
	secrets sdsNames
	sans    []string
	sni     string
}

// wasmCfg is the wasm filter's ECDS resource.
type wasmCfg struct {
	name         string
	rootID, vmID string
	runtime      string
	vmConfig     []byte
	code         *corev3.AsyncDataSource
	pluginConfig []byte
	failOpen     bool
}

func unpack[T proto.Message](a *anypb.Any, want string, m T) error {
	if a.GetTypeUrl() != want {
		return fmt.Errorf("type %q, want %q", a.GetTypeUrl(), want)
	}
	if err := a.UnmarshalTo(m); err != nil {
		return err
	}
	if v, ok := any(m).(interface{ ValidateAll() error }); ok {
		if err := v.ValidateAll(); err != nil {
			return err
		}
	}
	return nil
}

func socketAddr(a *corev3.Address) (string, error) {
	sa := a.GetSocketAddress()
	if sa == nil {
		return "", errors.New("only socket addresses are supported")
	}
	if sa.GetProtocol() != corev3.SocketAddress_TCP {
		return "", errors.New("only TCP is supported")
	}
	if _, ok := sa.GetPortSpecifier().(*corev3.SocketAddress_PortValue); !ok {
		return "", errors.New("only port_value is supported")
	}
	return net.JoinHostPort(sa.GetAddress(), strconv.FormatUint(uint64(sa.GetPortValue()), 10)), nil
}

// readListener translates an LDS listener.
func readListener(l *listenerv3.Listener) (*listenerCfg, error) {
	if err := l.ValidateAll(); err != nil {
		return nil, err
	}
	addr, err := socketAddr(l.GetAddress())
	if err != nil {
		return nil, fmt.Errorf("address: %w", err)
	}
	if len(l.GetFilterChains()) != 1 || l.GetDefaultFilterChain() != nil || len(l.GetListenerFilters()) > 0 {
		return nil, errors.New("exactly one filter chain and no listener filters are supported")
	}
	fc := l.GetFilterChains()[0]
	if fc.GetFilterChainMatch() != nil {
		return nil, errors.New("filter chain matches are not supported")
	}
	if len(fc.GetFilters()) != 1 || fc.GetFilters()[0].GetName() != filterHCM {
		return nil, errors.New("the filter chain must be the HTTP connection manager alone")
	}
	out := &listenerCfg{name: l.GetName(), addr: addr, direction: l.GetTrafficDirection()}
	var mgr hcmv3.HttpConnectionManager
	if err := unpack(fc.GetFilters()[0].GetTypedConfig(), typeHCM, &mgr); err != nil {
		return nil, fmt.Errorf("http connection manager: %w", err)
	}
	if out.hcm, err = readConnManager(&mgr); err != nil {
		return nil, err
	}
	if ts := fc.GetTransportSocket(); ts != nil {
		var d tlsv3.DownstreamTlsContext
		if err := unpack(ts.GetTypedConfig(), typeDownTLS, &d); err != nil {
			return nil, fmt.Errorf("transport socket: %w", err)
		}
		if !d.GetRequireClientCertificate().GetValue() {
			return nil, errors.New("a TLS listener must require a client certificate (mTLS) here")
		}
		s, err := readSDS(d.GetCommonTlsContext())
		if err != nil {
			return nil, err
		}
		out.tls = &downstreamTLS{requireClientCert: true, secrets: s}
	}
	return out, nil
}

func readSDS(c *tlsv3.CommonTlsContext) (sdsNames, error) {
	var s sdsNames
	if len(c.GetTlsCertificates()) > 0 || len(c.GetTlsCertificateSdsSecretConfigs()) != 1 {
		return s, errors.New("the certificate must be one SDS secret")
	}
	s.cert = c.GetTlsCertificateSdsSecretConfigs()[0].GetName()
	switch v := c.GetValidationContextType().(type) {
	case *tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig:
		s.validation = v.ValidationContextSdsSecretConfig.GetName()
	case *tlsv3.CommonTlsContext_CombinedValidationContext:
		s.validation = v.CombinedValidationContext.GetValidationContextSdsSecretConfig().GetName()
	default:
		return s, errors.New("the validation context must come over SDS")
	}
	return s, nil
}

func readConnManager(m *hcmv3.HttpConnectionManager) (*connManager, error) {
	rds := m.GetRds()
	if rds == nil || rds.GetConfigSource().GetAds() == nil {
		return nil, errors.New("routes must come over RDS from ADS")
	}
	cm := &connManager{
		routeConfig:      rds.GetRouteConfigName(),
		xfcc:             m.GetForwardClientCertDetails(),
		xfccDetails:      m.GetSetCurrentClientCertDetails(),
		normalizePath:    m.GetNormalizePath().GetValue(),
		mergeSlashes:     m.GetMergeSlashes(),
		escapedSlashes:   m.GetPathWithEscapedSlashesAction(),
		useRemoteAddress: m.GetUseRemoteAddress().GetValue(),
	}
	switch cm.escapedSlashes {
	case hcmv3.HttpConnectionManager_IMPLEMENTATION_SPECIFIC_DEFAULT, hcmv3.HttpConnectionManager_KEEP_UNCHANGED,
		hcmv3.HttpConnectionManager_UNESCAPE_AND_REDIRECT, hcmv3.HttpConnectionManager_REJECT_REQUEST:
	default:
		return nil, fmt.Errorf("path_with_escaped_slashes_action %s is not supported", cm.escapedSlashes)
	}
	for i, f := range m.GetHttpFilters() {
		hf := httpFilter{name: f.GetName()}
		switch ct := f.GetConfigType().(type) {
		case *hcmv3.HttpFilter_ConfigDiscovery:
			cd := ct.ConfigDiscovery
			if cd.GetConfigSource().GetAds() == nil || len(cd.GetTypeUrls()) != 1 || cd.GetTypeUrls()[0] != typeWasm {
				return nil, fmt.Errorf("http filter %s: config discovery is supported over ADS for the wasm filter only", f.GetName())
			}
			if cd.GetDefaultConfig() != nil || cd.GetApplyDefaultConfigWithoutWarming() {
				return nil, fmt.Errorf("http filter %s: a default config is not supported", f.GetName())
			}
			hf.kind, hf.ecds = kindWasm, f.GetName()
		case *hcmv3.HttpFilter_TypedConfig:
			switch ct.TypedConfig.GetTypeUrl() {
			case typeExtAuthz:
				var ea extauthzv3.ExtAuthz
				if err := unpack(ct.TypedConfig, typeExtAuthz, &ea); err != nil {
					return nil, fmt.Errorf("http filter %s: %w", f.GetName(), err)
				}
				cfg, err := readExtAuthz(&ea)
				if err != nil {
					return nil, fmt.Errorf("http filter %s: %w", f.GetName(), err)
				}
				hf.kind, hf.extAuthz = kindExtAuthz, cfg
			case typeRouter:
				var r routerv3.Router
				if err := unpack(ct.TypedConfig, typeRouter, &r); err != nil {
					return nil, fmt.Errorf("http filter %s: %w", f.GetName(), err)
				}
				hf.kind = kindRouter
			default:
				return nil, fmt.Errorf("http filter %s: type %s is not emulated", f.GetName(), ct.TypedConfig.GetTypeUrl())
			}
		default:
			return nil, fmt.Errorf("http filter %s: no config", f.GetName())
		}
		if f.GetDisabled() || f.GetIsOptional() {
			return nil, fmt.Errorf("http filter %s: disabled and optional filters are not supported", f.GetName())
		}
		if (hf.kind == kindRouter) != (i == len(m.GetHttpFilters())-1) {
			return nil, errors.New("the router must be the last HTTP filter, and only the last")
		}
		cm.filters = append(cm.filters, hf)
	}
	if len(cm.filters) == 0 {
		return nil, errors.New("no HTTP filters (the router is required)")
	}
	return cm, nil
}

func readExtAuthz(ea *extauthzv3.ExtAuthz) (*extAuthzCfg, error) {
	gs := ea.GetGrpcService()
	if gs == nil || gs.GetEnvoyGrpc() == nil {
		return nil, errors.New("only a gRPC service through an Envoy cluster is emulated")
	}
	if ea.GetTransportApiVersion() != corev3.ApiVersion_V3 {
		return nil, errors.New("transport_api_version must be V3")
	}
	if ea.GetWithRequestBody() != nil || ea.GetFilterEnabled() != nil || ea.GetFilterEnabledMetadata() != nil || ea.GetDenyAtDisable() != nil {
		return nil, errors.New("with_request_body, filter_enabled, filter_enabled_metadata and deny_at_disable are not emulated")
	}
	cfg := &extAuthzCfg{
		cluster:          gs.GetEnvoyGrpc().GetClusterName(),
		timeout:          defaultAuthzTimeout,
		failureModeAllow: ea.GetFailureModeAllow(),
		includePeerCert:  ea.GetIncludePeerCertificate(),
		statusOnError:    http.StatusForbidden,
		labelsKey:        ea.GetBootstrapMetadataLabelsKey(),
	}
	if t := gs.GetTimeout(); t != nil {
		cfg.timeout = t.AsDuration()
	}
	if s := ea.GetStatusOnError(); s != nil {
		cfg.statusOnError = int(s.GetCode())
	}
	return cfg, nil
}

// readRoutes translates an RDS route configuration.
func readRoutes(rc *routev3.RouteConfiguration) (*routeTable, error) {
	if err := rc.ValidateAll(); err != nil {
		return nil, err
	}
	rt := &routeTable{name: rc.GetName(), validateClusters: rc.GetValidateClusters().GetValue()}
	for _, vh := range rc.GetVirtualHosts() {
		v := vhost{name: vh.GetName(), domains: vh.GetDomains()}
		pr, err := readPerRoute(vh.GetTypedPerFilterConfig())
		if err != nil {
			return nil, fmt.Errorf("virtual host %s: %w", vh.GetName(), err)
		}
		v.authz = pr
		for _, r := range vh.GetRoutes() {
			rcfg, err := readRoute(r)
			if err != nil {
				return nil, fmt.Errorf("virtual host %s: route %s: %w", vh.GetName(), r.GetName(), err)
			}
			v.routes = append(v.routes, rcfg)
		}
		rt.vhosts = append(rt.vhosts, v)
	}
	return rt, nil
}

func readRoute(r *routev3.Route) (routeCfg, error) {
	out := routeCfg{name: r.GetName()}
	m := r.GetMatch()
	if len(m.GetHeaders()) > 0 || len(m.GetQueryParameters()) > 0 || m.GetGrpc() != nil || m.GetRuntimeFraction() != nil || m.GetTlsContext() != nil {
		return out, errors.New("header, query, grpc, runtime and TLS matches are not emulated")
	}
	switch ps := m.GetPathSpecifier().(type) {
	case *routev3.RouteMatch_Prefix:
		out.prefix = ps.Prefix
	case *routev3.RouteMatch_Path:
		out.path = ps.Path
	default:
		return out, fmt.Errorf("path match %T is not emulated (prefix and path are)", ps)
	}
	out.caseFold = m.GetCaseSensitive() != nil && !m.GetCaseSensitive().GetValue()
	act := r.GetRoute()
	if act == nil || act.GetCluster() == "" {
		return out, errors.New("only route actions to one cluster are emulated")
	}
	out.cluster = act.GetCluster()
	pr, err := readPerRoute(r.GetTypedPerFilterConfig())
	if err != nil {
		return out, err
	}
	out.authz = pr
	return out, nil
}

// readPerRoute reads the ext_authz entry of typed_per_filter_config. Per-
// filter config for other filters is refused: the emulator would not apply
// it.
func readPerRoute(m map[string]*anypb.Any) (*authzPerRoute, error) {
	var out *authzPerRoute
	for name, a := range m {
		if a.GetTypeUrl() != typeExtAuthzPR {
			return nil, fmt.Errorf("typed_per_filter_config %s: type %s is not emulated", name, a.GetTypeUrl())
		}
		var pr extauthzv3.ExtAuthzPerRoute
		if err := unpack(a, typeExtAuthzPR, &pr); err != nil {
			return nil, fmt.Errorf("typed_per_filter_config %s: %w", name, err)
		}
		if out != nil {
			return nil, errors.New("two ext_authz per-route configs")
		}
		out = &authzPerRoute{disabled: pr.GetDisabled()}
		if cs := pr.GetCheckSettings(); cs != nil {
			if cs.GetDisableRequestBodyBuffering() || cs.GetWithRequestBody() != nil {
				return nil, errors.New("per-route request body settings are not emulated")
			}
			out.ext = cs.GetContextExtensions()
		}
	}
	return out, nil
}

// readCluster translates a CDS cluster.
func readCluster(c *clusterv3.Cluster) (*clusterCfg, error) {
	if err := c.ValidateAll(); err != nil {
		return nil, err
	}
	switch c.GetType() {
	case clusterv3.Cluster_STATIC, clusterv3.Cluster_STRICT_DNS, clusterv3.Cluster_LOGICAL_DNS:
	default:
		return nil, fmt.Errorf("discovery type %s is not emulated", c.GetType())
	}
	out := &clusterCfg{name: c.GetName()}
	eps := c.GetLoadAssignment().GetEndpoints()
	if len(eps) != 1 || len(eps[0].GetLbEndpoints()) != 1 {
		return nil, errors.New("exactly one endpoint is emulated")
	}
	a := eps[0].GetLbEndpoints()[0].GetEndpoint().GetAddress()
	if a.GetPipe() == nil {
		addr, err := socketAddr(a)
		if err != nil {
			return nil, fmt.Errorf("endpoint: %w", err)
		}
		out.addr = addr
	}
	for k, o := range c.GetTypedExtensionProtocolOptions() {
		if k != httpOptsKey {
			return nil, fmt.Errorf("protocol options %s are not emulated", k)
		}
		var ho httpoptsv3.HttpProtocolOptions
		if err := unpack(o, typeHTTPOpts, &ho); err != nil {
			return nil, err
		}
		out.http2 = ho.GetExplicitHttpConfig().GetHttp2ProtocolOptions() != nil
	}
	if ts := c.GetTransportSocket(); ts != nil {
		var u tlsv3.UpstreamTlsContext
		if err := unpack(ts.GetTypedConfig(), typeUpTLS, &u); err != nil {
			return nil, fmt.Errorf("transport socket: %w", err)
		}
		t := &upstreamTLS{sni: u.GetSni()}
		ctx := u.GetCommonTlsContext()
		if len(ctx.GetTlsCertificateSdsSecretConfigs()) > 0 {
			s, err := readSDS(ctx)
			if err != nil {
				return nil, err
			}
			t.secrets = s
			for _, m := range ctx.GetCombinedValidationContext().GetDefaultValidationContext().GetMatchTypedSubjectAltNames() {
				if m.GetSanType() != tlsv3.SubjectAltNameMatcher_URI || m.GetMatcher().GetExact() == "" {
					return nil, errors.New("only exact URI SAN matchers are emulated")
				}
				t.sans = append(t.sans, m.GetMatcher().GetExact())
			}
		}
		// A TLS context without SDS secrets is a plain TLS client (the
		// wasm fetch cluster): no client certificate.
		out.tls = t
	}
	return out, nil
}

// readWasm translates the wasm filter's ECDS resource.
func readWasm(tec *corev3.TypedExtensionConfig) (*wasmCfg, error) {
	if err := tec.ValidateAll(); err != nil {
		return nil, err
	}
	var w wasmfilterv3.Wasm
	if err := unpack(tec.GetTypedConfig(), typeWasm, &w); err != nil {
		return nil, err
	}
	pc := w.GetConfig()
	vm := pc.GetVmConfig()
	if vm == nil {
		return nil, errors.New("only an inline vm_config is emulated")
	}
	out := &wasmCfg{name: tec.GetName(), rootID: pc.GetRootId(), vmID: vm.GetVmId(), runtime: vm.GetRuntime(), code: vm.GetCode()}
	if vm.GetConfiguration() != nil {
		var sv wrapperspb.StringValue
		if err := vm.GetConfiguration().UnmarshalTo(&sv); err != nil {
			return nil, fmt.Errorf("vm configuration: %w", err)
		}
		out.vmConfig = []byte(sv.GetValue())
	}
	if pc.GetConfiguration() != nil {
		var sv wrapperspb.StringValue
		if err := pc.GetConfiguration().UnmarshalTo(&sv); err != nil {
			return nil, fmt.Errorf("plugin configuration: %w", err)
		}
		out.pluginConfig = []byte(sv.GetValue())
	}
	switch {
	case pc.GetFailurePolicy() == wasmv3.FailurePolicy_FAIL_OPEN:
		out.failOpen = true
	//lint:ignore SA1019 Envoy still honours the deprecated fail_open field; so does this emulation
	case pc.GetFailurePolicy() == wasmv3.FailurePolicy_UNSPECIFIED && pc.GetFailOpen():
		out.failOpen = true
	}
	return out, nil
}

// sameModule reports whether two configurations run the same VM, so that a
// new plugin configuration can be applied to the running one.
func (w *wasmCfg) sameModule(o *wasmCfg) bool {
	return o != nil && w.rootID == o.rootID && w.vmID == o.vmID && w.runtime == o.runtime &&
		string(w.vmConfig) == string(o.vmConfig) && proto.Equal(w.code, o.code)
}
