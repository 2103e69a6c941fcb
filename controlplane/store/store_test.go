package store

import (
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshguard/meshguard/policies"
)

func quarantineSet(names ...string) policies.Set {
	var s policies.Set
	for _, n := range names {
		s.Quarantines = append(s.Quarantines, policies.Quarantine{
			APIVersion: policies.APIVersionMeshguard,
			Kind:       policies.KindQuarantine,
			Metadata:   policies.ObjectMeta{Name: n, Namespace: "istio-system"},
			Spec:       policies.QuarantineSpec{Identity: "spiffe://example.org/ns/a/sa/" + n},
		})
	}
	return s
}

func authzSet(names ...string) policies.Set {
	var s policies.Set
	for _, n := range names {
		s.AuthorizationPolicies = append(s.AuthorizationPolicies, policies.AuthorizationPolicy{
			APIVersion: policies.APIVersionIstioV1,
			Kind:       policies.KindAuthorizationPolicy,
			Metadata:   policies.ObjectMeta{Name: n, Namespace: "default"},
			Spec: policies.AuthorizationPolicySpec{Rules: []policies.Rule{{From: []policies.RuleFrom{{
				Source: policies.Source{Principals: []string{"cluster.local/ns/default/sa/" + n}},
			}}}}},
		})
	}
	return s
}

type recorder struct {
	mu  sync.Mutex
	got []*policies.Bundle
}

func (r *recorder) add(b *policies.Bundle) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, b)
}

func (r *recorder) versions() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, len(r.got))
	for i, b := range r.got {
		out[i] = b.Version
	}
	return out
}

func newStore(t *testing.T, opts Options) *Store {
	t.Helper()
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestStoreMergesSourcesAndPublishes(t *testing.T) {
	s := newStore(t, Options{})
	if s.Bundle() != nil {
		t.Fatal("new store has a bundle")
	}
	var rec recorder
	cancel := s.Subscribe(rec.add)
	t.Cleanup(cancel)

	if err := s.SetSource("files", authzSet("a", "b")); err != nil {
		t.Fatal(err)
	}
	if err := s.SetSource("quarantine", quarantineSet("q1")); err != nil {
		t.Fatal(err)
	}
	b := s.Bundle()
	if got := len(b.Set.AuthorizationPolicies); got != 2 {
		t.Fatalf("authorization policies = %d, want 2", got)
	}
	if got := len(b.Set.Quarantines); got != 1 {
		t.Fatalf("quarantines = %d, want 1", got)
	}
	if !strings.HasPrefix(b.Version, "2-") {
		t.Fatalf("version = %q, want generation 2", b.Version)
	}
	// The bundle the store publishes must round-trip through the decoder every
	// enforcement point uses.
	data, err := b.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := policies.DecodeBundle(data); err != nil {
		t.Fatalf("published bundle does not decode: %v", err)
	}

	// Replacing a source replaces its documents, not appends.
	if err := s.SetSource("quarantine", quarantineSet()); err != nil {
		t.Fatal(err)
	}
	if got := len(s.Bundle().Set.Quarantines); got != 0 {
		t.Fatalf("quarantines after replace = %d, want 0", got)
	}
	if got := rec.versions(); len(got) != 3 {
		t.Fatalf("subscriber saw %v, want 3 versions", got)
	}
}

func TestStoreUnchangedContentIsNotRepublished(t *testing.T) {
	s := newStore(t, Options{})
	var rec recorder
	t.Cleanup(s.Subscribe(rec.add))
	for range 3 {
		if err := s.SetSource("files", authzSet("a")); err != nil {
			t.Fatal(err)
		}
	}
	if got := rec.versions(); len(got) != 1 {
		t.Fatalf("published %v, want one version", got)
	}
}

func TestStoreVersionsIncreaseWhenContentReturns(t *testing.T) {
	s := newStore(t, Options{})
	steps := []policies.Set{authzSet("a"), authzSet("a", "b"), authzSet("a")}
	var versions []string
	for _, set := range steps {
		if err := s.SetSource("files", set); err != nil {
			t.Fatal(err)
		}
		versions = append(versions, s.Bundle().Version)
	}
	if versions[0] == versions[2] {
		t.Fatalf("returning to earlier content reused version %q", versions[0])
	}
	if s.Bundle().Hash == "" {
		t.Fatal("bundle has no hash")
	}
}

func TestStoreRejectsAndKeepsLastGood(t *testing.T) {
	boom := errors.New("does not compile")
	check := func(b *policies.Bundle) error {
		for _, p := range b.Set.AuthorizationPolicies {
			if p.Metadata.Name == "bad" {
				return boom
			}
		}
		return nil
	}
	tests := []struct {
		name    string
		setup   func(*Store) error
		update  func(*Store) error
		wantErr string
	}{
		{
			name:    "check fails",
			update:  func(s *Store) error { return s.SetSource("files", authzSet("a", "bad")) },
			wantErr: "does not compile",
		},
		{
			name:    "same object from two sources",
			update:  func(s *Store) error { return s.SetSource("istio", authzSet("a")) },
			wantErr: `AuthorizationPolicy/default/a is defined by sources "files" and "istio"`,
		},
		{
			name: "conflicting mesh settings",
			setup: func(s *Store) error {
				return s.SetSource("settings", policies.Set{Settings: policies.MeshSettingsSpec{TrustDomain: "a.org"}})
			},
			update: func(s *Store) error {
				return s.SetSource("istio", policies.Set{Settings: policies.MeshSettingsSpec{TrustDomain: "b.org"}})
			},
			wantErr: "different MeshSettings",
		},
		{
			name:    "empty source name",
			update:  func(s *Store) error { return s.SetSource("", authzSet("z")) },
			wantErr: "source name",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStore(t, Options{Check: check})
			if err := s.SetSource("files", authzSet("a")); err != nil {
				t.Fatal(err)
			}
			if tt.setup != nil {
				if err := tt.setup(s); err != nil {
					t.Fatal(err)
				}
			}
			good := s.Bundle()
			goodFiles, _ := s.Source("files")
			var rec recorder
			t.Cleanup(s.Subscribe(rec.add))

			err := tt.update(s)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want it to contain %q", err, tt.wantErr)
			}
			if s.Bundle() != good {
				t.Fatal("a rejected update replaced the bundle")
			}
			if files, _ := s.Source("files"); len(files.AuthorizationPolicies) != len(goodFiles.AuthorizationPolicies) {
				t.Fatal("a rejected update changed the source's documents")
			}
			if got := rec.versions(); len(got) != 1 || got[0] != good.Version {
				t.Fatalf("subscriber saw %v, want only the last good %s", got, good.Version)
			}
		})
	}
}

