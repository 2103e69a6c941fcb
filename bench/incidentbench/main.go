// Command incidentbench measures the incident-response half of meshguard:
//
//   - ingest: decisions shipped by authz-server shippers over HTTP into the
//     control plane's real decisions endpoint and SQLite record store,
//     committed per second, with every drop counted;
//   - authz: an in-process Check loop (1,000-rule realistic policy) with
//     decision shipping off and on, in the same run, while the store takes
//     what is shipped: the ratio is what shipping costs a check;
//   - size: the store's bytes per million decisions;
//   - timeline: an incident timeline query over a store of -records (10
//     million by default) records, built once into a cached file under bin/
//     (the build time is printed; later runs reuse it);
//   - replay: recorded decisions replayed per second from a decision-log
//     file under a stricter candidate.
//
// Numbers measured on a machine shared with other work are noisy; the
// command prints what it measured and the targets next to them.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshguard/meshguard/authz/decisionlog"
	"github.com/meshguard/meshguard/authz/identity"
	"github.com/meshguard/meshguard/authz/metrics"
	"github.com/meshguard/meshguard/authz/request"
	"github.com/meshguard/meshguard/authz/server"
	"github.com/meshguard/meshguard/authz/shipper"
	"github.com/meshguard/meshguard/controlplane/api"
	"github.com/meshguard/meshguard/controlplane/learn"
	"github.com/meshguard/meshguard/controlplane/quarantine"
	"github.com/meshguard/meshguard/controlplane/record"
	"github.com/meshguard/meshguard/controlplane/recordstore"
	"github.com/meshguard/meshguard/controlplane/state/disk"
	"github.com/meshguard/meshguard/internal/testbed/ca"
	"github.com/meshguard/meshguard/internal/testbed/policygen"
	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/replay"
	"github.com/meshguard/meshguard/policies/source"
	"github.com/meshguard/meshguard/policies/wire"
)

func main() {
	var (
		what     = flag.String("run", "ingest,authz,timeline,replay", "comma-separated: ingest, authz, timeline, replay")
		ingestN  = flag.Int("ingest", 1_000_000, "decisions shipped in the ingest run")
		shippers = flag.Int("shippers", 4, "concurrent authz-server shippers in the ingest run")
		records  = flag.Int("records", 10_000_000, "records in the timeline fixture")
		replayN  = flag.Int("replay", 1_000_000, "decision-log lines in the replay fixture")
		dur      = flag.Duration("authz-duration", 5*time.Second, "duration of each authz phase")
		cache    = flag.String("cache", "bin", "directory of the cached fixtures")
		profile  = flag.String("cpuprofile", "", "write a CPU profile here")
		serve    = flag.Bool("serve-control-plane", false, "internal: run the decisions endpoint and a record store in a temporary directory, print its URL, stop when standard input closes")
	)
	flag.Parse()
	if *serve {
		must(serveControlPlane())
		return
	}
	if *profile != "" {
		f, err := os.Create(*profile)
		must(err)
		must(pprof.StartCPUProfile(f))
		defer pprof.StopCPUProfile()
	}
	run := map[string]bool{}
	for _, w := range splitComma(*what) {
		run[w] = true
	}
	fmt.Printf("incidentbench: GOMAXPROCS=%d, %s\n", runtime.GOMAXPROCS(0), time.Now().Format(time.RFC3339))
	if run["ingest"] {
		must(benchIngest(*ingestN, *shippers))
	}
	if run["authz"] {
		must(benchAuthz(*dur))
	}
	if run["timeline"] {
		must(benchTimeline(*cache, *records))
	}
	if run["replay"] {
		must(benchReplay(*cache, *replayN))
	}
}

func must(err error) {
	if err != nil {
		pprof.StopCPUProfile()
		fmt.Fprintln(os.Stderr, "incidentbench:", err)
		os.Exit(1)
	}
}

// cpuTime is the process's user+system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// load1 is the machine's 1-minute load average, for the record.
func load1() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "?"
	}
	return f[0]
}

func splitComma(s string) []string {
	var out []string
	for len(s) > 0 {
		i := 0
		for i < len(s) && s[i] != ',' {
			i++
		}
		if i > 0 {
			out = append(out, s[:i])
		}
		if i == len(s) {
			break
		}
		s = s[i+1:]
	}
	return out
}

