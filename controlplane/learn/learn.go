// Package learn builds a traffic baseline from observed edges (caller SPIFFE
// ID → destination service → route, method) reported by wasm filters and
// authz servers, and drafts least-privilege policies from it for review:
// one Istio AuthorizationPolicy per destination service and a meshguard
// TrafficBaseline.
//
// With a state store the learner flushes what it observed every few
// seconds into one baseline per destination, merged with what the other
// replicas stored; observations not flushed yet are the only ones a crash
// can lose.
package learn

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshguard/meshguard/controlplane/state"
	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/wire"
)

// Edge is one learned edge.
type Edge struct {
	Source      string    `json:"source"`
	Destination string    `json:"destination"`
	Routes      []string  `json:"routes,omitempty"`
	Methods     []string  `json:"methods,omitempty"`
	Count       uint64    `json:"count"`
	FirstSeen   time.Time `json:"firstSeen"`
	LastSeen    time.Time `json:"lastSeen"`
}

// Limits bound what the learner keeps, so that reporters cannot grow it
// without limit.
const (
	defaultMaxEdges  = 50000
	maxPerEdgeValues = 64
	maxNameLen       = 253
	// maxEdgesPerBaseline bounds one stored baseline (one Kubernetes
	// object: it must stay well under etcd's 1.5 MiB).
	maxEdgesPerBaseline = 1000
)

type edgeKey struct{ source, destination string }

type edgeState struct {
	routes, methods map[string]struct{}
	count           uint64
	first, last     time.Time
}

// Store is the part of a state store the learner persists to.
type Store interface {
	Baselines() []*state.Baseline
	UpdateBaseline(ctx context.Context, destination string, fn state.BaselineUpdate) (*state.Baseline, error)
}

// Options configure a Learner.
type Options struct {
	// MaxEdges bounds the edges kept (0: 50,000).
	MaxEdges int
	Now      func() time.Time
	// Store, when set, receives the learned edges on every Flush, merged
	// with what every replica learned; Edges reads them back. Without it
	// the learner keeps everything in memory (tests, the demo).
	Store      Store
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Learner accumulates edges. It is safe for concurrent use.
type Learner struct {
	now      func() time.Time
	maxEdges int
	store    Store
	log      *slog.Logger
	flushes  *prometheus.CounterVec

	flushMu sync.Mutex // one flush at a time
	mu      sync.Mutex
	edges   map[edgeKey]*edgeState // not yet flushed (all of them without a store)
	dropped uint64
}

// New returns a learner keeping at most maxEdges edges (0: 50,000) in
// memory.
func New(maxEdges int, now func() time.Time) *Learner {
	l, _ := NewWithOptions(Options{MaxEdges: maxEdges, Now: now})
	return l
}

// NewWithOptions returns a learner.
func NewWithOptions(o Options) (*Learner, error) {
	if o.MaxEdges <= 0 {
		o.MaxEdges = defaultMaxEdges
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	l := &Learner{now: o.Now, maxEdges: o.MaxEdges, store: o.Store, log: log, edges: map[edgeKey]*edgeState{},
		flushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshguard_controlplane_baseline_flushes_total",
			Help: "Learned-edge writes to the state store, by result (ok, error: kept and retried).",
		}, []string{"result"})}
	l.flushes.WithLabelValues("ok")
	l.flushes.WithLabelValues("error")
	if o.Registerer != nil {
		if err := o.Registerer.Register(l.flushes); err != nil {
			return nil, fmt.Errorf("learn: register metrics: %w", err)
		}
	}
	return l, nil
}

