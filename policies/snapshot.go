package policies

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/meshguard/meshguard/policies/internal/strictjson"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// DefaultRootNamespace is Istio's default root namespace: policies there
// apply mesh-wide.
const DefaultRootNamespace = "istio-system"

// Snapshot is a compiled bundle: immutable, safe for concurrent use.
// Decide allocates nothing for ordinary requests. The one thing a snapshot
// fills in as it decides is its table of target views (views.go), which
// changes no decision.
type Snapshot struct {
	version       string
	hash          string
	set           *Set
	rootNS        string
	normalization string
	// localTDs are the mesh's trust domains: its own first, then its
	// aliases. multiCustom: a workload may have CUSTOM policies of several
	// providers.
	localTDs    []string
	multiCustom bool

	mesh        scope
	namespaces  map[string]*scope
	routes      map[string]*routeInfo
	quarantines map[string]quarantineEntry
	edges       []cedge
	baseline    string // strongest baseline mode, "" without baselines
	profiles    []cprofile
	nrules      int
	njwt        int            // jwtRules of RequestAuthentications
	jwtAll      []*JWTProvider // every one, in set order
	views       viewCache
}

// scope holds the buckets of one namespace (or of the mesh, for the root
// namespace).
type scope struct {
	all       *bucket
	selectors []selectorBucket
	// selectors indexed by their first label: key → value → selectors, so
	// that a workload's labels find their selectors with a few lookups.
	selKeys  []string
	selIndex []map[string][]*selectorBucket // parallel to selKeys: value → selectors
	// labelKeys are the keys any selector names, sorted: all that the
	// scope reads of a target's labels.
	labelKeys []string
	targets   map[targetKey]*bucket
	patterns  []patternBucket
	// byWorkload indexes pattern buckets whose patterns are all exact IDs;
	// globPatterns are the rest, matched one by one.
	byWorkload   map[string][]*bucket
	globPatterns []patternBucket
}

type selectorBucket struct {
	labels map[string]string
	pairs  []labelPair // sorted by key
	b      *bucket
}

type labelPair struct{ k, v string }

// indexPatterns builds byWorkload and globPatterns.
func (sc *scope) indexPatterns() {
	for _, pb := range sc.patterns {
		exact := len(pb.workloads) > 0
		for _, p := range pb.workloads {
			if p.exact == "" {
				exact = false
			}
		}
		if !exact {
			sc.globPatterns = append(sc.globPatterns, pb)
			continue
		}
		if sc.byWorkload == nil {
			sc.byWorkload = map[string][]*bucket{}
		}
		for _, p := range pb.workloads {
			sc.byWorkload[p.exact] = append(sc.byWorkload[p.exact], pb.b)
		}
	}
}

// indexSelectors builds selIndex; called once the scope is complete.
func (sc *scope) indexSelectors() {
	if len(sc.selectors) == 0 {
		return
	}
	keys := map[string]int{} // label key → position in selKeys
	named := map[string]bool{}
	for i := range sc.selectors {
		sb := &sc.selectors[i]
		names := sortedKeys(sb.labels)
		sb.pairs = make([]labelPair, len(names))
		for j, k := range names {
			sb.pairs[j] = labelPair{k, sb.labels[k]}
			named[k] = true
		}
		first := sb.pairs[0]
		pos, ok := keys[first.k]
		if !ok {
			pos = len(sc.selKeys)
			keys[first.k] = pos
			sc.selKeys = append(sc.selKeys, first.k)
			sc.selIndex = append(sc.selIndex, map[string][]*selectorBucket{})
		}
		sc.selIndex[pos][first.v] = append(sc.selIndex[pos][first.v], sb)
	}
	sc.labelKeys = sortedKeys(named)
}

type patternBucket struct {
	workloads idSet
	b         *bucket
}

type targetKey struct {
	gateway bool
	name    string
}