// mesh is the synthetic mesh decisions are drawn from.
type mesh struct {
	callers, workloads []string
}

func newMesh(callers, workloads int) mesh {
	var m mesh
	for i := range callers {
		m.callers = append(m.callers, fmt.Sprintf("spiffe://cluster.local/ns/team%d/sa/svc%d", i%40, i))
	}
	for i := range workloads {
		m.workloads = append(m.workloads, fmt.Sprintf("spiffe://cluster.local/ns/team%d/sa/api%d", i%40, i))
	}
	return m
}

var reasons = []struct {
	reason  string
	allowed bool
	policy  string
}{
	{"allowed_by_policy", true, "AuthorizationPolicy/team%d/api"},
	{"allowed_by_policy", true, "AuthorizationPolicy/team%d/api"},
	{"allowed_by_policy", true, "AuthorizationPolicy/team%d/api"},
	{"allowed_no_policy", true, ""},
	{"denied_no_allow_match", false, ""},
	{"denied_by_policy", false, "AuthorizationPolicy/team%d/deny-admin"},
}

// decision is a realistic recorded decision at t.
func (m mesh) decision(r *rand.Rand, t time.Time, seq uint64) *decisionlog.Entry {
	src := m.callers[r.IntN(len(m.callers))]
	w := r.IntN(len(m.workloads))
	rs := reasons[r.IntN(len(reasons))]
	e := &decisionlog.Entry{
		Time: t, DecisionID: fmt.Sprintf("5f1c0a9e2b7d-%x", seq), RequestID: fmt.Sprintf("%08x-1f0e-4d1a-9a1e-0d3c8b1f2a77", seq),
		Protocol: "grpc", Source: src, SourceMethod: "certificate", Peer: src, MTLS: true,
		SourceIP: fmt.Sprintf("10.%d.%d.%d", w%4, r.IntN(8), 2+r.IntN(200)), DestinationIP: fmt.Sprintf("10.9.%d.%d", w/250, w%250), DestinationPort: 8080,
		Destination: m.workloads[w], TargetNamespace: fmt.Sprintf("team%d", w%40), TargetService: fmt.Sprintf("api%d", w),
		TargetLabels: map[string]string{"app": fmt.Sprintf("api%d", w), "version": "v1"},
		Method:       "GET", Host: fmt.Sprintf("api%d.team%d.svc:8080", w, w%40), Path: fmt.Sprintf("/v1/items/%d", r.IntN(5000)),
		Route: fmt.Sprintf("api%d-read", w), Scope: fmt.Sprintf("team%d/api%d", w%40, w),
		Allowed: rs.allowed, Reason: rs.reason, Mode: string(policies.ModeEnforce), BundleVersion: "42-3f1c0a9e2b7d", LatencyMicros: int64(20 + r.IntN(80)),
	}
	if rs.policy != "" {
		e.Policy, e.Rule = fmt.Sprintf(rs.policy, w%40), "0"
	}
	return e
}

// controlPlane is the real decisions endpoint over the real record store.
type controlPlane struct {
	store *recordstore.Store
	url   string
	reg   *prometheus.Registry
	stop  func()
}

func startControlPlane(dir string) (*controlPlane, error) {
	reg := prometheus.NewRegistry()
	st, err := recordstore.Open(context.Background(), recordstore.Options{Path: filepath.Join(dir, "records.db"), MaxAge: -1, MaxBytes: -1, Registerer: reg})
	if err != nil {
		return nil, err
	}
	qs, err := newQuarantine(dir)
	if err != nil {
		return nil, err
	}
	h, err := api.New(api.Options{Quarantine: qs, Learner: learn.New(0, nil), Insecure: true, Records: st, Forensics: st, Registerer: reg})
	if err != nil {
		return nil, err
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); st.Run(ctx) }()
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(lis) }()
	return &controlPlane{store: st, url: "http://" + lis.Addr().String(), reg: reg, stop: func() {
		_ = srv.Close()
		cancel()
		<-done
		_ = st.Close()
	}}, nil
}

type nopSink struct{}

func (nopSink) SetSource(string, policies.Set) error { return nil }

