package console

import (
	"math"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/wire"
)

// Traffic classes of an edge, in the order of EdgeView.Rates.
const (
	classAllow = iota
	classDeny
	classDryRun
	classAnomaly
	nClasses
)

// Unauthenticated is the node that stands for callers without a SPIFFE ID.
const Unauthenticated = "unauthenticated"

// rateTau is the time constant of the rates: an edge's rate is its requests
// per second averaged with an exponential decay of one minute, as a load
// average is. The page decays them the same way between updates.
const rateTau = 60 * time.Second

// Bounds of the model, so that reporters cannot grow it without limit.
const (
	defaultMaxNodes = 10000
	defaultMaxEdges = 50000
	feedKeep        = 1000
	nodeRecentKeep  = 100
	edgeRoutesKeep  = 16
	snapshotFeed    = 200
)

// Feed entry kinds.
const (
	KindDeny       = "deny"
	KindDryRun     = "dry-run"
	KindDetection  = "detection"
	KindNewEdge    = "new-edge"
	KindQuarantine = "quarantine"
	KindExtend     = "extend"
	KindRelease    = "release"
	KindExpire     = "expire"
)

// FeedEntry is one line of the live feed: a denial or dry-run would-deny
// (counted since the reporter's last report), a detection, an edge not in
// the traffic baseline, or a quarantine change.
type FeedEntry struct {
	Seq         uint64  `json:"seq"`
	Time        int64   `json:"t"` // unix milliseconds
	Kind        string  `json:"kind"`
	Source      string  `json:"src,omitempty"`
	Destination string  `json:"dst,omitempty"`
	Service     string  `json:"svc,omitempty"` // the destination service the event named
	Route       string  `json:"route,omitempty"`
	Method      string  `json:"method,omitempty"`
	Reason      string  `json:"reason,omitempty"`
	Policy      string  `json:"policy,omitempty"`
	Rule        string  `json:"rule,omitempty"`
	Count       uint64  `json:"count,omitempty"`
	Detector    string  `json:"detector,omitempty"`
	Response    string  `json:"response,omitempty"`
	Score       float64 `json:"score,omitempty"`
	Detail      string  `json:"detail,omitempty"`
	By          string  `json:"by,omitempty"`
	Expires     int64   `json:"expires,omitempty"` // unix milliseconds
}

// NodeView is a workload as the page draws it.
type NodeView struct {
	ID          string `json:"id"`
	Name        string `json:"name"`
	Namespace   string `json:"ns"`
	Known       bool   `json:"known,omitempty"` // listed in the mesh description
	Quarantined bool   `json:"q,omitempty"`
	QReason     string `json:"qReason,omitempty"`
	Detections  uint64 `json:"det,omitempty"`
	LastDetect  int64  `json:"lastDet,omitempty"` // unix milliseconds
}

// EdgeView is caller → workload as the page draws it. Rates are requests
// per second by class (allowed, denied, dry-run, anomalous) at At; they
// decay with rateTau.
type EdgeView struct {
	ID     string            `json:"id"`
	Source string            `json:"s"`
	Target string            `json:"t"`
	Rates  [nClasses]float64 `json:"r"`
	Totals [nClasses]uint64  `json:"n"`
	At     int64             `json:"at"` // unix milliseconds
	New    bool              `json:"new,omitempty"`
	Routes []string          `json:"routes,omitempty"`
	Last   *EdgeDecision     `json:"last,omitempty"`
}

// EdgeDecision is the last denial or would-deny on an edge.
type EdgeDecision struct {
	Kind   string `json:"kind"`
	Reason string `json:"reason"`
	Policy string `json:"policy,omitempty"`
	Rule   string `json:"rule,omitempty"`
	Route  string `json:"route,omitempty"`
	Time   int64  `json:"t"`
}

// Workload is a workload the console knows before it sees traffic (the
// mesh description's).
type Workload struct {
	ID        spiffeid.ID
	Name      string
	Namespace string
	Service   string
	Labels    map[string]string
}

type ewma struct {
	v  float64
	at int64 // unix nanoseconds
}

func (r *ewma) add(n float64, now int64) {
	r.v = r.valueAt(now) + n/rateTau.Seconds()
	r.at = now
}

