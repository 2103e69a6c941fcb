package policies

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// The compiled forms. Every matcher is built once in Compile; evaluation
// only reads them.

type cpolicy struct {
	ref      string // Kind/namespace/name
	action   Action
	provider string
	mode     Mode
	// reason is the reason code of a deny by this policy's rules:
	// denied_by_policy, or denied_custom_provider for the rules of a CUSTOM
	// policy whose provider is invalid, which deny as Istio's do.
	reason Reason
}

// crule is one rule of one policy. deny selects the matching polarity:
// DENY, AUDIT and CUSTOM rules match when any reading of the request matches
// (so that no encoding or duplication trick evades them); ALLOW rules match
// only when every reading does, and negative fields never admit a request
// that lacks what they negate (no principal, no namespace, no token).
type crule struct {
	// Fields read on every match first, so that a match touches as few
	// cache lines as possible.
	ord     int
	dry     bool // mode is dry-run (set by seal)
	deny    bool
	toFirst bool // match tests to before from, the cheaper first (set by seal)
	from    []cfrom
	to      []cto
	when    []ccond
	jwt     *cjwt
	pol     *cpolicy
	ref     RuleRef
	mode    Mode // enforce or dry-run
}

// Bits of cfrom.set and cto.set: which fields a source or operation sets.
// Matching tests the bits (one word) instead of every field's length (the
// fields span several cache lines).
const (
	fPrincipals uint32 = 1 << iota
	fNotPrincipals
	fIDs
	fNotIDs
	fCallerDomains
	fNamespaces      // namespaces or notNamespaces
	fServiceAccounts // serviceAccounts or notServiceAccounts
	fPeerDomains     // trustDomains or notTrustDomains
	fReqPrincipals
	fNotReqPrincipals
	fIPBlocks
	fNotIPBlocks
	fRemoteIPBlocks
	fNotRemoteBlocks
)

const (
	tRoutes uint32 = 1 << iota
	tHosts
	tNotHosts
	tPorts
	tNotPorts
	tMethods
	tNotMethods
	tPaths
	tNotPaths
)

func bit(b uint32, on bool) uint32 {
	if on {
		return b
	}
	return 0
}

// seal computes the derived fields once the rule is built. It is
// idempotent (a rule can sit in several buckets).
func (c *crule) seal() {
	c.dry = c.mode == ModeDryRun
	for i := range c.from {
		c.from[i].seal()
	}
	for i := range c.to {
		t := &c.to[i]
		t.set = bit(tRoutes, len(t.routes) > 0) | bit(tHosts, len(t.hosts) > 0) | bit(tNotHosts, len(t.notHosts) > 0) |
			bit(tPorts, len(t.ports) > 0) | bit(tNotPorts, len(t.notPorts) > 0) |
			bit(tMethods, len(t.methods) > 0) | bit(tNotMethods, len(t.notMethods) > 0) |
			bit(tPaths, len(t.paths) > 0) | bit(tNotPaths, len(t.notPaths) > 0)
	}
	// Test the cheaper of from and to first: most rules fail, and the
	// cheaper test most often decides it alone.
	fromCost, toCost := 0, 0
	for i := range c.from {
		fromCost = max(fromCost, c.from[i].cost())
	}
	for i := range c.to {
		toCost = max(toCost, c.to[i].cost())
	}
	c.toFirst = toCost < fromCost
}

// seal computes set.
func (f *cfrom) seal() {
	f.set = bit(fPrincipals, len(f.principals) > 0) | bit(fNotPrincipals, len(f.notPrincipals) > 0) |
		bit(fIDs, len(f.ids) > 0) | bit(fNotIDs, len(f.notIDs) > 0) |
		bit(fCallerDomains, len(f.callerDomains) > 0) |
		bit(fNamespaces, len(f.namespaces) > 0 || len(f.notNamespaces) > 0) |
		bit(fServiceAccounts, len(f.serviceAccounts) > 0 || len(f.notServiceAccounts) > 0) |
		bit(fPeerDomains, len(f.trustDomains) > 0 || len(f.notTrustDomains) > 0) |
		bit(fReqPrincipals, len(f.reqPrincipals) > 0) | bit(fNotReqPrincipals, len(f.notReqPrincipals) > 0) |
		bit(fIPBlocks, len(f.ipBlocks) > 0) | bit(fNotIPBlocks, len(f.notIPBlocks) > 0) |
		bit(fRemoteIPBlocks, len(f.remoteIPBlocks) > 0) | bit(fNotRemoteBlocks, len(f.notRemoteBlocks) > 0)
}

