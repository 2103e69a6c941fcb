package quarantine

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshguard/meshguard/controlplane/state"
	"github.com/meshguard/meshguard/controlplane/state/disk"
	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/wire"
)

// fakeSink records what the manager publishes; fail makes it refuse.
type fakeSink struct {
	sets []policies.Set
	fail error
}

func (f *fakeSink) SetSource(name string, set policies.Set) error {
	if name != SourceName {
		return errors.New("wrong source " + name)
	}
	if f.fail != nil {
		return f.fail
	}
	f.sets = append(f.sets, set)
	return nil
}

func (f *fakeSink) last() policies.Set { return f.sets[len(f.sets)-1] }

func (f *fakeSink) identities() []string {
	var out []string
	for _, q := range f.last().Quarantines {
		out = append(out, q.Spec.Identity)
	}
	return out
}

// flakyStore is the real store on disk behind a switch that makes every
// write fail, as an unreachable API server or a full disk would.
type flakyStore struct {
	*disk.Store
	fail atomic.Bool
}

func (f *flakyStore) UpdateQuarantine(ctx context.Context, id string, fn state.QuarantineUpdate) (*state.Quarantine, error) {
	if f.fail.Load() {
		return nil, errors.New("state store unavailable")
	}
	return f.Store.UpdateQuarantine(ctx, id, fn)
}

