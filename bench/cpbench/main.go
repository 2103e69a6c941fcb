// Command cpbench measures the control plane at fleet scale: snapshot build
// for N nodes (each a distinct workload) under a realistic policy bundle,
// and push to N concurrent ADS clients on loopback. Each size runs in its
// own child process so that memory numbers belong to one size only; the
// parent prints a table with ratios against the baseline size measured in
// the same run.
//
// What a client does is what Envoy does on ADS: subscribe to listeners and
// clusters (wildcard), to its route configurations and to the meshguard
// filter's ECDS resource by name, and ACK every response. The clients run in
// the same process as the server, so the memory figures include them.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/experimental"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	"github.com/meshguard/meshguard/controlplane/mesh"
	"github.com/meshguard/meshguard/controlplane/store"
	"github.com/meshguard/meshguard/controlplane/xds"
	"github.com/meshguard/meshguard/controlplane/xdsserver"
	"github.com/meshguard/meshguard/internal/testbed/policygen"
	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/wire"
)

var heapProfile string

// result is what one child reports.
type result struct {
	Nodes           int     `json:"nodes"`
	Rules           int     `json:"rules"`
	Documents       int     `json:"documents"`
	BundleBytes     int     `json:"bundleBytes"`
	FilterBytes     int     `json:"filterConfigBytes"`
	BuildInitialSec float64 `json:"buildInitialSec"`
	BuildInitialCPU float64 `json:"buildInitialCpuSec"`
	BuildUpdateCPU  float64 `json:"buildUpdateCpuSec"`
	BuildUpdateSec  float64 `json:"buildUpdateSec"`
	ConvergeInitSec float64 `json:"convergeInitialSec"`
	ConvergeUpdSec  float64 `json:"convergeUpdateSec"`
	HeapInuseMiB    float64 `json:"heapInuseMiB"`
	SysMiB          float64 `json:"sysMiB"`
	RSSMiB          float64 `json:"rssMiB"`
	PeakRSSMiB      float64 `json:"peakRssMiB"`
	NACKs           int64   `json:"nacks"`
}

func main() {
	var (
		child    = flag.Int("child", 0, "internal: run one size and print JSON")
		nodes    = flag.Int("nodes", 1000, "nodes (distinct workloads) and ADS clients")
		baseline = flag.Int("baseline", 10, "baseline node count measured in the same run")
		rules    = flag.Int("rules", 1000, "policy rules (internal/testbed/policygen.Realistic)")
		timeout  = flag.Duration("timeout", 2*time.Minute, "give up converging after this long")
		cpuprof  = flag.String("cpuprofile", "", "internal: write a CPU profile of a -child run")
		memprof  = flag.String("memprofile", "", "internal: write a heap profile of a -child run after convergence")
		replicas = flag.Int("replicas", 1, "nodes per workload (1: every node a distinct workload)")
		memlimit = flag.Int64("memlimit-mib", 0, "Go soft memory limit of each run in MiB, as a deployment sets GOMEMLIMIT under a container limit (0: none)")
	)
	flag.Parse()
	if *cpuprof != "" {
		pf, err := os.Create(*cpuprof)
		if err == nil && pprof.StartCPUProfile(pf) == nil {
			defer pprof.StopCPUProfile()
		}
	}
	if *child > 0 {
		heapProfile = *memprof
		if *memlimit > 0 {
			debug.SetMemoryLimit(*memlimit << 20)
		}
		r, err := runSize(*child, *replicas, *rules, *timeout)
		if err != nil {
			fmt.Fprintln(os.Stderr, "cpbench:", err)
			pprof.StopCPUProfile()
			os.Exit(1)
		}
		_ = json.NewEncoder(os.Stdout).Encode(r)
		return
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "cpbench:", err)
		os.Exit(1)
	}
	var results []result
	for _, n := range []int{*baseline, *nodes} {
		out, err := exec.Command(self, "-child", strconv.Itoa(n), "-rules", strconv.Itoa(*rules), "-timeout", timeout.String(),
			"-memlimit-mib", strconv.FormatInt(*memlimit, 10), "-replicas", strconv.Itoa(*replicas)).Output()
		if err != nil {
			if ee, ok := err.(*exec.ExitError); ok {
				os.Stderr.Write(ee.Stderr)
			}
			fmt.Fprintf(os.Stderr, "cpbench: %d nodes: %v\n", n, err)
			os.Exit(1)
		}
		var r result
		if err := json.Unmarshal(lastLine(out), &r); err != nil {
			fmt.Fprintf(os.Stderr, "cpbench: %d nodes: %v\n%s", n, err, out)
			os.Exit(1)
		}
		results = append(results, r)
	}
	report(results[0], results[1], *memlimit, *replicas)
}