// cost is roughly what testing a source costs (seal must have set set):
// reading the peer's namespace or service account from its ID is dearer
// than matching an ID against patterns, which is dearer than comparing a
// principal.
func (f *cfrom) cost() int {
	switch {
	case f.set&(fNamespaces|fServiceAccounts) != 0:
		return 3
	case f.set&(fIDs|fNotIDs) != 0:
		return 2
	}
	return 1
}

// cost is roughly what testing an operation costs, on the scale of
// cfrom.cost: matching paths or hosts is dearer than comparing the method
// or the port.
func (t *cto) cost() int {
	if t.set&(tHosts|tNotHosts|tPaths|tNotPaths) != 0 {
		return 2
	}
	return 1
}

// cfrom and cto list the fields policies set most first, so that testing
// them reads as few cache lines as possible.
//
// Istio's peer fields (principals to notTrustDomains) match the mTLS peer;
// meshguard's ids, notIds and callerDomains (IdentitySource.trustDomains)
// match the caller (Attributes.Caller).
type cfrom struct {
	set                                 uint32 // f* bits (seal)
	principals                          principalSet
	namespaces                          nsSet
	notPrincipals                       principalSet
	notNamespaces                       nsSet
	ids, notIDs                         idSet
	callerDomains                       []string
	serviceAccounts, notServiceAccounts saSet
	trustDomains, notTrustDomains       tdSet
	reqPrincipals, notReqPrincipals     reqPrincipalSet
	ipBlocks, notIPBlocks               ipSet
	remoteIPBlocks, notRemoteBlocks     ipSet
}

type cto struct {
	set             uint32 // t* bits (seal)
	methods         strSet
	paths           []pathMatcher
	notMethods      strSet
	notPaths        []pathMatcher
	ports, notPorts portSet
	hosts, notHosts strSet
	routes          strSet
}

type condKind uint8

const (
	condHeader condKind = iota
	condSourceIP
	condRemoteIP
	condDestIP
	condDestPort
	condSourcePeer // source.principal, .namespace, .serviceAccount, .trustDomain
	condAuthPrincipal
	condAuthAudiences
	condAuthPresenter
	condAuthClaims
	condSNI
)

type ccond struct {
	kind      condKind
	key       string          // the condition's key as written, for explain
	name      string          // header name (lowercase)
	peer      *cfrom          // condSourcePeer: the condition as a source's fields
	claim     []string        // claim path
	reqP      reqPrincipalSet // condAuthPrincipal: values and notValues
	notReqP   reqPrincipalSet
	values    strSet
	notValues strSet
	ips       ipSet
	notIPs    ipSet
	ports     portSet
	notPorts  portSet
}

type cjwt struct {
	audiences    []string
	trustDomains []string
	subjects     idSet
	claims       []cclaim
}

type cclaim struct {
	path   []string
	values strSet
}

// req is the per-decision view of the attributes, computed once.
type req struct {
	a    *Attributes
	peer peerView // the mTLS peer, for Istio's peer fields
	// caller is Attributes.Caller, for meshguard's kinds; callerKey its
	// trust-domain/path. callerDeferred: only a JWT-SVID could name the
	// caller and it is verified later (Attributes.JWTDeferred), so checks of
	// the caller take the permissive side.
	caller         spiffeid.ID
	callerKey      string
	callerDeferred bool
	path           pathView
	hostDone       bool // hostReadings is computed on first use
	hostN          int
	hostReadings   [4]string
}

