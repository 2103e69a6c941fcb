package wasmhost_test

import (
	"context"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/meshguard/meshguard/internal/testbed/wasmhost"
)

// logRecorder is a slog.Handler that keeps the records for assertions.
type logRecorder struct {
	mu      sync.Mutex
	level   slog.Level
	records []slog.Record
}

func (r *logRecorder) Enabled(_ context.Context, l slog.Level) bool { return l >= r.level }
func (r *logRecorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.records = append(r.records, rec.Clone())
	return nil
}
func (r *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *logRecorder) WithGroup(string) slog.Handler      { return r }

func (r *logRecorder) find(substr string) (slog.Record, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rec := range r.records {
		found := strings.Contains(rec.Message, substr)
		rec.Attrs(func(a slog.Attr) bool {
			found = found || strings.Contains(a.Value.String(), substr)
			return !found
		})
		if found {
			return rec, true
		}
	}
	return slog.Record{}, false
}

func newHost(t *testing.T, module string, cfg wasmhost.Config) *wasmhost.Host {
	t.Helper()
	cfg.CompilationCache = wasmhost.CacheForTest()
	h, err := wasmhost.New(context.Background(), wasmhost.ModuleForTest(module), cfg)
	if err != nil {
		t.Fatalf("wasmhost.New: %v", err)
	}
	t.Cleanup(func() {
		if err := h.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return h
}

func get(op string, extra ...[2]string) wasmhost.Request {
	hs := [][2]string{{":method", "GET"}, {":path", "/api/items?x=1"}, {":authority", "svc.example"}, {":scheme", "https"}, {"x-op", op}}
	return wasmhost.Request{Headers: append(hs, extra...)}
}

func header(hs [][2]string, key string) string {
	var vals []string
	for _, kv := range hs {
		if kv[0] == key {
			vals = append(vals, kv[1])
		}
	}
	return strings.Join(vals, ",")
}

func count(hs [][2]string, key string) int {
	n := 0
	for _, kv := range hs {
		if kv[0] == key {
			n++
		}
	}
	return n
}

func mustHandle(t *testing.T, w interface {
	HandleRequest(context.Context, wasmhost.Request, wasmhost.Upstream) (wasmhost.Result, error)
}, req wasmhost.Request, up wasmhost.Upstream) wasmhost.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	res, err := w.HandleRequest(ctx, req, up)
	if err != nil {
		t.Fatalf("HandleRequest: %v", err)
	}
	return res
}

func TestHeaders(t *testing.T) {
	h := newHost(t, "abitest", wasmhost.Config{PluginConfig: []byte(`{"tag":"v1"}`)})
	var upstreamSaw [][2]string
	res := mustHandle(t, h.Worker(0), get("headers",
		[2]string{"X-Get", "value"}, [2]string{"x-multi", "a"}, [2]string{"x-replace", "old"},
		[2]string{"x-replace", "old2"}, [2]string{"x-remove", "gone"}),
		func(_ context.Context, req wasmhost.UpstreamRequest) wasmhost.Response {
			upstreamSaw = req.Headers
			return wasmhost.Response{Status: 201, Headers: [][2]string{{"content-type", "text/plain"}}}
		})
	if !res.Forwarded || res.Local != nil {
		t.Fatalf("want forwarded without local response, got %+v", res)
	}
	for _, tc := range []struct{ key, want string }{
		{"x-got", "value"},
		{"x-multi-joined", "a"}, // Envoy returns the first of repeated values
		{"x-replace", "new"},
		{"x-remove", ""},
		{"x-missing", "not-found"},
		{"x-response-headers", "unavailable"},
		// 10 sent + 6 added (x-num-headers, x-eos, x-tag, x-got, x-multi,
		// x-multi-joined) - 1 replaced duplicate - 1 removed + 4 added
		// (x-missing, x-response-headers, x-response-header-error,
		// x-plugin-config-error) before the count.
		{"x-count", "18"},
		// Envoy: a map of a phase not reached yet is a bad argument; the
		// plugin configuration is readable only in proxy_on_configure.
		{"x-response-header-error", "error status returned by host: bad argument"},
		{"x-plugin-config-error", "error status returned by host: not found"},
		{"x-num-headers", "10"},
		{"x-eos", "true"},
		{"x-tag", "v1"},
	} {
		if got := header(res.Upstream.Headers, tc.key); got != tc.want {
			t.Errorf("upstream header %s = %q, want %q", tc.key, got, tc.want)
		}
	}
	if !equalHeaders(upstreamSaw, res.Upstream.Headers) {
		t.Errorf("upstream callback saw %v, result reports %v", upstreamSaw, res.Upstream.Headers)
	}
	if n := count(res.Upstream.Headers, "x-replace"); n != 1 {
		t.Errorf("x-replace present %d times, want 1", n)
	}
	if res.Response.Status != 201 || header(res.Response.Headers, "x-upstream-status") != "201" ||
		header(res.Response.Headers, "x-op-echo") != "headers" || header(res.Response.Headers, "content-type") != "text/plain" {
		t.Errorf("response = %+v", res.Response)
	}
	if got := header(res.Response.Headers, "x-request-headers-in-response"); got != "error status returned by host: bad argument" {
		t.Errorf("request headers in the response phase: %q, want bad argument as in Envoy", got)
	}
	if v, _, _ := h.SharedData().Get("log:last-status"); string(v) != "201" {
		t.Errorf("proxy_on_log read :status %q, want 201", v)
	}
}

func equalHeaders(a, b [][2]string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestSetHeaderMapPairs(t *testing.T) {
	h := newHost(t, "abitest", wasmhost.Config{})
	res := mustHandle(t, h.Worker(0), get("setall"), nil)
	want := [][2]string{{":method", "GET"}, {":path", "/rewritten"}, {":authority", "svc"}, {"x-only", "1"}}
	if !equalHeaders(res.Upstream.Headers, want) {
		t.Errorf("upstream headers = %v, want %v", res.Upstream.Headers, want)
	}
}

func TestProperties(t *testing.T) {
	h := newHost(t, "abitest", wasmhost.Config{
		PluginName: "meshguard-test",
		VMID:       "vm-a",
		Properties: wasmhost.Properties{}.SetString("node.id", "sidecar~10.0.0.1~pod.ns~ns.svc.cluster.local"),
	})
	props := wasmhost.Properties{}.
		SetString("connection.uri_san_peer_certificate", "spiffe://example.org/ns/default/sa/client").
		SetBool("connection.mtls", true).
		SetString("source.address", "10.1.2.3:5555").
		SetInt("destination.port", 8443).
		SetString("xds.route_name", "items-route").
		SetString("node.id", "overridden")
	paths := []string{
		"connection.uri_san_peer_certificate", "connection.mtls", "source.address", "destination.port",
		"xds.route_name", "node.id", "plugin_name", "plugin_vm_id", "request.path", "request.url_path",
		"request.method", "request.host", "connection.requested_server_name",
	}
	req := get("props", [2]string{"x-props", strings.Join(paths, ",")})
	req.Properties = props
	res := mustHandle(t, h.Worker(0), req, nil)
	hexOf := func(s string) string { return hex.EncodeToString([]byte(s)) }
	want := map[string]string{
		"connection.uri_san_peer_certificate": hexOf("spiffe://example.org/ns/default/sa/client"),
		"connection.mtls":                     "01",
		"source.address":                      hexOf("10.1.2.3:5555"),
		"destination.port":                    "fb20000000000000", // 8443, int64 little endian
		"xds.route_name":                      hexOf("items-route"),
		"node.id":                             hexOf("overridden"),
		"plugin_name":                         hexOf("meshguard-test"),
		"plugin_vm_id":                        hexOf("vm-a"),
		"request.path":                        hexOf("/api/items?x=1"),
		"request.url_path":                    hexOf("/api/items"),
		"request.method":                      hexOf("GET"),
		"request.host":                        hexOf("svc.example"),
		"connection.requested_server_name":    "err:error status returned by host: not found",
	}
	for p, v := range want {
		if got := header(res.Upstream.Headers, "x-prop-"+p); got != v {
			t.Errorf("property %s = %q, want %q", p, got, v)
		}
	}
	if got := header(res.Upstream.Headers, "x-setprop"); got != "allow" {
		t.Errorf("set then get property = %q, want allow", got)
	}
	// 6 sent, 3 added first, one per property path, x-setprop.
	if got, want := header(res.Upstream.Headers, "x-request-headers-count"), strconv.Itoa(6+3+len(paths)+1); got != want {
		t.Errorf("request.headers map has %s entries, want %s", got, want)
	}
	// Without stream properties the host-wide ones show through.
	res = mustHandle(t, h.Worker(0), get("props", [2]string{"x-props", "node.id,connection.mtls"}), nil)
	if got := header(res.Upstream.Headers, "x-prop-node.id"); got != hexOf("sidecar~10.0.0.1~pod.ns~ns.svc.cluster.local") {
		t.Errorf("node.id = %q", got)
	}
	if got := header(res.Upstream.Headers, "x-prop-connection.mtls"); !strings.HasPrefix(got, "err:") {
		t.Errorf("connection.mtls without properties = %q, want not found", got)
	}
}

func TestLocalResponse(t *testing.T) {
	h := newHost(t, "abitest", wasmhost.Config{})
	called := false
	res := mustHandle(t, h.Worker(0), get("deny"), func(context.Context, wasmhost.UpstreamRequest) wasmhost.Response {
		called = true
		return wasmhost.Response{Status: 200}
	})
	if called || res.Forwarded {
		t.Fatal("upstream called after a local response")
	}
	if res.Local == nil || res.Local.Status != 403 || string(res.Local.Body) != "denied" ||
		header(res.Local.Headers, "x-reason") != "test-deny" || res.Local.GRPCStatus != -1 {
		t.Fatalf("local response = %+v", res.Local)
	}
	// The local reply went through the response callbacks, as in Envoy.
	if res.Response.Status != 403 || header(res.Response.Headers, "x-upstream-status") != "403" ||
		string(res.Response.Body) != "denied" || header(res.Response.Headers, "content-length") != "6" ||
		header(res.Response.Headers, "content-type") != "text/plain" {
		t.Errorf("response = %+v", res.Response)
	}
}

func TestLocalResponseInResponsePhase(t *testing.T) {
	h := newHost(t, "abitest", wasmhost.Config{})
	res := mustHandle(t, h.Worker(0), get("deny-response"), nil)
	if !res.Forwarded || res.Local == nil || res.Response.Status != 451 || string(res.Response.Body) != "late" {
		t.Errorf("result = %+v", res)
	}
}

func TestBodyAndTrailers(t *testing.T) {
	h := newHost(t, "abitest", wasmhost.Config{})
	req := get("body")
	req.Body = []byte("hello")
	req.Trailers = [][2]string{{"x-t", "1"}}
	res := mustHandle(t, h.Worker(0), req, func(_ context.Context, r wasmhost.UpstreamRequest) wasmhost.Response {
		return wasmhost.Response{Status: 200, Body: []byte("hello")}
	})
	if string(res.Upstream.Body) != ">HELLO!" {
		t.Errorf("upstream body = %q, want >HELLO!", res.Upstream.Body)
	}
	if header(res.Upstream.Headers, "x-eos") != "false" {
		t.Error("end_of_stream on headers should be false with a body")
	}
	if header(res.Upstream.Trailers, "x-trailer-seen") != "1" {
		t.Errorf("trailers = %v", res.Upstream.Trailers)
	}
	if string(res.Response.Body) != "hello world" {
		t.Errorf("response body = %q", res.Response.Body)
	}
}

func TestHTTPCallRoundTrip(t *testing.T) {
	var (
		mu   sync.Mutex
		seen []*http.Request
		body []string
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		seen = append(seen, r)
		body = append(body, string(b))
		mu.Unlock()
		w.Header().Set("X-Echo", r.Header.Get("x-from"))
		if r.URL.Path == "/deny" {
			w.WriteHeader(403)
		}
		_, _ = w.Write([]byte("pong:" + r.URL.Path))
	}))
	t.Cleanup(srv.Close)
	dead := httptest.NewServer(http.NotFoundHandler())
	deadURL := dead.URL
	dead.Close()

	h := newHost(t, "abitest", wasmhost.Config{Clusters: map[string]string{"authz": srv.URL, "dead": deadURL}})
	w := h.Worker(0)

	res := mustHandle(t, w, get("callout", [2]string{"x-cluster", "authz"}, [2]string{"x-callout-path", "/check"}), nil)
	if !res.Forwarded || header(res.Upstream.Headers, "x-callout-status") != "200" ||
		header(res.Upstream.Headers, "x-callout-body") != "pong:/check" || header(res.Upstream.Headers, "x-callout-echo") != "abitest" {
		t.Errorf("after callout: %+v", res)
	}
	mu.Lock()
	if len(seen) != 1 || seen[0].Method != "POST" || seen[0].Host != "authz" || body[0] != "ping" {
		t.Errorf("server saw %d requests, first %v body %q", len(seen), seen, body)
	}
	mu.Unlock()

	res = mustHandle(t, w, get("callout", [2]string{"x-cluster", "authz"}, [2]string{"x-callout-path", "/deny"}), nil)
	if res.Forwarded || res.Local == nil || res.Local.Status != 403 || string(res.Local.Body) != "callout denied" {
		t.Errorf("callout deny: %+v", res)
	}

	res = mustHandle(t, w, get("callout", [2]string{"x-cluster", "dead"}, [2]string{"x-callout-path", "/x"}), nil)
	if got := header(res.Upstream.Headers, "x-callout-status"); got != "failed" {
		t.Errorf("call to a dead cluster: status %q, want failed (no headers)", got)
	}

	res = mustHandle(t, w, get("callout", [2]string{"x-cluster", "nope"}, [2]string{"x-callout-path", "/x"}), nil)
	if got := header(res.Upstream.Headers, "x-callout-error"); !strings.Contains(got, "bad argument") {
		t.Errorf("call to an unknown cluster: error %q, want bad argument", got)
	}
}

