package tracing

import (
	"context"
	"encoding/hex"
	"errors"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/ptrace"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"

	"github.com/meshguard/meshguard/internal/testbed/otlprecv"
	"github.com/meshguard/meshguard/policies"
)

// receiver keeps what the OpenTelemetry Collector's own OTLP receiver
// (internal/testbed/otlprecv) accepted.
type receiver struct {
	mu    sync.Mutex
	spans []ptrace.Span
}

func (r *receiver) consume(_ context.Context, td ptrace.Traces) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := 0; i < td.ResourceSpans().Len(); i++ {
		sss := td.ResourceSpans().At(i).ScopeSpans()
		for j := 0; j < sss.Len(); j++ {
			spans := sss.At(j).Spans()
			for k := 0; k < spans.Len(); k++ {
				r.spans = append(r.spans, spans.At(k))
			}
		}
	}
	return nil
}

func newTracer(t *testing.T, ratio float64) (*Tracer, *receiver) {
	t.Helper()
	rcv := &receiver{}
	addr := otlprecv.Traces(t, rcv.consume)
	exp, err := otlptracegrpc.New(context.Background(), otlptracegrpc.WithEndpoint(addr), otlptracegrpc.WithInsecure())
	if err != nil {
		t.Fatal(err)
	}
	tr, err := New(Config{Exporter: exp, SampleRatio: ratio})
	if err != nil {
		t.Fatal(err)
	}
	return tr, rcv
}

const (
	traceHex  = "4bf92f3577b34da6a3ce929d0e0e4736"
	parentHex = "00f067aa0ba902b7"
)

// TestJoinsPropagatedTraces: a check joins the W3C or B3 trace of its
// request (same trace ID, parent = Envoy's span) and the span reaches a
// real OTLP receiver with the decision's attributes; an unsampled trace is
// joined but not recorded; a request without a trace is a root sampled at
// the ratio.
func TestJoinsPropagatedTraces(t *testing.T) {
	tr, rcv := newTracer(t, 0)
	out := Outcome{Decision: "deny", Reason: string(policies.ReasonDeniedNoMatch), Policy: "AuthorizationPolicy/shop/api", Rule: "0",
		Mode: "enforce", IdentitySource: "certificate", Source: "spiffe://td/ns/web/sa/frontend", DecisionID: "d-1"}
	for _, tc := range []struct {
		name    string
		headers policies.MapHeaders
		want    string // trace ID returned; "" none
	}{
		{"traceparent", policies.MapHeaders{"traceparent": "00-" + traceHex + "-" + parentHex + "-01"}, traceHex},
		{"b3 single", policies.MapHeaders{"b3": traceHex + "-" + parentHex + "-1"}, traceHex},
		{"b3 multi", policies.MapHeaders{"x-b3-traceid": traceHex, "x-b3-spanid": parentHex, "x-b3-sampled": "1"}, traceHex},
		{"unsampled traceparent", policies.MapHeaders{"traceparent": "00-" + traceHex + "-" + parentHex + "-00"}, traceHex},
		{"no trace, ratio 0", policies.MapHeaders{}, ""},
		{"malformed traceparent", policies.MapHeaders{"traceparent": "00-zz-" + parentHex + "-01"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, span := tr.Start(context.Background(), tc.headers)
			if got := tr.End(span, out); got != tc.want {
				t.Errorf("trace id %q, want %q", got, tc.want)
			}
		})
	}
	if err := tr.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	rcv.mu.Lock()
	defer rcv.mu.Unlock()
	if len(rcv.spans) != 3 {
		t.Fatalf("%d spans exported, want the 3 sampled ones", len(rcv.spans))
	}
	for _, s := range rcv.spans {
		attrs := map[string]string{}
		s.Attributes().Range(func(k string, v pcommon.Value) bool { attrs[k] = v.Str(); return true })
		tid, pid := s.TraceID(), s.ParentSpanID()
		if hex.EncodeToString(tid[:]) != traceHex || hex.EncodeToString(pid[:]) != parentHex ||
			s.Name() != "meshguard.authz.check" || s.Kind() != ptrace.SpanKindServer {
			t.Errorf("span %s %s %s %v", hex.EncodeToString(tid[:]), hex.EncodeToString(pid[:]), s.Name(), s.Kind())
		}
		if attrs[AttrDecision] != "deny" || attrs[AttrReason] != "denied_no_allow_match" || attrs[AttrPolicy] != out.Policy ||
			attrs[AttrRule] != "0" || attrs[AttrIdentitySource] != "certificate" || attrs[AttrSource] != out.Source {
			t.Errorf("attributes %v", attrs)
		}
		if s.Status().Code() == ptrace.StatusCodeError {
			t.Error("a deny is not an error")
		}
	}
}

func TestRootSamplingAndErrors(t *testing.T) {
	tr, rcv := newTracer(t, 1)
	_, span := tr.Start(context.Background(), nil)
	if id := tr.End(span, Outcome{Decision: "deny", Reason: "denied_timeout", Err: errors.New("deadline")}); len(id) != 32 {
		t.Errorf("sampled root trace id %q", id)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := tr.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	rcv.mu.Lock()
	defer rcv.mu.Unlock()
	if len(rcv.spans) != 1 || rcv.spans[0].Status().Code() != ptrace.StatusCodeError || !rcv.spans[0].ParentSpanID().IsEmpty() {
		t.Errorf("%d spans; want one root span with an error status", len(rcv.spans))
	}
	if _, err := New(Config{}); err == nil {
		t.Error("no exporter accepted")
	}
}
