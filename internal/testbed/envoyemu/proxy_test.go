package envoyemu

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffegrpc/grpccredentials"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/tetratelabs/wazero"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/meshguard/meshguard/controlplane/mesh"
	"github.com/meshguard/meshguard/controlplane/xdsserver"
	"github.com/meshguard/meshguard/internal/testbed/ca"
	"github.com/meshguard/meshguard/internal/testbed/freeport"
	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/source"
	"github.com/meshguard/meshguard/policies/wire"
)

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

// testCache shares compiled wasm between the tests' proxies, and on disk
// with later runs and the demo (whose cache directory it is): the first
// compiles the module, the others find it.
var testCache = func() wazero.CompilationCache {
	if dir, err := os.UserCacheDir(); err == nil {
		if c, err := wazero.NewCompilationCacheWithDir(filepath.Join(dir, "meshguard", "wazero")); err == nil {
			return c
		}
	}
	return wazero.NewCompilationCache()
}()

// readyTimeout bounds a proxy's warming in these tests.
const readyTimeout = 8 * time.Minute

func sa(ns, name string) spiffeid.ID { return spiffeid.RequireFromPath(td, "/ns/"+ns+"/sa/"+name) }

func freePort(t *testing.T) int {
	t.Helper()
	return freeport.MustPort(t)
}

func svid(t *testing.T, c *ca.CA, id spiffeid.ID) *x509svid.SVID {
	t.Helper()
	s, err := c.IssueX509SVID(id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// fakeAuthz is a real gRPC Authorization server for these tests: it denies
// paths containing /admin and records every CheckRequest.
type fakeAuthz struct {
	authv3.UnimplementedAuthorizationServer
	mu   sync.Mutex
	reqs []*authv3.CheckRequest
}

func (f *fakeAuthz) Check(_ context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	f.mu.Lock()
	f.reqs = append(f.reqs, req)
	f.mu.Unlock()
	if strings.Contains(req.GetAttributes().GetRequest().GetHttp().GetPath(), "/admin") {
		return &authv3.CheckResponse{
			Status: &status.Status{Code: int32(codes.PermissionDenied)},
			HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
				Status:  &typev3.HttpStatus{Code: typev3.StatusCode_Forbidden},
				Headers: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-meshguard-reason", Value: "denied_by_policy"}}},
				Body:    `{"reason":"denied_by_policy"}`,
			}},
		}, nil
	}
	return &authv3.CheckResponse{
		Status: &status.Status{Code: int32(codes.OK)},
		HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{
			Headers: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{
				Key: "x-meshguard-source-id", Value: req.GetAttributes().GetSource().GetPrincipal()},
				AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD}},
			HeadersToRemove: []string{"x-secret"},
		}},
	}, nil
}

func (f *fakeAuthz) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.reqs)
}

func (f *fakeAuthz) last() *authv3.CheckRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.reqs) == 0 {
		return nil
	}
	return f.reqs[len(f.reqs)-1]
}

// controlPlane runs the real xDS server for a mesh on loopback (plaintext:
// transport security between proxy and control plane is not what these
// tests are about) and publishes bundles of policy YAML.
type controlPlane struct {
	xs   *xdsserver.Server
	addr string
	cc   *grpc.ClientConn
}

func startControlPlane(t *testing.T, meshYAML string) *controlPlane {
	t.Helper()
	m, err := mesh.Parse([]byte(meshYAML))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	xs, err := xdsserver.New(ctx, xdsserver.Options{Mesh: m})
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	xs.Register(gs)
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
	return &controlPlane{xs: xs, addr: l.Addr().String(), cc: cc}
}

func (c *controlPlane) publish(t *testing.T, version, policyYAML string) {
	t.Helper()
	set, diags := source.Parse("p.yaml", []byte(policyYAML))
	if err := diags.Err(); err != nil {
		t.Fatal(err)
	}
	b, _, err := policies.NewBundle(version, set)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.xs.Publish(b); err != nil {
		t.Fatal(err)
	}
}