// Observe records the edge events of a batch; other kinds are ignored.
// Events whose source is not a SPIFFE ID or whose names are unreasonable
// are dropped.
func (l *Learner) Observe(events []wire.Event) {
	now := l.now().UTC()
	stored := 0
	if l.store != nil {
		for _, b := range l.store.Baselines() {
			stored += len(b.Edges)
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, ev := range events {
		if ev.Kind != wire.EventEdge && ev.Kind != wire.EventDecision {
			continue
		}
		if _, err := spiffeid.FromString(ev.Source); err != nil || !validName(ev.Destination) {
			l.dropped++
			continue
		}
		k := edgeKey{ev.Source, ev.Destination}
		st, ok := l.edges[k]
		if !ok {
			if stored+len(l.edges) >= l.maxEdges {
				l.dropped++
				continue
			}
			st = &edgeState{routes: map[string]struct{}{}, methods: map[string]struct{}{}, first: now}
			l.edges[k] = st
		}
		n := ev.Count
		if n == 0 {
			n = 1
		}
		st.count += n
		st.last = now
		if ev.Route != "" && validName(ev.Route) && len(st.routes) < maxPerEdgeValues {
			st.routes[ev.Route] = struct{}{}
		}
		if m := strings.ToUpper(ev.Method); m != "" && validMethod(m) && len(st.methods) < maxPerEdgeValues {
			st.methods[m] = struct{}{}
		}
	}
}

// Dropped is how many events were not recorded.
func (l *Learner) Dropped() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.dropped
}

// Edges returns the learned edges, what every replica stored merged with
// what this one has not flushed yet, sorted by destination then source.
func (l *Learner) Edges() []Edge {
	merged := map[edgeKey]*Edge{}
	if l.store != nil {
		for _, b := range l.store.Baselines() {
			for _, e := range b.Edges {
				merged[edgeKey{e.Source, b.Destination}] = &Edge{Source: e.Source, Destination: b.Destination,
					Routes: slices.Clone(e.Routes), Methods: slices.Clone(e.Methods), Count: uint64(max(e.Count, 0)), FirstSeen: e.FirstSeen, LastSeen: e.LastSeen}
			}
		}
	}
	l.mu.Lock()
	for k, st := range l.edges {
		e, ok := merged[k]
		if !ok {
			e = &Edge{Source: k.source, Destination: k.destination, FirstSeen: st.first}
			merged[k] = e
		}
		e.Routes = union(e.Routes, keys(st.routes))
		e.Methods = union(e.Methods, keys(st.methods))
		e.Count += st.count
		if st.first.Before(e.FirstSeen) {
			e.FirstSeen = st.first
		}
		if st.last.After(e.LastSeen) {
			e.LastSeen = st.last
		}
	}
	l.mu.Unlock()
	out := make([]Edge, 0, len(merged))
	for _, e := range merged {
		out = append(out, *e)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Destination != out[j].Destination {
			return out[i].Destination < out[j].Destination
		}
		return out[i].Source < out[j].Source
	})
	return out
}

// union merges two sorted sets, keeping at most maxPerEdgeValues.
func union(a, b []string) []string {
	out := slices.Concat(a, b)
	slices.Sort(out)
	out = slices.Compact(out)
	if len(out) > maxPerEdgeValues {
		out = out[:maxPerEdgeValues]
	}
	return out
}

// Flush merges the edges learned since the last flush into the store, one
// baseline per destination. What the store does not take is kept for the
// next flush. Without a store it does nothing.
func (l *Learner) Flush(ctx context.Context) error {
	if l.store == nil {
		return nil
	}
	l.flushMu.Lock()
	defer l.flushMu.Unlock()
	l.mu.Lock()
	delta := l.edges
	l.edges = map[edgeKey]*edgeState{}
	l.mu.Unlock()
	byDest := map[string]map[string]*edgeState{}
	for k, st := range delta {
		if byDest[k.destination] == nil {
			byDest[k.destination] = map[string]*edgeState{}
		}
		byDest[k.destination][k.source] = st
	}
	var errs []error
	for dest, edges := range byDest {
		var dropped int
		_, err := l.store.UpdateBaseline(ctx, dest, func(cur *state.Baseline) (*state.Baseline, error) {
			next, d := mergeBaseline(cur, dest, edges)
			dropped = d
			return next, nil
		})
		if err != nil {
			l.flushes.WithLabelValues("error").Inc()
			errs = append(errs, fmt.Errorf("learn: store the baseline of %s: %w", dest, err))
			l.putBack(dest, edges)
			continue
		}
		l.flushes.WithLabelValues("ok").Inc()
		if dropped > 0 {
			l.mu.Lock()
			l.dropped += uint64(dropped)
			l.mu.Unlock()
		}
	}
	return errors.Join(errs...)
}