func TestHTTPCallFunc(t *testing.T) {
	var got wasmhost.CalloutRequest
	h := newHost(t, "abitest", wasmhost.Config{HTTPCall: func(_ context.Context, req wasmhost.CalloutRequest) (wasmhost.CalloutResponse, error) {
		got = req
		return wasmhost.CalloutResponse{Status: 202, Headers: [][2]string{{"X-Echo", "fn"}}, Body: []byte("from func")}, nil
	}})
	res := mustHandle(t, h.Worker(0), get("callout", [2]string{"x-cluster", "anything"}, [2]string{"x-callout-path", "/p"}), nil)
	if header(res.Upstream.Headers, "x-callout-status") != "202" || header(res.Upstream.Headers, "x-callout-body") != "from func" ||
		header(res.Upstream.Headers, "x-callout-echo") != "fn" {
		t.Errorf("upstream headers = %v", res.Upstream.Headers)
	}
	if got.Cluster != "anything" || header(got.Headers, ":path") != "/p" || string(got.Body) != "ping" || got.Timeout != 5*time.Second {
		t.Errorf("callout request = %+v", got)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestManualTicks(t *testing.T) {
	var mu sync.Mutex
	posts := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		posts++
		mu.Unlock()
	}))
	t.Cleanup(srv.Close)
	h := newHost(t, "abitest", wasmhost.Config{
		VMs: 2, ManualTicks: true, Clusters: map[string]string{"cp": srv.URL},
		PluginConfig: []byte(`{"tickMillis":60000,"tickCluster":"cp"}`),
	})
	for range 3 {
		if err := h.Tick(); err != nil {
			t.Fatal(err)
		}
	}
	if got := h.Metrics().Value("abitest_ticks_total"); got != 6 {
		t.Errorf("ticks = %d, want 3 per VM", got)
	}
	waitFor(t, "tick callouts", func() bool { return h.Metrics().Value("abitest_tick_calls_ok_total") == 6 })
	mu.Lock()
	defer mu.Unlock()
	if posts != 6 {
		t.Errorf("server got %d posts, want 6", posts)
	}
}

