package main

// Helpers for the tests that run `meshguard controlplane` as real processes
// (so that they can be killed with SIGKILL) and follow what they serve as an
// authz server does.

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/meshguard/meshguard/authz/loader"
	authzmetrics "github.com/meshguard/meshguard/authz/metrics"
	"github.com/meshguard/meshguard/policies"
)

var built struct {
	once sync.Once
	dir  string
	path string
	err  error
}

func TestMain(m *testing.M) {
	// The control plane's default record store (under $XDG_STATE_HOME)
	// stays out of the user's home.
	state, err := os.MkdirTemp("", "meshguard-state-")
	if err == nil {
		os.Setenv("XDG_STATE_HOME", state)
	}
	code := m.Run()
	if state != "" {
		_ = os.RemoveAll(state)
	}
	for _, dir := range []string{built.dir, filterModule.dir} {
		if dir != "" {
			_ = os.RemoveAll(dir)
		}
	}
	os.Exit(code)
}

// meshguardBinary builds bin/meshguard once per test binary (the go build
// cache makes it a link when `make build` ran before).
func meshguardBinary(t *testing.T) string {
	t.Helper()
	built.once.Do(func() {
		if built.dir, built.err = os.MkdirTemp("", "meshguard-cmd-test-"); built.err != nil {
			return
		}
		built.path = filepath.Join(built.dir, "meshguard")
		start := time.Now()
		cmd := exec.Command("go", "build", "-o", built.path, ".")
		if out, err := cmd.CombinedOutput(); err != nil {
			built.err = fmt.Errorf("go build: %v\n%s", err, out)
			return
		}
		t.Logf("built meshguard in %s", time.Since(start).Round(time.Millisecond))
	})
	if built.err != nil {
		t.Fatal(built.err)
	}
	return built.path
}

// process is a `meshguard` child process with its output in a log file.
type process struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}

	mu    sync.Mutex
	lines []string
}

// startProcess starts bin with args; the test's cleanup kills it if it
// still runs. Output goes to <dir>/<name>.log and is kept for grep.
func startProcess(t *testing.T, bin, dir, name string, env []string, args ...string) *process {
	t.Helper()
	logPath := filepath.Join(dir, name+".log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	p := &process{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(logf, line)
			p.mu.Lock()
			p.lines = append(p.lines, line)
			p.mu.Unlock()
		}
		logf.Close()
	}()
	go func() {
		_ = cmd.Wait()
		pw.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.kill(t)
		if t.Failed() {
			p.mu.Lock()
			tail := p.lines[max(0, len(p.lines)-40):]
			p.mu.Unlock()
			t.Logf("%s (log %s), last lines:\n%s", name, logPath, strings.Join(tail, "\n"))
		}
	})
	return p
}

// kill sends SIGKILL to the process (by its pid) and waits for it.
func (p *process) kill(t *testing.T) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Errorf("%s (pid %d) did not exit after SIGKILL", p.name, p.cmd.Process.Pid)
	}
}

// grep returns the output lines containing s.
func (p *process) grep(s string) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for _, l := range p.lines {
		if strings.Contains(l, s) {
			out = append(out, l)
		}
	}
	return out
}

// waitProcessReady waits for /readyz on a process's metrics address.
func waitProcessReady(t *testing.T, p *process, metricsAddr string, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(within)
	for {
		resp, err := http.Get("http://" + metricsAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return time.Since(start)
			}
		}
		select {
		case <-p.done:
			t.Fatalf("%s exited before it was ready", p.name)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready within %s: %v", p.name, within, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// authzServer is an authz server's policy path: the real ADS subscription
// (loader.ADSSource), compile, swap into an engine; decisions come from
// that engine, as the gRPC server's do.
type authzServer struct {
	engine policies.Engine
	loader *loader.Loader
}

func startAuthzServer(t *testing.T, xdsAddr, node string) *authzServer {
	t.Helper()
	conn, err := grpc.NewClient(xdsAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{BaseDelay: 20 * time.Millisecond, Multiplier: 1.5, MaxDelay: 200 * time.Millisecond}, MinConnectTimeout: time.Second}))
	if err != nil {
		t.Fatal(err)
	}
	a := &authzServer{}
	a.loader = loader.New(&a.engine, slog.New(slog.DiscardHandler), authzmetrics.New(prometheus.NewRegistry()))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		a.loader.Run(ctx, &loader.ADSSource{Conn: conn, Node: &corev3.Node{Id: node, Cluster: "meshguard-authz"},
			Log: slog.New(slog.DiscardHandler), MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	}()
	t.Cleanup(func() { cancel(); <-done; _ = conn.Close() })
	select {
	case <-a.loader.Ready():
	case <-time.After(20 * time.Second):
		t.Fatalf("authz server %s got no bundle from %s", node, xdsAddr)
	}
	return a
}

// quarantined decides a request from id as the authz server would.
func (a *authzServer) quarantined(id string) bool {
	d := a.engine.Decide(&policies.Attributes{
		Peer: spiffeid.RequireFromString(id), MTLS: true, Method: "GET", Path: "/orders", Host: "orders",
		Target: policies.Target{ID: spiffeid.RequireFromString("spiffe://example.org/ns/shop/sa/orders")},
	})
	return !d.Allowed && d.Reason == policies.ReasonDeniedQuarantine
}

// version is the bundle version the authz server runs.
func (a *authzServer) version() string {
	if b := a.loader.Current(); b != nil {
		return b.Version
	}
	return ""
}

// waitEnforced waits until the authz server decides id as want and
// returns how long it took.
func (a *authzServer) waitEnforced(t *testing.T, id string, want bool, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for a.quarantined(id) != want {
		if time.Since(start) > within {
			t.Fatalf("authz server: %s quarantined=%v after %s, want %v (bundle %s)", id, !want, within, want, a.version())
		}
		time.Sleep(2 * time.Millisecond)
	}
	return time.Since(start)
}

// runCmdStdout runs the CLI in process and returns its standard output
// alone (warnings go to standard error).
func runCmdStdout(t *testing.T, ctx context.Context, args ...string) (string, error) {
	t.Helper()
	root := newRootCmd()
	var out, errb bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errb)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err != nil {
		return out.String() + errb.String(), err
	}
	return out.String(), nil
}
