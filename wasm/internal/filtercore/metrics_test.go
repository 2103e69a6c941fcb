package filtercore

import (
	"testing"

	"github.com/meshguard/meshguard/wasm/internal/scenario"
)

// Request-path counters are batched in the VM: the host sees them after
// the next tick, after a new plugin context replaces the metrics, or when
// the plugin is done, and never loses or doubles a count.
func TestCountersBatchedUntilTick(t *testing.T) {
	h := newFakeHost()
	vm := NewVM(h)
	p := vm.NewPlugin()
	if err := p.Configure(scenario.Config(t, scenario.Options{})); err != nil {
		t.Fatal(err)
	}
	do := func() {
		s := streamFor(scenario.Request{Source: scenario.Web, SourceAddr: "10.0.0.7:1", DestAddr: "10.0.0.9:8080",
			Route: "orders-api", Method: "GET", Path: "/api/orders/1", Authority: "orders"})
		var st StreamState
		if !p.OnRequestHeaders(s, &st) {
			t.Fatalf("denied: %+v", s.local)
		}
	}
	allowed := mDecisions + ".reason.allowed_by_policy"
	do()
	do()
	if got := h.counters[mRequests]; got != 0 {
		t.Fatalf("requests before a tick: %d", got)
	}
	p.OnTick()
	if got, got2 := h.counters[mRequests], h.counters[allowed]; got != 2 || got2 != 2 {
		t.Fatalf("after a tick: requests %d, allowed %d; want 2, 2", got, got2)
	}
	do()
	p = vm.NewPlugin() // a new configuration: the old metrics are flushed first
	if got := h.counters[mRequests]; got != 3 {
		t.Fatalf("after a new plugin context: requests %d, want 3", got)
	}
	if err := p.Configure(scenario.Config(t, scenario.Options{})); err != nil {
		t.Fatal(err)
	}
	do()
	p.Done()
	p.OnTick()
	if got, got2 := h.counters[mRequests], h.counters[allowed]; got != 4 || got2 != 4 {
		t.Fatalf("after Done: requests %d, allowed %d; want 4, 4", got, got2)
	}
}
