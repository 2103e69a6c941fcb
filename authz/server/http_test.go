package server

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/meshguard/meshguard/authz/decisionlog"
	"github.com/meshguard/meshguard/authz/identity"
	"github.com/meshguard/meshguard/authz/request"
	"github.com/meshguard/meshguard/internal/spool"
	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/wire"
)

// httpCheck sends a request the way Envoy's HTTP ext_authz service forwards
// it: same method, path_prefix + path, the allowed headers.
func (e *env) httpCheck(t *testing.T, method, path string, headers map[string]string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, e.httpURL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = "api.shop.svc.cluster.local:8080"
	// What the HTTP service's authorization_request.headers_to_add sets.
	req.Header.Set(request.ContextHeaderPrefix+wire.ContextWorkload, idAPI.String())
	for k, v := range headers {
		if !strings.HasPrefix(k, ":") {
			req.Header.Set(k, v)
		}
	}
	resp, err := e.http.Do(req)
	if err != nil {
		t.Fatalf("HTTP check: %v", err)
	}
	t.Cleanup(func() { _ = resp.Body.Close() })
	return resp
}

func assertHTTP(t *testing.T, resp *http.Response, allowed bool, reason policies.Reason, source string, removes ...string) {
	t.Helper()
	if resp.Header.Get(wire.HeaderDecisionID) == "" {
		t.Error("no decision id")
	}
	if allowed {
		if resp.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(resp.Body)
			t.Fatalf("status %d (%s), want 200", resp.StatusCode, b)
		}
		if got := resp.Header.Get(wire.HeaderSourceID); got != source {
			t.Errorf("source = %q, want %q", got, source)
		}
		rm := resp.Header.Get(HeaderAuthRemove)
		for _, h := range removes {
			if !strings.Contains(rm, h) {
				t.Errorf("%s = %q lacks %q", HeaderAuthRemove, rm, h)
			}
		}
		return
	}
	if resp.StatusCode == http.StatusOK {
		t.Fatalf("allowed, want deny %s", reason)
	}
	var body denyBody
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	if body.Reason != reason || resp.Header.Get(wire.HeaderReason) != string(reason) {
		t.Errorf("deny reason body=%q header=%q, want %q", body.Reason, resp.Header.Get(wire.HeaderReason), reason)
	}
}

// TestHTTPModeIdentities runs every identity case that the HTTP mode can
// carry (it has no source.principal or source.certificate: Envoy forwards
// headers only) against the HTTP listener, over mTLS from the Envoy identity.
func TestHTTPModeIdentities(t *testing.T) {
	e := newEnv(t)
	e.load(t, "v1", testSet())
	n := 0
	for _, tc := range identityCases() {
		if tc.req == nil {
			continue
		}
		r := tc.req(t, e)
		src := r.GetAttributes().GetSource()
		if src.GetPrincipal() != "" || src.GetCertificate() != "" {
			continue
		}
		n++
		t.Run(tc.name, func(t *testing.T) {
			h := r.GetAttributes().GetRequest().GetHttp()
			resp := e.httpCheck(t, h.GetMethod(), h.GetPath(), h.GetHeaders())
			assertHTTP(t, resp, tc.allowed, tc.reason, idOrEmpty(tc.source), tc.removes...)
		})
	}
	if n < 10 {
		t.Fatalf("only %d cases ran in HTTP mode", n)
	}
}

func TestHTTPModeXFCCAndHeaders(t *testing.T) {
	e := newEnv(t)
	e.load(t, "v1", testSet())
	// The calling Envoy (a trusted hop) forwards the client's certificate
	// details: the last element, added by that Envoy, names the caller.
	resp := e.httpCheck(t, "GET", "/api/items?x=1", map[string]string{
		"x-forwarded-client-cert": "By=" + idEnvoy.String() + ";URI=" + idFrontend.String(),
		"x-meshguard-source-id":   idAdmin.String(),
	})
	assertHTTP(t, resp, true, "", idFrontend.String(), "x-meshguard-source-id")

	resp = e.httpCheck(t, "GET", "/api/items", map[string]string{"x-forwarded-client-cert": "By=" + idEnvoy.String() + ";URI=spiffe://prod.example/\xff"})
	assertHTTP(t, resp, false, policies.ReasonDeniedIdentity, "")

	resp = e.httpCheck(t, "GET", "/api/items", map[string]string{"x-forwarded-client-cert": "By=" + idGateway.String() + ";URI=" + idAdmin.String()})
	assertHTTP(t, resp, false, policies.ReasonDeniedIdentity, "")

	// When the Envoy is not a trusted hop, XFCC is ignored and stripped.
	e2 := newEnv(t, func(_ *Config, ic *identity.Config) { ic.TrustedHops = nil })
	e2.load(t, "v1", testSet())
	resp = e2.httpCheck(t, "GET", "/api/items", map[string]string{
		"x-forwarded-client-cert": "By=" + idEnvoy.String() + ";URI=" + idAdmin.String(),
		"authorization":           "Bearer " + mustJWT(t, e2.ca, idBatch, []string{audience}, 60e9),
	})
	assertHTTP(t, resp, true, "", idBatch.String(), "x-forwarded-client-cert")

	// Path prefix of the HTTP service is removed before deciding.
	e3 := newEnv(t, func(c *Config, _ *identity.Config) { c.HTTPPathPrefix = "/authz" })
	e3.load(t, "v1", testSet())
	resp = e3.httpCheck(t, "GET", "/authz/api/items", map[string]string{"authorization": "Bearer " + mustJWT(t, e3.ca, idBatch, []string{audience}, 60e9)})
	assertHTTP(t, resp, true, "", idBatch.String())
	resp = e3.httpCheck(t, "GET", "/api/items", nil)
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("path without prefix: %d, want 400", resp.StatusCode)
	}
	_ = authv3.CheckRequest{}
}