// bucket is every rule that applies to one scope, indexed by action.
type bucket struct {
	name        string
	idx         [4]ruleIndex
	allowPols   [2]int  // ALLOW policies: [enforce, enforce+dry-run]
	defaultDeny [2]bool // [enforce, enforce+dry-run]
	defaultRef  RuleRef
	hasDryRun   bool
	// providers are the distinct providers of the bucket's CUSTOM policies.
	providers []string
	// jwt are the jwtRules of the bucket's RequestAuthentications.
	jwt []*JWTProvider
	// policies are the objects scoped to the bucket ("Kind/ns/name"),
	// whatever their mode: what PoliciesFor reports.
	policies []string
}

type routeInfo struct {
	spec RouteOverrideSpec
	ref  RuleRef
	b    *bucket
}

type quarantineEntry struct {
	expires int64 // unix nanoseconds; 0 = until released
	reason  string
	ref     RuleRef
}

type cedge struct {
	source idPattern
	dest   string
	routes []string
}

type cprofile struct {
	workloads idSet
	p         *AnomalyProfile
}

// Version is the bundle version the snapshot was compiled from.
func (s *Snapshot) Version() string { return s.version }

// Hash is the bundle's content hash.
func (s *Snapshot) Hash() string { return s.hash }

// Set returns the policy set the snapshot was compiled from. Callers must
// not modify it.
func (s *Snapshot) Set() *Set { return s.set }

// Rules is the number of compiled rules.
func (s *Snapshot) Rules() int { return s.nrules }

// Route returns the override for an Envoy route name.
func (s *Snapshot) Route(name string) (RouteOverrideSpec, bool) {
	ri, ok := s.routes[name]
	if !ok {
		return RouteOverrideSpec{}, false
	}
	return ri.spec, true
}

// Quarantined reports whether id is quarantined at time now, and why.
func (s *Snapshot) Quarantined(id spiffeid.ID, now time.Time) (reason string, ok bool) {
	q, ok := s.quarantine(id.String(), now.UnixNano())
	return q.reason, ok
}

// quarantinedIdentity reports whether one of the request's identities is
// quarantined: the mTLS peer, the client a trusted hop forwarded, or the
// subject of a JWT-SVID. A quarantined workload is refused however it
// presents itself.
func (s *Snapshot) quarantinedIdentity(a *Attributes) (spiffeid.ID, quarantineEntry, bool) {
	if len(s.quarantines) == 0 {
		return spiffeid.ID{}, quarantineEntry{}, false
	}
	now := time.Now().UnixNano()
	ids := [3]spiffeid.ID{a.Peer, a.ForwardedClient}
	if t := a.svid(); t != nil {
		ids[2] = t.SVID
	}
	for _, id := range ids {
		if q, ok := s.quarantine(id.String(), now); ok {
			return id, q, true
		}
	}
	return spiffeid.ID{}, quarantineEntry{}, false
}

func (s *Snapshot) quarantine(id string, now int64) (quarantineEntry, bool) {
	if len(s.quarantines) == 0 || id == "" {
		return quarantineEntry{}, false
	}
	q, ok := s.quarantines[id]
	if !ok || (q.expires != 0 && now >= q.expires) {
		return quarantineEntry{}, false
	}
	return q, true
}

// BaselineMode is the strongest TrafficBaseline mode (enforce, shadow,
// learn), or "" when the set has no baseline.
func (s *Snapshot) BaselineMode() string { return s.baseline }

// KnownEdge reports whether source → destination service → route is an
// edge of a TrafficBaseline. Destination compares case-insensitively; an
// edge written as a Kubernetes service host ("reviews.shop.svc.cluster.local")
// also matches its short forms ("reviews.shop", "reviews"), the names a
// filter configured by the meshguard control plane reports its service by.
func (s *Snapshot) KnownEdge(source spiffeid.ID, destination, route string) bool {
	for i := range s.edges {
		e := &s.edges[i]
		if !sameService(e.dest, destination) || !e.source.match(source) {
			continue
		}
		if len(e.routes) == 0 || containsString(e.routes, route) {
			return true
		}
	}
	return false
}

