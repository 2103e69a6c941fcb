//go:build faults

// Package faults is meshguard's fault suite (`make test-faults`): the real
// `meshguard authz` and `meshguard controlplane` binaries as processes on
// loopback, under load, with the faults an operator meets — files caught
// mid-write, a decision log nobody reads, a control plane that vanishes
// without a reset, a shutdown under load, a reconnection storm — and the
// happy paths around them. Each test records what it expected, whether it
// held and its numbers; the suite prints the table at the end.
//
// It runs against any build: MESHGUARD_BIN names the directory holding
// `meshguard` (default <repo>/bin). Flags the binary does not have are
// left out (and said so), so that an older build is judged on its
// behaviour, not on its flags.
package faults

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/meshguard/meshguard/internal/testbed/ca"
)

// ----- the report -----

type row struct {
	name, expect, numbers string
	held                  bool
}

var (
	reportMu sync.Mutex
	report   []row
)

// record adds a row to the report and fails the test when it did not hold.
func record(t *testing.T, name, expect string, held bool, numbers string, args ...any) {
	t.Helper()
	n := fmt.Sprintf(numbers, args...)
	reportMu.Lock()
	report = append(report, row{name: name, expect: expect, held: held, numbers: n})
	reportMu.Unlock()
	verdict := "HELD"
	if !held {
		verdict = "DID NOT HOLD"
		t.Errorf("%s: %s — %s", name, verdict, n)
	}
	t.Logf("FAULT %s: %s — expect: %s — %s", name, verdict, expect, n)
}

func TestMain(m *testing.M) {
	code := m.Run()
	reportMu.Lock()
	defer reportMu.Unlock()
	var b strings.Builder
	fmt.Fprintf(&b, "\nmeshguard fault suite — %s (%s)\n", meshguardPath(), runtime.Version())
	held := 0
	for _, r := range report {
		v := "held"
		if !r.held {
			v = "DID NOT HOLD"
		} else {
			held++
		}
		fmt.Fprintf(&b, "\n[%s] %s\n    expect: %s\n    got:    %s\n", v, r.name, r.expect, r.numbers)
	}
	fmt.Fprintf(&b, "\n%d of %d held\n", held, len(report))
	fmt.Print(b.String())
	if p := os.Getenv("FAULTS_REPORT"); p != "" {
		_ = os.WriteFile(p, []byte(b.String()), 0o644)
	}
	os.Exit(code)
}

// ----- the binary and its flags -----

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(filepath.Dir(file)))
}

func meshguardPath() string {
	if d := os.Getenv("MESHGUARD_BIN"); d != "" {
		return filepath.Join(d, "meshguard")
	}
	return filepath.Join(repoRoot(), "bin", "meshguard")
}

var (
	flagsMu sync.Mutex
	flagSet = map[string]map[string]bool{}
)

// hasFlag reports whether `meshguard <cmd>` takes --name.
func hasFlag(t *testing.T, cmd, name string) bool {
	t.Helper()
	flagsMu.Lock()
	defer flagsMu.Unlock()
	fs, ok := flagSet[cmd]
	if !ok {
		out, err := exec.Command(meshguardPath(), cmd, "--help").CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s --help: %v\n%s", meshguardPath(), cmd, err, out)
		}
		fs = map[string]bool{}
		for _, m := range regexp.MustCompile(`--([a-z0-9-]+)`).FindAllStringSubmatch(string(out), -1) {
			fs[m[1]] = true
		}
		flagSet[cmd] = fs
	}
	return fs[name]
}

// withFlags appends each --name value pair the binary knows, and logs the
// ones it does not.
func withFlags(t *testing.T, cmd string, args []string, pairs ...string) []string {
	t.Helper()
	for i := 0; i+1 < len(pairs); i += 2 {
		if hasFlag(t, cmd, pairs[i]) {
			args = append(args, "--"+pairs[i], pairs[i+1])
		} else {
			t.Logf("meshguard %s has no --%s: left out", cmd, pairs[i])
		}
	}
	return args
}