func (r *req) init(a *Attributes, s *Snapshot) {
	r.a = a
	r.peer.init(a.Peer, s.localTDs)
	r.caller = a.Caller()
	if !r.caller.IsZero() {
		if r.caller == a.Peer {
			r.callerKey = r.peer.principal
		} else {
			r.callerKey = r.caller.String()[len("spiffe://"):]
		}
	}
	r.callerDeferred = a.JWTDeferred && a.ForwardedClient.IsZero() && a.Peer.IsZero()
	r.path = viewPath(a.Path, s.normalization)
}

// hosts is every reading of the request's :authority: as received (the
// only one Istio's exact match reads), and without its port and trailing
// dots, which backends and virtual hosts may ignore. Computed the first
// time a rule asks (most rules name no hosts).
func (r *req) hosts() []string {
	if !r.hostDone {
		h := r.a.Host
		add := func(v string) {
			for _, x := range r.hostReadings[:r.hostN] {
				if x == v {
					return
				}
			}
			r.hostReadings[r.hostN] = v
			r.hostN++
		}
		add(h)
		name, port := splitHostPort(h)
		clean := strings.TrimRight(name, ".")
		if clean != name && port != "" {
			add(clean + port)
		}
		add(name)
		add(clean)
		r.hostDone = true
	}
	return r.hostReadings[:r.hostN]
}

// splitHostPort splits ":port" off a host ("[v6]:port" included).
func splitHostPort(h string) (name, port string) {
	if strings.HasPrefix(h, "[") {
		if i := strings.IndexByte(h, ']'); i >= 0 {
			return h[:i+1], h[i+1:]
		}
		return h, ""
	}
	if i := strings.LastIndexByte(h, ':'); i >= 0 && strings.IndexByte(h, ':') == i {
		return h[:i], h[i:]
	}
	return h, ""
}

// ----- matching -----

// Why a rule did not match, for explain. Static strings.
const (
	whyFrom = "source did not match (from)"
	whyTo   = "operation did not match (to)"
	whyWhen = "a condition did not match (when)"
	whyJWT  = "JWT-SVID requirement not met"
)

// match reports whether the rule matches, testing its parts in the order
// seal chose: a conjunction of pure tests, so the order changes only the
// cost.
func (c *crule) match(r *req) bool {
	if c.toFirst {
		return c.matchTo(r) && c.matchFrom(r) && c.matchWhen(r) && c.matchJWT(r)
	}
	return c.matchFrom(r) && c.matchTo(r) && c.matchWhen(r) && c.matchJWT(r)
}

// why is, for explain, the first part of the rule that does not match in
// the order a policy writes them, or "" when the rule matches.
func (c *crule) why(r *req) string {
	switch {
	case !c.matchFrom(r):
		return whyFrom
	case !c.matchTo(r):
		return whyTo
	case !c.matchWhen(r):
		return whyWhen
	case !c.matchJWT(r):
		return whyJWT
	}
	return ""
}

// failed is, for explain, each part of the request that fails the rule's
// when conditions, named apart: every reading of a header that decides
// (for an allow-side rule each reading that does not match, for a
// deny-side rule each reading, none of which matched), the condition alone
// for other keys. Nil when the conditions match.
func (c *crule) failed(r *req) []string {
	var out []string
	for i := range c.when {
		cc := &c.when[i]
		if cc.match(r, c.deny) {
			continue
		}
		if cc.kind != condHeader || r.a.Headers == nil {
			out = append(out, cc.key+": not met")
			continue
		}
		v, ok := r.a.Headers.Get(cc.name)
		if !ok {
			out = append(out, cc.key+": absent")
			continue
		}
		out = cc.headerFailures(out, v, c.deny)
	}
	return out
}