// KnownDestination reports whether a TrafficBaseline has an edge source →
// destination service on any route: what the caller's own side can check,
// which knows the service it calls but not the route the destination's
// proxy will match.
func (s *Snapshot) KnownDestination(source spiffeid.ID, destination string) bool {
	for i := range s.edges {
		e := &s.edges[i]
		if sameService(e.dest, destination) && e.source.match(source) {
			return true
		}
	}
	return false
}

// QuarantineRef reports whether id is quarantined at now (unix
// nanoseconds) and the Quarantine document that says so.
func (s *Snapshot) QuarantineRef(id spiffeid.ID, now int64) (RuleRef, bool) {
	if len(s.quarantines) == 0 || id.IsZero() {
		return RuleRef{}, false
	}
	q, ok := s.quarantine(id.String(), now)
	return q.ref, ok
}

// sameService reports whether a baseline destination names the service
// dest: equal, or a Kubernetes service host whose "<svc>.<ns>" or "<svc>"
// is dest.
func sameService(baseline, dest string) bool {
	if strings.EqualFold(baseline, dest) {
		return true
	}
	i := strings.Index(baseline, ".svc")
	if i <= 0 || len(dest) >= i {
		return len(dest) == i && strings.EqualFold(baseline[:i], dest)
	}
	j := strings.IndexByte(baseline, '.')
	return j == len(dest) && j < i && strings.EqualFold(baseline[:j], dest)
}

// AnomalyProfile returns the first profile (by namespace, name) watching
// the caller, or nil.
func (s *Snapshot) AnomalyProfile(source spiffeid.ID) *AnomalyProfile {
	for i := range s.profiles {
		p := &s.profiles[i]
		if len(p.workloads) == 0 || p.workloads.match(source) {
			return p.p
		}
	}
	return nil
}

// ----- index -----

// smallIndex: below this many rules a linear scan beats map lookups.
const smallIndex = 8

// ruleIndex finds candidate rules without scanning all of them: rules whose
// every source names exact principals are found by the caller's principal,
// rules whose every operation names paths with a fixed first segment by the
// request's first segment, the rest are scanned. Every list is in rule
// order, so the first match in order is found by merging.
type ruleIndex struct {
	rules       []*crule
	byPrincipal map[string][]*crule
	bySegment   map[string][]*crule
	scan        []*crule
	hasDryRun   bool
}

func (ix *ruleIndex) add(r *crule) {
	r.seal()
	ix.rules = append(ix.rules, r)
	if r.mode == ModeDryRun {
		ix.hasDryRun = true
	}
}

func (ix *ruleIndex) build(local []string) {
	if len(ix.rules) <= smallIndex {
		return
	}
	ix.byPrincipal = map[string][]*crule{}
	ix.bySegment = map[string][]*crule{}
	for _, r := range ix.rules {
		if keys, ok := r.principalKeys(local); ok {
			for _, k := range keys {
				ix.byPrincipal[k] = appendOnce(ix.byPrincipal[k], r)
			}
			continue
		}
		if keys, ok := r.segmentKeys(); ok {
			for _, k := range keys {
				ix.bySegment[k] = appendOnce(ix.bySegment[k], r)
			}
			continue
		}
		ix.scan = append(ix.scan, r)
	}
}

func appendOnce(list []*crule, r *crule) []*crule {
	if n := len(list); n > 0 && list[n-1] == r {
		return list
	}
	return append(list, r)
}

// principalKeys: the rule can only match requests whose peer (Istio's
// principals) or caller (meshguard's ids) has one of these principals.
func (r *crule) principalKeys(local []string) ([]string, bool) {
	if len(r.from) == 0 {
		return nil, false
	}
	var keys []string
	for i := range r.from {
		f := &r.from[i]
		switch {
		case len(f.principals) > 0:
			ks, ok := f.principals.keys(local)
			if !ok {
				return nil, false
			}
			keys = append(keys, ks...)
		case len(f.ids) > 0:
			for _, p := range f.ids {
				if p.exact == "" {
					return nil, false
				}
				keys = append(keys, p.exact[len("spiffe://"):])
			}
		default:
			return nil, false
		}
	}
	return keys, true
}

