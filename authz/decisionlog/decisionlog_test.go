package decisionlog

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/meshguard/meshguard/internal/spool"
	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/wire"
)

func TestLogRedactsAndStripsQuery(t *testing.T) {
	var out syncBuf
	l, err := New(Config{W: &out, AllowSampleRate: 1, Headers: []string{"x-tenant", "X-Missing"}, Redact: []string{"x-api-key"}})
	if err != nil {
		t.Fatal(err)
	}
	h := policies.MapHeaders{"x-tenant": "t1", "authorization": "Bearer s3cret", "cookie": "c=s3cret", "x-api-key": "s3cret"}
	if !l.Log(&Entry{DecisionID: "d1", Path: "/a/b?token=s3cret#frag", Reason: string(policies.ReasonDeniedNoMatch)}, h, time.Time{}) {
		t.Fatal("entry not queued")
	}
	if err := l.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	line := out.String()
	if strings.Contains(line, "s3cret") {
		t.Fatalf("credential or query written: %s", line)
	}
	var e Entry
	if err := json.Unmarshal([]byte(line), &e); err != nil {
		t.Fatal(err)
	}
	if e.Path != "/a/b" || e.Headers["x-tenant"] != "t1" || len(e.Headers) != 1 {
		t.Errorf("entry = %+v", e)
	}
}

func TestNewRefusesCredentialHeaders(t *testing.T) {
	for _, h := range []string{"Authorization", "cookie", "set-cookie", "proxy-authorization", "x-forwarded-client-cert", "x-api-key"} {
		if _, err := New(Config{W: &bytes.Buffer{}, Headers: []string{h}, Redact: []string{"x-api-key"}}); err == nil {
			t.Errorf("header %q accepted for logging", h)
		}
	}
	if _, err := New(Config{W: &bytes.Buffer{}, AllowSampleRate: 1.5}); err == nil {
		t.Error("sample rate 1.5 accepted")
	}
}

func TestSampling(t *testing.T) {
	l, _ := New(Config{W: &bytes.Buffer{}, AllowSampleRate: 0})
	if l.Sampled(true, false) {
		t.Error("allow logged at rate 0")
	}
	if !l.Sampled(false, false) || !l.Sampled(true, true) {
		t.Error("deny or would-deny not logged at rate 0")
	}
	l, _ = New(Config{W: &bytes.Buffer{}, AllowSampleRate: 0.5})
	n := 0
	for i := 0; i < 10000; i++ {
		if l.Sampled(true, false) {
			n++
		}
	}
	if n < 4000 || n > 6000 {
		t.Errorf("sampled %d of 10000 at rate 0.5", n)
	}
}

// TestCloseWritesEverything: entries queued before Close are all written,
// in order, by the time Close returns; later ones are refused and counted.
func TestCloseWritesEverything(t *testing.T) {
	var out syncBuf
	l, _ := New(Config{W: &out, AllowSampleRate: 1, Buffer: 16})
	const n = 1000
	for i := range n {
		e := &Entry{DecisionID: fmt.Sprintf("d%d", i), Reason: string(policies.ReasonDeniedNoMatch)}
		for !l.Log(e, nil, time.Time{}) {
			// Drop policy with a small buffer: retry, as a test only can.
			time.Sleep(time.Millisecond)
		}
	}
	if err := l.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != n {
		t.Fatalf("%d lines written, want %d", len(lines), n)
	}
	for i, line := range lines {
		if !strings.Contains(line, fmt.Sprintf(`"decision_id":"d%d"`, i)) {
			t.Fatalf("line %d = %s", i, line)
		}
	}
	if l.Log(&Entry{DecisionID: "late"}, nil, time.Time{}) {
		t.Error("entry queued after Close")
	}
	if h := l.Health(); h.Written != n || h.Dropped < 1 {
		t.Errorf("health after close = %+v", h)
	}
}

// stuckWriter blocks every write until released, as a pipe nobody reads.
type stuckWriter struct{ release chan struct{} }

func (w stuckWriter) Write(p []byte) (int, error) { <-w.release; return len(p), nil }