// ----- processes -----

type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	err     error

	mu     sync.Mutex
	lines  []string
	paused chan struct{} // while set, the output is not read
}

// pauseOutput stops reading the process's output (its stderr), as a stuck
// log collector would; resumeOutput reads again.
func (p *process) pauseOutput() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.paused == nil {
		p.paused = make(chan struct{})
	}
}

func (p *process) resumeOutput() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.paused != nil {
		close(p.paused)
		p.paused = nil
	}
}

// startProcess runs meshguard with args. Its stderr (and stdout unless
// stdout is given) goes to <log dir>/<name>.log and is kept for waitLine.
func startProcess(t *testing.T, name string, args []string, stdout *os.File) *process {
	t.Helper()
	dir := logDir(t)
	logPath := filepath.Join(dir, name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(meshguardPath(), args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = pw
	cmd.Stdout = pw
	if stdout != nil {
		cmd.Stdout = stdout
	}
	p := &process{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	fmt.Fprintf(logf, "=== %s %s\n", meshguardPath(), strings.Join(args, " "))
	read := make(chan struct{})
	go func() {
		defer close(read)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 4<<20)
		for sc.Scan() {
			p.mu.Lock()
			wait := p.paused
			p.mu.Unlock()
			if wait != nil {
				<-wait
			}
			fmt.Fprintln(logf, sc.Text())
			p.mu.Lock()
			if len(p.lines) < 200000 {
				p.lines = append(p.lines, sc.Text())
			}
			p.mu.Unlock()
		}
		_, _ = io.Copy(io.Discard, pr)
	}()
	go func() {
		p.err = cmd.Wait()
		<-read
		logf.Close()
		close(p.done)
	}()
	t.Cleanup(func() { p.resumeOutput(); p.kill() })
	return p
}

func (p *process) pid() int { return p.cmd.Process.Pid }

func (p *process) signal(sig syscall.Signal) { _ = syscall.Kill(-p.pid(), sig) }

func (p *process) kill() {
	select {
	case <-p.done:
		return
	default:
	}
	p.signal(syscall.SIGKILL)
	<-p.done
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// waitLine returns the first line containing substr, waiting up to d.
func (p *process) waitLine(t *testing.T, substr string, d time.Duration) string {
	t.Helper()
	if l, ok := p.findLine(substr, d); ok {
		return l
	}
	t.Fatalf("%s did not print %q within %s; log %s:\n%s", p.name, substr, d, p.logPath, p.tail(20))
	return ""
}

func (p *process) findLine(substr string, d time.Duration) (string, bool) {
	deadline := time.Now().Add(d)
	seen := 0
	for {
		p.mu.Lock()
		for ; seen < len(p.lines); seen++ {
			if strings.Contains(p.lines[seen], substr) {
				l := p.lines[seen]
				p.mu.Unlock()
				return l, true
			}
		}
		p.mu.Unlock()
		if time.Now().After(deadline) || p.exited() {
			return "", false
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (p *process) tail(n int) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.lines[max(0, len(p.lines)-n):], "\n")
}

// rssMiB is the process's resident set.
func (p *process) rssMiB() float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.pid()))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}

var (
	logDirOnce sync.Once
	logDirPath string
)

// logDir holds every process log of the run: FAULTS_LOG_DIR or a temp dir,
// printed at the end.
func logDir(t *testing.T) string {
	logDirOnce.Do(func() {
		logDirPath = os.Getenv("FAULTS_LOG_DIR")
		if logDirPath == "" {
			logDirPath, _ = os.MkdirTemp("", "mg-faults-")
		}
		_ = os.MkdirAll(logDirPath, 0o755)
		fmt.Fprintf(os.Stderr, "fault suite: process logs in %s\n", logDirPath)
	})
	return filepath.Join(logDirPath)
}

// ----- the authz server -----

const td = "prod.example"

var (
	frontendID = "spiffe://" + td + "/ns/web/sa/frontend"
	apiID      = "spiffe://" + td + "/ns/shop/sa/api"
)

// fixture is a trust bundle and a policy directory for authz.
type fixture struct {
	dir, bundle string
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	c, err := ca.New(spiffeid.RequireTrustDomainFromString(td))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	files, err := c.WriteFiles(dir, spiffeid.RequireFromString("spiffe://"+td+"/ns/meshguard/sa/authz"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{dir: dir, bundle: files.Bundle}
}

// policyDoc is one namespace-wide AuthorizationPolicy of namespace shop.
func policyDoc(name, action, rule string) string {
	return "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: " + name +
		"\n  namespace: shop\nspec:\n  action: " + action + "\n  rules:\n" + rule
}

// The test policy: frontend may call /api/*, nobody /api/admin*.
var (
	allowDoc = policyDoc("api-allow", "ALLOW", "  - from:\n    - source:\n        principals: [\""+td+"/ns/web/sa/frontend\"]\n    to:\n    - operation:\n        paths: [\"/api/*\"]\n")
	denyDoc  = policyDoc("api-deny-admin", "DENY", "  - to:\n    - operation:\n        paths: [\"/api/admin*\"]\n")
	// probeDoc denies /api/probe: present in one version, absent in the
	// other, so that answers tell the versions apart.
	probeDoc    = policyDoc("api-deny-probe", "DENY", "  - to:\n    - operation:\n        paths: [\"/api/probe\"]\n")
	wholePolicy = allowDoc + "---\n" + denyDoc
)

type authz struct {
	p           *process
	grpc, admin string
	conns       []*grpc.ClientConn
	clients     []authv3.AuthorizationClient
}

// startAuthz runs `meshguard authz` in plaintext on loopback with the
// fixture's bundle; extra are added as they are (flags every build has),
// newFlags only when the binary knows them.
func startAuthz(t *testing.T, name string, fx *fixture, extra []string, newFlags []string, stdout *os.File) *authz {
	t.Helper()
	args := []string{"authz", "--insecure-plaintext", "--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0",
		"--bundle", fx.bundle, "--trust-domain", td, "--no-jwt-svid", "--log-level", "info"}
	args = append(args, extra...)
	args = withFlags(t, "authz", args, newFlags...)
	p := startProcess(t, name, args, stdout)
	line := p.waitLine(t, "authz server listening", 20*time.Second)
	var rec struct{ GRPC, Admin string }
	if err := json.Unmarshal([]byte(line), &rec); err != nil || rec.GRPC == "" {
		t.Fatalf("listening line %q: %v", line, err)
	}
	a := &authz{p: p, grpc: rec.GRPC, admin: rec.Admin}
	for range 4 {
		c, err := grpc.NewClient(a.grpc, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		a.conns = append(a.conns, c)
		a.clients = append(a.clients, authv3.NewAuthorizationClient(c))
	}
	return a
}

// readyz returns /readyz's status and body (0 when it does not answer).
func readyz(admin string) (int, string) {
	c := http.Client{Timeout: time.Second}
	resp, err := c.Get("http://" + admin + "/readyz")
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func waitReady(t *testing.T, a *authz, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		c, body := readyz(a.admin)
		if c == 200 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("authz not ready within %s: %d %s\n%s", d, c, body, a.p.tail(20))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// metric returns the value of the series of name whose labels contain
// every given label="value" pair, summed over matching series.
func metric(admin, name string, labels ...string) (float64, bool) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + admin + "/metrics")
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	sum, found := 0.0, false
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) {
			continue
		}
		rest := line[len(name):]
		if rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		ok := true
		for _, l := range labels {
			ok = ok && strings.Contains(rest, l)
		}
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err == nil {
			sum += v
			found = true
		}
	}
	return sum, found
}

// ----- checks and load -----

// untargeted is a path marker: the request names no target workload, which
// the server denies on an error path (and logs).
const untargeted = "/untargeted"

func checkRequest(path, reqID string) *authv3.CheckRequest {
	if path == untargeted {
		r := checkRequest("/api/items", reqID)
		r.Attributes.Destination = nil
		return r
	}
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source:      &authv3.AttributeContext_Peer{Principal: frontendID},
		Destination: &authv3.AttributeContext_Peer{Principal: apiID},
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Id: reqID, Method: "GET", Path: path, Host: "api.shop", Protocol: "HTTP/1.1",
			Headers: map[string]string{":method": "GET", ":path": path, ":authority": "api.shop", "x-request-id": reqID},
		}},
	}}
}

