package spool

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// collector records what it is given; it fails the batches fail says.
type collector struct {
	mu   sync.Mutex
	got  []int
	fail func([]int) bool
	gate chan struct{} // when set, each write waits for it
}

func (c *collector) WriteBatch(b []int) error {
	if c.gate != nil {
		<-c.gate
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fail != nil && c.fail(b) {
		return errors.New("sink down")
	}
	c.got = append(c.got, b...)
	return nil
}

// TestEveryRecordWrittenOrCounted: under concurrent producers and a sink
// that fails some batches, every Put ends up written or dropped with a
// reason, and the counters agree with the sink.
func TestEveryRecordWrittenOrCounted(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg, "test", "records")
	if err != nil {
		t.Fatal(err)
	}
	var n atomic.Int64
	c := &collector{fail: func(b []int) bool { return n.Add(1)%7 == 0 }}
	s := New[int](c, Options{Capacity: 64, Batch: 16, Metrics: m})
	const producers, each = 8, 2000
	var wg sync.WaitGroup
	var taken atomic.Int64
	for p := range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				if s.Put(p*each+i, time.Time{}) {
					taken.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	written := testutil.ToFloat64(m.written)
	var dropped float64
	for _, r := range []string{"overflow", "deadline", "write_error", "closed", "shutdown"} {
		dropped += testutil.ToFloat64(m.Dropped(r))
	}
	if written+dropped != producers*each {
		t.Fatalf("written %v + dropped %v != %d put", written, dropped, producers*each)
	}
	if int(written) != len(c.got) {
		t.Fatalf("counter says %v written, sink holds %d", written, len(c.got))
	}
	if float64(taken.Load()) != written+testutil.ToFloat64(m.Dropped("write_error")) {
		t.Fatalf("taken %d != written %v + write errors", taken.Load(), written)
	}
	h := s.Health()
	if h.Written != uint64(written) || h.Dropped != uint64(dropped) {
		t.Fatalf("health %+v disagrees with the counters", h)
	}
}

// TestOrderPerProducer: one producer's records are written in order.
func TestOrderPerProducer(t *testing.T) {
	c := &collector{}
	s := New[int](c, Options{Capacity: 4, Batch: 3, Overflow: Block})
	for i := range 500 {
		if !s.Put(i, time.Now().Add(5*time.Second)) {
			t.Fatalf("record %d not taken with the block policy", i)
		}
	}
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	for i, v := range c.got {
		if v != i {
			t.Fatalf("record %d is %d", i, v)
		}
	}
	if len(c.got) != 500 {
		t.Fatalf("%d records written", len(c.got))
	}
}

// TestHealthStallAndFull: a write that does not return is a stall; a
// full buffer says so; both clear when the sink comes back.
func TestHealthStallAndFull(t *testing.T) {
	c := &collector{gate: make(chan struct{})}
	s := New[int](c, Options{Capacity: 2, StallAfter: 10 * time.Millisecond})
	s.Put(0, time.Time{})
	time.Sleep(30 * time.Millisecond) // the writer holds record 0
	for i := 1; s.Put(i, time.Time{}); i++ {
	}
	h := s.Health()
	if !h.Stalled || !h.Full || h.Err() == nil {
		t.Fatalf("health = %+v, want stalled and full", h)
	}
	close(c.gate)
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if h := s.Health(); h.Stalled || h.Err() != nil {
		t.Fatalf("health after the sink returned = %+v", h)
	}
}

func TestParseOverflow(t *testing.T) {
	for in, want := range map[string]Overflow{"drop": Drop, "block": Block} {
		got, err := ParseOverflow(in)
		if err != nil || got != want || got.String() != in {
			t.Errorf("ParseOverflow(%q) = %v, %v", in, got, err)
		}
	}
	if _, err := ParseOverflow("wait"); err == nil {
		t.Error("unknown policy accepted")
	}
}

// TestWriterNeverBlocks: a logger writing through a Writer whose target is
// stuck goes on at full speed; lines it could not queue are counted, and
// the rest arrive in order once the target moves.
func TestWriterNeverBlocks(t *testing.T) {
	gate := make(chan struct{})
	var mu sync.Mutex
	var out []byte
	target := writerFunc(func(p []byte) (int, error) {
		<-gate
		mu.Lock()
		defer mu.Unlock()
		out = append(out, p...)
		return len(p), nil
	})
	w := NewWriter(target, Options{Capacity: 16, Overflow: Block})
	start := time.Now()
	for i := range 1000 {
		if _, err := w.Write([]byte{byte('a' + i%26), '\n'}); err != nil {
			t.Fatal(err)
		}
	}
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Errorf("1000 writes took %s with a stuck target", d)
	}
	close(gate)
	if err := w.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	h := w.Health()
	if h.Dropped == 0 || h.Written+h.Dropped != 1000 || uint64(len(out)) != 2*h.Written {
		t.Fatalf("health %+v, %d bytes out", h, len(out))
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
