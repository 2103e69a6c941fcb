// Package quarantine is the control plane's response to detections: it turns
// anomaly events into mesh-wide quarantines of the offending SPIFFE identity,
// expires and releases them, and keeps an audit trail of every change.
//
// Quarantines are policies.Quarantine documents held as one source of the
// policy store, so a quarantine is a new bundle version that reaches every
// wasm filter (ECDS) and every authz server (ADS) like any policy change.
package quarantine

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/wire"
)

// SourceName is the policy store source the manager writes.
const SourceName = "quarantine"

// Responses an anomaly profile can configure.
const (
	ResponseLog        = "log"
	ResponseCount      = "count"
	ResponseRateLimit  = "rate-limit"
	ResponseBlock      = "block"
	ResponseQuarantine = "quarantine"
)

// Sink receives the quarantine documents: the policy store.
type Sink interface {
	SetSource(name string, set policies.Set) error
}

// Profiles returns the anomaly profiles of the bundle being served.
type Profiles func() []policies.AnomalyProfile

// Threshold quarantines an identity after Events anomaly events whose
// response is block or stronger within Window, even when no single event
// asks for a quarantine. Zero Events disables it.
type Threshold struct {
	Events int
	Window time.Duration
}

// Options configure a Manager.
type Options struct {
	Sink     Sink
	Profiles Profiles
	// Namespace of the Quarantine documents (the mesh root namespace).
	Namespace string
	// DefaultDuration of a quarantine when the profile sets none.
	DefaultDuration time.Duration
	// MaxDuration caps every quarantine, manual ones included (0: 7 days).
	MaxDuration time.Duration
	Threshold   Threshold
	// Protected identities are never quarantined automatically (the
	// control plane, authz servers, ingress gateways).
	Protected []spiffeid.ID
	// Audit receives one JSON line per change; nil keeps memory only.
	Audit io.Writer
	// AuditKeep bounds the in-memory audit trail (default 1000).
	AuditKeep  int
	Now        func() time.Time
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	// MaxActive bounds how many identities can be quarantined at once, so a
	// flood of events cannot grow the bundle without limit (default 10000).
	MaxActive int
}

// Entry is one quarantined identity.
type Entry struct {
	Identity  string    `json:"identity"`
	Reason    string    `json:"reason"`
	By        string    `json:"by"`
	Profile   string    `json:"profile,omitempty"`
	Detector  string    `json:"detector,omitempty"`
	CreatedAt time.Time `json:"createdAt"`
	ExpiresAt time.Time `json:"expiresAt,omitzero"`
}

// AuditRecord is one change of the quarantine list.
type AuditRecord struct {
	Time     time.Time `json:"time"`
	Action   string    `json:"action"` // add, release, expire, extend
	Identity string    `json:"identity"`
	By       string    `json:"by"`
	Reason   string    `json:"reason,omitempty"`
	Expires  time.Time `json:"expiresAt,omitzero"`
}

// Manager holds the quarantine list. It is safe for concurrent use.
type Manager struct {
	opts Options
	log  *slog.Logger

	mu      sync.Mutex
	entries map[string]Entry
	hits    map[string][]time.Time // identity → recent block-or-worse events
	audit   []AuditRecord

	quarantines *prometheus.CounterVec
	active      prometheus.Gauge
	events      *prometheus.CounterVec
}

// New returns a manager with an empty list. It publishes nothing until the
// first change.
func New(opts Options) (*Manager, error) {
	if opts.Sink == nil {
		return nil, errors.New("quarantine: a sink is required")
	}
	if opts.Namespace == "" {
		opts.Namespace = "istio-system"
	}
	if opts.DefaultDuration <= 0 {
		opts.DefaultDuration = 15 * time.Minute
	}
	if opts.MaxDuration <= 0 {
		opts.MaxDuration = 7 * 24 * time.Hour
	}
	if opts.AuditKeep <= 0 {
		opts.AuditKeep = 1000
	}
	if opts.MaxActive <= 0 {
		opts.MaxActive = 10000
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Profiles == nil {
		opts.Profiles = func() []policies.AnomalyProfile { return nil }
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &Manager{
		opts:    opts,
		log:     log,
		entries: map[string]Entry{},
		hits:    map[string][]time.Time{},
		quarantines: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshguard_controlplane_quarantine_changes_total",
			Help: "Quarantine list changes by action (add, release, expire, extend).",
		}, []string{"action"}),
		active: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meshguard_controlplane_quarantined_identities",
			Help: "Identities quarantined now.",
		}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshguard_controlplane_anomaly_events_total",
			Help: "Anomaly events handled by the quarantine manager, by effective response.",
		}, []string{"response"}),
	}
	if opts.Registerer != nil {
		for _, c := range []prometheus.Collector{m.quarantines, m.active, m.events} {
			if err := opts.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("quarantine: register metrics: %w", err)
			}
		}
	}
	return m, nil
}

// AddRequest is a manual quarantine.
type AddRequest struct {
	Identity string
	Reason   string
	By       string
	// For is how long; zero means the default duration.
	For time.Duration
}