func TestRealTicks(t *testing.T) {
	h := newHost(t, "abitest", wasmhost.Config{PluginConfig: []byte(`{"tickMillis":5}`)})
	waitFor(t, "ticks", func() bool { return h.Metrics().Value("abitest_ticks_total") >= 3 })
}

func TestSharedDataCASAcrossVMs(t *testing.T) {
	h := newHost(t, "abitest", wasmhost.Config{VMs: 2})
	const goroutines, each = 6, 25
	// The first increment alone: while the key does not exist its CAS is
	// 0, and a set with CAS 0 is unconditional (Envoy's rule), so two
	// first increments racing would both write 1.
	mustHandle(t, h.Worker(0), get("shared-incr"), nil)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				if _, err := h.Worker(g%2).HandleRequest(context.Background(), get("shared-incr"), nil); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	v, cas, ok := h.SharedData().Get("counter")
	if !ok || string(v) != strconv.Itoa(goroutines*each+1) || cas == 0 {
		t.Errorf("counter = %q (cas %d, ok %v), want %d", v, cas, ok, goroutines*each+1)
	}
	// Envoy's rules, from the guest: a stale CAS fails.
	res := mustHandle(t, h.Worker(1), get("shared-stale"), nil)
	if header(res.Upstream.Headers, "x-stale") != "cas-mismatch" || header(res.Upstream.Headers, "x-stale-value") != "2" ||
		header(res.Upstream.Headers, "x-first-set") != "" {
		t.Errorf("stale CAS: %v", res.Upstream.Headers)
	}
	// And from the Go side, against a value the guest wrote.
	if err := h.SharedData().Set("counter", []byte("0"), cas+1000); !errors.Is(err, wasmhost.ErrCasMismatch) {
		t.Errorf("Set with wrong cas: %v", err)
	}
	if err := h.SharedData().Set("counter", []byte("1000"), cas); err != nil {
		t.Errorf("Set with current cas: %v", err)
	}
	res = mustHandle(t, h.Worker(0), get("shared-incr"), nil)
	if header(res.Upstream.Headers, "x-counter") != "1001" {
		t.Errorf("guest read %q after host set", header(res.Upstream.Headers, "x-counter"))
	}
}