// segmentKeys: the rule can only match paths whose first segment is one of
// these. Deny-side rules match case-insensitively: their keys are lowercase.
func (r *crule) segmentKeys() ([]string, bool) {
	if len(r.to) == 0 {
		return nil, false
	}
	var keys []string
	for i := range r.to {
		t := &r.to[i]
		if len(t.paths) == 0 {
			return nil, false
		}
		for j := range t.paths {
			k, ok := t.paths[j].firstSegment()
			if !ok {
				return nil, false
			}
			if r.deny {
				k = strings.ToLower(k)
			}
			keys = append(keys, k)
		}
	}
	return keys, true
}

// first returns the first rule in order (with ord below limit) that matches,
// considering dry-run rules only when dry is set.
func (ix *ruleIndex) first(rq *req, limit int, dry bool) *crule {
	if len(ix.rules) == 0 {
		return nil
	}
	if ix.byPrincipal == nil {
		return firstIn(ix.rules, rq, limit, dry)
	}
	if rq.callerDeferred {
		// Rules indexed by a caller's ID match on the permissive side
		// whatever their IDs: only a scan finds them.
		return firstIn(ix.rules, rq, limit, dry)
	}
	var best *crule
	try := func(list []*crule) {
		if c := firstIn(list, rq, limit, dry); c != nil {
			best, limit = c, c.ord
		}
	}
	if rq.peer.principal != "" {
		try(ix.byPrincipal[rq.peer.principal])
	}
	if rq.callerKey != "" && rq.callerKey != rq.peer.principal {
		try(ix.byPrincipal[rq.callerKey])
	}
	if len(ix.bySegment) > 0 {
		deny := ix.rules[0].deny
		seg := firstSegmentOf(rq.path.norm)
		if deny {
			seg = strings.ToLower(seg)
		}
		try(ix.bySegment[seg])
		if rq.path.alt != rq.path.norm {
			alt := firstSegmentOf(rq.path.alt)
			if deny {
				alt = strings.ToLower(alt)
			}
			if alt != seg {
				try(ix.bySegment[alt])
			}
		}
	}
	try(ix.scan)
	return best
}

func firstIn(list []*crule, rq *req, limit int, dry bool) *crule {
	for _, c := range list {
		if c.ord >= limit {
			return nil
		}
		if c.dry && !dry {
			continue
		}
		if c.match(rq) {
			return c
		}
	}
	return nil
}

// ----- deciding -----

const maxInt = int(^uint(0) >> 1)

// maxBuckets bounds the buckets one request collects without allocating.
const maxBuckets = 16

// Decide evaluates a request: quarantine, route mode, path safety, then
// Istio's order CUSTOM → DENY → ALLOW, with AUDIT marking and dry-run
// shadowing. It never panics on any Attributes value.
func (s *Snapshot) Decide(a *Attributes) Decision {
	return s.decide(a, nil)
}

// Explain evaluates a request and records every applicable rule and why it
// did or did not match. It is slower than Decide and allocates.
func (s *Snapshot) Explain(a *Attributes) (Decision, Trace) {
	tr := &Trace{}
	d := s.decide(a, tr)
	return d, *tr
}

