package quarantine

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshguard/meshguard/controlplane/state"
	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/wire"
)

const (
	attackerID = "spiffe://example.org/ns/shop/sa/reviews"
	catalogID  = "spiffe://example.org/ns/shop/sa/catalog"
	ordersID   = "spiffe://example.org/ns/shop/sa/orders"
	ledgerID   = "spiffe://example.org/ns/pay/sa/ledger"
	frontendID = "spiffe://example.org/ns/shop/sa/frontend"
)

// correlating is a profile watching every caller that correlates: more
// than two destinations within a minute are a fan-out.
func correlating(response string) policies.AnomalyProfile {
	return policies.AnomalyProfile{
		Metadata: policies.ObjectMeta{Name: "mesh", Namespace: "istio-system"},
		Spec: policies.AnomalyProfileSpec{
			Responses:     map[string]string{"enumeration": "log", "errors": "block"},
			QuarantineFor: "20m",
			Correlation:   &policies.Correlation{Window: "1m", MaxDestinations: 2, Response: response},
		},
	}
}

// probe is what a destination's inbound side reports about one probe it
// saw: an edge the shadow baseline does not list.
func probe(dest string, ms int64) wire.Event {
	return wire.Event{Kind: wire.EventEdge, Detector: "lateral", Source: attackerID, Destination: dest, Route: dest,
		Method: "GET", UnixMillis: ms, Detail: "unknown baseline=shadow"}
}

func record(st Store, id string) *state.Quarantine {
	for _, q := range st.Quarantines() {
		if q.Identity == id {
			return q
		}
	}
	return nil
}

// TestFanOutAcrossDestinations: three destinations each see a few probes,
// none enough for its own detectors; together they are one fan-out and
// the source is quarantined, with every destination's report as evidence.
func TestFanOutAcrossDestinations(t *testing.T) {
	sink := &fakeSink{}
	now := time.Now()
	reg := prometheus.NewRegistry()
	st := openStore(t, t.TempDir())
	m := newManager(t, st, sink, &now, func(o *Options) {
		o.Profiles = func() []policies.AnomalyProfile { return []policies.AnomalyProfile{correlating("quarantine")} }
		o.Registerer = reg
	})
	m.HandleEvents(ctx, catalogID, []wire.Event{probe("catalog", 1), probe("catalog", 2)})
	// The source's own outbound side reports an anomaly on its call to
	// orders; orders' inbound side reports the same destination.
	m.HandleEvents(ctx, attackerID, []wire.Event{{Kind: wire.EventAnomaly, Detector: "enumeration", Source: attackerID,
		Destination: "orders.shop", Profile: "mesh", Detail: "distinct_paths", UnixMillis: 3}})
	now = now.Add(10 * time.Second)
	m.HandleEvents(ctx, ordersID, []wire.Event{probe("orders", 4)})
	if got := m.List(); len(got) != 0 {
		t.Fatalf("quarantined after two destinations: %+v", got)
	}
	q := record(st, attackerID)
	if q == nil || q.Phase != state.PhaseObserved || len(q.Observations) != 4 || q.ActiveAt(now) {
		t.Fatalf("record after two destinations: %+v", q)
	}
	if d := destinations(q.Observations, now, time.Minute); strings.Join(d, ",") != "catalog.shop,orders.shop" {
		t.Fatalf("destinations %v", d)
	}
	// A third, in another namespace.
	now = now.Add(10 * time.Second)
	m.HandleEvents(ctx, ledgerID, []wire.Event{probe("ledger", 5)})
	got := m.List()
	if len(got) != 1 || got[0].Identity != attackerID || got[0].By != ByCorrelation || got[0].Detector != "correlation" {
		t.Fatalf("quarantines %+v", got)
	}
	e := got[0]
	if !strings.Contains(e.Reason, "fan-out over 3 destinations") || !strings.Contains(e.Reason, "catalog.shop, ledger.pay, orders.shop") {
		t.Errorf("reason %q", e.Reason)
	}
	if want := now.Add(20 * time.Minute).Truncate(time.Second); !e.ExpiresAt.Equal(want) {
		t.Errorf("expires %s, want the profile's 20m (%s)", e.ExpiresAt, want)
	}
	reporters := map[string]bool{}
	for _, ev := range e.Evidence {
		reporters[ev.Reporter] = true
	}
	for _, r := range []string{catalogID, ordersID, ledgerID, attackerID} {
		if !reporters[r] {
			t.Errorf("evidence lacks %s's report: %+v", r, e.Evidence)
		}
	}
	if q := record(st, attackerID); len(q.Observations) != 0 || len(q.History) != 1 || q.History[0].By != ByCorrelation {
		t.Errorf("record after the quarantine: %+v", q)
	}
	if s := sink.identities(); len(s) != 1 || s[0] != attackerID {
		t.Errorf("published %v", s)
	}
	if v := testutil.ToFloat64(m.findings.WithLabelValues(FindingFanOut, ResponseQuarantine)); v != 1 {
		t.Errorf("findings %v", v)
	}
}