func TestMetrics(t *testing.T) {
	h := newHost(t, "abitest", wasmhost.Config{VMs: 2})
	for i := range 10 {
		mustHandle(t, h.Worker(i%2), get("none"), nil)
	}
	if got := h.Metrics().Value("abitest_requests_total"); got != 10 {
		t.Errorf("requests counter = %d, want 10", got)
	}
	if got := h.Metrics().Value("abitest_inflight"); got != 0 {
		t.Errorf("inflight gauge = %d, want 0 after every stream ended", got)
	}
	hist, ok := h.Metrics().Get("abitest_request_headers", wasmhost.Histogram)
	if !ok || hist.Value != 10 || hist.Min != 5 || hist.Max != 5 || hist.Sum != 50 {
		t.Errorf("histogram = %+v", hist)
	}
	res := mustHandle(t, h.Worker(0), get("metric-read"), nil)
	if got := header(res.Upstream.Headers, "x-requests"); got != "11" {
		t.Errorf("guest read counter %q, want 11", got)
	}
	if n := len(h.Metrics().Snapshot()); n != 6 {
		t.Errorf("%d metrics defined, want 6 (same names share a metric across VMs)", n)
	}
}

func TestLogs(t *testing.T) {
	rec := &logRecorder{level: slog.LevelDebug - 4}
	h := newHost(t, "abitest", wasmhost.Config{Logger: slog.New(rec), PluginName: "p1"})
	if _, ok := rec.find("abitest: configured"); !ok {
		t.Error("no log line from proxy_on_configure")
	}
	mustHandle(t, h.Worker(0), get("log"), nil)
	r, ok := rec.find("abitest: warn from stream")
	if !ok || r.Level != slog.LevelWarn {
		t.Fatalf("warn record = %+v, %v", r, ok)
	}
	attrs := map[string]string{}
	r.Attrs(func(a slog.Attr) bool { attrs[a.Key] = a.Value.String(); return true })
	if attrs["plugin"] != "p1" || attrs["worker"] != "0" || attrs["context_id"] == "" {
		t.Errorf("attrs = %v", attrs)
	}
	if _, ok := rec.find("abitest: debug from stream"); ok {
		t.Error("debug message logged although Config.LogLevel is info")
	}
}

