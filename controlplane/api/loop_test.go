package api_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/protobuf/types/known/anypb"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	adsclient "github.com/envoyproxy/go-control-plane/pkg/client/sotw/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshguard/meshguard/controlplane/api"
	"github.com/meshguard/meshguard/controlplane/learn"
	"github.com/meshguard/meshguard/controlplane/quarantine"
	"github.com/meshguard/meshguard/controlplane/state"
	"github.com/meshguard/meshguard/controlplane/state/disk"
	"github.com/meshguard/meshguard/controlplane/store"
	"github.com/meshguard/meshguard/controlplane/xdsserver"
	"github.com/meshguard/meshguard/internal/testbed/ca"
	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/wire"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var td = spiffeid.RequireTrustDomainFromString("example.org")

// clock is a manual clock for the quarantine manager.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) { c.mu.Lock(); defer c.mu.Unlock(); c.t = c.t.Add(d) }

// engineSubscriber is an authz server's policy loop: ADS → decode → compile
// → swap into an engine; NACK anything that fails.
type engineSubscriber struct {
	engine  policies.Engine
	updates chan string
}

func startEngineSubscriber(t *testing.T, conn *grpc.ClientConn) *engineSubscriber {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &engineSubscriber{updates: make(chan string, 64)}
	c := adsclient.NewADSClient(ctx, &core.Node{Id: "authz-test"}, resource.ExtensionConfigType)
	if err := c.InitConnect(conn); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		for {
			resp, err := c.Fetch()
			if err != nil {
				return
			}
			snap, err := compileResponse(resp.Resources)
			if err != nil {
				_ = c.Nack(err.Error())
				continue
			}
			s.engine.Swap(snap)
			_ = c.Ack()
			s.updates <- snap.Version()
		}
	}()
	return s
}

func compileResponse(res []*anyProto) (*policies.Snapshot, error) {
	for _, a := range res {
		var tec core.TypedExtensionConfig
		if err := a.UnmarshalTo(&tec); err != nil {
			return nil, err
		}
		if tec.Name != wire.BundleResourceName {
			continue
		}
		var sv wrapperspb.StringValue
		if err := tec.TypedConfig.UnmarshalTo(&sv); err != nil {
			return nil, err
		}
		b, err := policies.DecodeBundle([]byte(sv.Value))
		if err != nil {
			return nil, err
		}
		return policies.Compile(b)
	}
	return nil, errNoBundle
}

func (s *engineSubscriber) decideWithin(t *testing.T, src spiffeid.ID, wantAllowed bool, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(within)
	target := spiffeid.RequireFromPath(td, "/ns/shop/sa/orders")
	for {
		d := s.engine.Decide(&policies.Attributes{
			Peer: src, MTLS: true, Method: "GET", Path: "/orders", Host: "orders",
			Target: policies.Target{ID: target},
		})
		if d.Allowed == wantAllowed {
			if !wantAllowed && d.Reason != policies.ReasonDeniedQuarantine {
				t.Fatalf("denied with %s, want %s", d.Reason, policies.ReasonDeniedQuarantine)
			}
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			t.Fatalf("decision for %s still allowed=%v (%s) after %s", src, d.Allowed, d.Reason, within)
		}
		select {
		case <-s.updates:
		case <-time.After(5 * time.Millisecond):
		}
	}
}

type loop struct {
	st      *store.Store
	qm      *quarantine.Manager
	clk     *clock
	events  *httptest.Server
	authz   *ca.CA
	client  func(id spiffeid.ID) *http.Client
	sub     *engineSubscriber
	audited *bytes.Buffer
	reg     *prometheus.Registry
}

func newLoop(t *testing.T) *loop {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	authority, err := ca.New(td)
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.New(store.Options{Check: func(b *policies.Bundle) error { _, err := policies.Compile(b); return err }})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := xdsserver.New(ctx, xdsserver.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Subscribe(func(b *policies.Bundle) { _ = srv.Publish(b) }))
	profile := policies.AnomalyProfile{
		APIVersion: policies.APIVersionMeshguard, Kind: policies.KindAnomalyProfile,
		Metadata: policies.ObjectMeta{Name: "strict", Namespace: "istio-system"},
		Spec: policies.AnomalyProfileSpec{
			Responses:     map[string]string{"lateral": "quarantine", "enumeration": "block", "rate": "log"},
			QuarantineFor: "10m",
			Correlation:   &policies.Correlation{Window: "1m", MaxDestinations: 2},
		},
	}
	if err := st.SetSource("files", policies.Set{AnomalyProfiles: []policies.AnomalyProfile{profile}}); err != nil {
		t.Fatal(err)
	}
	clk := &clock{t: time.Now()}
	var audit bytes.Buffer
	ds, err := disk.Open(t.TempDir(), disk.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ds.Close() })
	qm, err := quarantine.New(quarantine.Options{
		Store: ds,
		Sink:  st,
		Profiles: func() []policies.AnomalyProfile {
			if b := st.Bundle(); b != nil {
				return b.Set.AnomalyProfiles
			}
			return nil
		},
		Threshold: quarantine.Threshold{Events: 3, Window: time.Minute},
		Protected: []spiffeid.ID{spiffeid.RequireFromPath(td, "/ns/meshguard/sa/authz")},
		Audit:     &audit,
		Now:       clk.now,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(qm.Close)
	if err := qm.Load(ctx); err != nil {
		t.Fatal(err)
	}
	// The mesh's sidecars: orders is a workload of the mesh description,
	// the shop namespace's sidecars report through a pattern.
	reporters, err := api.NewReporters([]api.ReportingWorkload{{ID: spiffeid.RequireFromPath(td, "/ns/shop/sa/orders"), Namespace: "shop", Service: "orders"}},
		[]string{"spiffe://example.org/ns/shop/sa/*"})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	h, err := api.New(api.Options{
		Quarantine: qm, Learner: learn.New(0, nil), TrustDomain: td, Reporters: reporters,
		Admins:     []spiffeid.ID{spiffeid.RequireFromPath(td, "/ns/ops/sa/admin")},
		Registerer: reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	serverSVID, err := authority.IssueX509SVID(spiffeid.RequireFromPath(td, "/ns/meshguard/sa/controlplane"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(authority.Root())
	ts := httptest.NewUnstartedServer(h)
	ts.TLS = &tls.Config{
		Certificates: []tls.Certificate{svidCert(serverSVID)},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    pool,
		MinVersion:   tls.VersionTLS12,
	}
	ts.StartTLS()
	t.Cleanup(ts.Close)

	g := grpc.NewServer()
	srv.Register(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { defer close(served); _ = g.Serve(lis) }()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close(); g.Stop(); <-served })

	serverID := tlsconfig.AuthorizeID(spiffeid.RequireFromPath(td, "/ns/meshguard/sa/controlplane"))
	client := func(id spiffeid.ID) *http.Client {
		cfg := tlsconfig.TLSClientConfig(authority.X509Bundle(), serverID)
		if !id.IsZero() {
			svid, err := authority.IssueX509SVID(id, time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			cfg = tlsconfig.MTLSClientConfig(svid, authority.X509Bundle(), serverID)
		}
		tr := &http.Transport{TLSClientConfig: cfg}
		t.Cleanup(tr.CloseIdleConnections)
		return &http.Client{Transport: tr, Timeout: 5 * time.Second}
	}
	sub := startEngineSubscriber(t, conn)
	select {
	case <-sub.updates: // the first bundle is in the engine
	case <-time.After(5 * time.Second):
		t.Fatal("the subscriber got no bundle")
	}
	return &loop{st: st, qm: qm, clk: clk, events: ts, authz: authority, client: client, sub: sub, audited: &audit, reg: reg}
}

func (l *loop) post(t *testing.T, from spiffeid.ID, batch wire.EventBatch) int {
	t.Helper()
	body, _ := json.Marshal(batch)
	resp, err := l.client(from).Post(l.events.URL+wire.EventsPath, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestQuarantineLoop(t *testing.T) {
	l := newLoop(t)
	attacker := spiffeid.RequireFromPath(td, "/ns/shop/sa/web")
	filter := spiffeid.RequireFromPath(td, "/ns/shop/sa/orders")

	l.sub.decideWithin(t, attacker, true, 2*time.Second) // first bundle arrived, attacker allowed

	// A lateral-movement event: the profile's response is quarantine.
	start := time.Now()
	code := l.post(t, filter, wire.EventBatch{Reporter: filter.String(), Events: []wire.Event{{
		Kind: wire.EventAnomaly, Detector: "lateral", Source: attacker.String(), Destination: "orders.shop.svc.cluster.local",
		Profile: "strict", Response: "log", UnixMillis: time.Now().UnixMilli(), Detail: "3 new edges",
	}}})
	if code != http.StatusAccepted {
		t.Fatalf("events: %d", code)
	}
	l.sub.decideWithin(t, attacker, false, time.Second)
	t.Logf("event → denied at the subscriber in %s", time.Since(start))
	if got := l.qm.List(); len(got) != 1 || got[0].Identity != attacker.String() || got[0].By != filter.String() {
		t.Fatalf("quarantine list = %+v", got)
	}
	// Other identities are unaffected.
	l.sub.decideWithin(t, filter, true, 0)

	// Expiry: the sweeper lifts it and the identity is allowed again.
	l.clk.add(11 * time.Minute)
	start = time.Now()
	if err := l.qm.Sweep(context.Background()); err != nil {
		t.Fatal(err)
	}
	l.sub.decideWithin(t, attacker, true, time.Second)
	t.Logf("expiry → allowed at the subscriber in %s", time.Since(start))

	audit := l.qm.Audit()
	if len(audit) != 2 || audit[0].Action != "add" || audit[1].Action != "expire" {
		t.Fatalf("audit = %+v", audit)
	}
	if lines := bytes.Count(l.audited.Bytes(), []byte("\n")); lines != 2 {
		t.Fatalf("audit file has %d lines, want 2", lines)
	}
}

func TestQuarantineByThreshold(t *testing.T) {
	l := newLoop(t)
	attacker := spiffeid.RequireFromPath(td, "/ns/shop/sa/scanner")
	filter := spiffeid.RequireFromPath(td, "/ns/shop/sa/orders")
	ev := wire.Event{Kind: wire.EventAnomaly, Detector: "enumeration", Source: attacker.String(), Profile: "strict"}
	for i := range 3 {
		ev.UnixMillis = int64(i + 1) // three reports; the same one sent again would count once
		if code := l.post(t, filter, wire.EventBatch{Events: []wire.Event{ev}}); code != http.StatusAccepted {
			t.Fatalf("events: %d", code)
		}
		if i < 2 && len(l.qm.List()) != 0 {
			t.Fatalf("quarantined after %d events, threshold is 3", i+1)
		}
	}
	l.sub.decideWithin(t, attacker, false, time.Second)
}

// TestCorrelationThroughTheEndpoint: reports about one source from three
// sidecars — the source's own outbound side (accepted: it is its own
// call) and the inbound sides of two destinations, one of which names no
// destination — add up to a fan-out, and the source is denied at the
// authz server's engine.
func TestCorrelationThroughTheEndpoint(t *testing.T) {
	l := newLoop(t)
	attacker := spiffeid.RequireFromPath(td, "/ns/shop/sa/reviews")
	orders := spiffeid.RequireFromPath(td, "/ns/shop/sa/orders")
	catalog := spiffeid.RequireFromPath(td, "/ns/shop/sa/catalog")
	l.sub.decideWithin(t, attacker, true, 2*time.Second)
	now := time.Now().UnixMilli()
	// Its own sidecar: an edge to payments that the baseline lacks.
	if code := l.post(t, attacker, wire.EventBatch{Events: []wire.Event{{Kind: wire.EventEdge, Detector: "lateral",
		Source: attacker.String(), Destination: "payments-api.payments", UnixMillis: now, Detail: "unknown baseline=shadow"}}}); code != http.StatusAccepted {
		t.Fatalf("the source's own outbound report: %d", code)
	}
	// orders (a mesh workload) reports an anomaly without naming itself.
	if code := l.post(t, orders, wire.EventBatch{Events: []wire.Event{{Kind: wire.EventAnomaly, Detector: "rate",
		Source: attacker.String(), Profile: "strict", UnixMillis: now, Detail: "rate_zscore"}}}); code != http.StatusAccepted {
		t.Fatalf("orders' report: %d", code)
	}
	if got := l.qm.List(); len(got) != 0 {
		t.Fatalf("quarantined after two destinations: %+v", got)
	}
	if code := l.post(t, catalog, wire.EventBatch{Events: []wire.Event{{Kind: wire.EventEdge, Detector: "lateral",
		Source: attacker.String(), Destination: "catalog", UnixMillis: now, Detail: "unknown baseline=shadow"}}}); code != http.StatusAccepted {
		t.Fatalf("catalog's report: %d", code)
	}
	l.sub.decideWithin(t, attacker, false, time.Second)
	// orders' denials of the attacker are decisions, never learned edges
	// (the endpoint names the destination of anomalies only).
	if code := l.post(t, orders, wire.EventBatch{Events: []wire.Event{{Kind: wire.EventDecision, Source: attacker.String(),
		Response: "deny", Count: 3, UnixMillis: now, Detail: "denied_no_allow_match"}}}); code != http.StatusAccepted {
		t.Fatalf("orders' decisions: %d", code)
	}
	resp, err := l.client(spiffeid.RequireFromPath(td, "/ns/ops/sa/admin")).Get(l.events.URL + api.PathEdges)
	if err != nil {
		t.Fatal(err)
	}
	var edges []learn.Edge
	err = json.NewDecoder(resp.Body).Decode(&edges)
	resp.Body.Close()
	for _, e := range edges {
		if e.Destination == "orders.shop" {
			t.Errorf("a denial was learned as an edge: %+v", e)
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	got := l.qm.List()
	if len(got) != 1 || got[0].By != quarantine.ByCorrelation ||
		!strings.Contains(got[0].Reason, "catalog.shop, orders.shop, payments-api.payments") {
		t.Fatalf("quarantines %+v", got)
	}
}

func TestEventsEndpointRejects(t *testing.T) {
	l := newLoop(t)
	attacker := spiffeid.RequireFromPath(td, "/ns/shop/sa/web")
	quarantineEv := []wire.Event{{Kind: wire.EventAnomaly, Detector: "lateral", Source: attacker.String(), Profile: "strict"}}
	other, err := ca.New(spiffeid.RequireTrustDomainFromString("evil.org"))
	if err != nil {
		t.Fatal(err)
	}
	_ = other
	tests := []struct {
		name string
		do   func() int
		want int
	}{
		{"no client certificate", func() int {
			return l.post(t, spiffeid.ID{}, wire.EventBatch{Events: quarantineEv})
		}, http.StatusUnauthorized},
		{"unknown field", func() int {
			resp, err := l.client(attacker).Post(l.events.URL+wire.EventsPath, "application/json",
				bytes.NewReader([]byte(`{"reporter":"x","events":[],"admin":true}`)))
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			return resp.StatusCode
		}, http.StatusBadRequest},
		{"unknown kind", func() int {
			return l.post(t, attacker, wire.EventBatch{Events: []wire.Event{{Kind: "exploit"}}})
		}, http.StatusBadRequest},
		{"too many events", func() int {
			return l.post(t, attacker, wire.EventBatch{Events: make([]wire.Event, api.MaxBatchEvents+1)})
		}, http.StatusBadRequest},
		{"too large", func() int {
			big := bytes.Repeat([]byte(" "), api.MaxBatchBytes+1)
			resp, err := l.client(attacker).Post(l.events.URL+wire.EventsPath, "application/json", bytes.NewReader(big))
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			return resp.StatusCode
		}, http.StatusRequestEntityTooLarge},
		{"wrong method", func() int {
			resp, err := l.client(attacker).Get(l.events.URL + wire.EventsPath)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			return resp.StatusCode
		}, http.StatusMethodNotAllowed},
		{"not a meshguard data-plane component", func() int {
			// A member of the trust domain, but neither a mesh workload
			// nor matched by a reporter pattern.
			return l.post(t, spiffeid.RequireFromPath(td, "/ns/bank/sa/ledger"), wire.EventBatch{Events: quarantineEv})
		}, http.StatusForbidden},
		{"admin API refuses a non-admin", func() int {
			resp, err := l.client(attacker).Get(l.events.URL + api.PathQuarantines)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			return resp.StatusCode
		}, http.StatusForbidden},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.do(); got != tt.want {
				t.Fatalf("status %d, want %d", got, tt.want)
			}
			if len(l.qm.List()) != 0 {
				t.Fatal("a rejected request changed the quarantine list")
			}
		})
	}
	if got := testutil.ToFloat64(metric(t, l.reg, "meshguard_controlplane_event_batches_total", "forbidden")); got != 1 {
		t.Errorf("forbidden batches counted %v, want 1", got)
	}
	// Reports about traffic the reporter did not see are dropped: orders
	// (a mesh workload) about calls into payments, web (a shop sidecar)
	// about calls into another namespace.
	for _, c := range []struct {
		from spiffeid.ID
		dest string
	}{{spiffeid.RequireFromPath(td, "/ns/shop/sa/orders"), "payments.shop"}, {spiffeid.RequireFromPath(td, "/ns/shop/sa/web"), "ledger.bank.svc.cluster.local"}} {
		ev := quarantineEv[0]
		ev.Source, ev.Destination = spiffeid.RequireFromPath(td, "/ns/shop/sa/victim").String(), c.dest
		if code := l.post(t, c.from, wire.EventBatch{Events: []wire.Event{ev}}); code != http.StatusAccepted {
			t.Fatalf("batch with an out-of-scope event: %d", code)
		}
	}
	if len(l.qm.List()) != 0 {
		t.Fatalf("an event about traffic its reporter did not see quarantined: %+v", l.qm.List())
	}
	if got := testutil.ToFloat64(metric(t, l.reg, "meshguard_controlplane_events_refused_total", "anomaly")); got != 2 {
		t.Errorf("refused events counted %v, want 2", got)
	}
	// A protected identity is never quarantined by events.
	authz := spiffeid.RequireFromPath(td, "/ns/meshguard/sa/authz")
	l.post(t, attacker, wire.EventBatch{Events: []wire.Event{{Kind: wire.EventAnomaly, Detector: "lateral", Source: authz.String(), Profile: "strict"}}})
	if len(l.qm.List()) != 0 {
		t.Fatal("a protected identity was quarantined")
	}
}

func TestAdminAPI(t *testing.T) {
	l := newLoop(t)
	admin := l.client(spiffeid.RequireFromPath(td, "/ns/ops/sa/admin"))
	victim := spiffeid.RequireFromPath(td, "/ns/shop/sa/web")
	body, _ := json.Marshal(api.QuarantineRequest{Identity: victim.String(), Reason: "incident 42", Duration: "1h"})
	resp, err := admin.Post(l.events.URL+api.PathQuarantines, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	var e quarantine.Entry
	_ = json.NewDecoder(resp.Body).Decode(&e)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || e.By != "spiffe://example.org/ns/ops/sa/admin" {
		t.Fatalf("add: %d %+v", resp.StatusCode, e)
	}
	l.sub.decideWithin(t, victim, false, time.Second)

	body, _ = json.Marshal(api.ReleaseRequest{Identity: victim.String(), Reason: "false positive"})
	resp, err = admin.Post(l.events.URL+api.PathRelease, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("release: %d", resp.StatusCode)
	}
	l.sub.decideWithin(t, victim, true, time.Second)

	// Bad requests.
	for _, b := range []string{
		`{"identity":"not-an-id","reason":"x"}`,
		`{"identity":"spiffe://example.org/a","reason":""}`,
		`{"identity":"spiffe://example.org/a","reason":"x","duration":"-1h"}`,
		`{"identity":"spiffe://example.org/a","reason":"x","extra":1}`,
	} {
		resp, err := admin.Post(l.events.URL+api.PathQuarantines, "application/json", bytes.NewReader([]byte(b)))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%s: status %d", b, resp.StatusCode)
		}
	}
	audit := l.qm.Audit()
	if len(audit) != 2 || audit[1].Action != "release" || audit[1].Reason != "false positive" {
		t.Fatalf("audit = %+v", audit)
	}
}

func svidCert(s interface {
	Marshal() ([]byte, []byte, error)
}) tls.Certificate {
	certs, key, err := s.Marshal()
	if err != nil {
		panic(err)
	}
	c, err := tls.X509KeyPair(certs, key)
	if err != nil {
		panic(err)
	}
	return c
}

type anyProto = anypb.Any

// metric returns the series of name with the given label values.
func metric(t *testing.T, g prometheus.Gatherer, name string, labels ...string) prometheus.Collector {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			match := len(m.GetLabel()) == len(labels)
			for i, lp := range m.GetLabel() {
				if match && lp.GetValue() != labels[i] {
					match = false
				}
			}
			if match {
				c := prometheus.NewCounter(prometheus.CounterOpts{Name: name})
				c.Add(m.GetCounter().GetValue())
				return c
			}
		}
	}
	t.Fatalf("no series %s%v", name, labels)
	return nil
}

var errNoBundle = errors.New("no bundle resource in the response")

// downStore is the real store on disk with every write refused, as an
// unreachable API server would.
type downStore struct{ *disk.Store }

func (downStore) UpdateQuarantine(context.Context, string, state.QuarantineUpdate) (*state.Quarantine, error) {
	return nil, errors.New("connection refused")
}

// TestAdminAPIStoreUnavailable: an add or release the store did not take
// is an error for the caller (503), never a success.
func TestAdminAPIStoreUnavailable(t *testing.T) {
	st, err := store.New(store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ds, err := disk.Open(t.TempDir(), disk.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ds.Close() })
	qm, err := quarantine.New(quarantine.Options{Store: downStore{ds}, Sink: st})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(qm.Close)
	h, err := api.New(api.Options{Quarantine: qm, Learner: learn.New(0, nil), Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(h)
	t.Cleanup(ts.Close)
	for path, body := range map[string]string{
		api.PathQuarantines: `{"identity":"spiffe://example.org/ns/shop/sa/web","reason":"incident"}`,
		api.PathRelease:     `{"identity":"spiffe://example.org/ns/shop/sa/web","reason":"cleared"}`,
	} {
		resp, err := http.Post(ts.URL+path, "application/json", bytes.NewReader([]byte(body)))
		if err != nil {
			t.Fatal(err)
		}
		var e api.ErrorBody
		_ = json.NewDecoder(resp.Body).Decode(&e)
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable || !bytes.Contains([]byte(e.Error), []byte("connection refused")) {
			t.Errorf("%s with the store down: %d %q", path, resp.StatusCode, e.Error)
		}
	}
	if len(qm.List()) != 0 {
		t.Fatalf("listed after a failed add: %+v", qm.List())
	}
}