func TestFanOutNeedsDistinctDestinationsWithinTheWindow(t *testing.T) {
	for _, tc := range []struct {
		name   string
		events func(m *Manager, now *time.Time)
	}{
		{"one destination reporting many probes", func(m *Manager, now *time.Time) {
			for i := int64(0); i < 10; i++ {
				m.HandleEvents(ctx, catalogID, []wire.Event{probe("catalog", i)})
			}
		}},
		{"the same destination by several names", func(m *Manager, now *time.Time) {
			m.HandleEvents(ctx, catalogID, []wire.Event{probe("catalog", 1)})
			m.HandleEvents(ctx, catalogID, []wire.Event{probe("catalog.shop.svc.cluster.local:8080", 2)})
			m.HandleEvents(ctx, attackerID, []wire.Event{probe("catalog.shop", 3)})
			m.HandleEvents(ctx, catalogID, []wire.Event{{Kind: wire.EventAnomaly, Detector: "enumeration", Source: attackerID, Destination: "catalog", Profile: "mesh", UnixMillis: 4}})
			m.HandleEvents(ctx, ordersID, []wire.Event{probe("orders", 5)})
		}},
		{"destinations more than a window apart", func(m *Manager, now *time.Time) {
			m.HandleEvents(ctx, catalogID, []wire.Event{probe("catalog", 1)})
			*now = now.Add(40 * time.Second)
			m.HandleEvents(ctx, ordersID, []wire.Event{probe("orders", 2)})
			*now = now.Add(40 * time.Second)
			m.HandleEvents(ctx, ledgerID, []wire.Event{probe("ledger", 3)})
		}},
		{"edges a learning baseline reports and known edges", func(m *Manager, now *time.Time) {
			for i, r := range []string{catalogID, ordersID, ledgerID} {
				ev := probe(strings.Split(r, "/")[6], int64(i))
				ev.Detail = "unknown baseline=learn"
				m.HandleEvents(ctx, r, []wire.Event{ev})
				ev.Detail = "known baseline=shadow"
				m.HandleEvents(ctx, r, []wire.Event{ev})
			}
		}},
		{"a protected identity", func(m *Manager, now *time.Time) {
			for i, r := range []string{catalogID, ordersID, ledgerID} {
				ev := probe(strings.Split(r, "/")[6], int64(i))
				ev.Source = frontendID
				m.HandleEvents(ctx, r, []wire.Event{ev})
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			now := time.Now()
			st := openStore(t, t.TempDir())
			m := newManager(t, st, &fakeSink{}, &now, func(o *Options) {
				o.Profiles = func() []policies.AnomalyProfile { return []policies.AnomalyProfile{correlating("quarantine")} }
				o.Protected = []spiffeid.ID{spiffeid.RequireFromString(frontendID)}
			})
			tc.events(m, &now)
			if got := m.List(); len(got) != 0 {
				t.Fatalf("quarantined: %+v", got)
			}
		})
	}
}

// TestCorrelationSettings: without a correlation in the source's profile
// nothing is stored; with response log a fan-out is logged and counted,
// not quarantined; the first profile watching the source decides.
func TestCorrelationSettings(t *testing.T) {
	threeDestinations := func(m *Manager) {
		for i, r := range []string{catalogID, ordersID, ledgerID} {
			m.HandleEvents(ctx, r, []wire.Event{probe(strings.Split(r, "/")[6], int64(i))})
		}
	}
	t.Run("off", func(t *testing.T) {
		now := time.Now()
		st := openStore(t, t.TempDir())
		p := correlating("quarantine")
		p.Spec.Correlation = nil
		m := newManager(t, st, &fakeSink{}, &now, func(o *Options) {
			o.Profiles = func() []policies.AnomalyProfile { return []policies.AnomalyProfile{p} }
		})
		threeDestinations(m)
		if len(st.Quarantines()) != 0 {
			t.Fatalf("records written without correlation: %+v", st.Quarantines())
		}
	})
	t.Run("log", func(t *testing.T) {
		now := time.Now()
		st := openStore(t, t.TempDir())
		m := newManager(t, st, &fakeSink{}, &now, func(o *Options) {
			o.Profiles = func() []policies.AnomalyProfile { return []policies.AnomalyProfile{correlating("log")} }
		})
		threeDestinations(m)
		if len(m.List()) != 0 {
			t.Fatal("quarantined with response log")
		}
		if v := testutil.ToFloat64(m.findings.WithLabelValues(FindingFanOut, ResponseLog)); v != 1 {
			t.Fatalf("fan-out findings logged %v, want 1", v)
		}
	})
	t.Run("the first profile watching the source", func(t *testing.T) {
		now := time.Now()
		st := openStore(t, t.TempDir())
		other := correlating("quarantine")
		other.Metadata = policies.ObjectMeta{Name: "frontend-only", Namespace: "aaa"}
		other.Spec.Workloads = []string{frontendID}
		other.Spec.Correlation = nil
		quiet := correlating("quarantine")
		quiet.Metadata = policies.ObjectMeta{Name: "reviews", Namespace: "bbb"}
		quiet.Spec.Workloads = []string{"spiffe://example.org/ns/shop/sa/*"}
		quiet.Spec.Correlation.MaxDestinations = 5
		m := newManager(t, st, &fakeSink{}, &now, func(o *Options) {
			o.Profiles = func() []policies.AnomalyProfile {
				return []policies.AnomalyProfile{correlating("quarantine"), quiet, other}
			}
		})
		threeDestinations(m)
		if len(m.List()) != 0 {
			t.Fatal("the later profile's correlation applied")
		}
	})
}

// TestCorrelationOnASharedStore: two control plane replicas on one store
// each receive some of the reports; together they add up, and the report
// that completes the finding, delivered to both, quarantines once.
func TestCorrelationOnASharedStore(t *testing.T) {
	now := time.Now()
	st := openStore(t, t.TempDir())
	profiles := func(o *Options) {
		o.Profiles = func() []policies.AnomalyProfile { return []policies.AnomalyProfile{correlating("quarantine")} }
	}
	a := newManager(t, st, &fakeSink{}, &now, profiles)
	b := newManager(t, st, &fakeSink{}, &now, func(o *Options) { profiles(o); o.Replica = "cp-1" })
	a.HandleEvents(ctx, catalogID, []wire.Event{probe("catalog", 1)})
	b.HandleEvents(ctx, ordersID, []wire.Event{probe("orders", 2)})
	last := []wire.Event{probe("ledger", 3)}
	var wg sync.WaitGroup
	for _, m := range []*Manager{a, b} {
		wg.Add(1)
		go func() { defer wg.Done(); m.HandleEvents(ctx, ledgerID, last) }()
	}
	wg.Wait()
	q := record(st, attackerID)
	if !q.ActiveAt(now) || len(q.History) != 1 || q.History[0].Action != state.ActionAdd {
		t.Fatalf("record %+v", q)
	}
	for _, m := range []*Manager{a, b} {
		if got := m.List(); len(got) != 1 || got[0].Identity != attackerID {
			t.Fatalf("replica serves %+v", got)
		}
	}
}

// TestThresholdAcrossReplicas: block reports reaching different replicas
// count together (the threshold used to be counted per replica).
func TestThresholdAcrossReplicas(t *testing.T) {
	now := time.Now()
	st := openStore(t, t.TempDir())
	p := correlating("quarantine")
	p.Spec.Correlation = nil
	mod := func(o *Options) {
		o.Profiles = func() []policies.AnomalyProfile { return []policies.AnomalyProfile{p} }
		o.Threshold = Threshold{Events: 2, Window: time.Minute}
	}
	a := newManager(t, st, &fakeSink{}, &now, mod)
	b := newManager(t, st, &fakeSink{}, &now, mod)
	block := func(ms int64) []wire.Event {
		return []wire.Event{{Kind: wire.EventAnomaly, Detector: "errors", Source: attackerID, Profile: "mesh", Detail: "auth_failures", UnixMillis: ms}}
	}
	a.HandleEvents(ctx, catalogID, block(1))
	if len(a.List()) != 0 {
		t.Fatal("quarantined after one block report")
	}
	b.HandleEvents(ctx, ordersID, block(2))
	got := b.List()
	if len(got) != 1 || !strings.Contains(got[0].Reason, "2 anomaly events within 1m0s") || len(got[0].Evidence) != 2 {
		t.Fatalf("after a block report on each replica: %+v", got)
	}
}

// TestObservedRecordsSwept: reports that never added up are deleted once
// they cannot matter any more; a release forgets what led to it.
func TestObservedRecordsSwept(t *testing.T) {
	now := time.Now()
	st := openStore(t, t.TempDir())
	m := newManager(t, st, &fakeSink{}, &now, func(o *Options) {
		o.Profiles = func() []policies.AnomalyProfile { return []policies.AnomalyProfile{correlating("quarantine")} }
	})
	m.HandleEvents(ctx, catalogID, []wire.Event{probe("catalog", 1)})
	if q := record(st, attackerID); q == nil || q.Phase != state.PhaseObserved {
		t.Fatalf("record %+v", q)
	}
	now = now.Add(30 * time.Minute)
	if err := m.Sweep(ctx); err != nil || record(st, attackerID) == nil {
		t.Fatalf("observations swept within the longest window: %v", err)
	}
	now = now.Add(31 * time.Minute)
	if err := m.Sweep(ctx); err != nil || record(st, attackerID) != nil {
		t.Fatalf("old observations kept: %v %+v", err, record(st, attackerID))
	}
}

// TestCorrelationAfterARelease: reports received before a release do not
// count again after it.
func TestCorrelationAfterARelease(t *testing.T) {
	now := time.Now()
	st := openStore(t, t.TempDir())
	m := newManager(t, st, &fakeSink{}, &now, func(o *Options) {
		o.Profiles = func() []policies.AnomalyProfile { return []policies.AnomalyProfile{correlating("quarantine")} }
	})
	early := []wire.Event{probe("catalog", 1)}
	m.HandleEvents(ctx, catalogID, early)
	m.HandleEvents(ctx, ordersID, []wire.Event{probe("orders", 2)})
	m.HandleEvents(ctx, ledgerID, []wire.Event{probe("ledger", 3)})
	if len(m.List()) != 1 {
		t.Fatal("not quarantined")
	}
	now = now.Add(time.Second)
	if err := m.Release(ctx, attackerID, "ops", "investigated"); err != nil {
		t.Fatal(err)
	}
	now = now.Add(time.Second)
	// Two new destinations: with the released reports they would be five.
	m.HandleEvents(ctx, frontendID, []wire.Event{probe("frontend", 4)})
	m.HandleEvents(ctx, "spiffe://example.org/ns/shop/sa/cart", []wire.Event{probe("cart", 5)})
	if got := m.List(); len(got) != 0 {
		t.Fatalf("quarantined again by reports from before the release: %+v", got)
	}
	m.HandleEvents(ctx, "spiffe://example.org/ns/shop/sa/search", []wire.Event{probe("search", 6)})
	if got := m.List(); len(got) != 1 {
		t.Fatalf("three new destinations after the release: %+v", got)
	}
}

func TestDestinationKey(t *testing.T) {
	for _, tc := range []struct{ dest, reporter, want string }{
		{"", catalogID, catalogID},
		{"catalog", catalogID, "catalog.shop"},
		{"Catalog.Shop.svc.cluster.local:8080", catalogID, "catalog.shop"},
		{"orders", attackerID, "orders.shop"},
		{"ledger.pay", attackerID, "ledger.pay"},
		{"10.0.0.7:80", attackerID, "10.0.0.7"},
		{"api.example.com", attackerID, "api.example.com"},
		{"catalog", "spiffe://example.org/gateway", "catalog"},
	} {
		if got := destinationKey(state.Evidence{Destination: tc.dest, Reporter: tc.reporter}); got != tc.want {
			t.Errorf("destinationKey(%q, %q) = %q, want %q", tc.dest, tc.reporter, got, tc.want)
		}
	}
}
