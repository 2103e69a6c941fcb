// Package spool hands records from a hot path to a slow writer without
// letting the writer slow the hot path down: a bounded buffer between
// producers (Put) and one goroutine that writes batches to a Sink.
//
// The overflow policy is stated, not implied: with Drop (the default) a
// record that finds the buffer full is dropped and counted at once; with
// Block the producer waits for room, at most until the deadline it passes
// (a check's own deadline), and a record still without room then is dropped
// and counted. Nothing is lost silently: every record ends up written or
// counted in meshguard_<component>_<name>_dropped_total with a reason
// (overflow, deadline, write_error, closed, shutdown).
//
// Close stops taking records, writes everything buffered and returns; the
// owner calls it after the producers have stopped (after a server's drain),
// so that what they produced is written. Health tells a stalled writer (one
// write taking longer than StallAfter) or a full buffer, for readiness.
package spool

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Overflow is what Put does when the buffer is full.
type Overflow int

const (
	// Drop drops the record and counts it (reason "overflow").
	Drop Overflow = iota
	// Block waits for room until the Put's deadline, then drops and
	// counts (reason "deadline").
	Block
)

// ParseOverflow reads "drop" or "block".
func ParseOverflow(s string) (Overflow, error) {
	switch s {
	case "drop":
		return Drop, nil
	case "block":
		return Block, nil
	}
	return Drop, fmt.Errorf("overflow policy %q: want drop or block", s)
}

func (o Overflow) String() string {
	if o == Block {
		return "block"
	}
	return "drop"
}

// Sink writes batches. WriteBatch is called from one goroutine at a time;
// the batch is reused after it returns. An error drops the batch (counted
// with reason "write_error"); the sink is tried again with the next one.
type Sink[T any] interface {
	WriteBatch(batch []T) error
}

// SinkFunc adapts a function to Sink.
type SinkFunc[T any] func([]T) error

// WriteBatch implements Sink.
func (f SinkFunc[T]) WriteBatch(b []T) error { return f(b) }

// Options configure a Spool.
type Options struct {
	// Capacity bounds the records buffered (default 8192).
	Capacity int
	// Batch bounds the records per WriteBatch (default 256).
	Batch int
	// Overflow is the policy when the buffer is full (default Drop).
	Overflow Overflow
	// StallAfter: a write running longer than this makes Health report a
	// stall (default 2s).
	StallAfter time.Duration
	// Metrics, when set, receives the spool's counts.
	Metrics *Metrics
}

// Spool is a bounded asynchronous buffer in front of a Sink. Put is safe
// for concurrent use.
type Spool[T any] struct {
	sink  Sink[T]
	opts  Options
	ch    chan T
	m     *Metrics
	done  chan struct{}
	start sync.Once

	mu     sync.RWMutex // Put holds it shared; Close exclusively to close ch
	closed bool

	writing   atomic.Int64 // Unix nanoseconds a write started, 0 when idle
	lastWrite atomic.Int64 // Unix nanoseconds of the last successful write
	dropped   atomic.Uint64
	written   atomic.Uint64
}

// New returns a spool writing to sink; its writer starts with the first
// Put (or Start) and ends with Close.
func New[T any](sink Sink[T], opts Options) *Spool[T] {
	if opts.Capacity <= 0 {
		opts.Capacity = 8192
	}
	if opts.Batch <= 0 {
		opts.Batch = 256
	}
	if opts.StallAfter <= 0 {
		opts.StallAfter = 2 * time.Second
	}
	s := &Spool[T]{sink: sink, opts: opts, ch: make(chan T, opts.Capacity), m: opts.Metrics, done: make(chan struct{})}
	if s.m != nil {
		s.m.capacity.Set(float64(opts.Capacity))
		depth := func() int { return len(s.ch) }
		s.m.depth.Store(&depth)
	}
	return s
}

// Start starts the writer (Put starts it too).
func (s *Spool[T]) Start() { s.start.Do(func() { go s.run() }) }

// Put hands v to the writer. It never blocks with Drop; with Block it
// waits for room until deadline (a zero deadline: no wait). It reports
// whether v was taken.
func (s *Spool[T]) Put(v T, deadline time.Time) bool {
	s.Start()
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		s.drop("closed", 1)
		return false
	}
	select {
	case s.ch <- v:
		return true
	default:
	}
	if s.opts.Overflow == Drop {
		s.drop("overflow", 1)
		return false
	}
	wait := time.Until(deadline)
	if wait <= 0 {
		s.drop("deadline", 1)
		return false
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case s.ch <- v:
		return true
	case <-t.C:
		s.drop("deadline", 1)
		return false
	}
}

func (s *Spool[T]) drop(reason string, n int) {
	s.dropped.Add(uint64(n))
	if s.m != nil {
		s.m.dropped.WithLabelValues(reason).Add(float64(n))
	}
}

func (s *Spool[T]) run() {
	defer close(s.done)
	batch := make([]T, 0, s.opts.Batch)
	var zero T
	for v := range s.ch {
		batch = append(batch, v)
	fill:
		for len(batch) < s.opts.Batch {
			select {
			case v, ok := <-s.ch:
				if !ok {
					break fill
				}
				batch = append(batch, v)
			default:
				break fill
			}
		}
		s.write(batch)
		for i := range batch {
			batch[i] = zero // let the records go
		}
		batch = batch[:0]
	}
}