func (r ewma) valueAt(now int64) float64 {
	if r.at == 0 {
		return 0
	}
	dt := float64(now-r.at) / 1e9
	if dt < 0 {
		dt = 0
	}
	return r.v * math.Exp(-dt/rateTau.Seconds())
}

type node struct {
	view    NodeView
	labels  map[string]string
	service string
	recent  []FeedEntry // ring, oldest first once full
	next    int
}

func (n *node) remember(e FeedEntry) {
	if len(n.recent) < nodeRecentKeep {
		n.recent = append(n.recent, e)
		return
	}
	n.recent[n.next] = e
	n.next = (n.next + 1) % nodeRecentKeep
}

// recentEntries returns the node's entries, newest first.
func (n *node) recentEntries() []FeedEntry {
	out := make([]FeedEntry, 0, len(n.recent))
	for i := len(n.recent) - 1; i >= 0; i-- {
		out = append(out, n.recent[(n.next+i)%len(n.recent)])
	}
	return out
}

type edgeKey struct{ src, dst string }

type edge struct {
	id       string
	key      edgeKey
	rates    [nClasses]ewma
	totals   [nClasses]uint64
	isNew    bool
	newSvc   string // service and route of the unknown-edge report
	newRoute string
	routes   []string
	last     *EdgeDecision
}

func (e *edge) view(now int64) EdgeView {
	v := EdgeView{ID: e.id, Source: e.key.src, Target: e.key.dst, Totals: e.totals, At: now / 1e6, New: e.isNew,
		Routes: append([]string(nil), e.routes...)}
	for i := range e.rates {
		v.Rates[i] = round3(e.rates[i].valueAt(now))
	}
	if e.last != nil {
		l := *e.last
		v.Last = &l
	}
	return v
}

func round3(f float64) float64 { return math.Round(f*1000) / 1000 }

func (e *edge) route(r string) {
	if r == "" || len(e.routes) >= edgeRoutesKeep {
		return
	}
	for _, x := range e.routes {
		if x == r {
			return
		}
	}
	e.routes = append(e.routes, r)
}

// model is the console's picture of the mesh: nodes, edges with rates, the
// feed, and what changed since the last update was cut. Safe for
// concurrent use.
type model struct {
	now                func() time.Time
	maxNodes, maxEdges int

	mu       sync.Mutex
	nodes    map[string]*node
	edges    map[edgeKey]*edge
	edgeSeq  uint64
	feed     []FeedEntry // ring
	feedNext int
	feedSeq  uint64
	tick     uint64
	dropped  uint64
	marked   int // edges marked as not in the baseline

	dirtyNodes map[string]struct{}
	dirtyEdges map[*edge]struct{}
	pending    []FeedEntry

	// Quarantine history already turned into feed entries.
	histTime time.Time
	histSeen map[string]bool
}

func newModel(now func() time.Time, maxNodes, maxEdges int, inventory []Workload) *model {
	if maxNodes <= 0 {
		maxNodes = defaultMaxNodes
	}
	if maxEdges <= 0 {
		maxEdges = defaultMaxEdges
	}
	m := &model{now: now, maxNodes: maxNodes, maxEdges: maxEdges, nodes: map[string]*node{}, edges: map[edgeKey]*edge{},
		dirtyNodes: map[string]struct{}{}, dirtyEdges: map[*edge]struct{}{}, histSeen: map[string]bool{}}
	for _, w := range inventory {
		if w.ID.IsZero() {
			continue
		}
		n := m.node(w.ID.String())
		if n == nil {
			break
		}
		n.view.Known = true
		if w.Name != "" {
			n.view.Name = w.Name
		}
		if w.Namespace != "" {
			n.view.Namespace = w.Namespace
		}
		n.labels, n.service = w.Labels, w.Service
	}
	return m
}

// nameOf derives a display name and namespace from an identity: Istio's
// /ns/<namespace>/sa/<service account>, else the last path segment.
func nameOf(id string) (name, ns string) {
	if id == Unauthenticated {
		return "unauthenticated callers", ""
	}
	sid, err := spiffeid.FromString(id)
	if err != nil {
		return id, ""
	}
	segs := strings.Split(strings.TrimPrefix(sid.Path(), "/"), "/")
	if len(segs) >= 4 && segs[0] == "ns" && segs[2] == "sa" {
		ns = segs[1]
	}
	name = segs[len(segs)-1]
	if name == "" {
		name = sid.TrustDomain().Name()
	}
	return name, ns
}