func TestStoreRejectedErrorCarriesDiagnostics(t *testing.T) {
	diags := policies.Diagnostics{
		{Severity: policies.SeverityError, Code: policies.CodeInvalidPrincipal, Message: "one"},
		{Severity: policies.SeverityError, Code: policies.CodeInvalidPath, Message: "two"},
	}
	s := newStore(t, Options{Check: func(*policies.Bundle) error { return diags.Err() }})
	err := s.SetSource("files", authzSet("a"))
	var rej *RejectedError
	if !errors.As(err, &rej) {
		t.Fatalf("err = %v, want *RejectedError", err)
	}
	if len(rej.Diagnostics) != 2 {
		t.Fatalf("diagnostics = %v, want both errors", rej.Diagnostics)
	}
	if s.Bundle() != nil {
		t.Fatal("a store with no good bundle must keep none")
	}
}

func TestStoreRemoveSource(t *testing.T) {
	s := newStore(t, Options{})
	if err := s.SetSource("files", authzSet("a")); err != nil {
		t.Fatal(err)
	}
	if err := s.SetSource("istio", authzSet("b")); err != nil {
		t.Fatal(err)
	}
	if err := s.RemoveSource("istio"); err != nil {
		t.Fatal(err)
	}
	if got := len(s.Bundle().Set.AuthorizationPolicies); got != 1 {
		t.Fatalf("policies = %d, want 1", got)
	}
	if err := s.RemoveSource("never-set"); err != nil {
		t.Fatal(err)
	}
}

