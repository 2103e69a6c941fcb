// Package decisionlog writes one JSON line per authorization decision, from
// a writer goroutine behind a bounded buffer (package spool), so that a
// slow or stalled sink never holds up a check.
//
// Denies are always written; allows are sampled at a configured rate. The
// path is written without its query string and fragment. Headers are
// written only when named in the configuration, and never the ones that
// carry credentials (authorization, proxy-authorization, cookie,
// set-cookie, x-forwarded-client-cert, the JWT-SVID header) or that the
// operator lists as redacted: such a name in the include list is an error.
package decisionlog

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/meshguard/meshguard/internal/spool"
	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/wire"
)

// Entry is one decision: the record the store keeps and replay reads
// (wire.Decision), written as one JSON line by its AppendJSON.
type Entry = wire.Decision

// Config configures a Logger.
type Config struct {
	// W receives the lines, one write per batch, from one goroutine.
	W io.Writer
	// AllowSampleRate is the fraction of allowed decisions written, in
	// [0, 1]. Denies and dry-run would-denies are always written.
	AllowSampleRate float64
	// Headers are lowercase header names copied into each entry.
	Headers []string
	// Redact are header names that must never be written (in addition to
	// the built-in credential headers).
	Redact []string
	// Buffer bounds the decisions waiting for the writer (default 8192).
	Buffer int
	// Overflow is what happens to a decision that finds the buffer full:
	// spool.Drop (the default) drops and counts it; spool.Block makes the
	// check wait for room until its deadline, then drops and counts it.
	Overflow spool.Overflow
	// StallAfter: a write running longer than this is a stalled sink
	// (Health; default 2s).
	StallAfter time.Duration
	// Metrics, when set, counts what is written and dropped.
	Metrics *spool.Metrics
}

// neverLogged are credential headers that are never written.
var neverLogged = []string{"authorization", "proxy-authorization", "cookie", "set-cookie", "x-forwarded-client-cert"}

// Logger queues entries for a writer goroutine: a slow or stalled writer
// never holds up the check that produced the entry (see package spool for
// the overflow policy). Safe for concurrent use; Close it after the
// server's drain, so that every answered decision is written.
type Logger struct {
	rate    float64
	headers []string
	spool   *spool.Spool[Entry]
}

// New validates cfg and returns a Logger.
func New(cfg Config) (*Logger, error) {
	if cfg.W == nil {
		return nil, fmt.Errorf("decisionlog: no writer")
	}
	if cfg.AllowSampleRate < 0 || cfg.AllowSampleRate > 1 {
		return nil, fmt.Errorf("decisionlog: allow sample rate %v not in [0, 1]", cfg.AllowSampleRate)
	}
	if cfg.Buffer < 0 {
		return nil, fmt.Errorf("decisionlog: buffer %d is negative", cfg.Buffer)
	}
	hs, err := SelectHeaders(cfg.Headers, cfg.Redact)
	if err != nil {
		return nil, err
	}
	w := &lineWriter{w: cfg.W}
	l := &Logger{rate: cfg.AllowSampleRate, headers: hs}
	l.spool = spool.New[Entry](w, spool.Options{
		Capacity: cfg.Buffer, Overflow: cfg.Overflow, StallAfter: cfg.StallAfter, Metrics: cfg.Metrics,
	})
	l.spool.Start()
	return l, nil
}

// SelectHeaders returns the lowercase header names to record, refusing the
// credential headers that are never recorded and those in redact. Every
// recorder of decisions (the decision log, the shipper to the control
// plane) selects its headers with it.
func SelectHeaders(include, redact []string) ([]string, error) {
	never := map[string]bool{}
	for _, h := range append(append([]string{}, neverLogged...), redact...) {
		never[strings.ToLower(h)] = true
	}
	var hs []string
	for _, h := range include {
		h = strings.ToLower(strings.TrimSpace(h))
		if never[h] {
			return nil, fmt.Errorf("decisionlog: header %q carries credentials and is never logged", h)
		}
		hs = append(hs, h)
	}
	return hs, nil
}

// CopyHeaders sets e.Headers to the named headers of h that are present,
// and e.HeaderNames to names.
func CopyHeaders(e *Entry, names []string, h policies.HeaderGetter) {
	e.HeaderNames = names
	e.Headers = nil
	if h == nil || len(names) == 0 {
		return
	}
	e.Headers = make(map[string]string, len(names))
	for _, name := range names {
		if v, ok := h.Get(name); ok {
			e.Headers[name] = v
		}
	}
}

// lineWriter encodes a batch of entries as JSON lines and writes them at
// once.
type lineWriter struct {
	w   io.Writer
	buf []byte
}

func (lw *lineWriter) WriteBatch(batch []Entry) error {
	b := lw.buf[:0]
	for i := range batch {
		b = batch[i].AppendJSON(b)
	}
	_, err := lw.w.Write(b)
	if cap(b) <= 1<<20 {
		lw.buf = b // keep a reasonable buffer for the next batch
	}
	if err != nil {
		return fmt.Errorf("decisionlog: write: %w", err)
	}
	return nil
}

// Close writes every queued entry and returns; past ctx's deadline it
// returns an error counting those that were not written.
func (l *Logger) Close(ctx context.Context) error {
	if err := l.spool.Close(ctx); err != nil {
		return fmt.Errorf("decisionlog: %w", err)
	}
	return nil
}

// Health reports the writer's state (a stall, a full buffer).
func (l *Logger) Health() spool.Health { return l.spool.Health() }

// Sampled reports whether a decision is to be written: always for a deny or
// a would-deny, at the sample rate for an allow.
func (l *Logger) Sampled(allowed, wouldDeny bool) bool {
	if !allowed || wouldDeny || l.rate >= 1 {
		return true
	}
	return l.rate > 0 && rand.Float64() < l.rate
}

// Log queues e, adding the configured headers from h and removing the
// path's query and fragment. The caller decides sampling with Sampled.
// With the block overflow policy it waits for room until deadline. It
// reports whether the entry was queued (one that was not is counted).
func (l *Logger) Log(e *Entry, h policies.HeaderGetter, deadline time.Time) bool {
	e.Path = StripQuery(e.Path)
	CopyHeaders(e, l.headers, h)
	return l.spool.Put(*e, deadline)
}

// StripQuery removes the query string and fragment of a request path.
func StripQuery(p string) string {
	if i := strings.IndexAny(p, "?#"); i >= 0 {
		return p[:i]
	}
	return p
}
