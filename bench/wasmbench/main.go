// Command wasmbench measures the meshguard proxy-wasm filter against a
// no-op filter built with the same SDK and toolchain, both run in the same
// wazero proxy-wasm host (internal/testbed/wasmhost) in the same process: cost per request
// and its ratio to the no-op (for requests into the workload and for the
// workload's own requests on its outbound side), the module's memory after
// many requests (linear memory and the Go heap inside the module), and
// module sizes.
//
//	go run ./bench/wasmbench -filter bin/meshguard-filter.wasm -noop bin/noop.wasm
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/pprof"
	"sort"

	"github.com/meshguard/meshguard/internal/testbed/wasmhost"
	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/wire"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "wasmbench:", err)
		os.Exit(1)
	}
}

type options struct {
	filter, noop, floor string
	requests            int // for the memory run
	perRound            int // requests per timing round
	rounds              int
	perConn             int
	cpuProfile          string
}

func run(args []string, out io.Writer) error {
	var o options
	fs := flag.NewFlagSet("wasmbench", flag.ContinueOnError)
	fs.StringVar(&o.filter, "filter", "bin/meshguard-filter.wasm", "meshguard filter module")
	fs.StringVar(&o.noop, "noop", "bin/noop.wasm", "no-op filter module (the baseline)")
	fs.StringVar(&o.floor, "floor", "bin/wasmbench-floor.wasm", "module making only meshguard's host calls (optional)")
	fs.IntVar(&o.requests, "requests", 1_000_000, "requests of the memory run")
	fs.IntVar(&o.perRound, "per-round", 20_000, "requests per timing round")
	fs.IntVar(&o.rounds, "rounds", 5, "timing rounds per filter (alternating; the median is reported)")
	fs.IntVar(&o.perConn, "per-connection", 100, "requests per downstream connection (connection.id); mesh traffic rides long-lived connections")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of the timing rounds to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	filterWasm, err := os.ReadFile(o.filter)
	if err != nil {
		return err
	}
	noopWasm, err := os.ReadFile(o.noop)
	if err != nil {
		return err
	}
	floorWasm, _ := os.ReadFile(o.floor) // optional
	cfg, err := pluginConfig()
	if err != nil {
		return err
	}
	ctx := context.Background()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	mg, err := wasmhost.New(ctx, filterWasm, wasmhost.Config{PluginConfig: cfg, VMs: 1, ManualTicks: true, Logger: quiet})
	if err != nil {
		return fmt.Errorf("start meshguard filter: %w", err)
	}
	defer mg.Close()
	noop, err := wasmhost.New(ctx, noopWasm, wasmhost.Config{VMs: 1, ManualTicks: true, Logger: quiet})
	if err != nil {
		return fmt.Errorf("start no-op filter: %w", err)
	}
	defer noop.Close()
	var floor *wasmhost.Host
	if floorWasm != nil {
		if floor, err = wasmhost.New(ctx, floorWasm, wasmhost.Config{VMs: 1, ManualTicks: true, Logger: quiet}); err != nil {
			return fmt.Errorf("start floor filter: %w", err)
		}
		defer floor.Close()
	}

	// Check the requests really go through meshguard's allow paths.
	res, err := mg.HandleRequest(ctx, request(0, 1), nil)
	if err != nil || !res.Forwarded {
		return fmt.Errorf("benchmark request is not allowed by the filter (err %v, local %+v)", err, res.Local)
	}
	res, err = mg.HandleRequest(ctx, outRequest(0, 1), nil)
	if err != nil || !res.Forwarded {
		return fmt.Errorf("benchmark outbound request is not let out by the filter (err %v, local %+v)", err, res.Local)
	}

	perConn := max(o.perConn, 1)
	reqFor := func(perConn int) func(int) wasmhost.Request {
		return func(i int) wasmhost.Request { return request(i, perConn) }
	}
	load := func(h *wasmhost.Host, n int) (wasmhost.LoadReport, error) { return loadWith(h, n, reqFor(perConn)) }
	loadWith = func(h *wasmhost.Host, n int, req func(int) wasmhost.Request) (wasmhost.LoadReport, error) {
		rep, err := h.RunLoad(ctx, wasmhost.LoadOptions{Requests: n, Concurrency: 1, Request: req})
		if err == nil && rep.Errors > 0 {
			err = fmt.Errorf("%d errors, first: %v", rep.Errors, rep.FirstError)
		}
		return rep, err
	}
	// Warm up both (JIT-compiled code is ready; Go heaps reach steady state).
	for _, h := range []*wasmhost.Host{mg, noop, floor} {
		if h == nil {
			continue
		}
		if _, err := load(h, o.perRound); err != nil {
			return err
		}
	}
	if o.cpuProfile != "" {
		stop, err := startProfile(o.cpuProfile)
		if err != nil {
			return err
		}
		defer stop()
	}
	var mgNs, mg1Ns, outNs, noopNs, floorNs, mgAllocs, noopAllocs []float64
	for r := 0; r < o.rounds; r++ {
		a, err := load(noop, o.perRound)
		if err != nil {
			return err
		}
		b, err := load(mg, o.perRound)
		if err != nil {
			return err
		}
		c, err := loadWith(mg, o.perRound, reqFor(1))
		if err != nil {
			return err
		}
		d, err := loadWith(mg, o.perRound, func(i int) wasmhost.Request { return outRequest(i, perConn) })
		if err != nil {
			return err
		}
		noopNs, mgNs, mg1Ns = append(noopNs, a.NsPerRequest), append(mgNs, b.NsPerRequest), append(mg1Ns, c.NsPerRequest)
		outNs = append(outNs, d.NsPerRequest)
		if floor != nil {
			f, err := load(floor, o.perRound)
			if err != nil {
				return err
			}
			floorNs = append(floorNs, f.NsPerRequest)
		}
		noopAllocs, mgAllocs = append(noopAllocs, a.HostAllocsPerRequest), append(mgAllocs, b.HostAllocsPerRequest)
	}
	nNoop, nMg, nMg1 := median(noopNs), median(mgNs), median(mg1Ns)
	fmt.Fprintf(out, "per-request cost (same host, same run, %d alternating rounds x %d requests, median):\n", o.rounds, o.perRound)
	fmt.Fprintf(out, "  no-op filter                        %9.0f ns/request   %5.1f host allocs/request\n", nNoop, median(noopAllocs))
	fmt.Fprintf(out, "  meshguard, %3d requests/connection  %9.0f ns/request   %5.1f host allocs/request\n", perConn, nMg, median(mgAllocs))
	fmt.Fprintf(out, "  meshguard, a new connection each    %9.0f ns/request\n", nMg1)
	nOut := median(outNs)
	fmt.Fprintf(out, "  meshguard outbound side, %3d/conn   %9.0f ns/request   (the workload's own requests: %.2fx no-op)\n", perConn, nOut, nOut/nNoop)
	if len(floorNs) > 0 {
		nFloor := median(floorNs)
		fmt.Fprintf(out, "  host calls only (floor module)      %9.0f ns/request\n", nFloor)
		fmt.Fprintf(out, "  ratio meshguard/floor: %.2fx (meshguard's own logic over the host calls any such filter makes)\n", nMg/nFloor)
	}
	ratio := nMg / nNoop
	fmt.Fprintf(out, "  ratio meshguard/no-op: %.2fx with connection reuse, %.2fx without (target <= 2x) %s\n", ratio, nMg1/nNoop, verdict(ratio <= 2))

	// Memory: the module's linear memory and Go heap over a long run.
	fmt.Fprintf(out, "memory over %d requests through the meshguard filter:\n", o.requests)
	checkpoints := []int{o.requests / 10, o.requests / 2, o.requests}
	done := 0
	var lin []uint64
	for _, c := range checkpoints {
		if _, err := load(mg, c-done); err != nil {
			return err
		}
		done = c
		if err := mg.Tick(); err != nil {
			return err
		}
		m := mg.MemoryStats()[0]
		lin = append(lin, m)
		fmt.Fprintf(out, "  after %8d: linear memory %6.1f MiB, Go heap in module %6.1f MiB (runtime sys %6.1f MiB)\n",
			c, mib(m), mib(uint64(mg.Metrics().Value("meshguard_wasm_go_heap_bytes"))), mib(uint64(mg.Metrics().Value("meshguard_wasm_go_sys_bytes"))))
	}
	flat := lin[len(lin)-1] == lin[0]
	fmt.Fprintf(out, "  linear memory flat after warm-up: %v; final %.1f MiB (target <= 32 MiB) %s\n",
		flat, mib(lin[len(lin)-1]), verdict(flat && lin[len(lin)-1] <= 32<<20))
	fmt.Fprintf(out, "  tracked identities: %d\n", mg.Metrics().Value("meshguard_wasm_tracked_identities"))

	fmt.Fprintln(out, "module size:")
	for _, f := range []string{o.filter, o.noop} {
		st, err := os.Stat(f)
		if err != nil {
			return err
		}
		line := fmt.Sprintf("  %-32s %6.2f MB (%d bytes)", f, float64(st.Size())/1e6, st.Size())
		if f == o.filter {
			line += fmt.Sprintf(" (target <= 4 MiB, %d bytes) %s", maxModule, verdict(st.Size() <= maxModule))
		}
		fmt.Fprintln(out, line)
	}
	return nil
}

