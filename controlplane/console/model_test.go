package console

import (
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/wire"
)

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

// TestModelTakesWhatFiltersReport: decision counts become rates and
// totals by class on caller → reporter edges, denials and would-denies feed
// entries with their reason, policy and rule; anomalies mark the caller;
// an unknown edge is marked once; identities that are not SPIFFE IDs are
// ignored and counted.
func TestModelTakesWhatFiltersReport(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1_800_000_000, 0)}
	catalog, reviews, frontend := idOf("/ns/bookstore/sa/catalog"), idOf("/ns/bookstore/sa/reviews"), idOf("/ns/bookstore/sa/frontend")
	m := newModel(clk.now, 0, 0, []Workload{{ID: catalog, Name: "catalog", Namespace: "bookstore", Labels: map[string]string{"app": "catalog"}}})
	m.observe(catalog.String(), []wire.Event{
		decision(frontend, "catalog", "allow", "allowed_by_policy AuthorizationPolicy/bookstore/catalog#0", 60),
		decision(reviews, "catalog", "deny", "denied_no_allow_match", 6),
		decision(reviews, "catalog", "dry-run", "denied_by_policy RouteOverride/bookstore/beta#no-web", 1),
		decision(spiffeid.ID{}, "catalog", "deny", "denied_mtls_required", 2),
		{Kind: wire.EventAnomaly, Source: reviews.String(), Detector: "enumeration", Response: "block", Profile: "istio-system/default", Detail: "distinct_paths", Score: 3.14159},
		{Kind: wire.EventEdge, Source: reviews.String(), Destination: "catalog.bookstore.svc.cluster.local", Route: "catalog", Detail: "unknown baseline=shadow"},
		{Kind: wire.EventEdge, Source: reviews.String(), Destination: "catalog.bookstore.svc.cluster.local", Route: "catalog", Detail: "unknown baseline=shadow"},
		{Kind: wire.EventDecision, Source: "not-a-spiffe-id", Response: "deny", Detail: "denied_no_allow_match"},
		{Kind: wire.EventDecision, Source: reviews.String(), Response: "maybe", Detail: "denied_no_allow_match"},
		{Kind: wire.EventDecision, Source: reviews.String(), Response: "deny", Detail: "Denied!"},
	})
	m.observe("not a reporter", []wire.Event{decision(reviews, "x", "deny", "denied_no_allow_match", 1)})
	if got := m.droppedEvents(); got != 4 {
		t.Errorf("%d events ignored, want 4", got)
	}
	s := m.snapshot()
	if len(s.Nodes) != 4 || len(s.Edges) != 3 {
		t.Fatalf("%d nodes, %d edges; want 4 and 3: %+v", len(s.Nodes), len(s.Edges), s.Nodes)
	}
	edge := func(src string) EdgeView {
		for _, e := range s.Edges {
			if e.Source == src && e.Target == catalog.String() {
				return e
			}
		}
		t.Fatalf("no edge from %s", src)
		return EdgeView{}
	}
	if e := edge(frontend.String()); e.Totals != [4]uint64{60, 0, 0, 0} || math.Abs(e.Rates[classAllow]-1) > 1e-9 || e.New {
		t.Errorf("frontend edge %+v: want 60 allowed, 1 req/s (60 over the minute), not new", e)
	}
	e := edge(reviews.String())
	if e.Totals != [4]uint64{0, 6, 1, 1} || !e.New || e.Last == nil || e.Last.Kind != KindDryRun {
		t.Errorf("reviews edge %+v", e)
	}
	if edge(Unauthenticated).Totals[classDeny] != 2 {
		t.Error("callers without a SPIFFE ID are not counted on the unauthenticated node")
	}
	kinds := map[string]int{}
	for _, f := range s.Feed {
		kinds[f.Kind]++
		if f.Kind == KindDeny && f.Source == reviews.String() && (f.Reason != "denied_no_allow_match" || f.Count != 6 || f.Destination != catalog.String()) {
			t.Errorf("deny entry %+v", f)
		}
		if f.Kind == KindDryRun && (f.Policy != "RouteOverride/bookstore/beta" || f.Rule != "no-web") {
			t.Errorf("dry-run entry %+v", f)
		}
		if f.Kind == KindDetection && (f.Policy != "AnomalyProfile/istio-system/default" || f.Rule != "enumeration" || f.Score != 3.142) {
			t.Errorf("detection entry %+v", f)
		}
	}
	if kinds[KindDeny] != 2 || kinds[KindDryRun] != 1 || kinds[KindDetection] != 1 || kinds[KindNewEdge] != 1 {
		t.Errorf("feed kinds %v", kinds)
	}
	var rv NodeView
	for _, n := range s.Nodes {
		if n.ID == reviews.String() {
			rv = n
		}
	}
	if rv.Detections != 1 || rv.Name != "reviews" || rv.Namespace != "bookstore" || rv.Known {
		t.Errorf("reviews node %+v", rv)
	}

	// Rates decay with the minute's time constant.
	clk.t = clk.t.Add(time.Minute)
	if r := edge2(m.snapshot(), frontend.String()).Rates[classAllow]; math.Abs(r-math.Exp(-1)) > 0.001 {
		t.Errorf("rate a minute later %v, want %v", r, math.Exp(-1))
	}

	// A cut hands over what changed, once.
	d, ok := m.cut()
	if !ok || len(d.Edges) != 3 || len(d.Feed) != 5 || len(d.Nodes) != 4 {
		t.Errorf("first cut: %v, %d edges, %d entries, %d nodes", ok, len(d.Edges), len(d.Feed), len(d.Nodes))
	}
	if _, ok := m.cut(); ok {
		t.Error("a second cut with nothing new")
	}
}