func lastLine(b []byte) []byte {
	lines := bytes.Split(bytes.TrimSpace(b), []byte("\n"))
	return lines[len(lines)-1]
}

func report(base, big result, memlimit int64, replicas int) {
	fmt.Printf("control plane bench: %d rules in %d documents (internal/testbed/policygen.Realistic), bundle %.1f KiB; GOMAXPROCS=%d\n",
		big.Rules, big.Documents, float64(big.BundleBytes)/1024, runtime.GOMAXPROCS(0))
	fmt.Printf("wasm filter config (ECDS, one for the mesh: bundle and workload list) %.1f KiB at %d nodes\n",
		float64(big.FilterBytes)/1024, big.Nodes)
	if memlimit > 0 {
		fmt.Printf("Go soft memory limit %d MiB (-memlimit-mib)\n", memlimit)
	}
	if replicas <= 1 {
		fmt.Printf("each node is a distinct workload (1 inbound listener, 3 routes, 1 upstream); every node is sent the shared ECDS filter config\n\n")
	} else {
		fmt.Printf("%d nodes per workload (1 inbound listener, 3 routes, 1 upstream); every node is sent the shared ECDS filter config\n\n", replicas)
	}
	fmt.Printf("%-28s %12s %12s %8s %10s\n", "metric", fmt.Sprintf("%d nodes", base.Nodes), fmt.Sprintf("%d nodes", big.Nodes), "ratio", "target")
	row := func(name string, b, v float64, unit string, target string, ok bool) {
		ratio := "-"
		if b > 0 {
			ratio = fmt.Sprintf("%.1fx", v/b)
		}
		verdict := ""
		if target != "" {
			verdict = "PASS"
			if !ok {
				verdict = "FAIL"
			}
			verdict = target + " " + verdict
		}
		fmt.Printf("%-28s %10.3f%-2s %10.3f%-2s %8s %10s\n", name, b, unit, v, unit, ratio, verdict)
	}
	row("build, initial (s)", base.BuildInitialSec, big.BuildInitialSec, "", "<=1s", big.BuildInitialSec <= 1)
	row("build, policy update (s)", base.BuildUpdateSec, big.BuildUpdateSec, "", "<=1s", big.BuildUpdateSec <= 1)
	row("  CPU time, initial (s)", base.BuildInitialCPU, big.BuildInitialCPU, "", "", true)
	row("  CPU time, update (s)", base.BuildUpdateCPU, big.BuildUpdateCPU, "", "", true)
	row("converge, connect (s)", base.ConvergeInitSec, big.ConvergeInitSec, "", "<=5s", big.ConvergeInitSec <= 5)
	row("converge, policy update (s)", base.ConvergeUpdSec, big.ConvergeUpdSec, "", "<=5s", big.ConvergeUpdSec <= 5)
	row("heap in use (MiB)", base.HeapInuseMiB, big.HeapInuseMiB, "", "", true)
	row("Go runtime Sys (MiB)", base.SysMiB, big.SysMiB, "", "", true)
	row("RSS after converge (MiB)", base.RSSMiB, big.RSSMiB, "", "", true)
	row("peak RSS (MiB)", base.PeakRSSMiB, big.PeakRSSMiB, "", "<=512", big.PeakRSSMiB <= 512)
	fmt.Printf("\nNACKs: %d / %d (must be 0)\n", base.NACKs, big.NACKs)
	fmt.Printf("clients run in the same process: memory includes %d ADS clients; wall times include waiting for a core on a shared machine\n", big.Nodes)
}