func startProxy(t *testing.T, cp *controlPlane, node *corev3.Node, svids x509svid.Source, bundles x509bundle.Source, onOutcome func(Outcome)) *Proxy {
	t.Helper()
	p, err := Start(context.Background(), Config{Node: node, XDS: cp.cc, SVIDs: svids, Bundles: bundles,
		BindHost: "127.0.0.1", OnOutcome: onOutcome, Wasm: WasmOptions{CompilationCache: testCache}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close(context.Background()) })
	// Generous: a proxy with the wasm filter compiles the module first,
	// which takes minutes under -race on a loaded machine.
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	if err := p.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestProxyServesTheGeneratedConfig drives the emulator with what the
// control plane generates for one workload — listeners, routes, clusters
// and the ext_authz filter, over ADS — and checks it routes and calls
// ext_authz as the configuration says, as Envoy would.
func TestProxyServesTheGeneratedConfig(t *testing.T) {
	authority, err := ca.New(td)
	if err != nil {
		t.Fatal(err)
	}
	bundle := authority.X509Bundle()
	catalog, frontend, authzSVID, reviews := svid(t, authority, sa("bookstore", "catalog")), svid(t, authority, sa("bookstore", "frontend")),
		svid(t, authority, sa("meshguard", "authz")), svid(t, authority, sa("bookstore", "reviews"))

	fa := &fakeAuthz{}
	gs := grpc.NewServer(grpc.Creds(grpccredentials.MTLSServerCredentials(authzSVID, bundle, tlsconfig.AuthorizeMemberOf(td))))
	authv3.RegisterAuthorizationServer(gs, fa)
	gl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(gl) }()
	t.Cleanup(gs.Stop)
	authzPort := gl.Addr().(*net.TCPAddr).Port

	// The application behind the proxy echoes what reached it.
	appPort := freePort(t)
	al, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(appPort))
	if err != nil {
		t.Fatal(err)
	}
	var upstreamPaths sync.Map
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		upstreamPaths.Store(r.URL.Path, true)
		_ = json.NewEncoder(w).Encode(map[string]string{
			"path": r.URL.Path, "query": r.URL.RawQuery,
			"source": r.Header.Get("x-meshguard-source-id"), "xfcc": r.Header.Get("x-forwarded-client-cert"),
			"secret": r.Header.Get("x-secret"), "xff": r.Header.Get("x-forwarded-for"),
		})
	})}
	go func() { _ = app.Serve(al) }()
	t.Cleanup(func() { _ = app.Close() })

	// An upstream the workload calls through its outbound listener: it
	// presents reviews' SVID and echoes the caller's.
	rl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	reviewsSrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, firstURISAN(r.TLS.PeerCertificates[0]))
	})}
	go func() {
		_ = reviewsSrv.Serve(tls.NewListener(rl, tlsconfig.MTLSServerConfig(reviews, bundle, tlsconfig.AuthorizeAny())))
	}()
	t.Cleanup(func() { _ = reviewsSrv.Close() })

	inPort, outPort := freePort(t), freePort(t)
	cp := startControlPlane(t, fmt.Sprintf(`apiVersion: meshguard.dev/v1alpha1
kind: Mesh
metadata: {name: t}
spec:
  trustDomain: cluster.local
  authz: {address: 127.0.0.1, port: %d, spiffeID: spiffe://cluster.local/ns/meshguard/sa/authz, timeout: 2s}
  controlPlane: {address: 127.0.0.1, port: 1, spiffeID: spiffe://cluster.local/ns/meshguard/sa/controlplane}
  wasm: {file: /nonexistent/meshguard.wasm}
  workloads:
  - name: catalog-v2
    namespace: bookstore
    spiffeID: spiffe://cluster.local/ns/bookstore/sa/catalog
    service: catalog
    labels: {app: catalog, version: v2}
    disableWasm: true
    inbound:
    - name: http
      port: %d
      appPort: %d
      routes:
      - {name: catalog-health, path: /healthz, disableExtAuthz: true}
      - {name: catalog-api, prefix: /api/}
    upstreams:
    - {name: reviews, address: 127.0.0.1, port: %d, spiffeID: spiffe://cluster.local/ns/bookstore/sa/reviews, listenPort: %d}
`, authzPort, inPort, appPort, rl.Addr().(*net.TCPAddr).Port, outPort))
	cp.publish(t, "v1", "")

	var omu sync.Mutex
	var outcomes []Outcome
	p := startProxy(t, cp, &corev3.Node{Id: "catalog-v2-1", Cluster: "catalog-v2.bookstore"}, catalog, bundle,
		func(o Outcome) { omu.Lock(); outcomes = append(outcomes, o); omu.Unlock() })
	lastOutcome := func() Outcome {
		omu.Lock()
		defer omu.Unlock()
		return outcomes[len(outcomes)-1]
	}

	addr, ok := p.Listener("inbound_http")
	if !ok || addr != "127.0.0.1:"+strconv.Itoa(inPort) {
		t.Fatalf("inbound listener on %q, want the generated port %d", addr, inPort)
	}
	client := OutboundClient(frontend, bundle, catalog.ID, 5*time.Second)
	client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	t.Cleanup(client.CloseIdleConnections)
	base := "https://" + addr
	get := func(t *testing.T, path string, hdr map[string][]string) (*http.Response, map[string]string) {
		t.Helper()
		req, err := http.NewRequest(http.MethodGet, base+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = "catalog.bookstore.svc.cluster.local"
		for k, vs := range hdr {
			for _, v := range vs {
				req.Header.Add(k, v)
			}
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		var m map[string]string
		_ = json.Unmarshal(body, &m)
		return resp, m
	}

	t.Run("routed and checked with the generated context extensions", func(t *testing.T) {
		resp, m := get(t, "/api/items?q=1&x=y", map[string][]string{
			"X-Dup": {"a", "b"}, "X-Meshguard-Source-Id": {"spiffe://evil/forged"}, "X-Secret": {"s"},
			"X-Forwarded-Client-Cert": {"URI=spiffe://cluster.local/ns/x/sa/forged"},
		})
		if resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		if m["source"] != frontend.ID.String() || m["secret"] != "" || m["query"] != "q=1&x=y" {
			t.Errorf("upstream got %v", m)
		}
		// forward_client_cert_details SANITIZE_SET with the URI: the
		// client's value is replaced.
		if !strings.HasPrefix(m["xfcc"], "By="+catalog.ID.String()+";Hash=") || !strings.HasSuffix(m["xfcc"], ";URI="+frontend.ID.String()) {
			t.Errorf("XFCC %q", m["xfcc"])
		}
		if m["xff"] != "127.0.0.1" { // use_remote_address
			t.Errorf("x-forwarded-for %q", m["xff"])
		}
		a := fa.last().GetAttributes()
		want := map[string]string{
			wire.ContextRoute: "catalog-api", wire.ContextNamespace: "bookstore", wire.ContextService: "catalog",
			wire.ContextWorkload: catalog.ID.String(), wire.ContextPolicyScope: "bookstore/catalog-v2", wire.ContextResolved: "true",
			wire.ContextLabelPrefix + "app": "catalog", wire.ContextLabelPrefix + "version": "v2",
		}
		if len(a.GetContextExtensions()) != len(want) {
			t.Errorf("context extensions %v, want %v", a.GetContextExtensions(), want)
		}
		for k, v := range want {
			if a.GetContextExtensions()[k] != v {
				t.Errorf("context extension %s = %q, want %q", k, a.GetContextExtensions()[k], v)
			}
		}
		if a.GetSource().GetPrincipal() != frontend.ID.String() || a.GetDestination().GetPrincipal() != catalog.ID.String() ||
			len(a.GetDestination().GetLabels()) != 0 {
			t.Errorf("source %v destination %v", a.GetSource(), a.GetDestination())
		}
		pemText, err := url.PathUnescape(a.GetSource().GetCertificate())
		if err != nil {
			t.Fatal(err)
		}
		if blk, _ := pem.Decode([]byte(pemText)); blk == nil || string(blk.Bytes) != string(frontend.Certificates[0].Raw) ||
			strings.ContainsAny(a.GetSource().GetCertificate(), " +\n") {
			t.Error("source.certificate is not the URL-encoded PEM peer certificate (include_peer_certificate)")
		}
		h := a.GetRequest().GetHttp()
		if h.GetPath() != "/api/items?q=1&x=y" || h.GetHeaders()[":path"] != h.GetPath() || h.GetHeaders()["x-dup"] != "a,b" ||
			h.GetHeaders()["x-request-id"] == "" || h.GetId() != h.GetHeaders()["x-request-id"] || h.GetScheme() != "https" {
			t.Errorf("http attributes: %v", h)
		}
		if _, ok := h.GetHeaders()["x-meshguard-source-id"]; !ok {
			t.Error("client headers must reach ext_authz as sent (the server strips x-meshguard-*)")
		}
	})
	t.Run("denied by ext_authz", func(t *testing.T) {
		resp, _ := get(t, "/api/admin", nil)
		if resp.StatusCode != 403 || resp.Header.Get("x-meshguard-reason") != "denied_by_policy" {
			t.Fatalf("status %d reason %q", resp.StatusCode, resp.Header.Get("x-meshguard-reason"))
		}
		if _, hit := upstreamPaths.Load("/api/admin"); hit || lastOutcome().DeniedBy != DeniedByAuthz {
			t.Error("denied request reached the upstream")
		}
	})
	t.Run("route with ext_authz disabled", func(t *testing.T) {
		n := fa.count()
		resp, _ := get(t, "/healthz", nil)
		if resp.StatusCode != 200 || fa.count() != n {
			t.Fatalf("status %d, authz calls %d→%d", resp.StatusCode, n, fa.count())
		}
		// path matches exactly: a longer path is not that route.
		if resp, _ := get(t, "/healthz/x", nil); resp.StatusCode != 404 || lastOutcome().DeniedBy != DeniedNoRoute {
			t.Fatalf("/healthz/x: status %d", resp.StatusCode)
		}
	})
	t.Run("no route", func(t *testing.T) {
		if resp, _ := get(t, "/other", nil); resp.StatusCode != 404 {
			t.Fatalf("status %d", resp.StatusCode)
		}
	})
	t.Run("path normalization and escaped slashes", func(t *testing.T) {
		resp, m := get(t, "/api//v1/../items", nil)
		if resp.StatusCode != 200 || m["path"] != "/api/items" {
			t.Fatalf("status %d, upstream path %q", resp.StatusCode, m["path"])
		}
		resp, _ = get(t, "/api/a%2Fb", nil)
		if resp.StatusCode != http.StatusTemporaryRedirect || resp.Header.Get("location") != "/api/a/b" {
			t.Fatalf("escaped slash: status %d location %q", resp.StatusCode, resp.Header.Get("location"))
		}
	})
	t.Run("outbound listener to the upstream's cluster with secure naming", func(t *testing.T) {
		resp, err := http.Get("http://127.0.0.1:" + strconv.Itoa(outPort) + "/x")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != catalog.ID.String() {
			t.Fatalf("status %d, upstream saw %q", resp.StatusCode, b)
		}
	})
	t.Run("foreign trust domain refused at the handshake", func(t *testing.T) {
		other, err := ca.New(spiffeid.RequireTrustDomainFromString("other.example"))
		if err != nil {
			t.Fatal(err)
		}
		c := OutboundClient(svid(t, other, spiffeid.RequireFromString("spiffe://other.example/x")),
			x509bundle.NewSet(bundle, other.X509Bundle()), catalog.ID, 5*time.Second)
		if _, err := c.Get(base + "/api/x"); err == nil {
			t.Fatal("handshake with a foreign SVID succeeded")
		}
	})
	t.Run("a route override reaches the proxy over RDS", func(t *testing.T) {
		cp.publish(t, "v2", `apiVersion: meshguard.dev/v1alpha1
kind: RouteOverride
metadata: {name: api-open, namespace: bookstore}
spec: {route: catalog-api, disableExtAuthz: true}
`)
		deadline := time.Now().Add(10 * time.Second)
		for {
			n := fa.count()
			resp, _ := get(t, "/api/admin", nil)
			if resp.StatusCode == 200 && fa.count() == n {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("ext_authz still called on the route after the override")
			}
			time.Sleep(50 * time.Millisecond)
		}
		cp.publish(t, "v3", "")
		deadline = time.Now().Add(10 * time.Second)
		for resp, _ := get(t, "/api/admin", nil); resp.StatusCode != 403; resp, _ = get(t, "/api/admin", nil) {
			if time.Now().After(deadline) {
				t.Fatal("ext_authz not restored")
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
	t.Run("authz unreachable fails closed", func(t *testing.T) {
		gs.Stop()
		resp, _ := get(t, "/api/items", nil)
		if resp.StatusCode != 403 || lastOutcome().DeniedBy != DeniedAuthzError {
			t.Fatalf("status %d outcome %+v, want 403 (failure_mode_allow: false)", resp.StatusCode, lastOutcome())
		}
	})
}

func TestApplyOK(t *testing.T) {
	base := [][2]string{{":path", "/"}, {"a", "1"}, {"b", "2"}}
	ok := &authv3.OkHttpResponse{
		Headers: []*corev3.HeaderValueOption{
			{Header: &corev3.HeaderValue{Key: "A", Value: "x"}, AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD},
			{Header: &corev3.HeaderValue{Key: "b", Value: "y"}},
			{Header: &corev3.HeaderValue{Key: "c", Value: "z"}, AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS},
			{Header: &corev3.HeaderValue{Key: "d", Value: "w"}, AppendAction: corev3.HeaderValueOption_ADD_IF_ABSENT},
		},
		HeadersToRemove: []string{":path", "b"},
	}
	got := applyOK(append([][2]string(nil), base...), ok)
	want := [][2]string{{":path", "/"}, {"a", "x"}, {"b", "y"}, {"d", "w"}}
	if len(got) != len(want) {
		t.Fatalf("got %v want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("got %v want %v", got, want)
		}
	}
}

func TestAdjustPath(t *testing.T) {
	cm := &connManager{normalizePath: true, mergeSlashes: true}
	for in, want := range map[string]string{
		"/a/b":            "/a/b",
		"/a/./b/../c?x=1": "/a/c?x=1",
		"/a/%2e%2E/b":     "/b",
		"/../../etc":      "/etc",
		"/a//b///c/":      "/a/b/c/",
		"/a/b/..":         "/a/",
		"/a?x=/../y":      "/a?x=/../y",
	} {
		if got, act := adjustPath(cm, in); got != want || act != pathContinue {
			t.Errorf("adjustPath(%q) = %q, %v; want %q", in, got, act, want)
		}
	}
	if _, act := adjustPath(&connManager{}, "/a%2fb"); act != pathContinue {
		t.Error("escaped slashes acted on without the setting")
	}
}
