package recordstore

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/meshguard/meshguard/controlplane/record"
	"github.com/meshguard/meshguard/policies/wire"
)

const (
	frontend = "spiffe://cluster.local/ns/bookstore/sa/frontend"
	reviews  = "spiffe://cluster.local/ns/bookstore/sa/reviews"
	catalog  = "spiffe://cluster.local/ns/bookstore/sa/catalog"
	orders   = "spiffe://cluster.local/ns/bookstore/sa/orders"
	ledger   = "spiffe://cluster.local/ns/payments/sa/ledger"
	operator = "spiffe://cluster.local/ns/secops/sa/oncall"
	authzID  = "spiffe://cluster.local/ns/meshguard/sa/authz"
)

var t0 = time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)

func open(t *testing.T, o Options) *Store {
	t.Helper()
	if o.Path == "" {
		o.Path = filepath.Join(t.TempDir(), "records.db")
	}
	if o.MaxAge == 0 {
		o.MaxAge = -1 // the fixtures' times are fixed
	}
	s, err := Open(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// running starts Run and stops it at cleanup.
func running(t *testing.T, s *Store) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

func syncStore(t *testing.T, s *Store) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.Sync(ctx); err != nil {
		t.Fatal(err)
	}
}

// decision is a recorded decision of src calling dst.
func decision(at time.Time, src, dst, path string, allowed bool, reason, policy, rule string) record.Record {
	d := &wire.Decision{
		Time: at, DecisionID: fmt.Sprintf("d-%d", at.UnixNano()), RequestID: "req-" + path, Protocol: "grpc",
		Source: src, SourceMethod: "certificate", MTLS: true, SourceIP: "10.0.0.7", DestinationIP: "10.0.1.2", DestinationPort: 8080,
		Destination: dst, TargetNamespace: "bookstore", TargetService: "svc", TargetLabels: map[string]string{"app": "svc"},
		Method: "GET", Host: "svc.bookstore:8080", Path: path, Route: "svc-api", Scope: "bookstore/svc",
		Allowed: allowed, Reason: reason, Mode: "enforce", Policy: policy, Rule: rule, BundleVersion: "3-abc", LatencyMicros: 40,
	}
	return record.FromDecision(authzID, d)
}

func count(t *testing.T, s *Store) int {
	t.Helper()
	var n int
	if err := s.r.QueryRow(`SELECT COUNT(*) FROM records`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestIngestUnderLoad: eight producers append batches as fast as they can
// into a small queue while the writer drains it. Every record is either
// stored or counted as dropped: stored rows equal accepted records exactly,
// and the drop counter equals the records refused.
func TestIngestUnderLoad(t *testing.T) {
	reg := prometheus.NewRegistry()
	s := open(t, Options{Queue: 2_000, Batch: 500, Registerer: reg})
	running(t, s)
	const producers, batches, size = 8, 100, 50
	var accepted, refused atomic.Int64
	var wg sync.WaitGroup
	for p := range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for b := range batches {
				recs := make([]record.Record, size)
				for i := range recs {
					recs[i] = decision(t0.Add(time.Duration(p*batches*size+b*size+i)*time.Millisecond), frontend, catalog, "/api/books", true, "allowed_by_policy", "AuthorizationPolicy/bookstore/catalog", "0")
				}
				time.Sleep(time.Duration(b%3) * time.Millisecond)
				switch err := s.Append(recs); {
				case err == nil:
					accepted.Add(size)
				case errors.Is(err, record.ErrFull):
					s.Dropped(size)
					refused.Add(size)
				default:
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	syncStore(t, s)
	total := int64(producers * batches * size)
	if accepted.Load()+refused.Load() != total {
		t.Fatalf("accepted %d + refused %d != %d", accepted.Load(), refused.Load(), total)
	}
	if got := int64(count(t, s)); got != accepted.Load() {
		t.Errorf("stored %d records, accepted %d", got, accepted.Load())
	}
	if got := testutil.ToFloat64(s.m.stored.WithLabelValues("decision")); int64(got) != accepted.Load() {
		t.Errorf("stored counter %v, accepted %d", got, accepted.Load())
	}
	if got := testutil.ToFloat64(s.m.dropped.WithLabelValues("queue_full")); int64(got) != refused.Load() {
		t.Errorf("dropped counter %v, refused %d", got, refused.Load())
	}
	t.Logf("%d records: %d stored, %d refused by the full queue and counted", total, accepted.Load(), refused.Load())
}

// TestDecisionRoundTrip: a stored decision reads back field for field, so
// that replay from the store sees what the authz server recorded: the
// identities as the policy model keeps them (a forwarded client behind a
// gateway peer, a plain mTLS peer, a JWT-SVID caller without a peer),
// the JWT with its recorded claims, headers; and a filter's report with
// its count.
func TestDecisionRoundTrip(t *testing.T) {
	s := open(t, Options{})
	running(t, s)
	full := &wire.Decision{
		Time: t0.Add(123456 * time.Microsecond), DecisionID: "abc-1", RequestID: "r1", TraceID: "0af7651916cd43dd8448eb211c80319c",
		Protocol: "http", Source: reviews, SourceMethod: "xfcc", Peer: "spiffe://cluster.local/ns/istio-system/sa/gw", ForwardedClient: reviews,
		MTLS: true, SourceIP: "10.0.0.1", RemoteIP: "192.0.2.9", DestinationIP: "10.0.0.2", DestinationPort: 9080, SNI: "catalog",
		Destination: catalog, TargetNamespace: "bookstore", TargetService: "catalog", TargetGateway: "gw",
		TargetLabels: map[string]string{"app": "catalog", "v": "1"}, TargetResolved: true, Method: "DELETE", Host: "catalog:9080", Path: "/api/books/1",
		Route: "catalog-api", Scope: "bookstore/catalog",
		JWT: &wire.DecisionJWT{Issuer: "https://idp", Subject: "alice", Principal: "https://idp/alice", Audiences: []string{"a"}, Presenter: "p",
			Claims: []byte(`{"groups":["admins"]}`), ClaimNames: []string{"groups", "tier"}},
		Allowed: true, Reason: "allowed_by_policy", Mode: "dry-run", Policy: "AuthorizationPolicy/bookstore/x", Rule: "2",
		WouldDeny: true, Audit: true, AuditPolicy: "AuthorizationPolicy/bookstore/audit", BundleVersion: "9-f00", Error: "",
		LatencyMicros: 77, Headers: map[string]string{"x-tenant": "t"}, HeaderNames: []string{"x-tenant", "x-ticket"},
	}
	peer := *full
	peer.DecisionID, peer.SourceMethod, peer.Peer, peer.ForwardedClient, peer.RemoteIP, peer.JWT, peer.Headers = "abc-2", "certificate", reviews, "", "", nil, nil
	svid := peer
	svid.DecisionID, svid.SourceMethod, svid.Peer, svid.MTLS = "abc-3", "jwt", "", false
	svid.JWT = &wire.DecisionJWT{Issuer: "spiffe://cluster.local", Subject: reviews, Principal: "spiffe://cluster.local/" + reviews, SVID: true, Audiences: []string{"catalog"}}
	want := []*wire.Decision{full, &peer, &svid}
	var recs []record.Record
	for _, d := range want {
		recs = append(recs, record.FromDecision(authzID, d))
	}
	recs = append(recs, record.FromEvents(catalog, []wire.Event{{Kind: wire.EventDecision, Source: reviews, Route: "catalog-api", Method: "GET",
		Path: "/admin/1", Response: "deny", Count: 12, UnixMillis: t0.Add(time.Second).UnixMilli(), Detail: "denied_no_allow_match"}}, record.EventOptions{})...)
	if err := s.Append(recs); err != nil {
		t.Fatal(err)
	}
	syncStore(t, s)
	res, err := s.Query(context.Background(), Filter{Ascending: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Records) != 4 {
		t.Fatalf("%d records", len(res.Records))
	}
	for i, d := range want {
		got := res.Records[i]
		if !reflect.DeepEqual(got.Decision, d) {
			t.Errorf("decision %s read back differs:\n got %+v\nwant %+v", d.DecisionID, got.Decision, d)
		}
	}
	if got := res.Records[0]; got.Kind != record.KindDecision || got.Action != record.ActionWouldDeny || got.Reporter != authzID || got.Count != 0 {
		t.Errorf("record %+v", got)
	}
	if got := res.Records[3]; got.Decision != nil || got.Count != 12 || got.Path != "/admin/1" || got.Action != record.ActionDeny || got.Destination != catalog {
		t.Errorf("filter report %+v", got)
	}
}

// fixture stores a small incident: frontend's normal traffic, reviews
// scanning catalog and moving to orders and ledger, detections, the
// quarantine, denies while quarantined, the release.
func fixture(t *testing.T, s *Store) {
	t.Helper()
	var recs []record.Record
	at := func(sec int) time.Time { return t0.Add(time.Duration(sec) * time.Second) }
	for i := range 10 {
		recs = append(recs, decision(at(i), frontend, catalog, "/api/books", true, "allowed_by_policy", "AuthorizationPolicy/bookstore/catalog", "0"))
		recs = append(recs, decision(at(i), reviews, catalog, "/api/books", true, "allowed_by_policy", "AuthorizationPolicy/bookstore/catalog", "1"))
	}
	for i := range 5 { // the scan
		recs = append(recs, decision(at(100+i), reviews, catalog, fmt.Sprintf("/admin/%d", i), false, "denied_no_allow_match", "", ""))
	}
	recs = append(recs, decision(at(110), reviews, orders, "/orders", false, "denied_by_policy", "AuthorizationPolicy/bookstore/orders-deny", "0"))
	recs = append(recs, decision(at(111), reviews, ledger, "/ledger", false, "denied_default_deny", "DefaultDeny/payments/all", ""))
	recs = append(recs, record.FromEvents("spiffe://cluster.local/ns/bookstore/sa/catalog", []wire.Event{
		{Kind: wire.EventAnomaly, Detector: "enumeration", Source: reviews, Route: "catalog-api", Method: "GET", Response: "block", Profile: "bookstore/default", Detail: "distinct_paths", UnixMillis: at(105).UnixMilli()},
		{Kind: wire.EventEdge, Source: reviews, Destination: orders, Route: "orders", Method: "POST", Detail: "unknown baseline=shadow", UnixMillis: at(110).UnixMilli()},
		{Kind: wire.EventEdge, Source: frontend, Destination: catalog, Route: "catalog-api", Method: "GET", Detail: "known", UnixMillis: at(1).UnixMilli()},
	}, record.EventOptions{})...)
	recs = append(recs, record.FromQuarantine(at(120), "add", reviews, authzID, "2 anomaly events within 1m0s", at(120+900)))
	recs = append(recs, record.FromPolicyChange(at(120), "quarantine", "4-abc", 12, nil))
	for i := range 3 {
		recs = append(recs, decision(at(130+i), reviews, catalog, "/api/books", false, "denied_quarantined", "", ""))
	}
	recs = append(recs, record.FromQuarantine(at(200), "release", reviews, operator, "investigated", time.Time{}))
	recs = append(recs, decision(at(300), reviews, catalog, "/api/books", true, "allowed_by_policy", "AuthorizationPolicy/bookstore/catalog", "1"))
	if err := s.Append(recs); err != nil {
		t.Fatal(err)
	}
	syncStore(t, s)
}

func TestQueries(t *testing.T) {
	s := open(t, Options{})
	running(t, s)
	fixture(t, s)
	ctx := context.Background()
	at := func(sec int) time.Time { return t0.Add(time.Duration(sec) * time.Second) }
	for _, tc := range []struct {
		name string
		f    Filter
		want int
		// check, when set, holds for every record
		check func(record.Record) bool
	}{
		{"everything", Filter{Limit: 1000}, 36, nil},
		{"identity exact, either side", Filter{Identity: []string{catalog}, Limit: 1000}, 30, func(r record.Record) bool { return r.Source == catalog || r.Destination == catalog }},
		{"identity pattern", Filter{Identity: []string{"spiffe://cluster.local/ns/payments/*/*"}}, 1, func(r record.Record) bool { return r.Destination == ledger }},
		{"trust domain pattern", Filter{Source: []string{"spiffe://cluster.local"}, Limit: 1000}, 35, nil},
		{"source", Filter{Source: []string{frontend}}, 10, func(r record.Record) bool { return r.Source == frontend }},
		{"destination", Filter{Destination: []string{orders}}, 2, func(r record.Record) bool { return r.Destination == orders }},
		{"edge", Filter{Source: []string{reviews}, Destination: []string{orders}}, 2, nil},
		{"edge, decisions only", Filter{Source: []string{reviews}, Destination: []string{orders}, Kinds: []record.Kind{record.KindDecision}}, 1, nil},
		{"time range", Filter{Since: at(100), Until: at(105)}, 5, func(r record.Record) bool { return !r.Time.Before(at(100)) && r.Time.Before(at(105)) }},
		{"reason", Filter{Reasons: []string{"denied_quarantined"}}, 3, func(r record.Record) bool { return r.Reason == "denied_quarantined" }},
		{"two reasons", Filter{Reasons: []string{"denied_by_policy", "denied_default_deny"}}, 2, nil},
		{"policy", Filter{Policy: "AuthorizationPolicy/bookstore/catalog", Limit: 1000}, 21, nil},
		{"policy and rule", Filter{Policy: "AuthorizationPolicy/bookstore/catalog", Rule: "1", Limit: 1000}, 11, func(r record.Record) bool { return r.Rule == "1" }},
		{"decision deny", Filter{Actions: []string{record.ActionDeny}, Kinds: []record.Kind{record.KindDecision}}, 10, nil},
		{"decision allow of reviews", Filter{Source: []string{reviews}, Actions: []string{record.ActionAllow}}, 11, nil},
		{"detections", Filter{Kinds: []record.Kind{record.KindDetection}}, 2, nil},
		{"detector", Filter{Kinds: []record.Kind{record.KindDetection}, Reasons: []string{"enumeration"}}, 1, nil},
		{"quarantines and releases", Filter{Kinds: []record.Kind{record.KindQuarantine, record.KindRelease}}, 2, nil},
		{"policy changes", Filter{Kinds: []record.Kind{record.KindPolicy}}, 1, func(r record.Record) bool { return r.By == "quarantine" }},
		{"route", Filter{Route: "orders"}, 1, nil},
		{"unknown identity", Filter{Identity: []string{"spiffe://cluster.local/ns/x/sa/nobody"}}, 0, nil},
		{"unknown reason", Filter{Reasons: []string{"nope"}}, 0, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := s.Query(ctx, tc.f)
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Records) != tc.want {
				t.Fatalf("%d records, want %d", len(res.Records), tc.want)
			}
			for i, r := range res.Records {
				if tc.check != nil && !tc.check(r) {
					t.Errorf("record %+v does not match", r)
				}
				if i > 0 && r.Time.After(res.Records[i-1].Time) {
					t.Errorf("not newest first at %d", i)
				}
			}
		})
	}
	// Limit and order.
	res, err := s.Query(ctx, Filter{Source: []string{frontend}, Limit: 3, Ascending: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Records) != 3 || !res.Truncated || !res.Records[0].Time.Equal(t0) {
		t.Errorf("limit 3 ascending: %d records, truncated %v, first %v", len(res.Records), res.Truncated, res.Records[0].Time)
	}
	// Bad filters are refused with every problem.
	_, err = s.Query(ctx, Filter{Identity: []string{"not-an-id"}, Kinds: []record.Kind{"x"}, Rule: "0", Limit: -1})
	if err == nil {
		t.Fatal("bad filter accepted")
	}
	for _, want := range []string{"not-an-id", `kind "x"`, "rule needs its policy", "limit -1"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

func TestTimeline(t *testing.T) {
	s := open(t, Options{})
	running(t, s)
	fixture(t, s)
	ctx := context.Background()
	tl, err := s.Timeline(ctx, reviews, TimelineOptions{Window: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	// The 30 s before the quarantine at 120 s: the scan at 100-104, the
	// detection at 105, the denies at 110 and 111, the unknown edge at
	// 110, the quarantine; then the release. Not the traffic at 0-9 s, not
	// the denies while quarantined (after the anchor), not frontend's.
	var kinds []string
	for _, r := range tl.Records {
		kinds = append(kinds, string(r.Kind)+":"+r.Action)
	}
	want := []string{"decision:deny", "decision:deny", "decision:deny", "decision:deny", "decision:deny", "detection:block",
		"decision:deny", "detection:", "decision:deny", "quarantine:add", "release:release"}
	if !reflect.DeepEqual(kinds, want) {
		t.Errorf("timeline\n got %v\nwant %v", kinds, want)
	}
	if tl.Anchor == nil || tl.Anchor.Kind != record.KindQuarantine {
		t.Fatalf("anchor %+v", tl.Anchor)
	}
	sm := tl.Summary
	if sm.Decisions[record.ActionDeny] != 7 || sm.Detections["enumeration"] != 1 || sm.Detections["baseline"] != 1 ||
		sm.ReleasedBy != operator || sm.QuarantineBy != authzID || !sm.FirstDeny.Equal(t0.Add(100*time.Second)) {
		t.Errorf("summary %+v", sm)
	}
	// A time window instead of an anchor.
	tl, err = s.Timeline(ctx, reviews, TimelineOptions{Since: t0.Add(125 * time.Second), Until: t0.Add(250 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	if len(tl.Records) != 4 || tl.Anchor != nil {
		t.Errorf("since window: %d records, anchor %v", len(tl.Records), tl.Anchor)
	}
	// Before the last detection.
	tl, err = s.Timeline(ctx, reviews, TimelineOptions{Before: "detection", Window: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if tl.Anchor == nil || tl.Anchor.Reason != "baseline" {
		t.Errorf("anchor %+v", tl.Anchor)
	}
	// No quarantine of frontend.
	if _, err := s.Timeline(ctx, frontend, TimelineOptions{}); !errors.Is(err, ErrNoAnchor) {
		t.Errorf("frontend timeline: %v, want ErrNoAnchor", err)
	}
}

func TestRetentionByAge(t *testing.T) {
	now := t0.Add(48 * time.Hour)
	reg := prometheus.NewRegistry()
	s := open(t, Options{MaxAge: 24 * time.Hour, Now: func() time.Time { return now }, Registerer: reg, RetainEvery: time.Hour})
	running(t, s)
	var recs []record.Record
	for i := range 100 { // old: only ledger calls catalog
		recs = append(recs, decision(t0.Add(time.Duration(i)*time.Second), ledger, catalog, "/old", true, "allowed_no_policy", "", ""))
	}
	for i := range 50 { // recent
		recs = append(recs, decision(now.Add(-time.Duration(i)*time.Minute), frontend, catalog, "/new", true, "allowed_no_policy", "", ""))
	}
	if err := s.Append(recs); err != nil {
		t.Fatal(err)
	}
	syncStore(t, s)
	// Retention runs in the writer; Append an empty-queue nudge and wait
	// by running it directly is not allowed concurrently, so stop Run
	// first: reopen without Run.
	s2 := reopenIdle(t, s, Options{MaxAge: 24 * time.Hour, Now: func() time.Time { return now }, Registerer: reg})
	if err := s2.Retain(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := count(t, s2); n != 50 {
		t.Errorf("%d records after retention, want the 50 recent", n)
	}
	if got := testutil.ToFloat64(s2.m.deleted.WithLabelValues("age")); got != 100 {
		t.Errorf("expired by age: %v", got)
	}
	// The dictionary no longer holds the identity only old records used.
	var n int
	if err := s2.r.QueryRow(`SELECT COUNT(*) FROM strs WHERE s = ?`, ledger).Scan(&n); err != nil || n != 0 {
		t.Errorf("ledger still interned (%d, %v)", n, err)
	}
	if err := s2.r.QueryRow(`SELECT COUNT(*) FROM strs WHERE s = ?`, frontend).Scan(&n); err != nil || n != 1 {
		t.Errorf("frontend not interned (%d, %v)", n, err)
	}
	res, err := s2.Query(context.Background(), Filter{Source: []string{frontend}, Limit: 1})
	if err != nil || len(res.Records) != 1 || res.Records[0].Decision == nil || res.Records[0].Decision.TargetService != "svc" {
		t.Errorf("recent records unreadable after pruning: %v %+v", err, res)
	}
}

// reopenIdle closes s (whose Run the test's cleanup stops) and opens the
// same file again without a writer goroutine, so that Retain can be called
// directly.
func reopenIdle(t *testing.T, s *Store, o Options) *Store {
	t.Helper()
	o.Path = s.opts.Path
	o.Registerer = prometheus.NewRegistry()
	s2 := open(t, o)
	return s2
}

func TestRetentionBySize(t *testing.T) {
	s := open(t, Options{MaxAge: -1})
	running(t, s)
	var recs []record.Record
	for i := range 5_000 {
		recs = append(recs, decision(t0.Add(time.Duration(i)*time.Millisecond), frontend, catalog, fmt.Sprintf("/p/%d", i), true, "allowed_no_policy", "", ""))
	}
	if err := s.Append(recs); err != nil {
		t.Fatal(err)
	}
	syncStore(t, s)
	u, err := s.Usage(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	limit := u.Bytes / 2
	s2 := reopenIdle(t, s, Options{MaxAge: -1, MaxBytes: limit})
	if err := s2.Retain(context.Background()); err != nil {
		t.Fatal(err)
	}
	u2, err := s2.Usage(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if u2.Bytes > limit {
		t.Errorf("used %d bytes after retention, limit %d (before %d)", u2.Bytes, limit, u.Bytes)
	}
	if u2.FileBytes > u.FileBytes {
		t.Errorf("file grew: %d -> %d", u.FileBytes, u2.FileBytes)
	}
	n := count(t, s2)
	if n >= 5_000 || n < 1_000 {
		t.Errorf("%d records kept", n)
	}
	// The newest are kept, the oldest gone.
	if !u2.Newest.Equal(u.Newest) || !u2.Oldest.After(u.Oldest) {
		t.Errorf("kept %v..%v of %v..%v", u2.Oldest, u2.Newest, u.Oldest, u.Newest)
	}
	if got := testutil.ToFloat64(s2.m.deleted.WithLabelValues("size")); int(got) != 5_000-n {
		t.Errorf("expired by size counter %v, removed %d", got, 5_000-n)
	}
	t.Logf("size limit %d bytes: kept %d of 5000 records, %d bytes used, file %d -> %d bytes", limit, n, u2.Bytes, u.FileBytes, u2.FileBytes)
}

func TestSchemaVersions(t *testing.T) {
	path := filepath.Join(t.TempDir(), "r.db")
	s := open(t, Options{Path: path})
	running(t, s)
	fixture(t, s)
	// A read-only open reads what was written.
	ro := open(t, Options{Path: path, ReadOnly: true})
	res, err := ro.Query(context.Background(), Filter{Limit: 1000})
	if err != nil || len(res.Records) != 36 {
		t.Fatalf("read-only: %v, %d records", err, len(res.Records))
	}
	if err := ro.Append([]record.Record{{}}); err == nil {
		t.Error("read-only store accepted a record")
	}
	// A schema from the future is refused.
	if _, err := s.w.Exec(`INSERT INTO schema_migrations(version, applied_at) VALUES (?, 0)`, SchemaVersion+1); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(context.Background(), Options{Path: path}); err == nil || !strings.Contains(err.Error(), "newer") {
		t.Errorf("newer schema: %v", err)
	}
	if _, err := Open(context.Background(), Options{Path: filepath.Join(t.TempDir(), "missing.db"), ReadOnly: true}); err == nil {
		t.Error("read-only open of a missing file succeeded")
	}
}