// node returns the node of id, creating it; nil when the model is full.
// Call with m.mu held (or before the model is shared).
func (m *model) node(id string) *node {
	if n, ok := m.nodes[id]; ok {
		return n
	}
	if len(m.nodes) >= m.maxNodes {
		return nil
	}
	name, ns := nameOf(id)
	n := &node{view: NodeView{ID: id, Name: name, Namespace: ns}}
	m.nodes[id] = n
	m.dirtyNodes[id] = struct{}{}
	return n
}

// edge returns the edge src → dst, creating it and its nodes; nil when the
// model is full. Call with m.mu held.
func (m *model) edge(src, dst string) *edge {
	k := edgeKey{src, dst}
	if e, ok := m.edges[k]; ok {
		return e
	}
	if len(m.edges) >= m.maxEdges {
		return nil
	}
	if m.node(src) == nil || m.node(dst) == nil {
		return nil
	}
	m.edgeSeq++
	e := &edge{id: "e" + strconv.FormatUint(m.edgeSeq, 36), key: k}
	m.edges[k] = e
	return e
}

// identity validates an identity from an event: a SPIFFE ID, or "" for a
// caller without one.
func identity(s string) (string, bool) {
	if s == "" {
		return Unauthenticated, true
	}
	id, err := spiffeid.FromString(s)
	if err != nil {
		return "", false
	}
	return id.String(), true
}

// reporterIdentity is the destination of a reporter's events: the
// authenticated SPIFFE ID, or (without TLS) the claimed one.
func reporterIdentity(reporter string) (string, bool) {
	reporter = strings.TrimPrefix(reporter, "unauthenticated:")
	id, err := spiffeid.FromString(reporter)
	if err != nil {
		return "", false
	}
	return id.String(), true
}

// observe takes a batch of events a reporter posted.
func (m *model) observe(reporter string, events []wire.Event) {
	now := m.now()
	nowNs, nowMs := now.UnixNano(), now.UnixMilli()
	m.mu.Lock()
	defer m.mu.Unlock()
	dst, ok := reporterIdentity(reporter)
	if !ok {
		m.dropped += uint64(len(events))
		return
	}
	for i := range events {
		ev := &events[i]
		src, ok := identity(ev.Source)
		if !ok {
			m.dropped++
			continue
		}
		if src == dst && ev.Destination != "" {
			// A sidecar's report of its own workload's outbound call (it
			// names the destination called): the graph's edges are the
			// destinations' reports of their callers.
			continue
		}
		e := m.edge(src, dst)
		if e == nil {
			m.dropped++
			continue
		}
		route := clip(ev.Route, maxTextLen)
		switch ev.Kind {
		case wire.EventDecision:
			class := -1
			switch ev.Response {
			case "allow":
				class = classAllow
			case "deny":
				class = classDeny
			case "dry-run":
				class = classDryRun
			}
			reason, policy, rule, ok := parseDetail(ev.Detail)
			if class < 0 || !ok {
				m.dropped++
				continue
			}
			n := ev.Count
			if n == 0 {
				n = 1
			}
			e.rates[class].add(float64(n), nowNs)
			e.totals[class] += n
			e.route(route)
			if class != classAllow {
				kind := KindDeny
				if class == classDryRun {
					kind = KindDryRun
				}
				e.last = &EdgeDecision{Kind: kind, Reason: reason, Policy: policy, Rule: rule, Route: route, Time: nowMs}
				m.add(FeedEntry{Time: nowMs, Kind: kind, Source: src, Destination: dst, Route: route,
					Reason: reason, Policy: policy, Rule: rule, Count: n})
			}
		case wire.EventAnomaly:
			e.rates[classAnomaly].add(1, nowNs)
			e.totals[classAnomaly]++
			e.route(route)
			if sn := m.nodes[src]; sn != nil {
				sn.view.Detections++
				sn.view.LastDetect = nowMs
				m.dirtyNodes[src] = struct{}{}
			}
			fe := FeedEntry{Time: nowMs, Kind: KindDetection, Source: src, Destination: dst, Route: route,
				Method: clip(ev.Method, 16), Detector: clip(ev.Detector, 32), Response: clip(ev.Response, 32),
				Score: round3(ev.Score), Detail: clip(ev.Detail, maxTextLen), Count: ev.Count}
			if ev.Profile != "" {
				fe.Policy, fe.Rule = "AnomalyProfile/"+clip(ev.Profile, maxRefLen), fe.Detector
			}
			m.add(fe)
		case wire.EventEdge:
			e.route(route)
			if strings.HasPrefix(ev.Detail, "unknown") && !e.isNew {
				e.isNew, e.newSvc, e.newRoute = true, clip(ev.Destination, maxTextLen), route
				m.marked++
				m.add(FeedEntry{Time: nowMs, Kind: KindNewEdge, Source: src, Destination: dst, Route: route,
					Service: e.newSvc, Detector: clip(ev.Detector, 32), Detail: clip(ev.Detail, maxTextLen)})
			}
		default:
			m.dropped++
			continue
		}
		m.dirtyEdges[e] = struct{}{}
	}
}

