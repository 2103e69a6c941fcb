// Package learn builds a traffic baseline from observed edges (caller SPIFFE
// ID → destination service → route, method) reported by wasm filters and
// authz servers, and drafts least-privilege policies from it for review:
// one Istio AuthorizationPolicy per destination service and a meshguard
// TrafficBaseline.
package learn

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

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
)

type edgeKey struct{ source, destination string }

type edgeState struct {
	routes, methods map[string]struct{}
	count           uint64
	first, last     time.Time
}

// Learner accumulates edges. It is safe for concurrent use.
type Learner struct {
	now      func() time.Time
	maxEdges int

	mu      sync.Mutex
	edges   map[edgeKey]*edgeState
	dropped uint64
}

// New returns a learner keeping at most maxEdges edges (0: 50,000).
func New(maxEdges int, now func() time.Time) *Learner {
	if maxEdges <= 0 {
		maxEdges = defaultMaxEdges
	}
	if now == nil {
		now = time.Now
	}
	return &Learner{now: now, maxEdges: maxEdges, edges: map[edgeKey]*edgeState{}}
}

// Observe records the edge events of a batch; other kinds are ignored.
// Events whose source is not a SPIFFE ID or whose names are unreasonable
// are dropped.
func (l *Learner) Observe(events []wire.Event) {
	now := l.now().UTC()
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
			if len(l.edges) >= l.maxEdges {
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

// Edges returns the learned edges sorted by destination then source.
func (l *Learner) Edges() []Edge {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]Edge, 0, len(l.edges))
	for k, st := range l.edges {
		out = append(out, Edge{
			Source: k.source, Destination: k.destination,
			Routes: keys(st.routes), Methods: keys(st.methods),
			Count: st.count, FirstSeen: st.first, LastSeen: st.last,
		})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Destination != out[j].Destination {
			return out[i].Destination < out[j].Destination
		}
		return out[i].Source < out[j].Source
	})
	return out
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
		o.BaselineNamespace = "istio-system"
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
