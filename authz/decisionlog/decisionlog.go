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
	"sort"
	"strings"
	"time"

	"github.com/meshguard/meshguard/internal/jsonw"
	"github.com/meshguard/meshguard/internal/spool"
	"github.com/meshguard/meshguard/policies"
)

// Entry is one decision.
type Entry struct {
	Time          time.Time         `json:"time"`
	DecisionID    string            `json:"decision_id"`
	RequestID     string            `json:"request_id,omitempty"`
	Protocol      string            `json:"protocol"`
	Source        string            `json:"source,omitempty"`
	SourceMethod  string            `json:"source_method"`
	Peer          string            `json:"peer,omitempty"`
	Destination   string            `json:"destination,omitempty"`
	Method        string            `json:"method,omitempty"`
	Host          string            `json:"host,omitempty"`
	Path          string            `json:"path,omitempty"`
	Route         string            `json:"route,omitempty"`
	Scope         string            `json:"scope,omitempty"`
	Allowed       bool              `json:"allowed"`
	Reason        policies.Reason   `json:"reason"`
	Mode          policies.Mode     `json:"mode,omitempty"`
	Policy        string            `json:"policy,omitempty"`
	Rule          string            `json:"rule,omitempty"`
	WouldDeny     bool              `json:"would_deny,omitempty"`
	Audit         bool              `json:"audit,omitempty"`
	AuditPolicy   string            `json:"audit_policy,omitempty"`
	BundleVersion string            `json:"bundle_version,omitempty"`
	Error         string            `json:"error,omitempty"`
	LatencyMicros int64             `json:"latency_us"`
	Headers       map[string]string `json:"headers,omitempty"`
}

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
	redact := map[string]bool{}
	for _, h := range append(append([]string{}, neverLogged...), cfg.Redact...) {
		redact[strings.ToLower(h)] = true
	}
	var hs []string
	for _, h := range cfg.Headers {
		h = strings.ToLower(strings.TrimSpace(h))
		if redact[h] {
			return nil, fmt.Errorf("decisionlog: header %q carries credentials and is never logged", h)
		}
		hs = append(hs, h)
	}
	w := &lineWriter{w: cfg.W}
	l := &Logger{rate: cfg.AllowSampleRate, headers: hs}
	l.spool = spool.New[Entry](w, spool.Options{
		Capacity: cfg.Buffer, Overflow: cfg.Overflow, StallAfter: cfg.StallAfter, Metrics: cfg.Metrics,
	})
	l.spool.Start()
	return l, nil
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
		b = batch[i].appendJSON(b)
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
	if h != nil && len(l.headers) > 0 {
		e.Headers = make(map[string]string, len(l.headers))
		for _, name := range l.headers {
			if v, ok := h.Get(name); ok {
				e.Headers[name] = v
			}
		}
	}
	return l.spool.Put(*e, deadline)
}

// appendJSON encodes e as one line; it writes what json.Marshal would (the
// tests compare the two) without reflection.
func (e *Entry) appendJSON(b []byte) []byte {
	b = append(b, '{')
	b = jsonw.Field(b, true, "time", e.Time.Format(time.RFC3339Nano))
	b = jsonw.Field(b, false, "decision_id", e.DecisionID)
	opt := func(name, v string) {
		if v != "" {
			b = jsonw.Field(b, false, name, v)
		}
	}
	opt("request_id", e.RequestID)
	b = jsonw.Field(b, false, "protocol", e.Protocol)
	opt("source", e.Source)
	b = jsonw.Field(b, false, "source_method", e.SourceMethod)
	opt("peer", e.Peer)
	opt("destination", e.Destination)
	opt("method", e.Method)
	opt("host", e.Host)
	opt("path", e.Path)
	opt("route", e.Route)
	opt("scope", e.Scope)
	b = jsonw.Bool(b, "allowed", e.Allowed)
	b = jsonw.Field(b, false, "reason", string(e.Reason))
	opt("mode", string(e.Mode))
	opt("policy", e.Policy)
	opt("rule", e.Rule)
	if e.WouldDeny {
		b = jsonw.Bool(b, "would_deny", true)
	}
	if e.Audit {
		b = jsonw.Bool(b, "audit", true)
	}
	opt("audit_policy", e.AuditPolicy)
	opt("bundle_version", e.BundleVersion)
	opt("error", e.Error)
	b = jsonw.Int(b, "latency_us", e.LatencyMicros)
	if len(e.Headers) > 0 {
		names := make([]string, 0, len(e.Headers))
		for k := range e.Headers {
			names = append(names, k)
		}
		sort.Strings(names)
		b = append(b, `,"headers":{`...)
		for i, k := range names {
			b = jsonw.Field(b, i == 0, k, e.Headers[k])
		}
		b = append(b, '}')
	}
	return append(b, '}', '\n')
}

// StripQuery removes the query string and fragment of a request path.
func StripQuery(p string) string {
	if i := strings.IndexAny(p, "?#"); i >= 0 {
		return p[:i]
	}
	return p
}
