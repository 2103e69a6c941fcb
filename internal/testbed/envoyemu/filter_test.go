package envoyemu

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	corsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"
	wasmfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/wasm/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/spiffe/go-spiffe/v2/spiffegrpc/grpccredentials"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshguard/meshguard/controlplane/istiogen"
	"github.com/meshguard/meshguard/controlplane/mesh"
	"github.com/meshguard/meshguard/controlplane/xds"
	"github.com/meshguard/meshguard/internal/testbed/ca"
	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/source"
	"github.com/meshguard/meshguard/wasm/wasmtest"
)

var (
	moduleOnce sync.Once
	modulePath string
	moduleErr  error
)

// filterModule builds the real wasm filter once per test binary, as
// `make wasm` does, and returns its path.
func filterModule(t *testing.T) string {
	t.Helper()
	moduleOnce.Do(func() {
		root, err := wasmtest.ModuleRoot(".")
		if err != nil {
			moduleErr = err
			return
		}
		dir, err := os.MkdirTemp("", "mg-envoyemu-wasm-")
		if err != nil {
			moduleErr = err
			return
		}
		modulePath = filepath.Join(dir, "meshguard-filter.wasm")
		moduleErr = wasmtest.Build(root, wasmtest.FilterPackage, modulePath)
	})
	if moduleErr != nil {
		t.Fatal(moduleErr)
	}
	return modulePath
}

// versionsMesh is catalog-v1 and catalog-v2 (one service account, labels
// differ), both with the wasm filter, and the policies that tell them apart.
func versionsMesh(authzPort, v1Port, v2Port, appPort int, module string) string {
	return fmt.Sprintf(`apiVersion: meshguard.dev/v1alpha1
kind: Mesh
metadata: {name: t}
spec:
  trustDomain: cluster.local
  authz: {address: 127.0.0.1, port: %d, spiffeID: spiffe://cluster.local/ns/meshguard/sa/authz, timeout: 2s}
  controlPlane: {address: 127.0.0.1, port: 1, spiffeID: spiffe://cluster.local/ns/meshguard/sa/controlplane}
  wasm: {file: %s, requireMtls: true}
  workloads:
  - name: catalog-v1
    namespace: bookstore
    spiffeID: spiffe://cluster.local/ns/bookstore/sa/catalog
    service: catalog
    labels: {app: catalog, version: v1}
    inbound: [{name: http, port: %d, appPort: %d, routes: [{name: catalog-api, prefix: /}]}]
  - name: catalog-v2
    namespace: bookstore
    spiffeID: spiffe://cluster.local/ns/bookstore/sa/catalog
    service: catalog
    labels: {app: catalog, version: v2}
    inbound: [{name: http, port: %d, appPort: %d, routes: [{name: catalog-api, prefix: /}]}]
`, authzPort, module, v1Port, appPort, v2Port, appPort+1)
}

