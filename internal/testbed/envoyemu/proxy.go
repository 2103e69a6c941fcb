package envoyemu

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffegrpc/grpccredentials"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/tetratelabs/wazero"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshguard/meshguard/internal/testbed/wasmhost"
)

// Config configures a Proxy.
type Config struct {
	// Node is the proxy's xDS node: the control plane picks its workload by
	// node.cluster (or node.id). Its metadata is what the wasm filter sees
	// as node.metadata and what ext_authz's bootstrap_metadata_labels_key
	// reads.
	Node *corev3.Node
	// XDS is the connection to the control plane's ADS server.
	XDS *grpc.ClientConn
	// SVIDs and Bundles stand in for SDS: the emulator takes the workload's
	// X509-SVID and the trust bundle from a go-spiffe source (the SPIFFE
	// Workload API, or a test CA) instead of asking the SPIRE agent's SDS
	// for the secrets the configuration names. It checks that the names are
	// ones SPIRE serves for them: the SVID's SPIFFE ID (or "default"), the
	// trust domain's ID, "ROOTCA" or "ALL".
	SVIDs   x509svid.Source
	Bundles x509bundle.Source
	// BindHost, if set, replaces an unspecified listener address (0.0.0.0,
	// ::) when binding, so that tests and the demo stay on loopback. The
	// port is the configured one.
	BindHost string
	// Wasm tunes the hosts that run wasm filters.
	Wasm WasmOptions
	// Name labels outcomes and logs; default node.cluster.
	Name string
	// OnOutcome, if set, is called once per request on an inbound
	// listener, after the response.
	OnOutcome func(Outcome)
	Logger    *slog.Logger
}

// WasmOptions tune the wazero proxy-wasm hosts of the proxy's wasm filters.
type WasmOptions struct {
	// VMs per filter (Envoy workers). Default 1.
	VMs int
	// CompilationCache shares compiled modules between proxies.
	CompilationCache wazero.CompilationCache
	// Load returns the module a VM configuration names. Default: the local
	// file (code.local.filename), or the remote one fetched through its
	// cluster and checked against its sha256.
	Load func(ctx context.Context, code *corev3.AsyncDataSource) ([]byte, error)
}

// Outcome reports how the proxy handled one request on a listener.
type Outcome struct {
	Time     time.Time
	Workload string
	Listener string
	Source   string // the caller's URI SAN
	Method   string
	Path     string
	Route    string
	// RequestID is the x-request-id the proxy generated (the authz
	// decision log carries it).
	RequestID string
	Status    int
	// DeniedBy is empty when the request reached the upstream, otherwise
	// one of DeniedByFilter, DeniedByAuthz, DeniedAuthzError, DeniedNoRoute,
	// DeniedFilterErr, DeniedByProxy.
	DeniedBy string
	// Reason is x-meshguard-reason of a local reply, or the error.
	Reason  string
	Latency time.Duration
}

// Values of Outcome.DeniedBy.
const (
	DeniedByFilter   = "filter"
	DeniedByAuthz    = "authz"
	DeniedAuthzError = "authz-error"
	DeniedNoRoute    = "no-route"
	DeniedFilterErr  = "filter-error"
	// DeniedByProxy: the connection manager answered (a path redirect or
	// rejection, an unknown cluster, an upstream failure).
	DeniedByProxy = "proxy"
)

// Proxy is an Envoy-emulating proxy configured by a control plane over
// ADS: it serves the listeners, routes, clusters and filters it receives,
// as received.
type Proxy struct {
	cfg  Config
	log  *slog.Logger
	ctx  context.Context
	stop context.CancelFunc
	done chan struct{}

	// mu guards the xDS state, which the ADS goroutine changes and
	// requests never read: they read state.
	mu        sync.Mutex
	listeners map[string]*listenerCfg
	routes    map[string]*routeTable
	clusters  map[string]*clusterCfg
	cdsKnown  bool
	filters   map[string]*wasmInstance
	servers   map[string]*server
	warming   string

	state atomic.Pointer[dataplane]
	ready chan struct{}
	once  sync.Once

	// connections to upstream clusters, by cluster name; replaced when the
	// cluster changes.
	cmu     sync.Mutex
	authz   map[string]*authzConn
	clients map[string]*httpConn
}