// Add quarantines an identity (or extends its quarantine) and publishes.
func (m *Manager) Add(r AddRequest) (Entry, error) {
	id, err := spiffeid.FromString(r.Identity)
	if err != nil {
		return Entry{}, fmt.Errorf("quarantine: identity %q: %w", r.Identity, err)
	}
	if r.By == "" {
		return Entry{}, errors.New("quarantine: who asks for the quarantine is required")
	}
	if r.For < 0 {
		return Entry{}, errors.New("quarantine: negative duration")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.add(id, r.Reason, r.By, "", "", r.For)
}

// add must be called with m.mu held.
func (m *Manager) add(id spiffeid.ID, reason, by, profile, detector string, d time.Duration) (Entry, error) {
	if d <= 0 {
		d = m.opts.DefaultDuration
	}
	if d > m.opts.MaxDuration {
		d = m.opts.MaxDuration
	}
	now := m.opts.Now().UTC()
	e := Entry{
		Identity: id.String(), Reason: reason, By: by, Profile: profile, Detector: detector,
		CreatedAt: now, ExpiresAt: now.Add(d).Truncate(time.Second),
	}
	prev, exists := m.entries[e.Identity]
	if !exists && len(m.entries) >= m.opts.MaxActive {
		return Entry{}, fmt.Errorf("quarantine: %d identities already quarantined (the maximum)", len(m.entries))
	}
	action := "add"
	if exists {
		action = "extend"
		e.CreatedAt = prev.CreatedAt
		if prev.ExpiresAt.After(e.ExpiresAt) {
			e.ExpiresAt = prev.ExpiresAt
		}
	}
	m.entries[e.Identity] = e
	if err := m.publish(); err != nil {
		if exists {
			m.entries[e.Identity] = prev
		} else {
			delete(m.entries, e.Identity)
		}
		return Entry{}, err
	}
	m.record(AuditRecord{Time: now, Action: action, Identity: e.Identity, By: by, Reason: reason, Expires: e.ExpiresAt})
	m.log.Warn("identity quarantined", "identity", e.Identity, "by", by, "reason", reason, "expires_at", e.ExpiresAt, "action", action)
	return e, nil
}

// Release lifts a quarantine and publishes. Releasing an identity that is
// not quarantined is an error.
func (m *Manager) Release(identity, by, reason string) error {
	if by == "" {
		return errors.New("quarantine: who releases is required")
	}
	id, err := spiffeid.FromString(identity)
	if err != nil {
		return fmt.Errorf("quarantine: identity %q: %w", identity, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	prev, ok := m.entries[id.String()]
	if !ok {
		return fmt.Errorf("quarantine: %s is not quarantined", id)
	}
	delete(m.entries, id.String())
	if err := m.publish(); err != nil {
		m.entries[id.String()] = prev
		return err
	}
	delete(m.hits, id.String())
	m.record(AuditRecord{Time: m.opts.Now().UTC(), Action: "release", Identity: id.String(), By: by, Reason: reason})
	m.log.Warn("quarantine released", "identity", id.String(), "by", by, "reason", reason)
	return nil
}

// List returns the quarantined identities, sorted.
func (m *Manager) List() []Entry {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Entry, 0, len(m.entries))
	for _, e := range m.entries {
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Identity < out[j].Identity })
	return out
}

// Audit returns the in-memory audit trail, oldest first.
func (m *Manager) Audit() []AuditRecord {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]AuditRecord(nil), m.audit...)
}

// Sweep removes expired quarantines and publishes when any expired.
func (m *Manager) Sweep() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.opts.Now()
	var expired []Entry
	for k, e := range m.entries {
		if !e.ExpiresAt.IsZero() && !now.Before(e.ExpiresAt) {
			expired = append(expired, e)
			delete(m.entries, k)
		}
	}
	if len(expired) == 0 {
		return nil
	}
	if err := m.publish(); err != nil {
		for _, e := range expired {
			m.entries[e.Identity] = e
		}
		return err
	}
	for _, e := range expired {
		m.record(AuditRecord{Time: now.UTC(), Action: "expire", Identity: e.Identity, By: "meshguard/expiry", Reason: e.Reason})
		m.log.Info("quarantine expired", "identity", e.Identity)
	}
	return nil
}

// Run sweeps every interval until ctx is done.
func (m *Manager) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := m.Sweep(); err != nil {
				m.log.Error("quarantine sweep", "error", err)
			}
		}
	}
}

