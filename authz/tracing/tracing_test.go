package tracing

import (
	"context"
	"encoding/hex"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	coltrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"

	"github.com/meshguard/meshguard/policies"
)

// receiver is an OTLP trace receiver: a real gRPC server implementing the
// collector's TraceService from go.opentelemetry.io/proto/otlp.
type receiver struct {
	coltrace.UnimplementedTraceServiceServer
	mu    sync.Mutex
	spans []*tracepb.Span
}

func (r *receiver) Export(_ context.Context, req *coltrace.ExportTraceServiceRequest) (*coltrace.ExportTraceServiceResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		for _, ss := range rs.GetScopeSpans() {
			r.spans = append(r.spans, ss.GetSpans()...)
		}
	}
	return &coltrace.ExportTraceServiceResponse{}, nil
}

func newTracer(t *testing.T, ratio float64) (*Tracer, *receiver) {
	t.Helper()
	rcv := &receiver{}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	coltrace.RegisterTraceServiceServer(g, rcv)
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)
	exp, err := otlptracegrpc.New(context.Background(), otlptracegrpc.WithEndpoint(lis.Addr().String()), otlptracegrpc.WithInsecure())
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
		for _, kv := range s.GetAttributes() {
			attrs[kv.GetKey()] = kv.GetValue().GetStringValue()
		}
		if hex.EncodeToString(s.GetTraceId()) != traceHex || hex.EncodeToString(s.GetParentSpanId()) != parentHex ||
			s.GetName() != "meshguard.authz.check" || s.GetKind() != tracepb.Span_SPAN_KIND_SERVER {
			t.Errorf("span %v", s)
		}
		if attrs[AttrDecision] != "deny" || attrs[AttrReason] != "denied_no_allow_match" || attrs[AttrPolicy] != out.Policy ||
			attrs[AttrRule] != "0" || attrs[AttrIdentitySource] != "certificate" || attrs[AttrSource] != out.Source {
			t.Errorf("attributes %v", attrs)
		}
		if s.GetStatus().GetCode() == tracepb.Status_STATUS_CODE_ERROR {
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
	if len(rcv.spans) != 1 || rcv.spans[0].GetStatus().GetCode() != tracepb.Status_STATUS_CODE_ERROR || len(rcv.spans[0].GetParentSpanId()) != 0 {
		t.Errorf("spans %v", rcv.spans)
	}
	if _, err := New(Config{}); err == nil {
		t.Error("no exporter accepted")
	}
}
