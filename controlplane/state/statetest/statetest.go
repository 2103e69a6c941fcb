// Package statetest checks that a state store keeps the contract of package
// state: the view follows every writer, updates are atomic read-modify-
// writes, concurrent writers lose nothing and act at most once on one piece
// of evidence. Each backend's tests run it against the real backend.
package statetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshguard/meshguard/controlplane/state"
)

// Factory returns replicas views of one new, empty store: for a backend
// that replicas share (Kubernetes), separate stores as separate control
// plane processes would hold them; for one that a single process owns (a
// database on disk), the same store replicas times.
type Factory func(t *testing.T, replicas int) []state.Store

// Run runs every check.
func Run(t *testing.T, f Factory) {
	t.Run("RoundTrip", func(t *testing.T) { testRoundTrip(t, f) })
	t.Run("OtherReplicaSees", func(t *testing.T) { testOtherReplicaSees(t, f) })
	t.Run("ConcurrentWritersLoseNothing", func(t *testing.T) { testConcurrent(t, f) })
	t.Run("SameEvidenceActedOnOnce", func(t *testing.T) { testSameEvidence(t, f) })
	t.Run("Baselines", func(t *testing.T) { testBaselines(t, f) })
}

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// Record returns an active quarantine of identity.
func Record(identity string) *state.Quarantine {
	return &state.Quarantine{Identity: identity, Phase: state.PhaseActive, Reason: "test", By: "spiffe://example.org/ns/ops/sa/admin",
		CreatedAt: t0, ExpiresAt: t0.Add(time.Hour),
		History: []state.Change{{Time: t0, Action: state.ActionAdd, By: "spiffe://example.org/ns/ops/sa/admin", ExpiresAt: t0.Add(time.Hour)}}}
}

func find(st state.Store, identity string) *state.Quarantine {
	for _, q := range st.Quarantines() {
		if q.Identity == identity {
			return q
		}
	}
	return nil
}

