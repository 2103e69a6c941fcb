// Package quarantine is the control plane's response to detections: it
// turns anomaly reports into mesh-wide quarantines of the offending SPIFFE
// identity, expires and releases them, and keeps the evidence behind each
// one and the history of every change.
//
// Quarantines live in a state store (package state) that every control
// plane replica shares and that survives restarts: Kubernetes custom
// resources, or a database on disk. Any replica may change them; the store
// settles concurrent writes (see package state), and a report already acted
// on, by this replica or another, is never acted on again. Every replica
// publishes the active quarantines the store holds, whichever replica wrote
// them, as policies.Quarantine documents in one source of the policy store:
// a quarantine is a new bundle version that reaches every wasm filter
// (ECDS) and every authz server (ADS) like any policy change.
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
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshguard/meshguard/controlplane/state"
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

// ByExpiry is who expires quarantines in their history and the audit trail.
const ByExpiry = "meshguard/expiry"

// Errors callers tell apart (errors.Is).
var (
	// ErrInvalid: the request is malformed (identity, duration, caller).
	ErrInvalid = errors.New("quarantine: invalid request")
	// ErrNotQuarantined: a release of an identity that is not quarantined.
	ErrNotQuarantined = errors.New("quarantine: not quarantined")
	// ErrLimit: MaxActive identities are quarantined already.
	ErrLimit = errors.New("quarantine: too many identities quarantined")
	// ErrStore: the state store did not take the change; nothing was
	// changed (an add from a detection is still enforced by this replica
	// and retried, see Quarantine).
	ErrStore = errors.New("quarantine: state store unavailable")
)

// Sink receives the quarantine documents: the policy store.
type Sink interface {
	SetSource(name string, set policies.Set) error
}

// Store is the part of a state store the manager uses.
type Store interface {
	Quarantines() []*state.Quarantine
	UpdateQuarantine(ctx context.Context, identity string, fn state.QuarantineUpdate) (*state.Quarantine, error)
	Subscribe(fn func()) (cancel func())
}

// Profiles returns the anomaly profiles of the bundle being served.
type Profiles func() []policies.AnomalyProfile

// Threshold quarantines an identity after Events anomaly reports whose
// response is block within Window, even when no single report asks for a
// quarantine. Zero Events disables it. The reports are counted on the
// identity's record in the state store, so every sidecar's and every
// replica's count; a report sent twice (a retry, or to two replicas)
// counts once.
type Threshold struct {
	Events int
	Window time.Duration
}

// Options configure a Manager.
type Options struct {
	// Store holds the quarantines (required).
	Store Store
	// Sink is the policy store (required).
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
	// Audit receives one JSON line per change this replica makes; nil
	// writes none. The store's records hold every replica's history.
	Audit io.Writer
	// AuditKeep bounds what Audit returns (default 1000).
	AuditKeep int
	Now       func() time.Time
	Logger    *slog.Logger
	// Registerer receives the metrics; nil registers nothing.
	Registerer prometheus.Registerer
	// MaxActive bounds how many identities can be quarantined at once, so a
	// flood of events cannot grow the bundle without limit (default
	// 10000). Replicas check it against their own view, so concurrent adds
	// on several replicas may pass it by a few.
	MaxActive int
	// Replica names this control plane process in the records (the pod
	// name).
	Replica string
	// Leading reports whether this replica holds the leader lease; nil
	// means it does. Only the leader expires quarantines as soon as they
	// are due and deletes old records; the others expire what is still
	// active FollowerGrace after its expiry, in case there is no leader.
	Leading       func() bool
	FollowerGrace time.Duration // default 30s
	// Retention is how long released and expired records, with their
	// history, are kept (default 30 days).
	Retention time.Duration
	// WriteTimeout bounds the store writes of detections and of the
	// sweeper (default 5s); API calls carry their request's context.
	WriteTimeout time.Duration
	// Observer, when set, is called with every audit record (add, extend,
	// release, expire) as it is made, with the manager's lock held: it
	// must return at once and not call the manager (the control plane's
	// record store queues it).
	Observer func(AuditRecord)
}

// Entry is one quarantined identity.
type Entry struct {
	Identity  string           `json:"identity"`
	Reason    string           `json:"reason"`
	By        string           `json:"by"`
	Profile   string           `json:"profile,omitempty"`
	Detector  string           `json:"detector,omitempty"`
	CreatedAt time.Time        `json:"createdAt"`
	ExpiresAt time.Time        `json:"expiresAt,omitzero"`
	Evidence  []state.Evidence `json:"evidence,omitempty"`
	// Pending marks a quarantine from a detection that this replica
	// enforces but could not store yet; it retries.
	Pending bool `json:"pending,omitempty"`
}

