package console

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/meshguard/meshguard/controlplane/api"
	"github.com/meshguard/meshguard/controlplane/learn"
	"github.com/meshguard/meshguard/controlplane/quarantine"
	"github.com/meshguard/meshguard/controlplane/record"
	"github.com/meshguard/meshguard/controlplane/recordstore"
	"github.com/meshguard/meshguard/controlplane/state/disk"
	"github.com/meshguard/meshguard/controlplane/store"
	"github.com/meshguard/meshguard/examples"
	"github.com/meshguard/meshguard/internal/testbed/ca"
	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/source"
	"github.com/meshguard/meshguard/policies/wire"
)

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

func idOf(path string) spiffeid.ID { return spiffeid.RequireFromPath(td, path) }

var (
	operatorID = idOf("/ns/secops/sa/oncall")
	viewerID   = idOf("/ns/secops/sa/auditor")
	strangerID = idOf("/ns/bookstore/sa/frontend") // a mesh member without a console role
)

// plane is the control plane's HTTP listener as `meshguard controlplane`
// wires it: the events endpoint and admin API, and the console on /console/,
// with the real policy store (the example policies) and quarantine manager.
type plane struct {
	t        *testing.T
	st       *store.Store
	qm       *quarantine.Manager
	console  *Console
	srv      *httptest.Server
	url      string
	opToken  string
	viewTok  string
	ca       *ca.CA
	reg      *prometheus.Registry
	insecure bool
	records  *recordstore.Store // with planeOptions.records
}

type planeOptions struct {
	tls       bool
	workloads []Workload
	tick      time.Duration
	maxEdges  int
	// timeout is the listener's read and write timeout, as the
	// controlplane command sets them (0: none).
	timeout time.Duration
	// records wires a record store as the controlplane command does: the
	// API keeps events and shipped decisions in it, the quarantine
	// manager's changes go to it, and it is the console's timeline.
	records bool
}

const (
	testOperatorToken = "operator-token-0123456789abcdef"
	testViewerToken   = "viewer-token-0123456789abcdef"
)

