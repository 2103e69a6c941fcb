package envoyemu

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
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
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
)

// testCA is a minimal CA for this package's tests.
type testCA struct {
	td   spiffeid.TrustDomain
	cert *x509.Certificate
	key  crypto.Signer
}

func newTestCA(t *testing.T, td string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{td: spiffeid.RequireTrustDomainFromString(td), cert: cert, key: key}
}

func (c *testCA) bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(c.td, []*x509.Certificate{c.cert})
}

func (c *testCA) svid(t *testing.T, path string) *x509svid.SVID {
	t.Helper()
	id := spiffeid.RequireFromPath(c.td, path)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), URIs: []*url.URL{id.URL()},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, key.Public(), c.key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return &x509svid.SVID{ID: id, Certificates: []*x509.Certificate{leaf}, PrivateKey: key}
}

// fakeAuthz is a real gRPC Authorization server for these tests: it denies
// paths under /admin and records every CheckRequest.
type fakeAuthz struct {
	authv3.UnimplementedAuthorizationServer
	mu   sync.Mutex
	reqs []*authv3.CheckRequest
}

func (f *fakeAuthz) Check(_ context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	f.mu.Lock()
	f.reqs = append(f.reqs, req)
	f.mu.Unlock()
	if strings.HasPrefix(req.GetAttributes().GetRequest().GetHttp().GetPath(), "/admin") {
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
				Key: "x-meshguard-source-id", Value: req.GetAttributes().GetSource().GetPrincipal()}}},
			HeadersToRemove: []string{"x-secret"},
		}},
	}, nil
}

func (f *fakeAuthz) last() *authv3.CheckRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.reqs) == 0 {
		return nil
	}
	return f.reqs[len(f.reqs)-1]
}

// denyFilter stands in for the wasm filter in these unit tests: it answers
// paths under its prefix locally and strips client-sent x-meshguard-*.
type denyFilter struct{ path string }

func (d denyFilter) Handle(ctx context.Context, _ StreamInfo, hs [][2]string, body []byte, next Next) (Reply, bool, error) {
	if p, _ := pseudo(hs, ":path"); strings.HasPrefix(p, d.path) {
		return Reply{Status: 403, Headers: [][2]string{{"x-meshguard-reason", "denied_unknown_edge"}}}, true, nil
	}
	out := hs[:0:0]
	for _, kv := range hs {
		if !strings.HasPrefix(kv[0], "x-meshguard-") {
			out = append(out, kv)
		}
	}
	return next(ctx, out, body), false, nil
}

