package filtercore

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/meshguard/meshguard/policies/wire"
	"github.com/meshguard/meshguard/wasm/internal/scenario"
)

// fakeHost is a hand-written Host: a settable clock, counters by name,
// shared data with CAS, and HTTP callouts queued until the test answers
// them.
type fakeHost struct {
	now      int64
	counters map[string]uint64
	gauges   map[string]int64
	logs     []string
	shared   map[string]sharedVal
	calls    []fakeCall
	failCall bool
	props    map[string][]byte // proxy-wide properties by dotted path
}

type sharedVal struct {
	data []byte
	cas  uint32
}

type fakeCall struct {
	cluster string
	headers [][2]string
	body    []byte
	timeout uint32
	maxBody int
	done    func(CallResponse)
}

// answer completes the call with status (0: failed) and body, as the glue
// does: the body only when it fits maxBody.
func (c fakeCall) answer(status int, body []byte, headers ...[2]string) {
	r := CallResponse{Status: status}
	if status != 0 {
		r.Headers = append([][2]string{{":status", fmt.Sprint(status)}}, headers...)
		if len(body) > c.maxBody && c.maxBody > 0 {
			r.BodyTooLarge = true
		} else if c.maxBody > 0 {
			r.Body = body
		}
	}
	c.done(r)
}

func (c fakeCall) header(name string) string {
	for _, kv := range c.headers {
		if kv[0] == name {
			return kv[1]
		}
	}
	return ""
}

func newFakeHost() *fakeHost {
	return &fakeHost{now: time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC).UnixNano(), counters: map[string]uint64{},
		gauges: map[string]int64{}, shared: map[string]sharedVal{}}
}

type fakeCounter struct {
	h    *fakeHost
	name string
}

func (c fakeCounter) Add(n uint64) { c.h.counters[c.name] += n }

type fakeGauge struct {
	h    *fakeHost
	name string
}

func (g fakeGauge) Set(v int64) { g.h.gauges[g.name] = v }

func (h *fakeHost) Log(l Level, msg string)           { h.logs = append(h.logs, msg) }
func (h *fakeHost) Now() int64                        { return h.now }
func (h *fakeHost) DefineCounter(name string) Counter { return fakeCounter{h, name} }
func (h *fakeHost) DefineGauge(name string) Gauge     { return fakeGauge{h, name} }
func (h *fakeHost) Property(p Prop) ([]byte, bool) {
	v, ok := h.props[strings.Join(p.Path, ".")]
	return v, ok
}
func (h *fakeHost) SharedData(k string) ([]byte, uint32, error) {
	v, ok := h.shared[k]
	if !ok {
		return nil, 0, errors.New("not found")
	}
	return v.data, v.cas, nil
}

func (h *fakeHost) SetSharedData(k string, data []byte, cas uint32) error {
	v := h.shared[k]
	if cas != 0 && cas != v.cas {
		return errors.New("cas mismatch")
	}
	h.shared[k] = sharedVal{data: append([]byte(nil), data...), cas: v.cas + 1}
	return nil
}

func (h *fakeHost) HTTPCall(cluster string, headers [][2]string, body []byte, timeout uint32, maxBody int, done func(CallResponse)) error {
	if h.failCall {
		return errors.New("cluster not found")
	}
	h.calls = append(h.calls, fakeCall{cluster, headers, append([]byte(nil), body...), timeout, maxBody, done})
	return nil
}

// fakeStream is one request's host side.
type fakeStream struct {
	req      [][2]string
	props    map[string][]byte
	resp     [][2]string
	local    *scenario.Result
	replaced bool
}