// answer is one check's outcome.
type answer struct {
	allowed    bool
	reason     string
	decisionID string
	err        error
	latency    time.Duration
}

func (a *authz) check(ctx context.Context, i int, path string, timeout time.Duration) answer {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	resp, err := a.clients[i%len(a.clients)].Check(ctx, checkRequest(path, strconv.Itoa(i)))
	ans := answer{err: err, latency: time.Since(start)}
	if err == nil {
		ans.allowed = resp.GetStatus().GetCode() == 0
		f := resp.GetDynamicMetadata().GetFields()
		ans.reason = f["reason"].GetStringValue()
		ans.decisionID = f["decision_id"].GetStringValue()
	}
	return ans
}

// loadStats counts a load's outcomes.
type loadStats struct {
	mu        sync.Mutex
	sent      int
	answered  int
	errors    int
	wrong     int
	latencies []time.Duration
	ids       []string
	errKinds  map[string]int
	wrongWhy  map[string]int
}

func (s *loadStats) add(a answer, wrong bool, why string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sent++
	if a.err != nil {
		s.errors++
		if s.errKinds == nil {
			s.errKinds = map[string]int{}
		}
		msg := a.err.Error()
		if len(msg) > 60 {
			msg = msg[:60]
		}
		s.errKinds[msg]++
		return
	}
	s.answered++
	s.latencies = append(s.latencies, a.latency)
	if a.decisionID != "" {
		s.ids = append(s.ids, a.decisionID)
	}
	if wrong {
		s.wrong++
		if s.wrongWhy == nil {
			s.wrongWhy = map[string]int{}
		}
		s.wrongWhy[why]++
	}
}