func TestSidecar(t *testing.T) {
	ca := newTestCA(t, "test.example")
	bundle := ca.bundle()
	serverSVID := ca.svid(t, "/ns/default/sa/backend")
	clientSVID := ca.svid(t, "/ns/default/sa/frontend")
	authzSVID := ca.svid(t, "/ns/meshguard/sa/authz")

	// ext_authz server over gRPC mTLS.
	fa := &fakeAuthz{}
	gs := grpc.NewServer(grpc.Creds(grpccredentials.MTLSServerCredentials(authzSVID, bundle, tlsconfig.AuthorizeMemberOf(ca.td))))
	authv3.RegisterAuthorizationServer(gs, fa)
	gl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(gl) }()
	t.Cleanup(gs.Stop)
	authzClient, cc, err := DialAuthz(gl.Addr().String(), serverSVID, bundle, authzSVID.ID)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })

	// The upstream app echoes what reached it.
	var upstreamHits sync.Map
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		upstreamHits.Store(r.URL.Path, true)
		_ = json.NewEncoder(w).Encode(map[string]string{
			"source": r.Header.Get("x-meshguard-source-id"),
			"xfcc":   r.Header.Get("x-forwarded-client-cert"),
			"secret": r.Header.Get("x-secret"),
			"query":  r.URL.RawQuery,
		})
	}))
	t.Cleanup(app.Close)
	appURL, _ := url.Parse(app.URL)

	var outcomes []Outcome
	var omu sync.Mutex
	sc, err := New(Config{
		Name: "backend", SVIDs: serverSVID, Bundles: bundle, Upstream: appURL,
		Routes: []Route{
			{Name: "health", Prefix: "/healthz", DisableExtAuthz: true},
			{Name: "api", Prefix: "/", ContextExtensions: map[string]string{"meshguard.route": "api"}},
		},
		Filter: denyFilter{path: "/internal"}, Authz: authzClient, IncludePeerCertificate: true,
		OnOutcome: func(o Outcome) { omu.Lock(); outcomes = append(outcomes, o); omu.Unlock() },
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := sc.Listen("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sc.Close(context.Background()) })
	client := OutboundClient(clientSVID, bundle, serverSVID.ID, 5*time.Second)
	t.Cleanup(client.CloseIdleConnections)
	base := "https://" + sc.Addr()

	get := func(t *testing.T, path string, hdr map[string][]string) (*http.Response, map[string]string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, base+path, nil)
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

	t.Run("allowed with Envoy-shaped CheckRequest", func(t *testing.T) {
		resp, m := get(t, "/api/items?q=1&x=y", map[string][]string{
			"X-Dup": {"a", "b"}, "X-Meshguard-Source-Id": {"spiffe://evil/forged"}, "X-Secret": {"s"},
		})
		if resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		if m["source"] != clientSVID.ID.String() {
			t.Errorf("upstream saw source %q, want %s (forged header must not survive)", m["source"], clientSVID.ID)
		}
		if m["secret"] != "" || m["query"] != "q=1&x=y" || !strings.Contains(m["xfcc"], "URI="+clientSVID.ID.String()) {
			t.Errorf("upstream got %v", m)
		}
		req := fa.last()
		a := req.GetAttributes()
		if a.GetSource().GetPrincipal() != clientSVID.ID.String() || a.GetDestination().GetPrincipal() != serverSVID.ID.String() {
			t.Errorf("principals: %v / %v", a.GetSource().GetPrincipal(), a.GetDestination().GetPrincipal())
		}
		if strings.ContainsAny(a.GetSource().GetCertificate(), " +\n") {
			t.Errorf("source.certificate is not URL-encoded as Envoy does: %q", a.GetSource().GetCertificate()[:40])
		}
		pemText, err := url.PathUnescape(a.GetSource().GetCertificate())
		if err != nil {
			t.Fatal(err)
		}
		blk, _ := pem.Decode([]byte(pemText))
		if blk == nil || string(blk.Bytes) != string(clientSVID.Certificates[0].Raw) {
			t.Error("source.certificate is not the URL-encoded PEM peer certificate")
		}
		h := a.GetRequest().GetHttp()
		if h.GetPath() != "/api/items?q=1&x=y" || h.GetMethod() != "GET" || h.GetHeaders()[":path"] != h.GetPath() ||
			h.GetHeaders()[":method"] != "GET" || h.GetHeaders()["x-dup"] != "a,b" || h.GetHeaders()[":authority"] == "" ||
			h.GetHeaders()["x-request-id"] == "" || h.GetId() != h.GetHeaders()["x-request-id"] {
			t.Errorf("http attributes: %v", h)
		}
		if _, ok := h.GetHeaders()["x-meshguard-source-id"]; ok {
			t.Error("client-sent x-meshguard header reached ext_authz")
		}
		for k := range h.GetHeaders() {
			if k != strings.ToLower(k) {
				t.Errorf("header %q not lowercase", k)
			}
		}
		if a.GetContextExtensions()["meshguard.route"] != "api" || a.GetSource().GetAddress().GetSocketAddress().GetPortValue() == 0 {
			t.Errorf("context extensions / address: %v %v", a.GetContextExtensions(), a.GetSource().GetAddress())
		}
	})
	t.Run("denied by authz", func(t *testing.T) {
		resp, _ := get(t, "/admin/users", nil)
		if resp.StatusCode != 403 || resp.Header.Get("x-meshguard-reason") != "denied_by_policy" {
			t.Fatalf("status %d reason %q", resp.StatusCode, resp.Header.Get("x-meshguard-reason"))
		}
		if _, hit := upstreamHits.Load("/admin/users"); hit {
			t.Error("denied request reached the upstream")
		}
	})
	t.Run("denied by filter before authz", func(t *testing.T) {
		n := len(fa.reqs)
		resp, _ := get(t, "/internal/x", nil)
		if resp.StatusCode != 403 || resp.Header.Get("x-meshguard-reason") != "denied_unknown_edge" || len(fa.reqs) != n {
			t.Fatalf("status %d, authz calls %d→%d", resp.StatusCode, n, len(fa.reqs))
		}
	})
	t.Run("route with ext_authz disabled", func(t *testing.T) {
		n := len(fa.reqs)
		resp, _ := get(t, "/healthz", nil)
		if resp.StatusCode != 200 || len(fa.reqs) != n {
			t.Fatalf("status %d, authz calls %d→%d", resp.StatusCode, n, len(fa.reqs))
		}
	})
	t.Run("foreign trust domain refused at the handshake", func(t *testing.T) {
		other := newTestCA(t, "other.example")
		c := OutboundClient(other.svid(t, "/x"), x509bundle.NewSet(bundle, other.bundle()), serverSVID.ID, 5*time.Second)
		if _, err := c.Get(base + "/api"); err == nil {
			t.Fatal("handshake with a foreign SVID succeeded")
		}
	})
	t.Run("authz unreachable fails closed", func(t *testing.T) {
		gs.Stop()
		resp, _ := get(t, "/api/items", nil)
		if resp.StatusCode != 403 {
			t.Fatalf("status %d, want 403 (failure_mode_allow=false)", resp.StatusCode)
		}
		omu.Lock()
		last := outcomes[len(outcomes)-1]
		omu.Unlock()
		if last.DeniedBy != DeniedAuthzError {
			t.Errorf("outcome %+v", last)
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
