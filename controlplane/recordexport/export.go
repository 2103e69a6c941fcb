// Package recordexport sends the control plane's records (decisions,
// detections, quarantines, releases, policy changes) as OpenTelemetry logs
// over OTLP to the user's collector, and from there to whatever log backend
// they run (Loki, Elasticsearch, ClickHouse): the same records the record
// store keeps, for meshes that outgrow one machine.
//
// It is built on the OpenTelemetry Go SDK (go.opentelemetry.io/otel/sdk/log)
// with an OTLP exporter (otlploggrpc). Append never blocks: records wait in
// a bounded queue, and what it cannot hold, or what the collector does not
// take after the exporter's retries, is dropped and counted
// (meshguard_controlplane_records_export_dropped_total).
package recordexport

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	otellog "go.opentelemetry.io/otel/log"
	sdklog "go.opentelemetry.io/otel/sdk/log"
	"go.opentelemetry.io/otel/sdk/resource"
	"go.opentelemetry.io/otel/trace"

	"github.com/meshguard/meshguard/controlplane/record"
)

// Options configure an Exporter.
type Options struct {
	// Exporter is the OTLP exporter (otlploggrpc.New or otlploghttp.New).
	Exporter sdklog.Exporter
	// Queue bounds the records waiting to be exported (default 20,000).
	Queue int
	// Batch is the most records per export (default 512).
	Batch int
	// Interval is the longest a record waits for its batch (default 1s).
	Interval time.Duration
	// Resource describes the control plane (service.name and so on).
	Resource *resource.Resource

	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Exporter queues and exports records. Safe for concurrent use.
type Exporter struct {
	opts     Options
	log      *slog.Logger
	queue    chan record.Record
	provider *sdklog.LoggerProvider
	logger   otellog.Logger
	batcher  *batcher

	exported prometheus.Counter
	dropped  *prometheus.CounterVec
}

// New returns an Exporter; Run exports.
func New(opts Options) (*Exporter, error) {
	if opts.Exporter == nil {
		return nil, errors.New("recordexport: no OTLP exporter")
	}
	if opts.Queue <= 0 {
		opts.Queue = 20_000
	}
	if opts.Batch <= 0 {
		opts.Batch = 512
	}
	if opts.Interval <= 0 {
		opts.Interval = time.Second
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	e := &Exporter{
		opts: opts, log: log, queue: make(chan record.Record, opts.Queue),
		exported: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meshguard_controlplane_records_exported_total",
			Help: "Records exported as OpenTelemetry logs and accepted by the collector.",
		}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshguard_controlplane_records_export_dropped_total",
			Help: "Records not exported over OTLP, by reason (queue_full, export_error, shutdown).",
		}, []string{"reason"}),
	}
	for _, r := range []string{"queue_full", "export_error", "shutdown"} {
		e.dropped.WithLabelValues(r)
	}
	if opts.Registerer != nil {
		for _, c := range []prometheus.Collector{e.exported, e.dropped} {
			if err := opts.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("recordexport: register metrics: %w", err)
			}
		}
	}
	e.batcher = &batcher{}
	popts := []sdklog.LoggerProviderOption{sdklog.WithProcessor(e.batcher)}
	if opts.Resource != nil {
		popts = append(popts, sdklog.WithResource(opts.Resource))
	}
	e.provider = sdklog.NewLoggerProvider(popts...)
	e.logger = e.provider.Logger("github.com/meshguard/meshguard/controlplane")
	return e, nil
}

// Append queues records; what the queue cannot hold is dropped and counted.
// It never blocks and never fails: the record store, not the exporter, is
// where decision senders meet back-pressure.
func (e *Exporter) Append(recs []record.Record) error {
	for i := range recs {
		select {
		case e.queue <- recs[i]:
		default:
			e.dropped.WithLabelValues("queue_full").Add(float64(len(recs) - i))
			return nil
		}
	}
	return nil
}

// Run exports until ctx ends, then exports what is queued (for at most
// 5 seconds) and shuts the exporter down.
func (e *Exporter) Run(ctx context.Context) {
	t := time.NewTicker(e.opts.Interval)
	defer t.Stop()
	// An export under way when ctx ends runs to its end (the exporter's
	// own timeout bounds it): cancelling it would count as dropped a
	// batch the collector may already hold.
	exportCtx := context.WithoutCancel(ctx)
	for {
		select {
		case r := <-e.queue:
			e.emit(r)
			if len(e.batcher.recs) >= e.opts.Batch {
				e.export(exportCtx)
			}
		case <-t.C:
			e.export(exportCtx)
		case <-ctx.Done():
			e.shutdown()
			return
		}
	}
}

func (e *Exporter) shutdown() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for {
		select {
		case r := <-e.queue:
			e.emit(r)
			if len(e.batcher.recs) >= e.opts.Batch {
				e.export(ctx)
			}
			continue
		default:
		}
		break
	}
	e.export(ctx)
	if n := len(e.queue); n > 0 {
		e.dropped.WithLabelValues("shutdown").Add(float64(n))
	}
	_ = e.provider.Shutdown(ctx)
	_ = e.opts.Exporter.Shutdown(ctx)
}

