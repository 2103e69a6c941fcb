//go:build faults

package faults

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/meshguard/meshguard/internal/testbed/netfault"
	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/source"
)

// writeInPlace rewrites path as `cat >`, `kubectl cp` or an editor saving
// in place do: truncate, then write in chunks with a pause between them.
func writeInPlace(t *testing.T, path string, pause time.Duration, chunks ...string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for i, c := range chunks {
		if i > 0 && pause > 0 {
			time.Sleep(pause)
		}
		if _, err := f.WriteString(c); err != nil {
			t.Fatal(err)
		}
	}
}

// TestFault1EmptiedOrCutPolicyFile: a policy file rewritten in place under
// load (so that a poll can catch it empty or half-written), then left
// emptied, holding only a comment, or cut off mid-line, never makes the
// server allow what the policy denies.
func TestFault1EmptiedOrCutPolicyFile(t *testing.T) {
	fx := newFixture(t)
	path := filepath.Join(fx.dir, "policy.yaml")
	writeAtomic(t, path, wholePolicy)
	a := startAuthz(t, "fault1-authz", fx, []string{"--policy", path, "--policy-poll-interval", "20ms", "--decision-log", "off"}, nil, nil)
	waitReady(t, a, 20*time.Second)

	paths := []string{"/api/items", "/api/admin"}
	ctx, cancel := context.WithCancel(context.Background())
	var st *loadStats
	done := make(chan struct{})
	go func() { defer close(done); st = a.runLoad(ctx, 8, paths, 2*time.Second, denyAdmin) }()

	// Phase A: in-place rewrites of the same policy, with a pause of up
	// to 3ms between the ALLOW and the DENY document.
	rewrites := 0
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); rewrites++ {
		writeInPlace(t, path, time.Duration(rand.N(3000))*time.Microsecond, allowDoc, "---\n"+denyDoc)
		time.Sleep(time.Duration(10+rand.N(30)) * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	// Phase B: bad content that stays.
	cut := strings.Index(denyDoc, "namespace: shop") + len("namespace: sh")
	for _, bad := range []string{"", "# policies being regenerated\n", allowDoc + "---\n" + denyDoc[:cut]} {
		writeInPlace(t, path, 0, bad)
		time.Sleep(800 * time.Millisecond)
		writeInPlace(t, path, 0, wholePolicy)
		time.Sleep(500 * time.Millisecond)
	}
	cancel()
	<-done
	rejected, _ := metric(a.admin, "meshguard_authz_policy_reloads_total", `result="rejected"`)
	code, _ := readyz(a.admin)
	record(t, "1. emptied or cut-off policy file under load",
		"0 checks allowed that the policy denies; the last good policy keeps serving",
		st.wrong == 0 && st.errors == 0,
		"%d checks over %d in-place rewrites and 3 bad files left 800ms each: %d wrong %v, %d errors; %v reloads rejected; /readyz %d at the end",
		st.answered, rewrites, st.wrong, st.wrongWhy, st.errors, rejected, code)
}

// TestFault2ReloadRace: a policy file flipped between two versions (by
// atomic renames, every content whole) must end up serving what the file
// holds when the flipping stops.
func TestFault2ReloadRace(t *testing.T) {
	fx := newFixture(t)
	path := filepath.Join(fx.dir, "policy.yaml")
	// A large file (a generated policy set is often one): its reads take
	// long enough that a version can change between two of them.
	pad := strings.Repeat("# "+strings.Repeat("generated padding ", 5)+"\n", 12000)
	withProbe, without := pad+wholePolicy+"---\n"+probeDoc, pad+wholePolicy
	versions := map[string]string{withProbe: bundleVersion(t, withProbe), without: bundleVersion(t, without)}
	alt := filepath.Join(fx.dir, "policy-other.yaml")
	writeAtomic(t, path, wholePolicy)
	a := startAuthz(t, "fault2-authz", fx, []string{"--policy", path, "--policy-poll-interval", "5ms", "--decision-log", "off"}, nil, nil)
	waitReady(t, a, 20*time.Second)

	trials := envInt("FAULTS_RACE_TRIALS", 30)
	wrong := 0
	var converge []time.Duration
	for trial := range trials {
		final := []string{withProbe, without}[trial%2]
		other := []string{without, withProbe}[trial%2]
		// Flip for 150ms as fast as the kernel swaps two names (each
		// swap atomic: every read sees one whole version), then stop on
		// final.
		writeAtomic(t, path, final)
		writeAtomic(t, alt, other)
		swaps := 0
		for end := time.Now().Add(150 * time.Millisecond); time.Now().Before(end); swaps++ {
			exchange(t, alt, path)
		}
		if swaps%2 == 1 {
			exchange(t, alt, path)
		}
		start := time.Now()
		served := ""
		for time.Since(start) < 5*time.Second {
			if _, body := readyz(a.admin); strings.Contains(body, versions[final]) {
				served = versions[final]
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		probe := a.check(context.Background(), trial, "/api/probe", time.Second)
		probeOK := probe.err == nil && probe.allowed == (final == without)
		if served == "" || !probeOK {
			wrong++
			_, body := readyz(a.admin)
			t.Logf("trial %d: file holds %s, server says %q, /api/probe allowed=%v", trial, versions[final], strings.TrimSpace(body), probe.allowed)
			continue
		}
		converge = append(converge, time.Since(start))
	}
	var worst time.Duration
	for _, d := range converge {
		worst = max(worst, d)
	}
	record(t, "2. reload race (file changes between reads)",
		"after the flipping stops, the server serves what the file holds, every trial",
		wrong == 0,
		"%d of %d trials served another version than the file's (ready all along); converged within %s in the others",
		wrong, trials, ms(worst))
}

// exchange swaps two files' names in one step (renameat2
// RENAME_EXCHANGE): the path holds one whole version or the other.
func exchange(t *testing.T, a, b string) {
	t.Helper()
	if err := unix.Renameat2(unix.AT_FDCWD, a, unix.AT_FDCWD, b, unix.RENAME_EXCHANGE); err != nil {
		t.Fatalf("rename exchange: %v", err)
	}
}

// bundleVersion is the version the server gives a policy file's content.
func bundleVersion(t *testing.T, yaml string) string {
	t.Helper()
	set, diags := source.ParseFiles(source.File{Name: "p.yaml", Data: []byte(yaml)})
	if err := diags.Err(); err != nil {
		t.Fatal(err)
	}
	b, _, err := policies.NewBundle("", set)
	if err != nil {
		t.Fatal(err)
	}
	return b.Version
}

// TestFault3StalledDecisionLog: the decision log goes to stdout, which
// nobody reads. Checks must go on being answered within the check timeout.
func TestFault3StalledDecisionLog(t *testing.T) {
	fx := newFixture(t)
	path := filepath.Join(fx.dir, "policy.yaml")
	writeAtomic(t, path, wholePolicy)
	// The pipe's read end is kept open and never read: writes block once
	// its buffer is full, as with a stuck log collector.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	const checkTimeout = time.Second
	a := startAuthz(t, "fault3-authz", fx, []string{"--policy", path, "--check-timeout", checkTimeout.String()}, nil, w)
	w.Close()
	waitReady(t, a, 20*time.Second)

	// The process log (stderr) stalls too: requests that name no target
	// are denied on an error path, which the server logs.
	a.p.pauseOutput()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
	defer cancel()
	// Every check is a deny, and every deny is in the decision log.
	st := a.runLoad(ctx, 8, []string{"/api/admin", untargeted}, 3*checkTimeout, denyAdmin)
	logDropped, _ := metric(a.admin, "meshguard_authz_log_dropped_total")
	a.p.resumeOutput()
	_, body := readyz(a.admin)
	dropped, _ := metric(a.admin, "meshguard_authz_decision_log_dropped_total")
	stallLine := "(no decision log line in /readyz)"
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, "decision log") {
			stallLine = l
		}
	}
	within := 0
	st.mu.Lock()
	for _, l := range st.latencies {
		if l <= checkTimeout {
			within++
		}
	}
	st.mu.Unlock()
	record(t, "3. stalled decision-log sink (and process log)",
		"every check answered within the check timeout (1s); the stall shows in /readyz and metrics",
		st.errors == 0 && within == st.sent && st.wrong == 0,
		"%d of %d checks answered within 1s (p99 %s, max %s, %d errors %v); %v decisions and %v log lines dropped and counted; /readyz: %s",
		within, st.sent, ms(st.pct(0.99)), ms(st.maxLatency()), st.errors, st.errKinds, dropped, logDropped, stallLine)
}

// TestFault4DecisionsLostAtShutdown: SIGTERM under load; every decision
// the server answered is in the decision log when it has exited.
func TestFault4DecisionsLostAtShutdown(t *testing.T) {
	fx := newFixture(t)
	path := filepath.Join(fx.dir, "policy.yaml")
	writeAtomic(t, path, wholePolicy)
	logPath := filepath.Join(fx.dir, "decisions.jsonl")
	a := startAuthz(t, "fault4-authz", fx, []string{"--policy", path, "--decision-log", logPath, "--shutdown-grace", "5s"},
		[]string{"shutdown-delay", "1s"}, nil)
	waitReady(t, a, 20*time.Second)

	ctx, cancel := context.WithCancel(context.Background())
	var st *loadStats
	done := make(chan struct{})
	go func() {
		defer close(done)
		st = a.runLoad(ctx, 16, []string{"/api/admin", "/api/items"}, 2*time.Second, denyAdmin)
	}()
	time.Sleep(1500 * time.Millisecond)
	sigAt := time.Now()
	a.p.signal(syscall.SIGTERM)
	select {
	case <-a.p.done:
	case <-time.After(30 * time.Second):
		t.Fatal("authz did not exit within 30s of SIGTERM")
	}
	exitAfter := time.Since(sigAt)
	cancel()
	<-done

	logged := map[string]bool{}
	f, err := os.Open(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var e struct {
			DecisionID string `json:"decision_id"`
		}
		if json.Unmarshal(sc.Bytes(), &e) == nil {
			logged[e.DecisionID] = true
		}
	}
	lost := 0
	for _, id := range st.ids {
		if !logged[id] {
			lost++
		}
	}
	record(t, "4. decisions lost at shutdown",
		"0 answered decisions missing from the decision log after SIGTERM under load",
		lost == 0 && len(st.ids) > 0,
		"%d decisions answered, %d lines logged, %d answered but not logged; exit %s after SIGTERM; %d checks refused after the listener closed",
		len(st.ids), len(logged), lost, ms(exitAfter), st.errors)
}

// TestFault5SilentControlPlane: the path to the control plane is cut
// without a reset (a TCP proxy that stops forwarding). The server must
// notice, keep serving its last good bundle, turn not ready past the
// staleness bound, and come back when the path heals.
func TestFault5SilentControlPlane(t *testing.T) {
	fx := newFixture(t)
	cp := startControlPlane(t, "fault5-cp", fx, "")
	proxy, err := netfault.Listen(cp.xds)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { proxy.Close() })
	a := startAuthz(t, "fault5-authz", fx, []string{"--control-plane", proxy.Addr(), "--node-id", "authz-fault5", "--decision-log", "off"},
		[]string{"policy-max-staleness", "5s"}, nil)
	waitReady(t, a, 30*time.Second)

	ctx, cancel := context.WithCancel(context.Background())
	var st *loadStats
	done := make(chan struct{})
	go func() {
		defer close(done)
		st = a.runLoad(ctx, 2, []string{"/api/items", "/api/admin"}, 2*time.Second, denyAdmin)
	}()
	time.Sleep(500 * time.Millisecond)

	linesBefore := a.p.lineCount()
	cutAt := time.Now()
	proxy.Blackhole()
	const waitMax = 45 * time.Second
	noticed := a.p.waitLineAfter(linesBefore, "policy subscription interrupted", waitMax)
	noticeAfter := time.Since(cutAt)
	unreadyAfter := time.Duration(-1)
	for time.Since(cutAt) < waitMax {
		if c, _ := readyz(a.admin); c == 503 {
			unreadyAfter = time.Since(cutAt)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The crossing is counted by the subscription's once-a-second check.
	stale := 0.0
	for end := time.Now().Add(2 * time.Second); stale == 0 && time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		stale, _ = metric(a.admin, "meshguard_authz_policy_stale_total")
	}
	healAt := time.Now()
	proxy.Heal()
	readyAgain := time.Duration(-1)
	for time.Since(healAt) < 60*time.Second {
		if c, _ := readyz(a.admin); c == 200 {
			readyAgain = time.Since(healAt)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	<-done
	notice := "never (waited " + waitMax.String() + ")"
	if noticed {
		notice = ms(noticeAfter)
	}
	unready := "never"
	if unreadyAfter >= 0 {
		unready = ms(unreadyAfter)
	}
	record(t, "5. silent control-plane partition",
		"noticed within 20s (keepalive 10s+5s, or the bundle heartbeat's TTL), not ready past the staleness bound (5s), last good bundle serving, ready again after healing",
		noticed && noticeAfter < 20*time.Second && unreadyAfter >= 0 && readyAgain >= 0 && st.wrong == 0,
		"time to notice %s; not ready after %s (stale counted %v); ready again %s after healing; %d checks during the partition, %d wrong, %d errors",
		notice, unready, stale, ms(readyAgain), st.answered, st.wrong, st.errors)
}

// TestFault6UnreadyBeforeClose: on SIGTERM /readyz answers 503 while the
// check listener still accepts and answers, before it closes.
func TestFault6UnreadyBeforeClose(t *testing.T) {
	fx := newFixture(t)
	path := filepath.Join(fx.dir, "policy.yaml")
	writeAtomic(t, path, wholePolicy)
	a := startAuthz(t, "fault6-authz", fx, []string{"--policy", path, "--decision-log", "off"}, nil, nil)
	waitReady(t, a, 20*time.Second)

	// Times are nanoseconds after SIGTERM, at least 1; sigAt is when the
	// signal went, on t0's monotonic clock (0: not yet), so that the probes
	// read it without a race.
	var first503, refused, sigAt atomic.Int64
	var answeredUnready atomic.Int64
	t0 := time.Now()
	sinceSignal := func() (time.Duration, bool) {
		s := sigAt.Load()
		if s == 0 {
			return 0, false
		}
		return max(time.Since(t0)-time.Duration(s), 1), true
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if c, _ := readyz(a.admin); c == 503 && first503.Load() == 0 {
				if d, ok := sinceSignal(); ok {
					first503.Store(int64(d))
				}
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			// A new connection each time, as an Envoy that reconnects.
			c, err := net.DialTimeout("tcp", a.grpc, time.Second)
			if err != nil {
				// Only a refused connection says the listener is closed;
				// a dial that fails otherwise (no local port free, a
				// timeout on a loaded machine) says nothing about it.
				if d, ok := sinceSignal(); ok && errors.Is(err, syscall.ECONNREFUSED) && refused.Load() == 0 {
					refused.Store(int64(d))
				}
			} else {
				c.Close()
				if first503.Load() != 0 && refused.Load() == 0 {
					if ans := a.check(context.Background(), i, "/api/items", time.Second); ans.err == nil {
						answeredUnready.Add(1)
					}
				}
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	time.Sleep(200 * time.Millisecond)
	sigAt.Store(max(int64(time.Since(t0)), 1))
	a.p.signal(syscall.SIGTERM)
	select {
	case <-a.p.done:
	case <-time.After(30 * time.Second):
		t.Fatal("authz did not exit")
	}
	// The process exits moments after its listener closes: let the dialer
	// see the refusal before it stops (it can only see it later than the
	// close, never earlier).
	for deadline := time.Now().Add(2 * time.Second); refused.Load() == 0 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	f503, fref := time.Duration(first503.Load()), time.Duration(refused.Load())
	got503, gotRef := "never", "never"
	if f503 > 0 {
		got503 = ms(f503) + " after SIGTERM"
	}
	if fref > 0 {
		gotRef = ms(fref) + " after SIGTERM"
	}
	record(t, "6. unready before close",
		"/readyz 503 first, checks still answered while unready, the listener closes at least 1s later",
		f503 > 0 && fref > 0 && fref-f503 >= time.Second && answeredUnready.Load() > 0,
		"/readyz 503 %s; check listener refused connections %s; %d checks answered on new connections while unready",
		got503, gotRef, answeredUnready.Load())
}

// ----- happy paths -----

// TestReloadUnderLoad: policy versions swapped by atomic renames under
// load: no wrong answer, and both versions served.
func TestReloadUnderLoad(t *testing.T) {
	fx := newFixture(t)
	path := filepath.Join(fx.dir, "policy.yaml")
	withProbe := wholePolicy + "---\n" + probeDoc
	writeAtomic(t, path, wholePolicy)
	a := startAuthz(t, "reload-authz", fx, []string{"--policy", path, "--policy-poll-interval", "50ms", "--decision-log", "off"}, nil, nil)
	waitReady(t, a, 20*time.Second)
	var probeAllowed, probeDenied atomic.Int64
	expect := func(path string, ans answer) (bool, string) {
		if path == "/api/probe" {
			if ans.allowed {
				probeAllowed.Add(1)
			} else {
				probeDenied.Add(1)
			}
			return false, ""
		}
		return denyAdmin(path, ans)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var st *loadStats
	done := make(chan struct{})
	go func() {
		defer close(done)
		st = a.runLoad(ctx, 8, []string{"/api/items", "/api/admin", "/api/probe"}, 2*time.Second, expect)
	}()
	start := time.Now()
	swaps := 0
	for ; time.Since(start) < 5*time.Second; swaps++ {
		writeAtomic(t, path, []string{withProbe, wholePolicy}[swaps%2])
		time.Sleep(600 * time.Millisecond)
	}
	cancel()
	<-done
	applied, _ := metric(a.admin, "meshguard_authz_policy_reloads_total", `result="applied"`)
	rate := float64(st.answered) / time.Since(start).Seconds()
	record(t, "reload under load (happy path)",
		"0 wrong answers while versions swap; both versions served",
		st.wrong == 0 && st.errors == 0 && probeAllowed.Load() > 0 && probeDenied.Load() > 0,
		"%d checks (%.0f/s) over %d swaps (%v applied): %d wrong, %d errors; probe allowed %d / denied %d",
		st.answered, rate, swaps, applied, st.wrong, st.errors, probeAllowed.Load(), probeDenied.Load())
}

// TestOverload: far more concurrent checks than the server has cores.
func TestOverload(t *testing.T) {
	fx := newFixture(t)
	path := filepath.Join(fx.dir, "policy.yaml")
	writeAtomic(t, path, wholePolicy)
	a := startAuthz(t, "overload-authz", fx, []string{"--policy", path, "--decision-log", "off", "--check-timeout", "1s"}, nil, nil)
	waitReady(t, a, 20*time.Second)
	rss0 := a.p.rssMiB()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	admitsAdmin := func(path string, ans answer) (bool, string) {
		if strings.HasPrefix(path, "/api/admin") && ans.allowed {
			return true, "admin allowed"
		}
		return false, ""
	}
	st := a.runLoad(ctx, 256, []string{"/api/items", "/api/admin"}, 5*time.Second, admitsAdmin)
	rss1 := a.p.rssMiB()
	c, _ := readyz(a.admin)
	record(t, "overload (happy path)",
		"256 concurrent callers: no wrong answer, every check answered, latency and memory bounded",
		st.wrong == 0 && st.errors == 0 && !a.p.exited() && rss1-rss0 < 300,
		"%d checks answered, %d errors, %d wrong; p50 %s p99 %s max %s; RSS %.0f → %.0f MiB; /readyz %d after",
		st.answered, st.errors, st.wrong, ms(st.pct(0.5)), ms(st.pct(0.99)), ms(st.maxLatency()), rss0, rss1, c)
}

// ----- the control plane -----

type controlPlane struct {
	p                  *process
	xds, http, metrics string
	policyDir          string
}

// startControlPlane runs `meshguard controlplane` in plaintext with the
// test policy (and a mesh description when mesh is not empty).
func startControlPlane(t *testing.T, name string, fx *fixture, mesh string, extra ...string) *controlPlane {
	t.Helper()
	dir := filepath.Join(fx.dir, name+"-policies")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeAtomic(t, filepath.Join(dir, "policy.yaml"), wholePolicy)
	xdsAddr := "127.0.0.1:0"
	for i := 0; i+1 < len(extra); i++ {
		if extra[i] == "--xds-addr" {
			xdsAddr = extra[i+1]
			extra = append(extra[:i:i], extra[i+2:]...)
		}
	}
	args := []string{"controlplane", "--insecure-plaintext", "--xds-addr", xdsAddr, "--http-addr", "127.0.0.1:0",
		"--metrics-addr", "127.0.0.1:0", "--policy", dir, "--reload", "100ms", "--log-level", "info"}
	if mesh != "" {
		meshFile := filepath.Join(fx.dir, name+"-mesh.yaml")
		if err := os.WriteFile(meshFile, []byte(mesh), 0o644); err != nil {
			t.Fatal(err)
		}
		args = append(args, "--mesh", meshFile)
	}
	args = append(args, extra...)
	args = withFlags(t, "controlplane", args, "bundle-heartbeat", "1s", "state-dir", filepath.Join(fx.dir, name+"-state"))
	p := startProcess(t, name, args, nil)
	line := p.waitLine(t, "control plane listening", 30*time.Second)
	var rec struct{ XDS, HTTP, Metrics string }
	if err := json.Unmarshal([]byte(line), &rec); err != nil || rec.XDS == "" {
		t.Fatalf("listening line %q: %v", line, err)
	}
	return &controlPlane{p: p, xds: rec.XDS, http: rec.HTTP, metrics: rec.Metrics, policyDir: dir}
}

// TestControlPlaneLoss: the control plane dies (a reset, not a
// partition): checks go on with the last good bundle, the server stays
// ready within the staleness bound, and takes the control plane back when
// it returns on the same address.
func TestControlPlaneLoss(t *testing.T) {
	fx := newFixture(t)
	cp := startControlPlane(t, "loss-cp", fx, "")
	a := startAuthz(t, "loss-authz", fx, []string{"--control-plane", cp.xds, "--node-id", "authz-loss", "--decision-log", "off"},
		[]string{"policy-max-staleness", "10s"}, nil)
	waitReady(t, a, 30*time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	var st *loadStats
	done := make(chan struct{})
	go func() {
		defer close(done)
		st = a.runLoad(ctx, 2, []string{"/api/items", "/api/admin"}, 2*time.Second, denyAdmin)
	}()
	time.Sleep(300 * time.Millisecond)

	before := a.p.lineCount()
	killAt := time.Now()
	cp.p.kill()
	noticed := a.p.waitLineAfter(before, "policy subscription interrupted", 10*time.Second)
	notice := time.Since(killAt)
	time.Sleep(2 * time.Second)
	readyDown, _ := readyz(a.admin)
	// The returning control plane's answer is applied ("unchanged": the
	// same policy) on both old and new builds.
	reloads := func() float64 {
		v, _ := metric(a.admin, "meshguard_authz_policy_reloads_total", `source="ads"`)
		return v
	}
	reloadsBefore := reloads()
	restartAt := time.Now()
	startControlPlane(t, "loss-cp-restarted", fx, "", "--xds-addr", cp.xds)
	back := time.Duration(-1)
	for time.Since(restartAt) < 40*time.Second {
		if reloads() > reloadsBefore {
			back = time.Since(restartAt)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	<-done
	record(t, "control-plane loss (happy path)",
		"the loss is noticed at once, checks go on with the last good bundle, ready within the bound, reconnects when the control plane returns",
		noticed && readyDown == 200 && st.wrong == 0 && st.errors == 0 && back >= 0,
		"noticed after %s; /readyz %d with the control plane down 2s; %d checks, %d wrong, %d errors; back %s after the restart began",
		ms(notice), readyDown, st.answered, st.wrong, st.errors, ms(back))
}

// ----- helpers on process lines -----

func (p *process) lineCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.lines)
}

func (p *process) hasLineAfter(from int, substr string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, l := range p.lines[min(from, len(p.lines)):] {
		if strings.Contains(l, substr) {
			return true
		}
	}
	return false
}

func (p *process) waitLineAfter(from int, substr string, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if p.hasLineAfter(from, substr) {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return false
}

func envInt(name string, def int) int {
	if v := os.Getenv(name); v != "" {
		var n int
		if _, err := fmt.Sscan(v, &n); err == nil && n > 0 {
			return n
		}
	}
	return def
}