// headerFailures appends each reading of header value v that fails the
// condition (deny: every reading, since none matched).
func (c *ccond) headerFailures(out []string, v string, deny bool) []string {
	why := func(s string) string {
		if len(c.values) > 0 && !c.values.match(s) {
			return "is not among values"
		}
		if len(c.notValues) > 0 && c.notValues.match(s) {
			return "is among notValues"
		}
		return "matches"
	}
	if deny || !c.matchString(v) {
		out = append(out, fmt.Sprintf("%s: %q %s", c.key, v, why(v)))
	}
	if strings.IndexByte(v, ',') < 0 {
		return out
	}
	n := strings.Count(v, ",") + 1
	for i, el := range strings.Split(v, ",") {
		el = strings.Trim(el, " \t")
		if deny || !c.matchString(el) {
			out = append(out, fmt.Sprintf("%s: element %d of %d, %q, %s", c.key, i+1, n, el, why(el)))
		}
	}
	return out
}

func (c *crule) matchFrom(r *req) bool {
	for i := range c.from {
		if c.from[i].match(r, c.deny) {
			return true
		}
	}
	return len(c.from) == 0
}

func (c *crule) matchTo(r *req) bool {
	for i := range c.to {
		if c.to[i].match(r, c.deny) {
			return true
		}
	}
	return len(c.to) == 0
}

func (c *crule) matchWhen(r *req) bool {
	for i := range c.when {
		if !c.when[i].match(r, c.deny) {
			return false
		}
	}
	return true
}

func (c *crule) matchJWT(r *req) bool {
	return c.jwt == nil || c.jwtMet(r)
}

// neg evaluates a negative field: when the attribute is absent, a deny-side
// rule treats it as "not in the list" (match) and an allow-side rule refuses.
func neg(present bool, inList func() bool, deny bool) bool {
	if !present {
		return deny
	}
	return !inList()
}

func (f *cfrom) match(r *req, deny bool) bool {
	if f.set&(fPrincipals|fNotPrincipals|fNamespaces|fServiceAccounts|fPeerDomains) != 0 && !f.matchPeer(&r.peer, deny) {
		return false
	}
	if f.set&(fIDs|fNotIDs|fCallerDomains) != 0 && !f.matchCaller(r, deny) {
		return false
	}
	if f.set&^(fPrincipals|fNotPrincipals|fIDs|fNotIDs|fCallerDomains|fNamespaces|fServiceAccounts|fPeerDomains) == 0 {
		return true
	}
	a := r.a
	if a.JWTDeferred && f.set&(fReqPrincipals|fNotReqPrincipals) != 0 {
		// Left to the server that verifies the token: the permissive side.
		if deny {
			return false
		}
		return f.matchNetwork(a, deny)
	}
	j := a.JWT
	if j == nil || f.set&(fReqPrincipals|fNotReqPrincipals) == 0 {
		if f.set&fReqPrincipals != 0 {
			return false
		}
		if f.set&fNotReqPrincipals != 0 && !deny {
			return false // a negative field never admits a request without a token
		}
		return f.matchNetwork(a, deny)
	}
	t := claimsOf(j)
	if f.set&fReqPrincipals != 0 && !f.reqPrincipals.matchPositive(&t, deny) {
		return false
	}
	if f.set&fNotReqPrincipals != 0 && f.notReqPrincipals.excludes(&t, deny) {
		return false
	}
	return f.matchNetwork(a, deny)
}