// AuditRecord is one change of the quarantine list.
type AuditRecord struct {
	Time     time.Time `json:"time"`
	Action   string    `json:"action"` // add, extend, release, expire
	Identity string    `json:"identity"`
	By       string    `json:"by"`
	Reason   string    `json:"reason,omitempty"`
	Expires  time.Time `json:"expiresAt,omitzero"`
	Replica  string    `json:"replica,omitempty"`
}

// Finding is a detection that calls for quarantining Source: one report,
// or several about the same source put together. Its evidence decides
// whether it is new: a finding whose every report was acted on already is
// ignored.
type Finding struct {
	Source   spiffeid.ID
	Reason   string
	By       string // the reporter, or what correlated the reports
	Profile  string
	Detector string
	// For is how long; zero means the default duration.
	For      time.Duration
	Evidence []state.Evidence
}

// pendingAdd is a finding enforced by this replica but not yet stored.
type pendingAdd struct {
	finding   Finding
	createdAt time.Time
	expiresAt time.Time
}

// Manager holds the quarantine list. It is safe for concurrent use.
type Manager struct {
	opts  Options
	log   *slog.Logger
	store Store

	pendMu  sync.Mutex
	pending map[string]pendingAdd

	// changes counts changes of what is published (store and pending);
	// published is its value when the last set was published.
	changes   atomic.Uint64
	pubMu     sync.Mutex
	published uint64
	once      bool
	wake      chan struct{}
	unsub     func()

	auditMu sync.Mutex

	quarantines     *prometheus.CounterVec
	active          prometheus.Gauge
	events          *prometheus.CounterVec
	storeFailures   *prometheus.CounterVec
	pendingGauge    prometheus.Gauge
	publishFailures prometheus.Counter
	duplicates      prometheus.Counter
	findings        *prometheus.CounterVec
}

// New returns a manager over the store. Load it before serving.
func New(opts Options) (*Manager, error) {
	var errs []error
	if opts.Store == nil {
		errs = append(errs, errors.New("a state store is required"))
	}
	if opts.Sink == nil {
		errs = append(errs, errors.New("a sink is required"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("quarantine: %w", err)
	}
	if opts.Namespace == "" {
		opts.Namespace = policies.DefaultRootNamespace
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
	if opts.FollowerGrace <= 0 {
		opts.FollowerGrace = 30 * time.Second
	}
	if opts.Retention <= 0 {
		opts.Retention = 30 * 24 * time.Hour
	}
	if opts.WriteTimeout <= 0 {
		opts.WriteTimeout = 5 * time.Second
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
		store:   opts.Store,
		pending: map[string]pendingAdd{},
		wake:    make(chan struct{}, 1),
		quarantines: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshguard_controlplane_quarantine_changes_total",
			Help: "Quarantine changes this replica stored, by action (add, extend, release, expire).",
		}, []string{"action"}),
		active: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meshguard_controlplane_quarantined_identities",
			Help: "Identities quarantined in the bundle this replica serves.",
		}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshguard_controlplane_anomaly_events_total",
			Help: "Anomaly events handled by the quarantine manager, by effective response.",
		}, []string{"response"}),
		storeFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshguard_controlplane_quarantine_store_failures_total",
			Help: "Changes of quarantine records the state store did not take, by operation (add, release, expire, delete, observe: reports to correlate); nothing was changed.",
		}, []string{"op"}),
		pendingGauge: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meshguard_controlplane_quarantine_pending",
			Help: "Quarantines from detections this replica enforces but could not store yet (retried every sweep).",
		}),
		publishFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meshguard_controlplane_quarantine_publish_failures_total",
			Help: "Quarantine sets the policy store refused; the previous bundle keeps serving.",
		}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meshguard_controlplane_quarantine_duplicate_reports_total",
			Help: "Detection reports not acted on because they were already (on this replica or another), or predate a release.",
		}),
		findings: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshguard_controlplane_correlated_findings_total",
			Help: "Findings of reports about one source put together across sidecars and replicas, by finding (fan_out, threshold) and response (log, quarantine).",
		}, []string{"finding", "response"}),
	}
	for _, a := range []string{state.ActionAdd, state.ActionExtend, state.ActionRelease, state.ActionExpire} {
		m.quarantines.WithLabelValues(a)
	}
	for _, op := range []string{"add", "release", "expire", "delete", "observe"} {
		m.storeFailures.WithLabelValues(op)
	}
	if opts.Registerer != nil {
		for _, c := range []prometheus.Collector{m.quarantines, m.active, m.events, m.storeFailures, m.pendingGauge, m.publishFailures, m.duplicates, m.findings} {
			if err := opts.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("quarantine: register metrics: %w", err)
			}
		}
	}
	m.unsub = m.store.Subscribe(m.changed)
	return m, nil
}