func TestConfigureRefused(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  wasmhost.Config
	}{
		{"configure returns false", wasmhost.Config{PluginConfig: []byte(`{"fail":true}`)}},
		{"invalid configuration", wasmhost.Config{PluginConfig: []byte(`{not json`)}},
		{"vm start returns false", wasmhost.Config{VMConfig: []byte("refuse")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.CompilationCache = wasmhost.CacheForTest()
			tc.cfg.VMs = 2
			h, err := wasmhost.New(context.Background(), wasmhost.ModuleForTest("abitest"), tc.cfg)
			if !errors.Is(err, wasmhost.ErrConfigRejected) {
				if h != nil {
					h.Close()
				}
				t.Fatalf("New = %v, want ErrConfigRejected", err)
			}
		})
	}
	if _, err := wasmhost.New(context.Background(), []byte("\x00asm\x01\x00\x00\x00"), wasmhost.Config{}); err == nil {
		t.Error("a module without the proxy-wasm ABI was accepted")
	}
}

func TestReconfigure(t *testing.T) {
	h := newHost(t, "abitest", wasmhost.Config{VMs: 2, PluginConfig: []byte(`{"tag":"v1"}`)})
	tag := func(w int) string {
		return header(mustHandle(t, h.Worker(w), get("none"), nil).Upstream.Headers, "x-tag")
	}
	if tag(0) != "v1" || tag(1) != "v1" {
		t.Fatal("initial config not applied")
	}
	if err := h.Reconfigure([]byte(`{"tag":"v2"}`)); err != nil {
		t.Fatal(err)
	}
	if tag(0) != "v2" || tag(1) != "v2" {
		t.Error("new config not applied")
	}
	if err := h.Reconfigure([]byte(`{"tag":"v3","fail":true}`)); !errors.Is(err, wasmhost.ErrConfigRejected) {
		t.Errorf("Reconfigure with a refused config = %v", err)
	}
	if tag(0) != "v2" || tag(1) != "v2" {
		t.Error("a refused config replaced the last good one")
	}
}

