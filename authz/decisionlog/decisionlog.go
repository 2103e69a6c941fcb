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
	"github.com/meshguard/meshguard/policies/wire"
)

// Entry is one decision.
type Entry struct {
	Time         time.Time `json:"time"`
	DecisionID   string    `json:"decision_id"`
	RequestID    string    `json:"request_id,omitempty"`
	TraceID      string    `json:"trace_id,omitempty"`
	Protocol     string    `json:"protocol"`
	Source       string    `json:"source,omitempty"`
	SourceMethod string    `json:"source_method"`
	// Peer is the mTLS peer, ForwardedClient the client a trusted hop
	// forwarded (see wire.Decision).
	Peer            string `json:"peer,omitempty"`
	ForwardedClient string `json:"forwarded_client,omitempty"`
	// What the engine read besides identities, for replay (see
	// wire.Decision, whose JSON this is).
	MTLS            bool              `json:"mtls,omitempty"`
	SourceIP        string            `json:"source_ip,omitempty"`
	RemoteIP        string            `json:"remote_ip,omitempty"`
	DestinationIP   string            `json:"destination_ip,omitempty"`
	DestinationPort uint32            `json:"destination_port,omitempty"`
	SNI             string            `json:"sni,omitempty"`
	Destination     string            `json:"destination,omitempty"`
	TargetNamespace string            `json:"target_namespace,omitempty"`
	TargetService   string            `json:"target_service,omitempty"`
	TargetGateway   string            `json:"target_gateway,omitempty"`
	TargetLabels    map[string]string `json:"target_labels,omitempty"`
	TargetResolved  bool              `json:"target_resolved,omitempty"`
	Method          string            `json:"method,omitempty"`
	Host            string            `json:"host,omitempty"`
	Path            string            `json:"path,omitempty"`
	Route           string            `json:"route,omitempty"`
	Scope           string            `json:"scope,omitempty"`
	JWT             *wire.DecisionJWT `json:"jwt,omitempty"`
	JWTSVID         *wire.DecisionJWT `json:"jwt_svid,omitempty"`
	Allowed         bool              `json:"allowed"`
	Reason          policies.Reason   `json:"reason"`
	Mode            policies.Mode     `json:"mode,omitempty"`
	Policy          string            `json:"policy,omitempty"`
	Rule            string            `json:"rule,omitempty"`
	WouldDeny       bool              `json:"would_deny,omitempty"`
	Audit           bool              `json:"audit,omitempty"`
	AuditPolicy     string            `json:"audit_policy,omitempty"`
	BundleVersion   string            `json:"bundle_version,omitempty"`
	Error           string            `json:"error,omitempty"`
	LatencyMicros   int64             `json:"latency_us"`
	Headers         map[string]string `json:"headers,omitempty"`
	// HeaderNames are the headers the logger copies when present: a name
	// listed here and missing from Headers was absent from the request.
	HeaderNames []string `json:"header_names,omitempty"`
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

// AppendJSON appends e as one JSON line (the decision-log line).
func (e *Entry) AppendJSON(b []byte) []byte { return e.appendJSON(b) }

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
	CopyHeaders(e, l.headers, h)
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
	opt("trace_id", e.TraceID)
	b = jsonw.Field(b, false, "protocol", e.Protocol)
	opt("source", e.Source)
	b = jsonw.Field(b, false, "source_method", e.SourceMethod)
	opt("peer", e.Peer)
	opt("forwarded_client", e.ForwardedClient)
	if e.MTLS {
		b = jsonw.Bool(b, "mtls", true)
	}
	opt("source_ip", e.SourceIP)
	opt("remote_ip", e.RemoteIP)
	opt("destination_ip", e.DestinationIP)
	if e.DestinationPort != 0 {
		b = jsonw.Int(b, "destination_port", int64(e.DestinationPort))
	}
	opt("sni", e.SNI)
	opt("destination", e.Destination)
	opt("target_namespace", e.TargetNamespace)
	opt("target_service", e.TargetService)
	opt("target_gateway", e.TargetGateway)
	b = appendMap(b, "target_labels", e.TargetLabels)
	if e.TargetResolved {
		b = jsonw.Bool(b, "target_resolved", true)
	}
	opt("method", e.Method)
	opt("host", e.Host)
	opt("path", e.Path)
	opt("route", e.Route)
	opt("scope", e.Scope)
	b = appendJWT(b, `,"jwt":{`, e.JWT)
	b = appendJWT(b, `,"jwt_svid":{`, e.JWTSVID)
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
	b = appendMap(b, "headers", e.Headers)
	if len(e.HeaderNames) > 0 {
		b = appendStrings(append(b, `,"header_names":`...), e.HeaderNames)
	}
	return append(b, '}', '\n')
}

// appendJWT appends a recorded token as the field opened by open (nothing
// for nil).
func appendJWT(b []byte, open string, j *wire.DecisionJWT) []byte {
	if j == nil {
		return b
	}
	b = append(b, open...)
	n := len(b)
	jopt := func(name, v string) {
		if v != "" {
			b = jsonw.Field(b, len(b) == n, name, v)
		}
	}
	sep := func() {
		if len(b) != n {
			b = append(b, ',')
		}
	}
	jopt("issuer", j.Issuer)
	jopt("subject", j.Subject)
	jopt("principal", j.Principal)
	if j.SVID {
		sep()
		b = append(b, `"svid":true`...)
	}
	if len(j.Audiences) > 0 {
		sep()
		b = appendStrings(append(b, `"audiences":`...), j.Audiences)
	}
	jopt("presenter", j.Presenter)
	if len(j.Claims) > 0 {
		sep()
		b = append(append(b, `"claims":`...), j.Claims...)
	}
	if len(j.ClaimNames) > 0 {
		sep()
		b = appendStrings(append(b, `"claim_names":`...), j.ClaimNames)
	}
	return append(b, '}')
}

// appendMap appends `,"name":{...}` with sorted keys, as encoding/json
// does; nothing for an empty map.
func appendMap(b []byte, name string, m map[string]string) []byte {
	if len(m) == 0 {
		return b
	}
	names := make([]string, 0, len(m))
	for k := range m {
		names = append(names, k)
	}
	sort.Strings(names)
	b = append(b, ',', '"')
	b = append(b, name...)
	b = append(b, `":{`...)
	for i, k := range names {
		b = jsonw.Field(b, i == 0, k, m[k])
	}
	return append(b, '}')
}

// appendStrings appends a JSON array of strings.
func appendStrings(b []byte, ss []string) []byte {
	b = append(b, '[')
	for i, s := range ss {
		if i > 0 {
			b = append(b, ',')
		}
		b = jsonw.String(b, s)
	}
	return append(b, ']')
}

// StripQuery removes the query string and fragment of a request path.
func StripQuery(p string) string {
	if i := strings.IndexAny(p, "?#"); i >= 0 {
		return p[:i]
	}
	return p
}