// maxModule is the filter module's size budget: 4 MiB.
const maxModule = 4 << 20

func startProfile(path string) (func(), error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

func verdict(ok bool) string {
	if ok {
		return "OK"
	}
	return "OVER TARGET"
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s[len(s)/2]
}

var callers = []string{
	"spiffe://bench.test/ns/shop/sa/web",
	"spiffe://bench.test/ns/shop/sa/cart",
	"spiffe://bench.test/ns/shop/sa/checkout",
	"spiffe://bench.test/ns/ops/sa/monitor",
}

// request is an ordinary allowed request: a realistic header set, one of a
// few callers, record IDs in the path, the route the baseline knows.
func request(i, perConn int) wasmhost.Request {
	props := wasmhost.Properties{}
	props.SetUint("connection.id", uint64(i/perConn+1))
	props.SetString("connection.uri_san_peer_certificate", callers[(i/perConn)%len(callers)])
	props.SetBool("connection.mtls", true)
	props.SetString("source.address", "10.1.0.7:43512")
	props.SetString("destination.address", "10.1.0.9:8080")
	props.SetString("xds.route_name", "orders-api")
	props.SetInt("listener_direction", 1) // INBOUND
	return wasmhost.Request{
		Headers: [][2]string{
			{":method", "GET"}, {":path", fmt.Sprintf("/api/orders/%d?expand=items", i%5000)},
			{":authority", "orders.shop.svc.cluster.local:8080"}, {":scheme", "http"},
			{"user-agent", "shop-web/1.4"}, {"accept", "application/json"},
			{"x-request-id", "0b5e2f7c-8d1a-4c1e-9a43-3c2e9e0c6f11"}, {"x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"},
			{"x-forwarded-proto", "http"}, {"content-length", "0"},
		},
		Properties: props,
	}
}

// outClusters are the upstream clusters the workload's own requests go to:
// one the configuration names, two as Istio names them.
var outClusters = []string{
	"outbound|payments",
	"outbound|8080||cart.shop.svc.cluster.local",
	"outbound|8080||inventory.shop.svc.cluster.local",
}

// outRequest is an ordinary request the workload makes through its
// sidecar's outbound listener: plain HTTP from the application, a few
// destinations, record IDs in the path.
func outRequest(i, perConn int) wasmhost.Request {
	props := wasmhost.Properties{}
	props.SetUint("connection.id", uint64(1<<32+i/perConn))
	props.SetBool("connection.mtls", false)
	props.SetString("source.address", "127.0.0.1:51234")
	props.SetString("destination.address", "127.0.0.1:9001")
	props.SetString("xds.route_name", "outbound")
	props.SetString("xds.cluster_name", outClusters[(i/perConn)%len(outClusters)])
	props.SetInt("listener_direction", 2) // OUTBOUND
	return wasmhost.Request{
		Headers: [][2]string{
			{":method", "POST"}, {":path", fmt.Sprintf("/api/items/%d", i%5000)},
			{":authority", "upstream"}, {":scheme", "http"},
			{"user-agent", "orders/2.0"}, {"accept", "application/json"},
			{"x-request-id", "0b5e2f7c-8d1a-4c1e-9a43-3c2e9e0c6f11"}, {"x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"},
			{"content-type", "application/json"}, {"content-length", "0"},
		},
		Properties: props,
	}
}

// pluginConfig is a realistic configuration: an Istio-style ALLOW policy,
// a per-route override, a traffic baseline in shadow mode and an anomaly
// profile running every detector.
func pluginConfig() ([]byte, error) {
	meta := func(n string) policies.ObjectMeta { return policies.ObjectMeta{Name: n, Namespace: "shop"} }
	set := policies.Set{
		Settings: policies.MeshSettingsSpec{TrustDomain: "bench.test"},
		AuthorizationPolicies: []policies.AuthorizationPolicy{{
			APIVersion: policies.APIVersionIstioV1, Kind: policies.KindAuthorizationPolicy, Metadata: meta("orders"),
			Spec: policies.AuthorizationPolicySpec{Action: "ALLOW", Rules: []policies.Rule{{
				From: []policies.RuleFrom{{Source: policies.Source{Principals: []string{"bench.test/ns/shop/sa/*", "bench.test/ns/ops/sa/monitor"}}}},
				To:   []policies.RuleTo{{Operation: policies.Operation{Methods: []string{"GET", "POST"}, Paths: []string{"/api/*"}}}},
			}}},
		}},
		RouteOverrides: []policies.RouteOverride{{APIVersion: policies.APIVersionMeshguard, Kind: policies.KindRouteOverride, Metadata: meta("admin"),
			Spec: policies.RouteOverrideSpec{Route: "orders-admin", Action: "DENY", Rules: []policies.IdentityRule{{
				From: []policies.IdentitySource{{NotIDs: []string{"spiffe://bench.test/ns/ops/sa/admin"}}}}}}}},
		TrafficBaselines: []policies.TrafficBaseline{{APIVersion: policies.APIVersionMeshguard, Kind: policies.KindTrafficBaseline, Metadata: meta("graph"),
			Spec: policies.TrafficBaselineSpec{Mode: policies.BaselineShadow, Edges: []policies.Edge{
				{Source: "spiffe://bench.test/ns/shop/**", Destination: "orders", Routes: []string{"orders-api"}},
				{Source: "spiffe://bench.test/ns/ops/**", Destination: "orders"},
				{Source: "spiffe://bench.test/ns/shop/sa/orders", Destination: "payments"},
				{Source: "spiffe://bench.test/ns/shop/sa/orders", Destination: "cart"},
				{Source: "spiffe://bench.test/ns/shop/sa/orders", Destination: "inventory"}}}}},
		AnomalyProfiles: []policies.AnomalyProfile{{APIVersion: policies.APIVersionMeshguard, Kind: policies.KindAnomalyProfile, Metadata: meta("default"),
			Spec: policies.AnomalyProfileSpec{
				Rate: &policies.RateDetector{}, Errors: &policies.ErrorDetector{}, Enumeration: &policies.EnumerationDetector{},
				Egress: &policies.EgressDetector{}, Lateral: &policies.LateralDetector{},
				// The benchmark sends one caller far faster than it ever ran
				// before; count the anomaly instead of rate-limiting the run.
				Responses: map[string]string{"rate": "count"},
			}}},
	}
	b, _, err := policies.NewBundle("bench", set)
	if err != nil {
		return nil, err
	}
	raw, err := b.Encode()
	if err != nil {
		return nil, err
	}
	// As the control plane configures a sidecar: both sides, each
	// listener saying which.
	return json.Marshal(wire.FilterConfig{
		Bundle: raw,
		Workload: wire.Workload{ID: "spiffe://bench.test/ns/shop/sa/orders", Namespace: "shop", Service: "orders",
			Upstreams: map[string]string{"outbound|payments": "payments.pay"}},
		Direction:   wire.DirectionListener,
		RequireMTLS: true,
	})
}

var loadWith func(h *wasmhost.Host, n int, req func(int) wasmhost.Request) (wasmhost.LoadReport, error)
