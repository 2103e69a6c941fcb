package learn

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/meshguard/meshguard/controlplane/state"
	"github.com/meshguard/meshguard/controlplane/state/disk"
	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/wire"
)

func TestObserveAndDraft(t *testing.T) {
	l := New(3, func() time.Time { return time.Unix(100, 0) })
	l.Observe([]wire.Event{
		{Kind: wire.EventEdge, Source: "spiffe://td/ns/shop/sa/web", Destination: "orders.shop.svc.cluster.local", Route: "orders-list", Method: "get"},
		{Kind: wire.EventEdge, Source: "spiffe://td/ns/shop/sa/web", Destination: "orders.shop.svc.cluster.local", Route: "orders-create", Method: "POST", Count: 5},
		{Kind: wire.EventEdge, Source: "spiffe://td/ns/shop/sa/cron", Destination: "orders.shop.svc.cluster.local"},
		{Kind: wire.EventEdge, Source: "not-an-id", Destination: "orders"},
		{Kind: wire.EventEdge, Source: "spiffe://td/x", Destination: "bad dest\n"},
		{Kind: wire.EventEdge, Source: "spiffe://td/ns/a/sa/b", Destination: "payments"},
		{Kind: wire.EventEdge, Source: "spiffe://td/ns/a/sa/c", Destination: "payments"}, // over the 3-edge bound
		{Kind: wire.EventAnomaly, Source: "spiffe://td/ns/a/sa/d", Destination: "payments"},
	})
	edges := l.Edges()
	if len(edges) != 3 || l.Dropped() != 3 {
		t.Fatalf("edges %d dropped %d", len(edges), l.Dropped())
	}
	if edges[1].Count != 6 || strings.Join(edges[1].Methods, ",") != "GET,POST" || strings.Join(edges[1].Routes, ",") != "orders-create,orders-list" {
		t.Fatalf("edge %+v", edges[1])
	}
	d, err := MakeDraft(edges, DraftOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(d.AuthorizationPolicies) != 2 {
		t.Fatalf("policies %d", len(d.AuthorizationPolicies))
	}
	orders := d.AuthorizationPolicies[0]
	if orders.Metadata.Namespace != "shop" || orders.Spec.Selector.MatchLabels["app"] != "orders" || len(orders.Spec.Rules) != 2 {
		t.Fatalf("orders policy %+v", orders)
	}
	if orders.Spec.Rules[0].From[0].Source.Principals[0] != "td/ns/shop/sa/cron" || len(orders.Spec.Rules[0].To) != 0 {
		t.Fatalf("cron rule %+v", orders.Spec.Rules[0])
	}
	if pay := d.AuthorizationPolicies[1]; pay.Metadata.Namespace != "default" {
		t.Fatalf("payments namespace %q", pay.Metadata.Namespace)
	}
	if d.Baseline.Spec.Mode != policies.BaselineShadow || len(d.Baseline.Spec.Edges) != 3 {
		t.Fatalf("baseline %+v", d.Baseline.Spec)
	}
}

// failingStore refuses writes, as an unreachable API server would.
type failingStore struct {
	Store
	fail bool
}

func (f *failingStore) UpdateBaseline(ctx context.Context, dest string, fn state.BaselineUpdate) (*state.Baseline, error) {
	if f.fail {
		return nil, errors.New("store unavailable")
	}
	return f.Store.UpdateBaseline(ctx, dest, fn)
}

// TestFlushMergesReplicas: two learners (two replicas) flush into one store;
// each sees the merged edges, counts added up, and a flush the store
// refuses loses nothing.
func TestFlushMergesReplicas(t *testing.T) {
	ds, err := disk.Open(t.TempDir(), disk.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer ds.Close()
	fs := &failingStore{Store: ds}
	clock := time.Unix(1000, 0)
	a, err := NewWithOptions(Options{Store: fs, Now: func() time.Time { return clock }})
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewWithOptions(Options{Store: ds, Now: func() time.Time { return clock.Add(time.Minute) }})
	if err != nil {
		t.Fatal(err)
	}
	web, cron := "spiffe://td/ns/shop/sa/web", "spiffe://td/ns/shop/sa/cron"
	a.Observe([]wire.Event{{Kind: wire.EventEdge, Source: web, Destination: "orders.shop", Route: "list", Method: "GET", Count: 2}})
	b.Observe([]wire.Event{
		{Kind: wire.EventEdge, Source: web, Destination: "orders.shop", Route: "create", Method: "POST"},
		{Kind: wire.EventEdge, Source: cron, Destination: "orders.shop"},
	})
	fs.fail = true
	if err := a.Flush(context.Background()); err == nil {
		t.Fatal("flush to a failing store reported no error")
	}
	if e := a.Edges(); len(e) != 1 || e[0].Count != 2 {
		t.Fatalf("edges kept after a failed flush: %+v", e)
	}
	fs.fail = false
	a.Observe([]wire.Event{{Kind: wire.EventEdge, Source: web, Destination: "orders.shop", Route: "list", Method: "GET"}})
	for _, l := range []*Learner{a, b} {
		if err := l.Flush(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	for name, l := range map[string]*Learner{"a": a, "b": b} {
		edges := l.Edges()
		if len(edges) != 2 {
			t.Fatalf("%s: edges %+v", name, edges)
		}
		w := edges[1]
		if w.Source != web || w.Count != 4 || strings.Join(w.Routes, ",") != "create,list" || strings.Join(w.Methods, ",") != "GET,POST" ||
			!w.FirstSeen.Equal(clock.UTC()) || !w.LastSeen.Equal(clock.Add(time.Minute).UTC()) {
			t.Fatalf("%s: merged edge %+v", name, w)
		}
	}
	bs := ds.Baselines()
	if len(bs) != 1 || bs[0].Destination != "orders.shop" || len(bs[0].Edges) != 2 {
		t.Fatalf("stored baselines %+v", bs)
	}
	// Unflushed observations show in Edges next to the stored ones.
	a.Observe([]wire.Event{{Kind: wire.EventEdge, Source: cron, Destination: "orders.shop", Count: 5}})
	if e := a.Edges(); e[0].Source != cron || e[0].Count != 6 {
		t.Fatalf("stored and unflushed merged: %+v", e)
	}
}

// TestStoredEdgesBound: the bound counts stored edges too.
func TestStoredEdgesBound(t *testing.T) {
	ds, err := disk.Open(t.TempDir(), disk.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer ds.Close()
	l, err := NewWithOptions(Options{Store: ds, MaxEdges: 2})
	if err != nil {
		t.Fatal(err)
	}
	l.Observe([]wire.Event{{Kind: wire.EventEdge, Source: "spiffe://td/a", Destination: "x"}, {Kind: wire.EventEdge, Source: "spiffe://td/b", Destination: "x"}})
	if err := l.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	l.Observe([]wire.Event{{Kind: wire.EventEdge, Source: "spiffe://td/c", Destination: "x"}})
	if len(l.Edges()) != 2 || l.Dropped() != 1 {
		t.Fatalf("edges %d dropped %d", len(l.Edges()), l.Dropped())
	}
}