func TestSharedQueue(t *testing.T) {
	h := newHost(t, "abitest", wasmhost.Config{VMs: 2})
	mustHandle(t, h.Worker(1), get("queue", [2]string{"x-item", "event-1"}), nil)
	waitFor(t, "queue delivery", func() bool { return h.Metrics().Value("abitest_queue_items_total") == 1 })
	if v, _, _ := h.SharedData().Get("queue:last"); string(v) != "event-1" {
		t.Errorf("dequeued %q", v)
	}
}

func TestGuestPanicFailsVM(t *testing.T) {
	rec := &logRecorder{level: slog.LevelInfo}
	h := newHost(t, "abitest", wasmhost.Config{VMs: 2, Logger: slog.New(rec)})
	_, err := h.Worker(0).HandleRequest(context.Background(), get("panic"), nil)
	if !errors.Is(err, wasmhost.ErrVMFailed) {
		t.Fatalf("panic: err = %v, want ErrVMFailed", err)
	}
	if _, err := h.Worker(0).HandleRequest(context.Background(), get("none"), nil); !errors.Is(err, wasmhost.ErrVMFailed) {
		t.Errorf("failed VM still serves: %v", err)
	}
	mustHandle(t, h.Worker(1), get("none"), nil) // the other VM is unaffected
	if _, ok := rec.find("abitest: panic on request"); !ok {
		t.Error("the guest's panic message was not logged")
	}
}

func TestPausedStreamWithoutCalloutStalls(t *testing.T) {
	h := newHost(t, "abitest", wasmhost.Config{})
	if _, err := h.Worker(0).HandleRequest(context.Background(), get("pause"), nil); !errors.Is(err, wasmhost.ErrStreamStalled) {
		t.Errorf("err = %v, want ErrStreamStalled", err)
	}
	mustHandle(t, h.Worker(0), get("none"), nil)
}