func (s *Spool[T]) write(batch []T) {
	s.writing.Store(time.Now().UnixNano())
	err := s.sink.WriteBatch(batch)
	now := time.Now()
	s.writing.Store(0)
	if s.m != nil {
		s.m.batches.Inc()
	}
	if err != nil {
		s.drop("write_error", len(batch))
		if s.m != nil {
			s.m.writeErrors.Inc()
		}
		return
	}
	s.lastWrite.Store(now.UnixNano())
	s.written.Add(uint64(len(batch)))
	if s.m != nil {
		s.m.written.Add(float64(len(batch)))
		s.m.lastWrite.Set(float64(now.UnixNano()) / 1e9)
	}
}

// Close stops taking records (a later Put drops with reason "closed"),
// writes what is buffered and returns. If ctx ends first, Close returns an
// error saying how many records were not written; they are counted with
// reason "shutdown" (the writer goes on in the background while the
// process lives: a record it still writes is then counted both ways).
func (s *Spool[T]) Close(ctx context.Context) error {
	s.Start()
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.ch)
	}
	s.mu.Unlock()
	select {
	case <-s.done:
		return nil
	case <-ctx.Done():
		n := len(s.ch)
		s.drop("shutdown", n)
		return fmt.Errorf("spool: %d record(s) not written before the deadline: %w", n, ctx.Err())
	}
}

// Health is the spool's state for readiness.
type Health struct {
	Buffered, Capacity int
	Overflow           Overflow
	// Stalled is set when one write has run longer than StallAfter.
	Stalled bool
	// StalledFor is how long the current write has run, when stalled.
	StalledFor time.Duration
	// Full is set when the buffer has no room.
	Full             bool
	Written, Dropped uint64
}

// Health reports the spool's state now.
func (s *Spool[T]) Health() Health {
	h := Health{Buffered: len(s.ch), Capacity: cap(s.ch), Overflow: s.opts.Overflow,
		Written: s.written.Load(), Dropped: s.dropped.Load()}
	h.Full = h.Buffered >= h.Capacity
	if w := s.writing.Load(); w != 0 {
		if d := time.Since(time.Unix(0, w)); d > s.opts.StallAfter {
			h.Stalled, h.StalledFor = true, d
		}
	}
	return h
}

// Err is nil for a healthy spool, or says why it is not.
func (h Health) Err() error {
	switch {
	case h.Stalled:
		return fmt.Errorf("writer stalled for %s (%d buffered of %d, %d dropped)", h.StalledFor.Round(time.Millisecond), h.Buffered, h.Capacity, h.Dropped)
	case h.Full:
		return fmt.Errorf("buffer full (%d of %d, %d dropped)", h.Buffered, h.Capacity, h.Dropped)
	}
	return nil
}

// Metrics are a spool's collectors: meshguard_<component>_<name>_… .
type Metrics struct {
	written     prometheus.Counter
	dropped     *prometheus.CounterVec
	batches     prometheus.Counter
	writeErrors prometheus.Counter
	lastWrite   prometheus.Gauge
	capacity    prometheus.Gauge
	depth       atomic.Pointer[func() int]
}

// NewMetrics registers a spool's collectors on reg, named
// meshguard_<component>_<name>_{written_total, dropped_total{reason},
// batches_total, write_errors_total, last_write_timestamp_seconds,
// buffered, capacity}.
func NewMetrics(reg prometheus.Registerer, component, name string) (*Metrics, error) {
	p := "meshguard_" + component + "_" + name + "_"
	m := &Metrics{
		written: prometheus.NewCounter(prometheus.CounterOpts{Name: p + "written_total",
			Help: "Records written by the " + name + " writer."}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: p + "dropped_total",
			Help: "Records of the " + name + " that were not written, by reason: overflow (buffer full, drop policy), deadline (buffer full past the producer's deadline, block policy), write_error, closed (after shutdown began), shutdown (still buffered when the shutdown deadline passed)."},
			[]string{"reason"}),
		batches: prometheus.NewCounter(prometheus.CounterOpts{Name: p + "batches_total",
			Help: "Batches handed to the " + name + " writer."}),
		writeErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: p + "write_errors_total",
			Help: "Batches of the " + name + " that failed to write."}),
		lastWrite: prometheus.NewGauge(prometheus.GaugeOpts{Name: p + "last_write_timestamp_seconds",
			Help: "Unix time of the last successful write of the " + name + "."}),
		capacity: prometheus.NewGauge(prometheus.GaugeOpts{Name: p + "capacity",
			Help: "Records the " + name + " buffer holds at most."}),
	}
	buffered := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: p + "buffered",
		Help: "Records of the " + name + " waiting to be written."}, func() float64 {
		if f := m.depth.Load(); f != nil {
			return float64((*f)())
		}
		return 0
	})
	for _, reason := range []string{"overflow", "deadline", "write_error", "closed", "shutdown"} {
		m.dropped.WithLabelValues(reason)
	}
	for _, c := range []prometheus.Collector{m.written, m.dropped, m.batches, m.writeErrors, m.lastWrite, m.capacity, buffered} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("spool: register metrics: %w", err)
		}
	}
	return m, nil
}

// Dropped is the counter of records dropped for reason (tests, dashboards).
func (m *Metrics) Dropped(reason string) prometheus.Counter { return m.dropped.WithLabelValues(reason) }
