package loader

import (
	"context"
	"encoding/hex"
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
	"github.com/meshguard/meshguard/policies/policyfile"
	"github.com/meshguard/meshguard/policies/source"
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

// yamlParse is the command's parser: the YAML reader over the bytes read.
func yamlParse(files []source.File) (*policies.Bundle, error) {
	set, diags := source.ParseFiles(files...)
	if err := diags.Err(); err != nil {
		return nil, err
	}
	b, _, err := policies.NewBundle("", set)
	return b, err
}

func TestFileSourceDirectoryNeedsParser(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "a.yaml"), []byte("kind: x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var got []source.File
	fs := &FileSource{Path: dir, Parse: func(files []source.File) (*policies.Bundle, error) {
		got = files
		b, _, err := policies.NewBundle("dir", set("d"))
		return b, err
	}}
	u := fs.build(mustRead(t, dir), nil)
	if u.Err != nil || u.Bundle.Version != "dir" || len(got) != 1 {
		t.Fatalf("directory update = %+v, parser saw %v", u, got)
	}
	fs.Parse = nil
	if u := fs.build(mustRead(t, dir), nil); u.Err == nil {
		t.Fatal("YAML accepted without a parser")
	}
}

func mustRead(t *testing.T, path string) *policyfile.Snapshot {
	t.Helper()
	s, err := policyfile.Read([]string{path}, []string{".yaml", ".yml", ".json"})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestFileSourceParsesTheBytesItHashed: the update is built from the bytes
// of the snapshot, whatever the file holds by the time it is parsed.
func TestFileSourceParsesTheBytesItHashed(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "p.yaml")
	if err := os.WriteFile(path, []byte(policyYAML("shop", "deny-admin", "DENY")), 0o644); err != nil {
		t.Fatal(err)
	}
	snap := mustRead(t, path)
	// The file changes between the read and the parse.
	if err := os.WriteFile(path, []byte(policyYAML("shop", "allow-all", "ALLOW")), 0o644); err != nil {
		t.Fatal(err)
	}
	u := (&FileSource{Path: path, Parse: yamlParse}).build(snap, nil)
	if u.Err != nil {
		t.Fatal(u.Err)
	}
	if got := u.Bundle.Set.AuthorizationPolicies[0].Metadata.Name; got != "deny-admin" {
		t.Fatalf("parsed %q, not the content hashed", got)
	}
	if !strings.Contains(u.Origin, hex.EncodeToString(snap.Hash[:6])) {
		t.Errorf("origin %q does not name the content hash", u.Origin)
	}
}

func policyYAML(ns, name, action string) string {
	return `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: ` + name + `
  namespace: ` + ns + `
spec:
  action: ` + action + `
  rules:
  - to:
    - operation:
        paths: ["/admin"]
`
}

// TestFileSourceRefusesEmptyAndPartialSets: a file emptied, cut off
// mid-line, or left without a namespace's documents is refused and the
// last good set keeps serving; with AllowEmpty an empty set applies.
func TestFileSourceRefusesEmptyAndPartialSets(t *testing.T) {
	whole := policyYAML("shop", "allow", "ALLOW") + "---\n" + policyYAML("shop", "deny", "DENY") + "---\n" + policyYAML("pay", "deny", "DENY")
	for _, tc := range []struct {
		name, data string
		allowEmpty bool
		applied    bool
	}{
		{"emptied", "", false, false},
		{"only a comment", "# being rewritten\n", false, false},
		{"cut mid-line", whole[:len(whole)-12], false, false},
		{"a namespace lost", policyYAML("shop", "allow", "ALLOW"), false, false},
		{"a document lost, the namespace kept", policyYAML("shop", "allow", "ALLOW") + "---\n" + policyYAML("pay", "deny", "DENY"), false, true},
		{"emptied, empty sets allowed", "", true, true},
		{"a namespace lost, empty sets allowed", policyYAML("shop", "allow", "ALLOW"), true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, eng, m, logs := newLoader(t)
			dir := t.TempDir()
			path := filepath.Join(dir, "policy.yaml")
			replace := func(data string) {
				tmp := filepath.Join(dir, ".tmp")
				if err := os.WriteFile(tmp, []byte(data), 0o644); err != nil {
					t.Fatal(err)
				}
				if err := os.Rename(tmp, path); err != nil {
					t.Fatal(err)
				}
			}
			replace(whole)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() {
				defer close(done)
				l.Run(ctx, &FileSource{Path: path, Interval: 5 * time.Millisecond, Parse: yamlParse, AllowEmpty: tc.allowEmpty})
			}()
			t.Cleanup(func() { cancel(); <-done })
			deadline := time.Now().Add(5 * time.Second)
			for eng.Snapshot() == nil && time.Now().Before(deadline) {
				time.Sleep(2 * time.Millisecond)
			}
			first := eng.Snapshot().Hash()
			replace(tc.data)
			outcome := func() (applied, rejected bool) {
				return eng.Snapshot().Hash() != first, testutil.ToFloat64(m.Reloads.WithLabelValues("file", "rejected")) > 0
			}
			for {
				a, r := outcome()
				if a || r || time.Now().After(deadline) {
					break
				}
				time.Sleep(2 * time.Millisecond)
			}
			a, r := outcome()
			if a != tc.applied || r == tc.applied {
				t.Fatalf("applied=%v rejected=%v, want applied=%v; logs:\n%s", a, r, tc.applied, logs.String())
			}
		})
	}
}

var _ = io.Discard