func newQuarantine(dir string) (*quarantine.Manager, error) {
	ds, err := disk.Open(filepath.Join(dir, "state"), disk.Options{})
	if err != nil {
		return nil, err
	}
	return quarantine.New(quarantine.Options{Store: ds, Sink: nopSink{}})
}

func newShipper(url string, reg prometheus.Registerer) (*shipper.Shipper, error) {
	return shipper.New(shipper.Config{URL: url, Client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}},
		AllowSampleRate: 1, Batch: 2000, Buffer: 50_000, Interval: 100 * time.Millisecond, Registerer: reg})
}

func counter(reg *prometheus.Registry, name string, labels map[string]string) float64 {
	mfs, _ := reg.Gather()
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue metric
				}
			}
			total += m.GetCounter().GetValue()
		}
	}
	return total
}

// benchIngest ships n decisions from several shippers as fast as they can
// and measures the rate at which the store commits them.
func benchIngest(n, shippers int) error {
	dir, err := os.MkdirTemp("", "incidentbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	cp, err := startControlPlane(dir)
	if err != nil {
		return err
	}
	defer cp.stop()
	m := newMesh(2000, 200)
	// Prebuild the entries so that generating them is not measured.
	entries := make([]*decisionlog.Entry, n)
	r := rand.New(rand.NewPCG(1, 2))
	t0 := time.Now().Add(-time.Hour)
	for i := range entries {
		entries[i] = m.decision(r, t0.Add(time.Duration(i)*time.Microsecond), uint64(i))
	}
	regs := make([]*prometheus.Registry, shippers)
	var ships []*shipper.Shipper
	for i := range shippers {
		regs[i] = prometheus.NewRegistry()
		s, err := newShipper(cp.url, regs[i])
		if err != nil {
			return err
		}
		ships = append(ships, s)
	}
	start, cpu0 := time.Now(), cpuTime()
	var logged atomic.Int64
	var pw sync.WaitGroup
	for i, s := range ships {
		pw.Add(1)
		go func() {
			defer pw.Done()
			for j := i; j < n; j += shippers {
				// An authz server at its limit: when the shipper's queue is
				// full the decision is dropped (counted), never waited for.
				s.Log(entries[j], nil, time.Time{})
				logged.Add(1)
				if j%2000 == 0 {
					runtime.Gosched()
				}
			}
		}()
	}
	pw.Wait()
	for _, s := range ships { // send what they hold, as at an authz server's shutdown
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		err := s.Close(ctx)
		cancel()
		if err != nil {
			return err
		}
	}
	if err := cp.store.Sync(context.Background()); err != nil {
		return err
	}
	elapsed, cpu := time.Since(start), cpuTime()-cpu0
	stored := counter(cp.reg, "meshguard_controlplane_records_stored_total", nil)
	var dropped, shipped float64
	for _, reg := range regs {
		dropped += counter(reg, "meshguard_authz_decision_ship_dropped_total", nil)
		shipped += counter(reg, "meshguard_authz_decisions_shipped_total", nil)
	}
	refused := counter(cp.reg, "meshguard_controlplane_records_refused_total", nil)
	reported := counter(cp.reg, "meshguard_controlplane_decisions_dropped_by_reporters_total", nil)
	fmt.Printf("\ningest: %d decisions from %d shippers over HTTP into the SQLite store in %s\n", n, shippers, elapsed.Round(time.Millisecond))
	fmt.Printf("  stored %.0f (%.0f decisions/s committed; target >= 20,000/s), dropped by shippers %.0f (full queue, counted; %.0f reported to the control plane), refused by a busy store and retried %.0f\n",
		stored, stored/elapsed.Seconds(), dropped, reported, refused)
	fmt.Printf("  CPU %.1fs for %.1fs of wall time (load average %s on %d CPUs): %.0f decisions per CPU-second, shippers, HTTP, decoding and store together\n",
		cpu.Seconds(), elapsed.Seconds(), load1(), runtime.NumCPU(), stored/cpu.Seconds())
	if stored+dropped != float64(n) {
		fmt.Printf("  ACCOUNTING MISMATCH: stored %.0f + dropped %.0f != %d\n", stored, dropped, n)
	}
	_ = shipped
	// The floor: SQLite alone, rows of the same shape, no meshguard code.
	raw, err := rawInsertRate(min(n, 300_000))
	if err != nil {
		return fmt.Errorf("raw SQLite floor: %w", err)
	}
	fmt.Printf("  floor, same run: SQLite alone inserts %.0f rows/s of this shape (WAL, the store's indexes, 5,000-row transactions, prepared 32-row INSERTs, values made beforehand): ingest is %.2fx of it\n",
		raw, stored/elapsed.Seconds()/raw)
	u, err := cp.store.Usage(context.Background())
	if err != nil {
		return err
	}
	fmt.Printf("size: %.1f MiB used for %.0f decisions = %.0f MiB per million (file with WAL %.1f MiB)\n",
		float64(u.Bytes)/(1<<20), stored, float64(u.Bytes)/(1<<20)/stored*1e6, float64(u.FileBytes)/(1<<20))
	return nil
}

// benchAuthz runs Check in process with shipping off, then on (shipping
// to a control plane and store in another process, as in a mesh),
// alternating. It reports checks per second and this process's CPU time
// per check: the first shares the machine's two cores with the control
// plane, the second is what shipping costs the authz server itself.
func benchAuthz(d time.Duration) error {
	cp, err := startControlPlaneProcess()
	if err != nil {
		return err
	}
	defer cp.stop()
	set, pm := policygen.Realistic(1000, 1)
	bundle, _, err := policies.NewBundle("bench", set)
	if err != nil {
		return err
	}
	snap, err := policies.Compile(bundle)
	if err != nil {
		return err
	}
	eng := &policies.Engine{}
	eng.Swap(snap)
	c, _ := ca.New(spiffeid.RequireTrustDomainFromString(policygen.TrustDomain))
	res, err := identity.New(identity.Config{Bundles: spiffebundle.NewSet(c.Bundle()), JWTAudiences: []string{"a"}})
	if err != nil {
		return err
	}
	reqs := checkRequests(&set, pm)
	sreg := prometheus.NewRegistry()
	sh, err := newShipper(cp.url, sreg)
	if err != nil {
		return err
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_ = sh.Close(ctx)
	}()
	mk := func(ship server.DecisionSink) (*server.Server, error) {
		dl, _ := decisionlog.New(decisionlog.Config{W: io.Discard, AllowSampleRate: 0.01})
		return server.New(server.Config{Engine: eng, Identity: res, Log: slog.New(slog.DiscardHandler), Metrics: metrics.New(prometheus.NewRegistry()), DecisionLog: dl, Ship: ship})
	}
	off, err := mk(nil)
	if err != nil {
		return err
	}
	on, err := mk(sh)
	if err != nil {
		return err
	}
	// measure returns checks per second and CPU microseconds per check
	// of this process (the checks, and with shipping on the shipper's
	// encoding and sending).
	measure := func(s *server.Server) (float64, float64) {
		var n int64
		start, cpu0 := time.Now(), cpuTime()
		for time.Since(start) < d {
			for i := 0; i < 1000; i++ {
				_, _ = s.Check(context.Background(), reqs[int(n)%len(reqs)])
				n++
			}
		}
		el, cpu := time.Since(start), cpuTime()-cpu0
		return float64(n) / el.Seconds(), float64(cpu.Microseconds()) / float64(n)
	}
	var offs, ons, offCPU, onCPU []float64
	for range 3 {
		r, c := measure(off)
		offs, offCPU = append(offs, r), append(offCPU, c)
		r, c = measure(on)
		ons, onCPU = append(ons, r), append(onCPU, c)
	}
	for _, v := range [][]float64{offs, ons, offCPU, onCPU} {
		sort.Float64s(v)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := sh.Close(ctx); err != nil {
		return err
	}
	shipped := counter(sreg, "meshguard_authz_decisions_shipped_total", nil)
	stored, err := cp.stored()
	if err != nil {
		return err
	}
	fmt.Printf("\nauthz: in-process Check, 1,000-rule realistic policy, every decision shipped (allow sample 1) to a control plane in another process, median of 3 x %s\n", d)
	fmt.Printf("  shipping off %.0f checks/s, on %.0f checks/s: %.2fx (wall: the control plane and its store share the 2 cores)\n", offs[1], ons[1], ons[1]/offs[1])
	fmt.Printf("  this process's CPU per check: off %.1f us, on %.1f us: %.2fx (what shipping costs the authz server: encoding, buffering, sending)\n",
		offCPU[1], onCPU[1], onCPU[1]/offCPU[1])
	fmt.Printf("  shipped %.0f, stored by the control plane %d, dropped by the shipper %.0f (counted)\n",
		shipped, stored, counter(sreg, "meshguard_authz_decision_ship_dropped_total", nil))
	return nil
}

// serveControlPlane is the -serve-control-plane mode: a control plane with
// its record store in a temporary directory; it prints its URL, and when
// standard input closes, the records it stored.
func serveControlPlane() error {
	dir, err := os.MkdirTemp("", "incidentbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	cp, err := startControlPlane(dir)
	if err != nil {
		return err
	}
	defer cp.stop()
	fmt.Println(cp.url)
	_, _ = io.Copy(io.Discard, os.Stdin)
	if err := cp.store.Sync(context.Background()); err != nil {
		return err
	}
	fmt.Printf("%.0f\n", counter(cp.reg, "meshguard_controlplane_records_stored_total", nil))
	return nil
}

// childControlPlane is a serveControlPlane process.
type childControlPlane struct {
	url   string
	cmd   *exec.Cmd
	in    io.WriteCloser
	out   *bufio.Reader
	ended bool
}

func startControlPlaneProcess() (*childControlPlane, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, "-serve-control-plane")
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &childControlPlane{cmd: cmd, in: in, out: bufio.NewReader(out)}
	line, err := c.out.ReadString('\n')
	if err != nil {
		c.stop()
		return nil, fmt.Errorf("control plane process: %w", err)
	}
	c.url = strings.TrimSpace(line)
	return c, nil
}

// stored ends the process and returns how many records it stored.
func (c *childControlPlane) stored() (int, error) {
	_ = c.in.Close()
	line, err := c.out.ReadString('\n')
	c.ended = true
	werr := c.cmd.Wait()
	if err != nil || werr != nil {
		return 0, fmt.Errorf("control plane process: %w", errors.Join(err, werr))
	}
	var n int
	_, err = fmt.Sscan(line, &n)
	return n, err
}

func (c *childControlPlane) stop() {
	if c.ended {
		return
	}
	_ = c.in.Close()
	_ = c.cmd.Wait()
	c.ended = true
}

func checkRequests(set *policies.Set, m policygen.Mesh) []*authv3.CheckRequest {
	attrs := policygen.Requests(set, m, 1000, 7)
	out := make([]*authv3.CheckRequest, len(attrs))
	for i, a := range attrs {
		h := map[string]string{":authority": a.Host, ":method": a.Method, ":path": a.Path, "x-request-id": fmt.Sprint(i)}
		for k, v := range a.Headers.(policies.MapHeaders) {
			h[k] = v
		}
		ext := map[string]string{wire.ContextNamespace: a.Target.Namespace, wire.ContextService: a.Target.Service}
		for k, v := range a.Target.Labels {
			ext[request.ContextLabelPrefix+k] = v
		}
		out[i] = &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
			Source:            &authv3.AttributeContext_Peer{Principal: a.Peer.String()},
			Destination:       &authv3.AttributeContext_Peer{Principal: a.Target.ID.String()},
			ContextExtensions: ext,
			Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
				Method: a.Method, Path: a.Path, Host: a.Host, Headers: h}},
		}}
	}
	return out
}