// matchPeer checks Istio's peer fields against the mTLS peer. A positive
// field takes the rule's polarity (either reading on the deny side, both
// on the allow side); a negative field the other one, so that a deny-side
// rule matches when some reading is outside the list and an allow-side
// rule only when none is in it. Without a peer, a negative field matches
// on the deny side only (Istio's "require mTLS" idiom, DENY notPrincipals
// ["*"]), and an allow-side notNamespaces or notServiceAccounts also needs
// an ID of the Kubernetes form.
func (f *cfrom) matchPeer(p *peerView, deny bool) bool {
	if !p.present() {
		if len(f.principals)+len(f.namespaces)+len(f.serviceAccounts)+len(f.trustDomains) > 0 {
			return false
		}
		return deny
	}
	if len(f.principals) > 0 && !f.principals.match(p, deny) {
		return false
	}
	if len(f.notPrincipals) > 0 && f.notPrincipals.match(p, !deny) {
		return false
	}
	if len(f.trustDomains) > 0 && !f.trustDomains.match(p, deny) {
		return false
	}
	if len(f.notTrustDomains) > 0 && f.notTrustDomains.match(p, !deny) {
		return false
	}
	if f.set&(fNamespaces|fServiceAccounts) == 0 {
		return true
	}
	if len(f.namespaces) > 0 && !f.namespaces.match(p, deny) {
		return false
	}
	if len(f.serviceAccounts) > 0 && !f.serviceAccounts.match(p, deny) {
		return false
	}
	if len(f.notNamespaces)+len(f.notServiceAccounts) > 0 {
		if _, _, kube := p.kube(); !kube && !deny {
			return false
		}
		if len(f.notNamespaces) > 0 && f.notNamespaces.match(p, !deny) {
			return false
		}
		if len(f.notServiceAccounts) > 0 && f.notServiceAccounts.match(p, !deny) {
			return false
		}
	}
	return true
}

// matchCaller checks meshguard's ids, notIds and trust domains against the
// caller.
func (f *cfrom) matchCaller(r *req, deny bool) bool {
	if r.callerDeferred {
		return !deny // left to the server that verifies the token
	}
	c := r.caller
	if f.set&fIDs != 0 && !f.ids.match(c) {
		return false
	}
	if f.set&fNotIDs != 0 && !neg(!c.IsZero(), func() bool { return f.notIDs.match(c) }, deny) {
		return false
	}
	if f.set&fCallerDomains != 0 && (c.IsZero() || !containsString(f.callerDomains, c.TrustDomain().Name())) {
		return false
	}
	return true
}

// matchNetwork checks the address fields of a source.
func (f *cfrom) matchNetwork(a *Attributes, deny bool) bool {
	if f.set&fIPBlocks != 0 && !f.ipBlocks.match(a.SourceIP) {
		return false
	}
	if f.set&fNotIPBlocks != 0 && !neg(a.SourceIP.IsValid(), func() bool { return f.notIPBlocks.match(a.SourceIP) }, deny) {
		return false
	}
	if f.set&fRemoteIPBlocks != 0 && !f.remoteIPBlocks.match(remoteIP(a)) {
		return false
	}
	if f.set&fNotRemoteBlocks != 0 && !neg(remoteIP(a).IsValid(), func() bool { return f.notRemoteBlocks.match(remoteIP(a)) }, deny) {
		return false
	}
	return true
}

// remoteIP is Istio's remote.ip: the original client, or the peer when no
// proxy in front reported one.
func remoteIP(a *Attributes) netip.Addr {
	if a.RemoteIP.IsValid() {
		return a.RemoteIP
	}
	return a.SourceIP
}