func (s *Snapshot) decide(a *Attributes, tr *Trace) Decision {
	d := Decision{Version: s.version, Mode: ModeEnforce}
	var rq req
	rq.init(a, s)

	if id, q, ok := s.quarantinedIdentity(a); ok {
		d.Reason, d.Ref = ReasonDeniedQuarantine, q.ref
		tr.note("%s is quarantined: %s", id, q.reason)
		return d
	}
	var ro *routeInfo
	if a.Route != "" && len(s.routes) > 0 {
		ro = s.routes[a.Route]
	}
	if ro != nil && ro.spec.Mode == ModeOff {
		d.Allowed, d.Reason, d.Mode, d.Ref = true, ReasonAllowedModeOff, ModeOff, ro.ref
		tr.note("route %q has enforcement off", a.Route)
		return d
	}
	if a.Method == "" || a.Path == "" {
		d.Reason = ReasonDeniedInvalidReq
		tr.note("request has no method or no path")
		routeMode(&d, ro)
		return d
	}
	if rq.path.unsafe != "" {
		if ro == nil || !ro.spec.AllowUnsafePaths {
			d.Reason = ReasonDeniedUnsafePath
			tr.note("%s", rq.path.unsafe)
			routeMode(&d, ro)
			return d
		}
		tr.note("%s; route %q allows it (DENY rules are matched against every reading)", rq.path.unsafe, a.Route)
	}

	if _, ok := targetNamespace(&a.Target); !ok {
		d.Reason = ReasonDeniedUnknownTarget
		tr.note("the target %s has no namespace: none is given and its ID is not of the form /ns/<namespace>/sa/<service account>", a.Target.ID)
		routeMode(&d, ro)
		return d
	}
	if why := s.unresolved(&a.Target); why != "" {
		d.Reason = ReasonDeniedUnresolved
		tr.note("%s", why)
		routeMode(&d, ro)
		return d
	}

	// A target's buckets are resolved once and kept in the view cache; a
	// route's own bucket and explain's trace take the uncached path.
	cache := tr == nil && (ro == nil || ro.b == nil)
	var h uint64
	if cache {
		h = s.views.hash(&a.Target)
		if v := s.views.get(h, &a.Target); v != nil {
			judge(&d, &v.applicable, &rq, nil)
			routeMode(&d, ro)
			return d
		}
	}
	var (
		arr  [maxBuckets]*bucket
		room [4][maxBuckets]*ruleIndex
	)
	bs := s.collect(a, ro, arr[:0], tr)
	ap := s.sum(bs, &room)
	ap.bs = bs
	if cache {
		s.views.put(h, s, &a.Target, bs)
	}
	judge(&d, &ap, &rq, tr)
	routeMode(&d, ro)
	return d
}

// judge is Istio's order over what applies: CUSTOM, AUDIT, then DENY and
// ALLOW, and the dry-run shadow of an allow.
func judge(d *Decision, ap *applicable, rq *req, tr *Trace) {
	if c := firstOf(ap, ActionCustom, rq, true, tr); c != nil {
		if ap.customConflict {
			// As Istio: CUSTOM policies of several providers for one
			// workload deny what they match.
			d.Reason, d.Ref = ReasonDeniedCustomProvider, c.ref
			tr.note("CUSTOM policies of several providers apply to the target, and MeshSettings.multipleCustomProviders is off")
			return
		}
		d.Custom = c.pol.provider
	}
	if c := firstOf(ap, ActionAudit, rq, true, tr); c != nil {
		d.Audit, d.AuditRef = true, c.ref
	}
	v := verdict(ap, rq, false, tr)
	if !v.allowed {
		d.Reason, d.Ref = v.reason, v.ref
		return
	}
	d.Allowed, d.Reason, d.Ref = true, v.reason, v.ref
	if ap.dry {
		if sh := verdict(ap, rq, true, nil); !sh.allowed {
			d.Mode, d.WouldDeny, d.Reason, d.Ref = ModeDryRun, true, sh.reason, sh.ref
			tr.note("dry-run: %s would deny (%s)", d.Ref.Policy, d.Reason)
		}
	}
}

// routeMode turns a deny into a would-deny on a route in dry-run.
func routeMode(d *Decision, ro *routeInfo) {
	if d.Allowed || ro == nil || ro.spec.Mode != ModeDryRun {
		return
	}
	d.Allowed, d.WouldDeny, d.Mode = true, true, ModeDryRun
}

// outcome is verdict's answer: small, so that it is cheap to return.
type outcome struct {
	allowed bool
	reason  Reason
	ref     RuleRef // the deciding rule, or the DefaultDeny for ReasonDeniedDefault
}