func (s *fakeStream) RequestHeaders() ([][2]string, error) {
	return append([][2]string(nil), s.req...), nil
}
func (s *fakeStream) ReplaceRequestHeaders(h [][2]string) error {
	s.req, s.replaced = append([][2]string(nil), h...), true
	return nil
}
func (s *fakeStream) ResponseHeader(name string) (string, bool) {
	for _, kv := range s.resp {
		if kv[0] == name {
			return kv[1], true
		}
	}
	return "", false
}
func (s *fakeStream) AddRequestHeader(name, value string) error {
	s.req = append(s.req, [2]string{name, value})
	return nil
}
func (s *fakeStream) Property(p Prop) ([]byte, bool) {
	v, ok := s.props[strings.Join(p.Path, ".")]
	return v, ok
}
func (s *fakeStream) SendLocalResponse(status uint32, headers [][2]string, body []byte) error {
	s.local = &scenario.Result{Status: int(status), Headers: headers, Body: body}
	return nil
}

// coreDriver runs filtercore directly on the fake host.
type coreDriver struct {
	h      *fakeHost
	vm     *VM
	p      *Plugin
	events []wire.Event
}

func newCoreDriver(*testing.T) scenario.Driver { return &coreDriver{} }

func (d *coreDriver) Start(t *testing.T, cfg []byte) error {
	d.h = newFakeHost()
	d.vm = NewVM(d.h)
	d.p = d.vm.NewPlugin()
	d.events = nil
	return d.p.Configure(cfg)
}

func (d *coreDriver) Reconfigure(t *testing.T, cfg []byte) error {
	// Envoy creates a new plugin context for a new configuration.
	p := d.vm.NewPlugin()
	if err := p.Configure(cfg); err != nil {
		return err
	}
	d.p = p
	return nil
}

// streamFor builds the host side of r exactly as Envoy would present it.
func streamFor(r scenario.Request) *fakeStream {
	s := &fakeStream{props: map[string][]byte{}}
	s.req = append([][2]string{{":method", r.Method}, {":path", r.Path}, {":authority", r.Authority}, {":scheme", "http"}}, lower(r.Headers)...)
	if r.Source != "" {
		s.props["connection.uri_san_peer_certificate"] = []byte(r.Source)
	}
	if r.MTLS || r.Source != "" {
		s.props["connection.mtls"] = []byte{1}
	} else {
		s.props["connection.mtls"] = []byte{0}
	}
	if r.SourceAddr != "" {
		s.props["source.address"] = []byte(r.SourceAddr)
	}
	if r.DestAddr != "" {
		s.props["destination.address"] = []byte(r.DestAddr)
	}
	if r.Route != "" {
		s.props["xds.route_name"] = []byte(r.Route)
	}
	if r.Direction != 0 {
		s.props["listener_direction"] = binary.LittleEndian.AppendUint64(nil, uint64(r.Direction))
	}
	if r.Cluster != "" {
		s.props["xds.cluster_name"] = []byte(r.Cluster)
	}
	return s
}

func lower(h [][2]string) [][2]string {
	out := make([][2]string, len(h))
	for i, kv := range h {
		out[i] = [2]string{strings.ToLower(kv[0]), kv[1]}
	}
	return out
}

