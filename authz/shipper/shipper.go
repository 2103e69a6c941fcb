// Package shipper sends an authz server's decisions to the control plane's
// record store (POST wire.DecisionsPath over the mesh's mTLS), where
// forensic queries, incident timelines and policy replay read them.
//
// It is a decision sink beside the decision log, with its shape: the server
// hands it each decision it samples (every deny and would-deny, allows at
// the configured rate); Log encodes the decision and puts it in a bounded
// buffer (package spool, as the decision log does) without ever waiting;
// when the buffer is full the decision is dropped and counted. The spool's
// writer sends batches, one request at a time; a control plane that
// answers 503 or 429 (its store is busy), or cannot be reached, gets the
// same batch again after a backoff while new decisions wait in the buffer
// (back-pressure); a batch it refuses (4xx) is dropped and counted. Every
// drop is reported to the control plane with the next batch it accepts, as
// well as in this server's metrics. Close, after the server's drain, sends
// what is buffered.
package shipper

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshguard/meshguard/authz/decisionlog"
	"github.com/meshguard/meshguard/internal/spool"
	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/wire"
)

// Defaults of Config.
const (
	DefaultBuffer   = 20_000
	DefaultBatch    = 1_000
	DefaultInterval = time.Second
)

// Config configures a Shipper.
type Config struct {
	// URL of the control plane's API listener (https://host:8443);
	// wire.DecisionsPath is appended.
	URL string
	// Client sends the batches (its transport carries the server's SVID).
	Client *http.Client
	// AllowSampleRate is the fraction of allowed decisions shipped, in
	// [0, 1]; denies and dry-run would-denies always are.
	AllowSampleRate float64
	// Headers are header names copied into each decision (selected with
	// decisionlog.SelectHeaders, so credentials never are).
	Headers []string
	// Buffer bounds the decisions waiting to be sent (default 20,000).
	Buffer int
	// Batch is the most decisions per request (default 1,000).
	Batch int
	// Interval: after a batch smaller than Batch the writer waits this
	// long before the next, so that batches fill at low rates (default
	// 1s; the longest a decision waits besides a busy control plane).
	Interval time.Duration

	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// sendTimeout bounds one request. A batch whose request fails is sent
// again, so a control plane that stored it but answered too late stores it
// twice: delivery is at least once (decision IDs tell duplicates apart).
const sendTimeout = 30 * time.Second

// Shipper buffers and sends decisions. Safe for concurrent use.
type Shipper struct {
	cfg   Config
	url   string
	log   *slog.Logger
	rate  float64
	spool *spool.Spool[[]byte]
	// closing is the Unix nanoseconds by which Close wants the writer
	// done (0: not closing): past it a busy batch is given up.
	closing  atomic.Int64
	closed   chan struct{} // closed by Close: the writer stops pausing
	once     sync.Once
	reported uint64 // drops already reported to the control plane (writer only)

	shipped prometheus.Counter
	answers *prometheus.CounterVec
}

// New validates cfg and returns a Shipper whose writer is running.
func New(cfg Config) (*Shipper, error) {
	var errs []error
	if cfg.URL == "" {
		errs = append(errs, errors.New("no control plane URL"))
	} else if !strings.HasPrefix(cfg.URL, "https://") && !strings.HasPrefix(cfg.URL, "http://") {
		errs = append(errs, fmt.Errorf("URL %q: want https://host:port", cfg.URL))
	}
	if cfg.Client == nil {
		errs = append(errs, errors.New("no HTTP client"))
	}
	if cfg.AllowSampleRate < 0 || cfg.AllowSampleRate > 1 {
		errs = append(errs, fmt.Errorf("allow sample rate %v not in [0, 1]", cfg.AllowSampleRate))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("shipper: %w", err)
	}
	if cfg.Buffer <= 0 {
		cfg.Buffer = DefaultBuffer
	}
	if cfg.Batch <= 0 {
		cfg.Batch = DefaultBatch
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Shipper{
		cfg: cfg, url: strings.TrimSuffix(cfg.URL, "/") + wire.DecisionsPath, log: log, rate: cfg.AllowSampleRate,
		closed: make(chan struct{}),
		shipped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meshguard_authz_decisions_shipped_total",
			Help: "Decisions the control plane accepted into its record store.",
		}),
		answers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshguard_authz_decision_ship_requests_total",
			Help: "Requests to the control plane's decisions endpoint, by result (accepted, busy, rejected, error).",
		}, []string{"result"}),
	}
	var m *spool.Metrics
	if cfg.Registerer != nil {
		var err error
		// meshguard_authz_decision_ship_{written,dropped{reason},...}: a
		// full buffer counts as dropped{reason="overflow"}, a refused batch
		// as dropped{reason="write_error"}.
		if m, err = spool.NewMetrics(cfg.Registerer, "authz", "decision_ship"); err != nil {
			return nil, fmt.Errorf("shipper: %w", err)
		}
		for _, c := range []prometheus.Collector{s.shipped, s.answers} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("shipper: register metrics: %w", err)
			}
		}
	}
	s.spool = spool.New[[]byte](spool.SinkFunc[[]byte](s.send), spool.Options{
		Capacity: cfg.Buffer, Batch: cfg.Batch, Overflow: spool.Drop,
		// A busy control plane holds a batch for a while: that is
		// back-pressure, not a stalled process.
		StallAfter: 2 * sendTimeout, Metrics: m,
	})
	s.spool.Start()
	return s, nil
}

