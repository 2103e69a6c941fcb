// Package decisionlog writes one JSON line per authorization decision.
//
// Denies are always written; allows are sampled at a configured rate. The
// path is written without its query string and fragment. Headers are
// written only when named in the configuration, and never the ones that
// carry credentials (authorization, proxy-authorization, cookie,
// set-cookie, x-forwarded-client-cert, the JWT-SVID header) or that the
// operator lists as redacted: such a name in the include list is an error.
package decisionlog

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/meshguard/meshguard/internal/jsonw"
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
	// W receives the lines; writes are serialized.
	W io.Writer
	// AllowSampleRate is the fraction of allowed decisions written, in
	// [0, 1]. Denies and dry-run would-denies are always written.
	AllowSampleRate float64
	// Headers are lowercase header names copied into each entry.
	Headers []string
	// Redact are header names that must never be written (in addition to
	// the built-in credential headers).
	Redact []string
	// Buffer, when positive, batches lines in a buffer of that many bytes
	// that is written when full and on Flush: one write per batch rather
	// than per decision. The owner must call Flush periodically and Close
	// at shutdown.
	Buffer int
}

// neverLogged are credential headers that are never written.
var neverLogged = []string{"authorization", "proxy-authorization", "cookie", "set-cookie", "x-forwarded-client-cert"}

// Logger writes entries. Safe for concurrent use.
type Logger struct {
	mu      sync.Mutex
	w       io.Writer
	buf     *bufio.Writer
	rate    float64
	headers []string
}

// New validates cfg and returns a Logger.
func New(cfg Config) (*Logger, error) {
	if cfg.W == nil {
		return nil, fmt.Errorf("decisionlog: no writer")
	}
	if cfg.AllowSampleRate < 0 || cfg.AllowSampleRate > 1 {
		return nil, fmt.Errorf("decisionlog: allow sample rate %v not in [0, 1]", cfg.AllowSampleRate)
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
	l := &Logger{w: cfg.W, rate: cfg.AllowSampleRate, headers: hs}
	if cfg.Buffer > 0 {
		l.buf = bufio.NewWriterSize(cfg.W, cfg.Buffer)
		l.w = l.buf
	}
	return l, nil
}

// Flush writes buffered lines.
func (l *Logger) Flush() error {
	if l.buf == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.buf.Flush(); err != nil {
		return fmt.Errorf("decisionlog: flush: %w", err)
	}
	return nil
}

// Run flushes every interval until ctx is done, then flushes once more.
func (l *Logger) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			_ = l.Flush()
			return
		case <-t.C:
			_ = l.Flush()
		}
	}
}

// Sampled reports whether a decision is to be written: always for a deny or
// a would-deny, at the sample rate for an allow.
func (l *Logger) Sampled(allowed, wouldDeny bool) bool {
	if !allowed || wouldDeny || l.rate >= 1 {
		return true
	}
	return l.rate > 0 && rand.Float64() < l.rate
}

// Log writes e, adding the configured headers from h and removing the
// path's query and fragment. The caller decides sampling with Sampled.
func (l *Logger) Log(e *Entry, h policies.HeaderGetter) error {
	e.Path = StripQuery(e.Path)
	if h != nil && len(l.headers) > 0 {
		e.Headers = make(map[string]string, len(l.headers))
		for _, name := range l.headers {
			if v, ok := h.Get(name); ok {
				e.Headers[name] = v
			}
		}
	}
	line := e.appendJSON(make([]byte, 0, 512))
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, err := l.w.Write(line); err != nil {
		return fmt.Errorf("decisionlog: write: %w", err)
	}
	return nil
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