// decisionKey groups an authz server's denials of one batch.
type decisionKey struct {
	src, dst, route, reason, policy, rule, method string
	class                                         int
}

// observeDecisions takes the decisions an authz server shipped: its
// denials and dry-run would-denies are drawn as the filters' are (the
// destination is the decision's target, not the reporter), folded per
// edge, route, outcome, reason and rule within the batch. Allowed
// requests are not drawn: the filters count them, and an authz server's
// allows are sampled.
func (m *model) observeDecisions(ds []wire.Decision) {
	now := m.now()
	nowNs, nowMs := now.UnixNano(), now.UnixMilli()
	counts := map[decisionKey]uint64{}
	var order []decisionKey
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := range ds {
		d := &ds[i]
		class := classDeny
		switch {
		case !d.Allowed:
		case d.WouldDeny:
			class = classDryRun
		default:
			continue
		}
		src, ok := identity(d.Source)
		if !ok || !reasonCode(d.Reason) || len(d.Policy)+len(d.Rule) > maxRefLen {
			m.dropped++
			continue
		}
		dst, ok := reporterIdentity(d.Destination)
		if !ok {
			m.dropped++
			continue
		}
		k := decisionKey{src: src, dst: dst, route: clip(d.Route, maxTextLen), reason: d.Reason, policy: d.Policy, rule: d.Rule,
			method: clip(d.Method, 16), class: class}
		if _, seen := counts[k]; !seen {
			order = append(order, k)
		}
		counts[k]++
	}
	for _, k := range order {
		e := m.edge(k.src, k.dst)
		if e == nil {
			m.dropped += counts[k]
			continue
		}
		n := counts[k]
		e.rates[k.class].add(float64(n), nowNs)
		e.totals[k.class] += n
		e.route(k.route)
		kind := KindDeny
		if k.class == classDryRun {
			kind = KindDryRun
		}
		e.last = &EdgeDecision{Kind: kind, Reason: k.reason, Policy: k.policy, Rule: k.rule, Route: k.route, Time: nowMs}
		m.add(FeedEntry{Time: nowMs, Kind: kind, Source: k.src, Destination: k.dst, Route: k.route, Method: k.method,
			Reason: k.reason, Policy: k.policy, Rule: k.rule, Count: n, Detail: "ext_authz"})
		m.dirtyEdges[e] = struct{}{}
	}
}

// add appends a feed entry and remembers it on the nodes it names. Call
// with m.mu held.
func (m *model) add(e FeedEntry) {
	m.feedSeq++
	e.Seq = m.feedSeq
	if len(m.feed) < feedKeep {
		m.feed = append(m.feed, e)
	} else {
		m.feed[m.feedNext] = e
		m.feedNext = (m.feedNext + 1) % feedKeep
	}
	if len(m.pending) < feedKeep {
		m.pending = append(m.pending, e)
	}
	if n := m.nodes[e.Source]; n != nil {
		n.remember(e)
	}
	if e.Destination != e.Source {
		if n := m.nodes[e.Destination]; n != nil {
			n.remember(e)
		}
	}
}

// recentFeed returns up to n feed entries, oldest first.
func (m *model) recentFeed(n int) []FeedEntry {
	l := len(m.feed)
	if n > l {
		n = l
	}
	out := make([]FeedEntry, 0, n)
	for i := l - n; i < l; i++ {
		out = append(out, m.feed[(m.feedNext+i)%l])
	}
	return out
}