// changed marks the published set stale and wakes the publisher.
func (m *Manager) changed() {
	m.changes.Add(1)
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// Close stops following the store.
func (m *Manager) Close() { m.unsub() }

// Load expires what expired while no control plane was running (each
// audited as expired) and publishes the active quarantines. Call it once
// the store's view is complete and before serving: the first bundle then
// holds every quarantine. An error means nothing could be published.
func (m *Manager) Load(ctx context.Context) error {
	if err := m.sweep(ctx, true); err != nil {
		m.log.Error("expiring quarantines at start; retried every sweep", "error", err)
	}
	return m.Publish()
}

// Run sweeps every interval (expiry, retention, pending retries) and
// republishes after every change of the store, until ctx is done.
func (m *Manager) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.wake:
		case <-t.C:
			if err := m.sweep(ctx, false); err != nil {
				m.log.Error("quarantine sweep", "error", err)
			}
		}
		if err := m.Publish(); err != nil {
			m.log.Error("quarantine publish; retried", "error", err)
		}
	}
}

// AddRequest is a manual quarantine.
type AddRequest struct {
	Identity string
	Reason   string
	By       string
	// For is how long; zero means the default duration.
	For time.Duration
}

// Add quarantines an identity (or extends its quarantine), stores it and
// publishes. An error means nothing was stored.
func (m *Manager) Add(ctx context.Context, r AddRequest) (Entry, error) {
	id, err := spiffeid.FromString(r.Identity)
	if err != nil {
		return Entry{}, fmt.Errorf("%w: identity %q: %v", ErrInvalid, r.Identity, err)
	}
	if r.By == "" {
		return Entry{}, fmt.Errorf("%w: who asks for the quarantine is required", ErrInvalid)
	}
	if r.For < 0 {
		return Entry{}, fmt.Errorf("%w: negative duration", ErrInvalid)
	}
	q, action, err := m.add(ctx, id.String(), addArgs{reason: r.Reason, by: r.By, d: r.For, manual: true})
	if err != nil {
		return Entry{}, err
	}
	m.done(q, action)
	if err := m.Publish(); err != nil {
		return entry(q), fmt.Errorf("quarantine: stored, but not served yet (retried): %w", err)
	}
	return entry(q), nil
}

// Quarantine acts on a finding: it quarantines the source, or extends its
// quarantine, unless the source is protected or every report of the
// finding was acted on already. When the store does not take it, this
// replica enforces the quarantine anyway (fail closed), counts it in
// meshguard_controlplane_quarantine_pending and stores it as soon as it
// can; the error says so.
func (m *Manager) Quarantine(ctx context.Context, f Finding) (Entry, error) {
	e, err := m.act(ctx, f)
	if errors.Is(err, ErrInvalid) {
		return e, err
	}
	if perr := m.Publish(); perr != nil {
		return Entry{}, errors.Join(err, perr)
	}
	return e, err
}

// act is Quarantine without the publish, so that a batch publishes once.
func (m *Manager) act(ctx context.Context, f Finding) (Entry, error) {
	if f.Source.IsZero() || f.By == "" {
		return Entry{}, fmt.Errorf("%w: a finding needs a source and a reporter", ErrInvalid)
	}
	if m.protected(f.Source) {
		m.log.Warn("anomaly on a protected identity: not quarantined", "identity", f.Source.String(), "detector", f.Detector, "reporter", f.By)
		return Entry{}, nil
	}
	ctx, cancel := context.WithTimeout(ctx, m.opts.WriteTimeout)
	defer cancel()
	q, action, err := m.add(ctx, f.Source.String(), addArgs{reason: f.Reason, by: f.By, profile: f.Profile, detector: f.Detector, d: f.For, evidence: f.Evidence})
	switch {
	case err == nil:
		m.dropPending(f.Source.String())
		m.done(q, action)
		return entry(q), nil
	case errors.Is(err, ErrStore):
		m.addPending(f)
		m.log.Error("quarantine enforced by this replica but not stored; retrying every sweep", "identity", f.Source.String(), "error", err)
	}
	return Entry{}, err
}

