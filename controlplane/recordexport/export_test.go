package recordexport

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/plog"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlplog/otlploggrpc"
	"go.opentelemetry.io/otel/sdk/resource"

	"github.com/meshguard/meshguard/controlplane/record"
	"github.com/meshguard/meshguard/internal/testbed/otlprecv"
	"github.com/meshguard/meshguard/policies/wire"
)

// receiver keeps what the OpenTelemetry Collector's own OTLP receiver
// (internal/testbed/otlprecv) accepts, or refuses it (fail).
type receiver struct {
	mu      sync.Mutex
	logs    []plog.Logs
	records int
	fail    error // non-nil: the consumer refuses every export
}

func (r *receiver) consume(_ context.Context, ld plog.Logs) error {
	if r.fail != nil {
		return r.fail
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.logs = append(r.logs, ld)
	r.records += ld.LogRecordCount()
	return nil
}

func (r *receiver) count() int { r.mu.Lock(); defer r.mu.Unlock(); return r.records }

// logRecords returns what the receiver got, in order, with each one's
// resource attributes.
func (r *receiver) logRecords() ([]plog.LogRecord, []pcommon.Map) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []plog.LogRecord
	var res []pcommon.Map
	for _, ld := range r.logs {
		for i := 0; i < ld.ResourceLogs().Len(); i++ {
			rl := ld.ResourceLogs().At(i)
			for j := 0; j < rl.ScopeLogs().Len(); j++ {
				lrs := rl.ScopeLogs().At(j).LogRecords()
				for k := 0; k < lrs.Len(); k++ {
					out = append(out, lrs.At(k))
					res = append(res, rl.Resource().Attributes())
				}
			}
		}
	}
	return out, res
}

// start runs the collector's OTLP receiver for rcv and returns its
// address.
func start(t *testing.T, rcv *receiver) string {
	t.Helper()
	return otlprecv.Logs(t, rcv.consume)
}

func newExporter(t *testing.T, addr string, o Options) (*Exporter, func()) {
	t.Helper()
	exp, err := otlploggrpc.New(context.Background(), otlploggrpc.WithEndpoint(addr), otlploggrpc.WithInsecure(),
		otlploggrpc.WithRetry(otlploggrpc.RetryConfig{Enabled: true, InitialInterval: 10 * time.Millisecond, MaxInterval: 20 * time.Millisecond, MaxElapsedTime: 100 * time.Millisecond}))
	if err != nil {
		t.Fatal(err)
	}
	o.Exporter = exp
	o.Registerer = prometheus.NewRegistry()
	if o.Resource == nil {
		o.Resource = resource.NewSchemaless()
	}
	e, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); e.Run(ctx) }()
	stop := func() { cancel(); <-done }
	t.Cleanup(stop)
	return e, stop
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

const traceHex = "4bf92f3577b34da6a3ce929d0e0e4736"

func records(n int) []record.Record {
	t0 := time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)
	var out []record.Record
	for i := range n {
		d := &wire.Decision{Time: t0.Add(time.Duration(i) * time.Millisecond), DecisionID: "d" + string(rune('a'+i%26)), TraceID: traceHex,
			Source: "spiffe://cluster.local/ns/bookstore/sa/reviews", Destination: "spiffe://cluster.local/ns/bookstore/sa/catalog",
			Method: "GET", Path: "/admin", Reason: "denied_no_allow_match", SourceIP: "10.0.0.9"}
		out = append(out, record.FromDecision("spiffe://cluster.local/ns/meshguard/sa/authz", d))
	}
	return out
}

// TestExportToOTLPReceiver: every record reaches the receiver as a log
// record with its time, severity, event name, attributes and the trace ID
// of the check; the resource is carried.
func TestExportToOTLPReceiver(t *testing.T) {
	rcv := &receiver{}
	addr := start(t, rcv)
	res := resource.NewSchemaless(attribute.String("service.name", "meshguard-controlplane-test"))
	e, stop := newExporter(t, addr, Options{Batch: 100, Interval: 20 * time.Millisecond, Resource: res})
	recs := records(1000)
	recs = append(recs,
		record.FromQuarantine(time.Unix(100, 0), "add", "spiffe://cluster.local/ns/bookstore/sa/reviews", "spiffe://cluster.local/ns/meshguard/sa/authz", "enumeration", time.Unix(1000, 0)),
		record.FromEvents("spiffe://cluster.local/ns/bookstore/sa/catalog", []wire.Event{{Kind: wire.EventAnomaly, Detector: "enumeration", Source: "spiffe://cluster.local/ns/bookstore/sa/reviews", Response: "block", UnixMillis: 99_000}}, record.EventOptions{})[0],
	)
	if err := e.Append(recs); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "1002 log records", func() bool { return rcv.count() == 1002 })
	stop()
	if got := testutil.ToFloat64(e.exported); got != 1002 {
		t.Errorf("exported counter %v", got)
	}
	lrs, resources := rcv.logRecords()
	first := lrs[0]
	attrs := map[string]string{}
	first.Attributes().Range(func(k string, v pcommon.Value) bool { attrs[k] = v.AsString(); return true })
	if first.Timestamp().AsTime() != recs[0].Time || first.SeverityText() != "WARN" || first.EventName() != "meshguard.decision" {
		t.Errorf("log record: time %v, severity %q, event %q", first.Timestamp().AsTime(), first.SeverityText(), first.EventName())
	}
	if attrs[AttrKind] != "decision" || attrs[AttrReason] != "denied_no_allow_match" || attrs[AttrSource] != recs[0].Source ||
		attrs["url.path"] != "/admin" || attrs["client.address"] != "10.0.0.9" {
		t.Errorf("attributes %v", attrs)
	}
	if tid := first.TraceID(); hex.EncodeToString(tid[:]) != traceHex {
		t.Errorf("trace id %x, want %s", tid, traceHex)
	}
	if v, ok := resources[0].Get("service.name"); !ok || v.Str() != "meshguard-controlplane-test" {
		t.Errorf("resource %v", resources[0].AsRaw())
	}
	var back record.Record
	if err := json.Unmarshal([]byte(attrs[AttrRecord]), &back); err != nil || back.Decision == nil || back.Decision.Path != "/admin" {
		t.Errorf("record attribute does not read back: %v %+v", err, back)
	}
	q := lrs[1000]
	if q.SeverityText() != "ERROR" || q.EventName() != "meshguard.quarantine" {
		t.Errorf("quarantine log record: severity %q, event %q", q.SeverityText(), q.EventName())
	}
}

// TestDropsAreCounted: a full queue and a collector that refuses exports
// lose records, and every one is counted.
func TestDropsAreCounted(t *testing.T) {
	rcv := &receiver{fail: errors.New("refused by the test")}
	addr := start(t, rcv)
	e, stop := newExporter(t, addr, Options{Queue: 100, Batch: 50, Interval: 10 * time.Millisecond})
	_ = e.Append(records(1000)) // at most 100 fit
	full := testutil.ToFloat64(e.dropped.WithLabelValues("queue_full"))
	if full < 850 {
		t.Errorf("queue_full drops %v, want at least 850", full)
	}
	waitFor(t, "the refused exports counted", func() bool {
		return full+testutil.ToFloat64(e.dropped.WithLabelValues("export_error")) == 1000
	})
	stop()
	if rcv.count() != 0 || testutil.ToFloat64(e.exported) != 0 {
		t.Errorf("receiver got %d, exported %v", rcv.count(), testutil.ToFloat64(e.exported))
	}
}
