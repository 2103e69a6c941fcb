// Command statebench measures how long `meshguard controlplane` takes from
// start to enforcing with a large state store, and the memory it takes: the
// real binary is started on a store holding -quarantines active quarantines
// and -baselines learned baselines, and an authz server's policy path (the
// real ADS subscription, compile and engine) subscribes from the moment the
// process starts. "Enforcing" is when that subscriber has compiled a bundle
// with every quarantine in it. Each figure is the median of -runs starts;
// the same is measured on an empty store in the same run, and the table
// gives the ratios.
//
// Backends: the embedded store (bbolt in a --state-dir) always, and the
// Kubernetes store (QuarantineRecords and LearnedBaselines through a real
// kube-apiserver started with envtest) when KUBEBUILDER_ASSETS is set.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/meshguard/meshguard/authz/loader"
	authzmetrics "github.com/meshguard/meshguard/authz/metrics"
	"github.com/meshguard/meshguard/controlplane/state"
	"github.com/meshguard/meshguard/controlplane/state/disk"
	statekube "github.com/meshguard/meshguard/controlplane/state/kube"
	"github.com/meshguard/meshguard/policies"
)

func main() {
	var (
		bin         = flag.String("meshguard", "bin/meshguard", "the meshguard binary to start")
		quarantines = flag.Int("quarantines", 10000, "active quarantines in the store")
		baselines   = flag.Int("baselines", 1000, "learned baselines (destinations) in the store")
		edges       = flag.Int("edges", 5, "learned callers per baseline")
		runs        = flag.Int("runs", 3, "starts per configuration (the median is reported)")
		kube        = flag.String("kube", "auto", "measure the Kubernetes store too: auto (when KUBEBUILDER_ASSETS is set), on, off")
	)
	flag.Parse()
	if err := run(*bin, *quarantines, *baselines, *edges, *runs, *kube); err != nil {
		fmt.Fprintln(os.Stderr, "statebench:", err)
		os.Exit(1)
	}
}

// sample is one start of the control plane.
type sample struct {
	ready, enforcing time.Duration
	load             time.Duration // reading the store, as the control plane logs it
	peakRSS, heap    float64       // MiB
	documents        int
}

type row struct {
	backend, store string
	load           time.Duration // filling the store (not part of the start)
	samples        []sample
	floor          []time.Duration // raw LISTs of the same records, no meshguard code
}