type addArgs struct {
	reason, by, profile, detector string
	d                             time.Duration
	evidence                      []state.Evidence
	manual                        bool
}

// add stores the add and returns the record and what was done: add,
// extend, evidence (reports recorded, nothing else changed) or "" (every
// report was acted on already).
func (m *Manager) add(ctx context.Context, identity string, a addArgs) (*state.Quarantine, string, error) {
	if a.d <= 0 {
		a.d = m.opts.DefaultDuration
	}
	a.d = min(a.d, m.opts.MaxDuration)
	a.reason, a.by = clip(a.reason), clip(a.by)
	now := m.opts.Now().UTC()
	var action string
	q, err := m.store.UpdateQuarantine(ctx, identity, func(cur *state.Quarantine) (*state.Quarantine, error) {
		next, act, err := m.decideAdd(cur, identity, now, a)
		action = act
		return next, err
	})
	if err != nil {
		if errors.Is(err, ErrLimit) || errors.Is(err, ErrInvalid) {
			return nil, "", err
		}
		m.storeFailures.WithLabelValues("add").Inc()
		return nil, "", fmt.Errorf("%w: quarantine %s: %w", ErrStore, identity, err)
	}
	if action == "" {
		m.duplicates.Inc()
	}
	return q, action, nil
}

// decideAdd is the add as an update of the current record (nil: none). It
// runs again when another replica changed the record first.
func (m *Manager) decideAdd(cur *state.Quarantine, identity string, now time.Time, a addArgs) (*state.Quarantine, string, error) {
	fresh := a.evidence
	if len(a.evidence) > 0 && cur != nil {
		fresh = fresh[:0:0]
		for _, e := range a.evidence {
			if cur.HasEvidence(e.Key) {
				continue // acted on already, here or on another replica
			}
			if cur.Phase == state.PhaseReleased && cur.Ended != nil && e.Received.Before(cur.Ended.At) {
				continue // received before the release: the release stands
			}
			fresh = append(fresh, e)
		}
		if len(fresh) == 0 {
			return nil, "", state.ErrUnchanged
		}
	}
	expires := now.Add(a.d).Truncate(time.Second)
	change := state.Change{Time: now, By: a.by, Reason: a.reason, Replica: m.opts.Replica}
	if !cur.ActiveAt(now) {
		if n := m.activeCount(now); n >= m.opts.MaxActive {
			return nil, "", fmt.Errorf("%w: %d identities already (the maximum)", ErrLimit, n)
		}
		next := &state.Quarantine{Identity: identity, Phase: state.PhaseActive, Reason: a.reason, By: a.by,
			Profile: clip(a.profile), Detector: clip(a.detector), CreatedAt: now, ExpiresAt: expires}
		if cur != nil {
			// A new quarantine of the identity: its past stays on record.
			next.Evidence, next.History = cur.Evidence, cur.History
		}
		next.AddEvidence(fresh...)
		change.Action, change.ExpiresAt = state.ActionAdd, expires
		next.Record(change)
		return next, state.ActionAdd, nil
	}
	next := cur
	next.AddEvidence(fresh...)
	extends := !cur.ExpiresAt.IsZero() && expires.After(cur.ExpiresAt)
	if !extends && !a.manual {
		return next, "evidence", nil
	}
	if extends {
		next.ExpiresAt = expires
	}
	change.Action, change.ExpiresAt = state.ActionExtend, next.ExpiresAt
	next.Record(change)
	return next, state.ActionExtend, nil
}

func (m *Manager) activeCount(now time.Time) int {
	n := 0
	for _, q := range m.store.Quarantines() {
		if q.ActiveAt(now) {
			n++
		}
	}
	m.pendMu.Lock()
	n += len(m.pending)
	m.pendMu.Unlock()
	return n
}