func (s *loadStats) pct(p float64) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.latencies) == 0 {
		return 0
	}
	l := slices.Clone(s.latencies)
	sort.Slice(l, func(i, j int) bool { return l[i] < l[j] })
	return l[min(len(l)-1, int(float64(len(l))*p))]
}

func (s *loadStats) maxLatency() time.Duration { return s.pct(1) }

// expectation says whether an answer to path is wrong.
type expectation func(path string, a answer) (wrong bool, why string)

// runLoad sends checks for paths round-robin from workers until ctx ends.
func (a *authz) runLoad(ctx context.Context, workers int, paths []string, timeout time.Duration, expect expectation) *loadStats {
	st := &loadStats{}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; ctx.Err() == nil; i += workers {
				path := paths[i%len(paths)]
				ans := a.check(context.Background(), i, path, timeout)
				if ctx.Err() != nil && ans.err != nil {
					return
				}
				wrong, why := false, ""
				if ans.err == nil && expect != nil {
					wrong, why = expect(path, ans)
				}
				st.add(ans, wrong, why)
			}
		}()
	}
	wg.Wait()
	return st
}

// denyAdmin is the test policy's answer: /api/admin* denied, the rest of
// /api/* allowed.
func denyAdmin(path string, a answer) (bool, string) {
	if strings.HasPrefix(path, "/api/admin") || path == untargeted {
		if a.allowed {
			return true, "admin allowed (" + a.reason + ")"
		}
		return false, ""
	}
	if !a.allowed {
		return true, "api denied (" + a.reason + ")"
	}
	return false, ""
}

// writeAtomic replaces path by a rename, as a ConfigMap update does.
func writeAtomic(t *testing.T, path, data string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), ".tmp-"+filepath.Base(path))
	if err := os.WriteFile(tmp, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond)) }
