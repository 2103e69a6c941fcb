package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshguard/meshguard/internal/testbed/ca"
	"github.com/meshguard/meshguard/internal/testbed/policygen"
)

// compareMain starts the trivial server and `meshguard authz` as separate
// processes on this machine, loads both with the same requests, the same
// concurrency and the same connection count, interleaving the rounds so
// that background noise falls on both alike, and prints the ratio.
func compareMain(args []string) error {
	fs := flag.NewFlagSet("compare", flag.ExitOnError)
	bin := fs.String("meshguard", "bin/meshguard", "meshguard binary")
	rules := fs.Int("rules", 1000, "rules in the realistic policy")
	conc := fs.Int("concurrency", 32, "closed-loop workers (and open-loop in-flight limit)")
	conns := fs.Int("conns", 4, "gRPC connections")
	dur := fs.Duration("duration", 5*time.Second, "time per measurement")
	rounds := fs.Int("rounds", 2, "interleaved closed-loop rounds per server")
	rate := fs.Float64("rate", 5000, "offered rate of the open-loop measurement")
	sample := fs.Float64("decision-log-allow-sample", 0.01, "meshguard's --decision-log-allow-sample (denies are always logged, to a file)")
	genGC := fs.Int("generator-gogc", 400, "the load generator's own GOGC (0: the runtime's default)")
	trivGC := fs.Int("trivial-gogc", 0, "GOGC of the trivial server (0: the runtime's default); meshguard runs with its own --gc-percent default")
	_ = fs.Parse(args)
	// The generator allocates per request too; its collections delay sends
	// and answers alike and would be billed to whichever server is loaded.
	// Fewer of them in this process; none of this reaches the servers.
	if *genGC > 0 {
		debug.SetGCPercent(*genGC)
	}

	dir, err := os.MkdirTemp("", "authzload-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	b, _, err := realisticBundle(*rules)
	if err != nil {
		return err
	}
	data, err := b.Encode()
	if err != nil {
		return err
	}
	bundlePath := filepath.Join(dir, "bundle.json")
	if err := os.WriteFile(bundlePath, data, 0o644); err != nil {
		return err
	}
	// A trust bundle for the identity resolver (the load uses principals,
	// which need a bundle for their trust domain).
	tca, err := ca.New(spiffeid.RequireTrustDomainFromString(policygen.TrustDomain))
	if err != nil {
		return err
	}
	files, err := tca.WriteFiles(dir, spiffeid.RequireFromString("spiffe://"+policygen.TrustDomain+"/ns/meshguard/sa/authz"), time.Hour)
	if err != nil {
		return err
	}

	self, err := os.Executable()
	if err != nil {
		return err
	}
	triv, trivAddr, err := startTrivial(self, *trivGC)
	if err != nil {
		return fmt.Errorf("start trivial server: %w", err)
	}
	defer stop(triv)
	mg, mgAddr, err := startMeshguard(*bin, dir, bundlePath, policygen.TrustDomain+"="+files.Bundle, *sample)
	if err != nil {
		return fmt.Errorf("start meshguard: %w", err)
	}
	defer stop(mg)

	reqs, err := checkRequests(*rules, 1000)
	if err != nil {
		return err
	}
	ctx := context.Background()
	fmt.Printf("authzload compare: %d-rule realistic policy (%d bytes), %d distinct CheckRequests\n", *rules, len(data), len(reqs))
	fmt.Printf("servers: trivial always-OK (pid %d) and meshguard authz (pid %d), plaintext gRPC on loopback, same machine\n", triv.Process.Pid, mg.Process.Pid)
	fmt.Println("the load generator runs in this process and decodes only status.code of each answer (see statusCodec)")
	trivGCName := "the runtime's default (GOGC=100)"
	if *trivGC > 0 {
		trivGCName = fmt.Sprintf("GOGC=%d", *trivGC)
	}
	fmt.Printf("garbage collector: trivial server %s; meshguard its shipped --gc-percent default; load generator GOGC=%d\n", trivGCName, *genGC)
	fmt.Printf("closed loop: concurrency %d over %d connections, %s per round, %d interleaved rounds\n", *conc, *conns, *dur, *rounds)
	type tally struct {
		rps      float64
		cpu      time.Duration
		requests int64
	}
	var trivT, mgT tally
	for r := 0; r < *rounds; r++ {
		for _, s := range []struct {
			name, addr string
			pid        int
			sum        *tally
		}{{"trivial", trivAddr, triv.Process.Pid, &trivT}, {"meshguard", mgAddr, mg.Process.Pid, &mgT}} {
			res, err := load(ctx, loadConfig{addr: s.addr, mode: "max", concurrency: *conc, conns: *conns, duration: *dur, warmup: time.Second, serverPID: s.pid}, reqs)
			if err != nil {
				return fmt.Errorf("%s: %w", s.name, err)
			}
			s.sum.rps += res.rps()
			s.sum.cpu += res.serverCPU
			s.sum.requests += res.requests
			fmt.Printf("  round %d %-9s %s\n", r+1, s.name, res)
		}
	}
	trivRPS := trivT.rps / float64(*rounds)
	mgRPS := mgT.rps / float64(*rounds)
	ratio := mgRPS / trivRPS
	fmt.Printf("closed loop mean: trivial %.0f rps, meshguard %.0f rps, ratio %.3f (target >= 0.85: %s)\n", trivRPS, mgRPS, ratio, verdict(ratio >= 0.85))
	if trivT.requests > 0 && mgT.requests > 0 && trivT.cpu > 0 {
		tc := float64(trivT.cpu) / float64(trivT.requests) / float64(time.Microsecond)
		mc := float64(mgT.cpu) / float64(mgT.requests) / float64(time.Microsecond)
		fmt.Printf("server CPU per request (all rounds): trivial %.1fµs, meshguard %.1fµs, meshguard costs %.2fx the trivial server's CPU per request\n", tc, mc, mc/tc)
	}

	fmt.Printf("open loop: %.0f rps offered for %s, in-flight limit %d\n", *rate, *dur, *conc*8)
	var mgOpen *result
	for _, s := range []struct {
		name, addr string
		pid        int
	}{{"trivial", trivAddr, triv.Process.Pid}, {"meshguard", mgAddr, mg.Process.Pid}} {
		res, err := load(ctx, loadConfig{addr: s.addr, mode: "rate", rate: *rate, concurrency: *conc * 8, conns: *conns, duration: *dur, warmup: time.Second, serverPID: s.pid}, reqs)
		if err != nil {
			return fmt.Errorf("%s: %w", s.name, err)
		}
		fmt.Printf("  %-9s %s\n", s.name, res)
		if s.name == "meshguard" {
			mgOpen = res
		}
	}
	// The target is read from send to answer; it holds only if no request
	// waited for a free worker (that wait would be the server's queue).
	p99 := mgOpen.quantile(0.99)
	fmt.Printf("open loop meshguard p99 at %.0f rps: %s from send, %d backlogged (target <= 2ms with no backlog: %s)\n",
		*rate, p99.Round(time.Microsecond), mgOpen.backlogged, verdict(p99 <= 2*time.Millisecond && mgOpen.backlogged == 0))
	return nil
}

// serverEnv is this process's environment without the Go runtime's GC
// settings, so that the servers' own (or -trivial-gogc) apply, whatever the
// caller's shell holds.
func serverEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GOGC=") && !strings.HasPrefix(kv, "GOMEMLIMIT=") {
			env = append(env, kv)
		}
	}
	return env
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT met"
}