// putBack returns edges that could not be stored to the pending set.
func (l *Learner) putBack(dest string, edges map[string]*edgeState) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for src, st := range edges {
		k := edgeKey{src, dest}
		cur, ok := l.edges[k]
		if !ok {
			l.edges[k] = st
			continue
		}
		cur.count += st.count
		for r := range st.routes {
			if len(cur.routes) < maxPerEdgeValues {
				cur.routes[r] = struct{}{}
			}
		}
		for m := range st.methods {
			if len(cur.methods) < maxPerEdgeValues {
				cur.methods[m] = struct{}{}
			}
		}
		if st.first.Before(cur.first) {
			cur.first = st.first
		}
		if st.last.After(cur.last) {
			cur.last = st.last
		}
	}
}

// mergeBaseline adds edges to a copy of cur; it returns how many new edges
// did not fit.
func mergeBaseline(cur *state.Baseline, dest string, edges map[string]*edgeState) (*state.Baseline, int) {
	if cur == nil {
		cur = &state.Baseline{Destination: dest}
	}
	index := make(map[string]int, len(cur.Edges))
	for i, e := range cur.Edges {
		index[e.Source] = i
	}
	dropped := 0
	for _, src := range slices.Sorted(maps.Keys(edges)) {
		st := edges[src]
		i, ok := index[src]
		if !ok {
			if len(cur.Edges) >= maxEdgesPerBaseline {
				dropped++
				continue
			}
			cur.Edges = append(cur.Edges, state.Edge{Source: src, FirstSeen: st.first})
			i = len(cur.Edges) - 1
			index[src] = i
		}
		e := &cur.Edges[i]
		e.Routes = union(e.Routes, keys(st.routes))
		e.Methods = union(e.Methods, keys(st.methods))
		e.Count += int64(min(st.count, uint64(math.MaxInt64-max(e.Count, 0))))
		if e.FirstSeen.IsZero() || st.first.Before(e.FirstSeen) {
			e.FirstSeen = st.first
		}
		if st.last.After(e.LastSeen) {
			e.LastSeen = st.last
		}
	}
	slices.SortFunc(cur.Edges, func(a, b state.Edge) int { return strings.Compare(a.Source, b.Source) })
	return cur, dropped
}

// Run flushes every interval until ctx is done, then once more.
func (l *Learner) Run(ctx context.Context, interval time.Duration) {
	if l.store == nil {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if err := l.Flush(fctx); err != nil {
				l.log.Error("learned edges not stored at shutdown", "error", err)
			}
			cancel()
			return
		case <-t.C:
			if err := l.Flush(ctx); err != nil {
				l.log.Error("learned edges not stored; kept and retried", "error", err)
			}
		}
	}
}

func keys(m map[string]struct{}) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func validName(s string) bool {
	if s == "" || len(s) > maxNameLen {
		return false
	}
	for _, c := range s {
		if !(c == '-' || c == '.' || c == '_' || c == ':' || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
			return false
		}
	}
	return true
}

func validMethod(m string) bool {
	if len(m) > 32 {
		return false
	}
	for _, c := range m {
		if c < 'A' || c > 'Z' {
			return false
		}
	}
	return true
}

// Draft is what `meshguard baseline export` writes.
type Draft struct {
	// AuthorizationPolicies: one ALLOW policy per destination service.
	AuthorizationPolicies []policies.AuthorizationPolicy
	Baseline              policies.TrafficBaseline
}