// verdict is DENY then ALLOW over what applies. With dry set, dry-run rules
// and policies count as enforced (the shadow decision).
func verdict(ap *applicable, rq *req, dry bool, tr *Trace) outcome {
	mode := 0
	if dry {
		mode = 1
	}
	if c := firstOf(ap, ActionDeny, rq, dry, tr); c != nil {
		return outcome{reason: c.pol.reason, ref: c.ref}
	}
	allowPols, dd := ap.allowPols[mode], ap.defaultDeny[mode]
	if allowPols == 0 && dd == nil {
		return outcome{allowed: true, reason: ReasonAllowedNoPolicy}
	}
	if c := firstOf(ap, ActionAllow, rq, dry, tr); c != nil {
		return outcome{allowed: true, reason: ReasonAllowedByPolicy, ref: c.ref}
	}
	if allowPols == 0 {
		return outcome{reason: ReasonDeniedDefault, ref: *dd}
	}
	return outcome{reason: ReasonDeniedNoMatch}
}

// firstOf is the first rule in order of the action that matches, over
// every applicable bucket.
// It is small enough to inline, so that an action no bucket has rules for
// (nor explain anything to record) costs only a length test.
func firstOf(ap *applicable, act Action, rq *req, dry bool, tr *Trace) *crule {
	if ap.acts&(1<<act) == 0 {
		return nil
	}
	return firstAmong(ap, act, rq, dry, tr)
}

func firstAmong(ap *applicable, act Action, rq *req, dry bool, tr *Trace) *crule {
	if tr != nil {
		return explainFirst(ap.bs, act, rq, dry, tr)
	}
	if m := ap.merged[act]; m != nil {
		return firstIn(m, rq, maxInt, dry)
	}
	var best *crule
	limit := maxInt
	for _, ix := range ap.idx[act] {
		if c := ix.first(rq, limit, dry); c != nil {
			best, limit = c, c.ord
		}
	}
	return best
}

// applicable is what applies to one request: the buckets collect found for
// its target and route, in order, and their sums. idx holds, per action,
// the indexes of the buckets that have rules for it, so that an action no
// bucket has costs nothing. The fields a decision reads come first.
type applicable struct {
	// merged holds, per action, the rules of the indexes of idx in rule
	// order when none of them is big enough to be indexed (in a view), so
	// that finding the first match is one scan.
	merged [4][]*crule
	acts   uint8 // bit 1<<action: idx[action] is not empty
	dry    bool  // some bucket has dry-run rules or policies
	// customConflict: CUSTOM policies of more than one provider apply and
	// the mesh does not allow it.
	customConflict bool
	allowPols      [2]int      // ALLOW policies: [enforce, enforce+dry-run]
	defaultDeny    [2]*RuleRef // the first DefaultDeny in bucket order: [enforce, enforce+dry-run]
	idx            [4][]*ruleIndex
	bs             []*bucket
}

// sum is what applies with the buckets bs, but for bs itself. The lists of
// indexes start in room, when given (a decision's stack).
func (s *Snapshot) sum(bs []*bucket, room *[4][maxBuckets]*ruleIndex) applicable {
	var ap applicable
	provider := ""
	if room != nil {
		for act := range ap.idx {
			ap.idx[act] = room[act][:0]
		}
	}
	for _, b := range bs {
		for act := range b.idx {
			if len(b.idx[act].rules) > 0 {
				ap.idx[act] = append(ap.idx[act], &b.idx[act])
				ap.acts |= 1 << act
			}
		}
		for m := range ap.allowPols {
			ap.allowPols[m] += b.allowPols[m]
			if b.defaultDeny[m] && ap.defaultDeny[m] == nil {
				ap.defaultDeny[m] = &b.defaultRef
			}
		}
		ap.dry = ap.dry || b.hasDryRun
		for _, p := range b.providers {
			if provider == "" {
				provider = p
			} else if p != provider && !s.multiCustom {
				ap.customConflict = true
			}
		}
	}
	return ap
}

// collect appends the buckets that apply to the request's target and route.
func (s *Snapshot) collect(a *Attributes, ro *routeInfo, bs []*bucket, tr *Trace) []*bucket {
	t := &a.Target
	ns, _ := targetNamespace(t)
	bs = s.mesh.collect(t, bs)
	if ns != "" && ns != s.rootNS {
		if sc := s.namespaces[ns]; sc != nil {
			bs = sc.collect(t, bs)
		}
	}
	if ns == s.rootNS {
		if sc := s.namespaces[ns]; sc != nil && len(sc.targets) > 0 {
			bs = sc.collectTargets(t, bs)
		}
	}
	if ro != nil && ro.b != nil {
		bs = append(bs, ro.b)
	}
	if tr != nil {
		for _, b := range bs {
			tr.Scopes = append(tr.Scopes, b.name)
		}
	}
	return bs
}