func containsString(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func (t *cto) match(r *req, deny bool) bool {
	a := r.a
	if t.set&tRoutes != 0 && !t.routes.match(a.Route) {
		return false
	}
	if t.set&tHosts != 0 && !matchHosts(t.hosts, r, deny) {
		return false
	}
	if t.set&tNotHosts != 0 && !neg(a.Host != "", func() bool { return matchHosts(t.notHosts, r, !deny) }, deny) {
		return false
	}
	if t.set&tPorts != 0 && !t.ports.match(a.DestinationPort) {
		return false
	}
	if t.set&tNotPorts != 0 && !neg(a.DestinationPort != 0, func() bool { return t.notPorts.match(a.DestinationPort) }, deny) {
		return false
	}
	if t.set&tMethods != 0 && !t.methods.match(a.Method) {
		return false
	}
	if t.set&tNotMethods != 0 && t.notMethods.match(a.Method) {
		return false
	}
	if t.set&tPaths != 0 && !matchPaths(t.paths, r, deny) {
		return false
	}
	if t.set&tNotPaths != 0 && !notPaths(t.notPaths, r, deny) {
		return false
	}
	return true
}

// matchHosts: Istio compares the :authority exactly (case-insensitively),
// which an allow-side rule does; a deny-side rule matches any reading (see
// req.hosts), so that a port or a trailing dot does not evade it.
func matchHosts(ms strSet, r *req, deny bool) bool {
	if !deny {
		return ms.match(r.a.Host)
	}
	for _, h := range r.hosts() {
		if ms.match(h) {
			return true
		}
	}
	return false
}

func anyPath(ms []pathMatcher, p string, fold bool) bool {
	for i := range ms {
		if ms[i].match(p, fold) {
			return true
		}
	}
	return false
}

// matchPaths: a deny-side rule matches if any reading matches (case-folded,
// since some backends are case-insensitive); an allow-side rule only if
// every reading does.
func matchPaths(ms []pathMatcher, r *req, deny bool) bool {
	v := &r.path
	if deny {
		return anyPath(ms, v.norm, true) || (v.alt != v.norm && anyPath(ms, v.alt, true))
	}
	return anyPath(ms, v.norm, false) && (v.alt == v.norm || anyPath(ms, v.alt, false))
}

// notPaths: a deny-side rule matches if some reading is outside the list; an
// allow-side rule only if no reading is in it.
func notPaths(ms []pathMatcher, r *req, deny bool) bool {
	v := &r.path
	if deny {
		return !anyPath(ms, v.norm, false) || (v.alt != v.norm && !anyPath(ms, v.alt, false))
	}
	return !anyPath(ms, v.norm, true) && (v.alt == v.norm || !anyPath(ms, v.alt, true))
}

func (c *ccond) match(r *req, deny bool) bool {
	a := r.a
	switch c.kind {
	case condHeader:
		if a.Headers == nil {
			return c.absent(deny)
		}
		v, ok := a.Headers.Get(c.name)
		if !ok {
			return c.absent(deny)
		}
		return c.matchHeader(v, deny)
	case condSourceIP:
		return c.matchIP(a.SourceIP, deny)
	case condRemoteIP:
		return c.matchIP(remoteIP(a), deny)
	case condDestIP:
		return c.matchIP(a.DestinationIP, deny)
	case condDestPort:
		if a.DestinationPort == 0 {
			return c.absent(deny)
		}
		if len(c.ports) > 0 && !c.ports.match(a.DestinationPort) {
			return false
		}
		return len(c.notPorts) == 0 || !c.notPorts.match(a.DestinationPort)
	case condSourcePeer:
		return c.peer.matchPeer(&r.peer, deny)
	case condSNI:
		if a.SNI == "" {
			return c.absent(deny)
		}
		return c.matchString(a.SNI)
	}
	// request.auth.*
	if a.JWTDeferred {
		return !deny // left to the server that verifies the token
	}
	j := a.JWT
	if j == nil {
		return c.absent(deny)
	}
	switch c.kind {
	case condAuthPrincipal:
		t := claimsOf(j)
		if len(c.reqP) > 0 && !c.reqP.matchPositive(&t, deny) {
			return false
		}
		return len(c.notReqP) == 0 || !c.notReqP.excludes(&t, deny)
	case condAuthPresenter:
		switch v := j.Claims["azp"].(type) {
		case string:
			return c.matchString(v)
		case []any:
			return matchElems(c, len(v), func(i int) (string, bool) { s, ok := v[i].(string); return s, ok }, deny)
		}
		if j.Presenter == "" {
			return c.absent(deny)
		}
		return c.matchString(j.Presenter)
	case condAuthAudiences:
		return c.matchList(j.Audiences, deny)
	case condAuthClaims:
		v, ok := lookupClaim(j.Claims, c.claim)
		if !ok {
			return c.absent(deny)
		}
		switch t := v.(type) {
		case string:
			return c.matchString(t)
		case []any:
			return matchElems(c, len(t), func(i int) (string, bool) { s, ok := t[i].(string); return s, ok }, deny)
		case []string:
			return c.matchList(t, deny)
		}
		return c.absent(deny)
	}
	return false
}

// absent: a condition on a missing attribute matches only a deny-side rule
// that asks for notValues alone (the value is, after all, not in the list).
func (c *ccond) absent(deny bool) bool {
	return deny && len(c.values) == 0 && len(c.ips) == 0 && len(c.ports) == 0 && len(c.reqP) == 0
}

func (c *ccond) matchString(v string) bool {
	if len(c.values) > 0 && !c.values.match(v) {
		return false
	}
	return len(c.notValues) == 0 || !c.notValues.match(v)
}

// matchList: Istio matches a list attribute when any element matches.
func (c *ccond) matchList(vs []string, deny bool) bool {
	return matchElems(c, len(vs), func(i int) (string, bool) { return vs[i], true }, deny)
}

// matchElems: some element is in values (when given) and none is in
// notValues. Non-string elements are skipped.
func matchElems(c *ccond, n int, at func(int) (string, bool), deny bool) bool {
	okV, seen := len(c.values) == 0, false
	for i := 0; i < n; i++ {
		v, ok := at(i)
		if !ok {
			continue
		}
		seen = true
		if len(c.values) > 0 && c.values.match(v) {
			okV = true
		}
		if len(c.notValues) > 0 && c.notValues.match(v) {
			return false
		}
	}
	if !seen {
		return c.absent(deny)
	}
	return okV
}

func (c *ccond) matchIP(ip netip.Addr, deny bool) bool {
	if !ip.IsValid() {
		return c.absent(deny)
	}
	if len(c.ips) > 0 && !c.ips.match(ip) {
		return false
	}
	return len(c.notIPs) == 0 || !c.notIPs.match(ip)
}

// matchHeader: Envoy joins duplicated headers with ',' ("x: ok" + "x: evil"
// arrives as "ok,evil"), and a backend may read such a value as the list of
// its elements, whether it came as one line or several. Each is a reading
// of the header: the joined value, and every comma-separated element with
// the spaces and tabs around it trimmed (an empty one included). A
// deny-side rule matches when any reading matches; an allow-side rule only when every reading does, each of
// values and notValues on its own (so neither "acme,other" for values
// ["acme*"] nor "ok,evil" for notValues ["evil"] is admitted).
func (c *ccond) matchHeader(v string, deny bool) bool {
	whole := c.matchString(v)
	if whole == deny || strings.IndexByte(v, ',') < 0 {
		return whole
	}
	for {
		el, rest, more := strings.Cut(v, ",")
		if c.matchString(strings.Trim(el, " \t")) == deny {
			return deny
		}
		if !more {
			return !deny
		}
		v = rest
	}
}

func lookupClaim(claims map[string]any, path []string) (any, bool) {
	var cur any = claims
	for _, p := range path {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		cur, ok = m[p]
		if !ok {
			return nil, false
		}
	}
	return cur, true
}

// jwtMet is the rule's JWT-SVID requirement; when the token is verified
// later (Attributes.JWTDeferred) it is met on the permissive side only.
func (c *crule) jwtMet(r *req) bool {
	if r.a.JWTDeferred {
		return !c.deny
	}
	return c.jwt.match(r.a.svid())
}

func (j *cjwt) match(t *JWT) bool {
	if t == nil || t.SVID.IsZero() {
		return false
	}
	if len(j.audiences) > 0 {
		ok := false
		for _, want := range j.audiences {
			if containsString(t.Audiences, want) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	if len(j.trustDomains) > 0 && !containsString(j.trustDomains, t.SVID.TrustDomain().Name()) {
		return false
	}
	if len(j.subjects) > 0 && !j.subjects.match(t.SVID) {
		return false
	}
	for i := range j.claims {
		v, ok := lookupClaim(t.Claims, j.claims[i].path)
		if !ok {
			return false
		}
		switch x := v.(type) {
		case string:
			if !j.claims[i].values.match(x) {
				return false
			}
		case []any:
			found := false
			for _, e := range x {
				if s, ok := e.(string); ok && j.claims[i].values.match(s) {
					found = true
					break
				}
			}
			if !found {
				return false
			}
		default:
			return false
		}
	}
	return true
}