func openStore(t *testing.T, dir string) *flakyStore {
	t.Helper()
	st, err := disk.Open(dir, disk.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return &flakyStore{Store: st}
}

func newManager(t *testing.T, st Store, sink *fakeSink, now *time.Time, mod func(*Options)) *Manager {
	t.Helper()
	opts := Options{Store: st, Sink: sink, Now: func() time.Time { return *now }, Replica: "cp-0"}
	if mod != nil {
		mod(&opts)
	}
	m, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	if err := m.Load(context.Background()); err != nil {
		t.Fatal(err)
	}
	return m
}

var ctx = context.Background()

func TestAddExtendReleaseExpire(t *testing.T) {
	sink := &fakeSink{}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var audit bytes.Buffer
	m := newManager(t, openStore(t, t.TempDir()), sink, &now, func(o *Options) { o.Audit = &audit; o.MaxDuration = 2 * time.Hour })
	id := "spiffe://example.org/ns/a/sa/b"
	e, err := m.Add(ctx, AddRequest{Identity: id, Reason: "r", By: "alice", For: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if !e.ExpiresAt.Equal(now.Add(time.Hour)) {
		t.Fatalf("expires %s", e.ExpiresAt)
	}
	q := sink.last().Quarantines
	if len(q) != 1 || q[0].Spec.Identity != id || q[0].Spec.ExpiresAt != "2026-01-01T01:00:00Z" || q[0].Spec.CreatedBy != "alice" ||
		q[0].Metadata.Name != state.QuarantineName(id) {
		t.Fatalf("published %+v", q)
	}
	if err := policies.Validate(&policies.Set{Quarantines: q}).Err(); err != nil {
		t.Fatalf("published quarantine does not validate: %v", err)
	}
	// Longer than the cap: capped; an extension never shortens.
	if e, _ = m.Add(ctx, AddRequest{Identity: id, Reason: "again", By: "bob", For: 10 * time.Hour}); !e.ExpiresAt.Equal(now.Add(2 * time.Hour)) {
		t.Fatalf("capped expiry %s", e.ExpiresAt)
	}
	if e, _ = m.Add(ctx, AddRequest{Identity: id, Reason: "short", By: "bob", For: time.Minute}); !e.ExpiresAt.Equal(now.Add(2 * time.Hour)) {
		t.Fatalf("extension shortened the quarantine to %s", e.ExpiresAt)
	}
	now = now.Add(2 * time.Hour)
	if err := m.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Publish(); err != nil {
		t.Fatal(err)
	}
	if len(m.List()) != 0 || len(sink.last().Quarantines) != 0 {
		t.Fatal("expired quarantine kept")
	}
	if err := m.Release(ctx, id, "carol", "x"); !errors.Is(err, ErrNotQuarantined) {
		t.Fatalf("release of an expired quarantine: %v", err)
	}
	var actions []string
	for _, r := range m.Audit() {
		actions = append(actions, r.Action)
		if r.Replica != "cp-0" {
			t.Errorf("audit record without the replica: %+v", r)
		}
	}
	if strings.Join(actions, ",") != "add,extend,extend,expire" {
		t.Fatalf("audit actions %v", actions)
	}
	if got := strings.Count(audit.String(), "\n"); got != 4 {
		t.Fatalf("audit file lines %d", got)
	}
	// Quarantined again later: the record keeps its history.
	if _, err := m.Add(ctx, AddRequest{Identity: id, Reason: "again", By: "dave"}); err != nil {
		t.Fatal(err)
	}
	if err := m.Release(ctx, id, "erin", "cleared"); err != nil {
		t.Fatal(err)
	}
	if got := m.Audit(); len(got) != 6 || got[4].Action != "add" || got[5].Action != "release" || got[5].By != "erin" {
		t.Fatalf("audit after a second quarantine: %+v", got)
	}
	if len(sink.last().Quarantines) != 0 {
		t.Fatal("released quarantine still published")
	}
}

// TestRejectedPublish: a quarantine the policy store refuses to publish is
// still stored, the caller is told it is not served, and the next publish
// serves it.
func TestRejectedPublish(t *testing.T) {
	sink := &fakeSink{}
	now := time.Now()
	m := newManager(t, openStore(t, t.TempDir()), sink, &now, nil)
	sink.fail = errors.New("store says no")
	if _, err := m.Add(ctx, AddRequest{Identity: "spiffe://example.org/x", Reason: "r", By: "a"}); err == nil || !strings.Contains(err.Error(), "not served") {
		t.Fatalf("add while the policy store refuses: %v", err)
	}
	sink.fail = nil
	if err := m.Publish(); err != nil {
		t.Fatal(err)
	}
	if got := sink.identities(); len(got) != 1 {
		t.Fatalf("published after recovery: %v", got)
	}
}

// TestStoreUnavailable: no write the store refuses is reported as done,
// nothing is silently released or dropped, and the failures are counted.
func TestStoreUnavailable(t *testing.T) {
	sink := &fakeSink{}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	reg := prometheus.NewRegistry()
	st := openStore(t, t.TempDir())
	m := newManager(t, st, sink, &now, func(o *Options) {
		o.Registerer = reg
		o.Profiles = func() []policies.AnomalyProfile {
			return []policies.AnomalyProfile{{Metadata: policies.ObjectMeta{Name: "p"}, Spec: policies.AnomalyProfileSpec{Responses: map[string]string{"lateral": "quarantine"}}}}
		}
	})
	held := "spiffe://example.org/ns/shop/sa/held"
	if _, err := m.Add(ctx, AddRequest{Identity: held, Reason: "incident", By: "ops", For: time.Hour}); err != nil {
		t.Fatal(err)
	}
	st.fail.Store(true)

	// A manual add that cannot be stored is an error and changes nothing.
	manual := "spiffe://example.org/ns/shop/sa/manual"
	if _, err := m.Add(ctx, AddRequest{Identity: manual, Reason: "r", By: "ops"}); !errors.Is(err, ErrStore) {
		t.Fatalf("add with the store down: %v", err)
	}
	// A release that cannot be stored is an error; the quarantine stays.
	if err := m.Release(ctx, held, "ops", "cleared"); !errors.Is(err, ErrStore) {
		t.Fatalf("release with the store down: %v", err)
	}
	// A detection is enforced by this replica anyway, and pending.
	attacker := "spiffe://example.org/ns/shop/sa/attacker"
	m.HandleEvents(ctx, "spiffe://example.org/ns/shop/sa/orders", []wire.Event{{Kind: wire.EventAnomaly, Detector: "lateral", Profile: "p", Source: attacker, UnixMillis: 1}})
	if got := strings.Join(sink.identities(), ","); got != attacker+","+held {
		t.Fatalf("published with the store down: %s", got)
	}
	list := m.List()
	if len(list) != 2 || list[0].Identity != attacker || !list[0].Pending || list[1].Pending {
		t.Fatalf("list with the store down: %+v", list)
	}
	if got := testutil.ToFloat64(m.pendingGauge); got != 1 {
		t.Fatalf("pending gauge %v", got)
	}
	for op, want := range map[string]float64{"add": 2, "release": 1} {
		if got := testutil.ToFloat64(m.storeFailures.WithLabelValues(op)); got != want {
			t.Errorf("store failures %s = %v, want %v", op, got, want)
		}
	}
	// Expiry comes while the store is down: the sweep fails loudly, the
	// record stays as it is and the data plane lifts it by its expiry.
	now = now.Add(2 * time.Hour)
	if err := m.Sweep(ctx); err == nil {
		t.Fatal("sweep with the store down reported no error")
	}
	// Recovery: the pending quarantine (expired by now) is dropped, the
	// held one is expired and audited.
	st.fail.Store(false)
	if err := m.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Publish(); err != nil {
		t.Fatal(err)
	}
	if len(sink.identities()) != 0 || testutil.ToFloat64(m.pendingGauge) != 0 {
		t.Fatalf("after recovery: %v pending %v", sink.identities(), testutil.ToFloat64(m.pendingGauge))
	}
	audit := m.Audit()
	if len(audit) != 2 || audit[1].Action != "expire" || audit[1].Identity != held {
		t.Fatalf("audit: %+v", audit)
	}
}

// TestPendingStoredOnRecovery: a detection quarantine that could not be
// stored is stored by the next sweep after the store is back.
func TestPendingStoredOnRecovery(t *testing.T) {
	sink := &fakeSink{}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	st := openStore(t, t.TempDir())
	m := newManager(t, st, sink, &now, nil)
	st.fail.Store(true)
	attacker := spiffeid.RequireFromString("spiffe://example.org/ns/shop/sa/attacker")
	ev := state.Evidence{Key: "k1", Reporter: "spiffe://example.org/ns/shop/sa/orders", Received: now}
	if _, err := m.Quarantine(ctx, Finding{Source: attacker, By: ev.Reporter, Reason: "lateral", Evidence: []state.Evidence{ev}}); !errors.Is(err, ErrStore) {
		t.Fatalf("finding with the store down: %v", err)
	}
	if got := sink.identities(); len(got) != 1 {
		t.Fatalf("pending quarantine not enforced: %v", got)
	}
	st.fail.Store(false)
	now = now.Add(time.Second)
	if err := m.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	qs := st.Quarantines()
	if len(qs) != 1 || qs[0].Identity != attacker.String() || !qs[0].HasEvidence("k1") || len(m.pending) != 0 {
		t.Fatalf("after recovery: %+v, pending %d", qs, len(m.pending))
	}
}

// TestSameReportActedOnOnce: a report sent twice (a retry, or to two
// replicas) quarantines once; a report received before a release does not
// undo it; a new report after the release quarantines again.
func TestSameReportActedOnOnce(t *testing.T) {
	sink := &fakeSink{}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	reg := prometheus.NewRegistry()
	m := newManager(t, openStore(t, t.TempDir()), sink, &now, func(o *Options) {
		o.Registerer = reg
		o.Profiles = func() []policies.AnomalyProfile {
			return []policies.AnomalyProfile{{Metadata: policies.ObjectMeta{Name: "p"}, Spec: policies.AnomalyProfileSpec{Responses: map[string]string{"lateral": "quarantine"}}}}
		}
	})
	attacker := "spiffe://example.org/ns/shop/sa/attacker"
	reporter := "spiffe://example.org/ns/shop/sa/orders"
	ev := wire.Event{Kind: wire.EventAnomaly, Detector: "lateral", Profile: "p", Source: attacker, UnixMillis: 1000, Detail: "3 new edges"}
	m.HandleEvents(ctx, reporter, []wire.Event{ev})
	now = now.Add(time.Second)
	m.HandleEvents(ctx, reporter, []wire.Event{ev})
	if a := m.Audit(); len(a) != 1 || a[0].Action != "add" {
		t.Fatalf("the same report twice: audit %+v", a)
	}
	if got := testutil.ToFloat64(m.duplicates); got != 1 {
		t.Fatalf("duplicates %v", got)
	}
	// A report received before the release, acted on after it (a slow
	// replica): the release stands.
	early := EvidenceOf(reporter, wire.Event{Kind: wire.EventAnomaly, Detector: "lateral", Source: attacker, UnixMillis: 2000}, now, "cp-1")
	now = now.Add(time.Second)
	if err := m.Release(ctx, attacker, "ops", "false positive"); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Quarantine(ctx, Finding{Source: spiffeid.RequireFromString(attacker), By: reporter, Evidence: []state.Evidence{early}}); err != nil {
		t.Fatal(err)
	}
	if len(m.List()) != 0 {
		t.Fatalf("a report older than the release undid it: %+v", m.List())
	}
	// A new report after the release: quarantined again.
	now = now.Add(time.Second)
	ev.UnixMillis = 3000
	m.HandleEvents(ctx, reporter, []wire.Event{ev})
	if l := m.List(); len(l) != 1 || len(l[0].Evidence) != 2 {
		t.Fatalf("new report after release: %+v", l)
	}
}

// TestExpiredWhileDown: a quarantine that expired while no control plane
// ran is lifted at start and audited as expired; one still due stays.
func TestExpiredWhileDown(t *testing.T) {
	dir := t.TempDir()
	sink := &fakeSink{}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	st := openStore(t, dir)
	m := newManager(t, st, sink, &now, nil)
	for id, d := range map[string]time.Duration{"spiffe://example.org/short": time.Minute, "spiffe://example.org/long": time.Hour} {
		if _, err := m.Add(ctx, AddRequest{Identity: id, Reason: "r", By: "ops", For: d}); err != nil {
			t.Fatal(err)
		}
	}
	m.Close()
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	now = now.Add(10 * time.Minute)
	sink = &fakeSink{}
	m = newManager(t, openStore(t, dir), sink, &now, nil)
	if got := sink.identities(); len(got) != 1 || got[0] != "spiffe://example.org/long" {
		t.Fatalf("published at start: %v", got)
	}
	a := m.Audit()
	last := a[len(a)-1]
	if last.Action != "expire" || last.Identity != "spiffe://example.org/short" || !strings.Contains(last.Reason, "no control plane was running") {
		t.Fatalf("audit at start: %+v", a)
	}
}

// TestFollowerExpiresAfterGrace: a replica that does not lead leaves the
// expiry to the leader for FollowerGrace, then does it itself.
func TestFollowerExpiresAfterGrace(t *testing.T) {
	sink := &fakeSink{}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	st := openStore(t, t.TempDir())
	m := newManager(t, st, sink, &now, func(o *Options) { o.Leading = func() bool { return false }; o.FollowerGrace = time.Minute })
	id := "spiffe://example.org/x"
	if _, err := m.Add(ctx, AddRequest{Identity: id, Reason: "r", By: "ops", For: time.Minute}); err != nil {
		t.Fatal(err)
	}
	now = now.Add(90 * time.Second)
	if err := m.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if st.Quarantines()[0].Phase != state.PhaseActive {
		t.Fatal("a follower expired a quarantine within the grace")
	}
	now = now.Add(time.Minute)
	if err := m.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if st.Quarantines()[0].Phase != state.PhaseExpired {
		t.Fatal("a follower did not expire a quarantine after the grace")
	}
}

// TestRetention: the leader deletes released records after the retention.
func TestRetention(t *testing.T) {
	sink := &fakeSink{}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	st := openStore(t, t.TempDir())
	m := newManager(t, st, sink, &now, func(o *Options) { o.Retention = time.Hour })
	id := "spiffe://example.org/x"
	if _, err := m.Add(ctx, AddRequest{Identity: id, Reason: "r", By: "ops"}); err != nil {
		t.Fatal(err)
	}
	if err := m.Release(ctx, id, "ops", "done"); err != nil {
		t.Fatal(err)
	}
	now = now.Add(30 * time.Minute)
	if err := m.Sweep(ctx); err != nil || len(st.Quarantines()) != 1 {
		t.Fatalf("record deleted within the retention: %v", err)
	}
	now = now.Add(time.Hour)
	if err := m.Sweep(ctx); err != nil || len(st.Quarantines()) != 0 {
		t.Fatalf("record kept after the retention: %v, %d", err, len(st.Quarantines()))
	}
}

func TestHandleEvents(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	profile := policies.AnomalyProfile{
		Metadata: policies.ObjectMeta{Name: "p", Namespace: "istio-system"},
		Spec:     policies.AnomalyProfileSpec{Responses: map[string]string{"lateral": "quarantine", "rate": "log", "errors": "block"}, QuarantineFor: "5m"},
	}
	protected := spiffeid.RequireFromPath(td, "/ns/meshguard/sa/authz")
	tests := []struct {
		name   string
		events []wire.Event
		want   []string
	}{
		{"profile says quarantine", []wire.Event{{Kind: wire.EventAnomaly, Detector: "lateral", Profile: "p", Source: "spiffe://example.org/a"}}, []string{"spiffe://example.org/a"}},
		{"profile by namespace/name", []wire.Event{{Kind: wire.EventAnomaly, Detector: "lateral", Profile: "istio-system/p", Source: "spiffe://example.org/a"}}, []string{"spiffe://example.org/a"}},
		{"profile overrides the event's response", []wire.Event{{Kind: wire.EventAnomaly, Detector: "rate", Profile: "p", Response: "quarantine", Source: "spiffe://example.org/a"}}, nil},
		{"no profile: the event's response", []wire.Event{{Kind: wire.EventAnomaly, Detector: "rate", Response: "quarantine", Source: "spiffe://example.org/a"}}, []string{"spiffe://example.org/a"}},
		{"invalid source", []wire.Event{{Kind: wire.EventAnomaly, Detector: "lateral", Profile: "p", Source: "web"}}, nil},
		{"protected identity", []wire.Event{{Kind: wire.EventAnomaly, Detector: "lateral", Profile: "p", Source: protected.String()}}, nil},
		{"edge events do not quarantine", []wire.Event{{Kind: wire.EventEdge, Source: "spiffe://example.org/a", Response: "quarantine"}}, nil},
		{"threshold of block events", []wire.Event{
			{Kind: wire.EventAnomaly, Detector: "errors", Profile: "p", Source: "spiffe://example.org/b", UnixMillis: 1},
			{Kind: wire.EventAnomaly, Detector: "errors", Profile: "p", Source: "spiffe://example.org/b", UnixMillis: 2},
			{Kind: wire.EventAnomaly, Detector: "errors", Profile: "p", Source: "spiffe://example.org/c", UnixMillis: 3},
			{Kind: wire.EventAnomaly, Detector: "errors", Profile: "p", Source: "spiffe://example.org/b", UnixMillis: 4},
		}, []string{"spiffe://example.org/b"}},
		// The same report three times (retries) is one report.
		{"a report repeated is counted once", []wire.Event{
			{Kind: wire.EventAnomaly, Detector: "errors", Profile: "p", Source: "spiffe://example.org/b", UnixMillis: 1},
			{Kind: wire.EventAnomaly, Detector: "errors", Profile: "p", Source: "spiffe://example.org/b", UnixMillis: 1},
			{Kind: wire.EventAnomaly, Detector: "errors", Profile: "p", Source: "spiffe://example.org/b", UnixMillis: 1},
		}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sink := &fakeSink{}
			now := time.Now()
			m := newManager(t, openStore(t, t.TempDir()), sink, &now, func(o *Options) {
				o.Profiles = func() []policies.AnomalyProfile { return []policies.AnomalyProfile{profile} }
				o.Protected = []spiffeid.ID{protected}
				o.Threshold = Threshold{Events: 3, Window: time.Minute}
			})
			m.HandleEvents(ctx, "spiffe://example.org/reporter", tt.events)
			var got []string
			for _, e := range m.List() {
				got = append(got, e.Identity)
				switch {
				case e.By == ByCorrelation: // the threshold: every report it counted
					if len(e.Evidence) != 3 || e.Evidence[2].Reporter != "spiffe://example.org/reporter" || !strings.Contains(e.Reason, "3 anomaly events within 1m0s") {
						t.Errorf("entry %+v", e)
					}
				case e.By != "spiffe://example.org/reporter" || len(e.Evidence) != 1 || e.Evidence[0].Reporter != e.By:
					t.Errorf("entry %+v", e)
				}
			}
			if strings.Join(got, ",") != strings.Join(tt.want, ",") {
				t.Fatalf("quarantined %v, want %v", got, tt.want)
			}
		})
	}
}

func TestMaxActive(t *testing.T) {
	sink := &fakeSink{}
	now := time.Now()
	m := newManager(t, openStore(t, t.TempDir()), sink, &now, func(o *Options) { o.MaxActive = 2 })
	for i, id := range []string{"spiffe://example.org/a", "spiffe://example.org/b", "spiffe://example.org/c"} {
		_, err := m.Add(ctx, AddRequest{Identity: id, Reason: "r", By: "x"})
		if (err != nil) != (i == 2) || (i == 2 && !errors.Is(err, ErrLimit)) {
			t.Fatalf("add %d: %v", i, err)
		}
	}
}

func TestInvalidRequests(t *testing.T) {
	now := time.Now()
	m := newManager(t, openStore(t, t.TempDir()), &fakeSink{}, &now, nil)
	for _, r := range []AddRequest{
		{Identity: "not-an-id", By: "x"},
		{Identity: "spiffe://example.org/a"},
		{Identity: "spiffe://example.org/a", By: "x", For: -time.Second},
	} {
		if _, err := m.Add(ctx, r); !errors.Is(err, ErrInvalid) {
			t.Errorf("add %+v: %v", r, err)
		}
	}
	if err := m.Release(ctx, "spiffe://example.org/a", "", "r"); !errors.Is(err, ErrInvalid) {
		t.Errorf("release without a caller: %v", err)
	}
	if _, err := New(Options{}); err == nil || !strings.Contains(err.Error(), "state store") || !strings.Contains(err.Error(), "sink") {
		t.Errorf("New without a store or sink: %v", err)
	}
}
