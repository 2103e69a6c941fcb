package server

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/meshguard/meshguard/authz/identity"
	"github.com/meshguard/meshguard/authz/tracing"
	"github.com/meshguard/meshguard/policies/wire"
)

// TestCheckSpans: with tracing on, a check joins the traceparent Envoy
// sent, its span carries the decision, and the decision-log line carries
// the trace ID; with tracing off, neither happens.
func TestCheckSpans(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tr, err := tracing.New(tracing.Config{Exporter: exp, Options: []sdktrace.TracerProviderOption{sdktrace.WithSyncer(exp)}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tr.Shutdown(context.Background()) })
	on := newEnv(t, func(c *Config, _ *identity.Config) { c.Tracer = tr })
	on.load(t, "v1", testSet())
	const traceHex, parentHex = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	req := withPrincipal(envoyRequest("GET", "/admin", map[string]string{"traceparent": "00-" + traceHex + "-" + parentHex + "-01"}), idFrontend.String())
	on.check(t, req)
	spans := exp.GetSpans() // exported at End by the syncer
	if len(spans) == 0 {
		t.Fatal("no span")
	}
	s := spans[len(spans)-1]
	attrs := map[string]string{}
	for _, kv := range s.Attributes {
		attrs[string(kv.Key)] = kv.Value.AsString()
	}
	if s.SpanContext.TraceID().String() != traceHex || s.Parent.SpanID().String() != parentHex || attrs[tracing.AttrReason] == "" ||
		attrs[tracing.AttrDecision] == "" || attrs[tracing.AttrIdentitySource] != "principal" || attrs[tracing.AttrSource] != idFrontend.String() {
		t.Errorf("span %s parent %s attributes %v", s.SpanContext.TraceID(), s.Parent.SpanID(), attrs)
	}
	var line wire.Decision
	logged := on.decisionLog("\n") // written by the log's flusher, after the answer
	if err := json.Unmarshal([]byte(strings.TrimSpace(logged)), &line); err != nil || line.TraceID != traceHex {
		t.Errorf("decision log %q: trace id %q (%v)", logged, line.TraceID, err)
	}

	off := newEnv(t)
	off.load(t, "v1", testSet())
	off.check(t, req)
	if logged := off.decisionLog("\n"); !strings.Contains(logged, "\n") || strings.Contains(logged, "trace_id") {
		t.Errorf("tracing off: decision log %q, want one line without a trace id", logged)
	}
}