// HandleEvents applies the response of every anomaly event of a batch. The
// response is the one the named anomaly profile configures for the detector;
// the event's own response is used only when the bundle has no such
// profile. reporter is the authenticated identity of the sender.
func (m *Manager) HandleEvents(reporter string, events []wire.Event) {
	profiles := m.opts.Profiles()
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, ev := range events {
		if ev.Kind != wire.EventAnomaly {
			continue
		}
		resp, dur := m.response(profiles, ev)
		m.events.WithLabelValues(responseLabel(resp)).Inc()
		id, err := spiffeid.FromString(ev.Source)
		if err != nil {
			m.log.Warn("anomaly event without a valid source identity", "reporter", reporter, "source", ev.Source)
			continue
		}
		if m.protected(id) {
			if resp == ResponseQuarantine || resp == ResponseBlock {
				m.log.Warn("anomaly on a protected identity: not quarantined", "identity", id.String(), "detector", ev.Detector, "reporter", reporter)
			}
			continue
		}
		reason := fmt.Sprintf("%s anomaly (%s) reported by %s", ev.Detector, ev.Detail, reporter)
		switch {
		case resp == ResponseQuarantine:
			if _, err := m.add(id, reason, reporter, ev.Profile, ev.Detector, dur); err != nil {
				m.log.Error("quarantine", "identity", id.String(), "error", err)
			}
		case resp == ResponseBlock && m.opts.Threshold.Events > 0:
			if m.countHit(id.String()) >= m.opts.Threshold.Events {
				reason = fmt.Sprintf("%d anomaly events within %s, last: %s", m.opts.Threshold.Events, m.opts.Threshold.Window, reason)
				if _, err := m.add(id, reason, reporter, ev.Profile, ev.Detector, dur); err != nil {
					m.log.Error("quarantine", "identity", id.String(), "error", err)
				}
				delete(m.hits, id.String())
			}
		}
	}
}

func (m *Manager) countHit(id string) int {
	now := m.opts.Now()
	cutoff := now.Add(-m.opts.Threshold.Window)
	hs := m.hits[id][:0]
	for _, t := range m.hits[id] {
		if t.After(cutoff) {
			hs = append(hs, t)
		}
	}
	hs = append(hs, now)
	if len(hs) > m.opts.Threshold.Events {
		hs = hs[len(hs)-m.opts.Threshold.Events:]
	}
	m.hits[id] = hs
	// Bound the tracking map itself.
	if len(m.hits) > 4*m.opts.MaxActive {
		for k := range m.hits {
			delete(m.hits, k)
			if len(m.hits) <= 2*m.opts.MaxActive {
				break
			}
		}
	}
	return len(hs)
}

func (m *Manager) response(profiles []policies.AnomalyProfile, ev wire.Event) (string, time.Duration) {
	for _, p := range profiles {
		if ev.Profile == "" || (ev.Profile != p.Metadata.Name && ev.Profile != p.Metadata.Namespace+"/"+p.Metadata.Name) {
			continue
		}
		var d time.Duration
		if p.Spec.QuarantineFor != "" {
			d, _ = time.ParseDuration(p.Spec.QuarantineFor) // validated by policies
		}
		return p.Spec.Responses[ev.Detector], d
	}
	return ev.Response, 0
}

func responseLabel(r string) string {
	switch r {
	case ResponseLog, ResponseCount, ResponseRateLimit, ResponseBlock, ResponseQuarantine:
		return r
	case "":
		return "none"
	}
	return "other"
}

func (m *Manager) protected(id spiffeid.ID) bool {
	for _, p := range m.opts.Protected {
		if p == id {
			return true
		}
	}
	return false
}

// publish hands the current list to the sink; must be called with m.mu held.
func (m *Manager) publish() error {
	var set policies.Set
	keys := make([]string, 0, len(m.entries))
	for k := range m.entries {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		e := m.entries[k]
		spec := policies.QuarantineSpec{Identity: e.Identity, Reason: truncate(e.Reason, 256), CreatedBy: truncate(e.By, 256)}
		if !e.ExpiresAt.IsZero() {
			spec.ExpiresAt = e.ExpiresAt.UTC().Format(time.RFC3339)
		}
		set.Quarantines = append(set.Quarantines, policies.Quarantine{
			APIVersion: policies.APIVersionMeshguard,
			Kind:       policies.KindQuarantine,
			Metadata:   policies.ObjectMeta{Name: documentName(e.Identity), Namespace: m.opts.Namespace},
			Spec:       spec,
		})
	}
	if err := m.opts.Sink.SetSource(SourceName, set); err != nil {
		return fmt.Errorf("quarantine: publish: %w", err)
	}
	m.active.Set(float64(len(m.entries)))
	return nil
}

// documentName is a DNS-label name derived from the identity.
func documentName(id string) string {
	sum := sha256.Sum256([]byte(id))
	return "quarantine-" + hex.EncodeToString(sum[:8])
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// record must be called with m.mu held.
func (m *Manager) record(r AuditRecord) {
	m.quarantines.WithLabelValues(r.Action).Inc()
	m.audit = append(m.audit, r)
	if len(m.audit) > m.opts.AuditKeep {
		m.audit = append([]AuditRecord(nil), m.audit[len(m.audit)-m.opts.AuditKeep:]...)
	}
	if m.opts.Audit != nil {
		line, err := json.Marshal(r)
		if err == nil {
			line = append(line, '\n')
			_, err = m.opts.Audit.Write(line)
		}
		if err != nil {
			m.log.Error("audit trail write failed", "error", err)
		}
	}
}
