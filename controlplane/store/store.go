// Package store is the control plane's policy store: it merges the policy
// documents of named sources (policy files, the Istio watcher, the
// quarantine manager) into one validated policies.Bundle and publishes every
// new bundle to its subscribers (the xDS server, which turns it into the
// wasm filter's ECDS config and the authz servers' bundle resource).
//
// A merged set that does not validate (or does not pass the configured
// check, normally a compile) is rejected with every error found, and the
// last good bundle keeps serving: a bad update never reaches an enforcement
// point.
package store

import (
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshguard/meshguard/policies"
)

// maxSourceName bounds source names; they appear in logs and errors.
const maxSourceName = 128

// Check is run on every candidate bundle after validation; an error rejects
// the bundle. The control plane passes a function that compiles it, so that
// only bundles every enforcement point can load are published.
type Check func(*policies.Bundle) error

// Options configure a Store. The zero value is usable.
type Options struct {
	// Logger receives build results; nil discards.
	Logger *slog.Logger
	// Registerer receives the store's metrics; nil registers nothing.
	Registerer prometheus.Registerer
	// Check runs on every candidate bundle; nil only validates.
	Check Check
	// Observer, when set, is called with every update that publishes a
	// bundle or is rejected, with the store's lock held: it must return at
	// once and not call the store.
	Observer func(Change)
}

// Change is one update of a source: the bundle it published, or why it was
// rejected.
type Change struct {
	Source    string
	Version   string // of the published bundle; empty when rejected
	Documents int
	Err       error
}

// Store merges named sources into a bundle. It is safe for concurrent use.
type Store struct {
	log   *slog.Logger
	check Check
	obs   func(Change)

	mu      sync.Mutex // serializes updates and publication order
	sources map[string]policies.Set
	current *policies.Bundle
	gen     uint64
	subs    map[uint64]func(*policies.Bundle)
	nextSub uint64
	// published: the last build published a bundle.
	published bool

	builds    *prometheus.CounterVec
	documents prometheus.Gauge
}

// New returns an empty store. It has no bundle until the first successful
// SetSource; subscribers see nothing until then, and enforcement points that
// have no bundle deny everything.
func New(opts Options) (*Store, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Store{
		log:     log,
		check:   opts.Check,
		obs:     opts.Observer,
		sources: map[string]policies.Set{},
		subs:    map[uint64]func(*policies.Bundle){},
		builds: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshguard_controlplane_bundle_builds_total",
			Help: "Policy bundle builds by result (published, unchanged, rejected).",
		}, []string{"result"}),
		documents: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meshguard_controlplane_bundle_documents",
			Help: "Documents in the bundle being served.",
		}),
	}
	if opts.Registerer != nil {
		for _, c := range []prometheus.Collector{s.builds, s.documents} {
			if err := opts.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("store: register metrics: %w", err)
			}
		}
	}
	return s, nil
}

// RejectedError is returned when an update is rejected. Diagnostics holds
// every error found; the previous bundle is still served.
type RejectedError struct {
	Source      string
	Diagnostics policies.Diagnostics
	Err         error
}

func (e *RejectedError) Error() string {
	return fmt.Sprintf("store: update of source %q rejected, last good bundle kept: %v", e.Source, e.Err)
}

func (e *RejectedError) Unwrap() error { return e.Err }

// SetSource replaces every document of source name with set, rebuilds the
// merged bundle and, when its content changed, publishes it. On error the
// source keeps its previous documents and the last good bundle keeps serving.
func (s *Store) SetSource(name string, set policies.Set) error {
	if err := checkSourceName(name); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.update(name, &set)
}

// RemoveSource drops every document of source name and republishes.
func (s *Store) RemoveSource(name string) error {
	if err := checkSourceName(name); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.sources[name]; !ok {
		return nil
	}
	return s.update(name, nil)
}

// Source returns a copy of the documents currently held for name.
func (s *Store) Source(name string) (policies.Set, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	set, ok := s.sources[name]
	return set, ok
}