func run(bin string, nq, nb, ne, runs int, kubeMode string) error {
	if _, err := os.Stat(bin); err != nil {
		return fmt.Errorf("%w (make build)", err)
	}
	work, err := os.MkdirTemp("", "statebench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	qs, bs := records(nq, nb, ne)
	fmt.Printf("statebench: start to enforcing with %d quarantines and %d learned baselines (%d callers each); median of %d starts; %d CPUs\n\n",
		nq, nb, ne, runs, runtime.NumCPU())

	var rows []row
	// Embedded store.
	for _, full := range []bool{false, true} {
		dir := filepath.Join(work, fmt.Sprintf("disk-%v", full))
		start := time.Now()
		st, err := disk.Open(dir, disk.Options{})
		if err != nil {
			return err
		}
		if full {
			if err := st.Import(qs, bs); err != nil {
				return err
			}
		}
		if err := st.Close(); err != nil {
			return err
		}
		r := row{backend: "embedded (bbolt)", store: storeName(full, nq, nb), load: time.Since(start)}
		for range runs {
			s, err := measure(bin, work, []string{"--state-dir", dir}, want(full, nq))
			if err != nil {
				return fmt.Errorf("embedded store: %w", err)
			}
			r.samples = append(r.samples, s)
		}
		rows = append(rows, r)
	}

	assets := os.Getenv("KUBEBUILDER_ASSETS")
	switch {
	case kubeMode == "off" || (kubeMode == "auto" && assets == ""):
		fmt.Println("Kubernetes store: skipped (set KUBEBUILDER_ASSETS, e.g. make kube-assets and KUBEBUILDER_ASSETS=$PWD/bin)")
	case assets == "":
		return errors.New("-kube on needs KUBEBUILDER_ASSETS")
	default:
		kr, err := kubeRows(bin, work, assets, qs, bs, runs, nq, nb)
		if err != nil {
			return fmt.Errorf("kubernetes store: %w", err)
		}
		rows = append(rows, kr...)
	}
	print(rows)
	return nil
}

func storeName(full bool, nq, nb int) string {
	if !full {
		return "empty"
	}
	return fmt.Sprintf("%dq+%db", nq, nb)
}

func want(full bool, nq int) int {
	if full {
		return nq
	}
	return 0
}

// records are realistic quarantines (a detection's evidence and history)
// and baselines.
func records(nq, nb, ne int) ([]*state.Quarantine, []*state.Baseline) {
	now := time.Now().UTC().Truncate(time.Second)
	qs := make([]*state.Quarantine, nq)
	for i := range qs {
		id := fmt.Sprintf("spiffe://cluster.local/ns/tenant-%d/sa/workload-%d", i%97, i)
		reporter := fmt.Sprintf("spiffe://cluster.local/ns/tenant-%d/sa/orders", i%97)
		reason := "lateral anomaly (4 new edges within 60s) reported by " + reporter
		qs[i] = &state.Quarantine{Identity: id, Phase: state.PhaseActive, Reason: reason, By: reporter, Profile: "strict", Detector: "lateral",
			CreatedAt: now, ExpiresAt: now.Add(24 * time.Hour),
			Evidence: []state.Evidence{{Key: fmt.Sprintf("%024x", i), Reporter: reporter, Detector: "lateral", Destination: "orders",
				Detail: "4 new edges within 60s", Observed: now, Received: now, Replica: "controlplane-0"}},
			History: []state.Change{{Time: now, Action: state.ActionAdd, By: reporter, Reason: reason, ExpiresAt: now.Add(24 * time.Hour), Replica: "controlplane-0"}}}
	}
	bs := make([]*state.Baseline, nb)
	for i := range bs {
		b := &state.Baseline{Destination: fmt.Sprintf("svc-%d.tenant-%d.svc.cluster.local", i, i%97)}
		for j := range ne {
			b.Edges = append(b.Edges, state.Edge{Source: fmt.Sprintf("spiffe://cluster.local/ns/tenant-%d/sa/caller-%d", i%97, j),
				Routes: []string{"api", "health"}, Methods: []string{"GET", "POST"}, Count: 1000, FirstSeen: now, LastSeen: now})
		}
		bs[i] = b
	}
	return qs, bs
}

// measure starts the control plane with extra flags and waits until a
// subscriber enforces wantQ quarantines.
func measure(bin, work string, extra []string, wantQ int) (sample, error) {
	xdsAddr, httpAddr, metricsAddr, err := freeAddrs()
	if err != nil {
		return sample{}, err
	}
	policyDir := filepath.Join(work, "policies")
	if err := os.MkdirAll(policyDir, 0o755); err != nil {
		return sample{}, err
	}
	args := append([]string{"controlplane", "--insecure-plaintext", "--xds-addr", xdsAddr, "--http-addr", httpAddr,
		"--metrics-addr", metricsAddr, "--policy", policyDir, "--log-level", "info"}, extra...)
	logf, err := os.Create(filepath.Join(work, fmt.Sprintf("controlplane-%d.log", time.Now().UnixNano())))
	if err != nil {
		return sample{}, err
	}
	defer logf.Close()

	// The subscriber dials from the start and retries fast, as an authz
	// server waiting for its control plane does.
	conn, err := grpc.NewClient(xdsAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{BaseDelay: 5 * time.Millisecond, Multiplier: 1.2, MaxDelay: 20 * time.Millisecond}, MinConnectTimeout: time.Second}))
	if err != nil {
		return sample{}, err
	}
	defer conn.Close()
	var engine policies.Engine
	ld := loader.New(&engine, slog.New(slog.DiscardHandler), authzmetrics.New(prometheus.NewRegistry()))
	enforcing := make(chan time.Time, 1)
	var docs atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return sample{}, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGKILL)
		<-exited
	}()
	src := &loader.ADSSource{Conn: conn, Node: &corev3.Node{Id: "statebench-authz", Cluster: "meshguard-authz"},
		Log: slog.New(slog.DiscardHandler), MinBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond}
	go func() {
		_ = src.Run(ctx, func(u loader.Update) error {
			if err := ld.Apply("ads", u); err != nil {
				return err
			}
			if u.Bundle != nil && len(u.Bundle.Set.Quarantines) >= wantQ {
				docs.Store(int64(len(u.Bundle.Set.Quarantines)))
				select {
				case enforcing <- time.Now():
				default:
				}
			}
			return nil
		})
	}()
	readyC := make(chan time.Duration, 1)
	go func() {
		for ctx.Err() == nil {
			if resp, err := http.Get("http://" + metricsAddr + "/readyz"); err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					readyC <- time.Since(start)
					return
				}
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()
	var s sample
	select {
	case t := <-enforcing:
		s.enforcing = t.Sub(start)
	case err := <-exited:
		return sample{}, fmt.Errorf("control plane exited: %v (log %s)", err, logf.Name())
	case <-time.After(5 * time.Minute):
		return sample{}, errors.New("not enforcing within 5m")
	}
	select {
	case s.ready = <-readyC:
	case <-time.After(10 * time.Second):
		return sample{}, errors.New("not ready 10s after enforcing")
	}
	s.documents = int(docs.Load())
	if s.load, err = stateLoad(logf.Name()); err != nil {
		return sample{}, err
	}
	if s.peakRSS, err = peakRSS(cmd.Process.Pid); err != nil {
		return sample{}, err
	}
	if s.heap, err = heapInuse(metricsAddr); err != nil {
		return sample{}, err
	}
	return s, nil
}