func newPlane(t *testing.T, o planeOptions) *plane {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	st, err := store.New(store.Options{Check: func(b *policies.Bundle) error { _, err := policies.Compile(b); return err }})
	if err != nil {
		t.Fatal(err)
	}
	set, diags, err := source.LoadFS(examples.FS(), "policies")
	if err != nil || diags.HasErrors() {
		t.Fatalf("example policies: %v %v", err, diags)
	}
	if err := st.SetSource("files", set); err != nil {
		t.Fatal(err)
	}
	ds, err := disk.Open(t.TempDir(), disk.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var recs *recordstore.Store
	var observer func(quarantine.AuditRecord)
	if o.records {
		if recs, err = recordstore.Open(ctx, recordstore.Options{Path: t.TempDir() + "/records.db", MaxAge: -1}); err != nil {
			t.Fatal(err)
		}
		rdone := make(chan struct{})
		rctx, rcancel := context.WithCancel(context.Background())
		go func() { defer close(rdone); recs.Run(rctx) }()
		t.Cleanup(func() { rcancel(); <-rdone; _ = recs.Close() })
		observer = func(a quarantine.AuditRecord) {
			recs.AppendOrDrop([]record.Record{record.FromQuarantine(a.Time, a.Action, a.Identity, a.By, a.Reason, a.Expires)})
		}
	}
	qm, err := quarantine.New(quarantine.Options{Store: ds, Sink: st, Namespace: "istio-system", Observer: observer})
	if err != nil {
		t.Fatal(err)
	}
	if err := qm.Load(ctx); err != nil {
		t.Fatal(err)
	}
	// The mesh's workloads may report (with TLS): the trust domain's.
	reporters, err := api.NewReporters(nil, []string{"spiffe://" + td.Name()})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	tick := o.tick
	if tick == 0 {
		tick = 50 * time.Millisecond
	}
	copts := Options{
		Quarantines: Manager(qm), Bundle: st.Bundle, Workloads: o.workloads, Tick: tick, MaxEdges: o.maxEdges,
		Auth: Auth{Operators: []spiffeid.ID{operatorID}, Viewers: []spiffeid.ID{viewerID},
			OperatorToken: testOperatorToken, ViewerToken: testViewerToken},
		Registerer: reg,
	}
	if recs != nil {
		copts.Timeline = recs
	}
	c, err := New(copts)
	if err != nil {
		t.Fatal(err)
	}
	unsub := st.Subscribe(c.BundleChanged)
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	aopts := api.Options{Quarantine: qm, Learner: learn.New(0, nil), Observers: []api.EventObserver{c},
		DecisionObservers: []api.DecisionObserver{c},
		Insecure:          !o.tls, TrustDomain: td, Reporters: reporters, Admins: []spiffeid.ID{operatorID}, Registerer: reg}
	if recs != nil {
		aopts.Records, aopts.Forensics = recs, recs
	}
	h, err := api.New(aopts)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(Path, c)
	mux.Handle("/", h)
	p := &plane{t: t, st: st, qm: qm, console: c, opToken: testOperatorToken, viewTok: testViewerToken, reg: reg, insecure: !o.tls, records: recs}
	if o.tls {
		authority, err := ca.New(td)
		if err != nil {
			t.Fatal(err)
		}
		p.ca = authority
		svid, err := authority.IssueX509SVID(idOf("/ns/meshguard/sa/controlplane"), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		p.srv = httptest.NewUnstartedServer(mux)
		p.srv.Config.ReadTimeout, p.srv.Config.WriteTimeout = o.timeout, o.timeout
		p.srv.TLS = ServerTLSConfig(svid, authority.X509Bundle(), tlsconfig.AuthorizeMemberOf(td))
		// httptest would serve its own certificate to a client that sends
		// no server name: serve the SVID.
		cert := tls.Certificate{PrivateKey: svid.PrivateKey}
		for _, c := range svid.Certificates {
			cert.Certificate = append(cert.Certificate, c.Raw)
		}
		p.srv.TLS.Certificates = []tls.Certificate{cert}
		p.srv.StartTLS()
	} else {
		p.srv = httptest.NewUnstartedServer(mux)
		p.srv.Config.ReadTimeout, p.srv.Config.WriteTimeout = o.timeout, o.timeout
		p.srv.Start()
	}
	p.url = p.srv.URL
	t.Cleanup(func() {
		p.srv.CloseClientConnections()
		p.srv.Close()
		cancel()
		<-done
		unsub()
		qm.Close()
		_ = ds.Close()
	})
	return p
}

// client returns an HTTP client; with TLS it presents id's SVID (zero ID:
// no certificate).
func (p *plane) client(id spiffeid.ID) *http.Client {
	if p.ca == nil {
		return &http.Client{Timeout: 10 * time.Second}
	}
	cfg := &tls.Config{InsecureSkipVerify: true} //nolint:gosec // the server's identity is not what these tests check
	if !id.IsZero() {
		svid, err := p.ca.IssueX509SVID(id, time.Hour)
		if err != nil {
			p.t.Fatal(err)
		}
		cfg = tlsconfig.MTLSClientConfig(svid, p.ca.X509Bundle(), tlsconfig.AuthorizeAny())
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
}

// post sends events as reporter would, through the events endpoint.
func (p *plane) post(reporter spiffeid.ID, evs ...wire.Event) {
	p.t.Helper()
	body, err := json.Marshal(wire.EventBatch{Reporter: reporter.String(), Events: evs})
	if err != nil {
		p.t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodPost, p.url+wire.EventsPath, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := p.client(reporter).Do(req)
	if err != nil {
		p.t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		p.t.Fatalf("events: %d", resp.StatusCode)
	}
}

// decision is a decision event as the wasm filter reports it.
func decision(src spiffeid.ID, route, outcome, detail string, n uint64) wire.Event {
	s := ""
	if !src.IsZero() {
		s = src.String()
	}
	return wire.Event{Kind: wire.EventDecision, Source: s, Route: route, Response: outcome, Count: n, Detail: detail,
		UnixMillis: time.Now().UnixMilli()}
}
