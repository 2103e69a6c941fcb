package loader

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/meshguard/meshguard/authz/metrics"
	"github.com/meshguard/meshguard/policies"
)

// lockedBuffer collects log output from several goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func newLoader(t *testing.T) (*Loader, *policies.Engine, *metrics.Metrics, *lockedBuffer) {
	t.Helper()
	var logs lockedBuffer
	eng := &policies.Engine{}
	m := metrics.New(prometheus.NewRegistry())
	return New(eng, slog.New(slog.NewJSONHandler(&logs, nil)), m), eng, m, &logs
}

// set returns a valid set whose single DENY policy is named name, so that
// decisions tell versions apart.
func set(name string) policies.Set {
	return policies.Set{AuthorizationPolicies: []policies.AuthorizationPolicy{{
		APIVersion: policies.APIVersionIstioV1, Kind: policies.KindAuthorizationPolicy,
		Metadata: policies.ObjectMeta{Name: name, Namespace: "istio-system"},
		Spec: policies.AuthorizationPolicySpec{Action: "DENY", Rules: []policies.Rule{{
			To: []policies.RuleTo{{Operation: policies.Operation{Paths: []string{"/" + name}}}},
		}}},
	}}}
}

func bundleJSON(t testing.TB, version string, s policies.Set) []byte {
	t.Helper()
	b, _, err := policies.NewBundle(version, s)
	if err != nil {
		t.Fatal(err)
	}
	data, err := b.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// invalidBundle has a correct hash but a set that does not validate.
func invalidBundle(t testing.TB, version string) []byte {
	t.Helper()
	data := bundleJSON(t, version, set("bad"))
	// Change the action inside the set: the hash no longer matches and the
	// action is invalid; both are reasons to reject.
	return []byte(strings.Replace(string(data), `"action":"DENY"`, `"action":"EXPLODE"`, 1))
}

func TestApplyRejectsInvalidAndKeepsLastGood(t *testing.T) {
	l, eng, m, logs := newLoader(t)
	if err := l.Apply("file", Update{Err: os.ErrNotExist, Origin: "x"}); err == nil {
		t.Fatal("an error update was applied")
	}
	if eng.Snapshot() != nil {
		t.Fatal("engine has a snapshot after a failed first load")
	}
	b1, _, _ := policies.NewBundle("v1", set("one"))
	if err := l.Apply("file", Update{Bundle: b1}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-l.Ready():
	default:
		t.Fatal("not ready after a good load")
	}
	// A bundle that does not compile: the set is checked by Compile.
	bad := set("two")
	bad.AuthorizationPolicies[0].Spec.Rules[0].To[0].Operation.Paths = []string{"no-leading-slash["}
	bad.AuthorizationPolicies[0].Spec.Action = "NOPE"
	b2 := &policies.Bundle{Format: policies.BundleFormat, Version: "v2", Set: bad}
	if err := l.Apply("file", Update{Bundle: b2}); err == nil {
		t.Fatal("invalid bundle applied")
	}
	if got := eng.Snapshot().Version(); got != "v1" {
		t.Fatalf("serving %s after a rejected update, want v1", got)
	}
	if got := testutil.ToFloat64(m.Reloads.WithLabelValues("file", "rejected")); got != 2 {
		t.Errorf("rejected = %v, want 2", got)
	}
	if got := testutil.ToFloat64(m.PolicyVersion.WithLabelValues("v1", eng.Snapshot().Hash())); got != 1 {
		t.Errorf("policy version gauge = %v", got)
	}
	if !strings.Contains(logs.String(), "policy update rejected") || !strings.Contains(logs.String(), `"serving_version":"v1"`) {
		t.Errorf("rejection not logged with the serving version:\n%s", logs.String())
	}
	if err := l.Apply("file", Update{Bundle: b1}); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(m.Reloads.WithLabelValues("file", "unchanged")); got != 1 {
		t.Errorf("unchanged = %v, want 1", got)
	}
}

func waitVersion(t *testing.T, eng *policies.Engine, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if s := eng.Snapshot(); s != nil && s.Version() == want {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	got := "<none>"
	if s := eng.Snapshot(); s != nil {
		got = s.Version()
	}
	t.Fatalf("serving %s, want %s", got, want)
}

func TestFileSourceHotReload(t *testing.T) {
	l, eng, m, logs := newLoader(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "bundle.json")
	write := func(data []byte) {
		// Atomic replace, as a ConfigMap update or an editor would.
		tmp := filepath.Join(dir, ".tmp")
		if err := os.WriteFile(tmp, data, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	write(bundleJSON(t, "v1", set("one")))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.Run(ctx, &FileSource{Path: path, Interval: 10 * time.Millisecond})
	}()
	t.Cleanup(func() { cancel(); <-done })

	waitVersion(t, eng, "v1")
	write(bundleJSON(t, "v2", set("two")))
	waitVersion(t, eng, "v2")

	write(invalidBundle(t, "v3"))
	deadline := time.Now().Add(5 * time.Second)
	for testutil.ToFloat64(m.Reloads.WithLabelValues("file", "rejected")) < 1 {
		if time.Now().After(deadline) {
			t.Fatal("invalid file not rejected")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := eng.Snapshot().Version(); got != "v2" {
		t.Fatalf("serving %s after an invalid file, want v2", got)
	}
	if !strings.Contains(logs.String(), "bundle.json") {
		t.Errorf("the rejected file is not named in the logs:\n%s", logs.String())
	}
	write(bundleJSON(t, "v4", set("four")))
	waitVersion(t, eng, "v4")
}

func TestFileSourceDirectoryNeedsParser(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "a.yaml"), []byte("kind: x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var got []string
	fs := &FileSource{Path: dir, Parse: func(paths []string) (*policies.Bundle, error) {
		got = paths
		b, _, err := policies.NewBundle("dir", set("d"))
		return b, err
	}}
	u := fs.build(mustSnapshotFiles(t, fs))
	if u.Err != nil || u.Bundle.Version != "dir" || len(got) != 1 {
		t.Fatalf("directory update = %+v, parser saw %v", u, got)
	}
	fs.Parse = nil
	if u := fs.build(mustSnapshotFiles(t, fs)); u.Err == nil {
		t.Fatal("YAML accepted without a parser")
	}
}

func mustSnapshotFiles(t *testing.T, fs *FileSource) []file {
	t.Helper()
	files, _, err := fs.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	return files
}

var _ = io.Discard
