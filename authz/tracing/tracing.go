// Package tracing records a span per authorization check in the trace that
// Envoy propagates with the request (W3C traceparent/tracestate, or B3 in
// its single-header or multi-header form, read from the CheckRequest's
// headers), with the decision, reason, policy, rule and how the caller was
// identified as attributes, and exports the spans with the OpenTelemetry
// SDK over OTLP. It is off unless configured: the server then never calls
// it, and a check costs what it cost before.
package tracing

import (
	"context"
	"errors"
	"fmt"

	"go.opentelemetry.io/contrib/propagators/b3"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// Config configures a Tracer.
type Config struct {
	// Exporter receives the finished spans (otlptracegrpc.New in the
	// command; tests pass their own).
	Exporter sdktrace.SpanExporter
	// SampleRatio samples checks that arrive without a sampled trace
	// (roots), in [0, 1]. A check whose trace Envoy sampled is always
	// recorded; one whose trace was not sampled never is.
	SampleRatio float64
	// Options are more TracerProvider options (the resource).
	Options []sdktrace.TracerProviderOption
}

// Tracer starts and ends check spans. Safe for concurrent use.
type Tracer struct {
	provider *sdktrace.TracerProvider
	tracer   trace.Tracer
	prop     propagation.TextMapPropagator
}

// New returns a Tracer exporting through cfg.Exporter in batches.
func New(cfg Config) (*Tracer, error) {
	if cfg.Exporter == nil {
		return nil, errors.New("tracing: no exporter")
	}
	if cfg.SampleRatio < 0 || cfg.SampleRatio > 1 {
		return nil, fmt.Errorf("tracing: sample ratio %v not in [0, 1]", cfg.SampleRatio)
	}
	opts := append([]sdktrace.TracerProviderOption{
		sdktrace.WithBatcher(cfg.Exporter),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(cfg.SampleRatio))),
	}, cfg.Options...)
	tp := sdktrace.NewTracerProvider(opts...)
	return &Tracer{
		provider: tp,
		tracer:   tp.Tracer("github.com/meshguard/meshguard/authz"),
		// W3C first; B3 single and multi header (Envoy's Zipkin tracer).
		prop: propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, b3.New(b3.WithInjectEncoding(b3.B3MultipleHeader|b3.B3SingleHeader))),
	}, nil
}

// Headers gives the request's headers by lowercase name.
type Headers interface {
	Get(name string) (string, bool)
}

type carrier struct{ h Headers }

func (c carrier) Get(key string) string {
	v, _ := c.h.Get(key)
	return v
}
func (carrier) Set(string, string) {}
func (carrier) Keys() []string     { return nil }

// Span is a check's span.
type Span struct {
	span trace.Span
	// joined: the request carried a trace.
	joined bool
}

// Start begins the span of a check, as a child of the trace in the
// request's headers (a new root when there is none).
func (t *Tracer) Start(ctx context.Context, h Headers) (context.Context, Span) {
	if h != nil {
		ctx = t.prop.Extract(ctx, carrier{h})
	}
	joined := trace.SpanContextFromContext(ctx).IsValid()
	ctx, span := t.tracer.Start(ctx, "meshguard.authz.check", trace.WithSpanKind(trace.SpanKindServer))
	return ctx, Span{span: span, joined: joined}
}

// Attribute keys of a check span.
const (
	AttrDecision       = "meshguard.decision" // allow, deny, would_deny
	AttrReason         = "meshguard.reason"
	AttrPolicy         = "meshguard.policy"
	AttrRule           = "meshguard.rule"
	AttrMode           = "meshguard.mode"
	AttrIdentitySource = "meshguard.identity.source" // principal, certificate, xfcc, jwt, none
	AttrSource         = "meshguard.source.spiffe_id"
	AttrDestination    = "meshguard.destination.spiffe_id"
	AttrDecisionID     = "meshguard.decision_id"
	AttrBundleVersion  = "meshguard.bundle_version"
)

// Outcome is what a check span records.
type Outcome struct {
	Decision, Reason, Policy, Rule, Mode, IdentitySource string
	Source, Destination, DecisionID, BundleVersion       string
	// Err is set on error paths (timeouts, internal errors, invalid
	// requests): the span's status is then Error. A deny is not an error.
	Err error
}

// End records the outcome and ends the span; it returns the trace ID (hex)
// when the check joined a trace or its span was sampled (else "": the
// decision record links to no trace).
func (t *Tracer) End(s Span, o Outcome) string {
	span := s.span
	if span.IsRecording() {
		attrs := make([]attribute.KeyValue, 0, 10)
		for _, kv := range [...]struct{ k, v string }{
			{AttrDecision, o.Decision}, {AttrReason, o.Reason}, {AttrPolicy, o.Policy}, {AttrRule, o.Rule}, {AttrMode, o.Mode},
			{AttrIdentitySource, o.IdentitySource}, {AttrSource, o.Source}, {AttrDestination, o.Destination},
			{AttrDecisionID, o.DecisionID}, {AttrBundleVersion, o.BundleVersion},
		} {
			if kv.v != "" {
				attrs = append(attrs, attribute.String(kv.k, kv.v))
			}
		}
		span.SetAttributes(attrs...)
		if o.Err != nil {
			span.SetStatus(codes.Error, o.Err.Error())
		}
	}
	span.End()
	if sc := span.SpanContext(); sc.TraceID().IsValid() && (s.joined || sc.IsSampled()) {
		return sc.TraceID().String()
	}
	return ""
}

// Shutdown exports what is pending and stops.
func (t *Tracer) Shutdown(ctx context.Context) error { return t.provider.Shutdown(ctx) }