func (d *coreDriver) Do(t *testing.T, r scenario.Request) scenario.Result {
	s := streamFor(r)
	var st StreamState
	if !d.p.OnRequestHeaders(s, &st) {
		if s.local == nil {
			t.Fatal("paused without a local response")
		}
		return *s.local
	}
	status := r.Status
	if status == 0 {
		status = 200
	}
	s.resp = [][2]string{{":status", itoa(status)}}
	d.p.OnResponseHeaders(s, &st)
	return scenario.Result{Forwarded: true, Upstream: s.req}
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

func (d *coreDriver) Tick(t *testing.T) {
	d.p.OnTick()
	for len(d.h.calls) > 0 {
		c := d.h.calls[0]
		d.h.calls = d.h.calls[1:]
		if c.cluster != scenario.Cluster {
			t.Fatalf("events sent to cluster %q", c.cluster)
		}
		var b wire.EventBatch
		if err := json.Unmarshal(c.body, &b); err != nil {
			t.Fatalf("event batch: %v", err)
		}
		if p, _ := scenario.Header(c.headers, ":path"); p != wire.EventsPath {
			t.Fatalf("events posted to %q", p)
		}
		d.events = append(d.events, b.Events...)
		c.answer(200, nil)
		d.p.OnTick() // flush what did not fit in one batch
	}
}

func (d *coreDriver) Sleep(dur time.Duration) { d.h.now += int64(dur) }

func (d *coreDriver) Events(t *testing.T) []wire.Event { return d.events }

func TestScenarios(t *testing.T) { scenario.Run(t, newCoreDriver) }

func TestConnectionPropertiesReadOncePerConnection(t *testing.T) {
	d := newCoreDriver(t).(*coreDriver)
	if err := d.Start(t, scenario.Config(t, scenario.Options{})); err != nil {
		t.Fatal(err)
	}
	do := func(conn uint64, src string) (*fakeStream, bool) {
		r := scenario.Request{Source: src, SourceAddr: "10.0.0.7:1", DestAddr: "10.0.0.9:8080", Route: "orders-api",
			Method: "GET", Path: "/api/orders/1", Authority: "orders"}
		s := streamFor(r)
		if conn != 0 {
			b := make([]byte, 8)
			binary.LittleEndian.PutUint64(b, conn)
			s.props["connection.id"] = b
		}
		var st StreamState
		return s, d.p.OnRequestHeaders(s, &st)
	}
	if _, ok := do(7, scenario.Web); !ok {
		t.Fatal("web denied")
	}
	// Same connection: the identity read at its first request holds (a
	// connection's peer certificate cannot change).
	if _, ok := do(7, scenario.Intruder); !ok {
		t.Fatal("connection identity was read again")
	}
	// Another connection is read afresh.
	if _, ok := do(8, scenario.Intruder); ok {
		t.Fatal("intruder allowed on its own connection")
	}
	// Without connection.id nothing is cached.
	if _, ok := do(0, scenario.Intruder); ok {
		t.Fatal("intruder allowed without a connection id")
	}
	// A configuration that requires mTLS re-reads cached connections.
	p := d.vm.NewPlugin()
	if err := p.Configure(scenario.Config(t, scenario.Options{RequireMTLS: true})); err != nil {
		t.Fatal(err)
	}
	d.p = p
	if _, ok := do(7, ""); ok {
		t.Fatal("cached connection skipped the mTLS requirement of the new configuration")
	}
}

// twoWorkers is two worker VMs of one host whose profile answers egress
// to a metadata endpoint with a quarantine.
func twoWorkers(t *testing.T) (h *fakeHost, vm1 *VM, p1, p2 *Plugin) {
	t.Helper()
	h = newFakeHost()
	cfg := scenario.Config(t, scenario.Options{EgressResponse: "quarantine"})
	vm1 = NewVM(h)
	p1, p2 = vm1.NewPlugin(), NewVM(h).NewPlugin()
	for _, p := range []*Plugin{p1, p2} {
		if err := p.Configure(cfg); err != nil {
			t.Fatal(err)
		}
	}
	return h, vm1, p1, p2
}

// webCall sends web's GET / to authority through p.
func webCall(p *Plugin, authority string) *fakeStream {
	s := streamFor(scenario.Request{Source: scenario.Web, SourceAddr: "10.0.0.7:1", DestAddr: "10.0.0.9:8080",
		Route: "orders-api", Method: "GET", Path: "/", Authority: authority})
	var st StreamState
	p.OnRequestHeaders(s, &st)
	return s
}

// TestQuarantineResponseReachesEveryWorker: a quarantine response on one
// worker VM is published under the one shared-data key and blocks the
// caller on another worker after its next tick; the event says so.
func TestQuarantineResponseReachesEveryWorker(t *testing.T) {
	h, _, p1, p2 := twoWorkers(t)
	if s := webCall(p2, "orders"); s.local != nil {
		t.Fatalf("web denied before anything happened: %+v", s.local)
	}
	if s := webCall(p1, "169.254.169.254"); s.local == nil || s.local.Status != 403 {
		t.Fatal("metadata call not blocked")
	}
	p1.OnTick()
	if v, ok := h.shared[SharedBlocklistKey]; !ok || len(v.data) != 16 {
		t.Fatalf("shared blocklist %v", h.shared)
	}
	if len(h.calls) != 1 {
		t.Fatalf("%d event callouts", len(h.calls))
	}
	var b wire.EventBatch
	if err := json.Unmarshal(h.calls[0].body, &b); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, e := range b.Events {
		found = found || (e.Detector == "egress" && e.Response == "quarantine" && strings.Contains(e.Detail, "quarantine_for=3600s"))
	}
	if !found {
		t.Fatalf("no quarantine event in %+v", b.Events)
	}
	p2.OnTick()
	s := webCall(p2, "orders")
	if s.local == nil || s.local.Status != 403 {
		t.Fatal("the other worker did not block the quarantined caller")
	}
	if r, _ := scenario.Header(s.local.Headers, wire.HeaderReason); r != "denied_anomaly" {
		t.Fatalf("reason %q", r)
	}
	// Expiry: an hour later both workers let it through again.
	h.now += int64(61 * time.Minute)
	p2.OnTick()
	if s := webCall(p2, "orders"); s.local != nil {
		t.Fatalf("still blocked after expiry: %+v", s.local)
	}
}

// TestQuarantineSurvivesARacingFirstWrite: the blocklist key's first value
// is written with CAS 0, which Envoy applies unconditionally, so another
// worker writing its own first value at the same moment overwrites it.
// The worker whose quarantine was lost publishes it again on its next
// tick, beside the other's.
func TestQuarantineSurvivesARacingFirstWrite(t *testing.T) {
	h, vm1, p1, p2 := twoWorkers(t)
	if s := webCall(p1, "169.254.169.254"); s.local == nil || s.local.Status != 403 {
		t.Fatal("metadata call not blocked")
	}
	p1.OnTick()
	// The other worker's first value, written unconditionally after
	// it read the key as absent: another caller's quarantine only.
	other := block{key: 42, until: h.now + int64(time.Hour)}
	if err := h.SetSharedData(SharedBlocklistKey, encodeBlocks([]block{other}), 0); err != nil {
		t.Fatal(err)
	}
	p1.OnTick()
	list := decodeBlocks(h.shared[SharedBlocklistKey].data, h.now)
	if len(list) != 2 {
		t.Fatalf("shared blocklist after the next tick: %+v, want the other worker's and this one's", list)
	}
	p2.OnTick()
	if s := webCall(p2, "orders"); s.local == nil || s.local.Status != 403 {
		t.Fatal("the other worker did not block the quarantined caller")
	}
	// Expired, it is not published again.
	h.now += int64(61 * time.Minute)
	h.shared[SharedBlocklistKey] = sharedVal{data: encodeBlocks(nil), cas: h.shared[SharedBlocklistKey].cas + 1}
	p1.OnTick()
	if n := len(decodeBlocks(h.shared[SharedBlocklistKey].data, h.now)); n != 0 || len(vm1.own) != 0 {
		t.Fatalf("expired quarantine published again: %d shared, %d own", n, len(vm1.own))
	}
}

type panickyStream struct{ *fakeStream }

func (panickyStream) RequestHeaders() ([][2]string, error) { panic("host bug") }

func TestPanicDeniesInsteadOfTrapping(t *testing.T) {
	d := newCoreDriver(t).(*coreDriver)
	if err := d.Start(t, scenario.Config(t, scenario.Options{})); err != nil {
		t.Fatal(err)
	}
	fs := streamFor(scenario.Request{Source: scenario.Web, Method: "GET", Path: "/", Authority: "orders"})
	var st StreamState
	if d.p.OnRequestHeaders(panickyStream{fs}, &st) {
		t.Fatal("request continued after a panic")
	}
	if fs.local == nil || fs.local.Status != 403 {
		t.Fatalf("local response %+v", fs.local)
	}
	if r, _ := scenario.Header(fs.local.Headers, wire.HeaderReason); r != "denied_internal_error" {
		t.Fatalf("reason %q", r)
	}
}

// TestEventBufferIsBoundedAndCountsDrops: events beyond maxEvents are
// dropped and counted, a failed callout's events are counted as dropped,
// and the count reaches the control plane in the next batch.
func TestEventBufferIsBoundedAndCountsDrops(t *testing.T) {
	var fc wire.FilterConfig
	if err := json.Unmarshal(scenario.Config(t, scenario.Options{}), &fc); err != nil {
		t.Fatal(err)
	}
	fc.Detection = &wire.Detection{MaxEvents: 2}
	cfg, _ := json.Marshal(fc)
	h := newFakeHost()
	vm := NewVM(h)
	p := vm.NewPlugin()
	if err := p.Configure(cfg); err != nil {
		t.Fatal(err)
	}
	egress := func(i int) {
		s := streamFor(scenario.Request{Source: fmt.Sprintf("spiffe://mesh.test/ns/shop/sa/app%d", i), SourceAddr: "10.0.0.7:1",
			Route: "orders-api", Method: "GET", Path: "/", Authority: "169.254.169.254"})
		var st StreamState
		p.OnRequestHeaders(s, &st)
	}
	for i := 0; i < 5; i++ {
		egress(i) // one anomaly event each (the edge is in the baseline)
	}
	if got := h.counters[mEventsDropped]; got != 3 {
		t.Fatalf("dropped counter %d, want 3", got)
	}
	h.failCall = true
	// The tick reports the five callers' decisions: the buffer is full, so
	// those five events are dropped; then the dispatch fails and its 2
	// events are dropped too.
	p.OnTick()
	if got := h.counters[mEventsDropped]; got != 10 {
		t.Fatalf("dropped counter after a failed dispatch %d, want 10", got)
	}
	h.failCall = false
	egress(9)
	p.OnTick()
	if len(h.calls) != 1 {
		t.Fatalf("%d callouts", len(h.calls))
	}
	var b wire.EventBatch
	if err := json.Unmarshal(h.calls[0].body, &b); err != nil {
		t.Fatal(err)
	}
	// Decision events take at most half the buffer (one event here): the
	// anomaly holds it, so the denial's event is dropped, never the reverse.
	if len(b.Events) != 1 || b.Events[0].Kind != wire.EventAnomaly || b.Dropped != 11 {
		t.Fatalf("batch: %d events, dropped %d; want the anomaly alone, and 11: %+v", len(b.Events), b.Dropped, b.Events)
	}
	h.calls[0].answer(503, nil) // the control plane refuses: counted, carried again
	if got := h.counters[mEventsDropped]; got != 12 {
		t.Fatalf("dropped counter after a 503 %d, want 12", got)
	}
	egress(10)
	h.calls = nil
	p.OnTick()
	if err := json.Unmarshal(h.calls[0].body, &b); err != nil || b.Dropped != 13 {
		t.Fatalf("next batch carries dropped=%d (%v), want 13", b.Dropped, err)
	}
}

// TestDecisionEventsCarryAnExample: a decision event counts the requests
// of one key and carries the first one's method and path, without its
// query.
func TestDecisionEventsCarryAnExample(t *testing.T) {
	h := newFakeHost()
	p := NewVM(h).NewPlugin()
	if err := p.Configure(scenario.Config(t, scenario.Options{})); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/api/orders/1?token=secret", "/api/orders/2", "/api/orders/3#f"} {
		s := streamFor(scenario.Request{Source: scenario.Intruder, SourceAddr: "10.0.0.7:1", Route: "orders-api", Method: "DELETE",
			Path: path, Authority: "orders.shop.svc.cluster.local"})
		var st StreamState
		if p.OnRequestHeaders(s, &st) {
			t.Fatalf("%s allowed", path)
		}
	}
	p.OnTick()
	evs := decisionEvents(t, h)
	if len(evs) != 1 || evs[0].Response != OutcomeDeny || evs[0].Count != 3 || evs[0].Method != "DELETE" ||
		evs[0].Path != "/api/orders/1" || evs[0].Source != scenario.Intruder || !strings.HasPrefix(evs[0].Detail, "denied_") {
		t.Fatalf("events %+v", evs)
	}
}
