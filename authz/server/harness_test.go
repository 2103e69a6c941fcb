package server

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/pem"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/meshguard/meshguard/authz/decisionlog"
	"github.com/meshguard/meshguard/authz/identity"
	"github.com/meshguard/meshguard/authz/metrics"
	"github.com/meshguard/meshguard/authz/request"
	"github.com/meshguard/meshguard/internal/testbed/ca"
	"github.com/meshguard/meshguard/policies"
)

const (
	td       = "prod.example"
	audience = "meshguard-authz"
)

var (
	idServer   = spiffeid.RequireFromString("spiffe://prod.example/ns/meshguard/sa/authz")
	idEnvoy    = spiffeid.RequireFromString("spiffe://prod.example/ns/shop/sa/api-envoy")
	idFrontend = spiffeid.RequireFromString("spiffe://prod.example/ns/web/sa/frontend")
	idGateway  = spiffeid.RequireFromString("spiffe://prod.example/ns/istio-system/sa/ingress")
	idBatch    = spiffeid.RequireFromString("spiffe://prod.example/ns/batch/sa/job")
	idAdmin    = spiffeid.RequireFromString("spiffe://prod.example/ns/ops/sa/admin")
	idAPI      = spiffeid.RequireFromString("spiffe://prod.example/ns/shop/sa/api")
	idEvil     = spiffeid.RequireFromString("spiffe://evil.example/ns/web/sa/frontend")
)

// testSet: in namespace shop, frontend and batch may GET /api/*, admin may
// do anything; route "checkout" is in dry-run and "legacy" has enforcement
// off.
func testSet() policies.Set {
	return policies.Set{
		Settings: policies.MeshSettingsSpec{TrustDomain: td},
		AuthorizationPolicies: []policies.AuthorizationPolicy{{
			APIVersion: policies.APIVersionIstioV1, Kind: policies.KindAuthorizationPolicy,
			Metadata: policies.ObjectMeta{Name: "api-allow", Namespace: "shop"},
			Spec: policies.AuthorizationPolicySpec{Rules: []policies.Rule{
				{
					From: []policies.RuleFrom{{Source: policies.Source{Principals: []string{"prod.example/ns/web/sa/frontend", "prod.example/ns/batch/sa/job"}}}},
					To:   []policies.RuleTo{{Operation: policies.Operation{Methods: []string{"GET"}, Paths: []string{"/api/*"}}}},
				},
				{From: []policies.RuleFrom{{Source: policies.Source{Principals: []string{"prod.example/ns/ops/sa/admin"}}}}},
			}},
		}, {
			APIVersion: policies.APIVersionIstioV1, Kind: policies.KindAuthorizationPolicy,
			Metadata: policies.ObjectMeta{Name: "api-audit", Namespace: "shop"},
			Spec: policies.AuthorizationPolicySpec{Action: "AUDIT", Rules: []policies.Rule{{
				To: []policies.RuleTo{{Operation: policies.Operation{Paths: []string{"/api/audited"}}}},
			}}},
		}},
		// The client a trusted hop forwards is meshguard's caller, which
		// its own kinds match (Istio's principals see the hop).
		IdentityPolicies: []policies.IdentityPolicy{{
			APIVersion: policies.APIVersionMeshguard, Kind: policies.KindIdentityPolicy,
			Metadata: policies.ObjectMeta{Name: "forwarded-admin", Namespace: "shop"},
			Spec: policies.IdentityPolicySpec{Rules: []policies.IdentityRule{{
				From: []policies.IdentitySource{{IDs: []string{"spiffe://prod.example/ns/ops/sa/admin"}}},
			}}},
		}, {
			// A JWT-SVID is meshguard's: a jwt requirement reads it (Istio's
			// requestPrincipals match iss and sub apart, and a JWT-SVID
			// without iss matches none).
			APIVersion: policies.APIVersionMeshguard, Kind: policies.KindIdentityPolicy,
			Metadata: policies.ObjectMeta{Name: "batch-jwt", Namespace: "shop"},
			Spec: policies.IdentityPolicySpec{Rules: []policies.IdentityRule{{
				To:  []policies.IdentityTarget{{Methods: []string{"GET"}, Paths: []string{"/api/*"}}},
				JWT: &policies.JWTRequirement{Audiences: []string{audience}, Subjects: []string{"spiffe://prod.example/ns/batch/sa/job"}},
			}}},
		}},
		RouteOverrides: []policies.RouteOverride{
			{
				APIVersion: policies.APIVersionMeshguard, Kind: policies.KindRouteOverride,
				Metadata: policies.ObjectMeta{Name: "checkout", Namespace: "shop"},
				Spec:     policies.RouteOverrideSpec{Route: "checkout", Mode: policies.ModeDryRun},
			},
			{
				APIVersion: policies.APIVersionMeshguard, Kind: policies.KindRouteOverride,
				Metadata: policies.ObjectMeta{Name: "legacy", Namespace: "shop"},
				Spec:     policies.RouteOverrideSpec{Route: "legacy", Mode: policies.ModeOff},
			},
		},
	}
}

func mustBundle(t testing.TB, version string, set policies.Set) *policies.Bundle {
	t.Helper()
	b, _, err := policies.NewBundle(version, set)
	if err != nil {
		t.Fatalf("NewBundle: %v", err)
	}
	return b
}

func mustSnapshot(t testing.TB, b *policies.Bundle) *policies.Snapshot {
	t.Helper()
	s, err := policies.Compile(b)
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	return s
}