// done audits what this replica stored.
func (m *Manager) done(q *state.Quarantine, action string) {
	switch action {
	case state.ActionAdd, state.ActionExtend, state.ActionRelease, state.ActionExpire:
	default:
		return
	}
	c := q.History[len(q.History)-1]
	m.audit(AuditRecord{Time: c.Time, Action: c.Action, Identity: q.Identity, By: c.By, Reason: c.Reason, Expires: c.ExpiresAt, Replica: c.Replica})
	switch action {
	case state.ActionExpire:
		m.log.Info("quarantine expired", "identity", q.Identity, "reason", c.Reason)
	case state.ActionRelease:
		m.log.Warn("quarantine released", "identity", q.Identity, "by", c.By, "reason", c.Reason)
	default:
		m.log.Warn("identity quarantined", "identity", q.Identity, "by", c.By, "reason", c.Reason, "expires_at", q.ExpiresAt, "action", action)
	}
}

// Release lifts a quarantine, stores and publishes. Releasing an identity
// that is not quarantined is ErrNotQuarantined; an error means nothing was
// released.
func (m *Manager) Release(ctx context.Context, identity, by, reason string) error {
	if by == "" {
		return fmt.Errorf("%w: who releases is required", ErrInvalid)
	}
	id, err := spiffeid.FromString(identity)
	if err != nil {
		return fmt.Errorf("%w: identity %q: %v", ErrInvalid, identity, err)
	}
	key := id.String()
	by, reason = clip(by), clip(reason)
	now := m.opts.Now().UTC()
	m.pendMu.Lock()
	_, wasPending := m.pending[key]
	m.pendMu.Unlock()
	released := false
	q, err := m.store.UpdateQuarantine(ctx, key, func(cur *state.Quarantine) (*state.Quarantine, error) {
		released = false
		if !cur.ActiveAt(now) {
			return nil, state.ErrUnchanged
		}
		cur.Phase = state.PhaseReleased
		cur.Ended = &state.Ended{At: now, By: by, Reason: reason}
		cur.Observations = nil // what led to it is the evidence; nothing before the release counts again
		cur.Record(state.Change{Time: now, Action: state.ActionRelease, By: by, Reason: reason, Replica: m.opts.Replica})
		released = true
		return cur, nil
	})
	if err != nil {
		m.storeFailures.WithLabelValues("release").Inc()
		return fmt.Errorf("%w: release %s (still quarantined): %w", ErrStore, key, err)
	}
	if !released && !wasPending {
		return fmt.Errorf("%w: %s", ErrNotQuarantined, key)
	}
	m.dropPending(key)
	if released {
		m.done(q, state.ActionRelease)
	} else {
		m.audit(AuditRecord{Time: now, Action: state.ActionRelease, Identity: key, By: by, Reason: reason + " (never stored)", Replica: m.opts.Replica})
	}
	if err := m.Publish(); err != nil {
		return fmt.Errorf("quarantine: released, but the bundle without it is not served yet (retried): %w", err)
	}
	return nil
}

// List returns the quarantined identities, sorted.
func (m *Manager) List() []Entry {
	now := m.opts.Now()
	var out []Entry
	seen := map[string]bool{}
	for _, q := range m.store.Quarantines() {
		if q.ActiveAt(now) {
			out = append(out, entry(q))
			seen[q.Identity] = true
		}
	}
	m.pendMu.Lock()
	for id, p := range m.pending {
		if !seen[id] && now.Before(p.expiresAt) {
			out = append(out, Entry{Identity: id, Reason: p.finding.Reason, By: p.finding.By, Profile: p.finding.Profile,
				Detector: p.finding.Detector, CreatedAt: p.createdAt, ExpiresAt: p.expiresAt, Evidence: p.finding.Evidence, Pending: true})
		}
	}
	m.pendMu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Identity < out[j].Identity })
	return out
}

func entry(q *state.Quarantine) Entry {
	return Entry{Identity: q.Identity, Reason: q.Reason, By: q.By, Profile: q.Profile, Detector: q.Detector,
		CreatedAt: q.CreatedAt, ExpiresAt: q.ExpiresAt, Evidence: q.Evidence}
}

// Audit returns the newest AuditKeep changes of every quarantine in the
// store, whichever replica made them, oldest first.
func (m *Manager) Audit() []AuditRecord {
	var out []AuditRecord
	for _, q := range m.store.Quarantines() {
		for _, c := range q.History {
			out = append(out, AuditRecord{Time: c.Time, Action: c.Action, Identity: q.Identity, By: c.By, Reason: c.Reason, Expires: c.ExpiresAt, Replica: c.Replica})
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		if !out[i].Time.Equal(out[j].Time) {
			return out[i].Time.Before(out[j].Time)
		}
		return out[i].Identity < out[j].Identity
	})
	if len(out) > m.opts.AuditKeep {
		out = out[len(out)-m.opts.AuditKeep:]
	}
	return out
}