// TestStalledWriterNeverBlocksLog: with the drop policy a stalled sink
// costs decisions (counted), never time; Health reports the stall.
func TestStalledWriterNeverBlocksLog(t *testing.T) {
	w := stuckWriter{release: make(chan struct{})}
	reg := prometheus.NewRegistry()
	m, err := spool.NewMetrics(reg, "authz", "decision_log")
	if err != nil {
		t.Fatal(err)
	}
	l, _ := New(Config{W: w, AllowSampleRate: 1, Buffer: 8, StallAfter: 20 * time.Millisecond, Metrics: m})
	// One entry first, taken by the writer, which then hangs writing it
	// (a stall once StallAfter has passed): from then on only the buffer
	// can take entries.
	if !l.Log(&Entry{DecisionID: "first"}, nil, time.Now().Add(time.Second)) {
		t.Fatal("the first entry was not queued")
	}
	for deadline := time.Now().Add(5 * time.Second); !l.Health().Stalled; {
		if time.Now().After(deadline) {
			t.Fatal("the writer never stalled on the first entry")
		}
		time.Sleep(time.Millisecond)
	}
	start := time.Now()
	queued := 1
	for i := range 100 {
		if l.Log(&Entry{DecisionID: fmt.Sprint(i)}, nil, time.Now().Add(time.Second)) {
			queued++
		}
	}
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Errorf("100 logs took %s with a stalled writer", d)
	}
	if queued != 1+8 { // the entry being written and a full buffer
		t.Errorf("%d entries queued with a buffer of 8 behind a stalled write, want 9", queued)
	}
	if got := testutil.ToFloat64(m.Dropped("overflow")); got != float64(101-queued) {
		t.Errorf("dropped{overflow} = %v, want %d", got, 101-queued)
	}
	time.Sleep(40 * time.Millisecond)
	if h := l.Health(); !h.Stalled || h.Err() == nil {
		t.Errorf("health = %+v, want a stall", h)
	}
	close(w.release)
	if err := l.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if h := l.Health(); h.Stalled || h.Written != uint64(queued) {
		t.Errorf("health after release = %+v, want %d written", h, queued)
	}
}