func runSize(n, replicas, rules int, timeout time.Duration) (result, error) {
	set, _ := policygen.Realistic(rules, 1)
	m, err := benchMesh(max(1, n/max(1, replicas)))
	if err != nil {
		return result{}, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	xs, err := xdsserver.New(ctx, xdsserver.Options{Mesh: m})
	if err != nil {
		return result{}, err
	}
	st, err := store.New(store.Options{Check: func(b *policies.Bundle) error { _, err := policies.Compile(b); return err }})
	if err != nil {
		return result{}, err
	}
	var publishErr error
	var lastBuild, lastCPU time.Duration
	defer st.Subscribe(func(b *policies.Bundle) {
		start, cpu0 := time.Now(), cpuTime()
		publishErr = xs.Publish(b)
		lastBuild, lastCPU = time.Since(start), cpuTime()-cpu0
	})()
	if err := st.SetSource("files", set); err != nil {
		return result{}, err
	}
	if publishErr != nil {
		return result{}, publishErr
	}
	r := result{Nodes: n, Rules: rules, BuildInitialSec: lastBuild.Seconds(), BuildInitialCPU: lastCPU.Seconds()}
	phase("built")
	b := st.Bundle()
	data, _ := b.Encode()
	r.BundleBytes = len(data)
	r.Documents = len(b.Set.AuthorizationPolicies) + len(b.Set.IdentityPolicies) + len(b.Set.DefaultDenies) +
		len(b.Set.RouteOverrides) + len(b.Set.TrafficBaselines) + len(b.Set.AnomalyProfiles) + len(b.Set.Quarantines)

	g := grpc.NewServer(xdsserver.GRPCServerOptions()...)
	xs.Register(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return result{}, err
	}
	go func() { _ = g.Serve(lis) }()
	defer g.Stop()

	// Several client connections, as many Envoys would use many; streams
	// are spread over them.
	const conns = 16
	var cc []*grpc.ClientConn
	for range min(conns, n) {
		c, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)),
			experimental.WithBufferPool(mem.NopBufferPool{}))
		if err != nil {
			return result{}, err
		}
		defer c.Close()
		cc = append(cc, c)
	}
	fleet := newFleet(n)
	start := time.Now()
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fleet.run(ctx, cc[i%len(cc)], i, m.Workloads[i%len(m.Workloads)])
		}()
	}
	if err := fleet.wait(b.Version, timeout); err != nil {
		return result{}, err
	}
	r.ConvergeInitSec = time.Since(start).Seconds()
	phase("connected")

	// A policy update (a quarantine): rebuild and push to every node.
	q := policies.Set{Quarantines: []policies.Quarantine{{
		APIVersion: policies.APIVersionMeshguard, Kind: policies.KindQuarantine,
		Metadata: policies.ObjectMeta{Name: "bench", Namespace: policies.DefaultRootNamespace},
		Spec:     policies.QuarantineSpec{Identity: "spiffe://" + policygen.TrustDomain + "/ns/ns-0/sa/svc-0", Reason: "bench"},
	}}}
	start = time.Now()
	if err := st.SetSource("quarantine", q); err != nil {
		return result{}, err
	}
	if publishErr != nil {
		return result{}, publishErr
	}
	r.BuildUpdateSec, r.BuildUpdateCPU = lastBuild.Seconds(), lastCPU.Seconds()
	if err := fleet.wait(st.Bundle().Version, timeout); err != nil {
		return result{}, err
	}
	r.ConvergeUpdSec = time.Since(start).Seconds()
	if snap, err := xs.Cache().GetSnapshot(nodeID(m.Workloads[0], 0)); err == nil {
		if fc, ok := snap.GetResources(resource.ExtensionConfigType)[wire.FilterConfigName].(proto.Message); ok {
			r.FilterBytes = proto.Size(fc)
		}
	}

	runtime.GC()
	if heapProfile != "" {
		if pf, err := os.Create(heapProfile); err == nil {
			_ = pprof.WriteHeapProfile(pf)
			_ = pf.Close()
		}
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	r.HeapInuseMiB = float64(ms.HeapInuse) / (1 << 20)
	r.SysMiB = float64(ms.Sys) / (1 << 20)
	r.RSSMiB, r.PeakRSSMiB = rss()
	r.NACKs = fleet.nacks.Load()
	cancel()
	wg.Wait()
	return r, nil
}