// Sweep expires due quarantines (each audited), deletes released and
// expired records older than the retention, retries the pending ones and
// publishes.
func (m *Manager) Sweep(ctx context.Context) error {
	return errors.Join(m.sweep(ctx, false), m.Publish())
}

func (m *Manager) sweep(ctx context.Context, atStart bool) error {
	now := m.opts.Now().UTC()
	leading := m.opts.Leading == nil || m.opts.Leading()
	var errs []error
	for _, q := range m.store.Quarantines() {
		switch {
		case q.Phase == state.PhaseActive && !q.ExpiresAt.IsZero() && !now.Before(q.ExpiresAt):
			if !leading && now.Sub(q.ExpiresAt) < m.opts.FollowerGrace {
				continue
			}
			if err := m.expire(ctx, q.Identity, now, atStart); err != nil {
				errs = append(errs, err)
			}
		case q.Phase != state.PhaseActive && leading && q.Ended != nil && now.Sub(lastChange(q)) > m.opts.Retention:
			if err := m.forget(ctx, q.Identity, now); err != nil {
				errs = append(errs, err)
			}
		case q.Phase == state.PhaseObserved && leading && stale(q, now, m.observationsKept()):
			if err := m.forgetObserved(ctx, q.Identity, now, m.observationsKept()); err != nil {
				errs = append(errs, err)
			}
		}
	}
	m.retryPending(ctx, now)
	return errors.Join(errs...)
}

// observationsKept is how long an Observed record's reports may matter:
// the longest correlation window, or the threshold's.
func (m *Manager) observationsKept() time.Duration {
	return max(policies.MaxCorrelationWindow, m.opts.Threshold.Window)
}

func lastChange(q *state.Quarantine) time.Time {
	t := q.Ended.At
	if n := len(q.History); n > 0 && q.History[n-1].Time.After(t) {
		t = q.History[n-1].Time
	}
	return t
}

func (m *Manager) expire(ctx context.Context, identity string, now time.Time, atStart bool) error {
	ctx, cancel := context.WithTimeout(ctx, m.opts.WriteTimeout)
	defer cancel()
	expired := false
	q, err := m.store.UpdateQuarantine(ctx, identity, func(cur *state.Quarantine) (*state.Quarantine, error) {
		expired = false
		if cur == nil || cur.Phase != state.PhaseActive || cur.ExpiresAt.IsZero() || now.Before(cur.ExpiresAt) {
			return nil, state.ErrUnchanged // released, extended or expired by another replica
		}
		reason := "expired at " + cur.ExpiresAt.UTC().Format(time.RFC3339)
		if atStart {
			reason += ", while no control plane was running; lifted at start"
		}
		cur.Phase = state.PhaseExpired
		cur.Ended = &state.Ended{At: cur.ExpiresAt, By: ByExpiry, Reason: reason}
		cur.Record(state.Change{Time: now, Action: state.ActionExpire, By: ByExpiry, Reason: reason, ExpiresAt: cur.ExpiresAt, Replica: m.opts.Replica})
		expired = true
		return cur, nil
	})
	if err != nil {
		m.storeFailures.WithLabelValues("expire").Inc()
		return fmt.Errorf("expire %s: %w", identity, err)
	}
	if expired {
		m.done(q, state.ActionExpire)
	}
	return nil
}

// forget deletes a record whose retention has passed.
func (m *Manager) forget(ctx context.Context, identity string, now time.Time) error {
	ctx, cancel := context.WithTimeout(ctx, m.opts.WriteTimeout)
	defer cancel()
	_, err := m.store.UpdateQuarantine(ctx, identity, func(cur *state.Quarantine) (*state.Quarantine, error) {
		if cur == nil || cur.Phase == state.PhaseActive || cur.Ended == nil || now.Sub(lastChange(cur)) <= m.opts.Retention {
			return nil, state.ErrUnchanged
		}
		return nil, nil
	})
	if err != nil {
		m.storeFailures.WithLabelValues("delete").Inc()
		return fmt.Errorf("delete the record of %s: %w", identity, err)
	}
	return nil
}

func (m *Manager) addPending(f Finding) {
	now := m.opts.Now().UTC()
	d := f.For
	if d <= 0 {
		d = m.opts.DefaultDuration
	}
	d = min(d, m.opts.MaxDuration)
	m.pendMu.Lock()
	defer m.pendMu.Unlock()
	key := f.Source.String()
	p, ok := m.pending[key]
	switch {
	case ok:
		p.finding.Evidence = append(p.finding.Evidence, f.Evidence...)
		if n := len(p.finding.Evidence) - state.MaxEvidence; n > 0 {
			p.finding.Evidence = p.finding.Evidence[n:]
		}
		if e := now.Add(d).Truncate(time.Second); e.After(p.expiresAt) {
			p.expiresAt = e
		}
	case len(m.pending) >= m.opts.MaxActive:
		m.log.Error("too many quarantines pending a store write; this one is not enforced", "identity", key)
		return
	default:
		p = pendingAdd{finding: f, createdAt: now, expiresAt: now.Add(d).Truncate(time.Second)}
	}
	m.pending[key] = p
	m.pendingGauge.Set(float64(len(m.pending)))
	m.changed()
}

func (m *Manager) dropPending(identity string) {
	m.pendMu.Lock()
	defer m.pendMu.Unlock()
	if _, ok := m.pending[identity]; ok {
		delete(m.pending, identity)
		m.pendingGauge.Set(float64(len(m.pending)))
		m.changed()
	}
}

// retryPending stores the pending quarantines that have not expired.
func (m *Manager) retryPending(ctx context.Context, now time.Time) {
	m.pendMu.Lock()
	todo := make([]pendingAdd, 0, len(m.pending))
	for id, p := range m.pending {
		if !now.Before(p.expiresAt) {
			delete(m.pending, id)
			m.log.Warn("pending quarantine expired before it could be stored", "identity", id)
			m.changed()
			continue
		}
		todo = append(todo, p)
	}
	m.pendingGauge.Set(float64(len(m.pending)))
	m.pendMu.Unlock()
	for _, p := range todo {
		f := p.finding
		f.For = p.expiresAt.Sub(now)
		wctx, cancel := context.WithTimeout(ctx, m.opts.WriteTimeout)
		q, action, err := m.add(wctx, f.Source.String(), addArgs{reason: f.Reason, by: f.By, profile: f.Profile, detector: f.Detector, d: f.For, evidence: f.Evidence})
		cancel()
		if err != nil {
			m.log.Error("pending quarantine still not stored", "identity", f.Source.String(), "error", err)
			if errors.Is(err, ErrStore) {
				continue
			}
		} else {
			m.done(q, action)
		}
		m.dropPending(f.Source.String())
	}
}

// HandleEvents applies the response of every anomaly event of a batch and
// correlates the batch's reports with what every sidecar and replica
// reported before. An anomaly's response is the one the named anomaly
// profile configures for the detector; the event's own response is used
// only when the bundle has no such profile. A quarantine response
// quarantines at once; every other anomaly, and every edge a shadow or
// enforce baseline does not list, is an observation of its source, stored
// on the source's record (see observe). reporter is the authenticated
// identity of the sender, which the caller has checked may report these
// events.
func (m *Manager) HandleEvents(ctx context.Context, reporter string, events []wire.Event) {
	profiles := m.opts.Profiles()
	received := m.opts.Now().UTC()
	var order []spiffeid.ID
	observed := map[spiffeid.ID][]state.Evidence{}
	for _, ev := range events {
		var resp string
		var dur time.Duration
		switch {
		case ev.Kind == wire.EventAnomaly:
			resp, dur = m.response(profiles, ev)
			m.events.WithLabelValues(responseLabel(resp)).Inc()
		case ev.Kind == wire.EventEdge && unknownEdge(ev.Detail):
		default:
			continue
		}
		id, err := spiffeid.FromString(ev.Source)
		if err != nil {
			m.log.Warn("event without a valid source identity", "reporter", reporter, "kind", ev.Kind, "source", ev.Source)
			continue
		}
		e := EvidenceOf(reporter, ev, received, m.opts.Replica)
		e.Response = clip(resp)
		if ev.Kind == wire.EventAnomaly && resp == ResponseQuarantine {
			f := Finding{Source: id, By: reporter, Profile: ev.Profile, Detector: ev.Detector, For: dur,
				Reason:   fmt.Sprintf("%s anomaly (%s) reported by %s", ev.Detector, ev.Detail, reporter),
				Evidence: []state.Evidence{e}}
			if _, err := m.act(ctx, f); err != nil && !errors.Is(err, ErrStore) {
				m.log.Error("quarantine", "identity", id.String(), "error", err)
			}
			continue
		}
		if _, ok := observed[id]; !ok {
			order = append(order, id)
		}
		observed[id] = append(observed[id], e)
	}
	for _, id := range order {
		m.observe(ctx, id, observed[id], profiles)
	}
	if err := m.Publish(); err != nil {
		m.log.Error("quarantine publish; retried", "error", err)
	}
}

// unknownEdge reports whether an edge event's detail says the edge is not
// in a shadow or enforce baseline (learn mode reports every edge: a new
// one there is not a sign of anything).
func unknownEdge(detail string) bool {
	return strings.HasPrefix(detail, "unknown") &&
		(strings.Contains(detail, "baseline="+policies.BaselineShadow) || strings.Contains(detail, "baseline="+policies.BaselineEnforce))
}

// EvidenceOf is the evidence an event is: its key digests the reporter and
// every field of the event, so that the same report sent twice (a retry,
// or to two replicas) has the same key.
func EvidenceOf(reporter string, ev wire.Event, received time.Time, replica string) state.Evidence {
	h := sha256.New()
	for _, s := range []string{reporter, ev.Kind, ev.Detector, ev.Source, ev.Destination, ev.Route, ev.Method, ev.Response, ev.Profile,
		strconv.FormatFloat(ev.Score, 'g', -1, 64), strconv.FormatUint(ev.Count, 10), strconv.FormatInt(ev.UnixMillis, 10), ev.Detail} {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	e := state.Evidence{Key: hex.EncodeToString(h.Sum(nil)[:12]), Reporter: clip(reporter), Kind: clip(ev.Kind), Detector: clip(ev.Detector),
		Destination: clip(ev.Destination), Route: clip(ev.Route), Detail: clip(ev.Detail), Received: received, Replica: replica}
	if ev.UnixMillis > 0 {
		e.Observed = time.UnixMilli(ev.UnixMillis).UTC()
	}
	return e
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

// Publish hands the active quarantines to the sink unless the sink already
// has the current ones.
func (m *Manager) Publish() error {
	m.pubMu.Lock()
	defer m.pubMu.Unlock()
	target := m.changes.Load()
	if m.once && m.published == target {
		return nil
	}
	now := m.opts.Now()
	var set policies.Set
	add := func(identity, reason, by string, expires time.Time) {
		spec := policies.QuarantineSpec{Identity: identity, Reason: truncate(reason, 256), CreatedBy: truncate(by, 256)}
		if !expires.IsZero() {
			spec.ExpiresAt = expires.UTC().Format(time.RFC3339)
		}
		set.Quarantines = append(set.Quarantines, policies.Quarantine{
			APIVersion: policies.APIVersionMeshguard,
			Kind:       policies.KindQuarantine,
			Metadata:   policies.ObjectMeta{Name: state.QuarantineName(identity), Namespace: m.opts.Namespace},
			Spec:       spec,
		})
	}
	stored := map[string]bool{}
	for _, q := range m.store.Quarantines() {
		if q.ActiveAt(now) {
			add(q.Identity, q.Reason, q.By, q.ExpiresAt)
			stored[q.Identity] = true
		}
	}
	m.pendMu.Lock()
	for id, p := range m.pending {
		if !stored[id] && now.Before(p.expiresAt) {
			add(id, p.finding.Reason, p.finding.By, p.expiresAt)
		}
	}
	m.pendMu.Unlock()
	sort.Slice(set.Quarantines, func(i, j int) bool { return set.Quarantines[i].Spec.Identity < set.Quarantines[j].Spec.Identity })
	if err := m.opts.Sink.SetSource(SourceName, set); err != nil {
		m.publishFailures.Inc()
		return fmt.Errorf("quarantine: publish: %w", err)
	}
	m.published, m.once = target, true
	m.active.Set(float64(len(set.Quarantines)))
	return nil
}

// truncate cuts s to at most n bytes at a rune boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

func clip(s string) string { return truncate(s, state.MaxText) }

// audit appends a record to the audit file.
func (m *Manager) audit(r AuditRecord) {
	m.quarantines.WithLabelValues(r.Action).Inc()
	if m.opts.Observer != nil {
		m.opts.Observer(r)
	}
	if m.opts.Audit == nil {
		return
	}
	line, err := json.Marshal(r)
	if err == nil {
		line = append(line, '\n')
		m.auditMu.Lock()
		_, err = m.opts.Audit.Write(line)
		m.auditMu.Unlock()
	}
	if err != nil {
		m.log.Error("audit trail write failed", "error", err)
	}
}