// unresolved says why the policies that apply to t cannot be found: a
// scope of t (the mesh's, its namespace's) has selector-scoped policies and
// t's labels are unknown, or targetRef-scoped ones and its service and
// gateway are. Empty when they can be found. A resolved target, or one with
// labels and a service, costs two tests.
func (s *Snapshot) unresolved(t *Target) string {
	labels, service := t.Resolved || len(t.Labels) > 0, t.Resolved || t.Service != "" || t.Gateway != ""
	if labels && service {
		return ""
	}
	check := func(sc *scope, where string) string {
		switch {
		case sc == nil:
		case !labels && len(sc.selectors) > 0:
			return where + " has selector-scoped policies and the target's labels are unknown"
		case !service && len(sc.targets) > 0:
			return where + " has targetRef-scoped policies and the target's service and gateway are unknown"
		}
		return ""
	}
	if why := check(&s.mesh, "the mesh (root namespace "+s.rootNS+")"); why != "" {
		return why
	}
	ns, _ := targetNamespace(t)
	switch {
	case ns == "":
		return ""
	case ns != s.rootNS:
		return check(s.namespaces[ns], "namespace "+ns)
	}
	if sc := s.namespaces[ns]; sc != nil && !service && len(sc.targets) > 0 {
		return check(&scope{targets: sc.targets}, "namespace "+ns)
	}
	return ""
}

// targetNamespace is the target's namespace: as given, or read from its ID
// (/ns/<namespace>/sa/<service account> exactly). A target without either
// (no ID, no namespace) is mesh-wide only; one whose ID gives no namespace
// is unknown (false).
func targetNamespace(t *Target) (string, bool) {
	if t.Namespace != "" || t.ID.IsZero() {
		return t.Namespace, true
	}
	ns, ok := sourceNamespace(t.ID)
	return ns, ok
}

func (sc *scope) collect(t *Target, bs []*bucket) []*bucket {
	if sc.all != nil {
		bs = append(bs, sc.all)
	}
	if len(t.Labels) > 0 {
		for i, k := range sc.selKeys {
			v, ok := t.Labels[k]
			if !ok {
				continue
			}
			// The first pair is the index key, already matched.
			for _, sb := range sc.selIndex[i][v] {
				if pairsMatch(sb.pairs[1:], t.Labels) {
					bs = append(bs, sb.b)
				}
			}
		}
	}
	if len(sc.byWorkload) > 0 && !t.ID.IsZero() {
		bs = append(bs, sc.byWorkload[t.ID.String()]...)
	}
	for i := range sc.globPatterns {
		if sc.globPatterns[i].workloads.match(t.ID) {
			bs = append(bs, sc.globPatterns[i].b)
		}
	}
	return sc.collectTargets(t, bs)
}

func (sc *scope) collectTargets(t *Target, bs []*bucket) []*bucket {
	if len(sc.targets) == 0 {
		return bs
	}
	if t.Service != "" {
		if b := sc.targets[targetKey{name: t.Service}]; b != nil {
			bs = append(bs, b)
		}
	}
	if t.Gateway != "" {
		if b := sc.targets[targetKey{gateway: true, name: t.Gateway}]; b != nil {
			bs = append(bs, b)
		}
	}
	return bs
}

// pairsMatch: every selector label must be present with the same value.
func pairsMatch(sel []labelPair, labels map[string]string) bool {
	if len(labels) < len(sel) {
		return false
	}
	for _, p := range sel {
		if lv, ok := labels[p.k]; !ok || lv != p.v {
			return false
		}
	}
	return true
}

// ----- explain -----