// dataplane is a consistent configuration, swapped in whole: every
// listener with its route configuration and filter configurations.
type dataplane struct {
	listeners map[string]*listenerCfg
	routes    map[string]*routeTable
	clusters  map[string]*clusterCfg
	filters   map[string]*wasmInstance
}

type wasmInstance struct {
	cfg    *wasmCfg
	host   *wasmhost.Host
	filter *WasmFilter
}

type server struct {
	cfgAddr string
	tls     bool
	srv     *http.Server
	ln      net.Listener
}

type authzConn struct {
	cfg    *clusterCfg
	cc     *grpc.ClientConn
	client authv3.AuthorizationClient
}

type httpConn struct {
	cfg    *clusterCfg
	client *http.Client
	tr     *http.Transport
}

// Start connects the proxy to the control plane. It returns at once; Ready
// waits for the first complete configuration.
func Start(ctx context.Context, cfg Config) (*Proxy, error) {
	var errs []error
	if cfg.Node == nil || (cfg.Node.GetId() == "" && cfg.Node.GetCluster() == "") {
		errs = append(errs, errors.New("a node with an id or a cluster is required"))
	}
	if cfg.XDS == nil {
		errs = append(errs, errors.New("a connection to the control plane is required"))
	}
	if cfg.SVIDs == nil || cfg.Bundles == nil {
		errs = append(errs, errors.New("the SVID and bundle sources are required"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("envoyemu: %w", err)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Name == "" {
		cfg.Name = cmpOr(cfg.Node.GetCluster(), cfg.Node.GetId())
	}
	if cfg.Wasm.VMs == 0 {
		cfg.Wasm.VMs = 1
	}
	ctx, stop := context.WithCancel(ctx)
	p := &Proxy{cfg: cfg, log: cfg.Logger.With("proxy", cfg.Name), ctx: ctx, stop: stop, done: make(chan struct{}),
		listeners: map[string]*listenerCfg{}, routes: map[string]*routeTable{}, clusters: map[string]*clusterCfg{},
		filters: map[string]*wasmInstance{}, servers: map[string]*server{}, ready: make(chan struct{}),
		authz: map[string]*authzConn{}, clients: map[string]*httpConn{}, warming: "no listeners yet"}
	if p.cfg.Wasm.Load == nil {
		p.cfg.Wasm.Load = p.loadModule
	}
	ads := newADSClient(cfg.XDS, cfg.Node, p.log, p.handle, p.names)
	go func() { defer close(p.done); ads.run(ctx) }()
	return p, nil
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// Ready waits until the proxy serves a complete configuration: every
// listener bound, with its routes and filter configurations (Envoy's
// listeners warm until then).
func (p *Proxy) Ready(ctx context.Context) error {
	select {
	case <-p.ready:
		return nil
	case <-ctx.Done():
		p.mu.Lock()
		why := p.warming
		p.mu.Unlock()
		return fmt.Errorf("envoyemu: %s: not ready: %s: %w", p.cfg.Name, why, ctx.Err())
	}
}

// Listener returns the address a listener is bound to.
func (p *Proxy) Listener(name string) (string, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s, ok := p.servers[name]
	if !ok {
		return "", false
	}
	return s.ln.Addr().String(), true
}

// Listeners lists the names of the listeners being served.
func (p *Proxy) Listeners() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for n := range p.servers {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// WasmHost returns the host running the wasm filter of an ECDS resource
// (for metrics and ticks in tests).
func (p *Proxy) WasmHost(ecds string) (*wasmhost.Host, bool) {
	dp := p.state.Load()
	if dp == nil {
		return nil, false
	}
	w, ok := dp.filters[ecds]
	if !ok {
		return nil, false
	}
	return w.host, true
}

// Close stops the ADS stream, the listeners (waiting for in-flight
// requests up to ctx), the filters and the upstream connections.
func (p *Proxy) Close(ctx context.Context) error {
	p.stop()
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	for name, s := range p.servers {
		if err := s.srv.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("listener %s: %w", name, err))
		}
	}
	for _, w := range p.filters {
		_ = w.host.Close()
	}
	p.cmu.Lock()
	for _, a := range p.authz {
		_ = a.cc.Close()
	}
	for _, c := range p.clients {
		c.tr.CloseIdleConnections()
	}
	p.cmu.Unlock()
	return errors.Join(errs...)
}

// names are the RDS and ECDS resources the current listeners use.
func (p *Proxy) names(typeURL string) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for _, l := range p.listeners {
		switch typeURL {
		case resource.RouteType:
			out = append(out, l.hcm.routeConfig)
		case resource.ExtensionConfigType:
			for _, f := range l.hcm.filters {
				if f.kind == kindWasm {
					out = append(out, f.ecds)
				}
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// handle applies one xDS response; an error NACKs it and leaves the
// previous resources of its type in force.
func (p *Proxy) handle(typeURL string, res []*anypb.Any) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var err error
	switch typeURL {
	case resource.ListenerType:
		err = p.onListeners(res)
	case resource.RouteType:
		err = p.onRoutes(res)
	case resource.ClusterType:
		err = p.onClusters(res)
	case resource.ExtensionConfigType:
		err = p.onFilters(res)
	default:
		err = fmt.Errorf("type %s not asked for", typeURL)
	}
	if err != nil {
		return err
	}
	return p.rebuild()
}

func (p *Proxy) onListeners(res []*anypb.Any) error {
	next := map[string]*listenerCfg{}
	var errs []error
	for _, a := range res {
		var l listenerv3.Listener
		if err := a.UnmarshalTo(&l); err != nil {
			errs = append(errs, err)
			continue
		}
		lc, err := readListener(&l)
		if err != nil {
			errs = append(errs, fmt.Errorf("listener %s: %w", l.GetName(), err))
			continue
		}
		if lc.tls != nil {
			if err := p.checkSecrets(lc.tls.secrets); err != nil {
				errs = append(errs, fmt.Errorf("listener %s: %w", l.GetName(), err))
				continue
			}
		}
		next[lc.name] = lc
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	p.listeners = next
	return nil
}

func (p *Proxy) onRoutes(res []*anypb.Any) error {
	next := map[string]*routeTable{}
	var errs []error
	for _, a := range res {
		var rc routev3.RouteConfiguration
		if err := a.UnmarshalTo(&rc); err != nil {
			errs = append(errs, err)
			continue
		}
		rt, err := readRoutes(&rc)
		if err != nil {
			errs = append(errs, fmt.Errorf("route configuration %s: %w", rc.GetName(), err))
			continue
		}
		if rt.validateClusters && p.cdsKnown {
			if err := p.checkClusters(rt); err != nil {
				errs = append(errs, err)
				continue
			}
		}
		next[rt.name] = rt
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	p.routes = next
	return nil
}

// checkClusters is validate_clusters: a route to a cluster the proxy does
// not have refuses the route configuration.
func (p *Proxy) checkClusters(rt *routeTable) error {
	for _, vh := range rt.vhosts {
		for _, r := range vh.routes {
			if _, ok := p.clusters[r.cluster]; !ok {
				return fmt.Errorf("route configuration %s: route %s: unknown cluster %s", rt.name, r.name, r.cluster)
			}
		}
	}
	return nil
}

func (p *Proxy) onClusters(res []*anypb.Any) error {
	next := map[string]*clusterCfg{}
	var errs []error
	for _, a := range res {
		var c clusterv3.Cluster
		if err := a.UnmarshalTo(&c); err != nil {
			errs = append(errs, err)
			continue
		}
		cc, err := readCluster(&c)
		if err != nil {
			errs = append(errs, fmt.Errorf("cluster %s: %w", c.GetName(), err))
			continue
		}
		if cc.tls != nil && cc.tls.secrets.cert != "" {
			if err := p.checkSecrets(cc.tls.secrets); err != nil {
				errs = append(errs, fmt.Errorf("cluster %s: %w", c.GetName(), err))
				continue
			}
		}
		next[cc.name] = cc
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	p.clusters, p.cdsKnown = next, true
	return nil
}

// checkSecrets stands in for SDS: the names must be secrets the SPIRE
// agent serves for this workload, which the SVID source provides.
func (p *Proxy) checkSecrets(s sdsNames) error {
	svid, err := p.cfg.SVIDs.GetX509SVID()
	if err != nil {
		return fmt.Errorf("SVID: %w", err)
	}
	if s.cert != svid.ID.String() && s.cert != "default" {
		return fmt.Errorf("SDS certificate %q is not this workload's SVID (%s)", s.cert, svid.ID)
	}
	switch s.validation {
	case svid.ID.TrustDomain().IDString(), "ROOTCA", "ALL":
	default:
		return fmt.Errorf("SDS validation context %q is not a trust bundle SPIRE serves", s.validation)
	}
	return nil
}

// onFilters applies wasm filter configurations (ECDS): a new plugin
// configuration for a running module reconfigures it; a new module starts
// a new host. A configuration the filter refuses, or a module that does
// not load, is NACKed and the previous one keeps serving.
func (p *Proxy) onFilters(res []*anypb.Any) error {
	next := map[string]*wasmInstance{}
	var started []*wasmInstance
	fail := func(err error) error {
		for _, w := range started {
			_ = w.host.Close()
		}
		return err
	}
	for _, a := range res {
		var tec corev3.TypedExtensionConfig
		if err := a.UnmarshalTo(&tec); err != nil {
			return fail(err)
		}
		wc, err := readWasm(&tec)
		if err != nil {
			return fail(fmt.Errorf("filter config %s: %w", tec.GetName(), err))
		}
		cur := p.filters[wc.name]
		if cur != nil && wc.sameModule(cur.cfg) {
			if string(wc.pluginConfig) != string(cur.cfg.pluginConfig) {
				if err := cur.host.Reconfigure(wc.pluginConfig); err != nil {
					return fail(fmt.Errorf("filter config %s: %w", wc.name, err))
				}
			}
			next[wc.name] = &wasmInstance{cfg: wc, host: cur.host, filter: cur.filter}
			continue
		}
		w, err := p.startWasm(wc)
		if err != nil {
			return fail(fmt.Errorf("filter config %s: %w", wc.name, err))
		}
		started = append(started, w)
		next[wc.name] = w
	}
	for name, old := range p.filters {
		if n, ok := next[name]; !ok || n.host != old.host {
			// In-flight requests may still run in it: close it later.
			h := old.host
			time.AfterFunc(5*time.Second, func() { _ = h.Close() })
		}
	}
	p.filters = next
	return nil
}

func (p *Proxy) startWasm(wc *wasmCfg) (*wasmInstance, error) {
	module, err := p.cfg.Wasm.Load(p.ctx, wc.code)
	if err != nil {
		return nil, fmt.Errorf("load module: %w", err)
	}
	h, err := wasmhost.New(p.ctx, module, wasmhost.Config{
		PluginConfig: wc.pluginConfig, VMConfig: wc.vmConfig, VMs: p.cfg.Wasm.VMs,
		PluginName: wc.name, RootID: wc.rootID, VMID: wc.vmID,
		Properties: NodeProperties(p.cfg.Node), HTTPCall: p.callout,
		CompilationCache: p.cfg.Wasm.CompilationCache, Logger: p.log,
	})
	if err != nil {
		return nil, err
	}
	return &wasmInstance{cfg: wc, host: h, filter: NewWasmFilter(h)}, nil
}

// loadModule reads a local module, or fetches a remote one through its
// cluster and checks its sha256, as Envoy does.
func (p *Proxy) loadModule(ctx context.Context, code *corev3.AsyncDataSource) ([]byte, error) {
	if l := code.GetLocal(); l != nil {
		if f := l.GetFilename(); f != "" {
			return os.ReadFile(f)
		}
		if b := l.GetInlineBytes(); len(b) > 0 {
			return b, nil
		}
		return nil, errors.New("local data source without a file name or bytes")
	}
	r := code.GetRemote()
	if r == nil {
		return nil, errors.New("no module source")
	}
	return p.fetchRemote(ctx, r)
}

// rebuild swaps in a new dataplane when every listener is warm: its route
// configuration and filter configurations are there and the clusters are
// known. Listeners are then bound, kept or closed to match.
func (p *Proxy) rebuild() error {
	if !p.cdsKnown {
		p.warming = "no clusters yet"
		return nil
	}
	if len(p.listeners) == 0 {
		p.warming = "no listeners yet"
		return nil
	}
	for _, l := range p.listeners {
		if _, ok := p.routes[l.hcm.routeConfig]; !ok {
			p.warming = fmt.Sprintf("listener %s waits for route configuration %s", l.name, l.hcm.routeConfig)
			return nil
		}
		for _, f := range l.hcm.filters {
			if f.kind != kindWasm {
				continue
			}
			if _, ok := p.filters[f.ecds]; !ok {
				p.warming = fmt.Sprintf("listener %s waits for filter configuration %s", l.name, f.ecds)
				return nil
			}
		}
	}
	dp := &dataplane{listeners: p.listeners, routes: p.routes, clusters: p.clusters, filters: p.filters}
	p.state.Store(dp)
	if err := p.bind(dp); err != nil {
		p.warming = err.Error()
		return err
	}
	p.warming = ""
	p.once.Do(func() { close(p.ready) })
	return nil
}

// bind starts the listeners dp has and the proxy does not serve yet (or
// serves on another address), and stops the ones dp no longer has.
func (p *Proxy) bind(dp *dataplane) error {
	var errs []error
	for name, l := range dp.listeners {
		if s, ok := p.servers[name]; ok && s.cfgAddr == l.addr && s.tls == (l.tls != nil) {
			continue
		}
		if s, ok := p.servers[name]; ok {
			go func() { _ = s.srv.Shutdown(context.Background()) }()
			delete(p.servers, name)
		}
		s, err := p.listen(name, l)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		p.servers[name] = s
	}
	for name, s := range p.servers {
		if _, ok := dp.listeners[name]; !ok {
			go func() { _ = s.srv.Shutdown(context.Background()) }()
			delete(p.servers, name)
		}
	}
	return errors.Join(errs...)
}

func (p *Proxy) listen(name string, l *listenerCfg) (*server, error) {
	addr := l.addr
	if p.cfg.BindHost != "" {
		if host, port, err := net.SplitHostPort(addr); err == nil {
			if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
				addr = net.JoinHostPort(p.cfg.BindHost, port)
			}
		}
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listener %s: bind %s: %w", name, addr, err)
	}
	if l.tls != nil {
		// DownstreamTlsContext with require_client_certificate and the
		// trust bundle as validation context: any peer of the bundle is
		// accepted; authorization is the filters' job.
		ln = tls.NewListener(ln, tlsconfig.MTLSServerConfig(p.cfg.SVIDs, p.cfg.Bundles, tlsconfig.AuthorizeAny()))
	}
	h := &listenerHandler{p: p, name: name}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second,
		ErrorLog: slog.NewLogLogger(p.log.Handler(), slog.LevelDebug)}
	go func() { _ = srv.Serve(ln) }()
	return &server{cfgAddr: l.addr, tls: l.tls != nil, srv: srv, ln: ln}, nil
}

// authzClient is the gRPC client of an ext_authz cluster: HTTP/2 to its
// endpoint, mTLS with the workload's SVID and the SAN the cluster names.
func (p *Proxy) authzClient(c *clusterCfg) (authv3.AuthorizationClient, error) {
	p.cmu.Lock()
	defer p.cmu.Unlock()
	if a, ok := p.authz[c.name]; ok && a.cfg == c {
		return a.client, nil
	}
	if !c.http2 {
		return nil, fmt.Errorf("cluster %s: gRPC needs HTTP/2 protocol options", c.name)
	}
	if c.addr == "" {
		return nil, fmt.Errorf("cluster %s: no socket endpoint", c.name)
	}
	creds := grpc.WithTransportCredentials(insecure.NewCredentials())
	if c.tls != nil {
		auth, err := sanAuthorizer(c.tls.sans)
		if err != nil {
			return nil, fmt.Errorf("cluster %s: %w", c.name, err)
		}
		creds = grpc.WithTransportCredentials(grpccredentials.MTLSClientCredentials(p.cfg.SVIDs, p.cfg.Bundles, auth))
	}
	cc, err := grpc.NewClient(c.addr, creds)
	if err != nil {
		return nil, fmt.Errorf("cluster %s: %w", c.name, err)
	}
	if old, ok := p.authz[c.name]; ok {
		go func() { time.Sleep(5 * time.Second); _ = old.cc.Close() }()
	}
	a := &authzConn{cfg: c, cc: cc, client: authv3.NewAuthorizationClient(cc)}
	p.authz[c.name] = a
	return a.client, nil
}

// httpClient is the HTTP client of a cluster: plain HTTP, or TLS with the
// workload's SVID and the SANs the cluster names (secure naming).
func (p *Proxy) httpClient(c *clusterCfg) (*http.Client, string, error) {
	scheme := "http"
	if c.tls != nil {
		scheme = "https"
	}
	p.cmu.Lock()
	defer p.cmu.Unlock()
	if h, ok := p.clients[c.name]; ok && h.cfg == c {
		return h.client, scheme, nil
	}
	if c.addr == "" {
		return nil, "", fmt.Errorf("cluster %s: no socket endpoint", c.name)
	}
	tr := &http.Transport{MaxIdleConnsPerHost: 64, IdleConnTimeout: 30 * time.Second, ForceAttemptHTTP2: c.http2}
	if c.tls != nil {
		var tc *tls.Config
		if c.tls.secrets.cert != "" {
			auth, err := sanAuthorizer(c.tls.sans)
			if err != nil {
				return nil, "", fmt.Errorf("cluster %s: %w", c.name, err)
			}
			tc = tlsconfig.MTLSClientConfig(p.cfg.SVIDs, p.cfg.Bundles, auth)
		} else {
			tc = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		tc.ServerName = c.tls.sni
		tr.TLSClientConfig = tc
	}
	if old, ok := p.clients[c.name]; ok {
		old.tr.CloseIdleConnections()
	}
	h := &httpConn{cfg: c, tr: tr, client: &http.Client{Transport: tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
	p.clients[c.name] = h
	return h.client, scheme, nil
}

// sanAuthorizer accepts a peer whose URI SAN is one of sans; without SAN
// matchers any peer of the trust bundle (Envoy's validation context alone).
func sanAuthorizer(sans []string) (tlsconfig.Authorizer, error) {
	if len(sans) == 0 {
		return tlsconfig.AuthorizeAny(), nil
	}
	ids := make([]spiffeid.ID, 0, len(sans))
	for _, s := range sans {
		id, err := spiffeid.FromString(s)
		if err != nil {
			return nil, fmt.Errorf("SAN %q is not a SPIFFE ID (the emulator matches SPIFFE IDs): %w", s, err)
		}
		ids = append(ids, id)
	}
	return tlsconfig.AuthorizeOneOf(ids...), nil
}