// env is a running authz server with its CA, over a real gRPC connection
// (mTLS, the caller being the Envoy identity) and a real HTTP listener.
type env struct {
	ca, evil *ca.CA
	engine   *policies.Engine
	srv      *Server
	reg      *prometheus.Registry
	client   authv3.AuthorizationClient
	conn     *grpc.ClientConn
	grpcAddr string
	httpURL  string
	http     *http.Client
	envoy    *x509svid.SVID
	bundles  *spiffebundle.Set
	logMu    sync.Mutex
	logBuf   bytes.Buffer
}

func (e *env) Write(p []byte) (int, error) {
	e.logMu.Lock()
	defer e.logMu.Unlock()
	return e.logBuf.Write(p)
}

// decisionLog is the decision log once it holds every string in want (the
// log is written by a goroutine of its own), or after five seconds.
func (e *env) decisionLog(want ...string) string {
	deadline := time.Now().Add(5 * time.Second)
	for {
		e.logMu.Lock()
		s := e.logBuf.String()
		e.logMu.Unlock()
		all := true
		for _, w := range want {
			all = all && strings.Contains(s, w)
		}
		if all || time.Now().After(deadline) {
			return s
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// faultyEngine serves the real engine's snapshot but decides with decide:
// the server's fail-closed paths around the engine.
type faultyEngine struct {
	*policies.Engine
	decide func(*policies.Attributes) policies.Decision
}

func (f faultyEngine) Decide(a *policies.Attributes) policies.Decision { return f.decide(a) }

// withDecide makes the server decide with fn.
func withDecide(fn func(*policies.Attributes) policies.Decision) envOpt {
	return func(c *Config, _ *identity.Config) {
		c.Engine = faultyEngine{Engine: c.Engine.(*policies.Engine), decide: fn}
	}
}

type envOpt func(*Config, *identity.Config)

func newEnv(t *testing.T, opts ...envOpt) *env {
	t.Helper()
	e := &env{engine: &policies.Engine{}, reg: prometheus.NewRegistry()}
	var err error
	if e.ca, err = ca.New(spiffeid.RequireTrustDomainFromString(td)); err != nil {
		t.Fatal(err)
	}
	if e.evil, err = ca.New(spiffeid.RequireTrustDomainFromString("evil.example")); err != nil {
		t.Fatal(err)
	}
	e.bundles = spiffebundle.NewSet(e.ca.Bundle())
	icfg := identity.Config{
		Bundles:      e.bundles,
		TrustedHops:  []spiffeid.ID{idGateway, idEnvoy},
		JWTAudiences: []string{audience},
	}
	dl, err := decisionlog.New(decisionlog.Config{W: e, AllowSampleRate: 1, Headers: []string{"x-tenant"}})
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		Engine:      e.engine,
		Log:         slog.New(slog.NewTextHandler(io.Discard, nil)),
		Metrics:     metrics.New(e.reg),
		DecisionLog: dl,
		Request:     request.Options{TrustContextHeaders: true},
	}
	for _, o := range opts {
		o(&cfg, &icfg)
	}
	if cfg.Identity, err = identity.New(icfg); err != nil {
		t.Fatal(err)
	}
	if e.srv, err = New(cfg); err != nil {
		t.Fatal(err)
	}

	serverSVID, err := e.ca.IssueX509SVID(idServer, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if e.envoy, err = e.ca.IssueX509SVID(idEnvoy, time.Hour); err != nil {
		t.Fatal(err)
	}
	auth, err := Callers{IDs: []spiffeid.ID{idEnvoy}}.Authorizer()
	if err != nil {
		t.Fatal(err)
	}
	serverTLS := tlsconfig.MTLSServerConfig(serverSVID, e.bundles, auth)

	g := grpc.NewServer(append(e.srv.GRPCServerOptions(), grpc.Creds(credentials.NewTLS(serverTLS)))...)
	e.srv.Register(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.grpcAddr = lis.Addr().String()
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)
	t.Cleanup(func() { _ = dl.Close(context.Background()) })

	hlis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: e.srv.HTTPHandler(), TLSConfig: serverTLS, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = hs.ServeTLS(hlis, "", "") }()
	t.Cleanup(func() { _ = hs.Close() })
	e.httpURL = "https://" + hlis.Addr().String()

	clientTLS := tlsconfig.MTLSClientConfig(e.envoy, e.bundles, tlsconfig.AuthorizeID(idServer))
	e.conn, err = grpc.NewClient(e.grpcAddr, grpc.WithTransportCredentials(credentials.NewTLS(clientTLS)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.conn.Close() })
	e.client = authv3.NewAuthorizationClient(e.conn)
	tr := &http.Transport{TLSClientConfig: clientTLS.Clone()}
	e.http = &http.Client{Transport: tr, Timeout: 10 * time.Second}
	t.Cleanup(tr.CloseIdleConnections)
	return e
}

// load compiles set and installs it, marking the server ready.
func (e *env) load(t testing.TB, version string, set policies.Set) {
	t.Helper()
	e.engine.Swap(mustSnapshot(t, mustBundle(t, version, set)))
	e.srv.MarkReady()
}

func (e *env) check(t testing.TB, req *authv3.CheckRequest) *authv3.CheckResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := e.client.Check(ctx, req)
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	return resp
}

// certParam URL-encodes a PEM certificate chain as Envoy does for
// attributes.source.certificate.
func certParam(svid *x509svid.SVID) string {
	var b bytes.Buffer
	for _, c := range svid.Certificates {
		_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return url.PathEscape(b.String())
}

var _ = tls.VersionTLS13