func TestStoreMergeOrderIsDeterministic(t *testing.T) {
	a := newStore(t, Options{})
	b := newStore(t, Options{})
	for _, step := range []struct {
		s    *Store
		name string
		set  policies.Set
	}{
		{a, "x", authzSet("x1")}, {a, "y", authzSet("y1")},
		{b, "y", authzSet("y1")}, {b, "x", authzSet("x1")},
	} {
		if err := step.s.SetSource(step.name, step.set); err != nil {
			t.Fatal(err)
		}
	}
	if a.Bundle().Hash != b.Bundle().Hash {
		t.Fatal("the same sources set in a different order gave a different bundle")
	}
}

func TestStoreMetrics(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	s := newStore(t, Options{Registerer: reg})
	if err := s.SetSource("files", authzSet("a")); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]bool{}
	for _, mf := range mfs {
		found[mf.GetName()] = true
	}
	for _, n := range []string{"meshguard_controlplane_bundle_builds_total", "meshguard_controlplane_bundle_documents"} {
		if !found[n] {
			t.Errorf("metric %s not registered", n)
		}
	}
}

func TestStoreConcurrentSources(t *testing.T) {
	s := newStore(t, Options{})
	var rec recorder
	t.Cleanup(s.Subscribe(rec.add))
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := string(rune('a' + i))
			for j := range 10 {
				_ = s.SetSource(name, authzSet(name+strings.Repeat("x", j%3)))
			}
		}()
	}
	wg.Wait()
	if got := len(s.Bundle().Set.AuthorizationPolicies); got != 8 {
		t.Fatalf("policies = %d, want 8", got)
	}
	vs := rec.versions()
	if vs[len(vs)-1] != s.Bundle().Version {
		t.Fatal("the last published version is not the one served")
	}
}

// With the real validator: a set with errors is rejected with every error,
// attributed to its source, and the last good bundle keeps serving.
func TestStoreRejectsInvalidPolicies(t *testing.T) {
	s := newStore(t, Options{Check: func(b *policies.Bundle) error { _, err := policies.Compile(b); return err }})
	if err := s.SetSource("files", authzSet("a")); err != nil {
		t.Fatal(err)
	}
	good := s.Bundle()
	bad := authzSet("b", "c")
	bad.AuthorizationPolicies[0].Spec.Action = "PERMIT"
	bad.AuthorizationPolicies[1].Spec.Rules[0].From[0].Source.IPBlocks = []string{"10.0.0.0/99"}
	err := s.SetSource("istio", bad)
	var rej *RejectedError
	if !errors.As(err, &rej) {
		t.Fatalf("err = %v, want *RejectedError", err)
	}
	if rej.Source != "istio" || len(rej.Diagnostics) < 2 {
		t.Fatalf("rejection %q with %d diagnostics, want source istio and both errors: %v", rej.Source, len(rej.Diagnostics), err)
	}
	if s.Bundle() != good {
		t.Fatal("an invalid source replaced the bundle")
	}
	if _, ok := s.Source("istio"); ok {
		t.Fatal("the rejected source was kept")
	}
}

// TestObserver: every published bundle and every rejected update is
// reported, unchanged content is not.
func TestObserver(t *testing.T) {
	var changes []Change
	s, err := New(Options{Observer: func(c Change) { changes = append(changes, c) }})
	if err != nil {
		t.Fatal(err)
	}
	dd := policies.Set{DefaultDenies: []policies.DefaultDeny{{APIVersion: policies.APIVersionMeshguard, Kind: policies.KindDefaultDeny,
		Metadata: policies.ObjectMeta{Name: "all", Namespace: "shop"}}}}
	if err := s.SetSource("files", dd); err != nil {
		t.Fatal(err)
	}
	if err := s.SetSource("files", dd); err != nil { // unchanged
		t.Fatal(err)
	}
	bad := dd
	bad.DefaultDenies = append([]policies.DefaultDeny{}, dd.DefaultDenies...)
	bad.DefaultDenies[0].Metadata.Name = ""
	if err := s.SetSource("files", bad); err == nil {
		t.Fatal("bad set accepted")
	}
	if len(changes) != 2 || changes[0].Source != "files" || changes[0].Version != s.Bundle().Version || changes[0].Documents != 1 ||
		changes[1].Err == nil || changes[1].Version != "" {
		t.Fatalf("changes %+v", changes)
	}
}