// export sends the batch the processor holds.
func (e *Exporter) export(ctx context.Context) {
	b := e.batcher.recs
	if len(b) == 0 {
		return
	}
	e.batcher.recs = nil
	if err := e.opts.Exporter.Export(ctx, b); err != nil {
		e.dropped.WithLabelValues("export_error").Add(float64(len(b)))
		e.log.Error("OTLP log export failed; records dropped", "records", len(b), "error", err)
		return
	}
	e.exported.Add(float64(len(b)))
}

// emit turns a record into an OpenTelemetry log record; the provider hands
// it to the batcher synchronously. A decision's trace ID (from the trace
// Envoy propagated) becomes the log record's, so backends link the two.
func (e *Exporter) emit(r record.Record) {
	ctx := context.Background()
	if r.Decision != nil && r.Decision.TraceID != "" {
		if tid, err := trace.TraceIDFromHex(r.Decision.TraceID); err == nil {
			ctx = trace.ContextWithSpanContext(ctx, trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: spanID(r.Decision.DecisionID)}))
		}
	}
	e.logger.Emit(ctx, Convert(r))
}

// spanID derives a stable, non-zero span ID for a decision (a log record
// with a trace ID needs one; the check's own span is in the trace).
func spanID(decisionID string) trace.SpanID {
	var id trace.SpanID
	for i := 0; i < len(decisionID); i++ {
		id[i%8] = id[i%8]*31 + decisionID[i]
	}
	if !id.IsValid() {
		id[7] = 1
	}
	return id
}

// Attribute keys of exported records: OpenTelemetry semantic conventions
// where they exist, meshguard.* otherwise.
const (
	AttrKind        = "meshguard.record.kind"
	AttrAction      = "meshguard.action"
	AttrReason      = "meshguard.reason"
	AttrPolicy      = "meshguard.policy"
	AttrRule        = "meshguard.rule"
	AttrRoute       = "meshguard.route"
	AttrSource      = "meshguard.source.spiffe_id"
	AttrDestination = "meshguard.destination.spiffe_id"
	AttrReporter    = "meshguard.reporter"
	AttrBy          = "meshguard.by"
	AttrDecisionID  = "meshguard.decision_id"
	AttrRecord      = "meshguard.record" // the whole record as JSON (re-importable, replayable)
)

// Convert is the log record of r.
func Convert(r record.Record) otellog.Record {
	var lr otellog.Record
	lr.SetTimestamp(r.Time)
	lr.SetObservedTimestamp(time.Now())
	lr.SetEventName("meshguard." + string(r.Kind))
	sev, text := severity(r)
	lr.SetSeverity(sev)
	lr.SetSeverityText(text)
	lr.SetBody(attribute.StringValue(summary(r)))
	attrs := []attribute.KeyValue{attribute.String(AttrKind, string(r.Kind))}
	add := func(k, v string) {
		if v != "" {
			attrs = append(attrs, attribute.String(k, v))
		}
	}
	add(AttrAction, r.Action)
	add(AttrReason, r.Reason)
	add(AttrPolicy, r.Policy)
	add(AttrRule, r.Rule)
	add(AttrRoute, r.Route)
	add(AttrSource, r.Source)
	add(AttrDestination, r.Destination)
	add(AttrReporter, r.Reporter)
	add(AttrBy, r.By)
	add("http.request.method", r.Method)
	add("url.path", r.Path)
	if d := r.Decision; d != nil {
		add(AttrDecisionID, d.DecisionID)
		add("client.address", d.SourceIP)
		add("server.address", d.Host)
	}
	if js, err := json.Marshal(r); err == nil {
		attrs = append(attrs, attribute.String(AttrRecord, string(js)))
	}
	lr.AddAttributes(attrs...)
	return lr
}

func severity(r record.Record) (otellog.Severity, string) {
	switch {
	case r.Kind == record.KindQuarantine:
		return otellog.SeverityError, "ERROR"
	case r.Kind == record.KindDetection, r.Action == record.ActionDeny, r.Action == "rejected":
		return otellog.SeverityWarn, "WARN"
	}
	return otellog.SeverityInfo, "INFO"
}

func summary(r record.Record) string {
	var b strings.Builder
	b.WriteString(string(r.Kind))
	if r.Action != "" {
		b.WriteString(" " + r.Action)
	}
	if r.Source != "" {
		b.WriteString(" " + r.Source)
	}
	if r.Destination != "" {
		b.WriteString(" -> " + r.Destination)
	}
	if r.Method != "" || r.Path != "" {
		b.WriteString(" " + strings.TrimSpace(r.Method+" "+r.Path))
	}
	if r.Reason != "" {
		b.WriteString(": " + r.Reason)
	}
	if r.Detail != "" {
		b.WriteString(" (" + r.Detail + ")")
	}
	return b.String()
}

// batcher is the SDK processor that collects emitted records for Run to
// export itself, so that every record lost is counted (the SDK's own batch
// processor drops silently when its queue is full). Only Run's goroutine
// emits, so it needs no lock.
type batcher struct {
	recs []sdklog.Record
}

func (b *batcher) Enabled(context.Context, sdklog.EnabledParameters) bool { return true }
func (b *batcher) OnEmit(_ context.Context, r *sdklog.Record) error {
	b.recs = append(b.recs, r.Clone())
	return nil
}
func (b *batcher) Shutdown(context.Context) error   { return nil }
func (b *batcher) ForceFlush(context.Context) error { return nil }
