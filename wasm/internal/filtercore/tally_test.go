package filtercore

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/wire"
	"github.com/meshguard/meshguard/wasm/internal/scenario"
)

// decisionEvents returns the decision events of the callouts made so far
// and answers them.
func decisionEvents(t *testing.T, h *fakeHost) []wire.Event {
	t.Helper()
	var out []wire.Event
	for _, c := range h.calls {
		var b wire.EventBatch
		if err := json.Unmarshal(c.body, &b); err != nil {
			t.Fatal(err)
		}
		for _, e := range b.Events {
			if e.Kind == wire.EventDecision {
				out = append(out, e)
			}
		}
		c.answer(202, nil)
	}
	h.calls = nil
	return out
}

// TestAllowedRequestsAreReportedEveryFewSeconds: denials go out on the
// next tick; allowed requests are summed and reported every
// allowReportNanos, so a busy workload sends rates, not a stream.
func TestAllowedRequestsAreReportedEveryFewSeconds(t *testing.T) {
	h := newFakeHost()
	vm := NewVM(h)
	p := vm.NewPlugin()
	if err := p.Configure(scenario.Config(t, scenario.Options{})); err != nil {
		t.Fatal(err)
	}
	do := func(src string) {
		s := streamFor(scenario.Request{Source: src, SourceAddr: "10.0.0.7:1", Route: "orders-api", Method: "GET",
			Path: "/api/orders/1", Authority: "orders.shop.svc.cluster.local"})
		var st StreamState
		p.OnRequestHeaders(s, &st)
	}
	do(scenario.Web)
	p.OnTick() // the first tick reports allowed requests too
	if evs := decisionEvents(t, h); len(evs) != 1 || evs[0].Response != OutcomeAllow || evs[0].Count != 1 {
		t.Fatalf("first tick: %+v", evs)
	}
	for i := 0; i < 4; i++ {
		do(scenario.Web)
		do(scenario.Intruder)
		h.now += int64(time.Second)
		p.OnTick()
		evs := decisionEvents(t, h)
		if len(evs) != 1 || evs[0].Response != OutcomeDeny || evs[0].Count != 1 {
			t.Fatalf("tick %d: want only the denial, got %+v", i, evs)
		}
	}
	h.now += int64(time.Second)
	p.OnTick()
	evs := decisionEvents(t, h)
	if len(evs) != 1 || evs[0].Response != OutcomeAllow || evs[0].Count != 4 || evs[0].Source != scenario.Web {
		t.Fatalf("after %v: want the 4 allowed requests in one event, got %+v", time.Duration(allowReportNanos), evs)
	}
}

// TestTallyIsBounded: keys beyond maxTallyKeys are not counted, and the
// report says events were dropped; counting a known key allocates nothing.
func TestTallyIsBounded(t *testing.T) {
	ta := newTally()
	ids := make([]string, maxTallyKeys+10)
	for i := range ids {
		ids[i] = fmt.Sprintf("spiffe://mesh.test/ns/shop/sa/c%d", i)
		ta.add(tallyKey{source: ids[i], outcome: OutcomeDeny, reason: policies.ReasonDeniedNoMatch}, "GET", "/x?q=1")
	}
	k := tallyKey{source: ids[1], outcome: OutcomeDeny, reason: policies.ReasonDeniedNoMatch}
	if allocs := testing.AllocsPerRun(100, func() { ta.add(k, "GET", "/y") }); allocs != 0 {
		t.Errorf("counting a known key allocates %.0f times", allocs)
	}
	b := eventBuffer{max: 2 * maxTallyKeys}
	dropped := ta.drain(&b, 1, refString)
	if len(b.buf) != maxTallyKeys || dropped != 1 || b.dropped != 1 {
		t.Fatalf("%d events, dropped %d (buffer says %d); want %d and 1", len(b.buf), dropped, b.dropped, maxTallyKeys)
	}
	if b.buf[1].Count != 102 {
		t.Errorf("count %d, want 102", b.buf[1].Count)
	}
	b = eventBuffer{max: 10}
	if ta.drain(&b, 1, refString); len(b.buf) != 0 {
		t.Fatalf("a drained tally reports again: %d events", len(b.buf))
	}
}

// TestDeniedFloodLeavesRoomForDetections: the decisions of a flood of
// denied requests (more keys than half the buffer) take half the buffer at
// most; the detections that follow still fit.
func TestDeniedFloodLeavesRoomForDetections(t *testing.T) {
	ta := newTally()
	for i := 0; i < 20; i++ {
		ta.add(tallyKey{source: fmt.Sprintf("spiffe://mesh.test/ns/evil/sa/flood%d", i), route: "orders-api", outcome: OutcomeDeny,
			reason: policies.ReasonDeniedNoMatch}, "GET", "/")
	}
	b := eventBuffer{max: 8}
	if dropped := ta.drain(&b, 1, refString); len(b.buf) != 4 || dropped != 16 || b.dropped != 16 {
		t.Fatalf("%d decision events buffered, %d dropped (buffer says %d); want half the buffer (4) and 16", len(b.buf), dropped, b.dropped)
	}
	for i := 0; i < 4; i++ {
		if !b.add(wire.Event{Kind: wire.EventAnomaly, Detector: "enumeration"}) {
			t.Fatalf("detection %d did not fit after the flood", i)
		}
	}
}