func TestRealClock(t *testing.T) {
	h := newHost(t, "abitest", wasmhost.Config{})
	before := time.Now()
	res := mustHandle(t, h.Worker(0), get("time"), nil)
	ns, err := strconv.ParseInt(header(res.Upstream.Headers, "x-now"), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	if got := time.Unix(0, ns); got.Before(before.Add(-time.Second)) || got.After(time.Now().Add(time.Second)) {
		t.Errorf("guest time.Now() = %v, host %v: the guest clock is not the real clock", got, before)
	}
}

func TestNoopFilterAndMemoryStats(t *testing.T) {
	h := newHost(t, "noop", wasmhost.Config{VMs: 2})
	req := wasmhost.DefaultRequest(0)
	req.Body = []byte("payload")
	res := mustHandle(t, h.Next(), req, func(context.Context, wasmhost.UpstreamRequest) wasmhost.Response {
		return wasmhost.Response{Status: 204}
	})
	if !res.Forwarded || !equalHeaders(res.Upstream.Headers, req.Headers) || string(res.Upstream.Body) != "payload" || res.Response.Status != 204 {
		t.Errorf("noop changed the request: %+v", res)
	}
	for i, m := range h.MemoryStats() {
		if m == 0 || m%65536 != 0 {
			t.Errorf("vm %d memory = %d", i, m)
		}
	}
	rep, err := h.RunLoad(context.Background(), wasmhost.LoadOptions{Requests: 50, Concurrency: 2})
	if err != nil || rep.Errors != 0 || rep.NsPerRequest <= 0 || len(rep.GuestMemoryBytes) != 2 {
		t.Errorf("RunLoad = %+v, %v", rep, err)
	}
}

func TestClosedHost(t *testing.T) {
	h, err := wasmhost.New(context.Background(), wasmhost.ModuleForTest("abitest"), wasmhost.Config{CompilationCache: wasmhost.CacheForTest()})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	if err := h.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := h.Worker(0).HandleRequest(context.Background(), get("none"), nil); !errors.Is(err, wasmhost.ErrClosed) {
		t.Errorf("HandleRequest after Close = %v", err)
	}
	if err := h.Reconfigure(nil); !errors.Is(err, wasmhost.ErrClosed) {
		t.Errorf("Reconfigure after Close = %v", err)
	}
}

func TestInjectedClock(t *testing.T) {
	var mu sync.Mutex
	offset := 48 * time.Hour
	clock := func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		return time.Now().Add(offset)
	}
	h := newHost(t, "abitest", wasmhost.Config{Clock: clock})
	now := func() time.Time {
		ns, err := strconv.ParseInt(header(mustHandle(t, h.Worker(0), get("time"), nil).Upstream.Headers, "x-now"), 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		return time.Unix(0, ns)
	}
	if d := time.Until(now()); d < 47*time.Hour || d > 49*time.Hour {
		t.Errorf("guest clock is %v ahead, want 48h", d)
	}
	mu.Lock()
	offset += 10 * time.Minute
	mu.Unlock()
	if d := time.Until(now()); d < 48*time.Hour+9*time.Minute {
		t.Errorf("guest clock did not follow a step of the injected clock: %v ahead", d)
	}
}

func TestPrometheusCollector(t *testing.T) {
	h := newHost(t, "abitest", wasmhost.Config{})
	for range 3 {
		mustHandle(t, h.Worker(0), get("none"), nil)
	}
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(h.Metrics().Collector(prometheus.Labels{"pod": "p1"})); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		got[mf.GetName()] = mf
	}
	if c := got["abitest_requests_total"]; c == nil || c.GetMetric()[0].GetCounter().GetValue() != 3 ||
		c.GetMetric()[0].GetLabel()[0].GetValue() != "p1" {
		t.Errorf("counter family = %v", c)
	}
	if s := got["abitest_request_headers"]; s == nil || s.GetMetric()[0].GetSummary().GetSampleCount() != 3 {
		t.Errorf("histogram family = %v", s)
	}
	if g := got["abitest_inflight"]; g == nil || g.GetType() != dto.MetricType_GAUGE {
		t.Errorf("gauge family = %v", g)
	}
}
