package quarantine

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/wire"
)

// fakeSink records what the manager publishes; fail makes it refuse.
type fakeSink struct {
	sets []policies.Set
	fail error
}

func (f *fakeSink) SetSource(name string, set policies.Set) error {
	if name != SourceName {
		return errors.New("wrong source " + name)
	}
	if f.fail != nil {
		return f.fail
	}
	f.sets = append(f.sets, set)
	return nil
}

func (f *fakeSink) last() policies.Set { return f.sets[len(f.sets)-1] }

func newManager(t *testing.T, sink *fakeSink, now *time.Time, mod func(*Options)) *Manager {
	t.Helper()
	opts := Options{Sink: sink, Now: func() time.Time { return *now }}
	if mod != nil {
		mod(&opts)
	}
	m, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestAddExtendReleaseExpire(t *testing.T) {
	sink := &fakeSink{}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var audit bytes.Buffer
	m := newManager(t, sink, &now, func(o *Options) { o.Audit = &audit; o.MaxDuration = 2 * time.Hour })
	id := "spiffe://example.org/ns/a/sa/b"
	e, err := m.Add(AddRequest{Identity: id, Reason: "r", By: "alice", For: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if !e.ExpiresAt.Equal(now.Add(time.Hour)) {
		t.Fatalf("expires %s", e.ExpiresAt)
	}
	q := sink.last().Quarantines
	if len(q) != 1 || q[0].Spec.Identity != id || q[0].Spec.ExpiresAt != "2026-01-01T01:00:00Z" || q[0].Spec.CreatedBy != "alice" {
		t.Fatalf("published %+v", q)
	}
	if err := policies.Validate(&policies.Set{Quarantines: q}).Err(); err != nil {
		t.Fatalf("published quarantine does not validate: %v", err)
	}
	// Longer than the cap: capped; an extension never shortens.
	if e, _ = m.Add(AddRequest{Identity: id, Reason: "again", By: "bob", For: 10 * time.Hour}); !e.ExpiresAt.Equal(now.Add(2 * time.Hour)) {
		t.Fatalf("capped expiry %s", e.ExpiresAt)
	}
	if e, _ = m.Add(AddRequest{Identity: id, Reason: "short", By: "bob", For: time.Minute}); !e.ExpiresAt.Equal(now.Add(2 * time.Hour)) {
		t.Fatalf("extension shortened the quarantine to %s", e.ExpiresAt)
	}
	now = now.Add(2 * time.Hour)
	if err := m.Sweep(); err != nil {
		t.Fatal(err)
	}
	if len(m.List()) != 0 || len(sink.last().Quarantines) != 0 {
		t.Fatal("expired quarantine kept")
	}
	if err := m.Release(id, "carol", "x"); err == nil {
		t.Fatal("released an identity that is not quarantined")
	}
	var actions []string
	for _, r := range m.Audit() {
		actions = append(actions, r.Action)
	}
	if strings.Join(actions, ",") != "add,extend,extend,expire" {
		t.Fatalf("audit actions %v", actions)
	}
	if got := strings.Count(audit.String(), "\n"); got != 4 {
		t.Fatalf("audit file lines %d", got)
	}
}

func TestRejectedPublishLeavesListUnchanged(t *testing.T) {
	sink := &fakeSink{fail: errors.New("store says no")}
	now := time.Now()
	m := newManager(t, sink, &now, nil)
	if _, err := m.Add(AddRequest{Identity: "spiffe://example.org/x", Reason: "r", By: "a"}); err == nil {
		t.Fatal("add succeeded although the store refused")
	}
	if len(m.List()) != 0 || len(m.Audit()) != 0 {
		t.Fatal("a refused quarantine is listed or audited")
	}
}

func TestHandleEvents(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	profile := policies.AnomalyProfile{
		Metadata: policies.ObjectMeta{Name: "p", Namespace: "istio-system"},
		Spec:     policies.AnomalyProfileSpec{Responses: map[string]string{"lateral": "quarantine", "rate": "log", "errors": "block"}, QuarantineFor: "5m"},
	}
	protected := spiffeid.RequireFromPath(td, "/ns/meshguard/sa/authz")
	tests := []struct {
		name   string
		events []wire.Event
		want   []string
	}{
		{"profile says quarantine", []wire.Event{{Kind: wire.EventAnomaly, Detector: "lateral", Profile: "p", Source: "spiffe://example.org/a"}}, []string{"spiffe://example.org/a"}},
		{"profile by namespace/name", []wire.Event{{Kind: wire.EventAnomaly, Detector: "lateral", Profile: "istio-system/p", Source: "spiffe://example.org/a"}}, []string{"spiffe://example.org/a"}},
		{"profile overrides the event's response", []wire.Event{{Kind: wire.EventAnomaly, Detector: "rate", Profile: "p", Response: "quarantine", Source: "spiffe://example.org/a"}}, nil},
		{"no profile: the event's response", []wire.Event{{Kind: wire.EventAnomaly, Detector: "rate", Response: "quarantine", Source: "spiffe://example.org/a"}}, []string{"spiffe://example.org/a"}},
		{"invalid source", []wire.Event{{Kind: wire.EventAnomaly, Detector: "lateral", Profile: "p", Source: "web"}}, nil},
		{"protected identity", []wire.Event{{Kind: wire.EventAnomaly, Detector: "lateral", Profile: "p", Source: protected.String()}}, nil},
		{"edge events do not quarantine", []wire.Event{{Kind: wire.EventEdge, Source: "spiffe://example.org/a", Response: "quarantine"}}, nil},
		{"threshold of block events", []wire.Event{
			{Kind: wire.EventAnomaly, Detector: "errors", Profile: "p", Source: "spiffe://example.org/b"},
			{Kind: wire.EventAnomaly, Detector: "errors", Profile: "p", Source: "spiffe://example.org/b"},
			{Kind: wire.EventAnomaly, Detector: "errors", Profile: "p", Source: "spiffe://example.org/c"},
			{Kind: wire.EventAnomaly, Detector: "errors", Profile: "p", Source: "spiffe://example.org/b"},
		}, []string{"spiffe://example.org/b"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sink := &fakeSink{}
			now := time.Now()
			m := newManager(t, sink, &now, func(o *Options) {
				o.Profiles = func() []policies.AnomalyProfile { return []policies.AnomalyProfile{profile} }
				o.Protected = []spiffeid.ID{protected}
				o.Threshold = Threshold{Events: 3, Window: time.Minute}
			})
			m.HandleEvents("spiffe://example.org/reporter", tt.events)
			var got []string
			for _, e := range m.List() {
				got = append(got, e.Identity)
				if e.By != "spiffe://example.org/reporter" {
					t.Errorf("by = %q", e.By)
				}
			}
			if strings.Join(got, ",") != strings.Join(tt.want, ",") {
				t.Fatalf("quarantined %v, want %v", got, tt.want)
			}
		})
	}
}

func TestMaxActive(t *testing.T) {
	sink := &fakeSink{}
	now := time.Now()
	m := newManager(t, sink, &now, func(o *Options) { o.MaxActive = 2 })
	for i, id := range []string{"spiffe://example.org/a", "spiffe://example.org/b", "spiffe://example.org/c"} {
		_, err := m.Add(AddRequest{Identity: id, Reason: "r", By: "x"})
		if (err != nil) != (i == 2) {
			t.Fatalf("add %d: %v", i, err)
		}
	}
}
