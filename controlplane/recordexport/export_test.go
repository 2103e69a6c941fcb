package recordexport

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.opentelemetry.io/otel/exporters/otlp/otlplog/otlploggrpc"
	"go.opentelemetry.io/otel/sdk/resource"
	collogs "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	logspb "go.opentelemetry.io/proto/otlp/logs/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshguard/meshguard/controlplane/record"
	"github.com/meshguard/meshguard/policies/wire"
)

// receiver is an OTLP logs receiver: a real gRPC server implementing the
// collector's opentelemetry.proto.collector.logs.v1.LogsService (the
// generated code of go.opentelemetry.io/proto/otlp), as a collector's OTLP
// receiver serves it.
type receiver struct {
	collogs.UnimplementedLogsServiceServer
	mu       sync.Mutex
	records  []*logspb.LogRecord
	resource map[string]string
	fail     codes.Code // non-OK: refuse every export
}

func (r *receiver) Export(_ context.Context, req *collogs.ExportLogsServiceRequest) (*collogs.ExportLogsServiceResponse, error) {
	if r.fail != codes.OK {
		return nil, status.Error(r.fail, "refused by the test")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rl := range req.GetResourceLogs() {
		r.resource = map[string]string{}
		for _, kv := range rl.GetResource().GetAttributes() {
			r.resource[kv.GetKey()] = kv.GetValue().GetStringValue()
		}
		for _, sl := range rl.GetScopeLogs() {
			r.records = append(r.records, sl.GetLogRecords()...)
		}
	}
	return &collogs.ExportLogsServiceResponse{}, nil
}

func (r *receiver) count() int { r.mu.Lock(); defer r.mu.Unlock(); return len(r.records) }

func start(t *testing.T, rcv *receiver) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	collogs.RegisterLogsServiceServer(g, rcv)
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)
	return lis.Addr().String()
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
	res, _ := resource.Merge(resource.NewSchemaless(), resource.NewSchemaless())
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
	rcv.mu.Lock()
	defer rcv.mu.Unlock()
	first := rcv.records[0]
	attrs := map[string]string{}
	for _, kv := range first.GetAttributes() {
		attrs[kv.GetKey()] = kv.GetValue().GetStringValue()
	}
	if first.GetTimeUnixNano() != uint64(recs[0].Time.UnixNano()) || first.GetSeverityText() != "WARN" || first.GetEventName() != "meshguard.decision" {
		t.Errorf("log record %v", first)
	}
	if attrs[AttrKind] != "decision" || attrs[AttrReason] != "denied_no_allow_match" || attrs[AttrSource] != recs[0].Source ||
		attrs["url.path"] != "/admin" || attrs["client.address"] != "10.0.0.9" {
		t.Errorf("attributes %v", attrs)
	}
	if hex.EncodeToString(first.GetTraceId()) != traceHex {
		t.Errorf("trace id %x, want %s", first.GetTraceId(), traceHex)
	}
	var back record.Record
	if err := json.Unmarshal([]byte(attrs[AttrRecord]), &back); err != nil || back.Decision == nil || back.Decision.Path != "/admin" {
		t.Errorf("record attribute does not read back: %v %+v", err, back)
	}
	q := rcv.records[1000]
	if q.GetSeverityText() != "ERROR" || q.GetEventName() != "meshguard.quarantine" {
		t.Errorf("quarantine log record %v", q)
	}
}

// TestDropsAreCounted: a full queue and a collector that refuses exports
// lose records, and every one is counted.
func TestDropsAreCounted(t *testing.T) {
	rcv := &receiver{fail: codes.Unavailable}
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