// benchMesh is n distinct workloads, ten per namespace.
func benchMesh(n int) (*mesh.Mesh, error) {
	f := mesh.File{
		APIVersion: mesh.APIVersion, Kind: mesh.Kind, Metadata: mesh.Metadata{Name: "bench"},
		Spec: mesh.Spec{
			TrustDomain:  policygen.TrustDomain,
			Authz:        mesh.Endpoint{Address: "authz.meshguard.svc", Port: 9191, SPIFFEID: "spiffe://" + policygen.TrustDomain + "/ns/meshguard/sa/authz"},
			ControlPlane: mesh.Endpoint{Address: "controlplane.meshguard.svc", Port: 8443, SPIFFEID: "spiffe://" + policygen.TrustDomain + "/ns/meshguard/sa/controlplane"},
			Wasm:         mesh.Wasm{File: "/etc/meshguard/meshguard.wasm"},
		},
	}
	for i := range n {
		ns, name := fmt.Sprintf("ns-%d", i/10), fmt.Sprintf("svc-%d", i)
		f.Spec.Workloads = append(f.Spec.Workloads, mesh.Workload{
			Name: name, Namespace: ns,
			SPIFFEID: fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", policygen.TrustDomain, ns, name),
			Labels:   map[string]string{"app": name},
			Inbound: []mesh.Inbound{{Name: "http", Port: 15006, AppPort: 8080, Routes: []mesh.Route{
				{Name: name + "-api", Prefix: "/api/"},
				{Name: name + "-health", Path: "/healthz", DisableExtAuthz: true},
				{Name: name + "-root", Prefix: "/"},
			}}},
			Upstreams: []mesh.Upstream{{
				Name: "next", Address: fmt.Sprintf("svc-%d.ns-%d.svc", (i+1)%n, ((i+1)%n)/10), Port: 15006,
				SPIFFEID:   fmt.Sprintf("spiffe://%s/ns/ns-%d/sa/svc-%d", policygen.TrustDomain, ((i+1)%n)/10, (i+1)%n),
				ListenPort: 9001,
			}},
		})
	}
	m, err := f.Validate()
	if err != nil {
		return nil, err
	}
	return m, nil
}

// fleet tracks the ECDS (filter config = bundle) version each client holds.
type fleet struct {
	mu       sync.Mutex
	cond     *sync.Cond
	versions []string
	ready    []int // types received per client
	nacks    atomic.Int64
}

func newFleet(n int) *fleet {
	f := &fleet{versions: make([]string, n), ready: make([]int, n)}
	f.cond = sync.NewCond(&f.mu)
	return f
}

// wait returns when every client holds version on ECDS and has received
// listeners, clusters and routes.
func (f *fleet) wait(version string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	timer := time.AfterFunc(timeout, func() { f.mu.Lock(); f.cond.Broadcast(); f.mu.Unlock() })
	defer timer.Stop()
	f.mu.Lock()
	defer f.mu.Unlock()
	for {
		missing := 0
		for i, v := range f.versions {
			if v != version || f.ready[i] < 4 {
				missing++
			}
		}
		if missing == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d clients not at version %s after %s", missing, len(f.versions), version, timeout)
		}
		f.cond.Wait()
	}
}