// Snapshot is the whole picture, sent first on every stream.
type Snapshot struct {
	Seq        uint64      `json:"seq"`
	At         int64       `json:"at"`
	TauSeconds float64     `json:"tau"`
	Nodes      []NodeView  `json:"nodes"`
	Edges      []EdgeView  `json:"edges"`
	Feed       []FeedEntry `json:"feed"`
	Dropped    uint64      `json:"dropped"`
}

// Delta is what changed between two ticks.
type Delta struct {
	Seq   uint64      `json:"seq"`
	At    int64       `json:"at"`
	Nodes []NodeView  `json:"nodes,omitempty"`
	Edges []EdgeView  `json:"edges,omitempty"`
	Feed  []FeedEntry `json:"feed,omitempty"`
}

func (m *model) snapshot() Snapshot {
	now := m.now().UnixNano()
	m.mu.Lock()
	defer m.mu.Unlock()
	s := Snapshot{Seq: m.tick, At: now / 1e6, TauSeconds: rateTau.Seconds(), Dropped: m.dropped,
		Nodes: make([]NodeView, 0, len(m.nodes)), Edges: make([]EdgeView, 0, len(m.edges)), Feed: m.recentFeed(snapshotFeed)}
	for _, n := range m.nodes {
		s.Nodes = append(s.Nodes, n.view)
	}
	for _, e := range m.edges {
		s.Edges = append(s.Edges, e.view(now))
	}
	sort.Slice(s.Nodes, func(i, j int) bool { return s.Nodes[i].ID < s.Nodes[j].ID })
	sort.Slice(s.Edges, func(i, j int) bool { return s.Edges[i].ID < s.Edges[j].ID })
	return s
}

// cut returns what changed since the last cut, and false when nothing did.
func (m *model) cut() (Delta, bool) {
	now := m.now().UnixNano()
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.dirtyNodes) == 0 && len(m.dirtyEdges) == 0 && len(m.pending) == 0 {
		return Delta{}, false
	}
	m.tick++
	d := Delta{Seq: m.tick, At: now / 1e6, Feed: m.pending}
	for id := range m.dirtyNodes {
		if n := m.nodes[id]; n != nil {
			d.Nodes = append(d.Nodes, n.view)
		}
	}
	for e := range m.dirtyEdges {
		d.Edges = append(d.Edges, e.view(now))
	}
	clear(m.dirtyNodes)
	clear(m.dirtyEdges)
	m.pending = nil
	return d, true
}

// Quarantine is one quarantined identity.
type Quarantine struct {
	Identity  string    `json:"identity"`
	Reason    string    `json:"reason"`
	By        string    `json:"by"`
	Profile   string    `json:"profile,omitempty"`
	Detector  string    `json:"detector,omitempty"`
	CreatedAt time.Time `json:"createdAt"`
	ExpiresAt time.Time `json:"expiresAt,omitzero"`
	// Evidence are the detections that made it, as the reporters sent them.
	Evidence []Evidence `json:"evidence,omitempty"`
	// Pending: enforced by this replica, not stored yet (it retries).
	Pending bool `json:"pending,omitempty"`
}

// Evidence is one detection behind a quarantine.
type Evidence struct {
	Reporter    string    `json:"reporter"`
	Detector    string    `json:"detector,omitempty"`
	Destination string    `json:"destination,omitempty"`
	Route       string    `json:"route,omitempty"`
	Detail      string    `json:"detail,omitempty"`
	Received    time.Time `json:"received"`
}

// QuarantineChange is one record of the quarantine audit trail.
type QuarantineChange struct {
	Time     time.Time `json:"time"`
	Action   string    `json:"action"` // add, extend, release, expire
	Identity string    `json:"identity"`
	By       string    `json:"by"`
	Reason   string    `json:"reason,omitempty"`
	Expires  time.Time `json:"expiresAt,omitzero"`
}