// Bundle returns the bundle being served, or nil before the first one.
func (s *Store) Bundle() *policies.Bundle {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.current
}

// Subscribe calls fn with the current bundle (if any) and then with every
// bundle published, in order, until cancel is called. fn runs with the
// store's update lock held: it must not call back into the store and should
// return quickly.
func (s *Store) Subscribe(fn func(*policies.Bundle)) (cancel func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	id := s.nextSub
	s.nextSub++
	s.subs[id] = fn
	if s.current != nil {
		fn(s.current)
	}
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		delete(s.subs, id)
	}
}

// update must be called with s.mu held. set nil removes the source.
func (s *Store) update(name string, set *policies.Set) error {
	err := s.build(name, set)
	if s.obs != nil && (err != nil || s.published) {
		c := Change{Source: name, Err: err}
		if err == nil {
			c.Version, c.Documents = s.current.Version, countDocuments(&s.current.Set)
		}
		s.obs(c)
	}
	return err
}

// build is update without the observer; it sets s.published when it
// published a bundle.
func (s *Store) build(name string, set *policies.Set) error {
	s.published = false
	if set != nil {
		// Validate the source alone first so that its errors are reported
		// against it rather than against the merge.
		if diags := policies.Validate(set); diags.HasErrors() {
			s.builds.WithLabelValues("rejected").Inc()
			err := &RejectedError{Source: name, Diagnostics: diags.Errors(), Err: diags.Err()}
			s.log.Warn("policy source rejected", "source", name, "errors", len(diags.Errors()), "error", err)
			return err
		}
	}
	next := make(map[string]policies.Set, len(s.sources)+1)
	for k, v := range s.sources {
		next[k] = v
	}
	if set == nil {
		delete(next, name)
	} else {
		next[name] = *set
	}
	merged, err := merge(next)
	if err != nil {
		s.builds.WithLabelValues("rejected").Inc()
		s.log.Warn("policy merge rejected", "source", name, "error", err)
		return &RejectedError{Source: name, Err: err}
	}
	candidate, diags, err := policies.NewBundle("", merged)
	if err != nil {
		s.builds.WithLabelValues("rejected").Inc()
		rerr := &RejectedError{Source: name, Diagnostics: diags.Errors(), Err: err}
		s.log.Warn("merged policy set rejected", "source", name, "errors", len(diags.Errors()), "error", rerr)
		return rerr
	}
	if s.current != nil && s.current.Hash == candidate.Hash {
		s.sources = next
		s.builds.WithLabelValues("unchanged").Inc()
		return nil
	}
	// Versions increase with every publication so that a return to earlier
	// content (a quarantine released) is still a new version everywhere.
	candidate.Version = strconv.FormatUint(s.gen+1, 10) + "-" + candidate.Hash[len("sha256:"):len("sha256:")+12]
	if s.check != nil {
		if err := s.check(candidate); err != nil {
			s.builds.WithLabelValues("rejected").Inc()
			rerr := &RejectedError{Source: name, Err: fmt.Errorf("check bundle: %w", err)}
			var se *policies.SetError
			if errors.As(err, &se) {
				rerr.Diagnostics = se.Diagnostics
			}
			s.log.Warn("policy bundle failed its check", "source", name, "error", rerr)
			return rerr
		}
	}
	s.gen++
	s.sources = next
	s.current = candidate
	s.published = true
	s.builds.WithLabelValues("published").Inc()
	s.documents.Set(float64(countDocuments(&candidate.Set)))
	s.log.Info("policy bundle published", "source", name, "version", candidate.Version,
		"documents", countDocuments(&candidate.Set), "warnings", len(diags.Warnings()))
	ids := make([]uint64, 0, len(s.subs))
	for id := range s.subs {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	for _, id := range ids {
		s.subs[id](candidate)
	}
	return nil
}

func checkSourceName(name string) error {
	if name == "" || len(name) > maxSourceName {
		return fmt.Errorf("store: source name must have 1 to %d bytes", maxSourceName)
	}
	return nil
}

// merge concatenates the sources' documents in source-name order, so that the
// result (and its hash) does not depend on the order of updates. Mesh
// settings may come from at most one source, or be identical.
func merge(sources map[string]policies.Set) (policies.Set, error) {
	names := make([]string, 0, len(sources))
	for n := range sources {
		names = append(names, n)
	}
	sort.Strings(names)
	var out policies.Set
	settingsFrom := ""
	owner := map[string]string{} // Kind/namespace/name → source
	var errs []error
	for _, n := range names {
		src := sources[n]
		for _, key := range objectKeys(&src) {
			if prev, ok := owner[key]; ok && prev != n {
				errs = append(errs, fmt.Errorf("%s is defined by sources %q and %q", key, prev, n))
				continue
			}
			owner[key] = n
		}
		if !src.Settings.IsZero() {
			if settingsFrom != "" && !out.Settings.Equal(&src.Settings) {
				errs = append(errs, fmt.Errorf("sources %q and %q both set different MeshSettings", settingsFrom, n))
			}
			out.Settings = src.Settings
			settingsFrom = n
		}
		out.AuthorizationPolicies = append(out.AuthorizationPolicies, src.AuthorizationPolicies...)
		out.RequestAuthentications = append(out.RequestAuthentications, src.RequestAuthentications...)
		out.IdentityPolicies = append(out.IdentityPolicies, src.IdentityPolicies...)
		out.DefaultDenies = append(out.DefaultDenies, src.DefaultDenies...)
		out.RouteOverrides = append(out.RouteOverrides, src.RouteOverrides...)
		out.TrafficBaselines = append(out.TrafficBaselines, src.TrafficBaselines...)
		out.AnomalyProfiles = append(out.AnomalyProfiles, src.AnomalyProfiles...)
		out.Quarantines = append(out.Quarantines, src.Quarantines...)
	}
	if len(errs) > 0 {
		return policies.Set{}, errors.Join(errs...)
	}
	return out, nil
}

// objectKeys lists "Kind/namespace/name" of every document in s.
func objectKeys(s *policies.Set) []string {
	keys := make([]string, 0, countDocuments(s))
	add := func(kind string, m policies.ObjectMeta) {
		keys = append(keys, kind+"/"+m.Namespace+"/"+m.Name)
	}
	for i := range s.AuthorizationPolicies {
		add(policies.KindAuthorizationPolicy, s.AuthorizationPolicies[i].Metadata)
	}
	for i := range s.RequestAuthentications {
		add(policies.KindRequestAuthentication, s.RequestAuthentications[i].Metadata)
	}
	for i := range s.IdentityPolicies {
		add(policies.KindIdentityPolicy, s.IdentityPolicies[i].Metadata)
	}
	for i := range s.DefaultDenies {
		add(policies.KindDefaultDeny, s.DefaultDenies[i].Metadata)
	}
	for i := range s.RouteOverrides {
		add(policies.KindRouteOverride, s.RouteOverrides[i].Metadata)
	}
	for i := range s.TrafficBaselines {
		add(policies.KindTrafficBaseline, s.TrafficBaselines[i].Metadata)
	}
	for i := range s.AnomalyProfiles {
		add(policies.KindAnomalyProfile, s.AnomalyProfiles[i].Metadata)
	}
	for i := range s.Quarantines {
		add(policies.KindQuarantine, s.Quarantines[i].Metadata)
	}
	return keys
}

func countDocuments(s *policies.Set) int {
	return len(s.AuthorizationPolicies) + len(s.RequestAuthentications) + len(s.IdentityPolicies) + len(s.DefaultDenies) +
		len(s.RouteOverrides) + len(s.TrafficBaselines) + len(s.AnomalyProfiles) + len(s.Quarantines)
}