func edge2(s Snapshot, src string) EdgeView {
	for _, e := range s.Edges {
		if e.Source == src {
			return e
		}
	}
	return EdgeView{}
}

// TestModelIsBounded: a reporter cannot grow the graph past its limits.
func TestModelIsBounded(t *testing.T) {
	m := newModel(time.Now, 50, 100, nil)
	var evs []wire.Event
	for i := 0; i < 1000; i++ {
		evs = append(evs, decision(idOf(fmt.Sprintf("/ns/x/sa/c%d", i)), "r", "deny", "denied_no_allow_match", 1))
	}
	m.observe(idOf("/ns/x/sa/target").String(), evs)
	s := m.snapshot()
	if len(s.Nodes) > 50 || len(s.Edges) > 100 {
		t.Fatalf("%d nodes, %d edges: past the limits", len(s.Nodes), len(s.Edges))
	}
	if m.droppedEvents() == 0 {
		t.Fatal("nothing counted as ignored")
	}
	if len(m.feed) > feedKeep {
		t.Fatal("the feed grew past its bound")
	}
	long := strings.Repeat("x", 10000)
	m.observe(idOf("/ns/x/sa/target").String(), []wire.Event{{Kind: wire.EventAnomaly, Source: idOf("/ns/x/sa/c1").String(), Detail: long, Route: long, Detector: long}})
	for _, f := range m.recentFeed(1) {
		if len(f.Detail) > maxTextLen || len(f.Route) > maxTextLen || len(f.Detector) > 32 {
			t.Errorf("long fields kept: %d %d %d", len(f.Detail), len(f.Route), len(f.Detector))
		}
	}
}

