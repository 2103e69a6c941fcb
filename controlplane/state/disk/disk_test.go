package disk_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshguard/meshguard/controlplane/state"
	"github.com/meshguard/meshguard/controlplane/state/disk"
	"github.com/meshguard/meshguard/controlplane/state/statetest"
)

func open(t *testing.T, dir string) *disk.Store {
	t.Helper()
	st, err := disk.Open(dir, disk.Options{LockTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestContract(t *testing.T) {
	statetest.Run(t, func(t *testing.T, replicas int) []state.Store {
		st := open(t, t.TempDir())
		t.Cleanup(func() { _ = st.Close() })
		out := make([]state.Store, replicas)
		for i := range out {
			out[i] = st
		}
		return out
	})
}

// TestReopen: what was written is there after the database is closed and
// opened again, the way a restarted control plane opens it.
func TestReopen(t *testing.T) {
	dir := t.TempDir()
	st := open(t, dir)
	ctx := context.Background()
	id := "spiffe://example.org/ns/shop/sa/web"
	if _, err := st.UpdateQuarantine(ctx, id, func(*state.Quarantine) (*state.Quarantine, error) { return statetest.Record(id), nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := st.UpdateBaseline(ctx, "orders", func(*state.Baseline) (*state.Baseline, error) {
		return &state.Baseline{Destination: "orders", Edges: []state.Edge{{Source: id, Count: 2}}}, nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	st = open(t, dir)
	defer st.Close()
	qs, bs := st.Quarantines(), st.Baselines()
	if len(qs) != 1 || qs[0].Identity != id || !qs[0].ExpiresAt.Equal(statetest.Record(id).ExpiresAt) || len(qs[0].History) != 1 {
		t.Fatalf("quarantines after reopen: %+v", qs)
	}
	if len(bs) != 1 || bs[0].Edges[0].Count != 2 {
		t.Fatalf("baselines after reopen: %+v", bs)
	}
}

// TestOneProcessPerDirectory: a second opener is refused while the first
// holds the database.
func TestOneProcessPerDirectory(t *testing.T) {
	dir := t.TempDir()
	st := open(t, dir)
	defer st.Close()
	if _, err := disk.Open(dir, disk.Options{LockTimeout: 50 * time.Millisecond}); err == nil || !strings.Contains(err.Error(), "locked by another process") {
		t.Fatalf("second open: %v", err)
	}
}

func TestOpenErrors(t *testing.T) {
	if _, err := disk.Open("", disk.Options{}); err == nil {
		t.Error("empty directory accepted")
	}
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := disk.Open(file, disk.Options{}); err == nil {
		t.Error("a file accepted as the state directory")
	}
	// Not a bbolt database.
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, disk.FileName), []byte(strings.Repeat("not a database ", 512)), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := disk.Open(dir, disk.Options{}); err == nil {
		t.Error("a corrupt database file opened")
	}
}

func TestImport(t *testing.T) {
	dir := t.TempDir()
	st := open(t, dir)
	qs := []*state.Quarantine{statetest.Record("spiffe://example.org/a"), statetest.Record("spiffe://example.org/b")}
	bs := []*state.Baseline{{Destination: "orders", Edges: []state.Edge{{Source: "spiffe://example.org/a", Count: 1}}}}
	bad := statetest.Record("spiffe://example.org/c")
	bad.Phase = "Unknown"
	if err := st.Import(append(qs, bad), bs); err == nil || !strings.Contains(err.Error(), "spiffe://example.org/c") {
		t.Fatalf("import with an invalid record: %v", err)
	}
	if len(st.Quarantines()) != 0 {
		t.Fatal("a failed import wrote records")
	}
	if err := st.Import(qs, bs); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	st = open(t, dir)
	defer st.Close()
	if len(st.Quarantines()) != 2 || len(st.Baselines()) != 1 {
		t.Fatalf("after import and reopen: %d quarantines, %d baselines", len(st.Quarantines()), len(st.Baselines()))
	}
}