// Eventually waits up to 10s for ok.
func Eventually(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func testRoundTrip(t *testing.T, f Factory) {
	st := f(t, 1)[0]
	ctx := context.Background()
	id := "spiffe://example.org/ns/shop/sa/web"
	var notified atomic.Int64
	defer st.Subscribe(func() { notified.Add(1) })()

	got, err := st.UpdateQuarantine(ctx, id, func(cur *state.Quarantine) (*state.Quarantine, error) {
		if cur != nil {
			return nil, fmt.Errorf("a record exists before the first write: %+v", cur)
		}
		return Record(id), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got.Identity != id || got.Phase != state.PhaseActive || !got.ExpiresAt.Equal(t0.Add(time.Hour)) {
		t.Fatalf("stored %+v", got)
	}
	if q := find(st, id); q == nil || q.Reason != "test" {
		t.Fatalf("view after the write: %+v", q)
	}
	if notified.Load() == 0 {
		t.Error("no subscriber notified of a write")
	}
	// ErrUnchanged writes nothing and returns the current record.
	before := notified.Load()
	got, err = st.UpdateQuarantine(ctx, id, func(cur *state.Quarantine) (*state.Quarantine, error) {
		if cur == nil || cur.Identity != id {
			return nil, fmt.Errorf("update got %+v", cur)
		}
		cur.Reason = "modified copy" // must not reach the view
		return nil, state.ErrUnchanged
	})
	if err != nil || got == nil || got.Reason != "test" {
		t.Fatalf("unchanged update: %+v, %v", got, err)
	}
	if q := find(st, id); q.Reason != "test" {
		t.Fatalf("the update function's copy leaked into the view: %+v", q)
	}
	if notified.Load() != before {
		t.Error("an unchanged update notified subscribers")
	}
	// An error from the function is returned and nothing is written.
	boom := errors.New("boom")
	if _, err := st.UpdateQuarantine(ctx, id, func(*state.Quarantine) (*state.Quarantine, error) { return nil, boom }); !errors.Is(err, boom) {
		t.Fatalf("error from the update function: %v", err)
	}
	// Release.
	got, err = st.UpdateQuarantine(ctx, id, func(cur *state.Quarantine) (*state.Quarantine, error) {
		cur.Phase = state.PhaseReleased
		cur.Ended = &state.Ended{At: t0.Add(time.Minute), By: "ops", Reason: "cleared"}
		cur.Record(state.Change{Time: t0.Add(time.Minute), Action: state.ActionRelease, By: "ops"})
		return cur, nil
	})
	if err != nil || got.Phase != state.PhaseReleased || len(got.History) != 2 {
		t.Fatalf("release: %+v, %v", got, err)
	}
	// An invalid record is refused before it is written.
	if _, err := st.UpdateQuarantine(ctx, id, func(cur *state.Quarantine) (*state.Quarantine, error) {
		cur.Phase = "Sleeping"
		return cur, nil
	}); err == nil {
		t.Fatal("an invalid record was written")
	}
	if _, err := st.UpdateQuarantine(ctx, id, func(*state.Quarantine) (*state.Quarantine, error) {
		return Record("spiffe://example.org/ns/shop/sa/other"), nil
	}); err == nil {
		t.Fatal("an update wrote a record of another identity")
	}
	// Delete.
	got, err = st.UpdateQuarantine(ctx, id, func(*state.Quarantine) (*state.Quarantine, error) { return nil, nil })
	if err != nil || got != nil {
		t.Fatalf("delete: %+v, %v", got, err)
	}
	if q := find(st, id); q != nil {
		t.Fatalf("deleted record still in the view: %+v", q)
	}
}

func testOtherReplicaSees(t *testing.T, f Factory) {
	rs := f(t, 2)
	a, b := rs[0], rs[1]
	ctx := context.Background()
	id := "spiffe://example.org/ns/shop/sa/seen"
	changed := make(chan struct{}, 1)
	defer b.Subscribe(func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	})()
	if _, err := a.UpdateQuarantine(ctx, id, func(*state.Quarantine) (*state.Quarantine, error) { return Record(id), nil }); err != nil {
		t.Fatal(err)
	}
	Eventually(t, "replica B sees replica A's record", func() bool { return find(b, id) != nil })
	select {
	case <-changed:
	case <-time.After(5 * time.Second):
		t.Fatal("replica B's subscribers were not told")
	}
	// B releases what A wrote: A sees the release.
	if _, err := b.UpdateQuarantine(ctx, id, func(cur *state.Quarantine) (*state.Quarantine, error) {
		if cur == nil {
			return nil, errors.New("replica B writes without having read the record")
		}
		cur.Phase = state.PhaseReleased
		cur.Ended = &state.Ended{At: t0, By: "ops"}
		return cur, nil
	}); err != nil {
		t.Fatal(err)
	}
	Eventually(t, "replica A sees replica B's release", func() bool {
		q := find(a, id)
		return q != nil && q.Phase == state.PhaseReleased
	})
}

// testConcurrent: writers on every replica append distinct evidence to one
// record at once; every one of them is in the result.
func testConcurrent(t *testing.T, f Factory) {
	rs := f(t, 2)
	ctx := context.Background()
	id := "spiffe://example.org/ns/shop/sa/busy"
	if _, err := rs[0].UpdateQuarantine(ctx, id, func(*state.Quarantine) (*state.Quarantine, error) { return Record(id), nil }); err != nil {
		t.Fatal(err)
	}
	Eventually(t, "every replica sees the record", func() bool {
		for _, r := range rs {
			if find(r, id) == nil {
				return false
			}
		}
		return true
	})
	const perReplica = state.MaxEvidence / 2
	var wg sync.WaitGroup
	errs := make(chan error, len(rs)*perReplica)
	for ri, r := range rs {
		for i := range perReplica {
			wg.Add(1)
			go func() {
				defer wg.Done()
				key := fmt.Sprintf("r%d-%d", ri, i)
				_, err := r.UpdateQuarantine(ctx, id, func(cur *state.Quarantine) (*state.Quarantine, error) {
					cur.AddEvidence(state.Evidence{Key: key, Reporter: "spiffe://example.org/ns/shop/sa/orders", Received: t0})
					return cur, nil
				})
				errs <- err
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for ri, r := range rs {
		Eventually(t, fmt.Sprintf("replica %d sees every writer's evidence", ri), func() bool {
			q := find(r, id)
			return q != nil && len(q.Evidence) == len(rs)*perReplica
		})
	}
	seen := map[string]bool{}
	for _, e := range find(rs[0], id).Evidence {
		seen[e.Key] = true
	}
	for ri := range rs {
		for i := range perReplica {
			if !seen[fmt.Sprintf("r%d-%d", ri, i)] {
				t.Errorf("evidence r%d-%d lost", ri, i)
			}
		}
	}
}

// testSameEvidence: writers on every replica act on the same report at
// once; exactly one of them adds it.
func testSameEvidence(t *testing.T, f Factory) {
	rs := f(t, 2)
	ctx := context.Background()
	id := "spiffe://example.org/ns/shop/sa/once"
	var wg sync.WaitGroup
	var acted atomic.Int64
	start := make(chan struct{})
	for _, r := range rs {
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				var added bool
				_, err := r.UpdateQuarantine(ctx, id, func(cur *state.Quarantine) (*state.Quarantine, error) {
					added = false
					if cur.HasEvidence("report-1") {
						return nil, state.ErrUnchanged
					}
					if cur == nil {
						cur = Record(id)
					}
					cur.AddEvidence(state.Evidence{Key: "report-1", Reporter: "spiffe://example.org/ns/shop/sa/orders", Received: t0})
					added = true
					return cur, nil
				})
				if err != nil {
					t.Error(err)
				}
				if added {
					acted.Add(1)
				}
			}()
		}
	}
	close(start)
	wg.Wait()
	if n := acted.Load(); n != 1 {
		t.Fatalf("%d writers acted on the same evidence, want 1", n)
	}
	if q := find(rs[0], id); q == nil || len(q.Evidence) != 1 {
		t.Fatalf("record: %+v", q)
	}
}

func testBaselines(t *testing.T, f Factory) {
	rs := f(t, 2)
	ctx := context.Background()
	dest := "orders.shop.svc.cluster.local"
	add := func(r state.Store, src string, n int64) {
		t.Helper()
		if _, err := r.UpdateBaseline(ctx, dest, func(cur *state.Baseline) (*state.Baseline, error) {
			if cur == nil {
				cur = &state.Baseline{Destination: dest}
			}
			for i := range cur.Edges {
				if cur.Edges[i].Source == src {
					cur.Edges[i].Count += n
					return cur, nil
				}
			}
			cur.Edges = append(cur.Edges, state.Edge{Source: src, Routes: []string{"orders-api"}, Methods: []string{"GET"}, Count: n, FirstSeen: t0, LastSeen: t0})
			return cur, nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	add(rs[0], "spiffe://example.org/ns/shop/sa/web", 3)
	add(rs[1], "spiffe://example.org/ns/shop/sa/web", 4)
	add(rs[1], "spiffe://example.org/ns/shop/sa/cron", 1)
	for ri, r := range rs {
		Eventually(t, fmt.Sprintf("replica %d sees the merged baseline", ri), func() bool {
			for _, b := range r.Baselines() {
				if b.Destination == dest && len(b.Edges) == 2 && b.Edges[0].Count == 7 {
					return true
				}
			}
			return false
		})
	}
	if _, err := rs[0].UpdateBaseline(ctx, dest, func(cur *state.Baseline) (*state.Baseline, error) {
		cur.Edges[0].Source = "not a SPIFFE ID"
		return cur, nil
	}); err == nil {
		t.Fatal("an invalid baseline was written")
	}
}