func stop(c *exec.Cmd) {
	_ = c.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = c.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		_ = c.Process.Kill()
		<-done
	}
}

func startTrivial(self string, gogc int) (*exec.Cmd, string, error) {
	c := exec.Command(self, "trivial", "-addr", "127.0.0.1:0")
	c.Env = serverEnv()
	if gogc > 0 {
		c.Env = append(c.Env, fmt.Sprintf("GOGC=%d", gogc))
	}
	c.Stderr = os.Stderr
	out, err := c.StdoutPipe()
	if err != nil {
		return nil, "", err
	}
	if err := c.Start(); err != nil {
		return nil, "", err
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		stop(c)
		return nil, "", fmt.Errorf("read address: %w", err)
	}
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "listening ")
	if !ok {
		stop(c)
		return nil, "", fmt.Errorf("unexpected output %q", line)
	}
	go func() { _, _ = io.Copy(io.Discard, out) }()
	return c, addr, nil
}

func startMeshguard(bin, dir, bundle, trust string, sample float64) (*exec.Cmd, string, error) {
	c := exec.Command(bin, "authz", "--insecure-plaintext",
		"--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0",
		"--policy", bundle, "--bundle", trust, "--no-jwt-svid", "--spiffe-socket", "",
		"--decision-log", filepath.Join(dir, "decisions.jsonl"),
		"--decision-log-allow-sample", fmt.Sprint(sample), "--log-level", "info")
	stderr, err := c.StderrPipe()
	if err != nil {
		return nil, "", err
	}
	c.Stdout = os.Stdout
	c.Env = append(serverEnv(), "SPIFFE_ENDPOINT_SOCKET=")
	if err := c.Start(); err != nil {
		return nil, "", err
	}
	// The listeners are read from the startup log line.
	sc := bufio.NewScanner(stderr)
	addrs := make(chan [2]string, 1)
	go func() {
		sent := false
		for sc.Scan() {
			var rec map[string]any
			if json.Unmarshal(sc.Bytes(), &rec) == nil && rec["msg"] == "authz server listening" && !sent {
				g, _ := rec["grpc"].(string)
				a, _ := rec["admin"].(string)
				addrs <- [2]string{g, a}
				sent = true
				continue
			}
			if strings.Contains(sc.Text(), `"level":"ERROR"`) {
				fmt.Fprintln(os.Stderr, "meshguard:", sc.Text())
			}
		}
	}()
	var a [2]string
	select {
	case a = <-addrs:
	case <-time.After(30 * time.Second):
		stop(c)
		return nil, "", errors.New("meshguard did not report its listeners")
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + a[1] + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return c, a[0], nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	stop(c)
	return nil, "", errors.New("meshguard never became ready")
}
