//go:build e2e

// Package e2e runs meshguard end to end with real processes: SPIRE server
// and agent, `meshguard controlplane`, `meshguard authz`, and workloads
// behind an Envoy-EMULATING sidecar (internal/testbed/envoyemu) that runs the
// compiled wasm filter in the wazero proxy-wasm host. Run it with `make e2e`.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshguard/meshguard/e2e/internal/proc"
)

// repoRoot is the module root (the test runs in e2e/).
func repoRoot(t testing.TB) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(file))
}

// binDir holds spire-server, spire-agent, meshguard and the wasm module:
// MESHGUARD_BIN (set by `make e2e`) or <repo>/bin.
func binDir(t testing.TB) string {
	if d := os.Getenv("MESHGUARD_BIN"); d != "" {
		return d
	}
	return filepath.Join(repoRoot(t), "bin")
}

// logDir keeps every process log of the run: E2E_LOG_DIR or a temp dir that
// is kept when the test fails.
func logDir(t *testing.T) string {
	if d := os.Getenv("E2E_LOG_DIR"); d != "" {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		return d
	}
	d, err := os.MkdirTemp("", "mg-e2e-logs-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("process logs kept in %s", d)
			return
		}
		_ = os.RemoveAll(d)
	})
	return d
}

// buildWorkload builds the workload binary once into dir.
func buildWorkload(t *testing.T, dir string) string {
	t.Helper()
	out := filepath.Join(dir, "mg-e2e-workload")
	start := time.Now()
	cmd := exec.Command("go", "build", "-o", out, "./e2e/cmd/mg-e2e-workload")
	cmd.Dir = repoRoot(t)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build workload: %v\n%s", err, b)
	}
	t.Logf("built mg-e2e-workload in %v", time.Since(start).Round(time.Millisecond))
	return out
}

// workload is one running mg-e2e-workload process.
type workload struct {
	name    string
	id      spiffeid.ID
	path    string // the per-workload binary path SPIRE attests
	proc    *proc.Process
	inbound string
	driver  string
}

type readyLine struct {
	ID      string `json:"id"`
	Inbound string `json:"inbound"`
	Driver  string `json:"driver"`
}

// linkBinary gives a workload its own binary path: a hard link when the
// file system allows it, a copy otherwise. unix:path selectors name it.
func linkBinary(t *testing.T, src, dir, name string) string {
	t.Helper()
	dst := filepath.Join(dir, name)
	if err := os.Link(src, dst); err == nil {
		return dst
	}
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return dst
}

// startWorkload starts a workload process and waits for its READY line.
func startWorkload(ctx context.Context, t *testing.T, w *workload, env []string, args []string, logs string) {
	t.Helper()
	p, err := proc.Start(proc.Spec{Name: "workload-" + w.name, Path: w.path,
		Args: append([]string{"--name", w.name}, args...), Env: env, LogDir: logs})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Stop(5 * time.Second) })
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	line, err := p.WaitForLine(wctx, "READY ")
	if err != nil {
		t.Fatalf("workload %s: %v\n%s", w.name, err, p.Tail(30))
	}
	var r readyLine
	if err := json.Unmarshal([]byte(strings.TrimPrefix(line[strings.Index(line, "READY "):], "READY ")), &r); err != nil {
		t.Fatalf("workload %s: bad READY line %q: %v", w.name, line, err)
	}
	if r.ID != w.id.String() {
		t.Fatalf("workload %s got SVID %s from the Workload API, want %s", w.name, r.ID, w.id)
	}
	w.proc, w.inbound, w.driver = p, r.Inbound, r.Driver
}

// callResult mirrors mg-e2e-workload's CallResult.
type callResult struct {
	Status   int            `json:"status"`
	Reason   string         `json:"reason"`
	Body     string         `json:"body"`
	Error    string         `json:"error"`
	Statuses map[string]int `json:"statuses"`
}

type callOpts struct {
	Method   string              `json:"method,omitempty"`
	Headers  map[string][]string `json:"headers,omitempty"`
	JWTAud   string              `json:"jwtAudience,omitempty"`
	Bearer   string              `json:"bearer,omitempty"`
	Count    int                 `json:"count,omitempty"`
	TimeoutS float64             `json:"timeoutSeconds,omitempty"`
	// Sidecar sends the call through the caller's sidecar (its outbound
	// listener to the destination), as an application's calls go;
	// otherwise the caller connects to the destination itself.
	Sidecar bool `json:"-"`
}

// call makes from call to through from's outbound mTLS client.
func (from *workload) call(t testing.TB, to *workload, path string, o callOpts) callResult {
	t.Helper()
	req := map[string]any{"url": "https://" + to.inbound + path, "destId": to.id.String(),
		"method": o.Method, "headers": o.Headers, "jwtAudience": o.JWTAud, "bearer": o.Bearer,
		"count": o.Count, "timeoutSeconds": o.TimeoutS}
	if o.Sidecar {
		req["via"] = to.name
	}
	b, _ := json.Marshal(req)
	resp, err := http.Post("http://"+from.driver+"/call", "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatalf("driver %s: %v", from.name, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("driver %s: %d %s", from.name, resp.StatusCode, body)
	}
	var r callResult
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatalf("driver %s: %v: %s", from.name, err, body)
	}
	return r
}

// get fetches a driver endpoint as JSON.
func (w *workload) get(t testing.TB, path string, v any) {
	t.Helper()
	resp, err := http.Get("http://" + w.driver + path)
	if err != nil {
		t.Fatalf("driver %s: %v", w.name, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("driver %s%s: %d %s", w.name, path, resp.StatusCode, b)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("driver %s%s: %v", w.name, path, err)
	}
}

// timed runs a scenario as a subtest and logs its duration in a fixed
// format that docs/e2e.md and the CI summary quote.
func timed(t *testing.T, name string, f func(t *testing.T)) bool {
	return t.Run(name, func(t *testing.T) {
		start := time.Now()
		defer func() {
			status := "PASS"
			if t.Failed() {
				status = "FAIL"
			} else if t.Skipped() {
				status = "SKIP"
			}
			t.Logf("SCENARIO %-40s %s %v", name, status, time.Since(start).Round(time.Millisecond))
		}()
		f(t)
	})
}