// DraftOptions tune the draft.
type DraftOptions struct {
	// DefaultNamespace is used for destinations that do not name one
	// ("svc" rather than "svc.ns[.svc.cluster.local]").
	DefaultNamespace string
	// BaselineNamespace holds the TrafficBaseline (the root namespace).
	BaselineNamespace string
	// SelectorLabel selects a destination's workloads: label=<service>
	// (default "app").
	SelectorLabel string
}

// MakeDraft turns edges into least-privilege policies: each destination
// admits exactly the principals seen calling it, with the methods seen; the
// baseline lists the same edges with their routes, in shadow mode so that
// applying it reports before it denies.
func MakeDraft(edges []Edge, o DraftOptions) (Draft, error) {
	if o.DefaultNamespace == "" {
		o.DefaultNamespace = "default"
	}
	if o.BaselineNamespace == "" {
		o.BaselineNamespace = policies.DefaultRootNamespace
	}
	if o.SelectorLabel == "" {
		o.SelectorLabel = "app"
	}
	byDest := map[string][]Edge{}
	for _, e := range edges {
		byDest[e.Destination] = append(byDest[e.Destination], e)
	}
	var d Draft
	dests := make([]string, 0, len(byDest))
	for k := range byDest {
		dests = append(dests, k)
	}
	sort.Strings(dests)
	for _, dest := range dests {
		svc, ns := splitService(dest, o.DefaultNamespace)
		es := byDest[dest]
		sort.Slice(es, func(i, j int) bool { return es[i].Source < es[j].Source })
		var rules []policies.Rule
		for _, e := range es {
			id, err := spiffeid.FromString(e.Source)
			if err != nil {
				return Draft{}, fmt.Errorf("learn: edge source %q: %w", e.Source, err)
			}
			r := policies.Rule{From: []policies.RuleFrom{{Source: policies.Source{
				Principals: []string{strings.TrimPrefix(id.String(), "spiffe://")},
			}}}}
			if len(e.Methods) > 0 {
				r.To = []policies.RuleTo{{Operation: policies.Operation{Methods: e.Methods}}}
			}
			rules = append(rules, r)
			d.Baseline.Spec.Edges = append(d.Baseline.Spec.Edges, policies.Edge{Source: e.Source, Destination: dest, Routes: e.Routes})
		}
		d.AuthorizationPolicies = append(d.AuthorizationPolicies, policies.AuthorizationPolicy{
			APIVersion: policies.APIVersionIstioV1,
			Kind:       policies.KindAuthorizationPolicy,
			Metadata: policies.ObjectMeta{
				Name:      "meshguard-learned-" + svc,
				Namespace: ns,
				Labels:    map[string]string{"meshguard.dev/generated": "baseline"},
			},
			Spec: policies.AuthorizationPolicySpec{
				Selector: &policies.WorkloadSelector{MatchLabels: map[string]string{o.SelectorLabel: svc}},
				Action:   "ALLOW",
				Rules:    rules,
			},
		})
	}
	d.Baseline.APIVersion = policies.APIVersionMeshguard
	d.Baseline.Kind = policies.KindTrafficBaseline
	d.Baseline.Metadata = policies.ObjectMeta{Name: "meshguard-learned", Namespace: o.BaselineNamespace}
	d.Baseline.Spec.Mode = policies.BaselineShadow
	// A draft that does not validate is a bug here, not something to hand
	// to a reviewer.
	set := policies.Set{AuthorizationPolicies: d.AuthorizationPolicies, TrafficBaselines: []policies.TrafficBaseline{d.Baseline}}
	if err := policies.Validate(&set).Err(); err != nil {
		return Draft{}, fmt.Errorf("learn: drafted policies do not validate: %w", err)
	}
	return d, nil
}

// splitService reads "svc", "svc.ns", "svc.ns.svc.cluster.local" (and a
// port suffix).
func splitService(dest, defNS string) (svc, ns string) {
	if i := strings.LastIndexByte(dest, ':'); i >= 0 {
		dest = dest[:i]
	}
	parts := strings.Split(dest, ".")
	if len(parts) >= 2 {
		return parts[0], parts[1]
	}
	return parts[0], defNS
}