func kubeRows(bin, work, assets string, qs []*state.Quarantine, bs []*state.Baseline, runs, nq, nb int) ([]row, error) {
	env := &envtest.Environment{BinaryAssetsDirectory: assets, CRDDirectoryPaths: []string{"deploy/crds"}, ErrorIfCRDPathMissing: true}
	env.ControlPlane.GetAPIServer().Configure().Set("advertise-address", "127.0.0.1").Set("endpoint-reconciler-type", "none")
	cfg, err := env.Start()
	if err != nil {
		return nil, err
	}
	defer func() { _ = env.Stop() }()
	user, err := env.AddUser(envtest.User{Name: "meshguard-controlplane", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return nil, err
	}
	kc, err := user.KubeConfig()
	if err != nil {
		return nil, err
	}
	kubeconfig := filepath.Join(work, "kubeconfig")
	if err := os.WriteFile(kubeconfig, kc, 0o600); err != nil {
		return nil, err
	}
	kube := kubernetes.NewForConfigOrDie(cfg)
	var rows []row
	for _, full := range []bool{false, true} {
		ns := fmt.Sprintf("bench-%v", full)
		if _, err := kube.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			return nil, err
		}
		start := time.Now()
		if full {
			if err := fill(cfg, ns, qs, bs); err != nil {
				return nil, err
			}
		}
		r := row{backend: "Kubernetes (envtest)", store: storeName(full, nq, nb), load: time.Since(start)}
		for range runs {
			d, err := rawList(cfg, ns)
			if err != nil {
				return nil, fmt.Errorf("raw list: %w", err)
			}
			r.floor = append(r.floor, d)
		}
		for range runs {
			s, err := measure(bin, work, []string{"--kubernetes", "--kubeconfig", kubeconfig, "--state-namespace", ns}, want(full, nq))
			if err != nil {
				return nil, err
			}
			r.samples = append(r.samples, s)
		}
		rows = append(rows, r)
	}
	return rows, nil
}

// rawList is the floor of a start on the Kubernetes store: the time the API
// server takes to answer a LIST of both kinds (concurrently, from its watch
// cache, as the control plane's informers ask) and to transfer the bytes,
// with nothing decoded: no client-side work at all.
func rawList(cfg *rest.Config, ns string) (time.Duration, error) {
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return 0, err
	}
	defer hc.CloseIdleConnections()
	var wg sync.WaitGroup
	errs := make([]error, 2)
	took := make([]time.Duration, 2)
	for i, res := range []string{statekube.ResourceQuarantines, statekube.ResourceBaselines} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			u := fmt.Sprintf("%s/apis/%s/%s/namespaces/%s/%s?resourceVersion=0", strings.TrimSuffix(cfg.Host, "/"),
				statekube.GroupVersion.Group, statekube.GroupVersion.Version, ns, res)
			// The API server's priority and fairness may answer a large
			// LIST 429 while it settles after the fill: the floor is the
			// time of the answer, so a refused attempt is not counted.
			for range 60 {
				start := time.Now()
				resp, err := hc.Get(u)
				if err != nil {
					errs[i] = err
					return
				}
				n, err := io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
				took[i] = time.Since(start)
				if resp.StatusCode == http.StatusTooManyRequests {
					time.Sleep(time.Second)
					continue
				}
				if err == nil && (resp.StatusCode != http.StatusOK || n == 0) {
					err = fmt.Errorf("GET %s: %s, %d bytes", res, resp.Status, n)
				}
				errs[i] = err
				return
			}
			errs[i] = fmt.Errorf("GET %s: still 429 after a minute", res)
		}()
	}
	wg.Wait()
	return max(took[0], took[1]), errors.Join(errs...)
}

