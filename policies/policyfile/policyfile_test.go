package policyfile

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshguard/meshguard/policies"
)

var exts = []string{".yaml", ".yml"}

func write(t *testing.T, path, data string, mtime time.Time) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path, mtime, mtime); err != nil {
		t.Fatal(err)
	}
}

func TestReadHashesWhatItReads(t *testing.T) {
	dir := t.TempDir()
	old := time.Now().Add(-time.Hour)
	write(t, filepath.Join(dir, "b.yaml"), "kind: B\n", old)
	write(t, filepath.Join(dir, "a.yml"), "kind: A\n", old.Add(time.Minute))
	write(t, filepath.Join(dir, "notes.txt"), "not policy\n", old)
	write(t, filepath.Join(dir, ".hidden.yaml"), "kind: H\n", old)
	if err := os.Mkdir(filepath.Join(dir, "..data"), 0o755); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(dir, "..data", "c.yaml"), "kind: C\n", old)

	s, err := Read([]string{dir, filepath.Join(dir, "a.yml")}, exts)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range s.Files {
		names = append(names, filepath.Base(f.Path)+"="+string(f.Data))
	}
	if got := strings.Join(names, ","); got != "a.yml=kind: A\n,b.yaml=kind: B\n" {
		t.Fatalf("files = %q", got)
	}
	if !s.Newest.Equal(old.Add(time.Minute).Truncate(time.Microsecond)) && !s.Newest.Equal(old.Add(time.Minute)) {
		t.Errorf("newest = %v", s.Newest)
	}
	again, _ := Read([]string{dir}, exts)
	if again.Hash != s.Hash {
		t.Error("same files, different hash")
	}
	write(t, filepath.Join(dir, "b.yaml"), "kind: X\n", old)
	changed, _ := Read([]string{dir}, exts)
	if changed.Hash == s.Hash {
		t.Error("a changed file keeps the hash")
	}
	if _, err := Read([]string{filepath.Join(dir, "missing")}, exts); err == nil {
		t.Error("a missing path read")
	}
}

func TestCheckRefusesEmptyAndCutFiles(t *testing.T) {
	for _, tc := range []struct {
		name, data string
		allowEmpty bool
		want       string // "" for no error
	}{
		{"whole", "kind: A\n", false, ""},
		{"zero bytes", "", false, "no policy document"},
		{"comments and markers only", "# nothing yet\n---\n\n...\n", false, "no policy document"},
		{"zero bytes allowed", "", true, ""},
		{"cut mid-line", "kind: A\nmetadata:\n  namespace: pro", false, "does not end with a line break"},
		{"cut mid-line even when empty sets are allowed", "kind: A\nnamespace: pro", true, "does not end with a line break"},
		{"json without a final line break", `{"format":"x"}`, false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := "p.yaml"
			if strings.HasPrefix(tc.data, "{") {
				name = "bundle.json"
			}
			s := &Snapshot{Files: []File{{Path: name, Data: []byte(tc.data)}}}
			err := s.Check(tc.allowEmpty)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("Check = %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("Check = %v, want %q", err, tc.want)
			}
		})
	}
}

func policy(ns, name string) policies.AuthorizationPolicy {
	return policies.AuthorizationPolicy{Metadata: policies.ObjectMeta{Namespace: ns, Name: name}}
}

func TestCheckCoverage(t *testing.T) {
	prev := &policies.Set{
		AuthorizationPolicies: []policies.AuthorizationPolicy{policy("shop", "allow"), policy("shop", "deny"), policy("pay", "allow")},
		Quarantines:           []policies.Quarantine{{Metadata: policies.ObjectMeta{Namespace: "istio-system", Name: "q"}}},
	}
	for _, tc := range []struct {
		name string
		next *policies.Set
		want string
	}{
		{"same namespaces", &policies.Set{AuthorizationPolicies: []policies.AuthorizationPolicy{policy("shop", "allow"), policy("pay", "x")},
			DefaultDenies: []policies.DefaultDeny{{Metadata: policies.ObjectMeta{Namespace: "istio-system", Name: "dd"}}}}, ""},
		{"a namespace more", &policies.Set{AuthorizationPolicies: []policies.AuthorizationPolicy{policy("shop", "a"), policy("pay", "b"), policy("new", "c"), policy("istio-system", "d")}}, ""},
		{"empty", &policies.Set{}, "empty"},
		{"a namespace lost", &policies.Set{AuthorizationPolicies: []policies.AuthorizationPolicy{policy("shop", "allow"), policy("istio-system", "x")}}, "namespace(s) pay"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckCoverage(prev, tc.next)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("CheckCoverage = %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("CheckCoverage = %v, want %q", err, tc.want)
			}
		})
	}
	if err := CheckCoverage(nil, &policies.Set{}); err != nil {
		t.Errorf("nothing served yet: %v", err)
	}
}

// TestWatcherSettles: content is handed out once no file changed for
// Settle, or once the same content was read Settle apart; and once only.
func TestWatcherSettles(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "p.yaml")
	now := time.Now()
	w := &Watcher{Paths: []string{dir}, Exts: exts, Settle: time.Second}

	write(t, path, "kind: A\n", now.Add(-time.Hour))
	if s, err := w.Next(now); err != nil || s == nil {
		t.Fatalf("old content not handed out at once: %v %v", s, err)
	}
	if s, _ := w.Next(now); s != nil {
		t.Fatal("the same content handed out twice")
	}

	// A write in progress: modified just now.
	write(t, path, "kind: A\nmeta", now)
	if s, _ := w.Next(now.Add(100 * time.Millisecond)); s != nil {
		t.Fatal("content modified 100ms ago handed out")
	}
	// The write completes; its mtime moves on.
	write(t, path, "kind: A\nmetadata: {}\n", now.Add(500*time.Millisecond))
	if s, _ := w.Next(now.Add(900 * time.Millisecond)); s != nil {
		t.Fatal("content modified 400ms ago handed out")
	}
	s, _ := w.Next(now.Add(1600 * time.Millisecond))
	if s == nil || string(s.Files[0].Data) != "kind: A\nmetadata: {}\n" {
		t.Fatalf("settled content not handed out: %v", s)
	}

	// A clock that says every file is new: the same bytes read a Settle
	// apart are settled too.
	future := now.Add(time.Hour)
	write(t, path, "kind: B\n", future)
	if s, _ := w.Next(now.Add(2 * time.Second)); s != nil {
		t.Fatal("first read of new content handed out")
	}
	if s, _ := w.Next(now.Add(3*time.Second + time.Millisecond)); s == nil {
		t.Fatal("content unchanged for Settle not handed out")
	}

	// Errors are reported once per distinct error; the content that
	// comes back afterwards is handed out again.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Next(now.Add(5 * time.Second)); err == nil {
		t.Fatal("missing directory not reported")
	}
	if _, err := w.Next(now.Add(6 * time.Second)); err != nil {
		t.Fatalf("the same error reported twice: %v", err)
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	write(t, path, "kind: B\n", now.Add(-time.Hour))
	if s, _ := w.Next(now.Add(7 * time.Second)); s == nil {
		t.Fatal("content back after an error not handed out")
	}
}

// TestWatcherIntermittentContentIsNotSettled: content seen again and again
// between reads of the settled content (a file rewritten in place, read
// half-written now and then) never counts as settled.
func TestWatcherIntermittentContentIsNotSettled(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "p.yaml")
	future := time.Now().Add(time.Hour) // mtimes never old enough: only the second rule counts
	w := &Watcher{Paths: []string{dir}, Exts: exts, Settle: time.Second}
	write(t, path, "kind: Whole\n", time.Now().Add(-time.Hour))
	now := time.Now()
	if s, _ := w.Next(now); s == nil {
		t.Fatal("whole content not handed out")
	}
	for i := range 40 {
		content := "kind: Whole\n"
		if i%3 == 0 {
			content = "kind: Half\n"
		}
		write(t, path, content, future)
		if s, _ := w.Next(now.Add(time.Duration(i+1) * 100 * time.Millisecond)); s != nil {
			t.Fatalf("read %d: %q handed out while the file keeps changing", i, s.Files[0].Data)
		}
	}
}

// FuzzCheck: any file content is judged without a panic, and content that
// passes holds a document and (YAML) ends with a line break.
func FuzzCheck(f *testing.F) {
	for _, s := range []string{"", "kind: A\n", "# c\n---\n", "kind: A", "\n\n...\n", "\xff\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data string) {
		s := &Snapshot{Files: []File{{Path: "p.yaml", Data: []byte(data)}}}
		if s.Check(false) == nil && (!hasDocument([]byte(data)) || !strings.HasSuffix(data, "\n")) {
			t.Fatalf("%q passed", data)
		}
	})
}
