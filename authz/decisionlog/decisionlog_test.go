package decisionlog

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshguard/meshguard/policies"
)

func TestLogRedactsAndStripsQuery(t *testing.T) {
	var out bytes.Buffer
	l, err := New(Config{W: &out, AllowSampleRate: 1, Headers: []string{"x-tenant", "X-Missing"}, Redact: []string{"x-api-key"}})
	if err != nil {
		t.Fatal(err)
	}
	h := policies.MapHeaders{"x-tenant": "t1", "authorization": "Bearer s3cret", "cookie": "c=s3cret", "x-api-key": "s3cret"}
	if err := l.Log(&Entry{DecisionID: "d1", Path: "/a/b?token=s3cret#frag", Reason: policies.ReasonDeniedNoMatch}, h); err != nil {
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

func TestBufferedFlushes(t *testing.T) {
	var out syncBuf
	l, _ := New(Config{W: &out, AllowSampleRate: 1, Buffer: 1 << 16})
	_ = l.Log(&Entry{DecisionID: "d1", Reason: policies.ReasonDeniedNoMatch}, nil)
	if out.Len() != 0 {
		t.Fatal("buffered line written at once")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { l.Run(ctx, 10*time.Millisecond); close(done) }()
	deadline := time.Now().Add(5 * time.Second)
	for out.Len() == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	_ = l.Log(&Entry{DecisionID: "d2", Reason: policies.ReasonDeniedNoMatch}, nil)
	cancel()
	<-done
	if !strings.Contains(out.String(), `"d1"`) || !strings.Contains(out.String(), `"d2"`) {
		t.Fatalf("lines lost: %q", out.String())
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
		{Time: time.Date(2026, 11, 24, 10, 0, 0, 123456789, time.UTC), DecisionID: "d", Protocol: "grpc", SourceMethod: "none", Reason: policies.ReasonDeniedInternal},
		{
			Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.FixedZone("x", 3600)), DecisionID: "d2", RequestID: "r", Protocol: "http",
			Source: "spiffe://td/a", SourceMethod: "principal", Peer: "spiffe://td/gw", Destination: "spiffe://td/b",
			Method: "GET", Host: "h\u00e9<&>", Path: "/p\"\\\x01", Route: "r", Scope: "s", Allowed: true,
			Reason: policies.ReasonDeniedByPolicy, Mode: policies.ModeDryRun, Policy: "p", Rule: "0", WouldDeny: true,
			Audit: true, AuditPolicy: "ap", BundleVersion: "v1", Error: "e\xff", LatencyMicros: 42,
			Headers: map[string]string{"x-b": "2", "x-a": "1"},
		},
	}
	for _, e := range entries {
		want, err := json.Marshal(&e)
		if err != nil {
			t.Fatal(err)
		}
		got := e.appendJSON(nil)
		if string(got) != string(want)+"\n" {
			t.Errorf("appendJSON =\n%s\nencoding/json =\n%s", got, want)
		}
	}
}