// fill creates the records through the state store, 32 at a time.
func fill(cfg *rest.Config, ns string, qs []*state.Quarantine, bs []*state.Baseline) error {
	cfg = rest.CopyConfig(cfg)
	cfg.QPS, cfg.Burst = 2000, 4000
	st, err := statekube.New(statekube.Options{Config: cfg, Namespace: ns, WriteTimeout: time.Minute})
	if err != nil {
		return err
	}
	work := make(chan func(context.Context) error)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for f := range work {
				if err := f(context.Background()); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		}()
	}
	for _, q := range qs {
		work <- func(ctx context.Context) error {
			_, err := st.UpdateQuarantine(ctx, q.Identity, func(*state.Quarantine) (*state.Quarantine, error) { return q, nil })
			return err
		}
	}
	for _, b := range bs {
		work <- func(ctx context.Context) error {
			_, err := st.UpdateBaseline(ctx, b.Destination, func(*state.Baseline) (*state.Baseline, error) { return b, nil })
			return err
		}
	}
	close(work)
	wg.Wait()
	return errors.Join(errs...)
}

func freeAddrs() (string, string, string, error) {
	var out [3]string
	for i := range out {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", "", "", err
		}
		out[i] = l.Addr().String()
		defer l.Close()
	}
	return out[0], out[1], out[2], nil
}

// stateLoad reads how long the control plane took to read its state store
// from its log ("state store: ..." with load_seconds).
func stateLoad(logPath string) (time.Duration, error) {
	data, err := os.ReadFile(logPath)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if !strings.Contains(line, `"msg":"state store:`) {
			continue
		}
		var rec struct {
			Load float64 `json:"load_seconds"`
		}
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			return 0, err
		}
		return secs(rec.Load), nil
	}
	return 0, fmt.Errorf("no state store line in %s", logPath)
}

// peakRSS reads VmHWM (peak resident set) of a process, in MiB.
func peakRSS(pid int) (float64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 64)
			return kb / 1024, err
		}
	}
	return 0, errors.New("no VmHWM in /proc status")
}

// heapInuse scrapes go_memstats_heap_inuse_bytes, in MiB.
func heapInuse(metricsAddr string) (float64, error) {
	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "go_memstats_heap_inuse_bytes "); ok {
			b, err := strconv.ParseFloat(v, 64)
			return b / (1 << 20), err
		}
	}
	return 0, errors.New("no go_memstats_heap_inuse_bytes")
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

func print(rows []row) {
	fmt.Printf("\n%-22s %-14s %10s %11s %12s %16s %8s %12s %10s %8s\n", "backend", "store", "fill", "state read", "start→ready", "start→enforcing", "ratio", "peak RSS MiB", "heap MiB", "ratio")
	var base sample
	for _, r := range rows {
		var ready, enf, rss, heap, load []float64
		for _, s := range r.samples {
			load = append(load, s.load.Seconds())
			ready = append(ready, s.ready.Seconds())
			enf = append(enf, s.enforcing.Seconds())
			rss = append(rss, s.peakRSS)
			heap = append(heap, s.heap)
		}
		m := sample{ready: secs(median(ready)), enforcing: secs(median(enf)), peakRSS: median(rss), heap: median(heap)}
		if r.store == "empty" {
			base = m
		}
		all := make([]string, len(enf))
		for i, e := range enf {
			all[i] = fmt.Sprintf("%.2f", e)
		}
		fmt.Printf("%-22s %-14s %9.2fs %10.3fs %11.3fs %15.3fs %7.1fx %12.1f %10.1f %7.1fx   (starts: %ss)\n",
			r.backend, r.store, r.load.Seconds(), median(load), m.ready.Seconds(), m.enforcing.Seconds(), m.enforcing.Seconds()/base.enforcing.Seconds(),
			m.peakRSS, m.heap, m.peakRSS/base.peakRSS, strings.Join(all, "/"))
	}
	for _, r := range rows {
		if len(r.floor) == 0 || r.store == "empty" {
			continue
		}
		var fl, enf []float64
		for _, d := range r.floor {
			fl = append(fl, d.Seconds())
		}
		for _, s := range r.samples {
			enf = append(enf, s.enforcing.Seconds())
		}
		f, e := median(fl), median(enf)
		fmt.Printf("\nfloor (%s, %s): the API server answering a LIST of the same records (bytes transferred, nothing decoded): %.3fs median; "+
			"with the empty store's start (%.3fs) that is %.3fs before any meshguard work; start→enforcing is %.2fx that floor (%.3fs above it)\n",
			r.backend, r.store, f, base.enforcing.Seconds(), f+base.enforcing.Seconds(), e/(f+base.enforcing.Seconds()), e-f-base.enforcing.Seconds())
	}
	fmt.Println("\nstart→enforcing: from exec to an authz server's policy path (ADS subscription, compile, engine) holding every quarantine; target ≤ 2s.")
	fmt.Println("ratio: against the empty store of the same backend, measured in the same run. fill: preparing the store, not part of the start.")
}

func secs(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }
