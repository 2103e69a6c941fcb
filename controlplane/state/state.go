// Package state is the control plane's durable state: quarantines, with the
// evidence that caused them and the history of every change made to them,
// and the traffic baselines learned from observed edges. The state outlives
// a control plane process and is shared by every replica. A store keeps it
// in meshguard's custom resources through the Kubernetes API server
// (package state/kube) or in an embedded bbolt database on disk (package
// state/disk); both implement the same contract:
//
//   - A store holds a view of every record, complete once it has started,
//     and tells subscribers after every change of it, whether this process
//     or another replica made the change.
//   - Every write is a read-modify-write of one record that the store applies
//     atomically: when another writer changed the record between the read
//     and the write (a resourceVersion conflict on Kubernetes), the update
//     function runs again on the newer record. Writers never overwrite each
//     other and a write that returns nil is durable.
package state

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// ErrUnchanged, returned by an update function, leaves the record as it is;
// the update then returns the current record and no error.
var ErrUnchanged = errors.New("state: unchanged")

// Phase of a quarantine record.
type Phase string

// Phases. Only an Active record whose expiry has not passed is enforced;
// Released and Expired records are kept, with their history, until the
// retention period ends. An Observed record holds reports about an
// identity that has never been quarantined, being correlated: nothing is
// enforced; it is deleted once its reports are old.
const (
	PhaseActive   Phase = "Active"
	PhaseReleased Phase = "Released"
	PhaseExpired  Phase = "Expired"
	PhaseObserved Phase = "Observed"
)

// Bounds of a record, so that a flood of reports cannot grow one without
// limit (a Kubernetes object must stay well under etcd's 1.5 MiB).
const (
	MaxEvidence     = 16  // newest kept
	MaxHistory      = 64  // newest kept
	MaxObservations = 64  // newest kept
	MaxText         = 512 // bytes of a reason, detail or name
)

// Change actions recorded in a quarantine's history.
const (
	ActionAdd     = "add"
	ActionExtend  = "extend"
	ActionRelease = "release"
	ActionExpire  = "expire"
)

// Quarantine is the record of one identity's quarantine: what the data plane
// enforces while it is active, why, and everything that happened to it.
type Quarantine struct {
	// Identity is the quarantined SPIFFE ID.
	Identity string `json:"identity"`
	Phase    Phase  `json:"phase"`
	// Reason, By (who or what added it: an operator's SPIFFE ID, or the
	// reporter of the detection), Profile and Detector of the latest add.
	Reason    string    `json:"reason,omitempty"`
	By        string    `json:"by"`
	Profile   string    `json:"profile,omitempty"`
	Detector  string    `json:"detector,omitempty"`
	CreatedAt time.Time `json:"createdAt"`
	// ExpiresAt is when the quarantine lifts by itself; zero: when released.
	ExpiresAt time.Time `json:"expiresAt,omitzero"`
	// Ended says how a Released or Expired quarantine ended.
	Ended *Ended `json:"ended,omitempty"`
	// Evidence lists the reports acted on, newest last (at most
	// MaxEvidence); a report whose key is listed is never acted on again.
	Evidence []Evidence `json:"evidence,omitempty"`
	// Observations are reports about the identity not acted on (yet),
	// newest last (at most MaxObservations): what the control plane
	// correlates across sidecars and replicas. They are dropped once
	// older than the correlation window, and become the evidence of the
	// quarantine they add up to.
	Observations []Evidence `json:"observations,omitempty"`
	// History is the audit trail of the record, oldest first (at most
	// MaxHistory; the audit log file keeps everything).
	History []Change `json:"history,omitempty"`
}

// Ended records the release or expiry of a quarantine.
type Ended struct {
	At     time.Time `json:"at"`
	By     string    `json:"by"`
	Reason string    `json:"reason,omitempty"`
}

// Evidence is one detection report a quarantine was added or extended on.
type Evidence struct {
	// Key identifies the report (a digest of the reporter and the event).
	Key      string `json:"key"`
	Reporter string `json:"reporter"`
	// Kind of the report (anomaly, edge) and the response it called for
	// (an anomaly's, as its profile says).
	Kind        string    `json:"kind,omitempty"`
	Response    string    `json:"response,omitempty"`
	Detector    string    `json:"detector,omitempty"`
	Destination string    `json:"destination,omitempty"`
	Route       string    `json:"route,omitempty"`
	Detail      string    `json:"detail,omitempty"`
	Observed    time.Time `json:"observed,omitzero"` // the reporter's clock
	Received    time.Time `json:"received"`          // the control plane's clock
	Replica     string    `json:"replica,omitempty"` // the replica that received it
}

// Change is one audited change of a quarantine.
type Change struct {
	Time      time.Time `json:"time"`
	Action    string    `json:"action"`
	By        string    `json:"by"`
	Reason    string    `json:"reason,omitempty"`
	ExpiresAt time.Time `json:"expiresAt,omitzero"`
	Replica   string    `json:"replica,omitempty"` // the replica that wrote it
}

// ActiveAt reports whether the quarantine is enforced at now.
func (q *Quarantine) ActiveAt(now time.Time) bool {
	return q != nil && q.Phase == PhaseActive && (q.ExpiresAt.IsZero() || now.Before(q.ExpiresAt))
}

// HasEvidence reports whether the report with key was already acted on.
func (q *Quarantine) HasEvidence(key string) bool {
	if q == nil {
		return false
	}
	for i := range q.Evidence {
		if q.Evidence[i].Key == key {
			return true
		}
	}
	return false
}

// HasObservation reports whether the report with key is among the
// observations.
func (q *Quarantine) HasObservation(key string) bool {
	if q == nil {
		return false
	}
	for i := range q.Observations {
		if q.Observations[i].Key == key {
			return true
		}
	}
	return false
}

// AddEvidence appends reports, keeping the newest MaxEvidence.
func (q *Quarantine) AddEvidence(ev ...Evidence) {
	q.Evidence = append(q.Evidence, ev...)
	if n := len(q.Evidence) - MaxEvidence; n > 0 {
		q.Evidence = slices.Delete(q.Evidence, 0, n)
	}
}

// Record appends a change, keeping the newest MaxHistory.
func (q *Quarantine) Record(c Change) {
	q.History = append(q.History, c)
	if n := len(q.History) - MaxHistory; n > 0 {
		q.History = slices.Delete(q.History, 0, n)
	}
}

// Clone returns a deep copy; nil stays nil.
func (q *Quarantine) Clone() *Quarantine {
	if q == nil {
		return nil
	}
	c := *q
	if q.Ended != nil {
		e := *q.Ended
		c.Ended = &e
	}
	c.Evidence = slices.Clone(q.Evidence)
	c.Observations = slices.Clone(q.Observations)
	c.History = slices.Clone(q.History)
	return &c
}

// Validate checks a record read from a store or about to be written.
func (q *Quarantine) Validate() error {
	var errs []error
	if _, err := spiffeid.FromString(q.Identity); err != nil {
		errs = append(errs, fmt.Errorf("identity %q: %w", q.Identity, err))
	}
	switch q.Phase {
	case PhaseActive, PhaseObserved:
	case PhaseReleased, PhaseExpired:
		if q.Ended == nil {
			errs = append(errs, fmt.Errorf("phase %s without ended", q.Phase))
		}
	default:
		errs = append(errs, fmt.Errorf("unknown phase %q", q.Phase))
	}
	if q.By == "" {
		errs = append(errs, errors.New("by is empty"))
	}
	if q.CreatedAt.IsZero() {
		errs = append(errs, errors.New("createdAt is not set"))
	}
	if len(q.Evidence) > MaxEvidence || len(q.History) > MaxHistory || len(q.Observations) > MaxObservations {
		errs = append(errs, fmt.Errorf("%d evidence, %d history and %d observation entries (at most %d, %d and %d)",
			len(q.Evidence), len(q.History), len(q.Observations), MaxEvidence, MaxHistory, MaxObservations))
	}
	return errors.Join(errs...)
}

// QuarantineName is the object name of identity's record: a DNS label
// derived from the identity, the same in every store and every replica, so
// that two replicas quarantining one identity write the same object. The
// policy documents the quarantine manager publishes carry the same name.
func QuarantineName(identity string) string {
	sum := sha256.Sum256([]byte(identity))
	return "quarantine-" + hex.EncodeToString(sum[:8])
}

// Baseline is the traffic learned into one destination service.
type Baseline struct {
	Destination string `json:"destination"`
	Edges       []Edge `json:"edges,omitempty"`
}

// Edge is one learned caller of a destination.
type Edge struct {
	Source    string    `json:"source"`
	Routes    []string  `json:"routes,omitempty"`
	Methods   []string  `json:"methods,omitempty"`
	Count     int64     `json:"count"`
	FirstSeen time.Time `json:"firstSeen"`
	LastSeen  time.Time `json:"lastSeen"`
}

// Clone returns a deep copy; nil stays nil.
func (b *Baseline) Clone() *Baseline {
	if b == nil {
		return nil
	}
	c := *b
	c.Edges = make([]Edge, len(b.Edges))
	for i, e := range b.Edges {
		e.Routes = slices.Clone(e.Routes)
		e.Methods = slices.Clone(e.Methods)
		c.Edges[i] = e
	}
	return &c
}

// Validate checks a baseline read from a store or about to be written.
func (b *Baseline) Validate() error {
	if b.Destination == "" || len(b.Destination) > MaxText {
		return fmt.Errorf("destination %q: empty or too long", b.Destination)
	}
	for i := range b.Edges {
		if _, err := spiffeid.FromString(b.Edges[i].Source); err != nil {
			return fmt.Errorf("edge %d: source %q: %w", i, b.Edges[i].Source, err)
		}
	}
	return nil
}

// BaselineName is the object name of destination's baseline.
func BaselineName(destination string) string {
	sum := sha256.Sum256([]byte(destination))
	return "baseline-" + hex.EncodeToString(sum[:8])
}

// QuarantineUpdate computes the record to store from a copy of the current
// one (nil when there is none): the new record, nil to delete it, or
// ErrUnchanged. It may run more than once (after a conflict) and must have
// no side effect.
type QuarantineUpdate func(cur *Quarantine) (*Quarantine, error)

// BaselineUpdate is QuarantineUpdate for baselines.
type BaselineUpdate func(cur *Baseline) (*Baseline, error)

// Store is what both backends provide. Consumers declare the part they use.
type Store interface {
	// Quarantines returns every record of the view; the records must not
	// be modified.
	Quarantines() []*Quarantine
	// UpdateQuarantine applies fn to identity's record atomically and
	// returns what was stored (nil after a delete).
	UpdateQuarantine(ctx context.Context, identity string, fn QuarantineUpdate) (*Quarantine, error)
	// Baselines returns every baseline of the view, read-only.
	Baselines() []*Baseline
	// UpdateBaseline applies fn to destination's baseline atomically.
	UpdateBaseline(ctx context.Context, destination string, fn BaselineUpdate) (*Baseline, error)
	// Subscribe calls fn after every change of the view, from any writer,
	// until cancel is called. fn must not block.
	Subscribe(fn func()) (cancel func())
}

// Subscribers is the set of change callbacks a store notifies.
type Subscribers struct {
	mu   sync.Mutex
	next int
	fns  map[int]func()
}

// Subscribe adds fn; cancel removes it.
func (s *Subscribers) Subscribe(fn func()) (cancel func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fns == nil {
		s.fns = map[int]func(){}
	}
	id := s.next
	s.next++
	s.fns[id] = fn
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		delete(s.fns, id)
	}
}

// Notify calls every subscriber.
func (s *Subscribers) Notify() {
	s.mu.Lock()
	fns := make([]func(), 0, len(s.fns))
	for _, fn := range s.fns {
		fns = append(fns, fn)
	}
	s.mu.Unlock()
	for _, fn := range fns {
		fn()
	}
}

// Metrics are a store's series; both backends report the same ones.
type Metrics struct {
	// Writes counts write attempts by kind (quarantine, baseline) and
	// result: ok, conflict (another writer got there first; retried) or
	// error (not stored).
	Writes *prometheus.CounterVec
	// Records is the number of records in the view, by kind.
	Records *prometheus.GaugeVec
	// Invalid counts records read from the store that fail validation and
	// are ignored, by kind.
	Invalid *prometheus.CounterVec
	// WriteSeconds is the latency of successful writes.
	WriteSeconds prometheus.Histogram
}

// Record kinds in metrics.
const (
	KindQuarantine = "quarantine"
	KindBaseline   = "baseline"
)

// NewMetrics returns the metrics, registered with reg when it is not nil.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		Writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshguard_controlplane_state_writes_total",
			Help: "State store write attempts by kind (quarantine, baseline) and result (ok, conflict, error).",
		}, []string{"kind", "result"}),
		Records: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "meshguard_controlplane_state_records",
			Help: "Records in the state store's view, by kind.",
		}, []string{"kind"}),
		Invalid: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshguard_controlplane_state_invalid_records_total",
			Help: "Records read from the state store that failed validation and were ignored, by kind.",
		}, []string{"kind"}),
		WriteSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "meshguard_controlplane_state_write_duration_seconds",
			Help:    "Latency of successful state store writes.",
			Buckets: []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5},
		}),
	}
	for _, kind := range []string{KindQuarantine, KindBaseline} {
		for _, r := range []string{"ok", "conflict", "error"} {
			m.Writes.WithLabelValues(kind, r)
		}
		m.Records.WithLabelValues(kind)
		m.Invalid.WithLabelValues(kind)
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.Writes, m.Records, m.Invalid, m.WriteSeconds} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("state: register metrics: %w", err)
			}
		}
	}
	return m, nil
}