func TestAdminEndpoints(t *testing.T) {
	e := newEnv(t)
	h := e.srv.AdminHandler(e.reg)
	do := func(path string) (int, string) {
		rec := &recorder{header: http.Header{}}
		req, _ := http.NewRequest("GET", path, nil)
		h.ServeHTTP(rec, req)
		return rec.code, rec.body.String()
	}
	if c, _ := do("/healthz"); c != 200 {
		t.Errorf("/healthz = %d", c)
	}
	if c, _ := do("/readyz"); c != 503 {
		t.Errorf("/readyz before load = %d, want 503", c)
	}
	e.load(t, "v7", testSet())
	if c, b := do("/readyz"); c != 200 || !strings.Contains(b, "v7") {
		t.Errorf("/readyz after load = %d %q", c, b)
	}
	e.check(t, withPrincipal(get("/api/items", nil), idFrontend.String()))
	_, b := do("/metrics")
	for _, want := range []string{
		`meshguard_authz_decisions_total{mode="enforce",reason="allowed_by_policy",result="allow"} 1`,
		`meshguard_authz_check_duration_seconds_count{protocol="grpc"} 1`,
	} {
		if !strings.Contains(b, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if strings.Contains(b, "spiffe://") {
		t.Error("/metrics carries an identity in a label")
	}
}

type recorder struct {
	header http.Header
	code   int
	body   strings.Builder
}

func (r *recorder) Header() http.Header { return r.header }
func (r *recorder) Write(b []byte) (int, error) {
	if r.code == 0 {
		r.code = 200
	}
	return r.body.Write(b)
}
func (r *recorder) WriteHeader(c int) { r.code = c }

// TestReadinessConditions: /readyz, gRPC health and the ready gauge follow
// every condition: a failing readiness check, a stalled decision log under
// the block policy (not under drop), and a drain, which never comes back.
func TestReadinessConditions(t *testing.T) {
	var checkErr atomic.Pointer[error]
	stuck := stuckWriter{release: make(chan struct{})}
	t.Cleanup(func() { close(stuck.release) })
	for _, overflow := range []spool.Overflow{spool.Drop, spool.Block} {
		t.Run(overflow.String(), func(t *testing.T) {
			checkErr.Store(nil)
			e := newEnv(t, func(c *Config, _ *identityConfig) {
				c.Readiness = []ReadinessCheck{{Name: "control plane", Check: func() error {
					if p := checkErr.Load(); p != nil {
						return *p
					}
					return nil
				}}}
				dl, err := decisionlog.New(decisionlog.Config{W: stuck, AllowSampleRate: 1, Buffer: 1, Overflow: overflow, StallAfter: 10 * time.Millisecond})
				if err != nil {
					t.Fatal(err)
				}
				c.DecisionLog = dl
				c.CheckTimeout = 100 * time.Millisecond // the block policy's longest wait
			})
			h := e.srv.AdminHandler(e.reg)
			readyz := func() (int, string) {
				rec := &recorder{header: http.Header{}}
				req, _ := http.NewRequest("GET", "/readyz", nil)
				h.ServeHTTP(rec, req)
				return rec.code, rec.body.String()
			}
			hc := healthpb.NewHealthClient(e.conn)
			health := func() healthpb.HealthCheckResponse_ServingStatus {
				e.srv.updateHealth() // what WatchReadiness does every tick
				st, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{})
				if err != nil {
					t.Fatal(err)
				}
				return st.GetStatus()
			}
			e.load(t, "v1", testSet())
			if c, b := readyz(); c != 200 || health() != healthpb.HealthCheckResponse_SERVING {
				t.Fatalf("loaded: /readyz %d %q", c, b)
			}
			bad := errors.New("policy bundle unconfirmed for 2m0s")
			checkErr.Store(&bad)
			if c, b := readyz(); c != 503 || !strings.Contains(b, "control plane: policy bundle unconfirmed") || health() != healthpb.HealthCheckResponse_NOT_SERVING {
				t.Errorf("failing check: /readyz %d %q", c, b)
			}
			if g := testutil.ToFloat64(e.srv.metrics.Ready); g != 0 {
				t.Errorf("ready gauge = %v with a failing check", g)
			}
			checkErr.Store(nil)

			// Stall the decision log: one entry in the writer, one in the
			// buffer.
			for i := 0; i < 3; i++ {
				e.check(t, withPrincipal(get("/api/items", nil), idFrontend.String()))
			}
			time.Sleep(30 * time.Millisecond)
			c, b := readyz()
			if !strings.Contains(b, "decision log: writer stalled") {
				t.Errorf("stalled decision log not reported: %q", b)
			}
			if want := map[spool.Overflow]int{spool.Drop: 200, spool.Block: 503}[overflow]; c != want {
				t.Errorf("/readyz with a stalled log = %d, want %d: %q", c, want, b)
			}

			e.srv.Drain()
			checkErr.Store(nil)
			if c, b := readyz(); c != 503 || !strings.Contains(b, "draining") || health() != healthpb.HealthCheckResponse_NOT_SERVING {
				t.Errorf("draining: /readyz %d %q", c, b)
			}
			// A drained server still answers.
			resp := e.check(t, withPrincipal(get("/api/items", nil), idFrontend.String()))
			if resp.GetStatus() == nil {
				t.Error("no answer while draining")
			}
		})
	}
}

// stuckWriter blocks every write until released, as a pipe nobody reads.
type stuckWriter struct{ release chan struct{} }

func (w stuckWriter) Write(p []byte) (int, error) { <-w.release; return len(p), nil }