const versionsPolicies = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: read, namespace: bookstore}
spec:
  rules: [{to: [{operation: {methods: [GET]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: v2-no-export, namespace: bookstore}
spec:
  selector: {matchLabels: {app: catalog, version: v2}}
  action: DENY
  rules: [{to: [{operation: {paths: [/api/export]}}]}]
`

// testbed is what the wasm tests share: a CA, a fake authz server, apps.
type testbed struct {
	authority *ca.CA
	fa        *fakeAuthz
	authzPort int
	appPort   int
}

func newTestbed(t *testing.T) *testbed {
	t.Helper()
	authority, err := ca.New(td)
	if err != nil {
		t.Fatal(err)
	}
	tb := &testbed{authority: authority, fa: &fakeAuthz{}}
	gs := grpc.NewServer(grpc.Creds(grpccredentials.MTLSServerCredentials(svid(t, authority, sa("meshguard", "authz")),
		authority.X509Bundle(), tlsconfig.AuthorizeMemberOf(td))))
	authv3.RegisterAuthorizationServer(gs, tb.fa)
	gl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(gl) }()
	t.Cleanup(gs.Stop)
	tb.authzPort = gl.Addr().(*net.TCPAddr).Port
	// Two apps on consecutive ports.
	for {
		tb.appPort = freePort(t)
		var ls []net.Listener
		for i := 0; i < 2; i++ {
			l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(tb.appPort+i))
			if err != nil {
				break
			}
			ls = append(ls, l)
		}
		if len(ls) == 2 {
			for _, l := range ls {
				srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					_, _ = w.Write([]byte(r.Header.Get("x-meshguard-route")))
				})}
				go func() { _ = srv.Serve(l) }()
				t.Cleanup(func() { _ = srv.Close() })
			}
			return tb
		}
		for _, l := range ls {
			l.Close()
		}
	}
}

func (tb *testbed) call(t *testing.T, addr, path string) (int, string) {
	t.Helper()
	c := OutboundClient(svid(t, tb.authority, sa("bookstore", "frontend")), tb.authority.X509Bundle(), sa("bookstore", "catalog"), 10*time.Second)
	defer c.CloseIdleConnections()
	resp, err := c.Get("https://" + addr + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("x-meshguard-reason")
}

// TestWasmFilterFromECDS: the compiled filter runs as the control plane's
// ECDS resource configures it (the module file it names, the plugin
// configuration listing the mesh's workloads with their complete labels)
// in front of ext_authz: it tells catalog-v1 from catalog-v2 by labels.
func TestWasmFilterFromECDS(t *testing.T) {
	module := filterModule(t)
	tb := newTestbed(t)
	v1Port, v2Port := freePort(t), freePort(t)
	cp := startControlPlane(t, versionsMesh(tb.authzPort, v1Port, v2Port, tb.appPort, module))
	cp.publish(t, "v1", versionsPolicies)
	bundle := tb.authority.X509Bundle()
	catalog := svid(t, tb.authority, sa("bookstore", "catalog"))
	var mu sync.Mutex
	var outcomes []Outcome
	for _, name := range []string{"catalog-v1", "catalog-v2"} {
		startProxy(t, cp, &corev3.Node{Id: name + "-1", Cluster: name + ".bookstore"}, catalog, bundle,
			func(o Outcome) { mu.Lock(); outcomes = append(outcomes, o); mu.Unlock() })
	}
	v1, v2 := "127.0.0.1:"+strconv.Itoa(v1Port), "127.0.0.1:"+strconv.Itoa(v2Port)
	if st, _ := tb.call(t, v1, "/api/export"); st != 200 {
		t.Errorf("v1 /api/export: %d, want 200", st)
	}
	n := tb.fa.count()
	st, reason := tb.call(t, v2, "/api/export")
	mu.Lock()
	last := outcomes[len(outcomes)-1]
	mu.Unlock()
	if st != 403 || reason != string(policies.ReasonDeniedByPolicy) || last.DeniedBy != DeniedByFilter || tb.fa.count() != n {
		t.Errorf("v2 /api/export: %d %q by %q; want 403 denied_by_policy by the filter, before ext_authz", st, reason, last.DeniedBy)
	}
	// Allowed by the filter, then checked by ext_authz with the route the
	// filter stamped.
	if st, _ := tb.call(t, v2, "/api/books"); st != 200 ||
		tb.fa.last().GetAttributes().GetRequest().GetHttp().GetHeaders()["x-meshguard-route"] != "catalog-api" {
		t.Errorf("v2 /api/books: %d, route header %q", st, tb.fa.last().GetAttributes().GetRequest().GetHttp().GetHeaders()["x-meshguard-route"])
	}
}

// TestWasmFilterReadsIstioNodeLabels is the Istio WasmPlugin mode: one
// plugin configuration for both versions (as `meshguard istio generate`
// writes it, labelsFrom: node), delivered as Istio delivers a WasmPlugin's
// pluginConfig (a JSON string in the Wasm filter's configuration); each
// proxy's node metadata LABELS, as Istio's injector sets them, decides
// which selector-scoped policies apply.
func TestWasmFilterReadsIstioNodeLabels(t *testing.T) {
	module := filterModule(t)
	tb := newTestbed(t)
	v1Port, v2Port := freePort(t), freePort(t)
	m, err := mesh.Parse([]byte(versionsMesh(tb.authzPort, v1Port, v2Port, tb.appPort, module)))
	if err != nil {
		t.Fatal(err)
	}
	set, diags := source.Parse("p.yaml", []byte(versionsPolicies))
	if err := diags.Err(); err != nil {
		t.Fatal(err)
	}
	b, _, err := policies.NewBundle("v1", set)
	if err != nil {
		t.Fatal(err)
	}
	out, err := istiogen.Generate(istiogen.Config{Bundle: b,
		Provider: istiogen.Provider{Service: "meshguard-authz.meshguard.svc.cluster.local"},
		// The bundle embedded: this emulated mesh has no control plane
		// for the filter to fetch it from (cmd/meshguard's
		// TestKubeIstioFiltersFollowTheCluster runs the fetching default).
		Wasm:    istiogen.Wasm{URL: "oci://example/filter:v1", RequireMTLS: true, BundleFrom: istiogen.BundleFromEmbedded},
		Targets: []istiogen.Target{{Namespace: "bookstore", Selector: map[string]string{"app": "catalog"}}}})
	if err != nil {
		t.Fatal(err)
	}
	pluginJSON, err := protojson.Marshal(out.WasmPlugins[0].Spec.PluginConfig)
	if err != nil {
		t.Fatal(err)
	}

	// The listeners, routes and clusters are the control plane's; the
	// filter configuration is Istio's translation of the WasmPlugin.
	g := xds.NewGenerator(m)
	eb, err := g.Encode(b)
	if err != nil {
		t.Fatal(err)
	}
	var wf wasmfilterv3.Wasm
	if err := eb.Filter.TypedConfig.UnmarshalTo(&wf); err != nil {
		t.Fatal(err)
	}
	wf.Config.Configuration, _ = anypb.New(wrapperspb.String(string(pluginJSON)))
	istioFilter := &corev3.TypedExtensionConfig{Name: eb.Filter.Name}
	istioFilter.TypedConfig, _ = anypb.New(&wf)

	snapCache := cachev3.NewSnapshotCache(false, cachev3.IDHash{}, nil)
	for _, w := range m.Workloads {
		snap, err := g.Snapshot(w, eb)
		if err != nil {
			t.Fatal(err)
		}
		res := map[resource.Type][]types.Resource{resource.ExtensionConfigType: {istioFilter}}
		for _, typ := range []resource.Type{resource.ListenerType, resource.RouteType, resource.ClusterType} {
			for _, r := range snap.GetResources(typ) {
				res[typ] = append(res[typ], r)
			}
		}
		s, err := cachev3.NewSnapshot("1", res)
		if err != nil {
			t.Fatal(err)
		}
		if err := snapCache.SetSnapshot(context.Background(), w.Name+"-pod", s); err != nil {
			t.Fatal(err)
		}
	}
	cc := serveCache(t, snapCache, nil)

	bundle := tb.authority.X509Bundle()
	catalog := svid(t, tb.authority, sa("bookstore", "catalog"))
	for _, version := range []string{"v1", "v2"} {
		labels, _ := structpb.NewStruct(map[string]any{"app": "catalog", "version": version, "istio-locality": "region1"})
		node := &corev3.Node{Id: "catalog-" + version + "-pod", Cluster: "catalog",
			Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{istiogen.NodeLabelsKey: structpb.NewStructValue(labels)}}}
		p, err := Start(context.Background(), Config{Node: node, XDS: cc, SVIDs: catalog, Bundles: bundle, BindHost: "127.0.0.1",
			Wasm: WasmOptions{CompilationCache: testCache}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = p.Close(context.Background()) })
		ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
		err = p.Ready(ctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
	}
	v1, v2 := "127.0.0.1:"+strconv.Itoa(v1Port), "127.0.0.1:"+strconv.Itoa(v2Port)
	if st, _ := tb.call(t, v1, "/api/export"); st != 200 {
		t.Errorf("v1 /api/export: %d, want 200", st)
	}
	if st, reason := tb.call(t, v2, "/api/export"); st != 403 || reason != string(policies.ReasonDeniedByPolicy) {
		t.Errorf("v2 /api/export: %d %q, want 403 denied_by_policy", st, reason)
	}
	if st, _ := tb.call(t, v2, "/api/books"); st != 200 {
		t.Errorf("v2 /api/books: %d, want 200", st)
	}
}

// serveCache serves a snapshot cache over ADS on loopback; nacks, if set,
// receives the error of every NACK.
func serveCache(t *testing.T, c cachev3.SnapshotCache, nacks chan<- string) *grpc.ClientConn {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	cb := serverv3.CallbackFuncs{StreamRequestFunc: func(_ int64, r *discoveryv3.DiscoveryRequest) error {
		if r.GetErrorDetail() != nil && nacks != nil {
			select {
			case nacks <- r.GetTypeUrl() + ": " + r.GetErrorDetail().GetMessage():
			default:
			}
		}
		return nil
	}}
	srv := serverv3.NewServer(ctx, c, cb)
	gs := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(gs, srv)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(l) }()
	t.Cleanup(gs.Stop)
	cc, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// TestProxyRefusesWhatItCannotEmulate: a listener with an HTTP filter the
// emulator does not implement, or naming a certificate its SVID source
// cannot serve, is NACKed with the reason, not silently half-applied.
func TestProxyRefusesWhatItCannotEmulate(t *testing.T) {
	authority, err := ca.New(td)
	if err != nil {
		t.Fatal(err)
	}
	m, err := mesh.Parse([]byte(fmt.Sprintf(`apiVersion: meshguard.dev/v1alpha1
kind: Mesh
metadata: {name: t}
spec:
  trustDomain: cluster.local
  authz: {address: 127.0.0.1, port: 9, spiffeID: spiffe://cluster.local/ns/meshguard/sa/authz}
  controlPlane: {address: 127.0.0.1, port: 1, spiffeID: spiffe://cluster.local/ns/meshguard/sa/controlplane}
  wasm: {file: /nonexistent.wasm}
  workloads:
  - {name: catalog, namespace: bookstore, spiffeID: spiffe://cluster.local/ns/bookstore/sa/catalog, disableWasm: true,
     inbound: [{name: http, port: %d, appPort: %d, routes: [{name: r, prefix: /}]}]}
`, freePort(t), freePort(t))))
	if err != nil {
		t.Fatal(err)
	}
	b, _, err := policies.NewBundle("v1", policies.Set{})
	if err != nil {
		t.Fatal(err)
	}
	g := xds.NewGenerator(m)
	eb, err := g.Encode(b)
	if err != nil {
		t.Fatal(err)
	}
	snap, err := g.Snapshot(m.Workloads[0], eb)
	if err != nil {
		t.Fatal(err)
	}
	generated := snap.GetResources(resource.ListenerType)["inbound_http"].(*listenerv3.Listener)

	for _, tc := range []struct {
		name   string
		mutate func(*hcmv3.HttpConnectionManager, *tlsv3.DownstreamTlsContext)
		want   string
	}{
		{"an HTTP filter it does not implement", func(h *hcmv3.HttpConnectionManager, _ *tlsv3.DownstreamTlsContext) {
			cors, _ := anypb.New(&corsv3.Cors{})
			h.HttpFilters = append([]*hcmv3.HttpFilter{{Name: "envoy.filters.http.cors", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: cors}}}, h.HttpFilters...)
		}, "is not emulated"},
		{"a certificate that is not the workload's", func(_ *hcmv3.HttpConnectionManager, d *tlsv3.DownstreamTlsContext) {
			d.CommonTlsContext.TlsCertificateSdsSecretConfigs[0].Name = "spiffe://cluster.local/ns/bookstore/sa/other"
		}, "is not this workload's SVID"},
		{"the router not last", func(h *hcmv3.HttpConnectionManager, _ *tlsv3.DownstreamTlsContext) {
			h.HttpFilters[0], h.HttpFilters[1] = h.HttpFilters[1], h.HttpFilters[0]
		}, "router must be the last"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := proto.Clone(generated).(*listenerv3.Listener)
			var h hcmv3.HttpConnectionManager
			if err := l.FilterChains[0].Filters[0].GetTypedConfig().UnmarshalTo(&h); err != nil {
				t.Fatal(err)
			}
			var d tlsv3.DownstreamTlsContext
			if err := l.FilterChains[0].TransportSocket.GetTypedConfig().UnmarshalTo(&d); err != nil {
				t.Fatal(err)
			}
			tc.mutate(&h, &d)
			hAny, _ := anypb.New(&h)
			dAny, _ := anypb.New(&d)
			l.FilterChains[0].Filters[0].ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: hAny}
			l.FilterChains[0].TransportSocket.ConfigType = &corev3.TransportSocket_TypedConfig{TypedConfig: dAny}
			res := map[resource.Type][]types.Resource{resource.ListenerType: {l}}
			for _, typ := range []resource.Type{resource.RouteType, resource.ClusterType} {
				for _, r := range snap.GetResources(typ) {
					res[typ] = append(res[typ], r)
				}
			}
			s, err := cachev3.NewSnapshot("1", res)
			if err != nil {
				t.Fatal(err)
			}
			c := cachev3.NewSnapshotCache(false, cachev3.IDHash{}, nil)
			if err := c.SetSnapshot(context.Background(), "n", s); err != nil {
				t.Fatal(err)
			}
			nacks := make(chan string, 8)
			cc := serveCache(t, c, nacks)
			p, err := Start(context.Background(), Config{Node: &corev3.Node{Id: "n"}, XDS: cc,
				SVIDs: svid(t, authority, sa("bookstore", "catalog")), Bundles: authority.X509Bundle(), BindHost: "127.0.0.1"})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = p.Close(context.Background()) })
			select {
			case n := <-nacks:
				if !strings.HasPrefix(n, resource.ListenerType) || !strings.Contains(n, tc.want) {
					t.Fatalf("NACK %q, want a listener NACK about %q", n, tc.want)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("no NACK")
			}
			if len(p.Listeners()) != 0 {
				t.Fatalf("listeners %v served from a refused configuration", p.Listeners())
			}
		})
	}
}

// TestWasmFilterOnTheOutboundSide: the generated outbound listeners run the
// compiled filter (the same ECDS resource as the inbound one) before the
// router, and the listener's traffic direction tells it which side it is
// on: the workload's own fan-out is blocked by its own sidecar, and once
// it is quarantined nothing it sends leaves — the upstreams never see
// those requests.
func TestWasmFilterOnTheOutboundSide(t *testing.T) {
	module := filterModule(t)
	tb := newTestbed(t)
	bundle := tb.authority.X509Bundle()
	// Two upstreams: mTLS servers presenting catalog's and orders' SVIDs,
	// counting what reaches them.
	var mu sync.Mutex
	reached := map[string]int{}
	upstream := func(name string) int {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			reached[name]++
			mu.Unlock()
			_, _ = w.Write([]byte(firstURISAN(r.TLS.PeerCertificates[0])))
		})}
		go func() {
			_ = srv.Serve(tls.NewListener(l, tlsconfig.MTLSServerConfig(svid(t, tb.authority, sa("bookstore", name)), bundle, tlsconfig.AuthorizeAny())))
		}()
		t.Cleanup(func() { _ = srv.Close() })
		return l.Addr().(*net.TCPAddr).Port
	}
	catalogPort, ordersPort := upstream("catalog"), upstream("orders")
	inPort, toCatalog, toOrders := freePort(t), freePort(t), freePort(t)
	cp := startControlPlane(t, fmt.Sprintf(`apiVersion: meshguard.dev/v1alpha1
kind: Mesh
metadata: {name: t}
spec:
  trustDomain: cluster.local
  authz: {address: 127.0.0.1, port: %d, spiffeID: spiffe://cluster.local/ns/meshguard/sa/authz, timeout: 2s}
  controlPlane: {address: 127.0.0.1, port: 1, spiffeID: spiffe://cluster.local/ns/meshguard/sa/controlplane}
  wasm: {file: %s, requireMtls: true}
  workloads:
  - name: reviews
    namespace: bookstore
    spiffeID: spiffe://cluster.local/ns/bookstore/sa/reviews
    inbound: [{name: http, port: %d, appPort: %d, routes: [{name: reviews, prefix: /}]}]
    upstreams:
    - {name: catalog, address: 127.0.0.1, port: %d, spiffeID: spiffe://cluster.local/ns/bookstore/sa/catalog, service: catalog, namespace: bookstore, listenPort: %d}
    - {name: orders, address: 127.0.0.1, port: %d, spiffeID: spiffe://cluster.local/ns/bookstore/sa/orders, service: orders, namespace: bookstore, listenPort: %d}
`, tb.authzPort, module, inPort, tb.appPort, catalogPort, toCatalog, ordersPort, toOrders))
	profile := `apiVersion: meshguard.dev/v1alpha1
kind: AnomalyProfile
metadata: {name: reviews, namespace: bookstore}
spec:
  workloads: ["spiffe://cluster.local/ns/bookstore/sa/reviews"]
  enumeration: {window: 1m, maxDestinations: 1}
  responses: {enumeration: block}
`
	cp.publish(t, "v1", profile)
	var outcomes []Outcome
	p := startProxy(t, cp, &corev3.Node{Id: "reviews-1", Cluster: "reviews.bookstore"}, svid(t, tb.authority, sa("bookstore", "reviews")), bundle,
		func(o Outcome) { mu.Lock(); outcomes = append(outcomes, o); mu.Unlock() })
	// The application calls through its sidecar: plain HTTP to loopback.
	call := func(port int) (int, string, Outcome) {
		t.Helper()
		resp, err := http.Get("http://127.0.0.1:" + strconv.Itoa(port) + "/api/x")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		mu.Lock()
		defer mu.Unlock()
		return resp.StatusCode, resp.Header.Get("x-meshguard-reason"), outcomes[len(outcomes)-1]
	}
	if _, ok := p.Listener("outbound_catalog"); !ok {
		t.Fatalf("no outbound listener: %v", p.Listeners())
	}
	if st, _, o := call(toCatalog); st != 200 || o.Listener != "outbound_catalog" || o.DeniedBy != "" {
		t.Fatalf("first destination: %d %+v", st, o)
	}
	// A second destination within the window: more than maxDestinations.
	st, reason, o := call(toOrders)
	if st != 403 || reason != string(policies.ReasonDeniedAnomaly) || o.DeniedBy != DeniedByFilter || o.Listener != "outbound_orders" {
		t.Fatalf("fan-out: %d %q %+v; want 403 denied_anomaly by the filter on the outbound listener", st, reason, o)
	}
	mu.Lock()
	if reached["orders"] != 0 || reached["catalog"] != 1 {
		t.Errorf("upstreams reached %v; the blocked request must not leave", reached)
	}
	mu.Unlock()

	// Quarantined: its own sidecar refuses everything it sends.
	cp.publish(t, "v2", profile+`---
apiVersion: meshguard.dev/v1alpha1
kind: Quarantine
metadata: {name: reviews, namespace: istio-system}
spec: {identity: "spiffe://cluster.local/ns/bookstore/sa/reviews", reason: test}
`)
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, reason, o = call(toCatalog)
		if reason == string(policies.ReasonDeniedQuarantine) || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if st != 403 || reason != string(policies.ReasonDeniedQuarantine) || o.DeniedBy != DeniedByFilter {
		t.Fatalf("quarantined: %d %q %+v", st, reason, o)
	}
	mu.Lock()
	defer mu.Unlock()
	if reached["catalog"] != 1 {
		t.Errorf("catalog reached %d times; the quarantined workload's requests must not leave", reached["catalog"])
	}
}