// Sampled reports whether a decision is shipped: always a deny or a
// would-deny, an allow at the sample rate.
func (s *Shipper) Sampled(allowed, wouldDeny bool) bool {
	if !allowed || wouldDeny || s.rate >= 1 {
		return true
	}
	return s.rate > 0 && rand.Float64() < s.rate
}

// Log queues e (with the configured headers of h) for shipping. It never
// waits, whatever the deadline: with the buffer full the decision is
// dropped and counted. It reports whether the decision was queued.
func (s *Shipper) Log(e *decisionlog.Entry, h policies.HeaderGetter, _ time.Time) bool {
	e.Path = decisionlog.StripQuery(e.Path)
	decisionlog.CopyHeaders(e, s.cfg.Headers, h)
	line := e.AppendJSON(make([]byte, 0, 768))
	return s.spool.Put(line[:len(line)-1], time.Time{})
}

// Close stops taking decisions and sends what is buffered, giving up at
// ctx's deadline (what is left is counted). Call it after the server's
// drain.
func (s *Shipper) Close(ctx context.Context) error {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(sendTimeout)
	}
	s.closing.Store(deadline.UnixNano())
	s.once.Do(func() { close(s.closed) })
	return s.spool.Close(ctx)
}

// Health reports the buffer's state and the counts written and dropped.
func (s *Shipper) Health() spool.Health { return s.spool.Health() }

// send posts one batch, again and again while the control plane is busy or
// unreachable (backing off), until it is accepted or refused. It runs on
// the spool's writer: while it waits, decisions queue in the buffer and
// overflow there, counted.
func (s *Shipper) send(batch [][]byte) error {
	backoff := time.Duration(0)
	for {
		wait, err := s.post(batch)
		switch {
		case err == nil:
			if len(batch) < s.cfg.Batch {
				s.pause(s.cfg.Interval) // let the next batch fill
			}
			return nil
		case errors.Is(err, errRejected):
			return err
		}
		backoff = max(min(2*backoff, 30*time.Second), 250*time.Millisecond)
		wait = max(wait, backoff)
		wait = wait/2 + rand.N(wait/2+1)
		if c := s.closing.Load(); c != 0 && time.Now().Add(wait).UnixNano() > c {
			return fmt.Errorf("shipper: control plane unavailable at shutdown: %w", err)
		}
		s.pause(wait)
	}
}

// pause waits d, or until Close.
func (s *Shipper) pause(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-s.closed:
	}
}

var errRejected = errors.New("batch refused")

// post sends a batch once. It returns errRejected for a refusal (not to
// be sent again), another error for what may succeed later, with how long
// the control plane asked to wait.
func (s *Shipper) post(batch [][]byte) (time.Duration, error) {
	dropped := s.spool.Health().Dropped - s.reported
	body := encodeBatch(batch, dropped)
	ctx, cancel := context.WithTimeout(context.Background(), sendTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.url, bytes.NewReader(body))
	if err != nil {
		s.answers.WithLabelValues("error").Inc()
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := s.cfg.Client.Do(req)
	if err != nil {
		s.answers.WithLabelValues("error").Inc()
		s.log.Warn("shipping decisions", slog.String("error", err.Error()))
		return 0, err
	}
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	_ = resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusAccepted || resp.StatusCode == http.StatusOK:
		s.answers.WithLabelValues("accepted").Inc()
		s.shipped.Add(float64(len(batch)))
		s.reported += dropped
		return 0, nil
	case resp.StatusCode == http.StatusServiceUnavailable || resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		s.answers.WithLabelValues("busy").Inc()
		secs, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
		return time.Duration(min(max(secs, 0), 60)) * time.Second, fmt.Errorf("control plane busy: %s", resp.Status)
	default:
		s.answers.WithLabelValues("rejected").Inc()
		s.log.Error("control plane refused a decision batch; dropped", slog.Int("status", resp.StatusCode),
			slog.Int("decisions", len(batch)), slog.String("error", strings.TrimSpace(string(msg))))
		return 0, fmt.Errorf("%w: %s", errRejected, resp.Status)
	}
}

// encodeBatch writes a wire.DecisionBatch from encoded decisions.
func encodeBatch(batch [][]byte, dropped uint64) []byte {
	n := 64
	for _, l := range batch {
		n += len(l) + 1
	}
	b := make([]byte, 0, n)
	b = append(b, '{')
	if dropped > 0 {
		b = append(b, `"dropped":`...)
		b = strconv.AppendUint(b, dropped, 10)
		b = append(b, ',')
	}
	b = append(b, `"decisions":[`...)
	for i, l := range batch {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, l...)
	}
	return append(b, ']', '}')
}