// syncQuarantines marks the quarantined nodes and turns audit records not
// seen before into feed entries.
func (m *model) syncQuarantines(list []Quarantine, history []QuarantineChange) {
	m.mu.Lock()
	defer m.mu.Unlock()
	in := make(map[string]Quarantine, len(list))
	for _, q := range list {
		in[q.Identity] = q
	}
	for id, n := range m.nodes {
		q, ok := in[id]
		reason := clip(q.Reason, maxTextLen)
		if n.view.Quarantined != ok || n.view.QReason != reason {
			n.view.Quarantined, n.view.QReason = ok, reason
			m.dirtyNodes[id] = struct{}{}
		}
		delete(in, id)
	}
	for id, q := range in {
		if n := m.node(id); n != nil {
			n.view.Quarantined, n.view.QReason = true, clip(q.Reason, maxTextLen)
		}
	}
	for _, h := range history {
		if h.Time.Before(m.histTime) {
			continue
		}
		key := h.Time.Format(time.RFC3339Nano) + "|" + h.Action + "|" + h.Identity + "|" + h.By
		if h.Time.After(m.histTime) {
			m.histTime = h.Time
			clear(m.histSeen)
		} else if m.histSeen[key] {
			continue
		}
		m.histSeen[key] = true
		kind := h.Action
		switch h.Action {
		case "add":
			kind = KindQuarantine
		case "extend":
			kind = KindExtend
		case "release":
			kind = KindRelease
		case "expire":
			kind = KindExpire
		}
		e := FeedEntry{Time: h.Time.UnixMilli(), Kind: kind, Source: h.Identity, By: clip(h.By, maxTextLen),
			Detail: clip(h.Reason, maxTextLen)}
		if !h.Expires.IsZero() {
			e.Expires = h.Expires.UnixMilli()
		}
		m.add(e)
	}
}

// newEdges reports whether some edge is marked as not in the baseline.
func (m *model) newEdges() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.marked > 0
}

// rebaseline clears the mark of edges the traffic baseline now lists.
func (m *model) rebaseline(snap *policies.Snapshot) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, e := range m.edges {
		if !e.isNew {
			continue
		}
		id, err := spiffeid.FromString(e.key.src)
		if err != nil {
			continue
		}
		if knownEdge(snap, id, e.newSvc, e.newRoute) {
			e.isNew = false
			m.marked--
			m.dirtyEdges[e] = struct{}{}
		}
	}
}

// knownEdge asks the baseline as the filter's lateral detector does: the
// destination service as reported, then its Kubernetes short forms
// (reviews.default.svc.cluster.local → reviews.default → reviews).
func knownEdge(snap *policies.Snapshot, src spiffeid.ID, dest, route string) bool {
	if snap.KnownEdge(src, dest, route) {
		return true
	}
	if i := strings.Index(dest, ".svc"); i > 0 {
		if snap.KnownEdge(src, dest[:i], route) {
			return true
		}
		if j := strings.IndexByte(dest, '.'); j > 0 && j < i {
			return snap.KnownEdge(src, dest[:j], route)
		}
	}
	return false
}

// IdentityView is what the identity page shows of the model.
type IdentityView struct {
	Node    NodeView          `json:"node"`
	Labels  map[string]string `json:"labels,omitempty"`
	Service string            `json:"service,omitempty"`
	Out     []EdgeView        `json:"out"`
	In      []EdgeView        `json:"in"`
	Recent  []FeedEntry       `json:"recent"`
}

// identity returns the identity page's part of the model; ok is false when
// the model has never seen the identity.
func (m *model) identityView(id string) (IdentityView, bool) {
	now := m.now().UnixNano()
	m.mu.Lock()
	defer m.mu.Unlock()
	n, ok := m.nodes[id]
	if !ok {
		return IdentityView{}, false
	}
	v := IdentityView{Node: n.view, Labels: n.labels, Service: n.service, Out: []EdgeView{}, In: []EdgeView{}, Recent: n.recentEntries()}
	for k, e := range m.edges {
		if k.src == id {
			v.Out = append(v.Out, e.view(now))
		}
		if k.dst == id {
			v.In = append(v.In, e.view(now))
		}
	}
	sort.Slice(v.Out, func(i, j int) bool { return v.Out[i].Target < v.Out[j].Target })
	sort.Slice(v.In, func(i, j int) bool { return v.In[i].Source < v.In[j].Source })
	return v, true
}

// target is the policy target of a node: known (resolved) when the mesh
// description lists it, whose labels and service are then all it has.
func (m *model) target(id string) (labels map[string]string, ns, service string, known bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if n, ok := m.nodes[id]; ok {
		return n.labels, n.view.Namespace, n.service, n.view.Known
	}
	_, ns = nameOf(id)
	return nil, ns, "", false
}

func (m *model) droppedEvents() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.dropped
}