// run is one Envoy-like ADS client.
func (f *fleet) run(ctx context.Context, conn *grpc.ClientConn, i int, w *mesh.ValidWorkload) {
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return
	}
	node := &core.Node{Id: nodeID(w, i), Cluster: w.Key}
	names := map[string][]string{
		resource.ListenerType:        nil,
		resource.ClusterType:         nil,
		resource.RouteType:           {"inbound_http", "outbound_next"},
		resource.ExtensionConfigType: {wire.FilterConfigName},
	}
	for typ, ns := range names {
		if err := stream.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: typ, ResourceNames: ns}); err != nil {
			return
		}
	}
	seen := map[string]bool{}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return
		}
		typ := resp.GetTypeUrl()
		ok := len(resp.GetResources()) > 0
		if typ == resource.ExtensionConfigType && !seen[typ] {
			ok = checkFilterConfig(resp) == nil
		}
		req := &discovery.DiscoveryRequest{TypeUrl: typ, ResourceNames: names[typ], ResponseNonce: resp.GetNonce(), VersionInfo: resp.GetVersionInfo()}
		if !ok {
			f.nacks.Add(1)
			req.VersionInfo = ""
			req.ErrorDetail = &rpcstatus.Status{Message: "bad response"}
		}
		if err := stream.Send(req); err != nil {
			return
		}
		f.mu.Lock()
		if ok && !seen[typ] {
			seen[typ] = true
			f.ready[i]++
		}
		if ok && typ == resource.ExtensionConfigType {
			f.versions[i] = resp.GetVersionInfo()
		}
		f.cond.Broadcast()
		f.mu.Unlock()
	}
}

func nodeID(w *mesh.ValidWorkload, i int) string { return fmt.Sprintf("%s-%d", w.Name, i) }

// checkFilterConfig checks that the ECDS response holds the filter config;
// decoding the bundle inside would measure the client, not the server.
func checkFilterConfig(resp *discovery.DiscoveryResponse) error {
	for _, a := range resp.GetResources() {
		var tec core.TypedExtensionConfig
		if err := a.UnmarshalTo(&tec); err != nil {
			return err
		}
		if tec.Name == wire.FilterConfigName && tec.TypedConfig.GetTypeUrl() == xds.WasmTypeURL {
			return nil
		}
	}
	return fmt.Errorf("no %s", wire.FilterConfigName)
}

// phase prints the memory at a phase boundary to stderr (CPBENCH_PHASES=1).
func phase(name string) {
	if os.Getenv("CPBENCH_PHASES") == "" {
		return
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	cur, peak := rss()
	fmt.Fprintf(os.Stderr, "%-10s heapInuse=%.0fMiB sys=%.0fMiB rss=%.0fMiB peak=%.0fMiB gc=%d\n", name,
		float64(ms.HeapInuse)/(1<<20), float64(ms.Sys)/(1<<20), cur, peak, ms.NumGC)
	runtime.GC()
	runtime.ReadMemStats(&ms)
	fmt.Fprintf(os.Stderr, "%-10s after GC heapInuse=%.0fMiB\n", name, float64(ms.HeapInuse)/(1<<20))
}

// cpuTime is the process's user+system CPU time. The machine may be shared:
// wall-clock times then include waiting for a core, CPU time does not.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// rss returns the resident set size and its peak, from /proc/self/status.
func rss() (cur, peak float64) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		var dst *float64
		switch {
		case strings.HasPrefix(line, "VmRSS:"):
			dst = &cur
		case strings.HasPrefix(line, "VmHWM:"):
			dst = &peak
		default:
			continue
		}
		fields := strings.Fields(line)
		if len(fields) >= 2 {
			kb, _ := strconv.ParseFloat(fields[1], 64)
			*dst = kb / 1024
		}
	}
	return cur, peak
}
