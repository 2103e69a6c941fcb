// Package recordstore keeps the control plane's records (decisions,
// detections, quarantines, releases, policy changes) in an embedded SQLite
// database (modernc.org/sqlite, pure Go) for forensic queries and incident
// timelines.
//
// Appending never blocks: records wait in a bounded queue (Append returns
// record.ErrFull when it is full, and the caller answers with back-pressure
// or counts a drop) and one writer goroutine inserts them in batches, one
// transaction per batch, with prepared statements, in WAL mode so that
// queries read while it writes. Retention by age and by size runs in the
// same goroutine. Every record lost is counted.
package recordstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	_ "modernc.org/sqlite" // the database/sql driver "sqlite"

	"github.com/meshguard/meshguard/controlplane/record"
)

// Defaults of Options.
const (
	DefaultMaxAge      = 7 * 24 * time.Hour
	DefaultMaxBytes    = 1 << 30
	DefaultQueue       = 200_000
	DefaultBatch       = 5_000
	DefaultRetainEvery = time.Minute
)

// Options configure a Store.
type Options struct {
	// Path of the database file (created with its WAL beside it).
	Path string
	// MaxAge drops records older than this (default 7 days; negative: no
	// limit by age).
	MaxAge time.Duration
	// MaxBytes bounds the database's used size, oldest records dropped
	// first (default 1 GiB; negative: no limit by size).
	MaxBytes int64
	// Queue bounds the records waiting to be written (default 200,000).
	Queue int
	// Batch is the most records written in one transaction (default 5,000).
	Batch int
	// RetainEvery is how often retention runs (default 1 minute).
	RetainEvery time.Duration
	// ReadOnly opens an existing database for queries only: no writer,
	// no retention, no migration.
	ReadOnly bool

	Now        func() time.Time
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Store is the record database. Safe for concurrent use.
type Store struct {
	opts Options
	log  *slog.Logger
	w    *sql.DB // the one writer connection
	r    *sql.DB // readers

	mu      sync.Mutex
	queue   []record.Record
	wake    chan struct{}
	flushed *sync.Cond // broadcast after each write; guarded by mu
	written uint64     // records taken from the queue and handled (stored or dropped)
	taken   uint64     // records ever appended

	// Writer-goroutine state.
	stmts writerStmts
	enc   *encoder

	// Reader state: the dictionary and decoded decision contexts.
	rc readCache

	m metrics
}

type metrics struct {
	stored   *prometheus.CounterVec
	dropped  *prometheus.CounterVec
	deleted  *prometheus.CounterVec
	queued   prometheus.GaugeFunc
	bytes    prometheus.Gauge
	oldest   prometheus.Gauge
	batchDur prometheus.Histogram
}

// Open opens (creating and migrating) the database at opts.Path.
func Open(ctx context.Context, opts Options) (*Store, error) {
	if opts.Path == "" {
		return nil, errors.New("recordstore: no path")
	}
	if opts.MaxAge == 0 {
		opts.MaxAge = DefaultMaxAge
	}
	if opts.MaxBytes == 0 {
		opts.MaxBytes = DefaultMaxBytes
	}
	if opts.Queue <= 0 {
		opts.Queue = DefaultQueue
	}
	if opts.Batch <= 0 {
		opts.Batch = DefaultBatch
	}
	if opts.RetainEvery <= 0 {
		opts.RetainEvery = DefaultRetainEvery
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Store{opts: opts, log: log, wake: make(chan struct{}, 1), enc: newEncoder()}
	s.flushed = sync.NewCond(&s.mu)
	if opts.ReadOnly {
		if _, err := os.Stat(opts.Path); err != nil {
			return nil, fmt.Errorf("recordstore: %w", err)
		}
	} else {
		w, err := sql.Open("sqlite", dsn(opts.Path, false))
		if err != nil {
			return nil, fmt.Errorf("recordstore: open %s: %w", opts.Path, err)
		}
		w.SetMaxOpenConns(1)
		w.SetConnMaxLifetime(0)
		s.w = w
		if err := migrate(ctx, w); err != nil {
			_ = w.Close()
			return nil, fmt.Errorf("recordstore: %s: %w", opts.Path, err)
		}
		if s.stmts, err = prepareWriter(ctx, w); err != nil {
			_ = w.Close()
			return nil, fmt.Errorf("recordstore: prepare: %w", err)
		}
	}
	r, err := sql.Open("sqlite", dsn(opts.Path, true))
	if err != nil {
		s.closeWriter()
		return nil, fmt.Errorf("recordstore: open %s: %w", opts.Path, err)
	}
	r.SetMaxOpenConns(4)
	s.r = r
	if opts.ReadOnly {
		var v int
		if err := r.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_migrations`).Scan(&v); err != nil {
			_ = r.Close()
			return nil, fmt.Errorf("recordstore: %s is not a meshguard record store: %w", opts.Path, err)
		}
		if v != SchemaVersion {
			_ = r.Close()
			return nil, fmt.Errorf("recordstore: %s has schema version %d, this meshguard reads %d", opts.Path, v, SchemaVersion)
		}
	}
	if err := s.initMetrics(opts.Registerer); err != nil {
		s.closeWriter()
		_ = r.Close()
		return nil, err
	}
	return s, nil
}

func dsn(path string, readOnly bool) string {
	q := url.Values{}
	q.Add("_pragma", "busy_timeout(10000)")
	if readOnly {
		q.Add("mode", "ro")
		q.Add("_pragma", "query_only(1)")
		q.Add("_pragma", "cache_size(-16384)")
	} else {
		q.Add("_pragma", "journal_mode(WAL)")
		q.Add("_pragma", "synchronous(NORMAL)")
		q.Add("_pragma", "cache_size(-32768)")
		q.Add("_pragma", "journal_size_limit(67108864)")
		q.Add("_txlock", "immediate")
	}
	return "file:" + path + "?" + q.Encode()
}

func (s *Store) initMetrics(reg prometheus.Registerer) error {
	s.m = metrics{
		stored: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshguard_controlplane_records_stored_total",
			Help: "Records written to the record store, by kind.",
		}, []string{"kind"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshguard_controlplane_records_dropped_total",
			Help: "Records the record store lost, by reason (queue_full, write_error).",
		}, []string{"reason"}),
		deleted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshguard_controlplane_records_expired_total",
			Help: "Records removed by retention, by limit (age, size).",
		}, []string{"limit"}),
		queued: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "meshguard_controlplane_record_queue_records",
			Help: "Records waiting to be written to the record store.",
		}, func() float64 { s.mu.Lock(); defer s.mu.Unlock(); return float64(len(s.queue)) }),
		bytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meshguard_controlplane_record_store_bytes",
			Help: "Bytes the record store's database uses (as measured at the last retention run).",
		}),
		oldest: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meshguard_controlplane_record_store_oldest_timestamp_seconds",
			Help: "Time of the oldest record kept (as of the last retention run).",
		}),
		batchDur: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "meshguard_controlplane_record_write_seconds",
			Help:    "Time to write one batch of records (one transaction).",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
		}),
	}
	for _, k := range record.Kinds {
		s.m.stored.WithLabelValues(string(k))
	}
	s.m.dropped.WithLabelValues("queue_full")
	s.m.dropped.WithLabelValues("write_error")
	if reg == nil {
		return nil
	}
	for _, c := range []prometheus.Collector{s.m.stored, s.m.dropped, s.m.deleted, s.m.queued, s.m.bytes, s.m.oldest, s.m.batchDur} {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("recordstore: register metrics: %w", err)
		}
	}
	return nil
}

// Append queues records for writing. It never blocks: when the queue
// cannot take them all it takes none and returns record.ErrFull (counted
// as queue_full drops only by a caller that gives up; see Drop).
func (s *Store) Append(recs []record.Record) error {
	if s.w == nil {
		return errors.New("recordstore: read-only")
	}
	if len(recs) == 0 {
		return nil
	}
	s.mu.Lock()
	if len(s.queue)+len(recs) > s.opts.Queue {
		s.mu.Unlock()
		return record.ErrFull
	}
	s.queue = append(s.queue, recs...)
	s.taken += uint64(len(recs))
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return nil
}

// AppendOrDrop appends and counts the records as dropped (queue_full) when
// the queue is full: for callers that cannot retry, such as the events
// endpoint and the control plane's own hooks.
func (s *Store) AppendOrDrop(recs []record.Record) {
	if err := s.Append(recs); err != nil {
		s.m.dropped.WithLabelValues("queue_full").Add(float64(len(recs)))
	}
}

// Dropped counts records a caller gave up on after Append returned ErrFull.
func (s *Store) Dropped(n int) { s.m.dropped.WithLabelValues("queue_full").Add(float64(n)) }

// Sync waits until every record appended before the call is written (or
// dropped on a write error), or ctx ends. Run must be running.
func (s *Store) Sync(ctx context.Context) error {
	s.mu.Lock()
	target := s.taken
	s.mu.Unlock()
	done := make(chan struct{})
	go func() {
		s.mu.Lock()
		for s.written < target && ctx.Err() == nil {
			s.flushed.Wait()
		}
		s.mu.Unlock()
		close(done)
	}()
	select {
	case <-done:
		return ctx.Err()
	case <-ctx.Done():
		s.mu.Lock()
		s.flushed.Broadcast()
		s.mu.Unlock()
		<-done
		return ctx.Err()
	}
}

// Run writes queued records and enforces retention until ctx ends, then
// writes what is still queued and returns. Call it once.
func (s *Store) Run(ctx context.Context) {
	if s.w == nil {
		return
	}
	retain := time.NewTicker(s.opts.RetainEvery)
	defer retain.Stop()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	s.retain(ctx)
	for {
		select {
		case <-ctx.Done():
			for s.writeQueued(context.Background()) {
			}
			return
		case <-s.wake:
		case <-tick.C:
		case <-retain.C:
			s.retain(ctx)
			continue
		}
		for s.writeQueued(ctx) {
		}
	}
}

// writeQueued writes up to one batch; it reports whether more is queued.
func (s *Store) writeQueued(ctx context.Context) bool {
	s.mu.Lock()
	n := min(len(s.queue), s.opts.Batch)
	if n == 0 {
		s.mu.Unlock()
		return false
	}
	batch := make([]record.Record, n)
	copy(batch, s.queue)
	rest := copy(s.queue, s.queue[n:])
	clear(s.queue[rest:])
	s.queue = s.queue[:rest]
	s.mu.Unlock()

	start := time.Now()
	err := s.write(ctx, batch)
	s.m.batchDur.Observe(time.Since(start).Seconds())
	if err != nil {
		s.m.dropped.WithLabelValues("write_error").Add(float64(len(batch)))
		s.log.Error("record store write failed; records dropped", "records", len(batch), "error", err)
	} else {
		for i := range batch {
			s.m.stored.WithLabelValues(string(batch[i].Kind)).Inc()
		}
	}
	s.mu.Lock()
	s.written += uint64(n)
	more := len(s.queue) > 0
	s.flushed.Broadcast()
	s.mu.Unlock()
	return more
}

// kindCodes are the stored values of record.Kind. Decisions are 1 and
// every other kind is more (the records_events index holds kind > 1).
var kindCodes = map[record.Kind]int64{
	record.KindDecision: 1, record.KindDetection: 2, record.KindQuarantine: 3, record.KindRelease: 4, record.KindPolicy: 5,
}

func kindOf(code int64) record.Kind {
	for k, c := range kindCodes {
		if c == code {
			return k
		}
	}
	return record.Kind(fmt.Sprintf("unknown-%d", code))
}

// write inserts a batch in one transaction.
func (s *Store) write(ctx context.Context, batch []record.Record) (err error) {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
			// Interned ids of the rolled-back transaction do not exist.
			s.enc.forget()
		}
	}()
	if err := s.enc.insert(ctx, tx, &s.stmts, batch); err != nil {
		return err
	}
	return tx.Commit()
}

// Close stops nothing (cancel Run's context first) and closes the
// database.
func (s *Store) Close() error {
	s.closeWriter()
	if s.r != nil {
		return s.r.Close()
	}
	return nil
}

func (s *Store) closeWriter() {
	s.stmts.close()
	if s.w != nil {
		_ = s.w.Close()
	}
}