// fixtureQuarantines is how many identities the timeline fixture
// quarantines.
const fixtureQuarantines = 200

// benchTimeline builds (once) a store of n records over a day and times
// incident timelines of quarantined identities.
func benchTimeline(cacheDir string, n int) error {
	path := filepath.Join(cacheDir, fmt.Sprintf("incidentbench-%d-v2.db", n))
	m := newMesh(2000, 200)
	day := time.Date(2026, 1, 15, 0, 0, 0, 0, time.UTC)
	if _, err := os.Stat(path); err != nil {
		if err := buildFixture(path, n, m, day); err != nil {
			_ = os.Remove(path)
			return err
		}
	} else {
		fmt.Printf("\ntimeline: reusing the cached fixture %s (delete it to rebuild)\n", path)
	}
	st, err := recordstore.Open(context.Background(), recordstore.Options{Path: path, ReadOnly: true})
	if err != nil {
		return err
	}
	defer st.Close()
	u, err := st.Usage(context.Background())
	if err != nil {
		return err
	}
	fmt.Printf("  fixture: %.0f MiB (%.0f MiB per million records), %s .. %s\n", float64(u.FileBytes)/(1<<20),
		float64(u.FileBytes)/(1<<20)/float64(n)*1e6, u.Oldest.Format(time.RFC3339), u.Newest.Format(time.RFC3339))
	var lat []time.Duration
	total := 0
	for i := range fixtureQuarantines {
		id := m.callers[(i*37)%len(m.callers)]
		start := time.Now()
		tl, err := st.Timeline(context.Background(), id, recordstore.TimelineOptions{Window: 10 * time.Minute})
		if err != nil {
			return fmt.Errorf("timeline of %s: %w", id, err)
		}
		lat = append(lat, time.Since(start))
		total += len(tl.Records)
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	fmt.Printf("  %d incident timelines (10 minutes before a quarantine, ~%d records each) over %d records: p50 %s, p99 %s, max %s (target <= 200ms)\n",
		len(lat), total/len(lat), n, lat[len(lat)/2].Round(time.Microsecond), lat[len(lat)*99/100].Round(time.Microsecond), lat[len(lat)-1].Round(time.Microsecond))
	// The forensic query of one identity over the whole day, newest 100.
	start := time.Now()
	res, err := st.Query(context.Background(), recordstore.Filter{Identity: []string{m.callers[5]}, Limit: 100})
	if err != nil {
		return err
	}
	fmt.Printf("  events --identity (newest 100 of a day): %s, %d records\n", time.Since(start).Round(time.Microsecond), len(res.Records))
	start = time.Now()
	res, err = st.Query(context.Background(), recordstore.Filter{Identity: []string{"spiffe://cluster.local/ns/team7/**"}, Actions: []string{"deny"}, Limit: 100})
	if err != nil {
		return err
	}
	fmt.Printf("  events --identity pattern --decision deny (newest 100): %s, %d records\n", time.Since(start).Round(time.Microsecond), len(res.Records))
	return nil
}

// buildFixture writes n records with the store's bulk loader (the
// store's own row encoding, indexes built after the rows): decisions
// spread over a day, and for fixtureQuarantines identities a detection and
// a quarantine.
func buildFixture(path string, n int, m mesh, day time.Time) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	fmt.Printf("\ntimeline: building a %d-record fixture in %s (once; later runs reuse it)\n", n, path)
	// Built beside its place and renamed when complete, so that an
	// interrupted build is never taken for a fixture.
	tmp := path + ".building"
	_ = os.Remove(tmp)
	r := rand.New(rand.NewPCG(3, 4))
	start := time.Now()
	step := 24 * time.Hour / time.Duration(n)
	quarantineAt := map[int]string{}
	for i := range fixtureQuarantines {
		quarantineAt[(i+1)*n/(fixtureQuarantines+1)] = m.callers[(i*37)%len(m.callers)]
	}
	var pending []record.Record
	i := 0
	written, err := recordstore.BulkLoad(context.Background(), tmp, func(rec *record.Record) bool {
		if len(pending) > 0 {
			*rec, pending = pending[0], pending[1:]
			return true
		}
		if i == n {
			return false
		}
		t := day.Add(time.Duration(i) * step)
		if id, ok := quarantineAt[i]; ok {
			pending = append(pending,
				record.FromQuarantine(t, "add", id, "meshguard/threshold", "5 anomaly events within 1m", t.Add(15*time.Minute)))
			*rec = record.Record{Time: t.Add(-time.Minute), Kind: record.KindDetection, Reporter: m.workloads[0], Source: id,
				Destination: m.workloads[0], Action: "block", Reason: "enumeration", Detail: "distinct_paths"}
		} else {
			// A decision-log entry is the wire record the control plane decodes.
			*rec = record.FromDecision(m.workloads[r.IntN(8)], m.decision(r, t, uint64(i)))
		}
		i++
		if i%2_000_000 == 0 {
			el := time.Since(start)
			fmt.Printf("  %d records generated and written in %s (%.0f/s)\n", i, el.Round(time.Second), float64(i)/el.Seconds())
		}
		return true
	})
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	el := time.Since(start)
	fmt.Printf("  built %d records in %s (%.0f records/s: the store's row encoding, one transaction per 100,000 rows, then the indexes)\n",
		written, el.Round(time.Second), float64(written)/el.Seconds())
	return nil
}

