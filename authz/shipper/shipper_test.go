package shipper

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/meshguard/meshguard/authz/decisionlog"
	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/wire"
)

// controlPlane is a stand-in for the control plane's decisions endpoint
// (the real one is exercised with the real record store in
// cmd/meshguard's TestIncidentCommands): it decodes batches strictly and
// answers with the status its test sets.
type controlPlane struct {
	mu        sync.Mutex
	status    []int // answers in order; 202 when exhausted
	hold      chan struct{}
	decisions []wire.Decision
	dropped   uint64
	requests  int
	rejected  int // decisions in batches answered with an error
}

func (c *controlPlane) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != wire.DecisionsPath || r.Method != http.MethodPost {
		http.NotFound(w, r)
		return
	}
	if c.hold != nil {
		<-c.hold
	}
	body, _ := io.ReadAll(r.Body)
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	var b wire.DecisionBatch
	if err := dec.Decode(&b); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.requests++
	code := http.StatusAccepted
	if len(c.status) > 0 {
		code, c.status = c.status[0], c.status[1:]
	}
	if code == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "0")
	}
	if code == http.StatusAccepted {
		c.decisions = append(c.decisions, b.Decisions...)
		c.dropped += b.Dropped
	} else if code != http.StatusServiceUnavailable {
		c.rejected += len(b.Decisions)
	}
	w.WriteHeader(code)
}

func (c *controlPlane) got() (int, uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.decisions), c.dropped
}

func newShipper(t *testing.T, cp *controlPlane, cfg Config) (*Shipper, func()) {
	t.Helper()
	srv := httptest.NewServer(cp)
	t.Cleanup(srv.Close)
	cfg.URL, cfg.Client = srv.URL, srv.Client()
	cfg.Registerer = prometheus.NewRegistry()
	if cfg.AllowSampleRate == 0 {
		cfg.AllowSampleRate = 1
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	stop := func() {
		once.Do(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := s.Close(ctx); err != nil {
				t.Errorf("Close: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return s, stop
}

func entry(i int) *decisionlog.Entry {
	return &decisionlog.Entry{Time: time.Unix(int64(i), 0).UTC(), DecisionID: fmt.Sprintf("d-%d", i), Protocol: "grpc",
		Source: "spiffe://td/ns/a/sa/x", SourceMethod: "certificate", Destination: "spiffe://td/ns/b/sa/y", Method: "GET",
		Path: "/p?secret=1", Reason: string(policies.ReasonDeniedNoMatch), Mode: string(policies.ModeEnforce)}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestNeverBlocksAndCountsDrops: with the control plane stuck, Log returns
// at once for every decision; what the queue cannot hold is dropped and
// counted, and the control plane is told how many with the next batch it
// accepts. Every decision is either delivered or counted.
func TestNeverBlocksAndCountsDrops(t *testing.T) {
	cp := &controlPlane{hold: make(chan struct{})}
	s, _ := newShipper(t, cp, Config{Buffer: 100, Batch: 50, Interval: 10 * time.Millisecond})
	const n = 5000
	start := time.Now()
	for i := range n {
		s.Log(entry(i), policies.MapHeaders{"x-tenant": "t"}, time.Now().Add(time.Hour))
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("Log blocked: %d decisions took %v", n, el)
	}
	close(cp.hold)
	dropped := func() float64 { return float64(s.Health().Dropped) }
	waitFor(t, "every decision delivered or dropped", func() bool {
		got, _ := cp.got()
		return float64(got)+dropped() == n
	})
	// One more decision carries the drop count.
	s.Log(entry(n), nil, time.Time{})
	waitFor(t, "the last decision and the drop count", func() bool {
		got, d := cp.got()
		return float64(got)+dropped() == n+1 && float64(d) == dropped()
	})
	got, reported := cp.got()
	if got != n+1-int(dropped()) || dropped() < n/2 {
		t.Errorf("delivered %d, dropped %v of %d", got, dropped(), n+1)
	}
	if testutil.ToFloat64(s.shipped) != float64(got) {
		t.Errorf("shipped counter %v, delivered %d", testutil.ToFloat64(s.shipped), got)
	}
	cp.mu.Lock()
	d := cp.decisions[0]
	cp.mu.Unlock()
	if d.Path != "/p" || d.SourceMethod != "certificate" || d.Reason != string(policies.ReasonDeniedNoMatch) {
		t.Errorf("decision as received: %+v", d)
	}
	t.Logf("%d decisions: %d delivered, %v dropped with a full queue, %d reported to the control plane", n+1, got, dropped(), reported)
}

// TestBackPressure: a busy control plane (503) gets the same batch again;
// nothing is lost while the queue has room.
func TestBackPressure(t *testing.T) {
	cp := &controlPlane{status: []int{503, 503, 503}}
	s, _ := newShipper(t, cp, Config{Buffer: 1000, Batch: 100, Interval: 10 * time.Millisecond})
	for i := range 300 {
		s.Log(entry(i), nil, time.Time{})
	}
	waitFor(t, "300 decisions", func() bool { got, _ := cp.got(); return got == 300 })
	if d := s.Health().Dropped; d != 0 {
		t.Errorf("%v dropped", d)
	}
	if b := testutil.ToFloat64(s.answers.WithLabelValues("busy")); b != 3 {
		t.Errorf("busy answers counted: %v", b)
	}
	cp.mu.Lock()
	defer cp.mu.Unlock()
	seen := map[string]bool{}
	for _, d := range cp.decisions {
		if seen[d.DecisionID] {
			t.Fatalf("decision %s delivered twice", d.DecisionID)
		}
		seen[d.DecisionID] = true
	}
}

// TestRejectedBatchIsCounted: a batch the control plane refuses is dropped,
// counted, and reported with the next accepted batch.
func TestRejectedBatchIsCounted(t *testing.T) {
	cp := &controlPlane{status: []int{400}}
	s, _ := newShipper(t, cp, Config{Batch: 10, Interval: 10 * time.Millisecond})
	for i := range 10 {
		s.Log(entry(i), nil, time.Time{})
	}
	// The writer may take the ten in more than one batch: the first
	// request, whatever it carried, is the one refused.
	var rejected int
	waitFor(t, "the rejection", func() bool {
		cp.mu.Lock()
		rejected = cp.rejected
		cp.mu.Unlock()
		return rejected > 0 && s.Health().Dropped == uint64(rejected)
	})
	s.Log(entry(10), nil, time.Time{})
	waitFor(t, "the rest and the next batch", func() bool {
		got, d := cp.got()
		return got == 10-rejected+1 && d == uint64(rejected)
	})
}

// TestDrainAtShutdown: what is queued when Run's context ends is sent.
func TestDrainAtShutdown(t *testing.T) {
	cp := &controlPlane{}
	s, stop := newShipper(t, cp, Config{Batch: 1000, Interval: time.Hour})
	for i := range 250 {
		s.Log(entry(i), nil, time.Time{})
	}
	stop()
	if got, _ := cp.got(); got != 250 {
		t.Errorf("%d of 250 delivered at shutdown", got)
	}
}

func TestSampling(t *testing.T) {
	s, err := New(Config{URL: "https://cp:8443", Client: http.DefaultClient, AllowSampleRate: 0})
	if err != nil {
		t.Fatal(err)
	}
	if s.Sampled(true, false) || !s.Sampled(false, false) || !s.Sampled(true, true) {
		t.Error("rate 0 ships only denies and would-denies")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = s.Close(ctx)
	if _, err := New(Config{URL: "cp:8443", AllowSampleRate: 2}); err == nil {
		t.Error("bad config accepted")
	}
}