// TestBlockPolicyWaitsUntilTheDeadline: with the block policy a full
// buffer holds the caller until its deadline, not longer.
func TestBlockPolicyWaitsUntilTheDeadline(t *testing.T) {
	w := stuckWriter{release: make(chan struct{})}
	l, _ := New(Config{W: w, AllowSampleRate: 1, Buffer: 1, Overflow: spool.Block})
	// Fill the writer and the buffer: a zero deadline never waits.
	for i := 0; l.Log(&Entry{DecisionID: fmt.Sprint(i)}, nil, time.Time{}) || i < 2; i++ {
		time.Sleep(time.Millisecond)
	}
	start := time.Now()
	ok := l.Log(&Entry{DecisionID: "late"}, nil, start.Add(50*time.Millisecond))
	d := time.Since(start)
	if ok || d < 45*time.Millisecond || d > time.Second {
		t.Errorf("blocked log returned %v after %s, want false after ~50ms", ok, d)
	}
	close(w.release)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := l.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestCloseGivesUpAtTheDeadline: a sink that never returns cannot hold
// the shutdown past its deadline; what was not written is counted.
func TestCloseGivesUpAtTheDeadline(t *testing.T) {
	w := stuckWriter{release: make(chan struct{})}
	t.Cleanup(func() { close(w.release) })
	l, _ := New(Config{W: w, AllowSampleRate: 1, Buffer: 8})
	for i := range 5 {
		l.Log(&Entry{DecisionID: fmt.Sprint(i)}, nil, time.Time{})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err := l.Close(ctx)
	if err == nil || !strings.Contains(err.Error(), "not written") {
		t.Fatalf("Close = %v, want an error counting unwritten entries", err)
	}
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) Len() int                    { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Len() }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// TestEncodingMatchesEncodingJSON: the hand-written encoder writes exactly
// what encoding/json writes for the same entry.
func TestEncodingMatchesEncodingJSON(t *testing.T) {
	entries := []Entry{
		{Time: time.Date(2026, 11, 24, 10, 0, 0, 123456789, time.UTC), DecisionID: "d", Protocol: "grpc", SourceMethod: "none", Reason: string(policies.ReasonDeniedInternal)},
		{
			Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.FixedZone("x", 3600)), DecisionID: "d2", RequestID: "r", Protocol: "http",
			Source: "spiffe://td/a", SourceMethod: "principal", Peer: "spiffe://td/gw", Destination: "spiffe://td/b",
			Method: "GET", Host: "h\u00e9<&>", Path: "/p\"\\\x01", Route: "r", Scope: "s", Allowed: true,
			Reason: string(policies.ReasonDeniedByPolicy), Mode: string(policies.ModeDryRun), Policy: "p", Rule: "0", WouldDeny: true,
			Audit: true, AuditPolicy: "ap", BundleVersion: "v1", Error: "e\xff", LatencyMicros: 42,
			Headers: map[string]string{"x-b": "2", "x-a": "1"},
		},
		fullEntry(),
		{Time: time.Unix(1, 0).UTC(), DecisionID: "d3", Protocol: "grpc", SourceMethod: "jwt",
			JWT: &wire.DecisionJWT{Presenter: "p"}, HeaderNames: []string{"x-a"}},
		{Time: time.Unix(1, 0).UTC(), DecisionID: "d4", Protocol: "grpc", SourceMethod: "jwt",
			JWT: &wire.DecisionJWT{Audiences: []string{"a"}}},
		{Time: time.Unix(1, 0).UTC(), DecisionID: "d5", Protocol: "grpc", SourceMethod: "none",
			JWT: &wire.DecisionJWT{SVID: true}},
		{Time: time.Unix(1, 0).UTC(), DecisionID: "d6", Protocol: "grpc", SourceMethod: "none",
			JWT: &wire.DecisionJWT{Claims: wire.RawJSON(`{"a":1}`)}},
		{Time: time.Unix(1, 0).UTC(), DecisionID: "d7", Protocol: "grpc", SourceMethod: "none",
			JWT: &wire.DecisionJWT{ClaimNames: []string{"a"}}},
	}
	for _, e := range entries {
		want, err := json.Marshal(&e)
		if err != nil {
			t.Fatal(err)
		}
		got := e.AppendJSON(nil)
		if string(got) != string(want)+"\n" {
			t.Errorf("AppendJSON =\n%s\nencoding/json =\n%s", got, want)
		}
	}
}

// fullEntry sets every field.
func fullEntry() Entry {
	return Entry{
		Time: time.Date(2026, 3, 4, 5, 6, 7, 8, time.UTC), DecisionID: "id", RequestID: "req", TraceID: "0af7651916cd43dd8448eb211c80319c",
		Protocol: "grpc", Source: "spiffe://td/ns/a/sa/x", SourceMethod: "xfcc", Peer: "spiffe://td/ns/gw/sa/gw", ForwardedClient: "spiffe://td/ns/a/sa/x",
		MTLS: true, SourceIP: "10.0.0.1", RemoteIP: "192.0.2.7", DestinationIP: "10.0.0.2", DestinationPort: 8080, SNI: "api.td",
		Destination: "spiffe://td/ns/b/sa/y", TargetNamespace: "b", TargetService: "y", TargetGateway: "gw",
		TargetLabels: map[string]string{"app": "y", "version": "v1"}, TargetResolved: true,
		Method: "POST", Host: "y.b:8080", Path: "/v1/x", Route: "y-api", Scope: "b/y",
		JWT: &wire.DecisionJWT{Issuer: "iss", Subject: "spiffe://td/ns/a/sa/x", Principal: "iss/spiffe://td/ns/a/sa/x", SVID: true,
			Audiences: []string{"a", "b"}, Presenter: "azp", Claims: wire.RawJSON(`{"groups":["g1","g2"],"tier":"gold"}`), ClaimNames: []string{"groups", "team", "tier"}},
		JWTSVID: &wire.DecisionJWT{Issuer: "iss2", Subject: "spiffe://td/ns/a/sa/x2", Principal: "iss2/spiffe://td/ns/a/sa/x2", SVID: true,
			Audiences: []string{"c"}, Presenter: "azp2", Claims: wire.RawJSON(`{"tier":"silver"}`), ClaimNames: []string{"tier"}},
		Allowed: false, Reason: string(policies.ReasonDeniedNoMatch), Mode: string(policies.ModeEnforce), Policy: "AuthorizationPolicy/b/y", Rule: "1",
		Audit: true, AuditPolicy: "AuthorizationPolicy/b/audit", BundleVersion: "3-abc", Error: "e", LatencyMicros: 17,
		Headers: map[string]string{"x-tenant": "t1"}, HeaderNames: []string{"x-tenant", "x-ticket"},
	}
}

// TestEntryIsTheWireDecision: a decision-log line is a wire.Decision, field
// for field, so that the control plane's store and policy replay read what
// authz servers write. Decoding is strict (a field wire.Decision lacks
// fails) and the re-encoding is byte for byte the line.
func TestEntryIsTheWireDecision(t *testing.T) {
	e := fullEntry()
	line := e.AppendJSON(nil)
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	var d wire.Decision
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("decision-log line does not decode as wire.Decision: %v\n%s", err, line)
	}
	back, err := json.Marshal(&d)
	if err != nil {
		t.Fatal(err)
	}
	if string(back)+"\n" != string(line) {
		t.Errorf("wire.Decision re-encodes differently:\n%s\n%s", back, line)
	}
	// Every field of wire.Decision is set by fullEntry (none left at its
	// zero value, so a field added to one side only fails here).
	v := reflect.ValueOf(d)
	for i := 0; i < v.NumField(); i++ {
		if v.Field(i).IsZero() && v.Type().Field(i).Name != "Allowed" && v.Type().Field(i).Name != "WouldDeny" {
			t.Errorf("wire.Decision.%s is not carried by the decision-log line", v.Type().Field(i).Name)
		}
	}
}