const candidate = `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: api, namespace: team7}
spec:
  selector: {matchLabels: {version: v1}}
  rules:
  - from: [{source: {namespaces: [team7, team8]}}]
    to: [{operation: {methods: [GET], paths: ["/v1/items/*"]}}]
`

// benchReplay writes (once) a decision log of n lines and replays it.
func benchReplay(cacheDir string, n int) error {
	path := filepath.Join(cacheDir, fmt.Sprintf("incidentbench-%d-v2.jsonl", n))
	if _, err := os.Stat(path); err != nil {
		if err := os.MkdirAll(cacheDir, 0o755); err != nil {
			return err
		}
		f, err := os.Create(path + ".building")
		if err != nil {
			return err
		}
		w := bufio.NewWriterSize(f, 1<<20)
		m := newMesh(2000, 200)
		r := rand.New(rand.NewPCG(5, 6))
		t0 := time.Date(2026, 1, 15, 0, 0, 0, 0, time.UTC)
		for i := range n {
			if _, err := w.Write(m.decision(r, t0.Add(time.Duration(i)*time.Millisecond), uint64(i)).AppendJSON(nil)); err != nil {
				return err
			}
		}
		if err := errors.Join(w.Flush(), f.Close(), os.Rename(path+".building", path)); err != nil {
			return err
		}
	}
	set, diags := source.Parse("candidate.yaml", []byte(candidate))
	if diags.HasErrors() {
		return diags.Err()
	}
	b, _, err := policies.NewBundle("candidate", set)
	if err != nil {
		return err
	}
	rp, err := replay.New(b, replay.Options{})
	if err != nil {
		return err
	}
	// Three rounds, each the floor then the replay, both from a collected
	// heap (a finished report holds many groups); the best of each.
	var best, bestCPU time.Duration
	var dec, rd float64
	var rep *replay.Report
	for range 3 {
		rep = nil
		runtime.GC()
		d, r, err := rawDecodeRate(path)
		if err != nil {
			return fmt.Errorf("decode floor: %w", err)
		}
		dec, rd = max(dec, d), max(rd, r)
		runtime.GC()
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		rep = rp.NewReport()
		start, cpu0 := time.Now(), cpuTime()
		err = rp.ReplayJSONL(f, replay.Window{}, 0, rep)
		el, cpu := time.Since(start), cpuTime()-cpu0
		_ = f.Close()
		if err != nil {
			return err
		}
		if best == 0 || el < best {
			best, bestCPU = el, cpu
		}
	}
	rep.Finish()
	fi, _ := os.Stat(path)
	fmt.Printf("\nreplay: %d decision-log lines (%.0f MiB) under a candidate: best of 3 %s = %.0f recorded requests/s (target >= 100,000/s)\n",
		rep.Total, float64(fi.Size())/(1<<20), best.Round(time.Millisecond), float64(rep.Total)/best.Seconds())
	fmt.Printf("  CPU %.1fs for that run (load average %s on %d CPUs): %.0f recorded requests per CPU-second\n", bestCPU.Seconds(), load1(), runtime.NumCPU(), float64(rep.Total)/bestCPU.Seconds())
	fmt.Printf("  replayed %d, unchanged %d, allow->deny %d, deny->allow %d, %d groups\n", rep.Replayed, rep.Unchanged, rep.AllowToDeny, rep.DenyToAllow, len(rep.Groups))
	fmt.Printf("  floor, same run (best of 3, interleaved): reading the lines alone %.0f lines/s; reading and decoding them (wire.DecodeDecision, %d goroutines, nothing decided) %.0f lines/s: replay is %.2fx of it\n",
		rd, runtime.GOMAXPROCS(0), dec, float64(rep.Total)/best.Seconds()/dec)
	return nil
}
