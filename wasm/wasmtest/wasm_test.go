package wasmtest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/meshguard/meshguard/internal/testbed/wasmhost"
	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/wire"
	"github.com/meshguard/meshguard/wasm/internal/scenario"
	"github.com/tetratelabs/wazero"
)

var (
	filterWasm []byte
	cache      wazero.CompilationCache
)

// TestMain builds the filter with GOOS=wasip1 so `go test ./...` needs
// nothing prepared.
func TestMain(m *testing.M) {
	code, err := setup(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(code)
}

func setup(m *testing.M) (int, error) {
	root, err := ModuleRoot(".")
	if err != nil {
		return 0, err
	}
	dir, err := os.MkdirTemp("", "meshguard-wasmtest-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	out := filepath.Join(dir, "filter.wasm")
	if err := Build(root, FilterPackage, out); err != nil {
		return 0, err
	}
	if filterWasm, err = os.ReadFile(out); err != nil {
		return 0, err
	}
	cache = wazero.NewCompilationCache()
	defer cache.Close(context.Background())
	return m.Run(), nil
}

// controlPlane is a fake event endpoint on loopback: a real HTTP server
// the host's callouts reach, decoding what the filter posts.
type controlPlane struct {
	srv     *httptest.Server
	mu      sync.Mutex
	batches []wire.EventBatch
	bad     []string
}

func newControlPlane(t *testing.T) *controlPlane {
	cp := &controlPlane{}
	cp.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var b wire.EventBatch
		cp.mu.Lock()
		defer cp.mu.Unlock()
		if r.Method != http.MethodPost || r.URL.Path != wire.EventsPath || r.Header.Get("content-type") != "application/json" {
			cp.bad = append(cp.bad, r.Method+" "+r.URL.Path)
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		if err := json.Unmarshal(body, &b); err != nil {
			cp.bad = append(cp.bad, err.Error())
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		cp.batches = append(cp.batches, b)
		w.WriteHeader(http.StatusAccepted)
	}))
	t.Cleanup(cp.srv.Close)
	return cp
}

func (cp *controlPlane) snapshot() (batches int, events []wire.Event, bad []string) {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	for _, b := range cp.batches {
		events = append(events, b.Events...)
	}
	return len(cp.batches), events, append([]string(nil), cp.bad...)
}

// hostDriver runs the compiled module in the wazero host. The guest's clock
// is driver time: Sleep advances it at once, and real time flows into it a
// hundred times slower, so that it stays monotonic for the Go runtime inside
// the module while a slow runner (-race, a loaded machine) cannot stretch a
// burst of requests into steady traffic.
type hostDriver struct {
	h  *wasmhost.Host
	cp *controlPlane

	mu     sync.Mutex
	base   time.Time
	offset time.Duration
}

func (d *hostDriver) now() time.Time {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.base.Add(d.offset + time.Since(d.base)/100)
}

func newHostDriver(t *testing.T) scenario.Driver {
	d := &hostDriver{base: time.Now()}
	t.Cleanup(func() {
		if d.h != nil {
			d.h.Close()
		}
	})
	return d
}

func (d *hostDriver) Start(t *testing.T, cfg []byte) error {
	if d.h != nil {
		d.h.Close()
		d.h = nil
	}
	d.cp = newControlPlane(t)
	h, err := wasmhost.New(context.Background(), filterWasm, wasmhost.Config{
		PluginConfig:     cfg,
		VMs:              1,
		ManualTicks:      true,
		Clock:            d.now,
		Clusters:         map[string]string{scenario.Cluster: d.cp.srv.URL},
		CompilationCache: cache,
	})
	if err != nil {
		return err
	}
	d.h = h
	return nil
}

func (d *hostDriver) Reconfigure(t *testing.T, cfg []byte) error { return d.h.Reconfigure(cfg) }

func (d *hostDriver) Do(t *testing.T, r scenario.Request) scenario.Result {
	props := wasmhost.Properties{}
	if r.Source != "" {
		props.SetString("connection.uri_san_peer_certificate", r.Source)
	}
	props.SetBool("connection.mtls", r.MTLS || r.Source != "")
	if r.SourceAddr != "" {
		props.SetString("source.address", r.SourceAddr)
	}
	if r.DestAddr != "" {
		props.SetString("destination.address", r.DestAddr)
	}
	if r.Route != "" {
		props.SetString("xds.route_name", r.Route)
	}
	if r.Direction != 0 {
		props.SetInt("listener_direction", int64(r.Direction))
	}
	if r.Cluster != "" {
		props.SetString("xds.cluster_name", r.Cluster)
	}
	hdrs := append([][2]string{{":method", r.Method}, {":path", r.Path}, {":authority", r.Authority}, {":scheme", "http"}}, r.Headers...)
	status := r.Status
	if status == 0 {
		status = 200
	}
	res, err := d.h.HandleRequest(context.Background(), wasmhost.Request{Headers: hdrs, Properties: props},
		func(context.Context, wasmhost.UpstreamRequest) wasmhost.Response {
			return wasmhost.Response{Status: status}
		})
	if err != nil {
		t.Fatalf("request: %v", err)
	}
	if res.Local != nil {
		return scenario.Result{Status: res.Local.Status, Headers: res.Local.Headers, Body: res.Local.Body}
	}
	return scenario.Result{Forwarded: res.Forwarded, Upstream: res.Upstream.Headers}
}

// Tick runs the filter's timer until it has nothing more to send, waiting
// for each batch to reach the control plane and for the filter to see the
// answer.
func (d *hostDriver) Tick(t *testing.T) {
	for round := 0; round < 50; round++ {
		before, _, _ := d.cp.snapshot()
		if err := d.h.Tick(); err != nil {
			t.Fatalf("tick: %v", err)
		}
		deadline := time.Now().Add(300 * time.Millisecond)
		for {
			n, evs, bad := d.cp.snapshot()
			if len(bad) > 0 {
				t.Fatalf("control plane got bad requests: %v", bad)
			}
			if n > before {
				// Wait for the callback that clears the in-flight call.
				sent := int64(len(evs))
				for end := time.Now().Add(2 * time.Second); d.h.Metrics().Value("meshguard_wasm_events_sent_total") < sent && time.Now().Before(end); {
					time.Sleep(time.Millisecond)
				}
				break
			}
			if time.Now().After(deadline) {
				return
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
}

func (d *hostDriver) Sleep(dur time.Duration) {
	d.mu.Lock()
	d.offset += dur
	d.mu.Unlock()
}

func (d *hostDriver) Events(*testing.T) []wire.Event {
	_, evs, _ := d.cp.snapshot()
	return evs
}

func TestScenariosCompiledModule(t *testing.T) { scenario.Run(t, newHostDriver) }

// TestMeshWideConfigPicksTheNodesWorkload runs the compiled filter with a
// configuration shaped as the control plane sends it over ECDS (every
// workload of the mesh listed, none named): the filter scopes policy to
// the workload of its node (node.cluster), and a node the list does not
// hold fails to start rather than guess.
func TestMeshWideConfigPicksTheNodesWorkload(t *testing.T) {
	var fc wire.FilterConfig
	if err := json.Unmarshal(scenario.Config(t, scenario.Options{}), &fc); err != nil {
		t.Fatal(err)
	}
	fc.Workloads = map[string]wire.Workload{
		"orders.shop":  fc.Workload,
		"stock.supply": {ID: "spiffe://mesh.test/ns/supply/sa/stock", Namespace: "supply", Service: "stock"},
	}
	fc.Workload = wire.Workload{}
	cfg, err := json.Marshal(fc)
	if err != nil {
		t.Fatal(err)
	}
	start := func(cluster string) (*wasmhost.Host, error) {
		return wasmhost.New(context.Background(), filterWasm, wasmhost.Config{
			PluginConfig: cfg, VMs: 1, ManualTicks: true, CompilationCache: cache,
			Properties: wasmhost.Properties{}.SetString("node.id", cluster+"-1").SetString("node.cluster", cluster),
		})
	}
	// The shop namespace's policy refuses the intruder; nothing guards
	// the supply namespace.
	for _, tc := range []struct {
		cluster   string
		forwarded bool
	}{{"orders.shop", false}, {"stock.supply", true}} {
		h, err := start(tc.cluster)
		if err != nil {
			t.Fatalf("%s: %v", tc.cluster, err)
		}
		props := wasmhost.Properties{}.SetString("connection.uri_san_peer_certificate", scenario.Intruder).
			SetBool("connection.mtls", true).SetString("xds.route_name", "orders-api")
		res, err := h.HandleRequest(context.Background(), wasmhost.Request{
			Headers:    [][2]string{{":method", "GET"}, {":path", "/api/x"}, {":authority", "x"}, {":scheme", "http"}},
			Properties: props,
		}, func(context.Context, wasmhost.UpstreamRequest) wasmhost.Response {
			return wasmhost.Response{Status: 200}
		})
		h.Close()
		if err != nil {
			t.Fatal(err)
		}
		if res.Forwarded != tc.forwarded {
			t.Errorf("node %s: forwarded=%v, want %v", tc.cluster, res.Forwarded, tc.forwarded)
		}
	}
	if h, err := start("db.shop"); err == nil {
		h.Close()
		t.Fatal("a node the configuration does not list started")
	}
}

// TestKeySourceChecksLeftOutOfTheFilter pins the one difference between
// the filter's compile and every other (docs/wasm.md, "Module size"): a
// jwtRule's jwksUri and inline jwks are checked by the control plane,
// which refuses to publish a bundle that fails them, and by the authz
// server, which refuses to load one, but not by the filter, which never
// fetches keys. Given such a bundle anyway, the filter decides on the
// rest of it as on a valid one.
func TestKeySourceChecksLeftOutOfTheFilter(t *testing.T) {
	bad := scenario.Options{BadKeySource: true}
	if _, _, err := policies.NewBundle("v1", scenario.Set(bad)); err == nil {
		t.Fatal("the control plane's compile accepts a jwksUri that is not an http(s) URL")
	}
	var fc wire.FilterConfig
	if err := json.Unmarshal(scenario.Config(t, bad), &fc); err != nil {
		t.Fatal(err)
	}
	if _, err := policies.DecodeBundle(fc.Bundle); err == nil {
		t.Fatal("the authz server's compile accepts a jwksUri that is not an http(s) URL")
	}
	d := newHostDriver(t)
	if err := d.Start(t, scenario.Config(t, bad)); err != nil {
		t.Fatalf("the filter refuses the bundle: %v", err)
	}
	for _, tc := range []struct {
		src, route, path string
		forwarded        bool
	}{
		{scenario.Web, "orders-api", "/api/orders/1", true},
		{scenario.Intruder, "orders-api", "/keys/1", false},
	} {
		r := d.Do(t, scenario.Request{Source: tc.src, MTLS: true, SourceAddr: "10.0.0.7:40000", DestAddr: "10.0.0.9:8080",
			Route: tc.route, Method: "GET", Path: tc.path, Authority: "orders.shop.svc.cluster.local:8080"})
		if r.Forwarded != tc.forwarded {
			t.Errorf("%s %s: forwarded=%v, want %v (status %d, body %s)", tc.src, tc.path, r.Forwarded, tc.forwarded, r.Status, r.Body)
		}
	}
}

// TestModuleSize holds the filter module, built as make wasm builds it, to
// its budget (SizeBudget).
func TestModuleSize(t *testing.T) {
	n := len(filterWasm)
	if n > SizeBudget {
		t.Fatalf("the filter module is %d bytes, %d over its budget of %d (docs/wasm.md, \"Module size\")", n, n-SizeBudget, SizeBudget)
	}
	t.Logf("the filter module is %d bytes; budget %d (%d to spare)", n, SizeBudget, SizeBudget-n)
}