// TestQuarantineHistoryReachesTheFeedOnce: each audit record becomes one
// feed entry, however often the console reads the trail; quarantined
// nodes are marked and unmarked.
func TestQuarantineHistoryReachesTheFeedOnce(t *testing.T) {
	m := newModel(time.Now, 0, 0, nil)
	id := idOf("/ns/bookstore/sa/reviews").String()
	t0 := time.Unix(1_800_000_000, 0)
	add := QuarantineChange{Time: t0, Action: "add", Identity: id, By: "spiffe://cluster.local/ns/secops/sa/oncall", Reason: "scan"}
	m.syncQuarantines([]Quarantine{{Identity: id, Reason: "scan"}}, []QuarantineChange{add})
	m.syncQuarantines([]Quarantine{{Identity: id, Reason: "scan"}}, []QuarantineChange{add})
	if n := m.nodes[id]; n == nil || !n.view.Quarantined || n.view.QReason != "scan" {
		t.Fatalf("node %+v", n)
	}
	rel := QuarantineChange{Time: t0, Action: "release", Identity: id, By: "console-token:operator"}
	m.syncQuarantines(nil, []QuarantineChange{add, rel})
	if m.nodes[id].view.Quarantined {
		t.Error("still marked after the release")
	}
	var kinds []string
	for _, f := range m.recentFeed(10) {
		kinds = append(kinds, f.Kind+" by "+f.By)
	}
	if strings.Join(kinds, ", ") != "quarantine by spiffe://cluster.local/ns/secops/sa/oncall, release by console-token:operator" {
		t.Errorf("feed: %v", kinds)
	}
}

// TestNewEdgeMarkClearsWhenTheBaselineListsIt: an edge a filter reported as
// unknown stays marked until a bundle's TrafficBaseline lists it.
func TestNewEdgeMarkClearsWhenTheBaselineListsIt(t *testing.T) {
	m := newModel(time.Now, 0, 0, nil)
	catalog, reviews := idOf("/ns/bookstore/sa/catalog"), idOf("/ns/bookstore/sa/reviews")
	m.observe(catalog.String(), []wire.Event{{Kind: wire.EventEdge, Source: reviews.String(),
		Destination: "catalog.bookstore.svc.cluster.local", Route: "catalog", Detail: "unknown baseline=shadow"}})
	if !m.newEdges() || !m.snapshot().Edges[0].New {
		t.Fatal("the unknown edge is not marked")
	}
	snap := func(edges ...policies.Edge) *policies.Snapshot {
		b, _, err := policies.NewBundle("v", policies.Set{TrafficBaselines: []policies.TrafficBaseline{{
			APIVersion: policies.APIVersionMeshguard, Kind: policies.KindTrafficBaseline,
			Metadata: policies.ObjectMeta{Name: "graph", Namespace: "bookstore"},
			Spec:     policies.TrafficBaselineSpec{Mode: policies.BaselineShadow, Edges: edges}}}})
		if err != nil {
			t.Fatal(err)
		}
		s, err := policies.Compile(b)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	m.rebaseline(snap(policies.Edge{Source: reviews.String(), Destination: "orders", Routes: []string{"orders"}}))
	if !m.snapshot().Edges[0].New {
		t.Fatal("cleared by a baseline that does not list it")
	}
	m.rebaseline(snap(policies.Edge{Source: reviews.String(), Destination: "catalog", Routes: []string{"catalog"}}))
	if m.snapshot().Edges[0].New || m.newEdges() {
		t.Fatal("still marked once the baseline lists it")
	}
}

// TestModelSkipsAWorkloadsOwnOutboundReports: a sidecar's reports about its
// own workload's outbound calls name the destination called; they are not
// an edge from the workload to itself.
func TestModelSkipsAWorkloadsOwnOutboundReports(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1_800_000_000, 0)}
	reviews := idOf("/ns/bookstore/sa/reviews")
	m := newModel(clk.now, 0, 0, nil)
	m.observe(reviews.String(), []wire.Event{
		{Kind: wire.EventAnomaly, Source: reviews.String(), Destination: "ledger.payments", Detector: "lateral", Response: "quarantine", Detail: "unknown_edges"},
		{Kind: wire.EventEdge, Source: reviews.String(), Destination: "ledger.payments", Detail: "unknown baseline=shadow"},
	})
	if s := m.snapshot(); len(s.Edges) != 0 || m.droppedEvents() != 0 {
		t.Fatalf("edges %+v, %d dropped", s.Edges, m.droppedEvents())
	}
}