// Trace is the explanation of one decision.
type Trace struct {
	// Scopes are the policy scopes that applied to the request's target.
	Scopes []string    `json:"scopes"`
	Notes  []string    `json:"notes,omitempty"`
	Steps  []TraceStep `json:"steps"`
}

// TraceStep is one rule considered.
type TraceStep struct {
	Scope   string `json:"scope"`
	Policy  string `json:"policy"`
	Rule    string `json:"rule"`
	Action  string `json:"action"`
	Mode    Mode   `json:"mode"`
	Matched bool   `json:"matched"`
	Why     string `json:"why,omitempty"`
	// Failed names, when the rule's conditions (when) did not match, each
	// value of the request that failed one, apart: for a header, each of
	// its readings (the joined value, every element of a duplicated
	// header) that decided.
	Failed []string `json:"failed,omitempty"`
}

func (t *Trace) note(format string, args ...any) {
	if t == nil {
		return
	}
	t.Notes = append(t.Notes, fmt.Sprintf(format, args...))
}

// explainFirst evaluates every rule of the action and records each, then
// returns the first match in order, exactly as the indexed path would.
func explainFirst(bs []*bucket, act Action, rq *req, dry bool, tr *Trace) *crule {
	var best *crule
	for _, b := range bs {
		for _, c := range b.idx[act].rules {
			if c.mode == ModeDryRun && !dry {
				continue
			}
			ok, why := c.match(rq), ""
			var failed []string
			if !ok {
				why = c.why(rq)
				if why == whyWhen {
					failed = c.failed(rq)
				}
			}
			tr.Steps = append(tr.Steps, TraceStep{
				Scope: b.name, Policy: c.ref.Policy, Rule: c.ref.Rule, Action: act.String(),
				Mode: c.mode, Matched: ok, Why: why, Failed: failed,
			})
			if ok && (best == nil || c.ord < best.ord) {
				best = c
			}
		}
	}
	return best
}

// sortedKeys is used to build deterministic scopes.
func sortedKeys[M ~map[string]V, V any](m M) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	strictjson.SortStrings(out)
	return out
}

// Applied is what applies to a workload whatever the request: the policy
// scopes that select it and their rules, in the order a decision considers
// them (CUSTOM, AUDIT, DENY, then ALLOW; by rule order within an action),
// and the DefaultDenies. Route overrides apply per route and are not in it.
type Applied struct {
	Scopes       []string    `json:"scopes"`
	Rules        []TraceStep `json:"rules"`
	DefaultDeny  []RuleRef   `json:"defaultDeny,omitempty"`
	DryRunScopes bool        `json:"dryRun,omitempty"` // some scope has dry-run rules or policies
	// Unresolved says why what applies cannot be known for the target (its
	// labels or service are unknown where a selector- or targetRef-scoped
	// policy may apply): a request to it is denied with
	// ReasonDeniedUnresolved. Empty when it can.
	Unresolved string `json:"unresolved,omitempty"`
}

// Applicable returns what applies to the target.
func (s *Snapshot) Applicable(t *Target) Applied {
	out := Applied{Unresolved: s.unresolved(t)}
	bs := s.collect(&Attributes{Target: *t}, nil, nil, nil)
	for _, b := range bs {
		out.Scopes = append(out.Scopes, b.name)
		if b.defaultDeny[0] || b.defaultDeny[1] {
			out.DefaultDeny = append(out.DefaultDeny, b.defaultRef)
		}
		out.DryRunScopes = out.DryRunScopes || b.hasDryRun
	}
	for _, act := range []Action{ActionCustom, ActionAudit, ActionDeny, ActionAllow} {
		var rules []*crule
		scope := map[*crule]string{}
		for _, b := range bs {
			for _, c := range b.idx[act].rules {
				rules = append(rules, c)
				scope[c] = b.name
			}
		}
		sort.SliceStable(rules, func(i, j int) bool { return rules[i].ord < rules[j].ord })
		for _, c := range rules {
			out.Rules = append(out.Rules, TraceStep{Scope: scope[c], Policy: c.ref.Policy, Rule: c.ref.Rule,
				Action: act.String(), Mode: c.mode})
		}
	}
	return out
}
