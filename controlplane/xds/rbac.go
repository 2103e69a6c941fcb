package xds

import (
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbacfilter "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshguard/meshguard/controlplane/mesh"
	"github.com/meshguard/meshguard/policies"
)

// The proxyless gRPC server's RBAC is a translation of the policy engine:
// for every request a proxyless server can receive, it must decide as
// policies.Snapshot.Decide decides for that request (a CUSTOM match denies:
// a proxyless server cannot consult the provider). Everything that carries
// meaning comes from the policies package: which policies apply to the
// workload (Snapshot.PoliciesFor), what a SPIFFE ID pattern, a path or a
// peer field matches on either side of a rule (as RE2 expressions), which
// route overrides and quarantines are in force. The differential test in
// this package holds the two to the same answers through grpc-go's own
// RBAC engine.
//
// What a proxyless server cannot see is translated on the side that fails
// closed, as Istio does: a condition on a request principal or a JWT-SVID
// (no token is verified before its RBAC), on the TLS server name (grpc-go's
// RBAC does not see it), or on every reading of the :authority (hosts of a
// deny-side rule, notHosts of an allow-side one: with and without port and
// trailing dots, not translated) is taken as met in DENY and CUSTOM rules,
// so they deny more, and as unmet in ALLOW rules, so they allow less. A
// DENY header condition with notValues matches a header repeated with
// commas when an element is in values (any such header without values),
// whether or not that element is in notValues. A RequestAuthentication
// denies a request that carries a token where it reads one (requestAuthn).
// Each such approximation is recorded.

// rbacCompiler translates the policies for one inbound port of a proxyless
// workload.
type rbacCompiler struct {
	set    *policies.Set
	snap   *policies.Snapshot
	routes []mesh.Route // the port's routes in match order, the default last
	// approx lists the approximations made, for the record and tests.
	approx []string
	ref    string // the rule being translated
}

// compileRBAC returns the RBAC HTTP filters of the inbound port in of w, in
// order: quarantines, then DENY (and CUSTOM), then ALLOW; and the
// approximations it made.
func compileRBAC(w *mesh.ValidWorkload, in mesh.Inbound, eb *EncodedBundle, now time.Time) ([]*rbacfilter.RBAC, []string) {
	c := &rbacCompiler{set: &eb.Bundle.Set, snap: eb.snap, routes: proxylessRoutes(in)}
	// The mesh description holds all the workload's labels: resolved.
	target := policies.Target{ID: w.ID, Namespace: w.Namespace, Labels: w.Labels, Service: w.Service, Resolved: true}
	applies := map[string]bool{}
	for _, ref := range c.snap.PoliciesFor(&target) {
		applies[ref] = true
	}

	var out []*rbacfilter.RBAC
	// Quarantines come first: not even a route with enforcement off lets a
	// quarantined caller through.
	var quarantined []*rbacv3.Principal
	seen := map[spiffeid.ID]bool{}
	for _, q := range c.set.Quarantines {
		id, err := spiffeid.FromString(q.Spec.Identity)
		if err != nil || seen[id] {
			continue // refused by Compile; or listed already
		}
		if _, ok := c.snap.Quarantined(id, now); ok {
			seen[id] = true
			quarantined = append(quarantined, principalName(exact(id.String())))
		}
	}
	if len(quarantined) > 0 {
		out = append(out, &rbacfilter.RBAC{Rules: &rbacv3.RBAC{Action: rbacv3.RBAC_DENY, Policies: map[string]*rbacv3.Policy{
			"meshguard/quarantine": {Permissions: []*rbacv3.Permission{anyPermission()}, Principals: quarantined},
		}}})
	}

	// Routes whose override turns enforcement off or to dry-run decide
	// every request (but a quarantined caller's) as allowed; on a dry-run
	// route a CUSTOM match still goes to its provider, which denies here.
	var off, dry []string
	for _, r := range c.routes {
		if ro, ok := c.snap.Route(r.Name); ok {
			switch ro.Mode {
			case policies.ModeOff:
				off = append(off, r.Name)
			case policies.ModeDryRun:
				dry = append(dry, r.Name)
			}
		}
	}
	notOff := notPerm(c.onRoutes(off))
	notOpen := notPerm(c.onRoutes(append(append([]string(nil), off...), dry...)))

	deny := map[string]*rbacv3.Policy{}
	allow := map[string]*rbacv3.Policy{}
	allowApplies := false
	add := func(into map[string]*rbacv3.Policy, name string, p *rbacv3.Policy, exempt *rbacv3.Permission) {
		if p == nil {
			return
		}
		p.Permissions = []*rbacv3.Permission{andPerm(exempt, orPerm(p.Permissions...))}
		if isNonePerm(p.Permissions[0]) || isNonePrincipal(orPrincipal(p.Principals...)) {
			return
		}
		into[name] = p
	}

	for i := range c.set.AuthorizationPolicies {
		p := &c.set.AuthorizationPolicies[i]
		ref := policies.KindAuthorizationPolicy + "/" + p.Metadata.Namespace + "/" + p.Metadata.Name
		if !applies[ref] || p.Metadata.Annotations["istio.io/dry-run"] == "true" {
			continue // out of scope, or dry-run: decides nothing
		}
		switch p.Spec.Action {
		case "", "ALLOW":
			allowApplies = true
			for j := range p.Spec.Rules {
				c.ref = fmt.Sprintf("%s[%d]", ref, j)
				add(allow, c.ref, c.istioRule(&p.Spec.Rules[j], p.Metadata.Namespace, false), nil)
			}
		case "DENY", "CUSTOM":
			exempt := notOpen
			if p.Spec.Action == "CUSTOM" {
				exempt = notOff
			}
			for j := range p.Spec.Rules {
				c.ref = fmt.Sprintf("%s[%d]", ref, j)
				add(deny, c.ref, c.istioRule(&p.Spec.Rules[j], p.Metadata.Namespace, true), exempt)
			}
		}
	}
	for i := range c.set.IdentityPolicies {
		p := &c.set.IdentityPolicies[i]
		ref := policies.KindIdentityPolicy + "/" + p.Metadata.Namespace + "/" + p.Metadata.Name
		mode := modeOr(p.Spec.Mode, policies.ModeEnforce)
		if !applies[ref] || mode == policies.ModeOff {
			continue
		}
		isDeny := p.Spec.Action == "DENY"
		if p.Spec.Action == "AUDIT" {
			continue
		}
		if !isDeny && mode == policies.ModeEnforce {
			allowApplies = true
		}
		for j := range p.Spec.Rules {
			r := &p.Spec.Rules[j]
			if modeOr(r.Mode, mode) != policies.ModeEnforce {
				continue
			}
			c.ref = ref + "[" + ruleName(r, j) + "]"
			if isDeny {
				add(deny, c.ref, c.identityRule(r, p.Metadata.Namespace, true), notOpen)
			} else {
				add(allow, c.ref, c.identityRule(r, p.Metadata.Namespace, false), nil)
			}
		}
	}
	for i := range c.set.DefaultDenies {
		d := &c.set.DefaultDenies[i]
		ref := policies.KindDefaultDeny + "/" + d.Metadata.Namespace + "/" + d.Metadata.Name
		if applies[ref] && modeOr(d.Spec.Mode, policies.ModeEnforce) == policies.ModeEnforce {
			allowApplies = true
		}
	}
	// A route override's own rules apply to requests on its route; its
	// ALLOW rules make an ALLOW policy apply there.
	var allowRoutes []string
	for _, rt := range c.routes {
		ro, ok := c.snap.Route(rt.Name)
		if !ok || len(ro.Rules) == 0 || ro.Mode == policies.ModeOff || ro.Mode == policies.ModeDryRun {
			continue
		}
		isDeny := ro.Action == "DENY"
		if ro.Action == "AUDIT" {
			continue
		}
		if !isDeny {
			allowRoutes = append(allowRoutes, rt.Name)
		}
		on := c.onRoutes([]string{rt.Name})
		ns := c.routeOverrideNamespace(rt.Name)
		for j := range ro.Rules {
			r := &ro.Rules[j]
			if modeOr(r.Mode, policies.ModeEnforce) != policies.ModeEnforce {
				continue
			}
			c.ref = fmt.Sprintf("%s/%s[%s]", policies.KindRouteOverride, rt.Name, ruleName(r, j))
			if isDeny {
				add(deny, c.ref, c.identityRule(r, ns, true), on)
			} else {
				add(allow, c.ref, c.identityRule(r, ns, false), on)
			}
		}
	}
	jps, why := c.snap.JWTProviders(&target)
	if why != "" {
		// Cannot happen for a target of the mesh description; fail closed.
		c.ref = "meshguard/request-authentication"
		c.approx = append(c.approx, c.ref+": "+why+": every request is denied")
		deny[c.ref] = &rbacv3.Policy{Permissions: []*rbacv3.Permission{anyPermission()}, Principals: []*rbacv3.Principal{anyPrincipal()}}
	}
	for _, jp := range jps {
		c.ref = jp.Ref.Policy + "[" + jp.Ref.Rule + "]"
		if p := c.requestAuthn(jp); p != nil {
			deny[c.ref] = p
		}
	}
	if len(deny) > 0 {
		out = append(out, &rbacfilter.RBAC{Rules: &rbacv3.RBAC{Action: rbacv3.RBAC_DENY, Policies: deny}})
	}
	if allowApplies || len(allowRoutes) > 0 {
		if !allowApplies {
			// No ALLOW policy applies off those routes: allowed there.
			allow["meshguard/no-allow-policy"] = &rbacv3.Policy{Permissions: []*rbacv3.Permission{notPerm(c.onRoutes(allowRoutes))}, Principals: []*rbacv3.Principal{anyPrincipal()}}
		}
		if open := c.onRoutes(append(off, dry...)); !isNonePerm(open) {
			allow["meshguard/enforcement-off"] = &rbacv3.Policy{Permissions: []*rbacv3.Permission{open}, Principals: []*rbacv3.Principal{anyPrincipal()}}
		}
		// An ALLOW filter without a matching policy denies: Istio's
		// allow-nothing, and what a DefaultDeny asks for.
		out = append(out, &rbacfilter.RBAC{Rules: &rbacv3.RBAC{Action: rbacv3.RBAC_ALLOW, Policies: allow}})
	}
	return out, c.approx
}

// requestAuthn translates a RequestAuthentication's jwtRule: an enforcement
// point validates a token found where the rule reads one and refuses an
// invalid one; a proxyless server verifies none, so a request that carries
// a token there is denied, valid or not, and so is one that carries a
// header the rule would write (its payload or a claim: no one but the
// enforcement point may set them). A request without a token goes on, as
// it does through Envoy. Query parameters need no translation: a gRPC
// :path has no query.
func (c *rbacCompiler) requestAuthn(jp *policies.JWTProvider) *rbacv3.Policy {
	hdr := func(name, re string) *rbacv3.Permission {
		return &rbacv3.Permission{Rule: &rbacv3.Permission_Header{Header: &route.HeaderMatcher{
			Name: name, HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: regexMatcher(re)},
		}}}
	}
	var carries []*rbacv3.Permission
	for _, h := range jp.Headers {
		// With a prefix the value holds a token when it contains the
		// prefix anywhere (Envoy's extractor); without, whenever present.
		carries = append(carries, hdr(h.Name, `(?s)^.*`+regexp.QuoteMeta(h.Prefix)+`.*$`))
	}
	for _, name := range jp.Cookies {
		carries = append(carries, hdr("cookie", `(?s)^(?:.*[;,])?[ \t]*`+regexp.QuoteMeta(name)+`=.*$`))
	}
	if jp.PayloadHeader != "" {
		carries = append(carries, hdr(jp.PayloadHeader, `(?s)^.*$`))
	}
	for _, ch := range jp.ClaimHeaders {
		carries = append(carries, hdr(strings.ToLower(ch.Header), `(?s)^.*$`))
	}
	if len(carries) == 0 {
		return nil
	}
	c.approx = append(c.approx, c.ref+": a request carrying a token this rule reads, or a header it writes, is denied (a proxyless server verifies no token)")
	return &rbacv3.Policy{Permissions: []*rbacv3.Permission{orPerm(carries...)}, Principals: []*rbacv3.Principal{anyPrincipal()}}
}

// routeOverrideNamespace is the namespace of the RouteOverride of route
// name (one at most: Compile refuses two).
func (c *rbacCompiler) routeOverrideNamespace(name string) string {
	for i := range c.set.RouteOverrides {
		if ro := &c.set.RouteOverrides[i]; ro.Spec.Route == name {
			return ro.Metadata.Namespace
		}
	}
	return ""
}

// proxylessRoutes are the routes of a proxyless port in the order the
// server matches them: the mesh's, then the default (grpcRoutes).
func proxylessRoutes(in mesh.Inbound) []mesh.Route {
	return append(append([]mesh.Route(nil), in.Routes...), mesh.Route{Name: inboundName(in) + "_default", Prefix: "/"})
}

func modeOr(m, def policies.Mode) policies.Mode {
	if m == "" {
		return def
	}
	return m
}

func ruleName(r *policies.IdentityRule, i int) string {
	if r.Name != "" {
		return r.Name
	}
	return strconv.Itoa(i)
}

// approximate records that what the rule says about what cannot be seen
// here is taken on the side that fails closed.
func (c *rbacCompiler) approximate(what string, deny bool) {
	side := "ALLOW rule: taken as unmet (allows less)"
	if deny {
		side = "DENY rule: taken as met (denies more)"
	}
	c.approx = append(c.approx, c.ref+": "+what+", "+side)
}

// unknown is a condition a proxyless server cannot check: met in a deny
// rule, unmet in an allow rule.
func (c *rbacCompiler) unknownPrincipal(what string, deny bool) *rbacv3.Principal {
	c.approximate(what, deny)
	if deny {
		return anyPrincipal()
	}
	return nonePrincipal()
}

func (c *rbacCompiler) unknownPerm(what string, deny bool) *rbacv3.Permission {
	c.approximate(what, deny)
	if deny {
		return anyPermission()
	}
	return nonePerm()
}

// istioRule translates one rule of an AuthorizationPolicy of namespace ns;
// nil when it cannot match here.
func (c *rbacCompiler) istioRule(r *policies.Rule, ns string, deny bool) *rbacv3.Policy {
	var froms []*rbacv3.Principal
	for _, f := range r.From {
		s := &f.Source
		var ids []*rbacv3.Principal
		ids = append(ids, c.peer(policies.PeerPrincipals, s.Principals, s.NotPrincipals, ns, deny))
		ids = append(ids, c.peer(policies.PeerTrustDomains, s.TrustDomains, s.NotTrustDomains, ns, deny))
		ids = append(ids, c.peer(policies.PeerNamespaces, s.Namespaces, nil, ns, deny))
		ids = append(ids, c.peer(policies.PeerServiceAccounts, s.ServiceAccounts, nil, ns, deny))
		ids = append(ids, c.notKube(s.NotNamespaces, s.NotServiceAccounts, ns, deny))
		if len(s.RequestPrincipals)+len(s.NotRequestPrincipals) > 0 {
			ids = append(ids, c.unknownPrincipal("requestPrincipals (no request token is verified before a proxyless server's RBAC)", deny))
		}
		ids = append(ids, orIPs(s.IPBlocks, false), notIPs(s.NotIPBlocks, false))
		ids = append(ids, orIPs(s.RemoteIPBlocks, true), notIPs(s.NotRemoteIPBlocks, true))
		froms = append(froms, andPrincipal(ids...))
	}
	var tos []*rbacv3.Permission
	for _, t := range r.To {
		o := &t.Operation
		var perms []*rbacv3.Permission
		perms = append(perms, c.hosts(o.Hosts, o.NotHosts, deny))
		perms = append(perms, orPortsOf(o.Ports), notPerm(orPortsOfNil(o.NotPorts)))
		perms = append(perms, methods(o.Methods, o.NotMethods, deny))
		perms = append(perms, c.paths(o.Paths, o.NotPaths, deny))
		tos = append(tos, andPerm(perms...))
	}
	return c.policy(froms, tos, r.When, ns, deny)
}

// peer translates one of Istio's peer fields and its not-form: the peer's
// SPIFFE ID matches one of values (on the rule's side) and none of not (on
// the other side, as the engine reads a negation), each as the policies
// package says (Snapshot.PeerRegexp).
func (c *rbacCompiler) peer(field policies.PeerField, values, not []string, ns string, deny bool) *rbacv3.Principal {
	match := func(side bool) func(string) *rbacv3.Principal {
		return func(v string) *rbacv3.Principal {
			re, err := c.snap.PeerRegexp(field, v, ns, side)
			if err != nil {
				return nonePrincipal() // refused by Compile
			}
			return principalName(regexMatcher(re))
		}
	}
	return andPrincipal(orOf(values, match(deny)), notOf(not, match(!deny)))
}

// notKube translates notNamespaces and notServiceAccounts: on the allow
// side the peer's ID must also have the Kubernetes form
// (/ns/<namespace>/sa/<service account>), as in the engine.
func (c *rbacCompiler) notKube(notNS, notSA []string, ns string, deny bool) *rbacv3.Principal {
	if len(notNS)+len(notSA) == 0 {
		return anyPrincipal()
	}
	p := andPrincipal(c.peer(policies.PeerNamespaces, nil, notNS, ns, deny), c.peer(policies.PeerServiceAccounts, nil, notSA, ns, deny))
	if deny {
		return p
	}
	return andPrincipal(principalName(regexMatcher(policies.NamespaceIDRegexp(`[^/]+`))), p)
}

// hosts translates hosts and notHosts. The engine compares the :authority
// as received, case-insensitively, where that is the strict reading (hosts
// on the allow side, notHosts on the deny side); the other side also reads
// it without its port and trailing dots, which is not translated.
func (c *rbacCompiler) hosts(values, not []string, deny bool) *rbacv3.Permission {
	authority := func(v string) *rbacv3.Permission {
		return &rbacv3.Permission{Rule: &rbacv3.Permission_Header{Header: &route.HeaderMatcher{
			Name: ":authority", HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: valueMatcher(v, true)},
		}}}
	}
	var parts []*rbacv3.Permission
	if len(values) > 0 {
		if deny {
			parts = append(parts, c.unknownPerm("hosts of a deny-side rule (every reading of the :authority)", deny))
		} else {
			parts = append(parts, orPermOf(values, authority))
		}
	}
	if len(not) > 0 {
		if deny {
			parts = append(parts, notPerm(orPermOfNil(not, authority)))
		} else {
			parts = append(parts, c.unknownPerm("notHosts of an allow-side rule (every reading of the :authority)", deny))
		}
	}
	return andPerm(parts...)
}

// identityRule translates one rule of an IdentityPolicy or RouteOverride of
// namespace ns.
func (c *rbacCompiler) identityRule(r *policies.IdentityRule, ns string, deny bool) *rbacv3.Policy {
	var froms []*rbacv3.Principal
	for _, f := range r.From {
		var ids []*rbacv3.Principal
		ids = append(ids, orOf(f.IDs, c.idPattern), notOf(f.NotIDs, c.idPattern))
		ids = append(ids, orOf(f.TrustDomains, trustDomainPrincipal))
		froms = append(froms, andPrincipal(ids...))
	}
	var tos []*rbacv3.Permission
	for _, t := range r.To {
		var perms []*rbacv3.Permission
		if len(t.Routes) > 0 {
			perms = append(perms, c.routesNamed(t.Routes))
		}
		perms = append(perms, c.hosts(t.Hosts, nil, deny))
		perms = append(perms, orPortsOf(t.Ports))
		perms = append(perms, methods(t.Methods, t.NotMethods, deny))
		perms = append(perms, c.paths(t.Paths, t.NotPaths, deny))
		tos = append(tos, andPerm(perms...))
	}
	p := c.policy(froms, tos, r.When, ns, deny)
	if p != nil && r.JWT != nil {
		p.Principals = []*rbacv3.Principal{andPrincipal(orPrincipal(p.Principals...), c.unknownPrincipal("a JWT-SVID requirement (no token is verified before a proxyless server's RBAC)", deny))}
		if isNonePrincipal(p.Principals[0]) {
			return nil
		}
	}
	return p
}

// policy assembles a rule: any of its sources, any of its operations, and
// every condition.
func (c *rbacCompiler) policy(froms []*rbacv3.Principal, tos []*rbacv3.Permission, when []policies.Condition, ns string, deny bool) *rbacv3.Policy {
	principal := anyPrincipal()
	if len(froms) > 0 {
		principal = orPrincipal(froms...)
	}
	perm := anyPermission()
	if len(tos) > 0 {
		perm = orPerm(tos...)
	}
	for i := range when {
		p, pr := c.condition(&when[i], ns, deny)
		perm, principal = andPerm(perm, p), andPrincipal(principal, pr)
	}
	if isNonePerm(perm) || isNonePrincipal(principal) {
		return nil
	}
	return &rbacv3.Policy{Permissions: []*rbacv3.Permission{perm}, Principals: []*rbacv3.Principal{principal}}
}

// condition translates one `when` entry into what it asks of the request
// (permission) and of the caller (principal).
func (c *rbacCompiler) condition(w *policies.Condition, ns string, deny bool) (*rbacv3.Permission, *rbacv3.Principal) {
	key := w.Key
	switch {
	case key == "source.principal":
		return anyPermission(), c.peer(policies.PeerPrincipals, w.Values, w.NotValues, ns, deny)
	case key == "source.trustDomain":
		return anyPermission(), c.peer(policies.PeerTrustDomains, w.Values, w.NotValues, ns, deny)
	case key == "source.namespace":
		return anyPermission(), andPrincipal(c.peer(policies.PeerNamespaces, w.Values, nil, ns, deny), c.notKube(w.NotValues, nil, ns, deny))
	case key == "source.serviceAccount":
		return anyPermission(), andPrincipal(c.peer(policies.PeerServiceAccounts, w.Values, nil, ns, deny), c.notKube(nil, w.NotValues, ns, deny))
	case key == "source.ip":
		return anyPermission(), andPrincipal(orIPs(w.Values, false), notIPs(w.NotValues, false))
	case key == "remote.ip":
		return anyPermission(), andPrincipal(orIPs(w.Values, true), notIPs(w.NotValues, true))
	case key == "destination.ip":
		return andPerm(orDestIPs(w.Values), notPerm(orDestIPsNil(w.NotValues))), anyPrincipal()
	case key == "destination.port":
		return andPerm(orPortsOf(w.Values), notPerm(orPortsOfNil(w.NotValues))), anyPrincipal()
	case strings.HasPrefix(key, "request.headers[") && strings.HasSuffix(key, "]"):
		return c.header(strings.ToLower(key[len("request.headers["):len(key)-1]), w.Values, w.NotValues, deny), anyPrincipal()
	case key == "connection.sni":
		return c.unknownPerm("connection.sni (grpc-go's RBAC does not see the TLS server name)", deny), anyPrincipal()
	}
	// request.auth.*: a verified token's attributes.
	return anyPermission(), c.unknownPrincipal(key+" (no request token is verified before a proxyless server's RBAC)", deny)
}

// ----- callers -----

// idPattern: callers matching a meshguard SPIFFE ID pattern, with the
// engine's own reading of it.
func (c *rbacCompiler) idPattern(v string) *rbacv3.Principal {
	p, err := policies.ParseIDPattern(v)
	if err != nil {
		return nonePrincipal() // refused by Compile; matches no one
	}
	if id, ok := p.Exact(); ok {
		return principalName(exact(id.String()))
	}
	return principalName(regexMatcher(p.Regexp()))
}

func trustDomainPrincipal(td string) *rbacv3.Principal {
	p, err := policies.ParseIDPattern("spiffe://" + td)
	if err != nil {
		return nonePrincipal()
	}
	return principalName(regexMatcher(p.Regexp()))
}

func orIPs(blocks []string, remote bool) *rbacv3.Principal {
	if len(blocks) == 0 {
		return anyPrincipal()
	}
	var out []*rbacv3.Principal
	for _, b := range blocks {
		cr, ok := cidr(b)
		if !ok {
			continue // refused by Compile
		}
		if remote {
			out = append(out, &rbacv3.Principal{Identifier: &rbacv3.Principal_RemoteIp{RemoteIp: cr}})
		} else {
			out = append(out, &rbacv3.Principal{Identifier: &rbacv3.Principal_DirectRemoteIp{DirectRemoteIp: cr}})
		}
	}
	return orPrincipal(out...)
}

func notIPs(blocks []string, remote bool) *rbacv3.Principal {
	if len(blocks) == 0 {
		return anyPrincipal()
	}
	return notPrincipal(orIPs(blocks, remote))
}

// cidr reads an address or block as the engine does: IPv4-mapped IPv6
// blocks stand for their IPv4 addresses.
func cidr(v string) (*core.CidrRange, bool) {
	var pfx netip.Prefix
	if strings.Contains(v, "/") {
		p, err := netip.ParsePrefix(v)
		if err != nil {
			return nil, false
		}
		bits := p.Bits()
		if p.Addr().Is4In6() {
			bits -= 96
		}
		pfx = netip.PrefixFrom(p.Addr().Unmap(), bits)
	} else {
		a, err := netip.ParseAddr(v)
		if err != nil {
			return nil, false
		}
		a = a.Unmap()
		pfx = netip.PrefixFrom(a, a.BitLen())
	}
	return &core.CidrRange{AddressPrefix: pfx.Addr().String(), PrefixLen: wrapperspb.UInt32(uint32(pfx.Bits()))}, true
}

// ----- requests -----

// onRoutes: the request is on one of the named routes of the port, that is
// it matches the route and none before it.
func (c *rbacCompiler) onRoutes(names []string) *rbacv3.Permission {
	var alts []*rbacv3.Permission
	for _, name := range names {
		for i, r := range c.routes {
			if r.Name != name {
				continue
			}
			earlier := make([]*rbacv3.Permission, 0, i)
			for _, e := range c.routes[:i] {
				earlier = append(earlier, routeMatch(e))
			}
			alts = append(alts, andPerm(routeMatch(r), notPerm(orPerm(earlier...))))
		}
	}
	return orPerm(alts...)
}

// routesNamed: the request is on a route whose name matches one of the
// Istio values.
func (c *rbacCompiler) routesNamed(values []string) *rbacv3.Permission {
	var names []string
	for _, r := range c.routes {
		for _, v := range values {
			if policies.MatchValue(v, r.Name) {
				names = append(names, r.Name)
				break
			}
		}
	}
	return c.onRoutes(names)
}

func routeMatch(r mesh.Route) *rbacv3.Permission {
	sm := &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Prefix{Prefix: r.Prefix}}
	if r.Path != "" {
		sm = exact(r.Path)
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_UrlPath{UrlPath: &matcher.PathMatcher{Rule: &matcher.PathMatcher_Path{Path: sm}}}}
}

// methods: the engine compares methods case-insensitively on the deny side
// and notMethods on the allow side.
func methods(values, not []string, deny bool) *rbacv3.Permission {
	m := func(fold bool) func(string) *rbacv3.Permission {
		return func(v string) *rbacv3.Permission {
			return &rbacv3.Permission{Rule: &rbacv3.Permission_Header{Header: &route.HeaderMatcher{
				Name: ":method", HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: valueMatcher(v, fold)},
			}}}
		}
	}
	return andPerm(orPermOf(values, m(deny)), notPerm(orPermOfNil(not, m(!deny))))
}

// paths: the engine folds case on the deny side (paths of DENY rules,
// notPaths of ALLOW rules).
func (c *rbacCompiler) paths(values, not []string, deny bool) *rbacv3.Permission {
	m := func(fold bool) func(string) *rbacv3.Permission {
		return func(v string) *rbacv3.Permission {
			p, err := policies.ParsePathPattern(v)
			if err != nil {
				return nonePerm() // refused by Compile
			}
			return &rbacv3.Permission{Rule: &rbacv3.Permission_UrlPath{UrlPath: &matcher.PathMatcher{Rule: &matcher.PathMatcher_Path{Path: regexMatcher(p.Regexp(fold))}}}}
		}
	}
	return andPerm(orPermOf(values, m(deny)), notPerm(orPermOfNil(not, m(!deny))))
}

func orPortsOf(ports []string) *rbacv3.Permission {
	return orPermOf(ports, portPermission)
}

func orPortsOfNil(ports []string) *rbacv3.Permission {
	return orPermOfNil(ports, portPermission)
}

func portPermission(p string) *rbacv3.Permission {
	n, err := strconv.ParseUint(p, 10, 16)
	if err != nil {
		return nonePerm() // refused by Compile
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_DestinationPort{DestinationPort: uint32(n)}}
}

func orDestIPs(blocks []string) *rbacv3.Permission {
	if len(blocks) == 0 {
		return anyPermission()
	}
	return orDestIPsNil(blocks)
}

func orDestIPsNil(blocks []string) *rbacv3.Permission {
	var out []*rbacv3.Permission
	for _, b := range blocks {
		if cr, ok := cidr(b); ok {
			out = append(out, &rbacv3.Permission{Rule: &rbacv3.Permission_DestinationIp{DestinationIp: cr}})
		}
	}
	return orPerm(out...)
}

// ----- headers -----

// header translates request.headers[name]. Duplicated headers reach both
// the engine and grpc-go joined with ','. The engine reads such a value as
// its joined value and as each comma-separated element, trimmed of spaces
// and tabs: a deny-side condition matches when any reading does, an
// allow-side one only when every reading does.
func (c *rbacCompiler) header(name string, values, not []string, deny bool) *rbacv3.Permission {
	hdr := func(sm *matcher.StringMatcher) *rbacv3.Permission {
		return &rbacv3.Permission{Rule: &rbacv3.Permission_Header{Header: &route.HeaderMatcher{Name: name, HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: sm}}}}
	}
	val := func(v string) *rbacv3.Permission { return hdr(valueMatcher(v, false)) }
	// Present, whatever its value (grpc-go's present_match takes an empty
	// value for absent; the engine does not).
	present := hdr(regexMatcher(`(?s)^.*$`))
	joined := andPerm(orPermOf(values, val), notPerm(orPermOfNil(not, val)))
	if len(values) == 0 {
		joined = andPerm(present, joined)
	}
	// elems is the alternation of the element expressions of vs; false
	// when no element can match any of them.
	elems := func(vs []string) (string, bool) {
		var alts []string
		for _, v := range vs {
			if e, ok := elementRegexp(v); ok {
				alts = append(alts, e)
			}
		}
		return strings.Join(alts, "|"), len(alts) > 0
	}
	// someElement: the value has a comma and an element matches e.
	someElement := func(e string) *rbacv3.Permission {
		return hdr(regexMatcher(`(?s)^(?:(?:` + e + `),.*|.*,(?:` + e + `)(?:,.*)?)$`))
	}
	hasComma := hdr(regexMatcher(`(?s)^.*,.*$`))
	if !deny {
		// Every reading: the joined value, and with a comma every element
		// in values and none in notValues.
		all := []*rbacv3.Permission{joined}
		if len(values) > 0 {
			every := notPerm(hasComma)
			if e, ok := elems(values); ok {
				every = orPerm(every, hdr(regexMatcher(`(?s)^(?:`+e+`)(?:,(?:`+e+`))+$`)))
			}
			all = append(all, every)
		}
		if e, ok := elems(not); ok {
			all = append(all, notPerm(someElement(e)))
		}
		return andPerm(all...)
	}
	alts := []*rbacv3.Permission{joined}
	if len(values) == 0 {
		// Absent, it is not in notValues.
		alts = append(alts, notPerm(present))
	}
	// Some element matches: in values and not in notValues, which RE2
	// cannot say of one element; with notValues an element in values (or,
	// without values, any comma-joined value) is taken as met.
	e, ok := elems(values)
	switch {
	case len(not) > 0 && len(values) == 0:
		c.approximate("notValues of request.headers["+name+"] on a comma-joined value", true)
		alts = append(alts, hasComma)
	case len(not) > 0 && ok:
		c.approximate("notValues of request.headers["+name+"] on a comma-joined value", true)
		alts = append(alts, someElement(e))
	case ok && !slices.Contains(values, "*"):
		// With "*" the joined value, which a comma makes non-empty,
		// already matches.
		alts = append(alts, someElement(e))
	}
	return orPerm(alts...)
}

// space is what the engine trims around an element of a header value.
const space = `[ \t]`

// nonSpace is a character of an element that is neither a comma nor space.
const nonSpace = `[^, \t]`

// elementRegexp is an RE2 expression for one comma-free element whose
// trimmed value matches the Istio value v; false when none can.
func elementRegexp(v string) (string, bool) {
	isSpace := func(s string, first bool) bool {
		if s == "" {
			return false
		}
		b := s[len(s)-1]
		if first {
			b = s[0]
		}
		return b == ' ' || b == '\t'
	}
	var core string
	switch {
	case v == "*":
		core = nonSpace + `(?:[^,]*` + nonSpace + `)?`
	case strings.HasSuffix(v, "*"):
		lit := strings.TrimSuffix(v, "*")
		if strings.Contains(lit, ",") || isSpace(lit, true) {
			return "", false
		}
		core = regexp.QuoteMeta(lit) + `(?:[^,]*` + nonSpace + `)?`
		if isSpace(lit, false) {
			core = regexp.QuoteMeta(lit) + `[^,]*` + nonSpace
		}
	case strings.HasPrefix(v, "*"):
		lit := v[1:]
		if strings.Contains(lit, ",") || isSpace(lit, false) {
			return "", false
		}
		core = `(?:` + nonSpace + `[^,]*)?` + regexp.QuoteMeta(lit)
		if isSpace(lit, true) {
			core = nonSpace + `[^,]*` + regexp.QuoteMeta(lit)
		}
	default:
		if strings.Contains(v, ",") || isSpace(v, true) || isSpace(v, false) {
			return "", false
		}
		core = regexp.QuoteMeta(v)
	}
	return space + `*` + core + space + `*`, true
}

// ----- building blocks -----

func anyPrincipal() *rbacv3.Principal {
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_Any{Any: true}}
}

func nonePrincipal() *rbacv3.Principal {
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_NotId{NotId: anyPrincipal()}}
}

func anyPermission() *rbacv3.Permission {
	return &rbacv3.Permission{Rule: &rbacv3.Permission_Any{Any: true}}
}

func nonePerm() *rbacv3.Permission {
	return &rbacv3.Permission{Rule: &rbacv3.Permission_NotRule{NotRule: anyPermission()}}
}

func isAnyPrincipal(p *rbacv3.Principal) bool { return p.GetAny() }
func isNonePrincipal(p *rbacv3.Principal) bool {
	return p.GetNotId() != nil && p.GetNotId().GetAny()
}
func isAnyPerm(p *rbacv3.Permission) bool { return p.GetAny() }
func isNonePerm(p *rbacv3.Permission) bool {
	return p.GetNotRule() != nil && p.GetNotRule().GetAny()
}

// andPrincipal, orPrincipal, notPrincipal and their permission twins
// combine and simplify: "any" and "none" fold away.
func andPrincipal(ps ...*rbacv3.Principal) *rbacv3.Principal {
	var ids []*rbacv3.Principal
	for _, p := range ps {
		switch {
		case p == nil || isAnyPrincipal(p):
		case isNonePrincipal(p):
			return nonePrincipal()
		default:
			ids = append(ids, p)
		}
	}
	switch len(ids) {
	case 0:
		return anyPrincipal()
	case 1:
		return ids[0]
	}
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_AndIds{AndIds: &rbacv3.Principal_Set{Ids: ids}}}
}

func orPrincipal(ps ...*rbacv3.Principal) *rbacv3.Principal {
	var ids []*rbacv3.Principal
	for _, p := range ps {
		switch {
		case p == nil || isNonePrincipal(p):
		case isAnyPrincipal(p):
			return anyPrincipal()
		default:
			ids = append(ids, p)
		}
	}
	switch len(ids) {
	case 0:
		return nonePrincipal()
	case 1:
		return ids[0]
	}
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_OrIds{OrIds: &rbacv3.Principal_Set{Ids: ids}}}
}

func notPrincipal(p *rbacv3.Principal) *rbacv3.Principal {
	switch {
	case isAnyPrincipal(p):
		return nonePrincipal()
	case isNonePrincipal(p):
		return anyPrincipal()
	case p.GetNotId() != nil:
		return p.GetNotId()
	}
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_NotId{NotId: p}}
}

func andPerm(ps ...*rbacv3.Permission) *rbacv3.Permission {
	var rules []*rbacv3.Permission
	for _, p := range ps {
		switch {
		case p == nil || isAnyPerm(p):
		case isNonePerm(p):
			return nonePerm()
		default:
			rules = append(rules, p)
		}
	}
	switch len(rules) {
	case 0:
		return anyPermission()
	case 1:
		return rules[0]
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_AndRules{AndRules: &rbacv3.Permission_Set{Rules: rules}}}
}

func orPerm(ps ...*rbacv3.Permission) *rbacv3.Permission {
	var rules []*rbacv3.Permission
	for _, p := range ps {
		switch {
		case p == nil || isNonePerm(p):
		case isAnyPerm(p):
			return anyPermission()
		default:
			rules = append(rules, p)
		}
	}
	switch len(rules) {
	case 0:
		return nonePerm()
	case 1:
		return rules[0]
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_OrRules{OrRules: &rbacv3.Permission_Set{Rules: rules}}}
}

func notPerm(p *rbacv3.Permission) *rbacv3.Permission {
	switch {
	case isAnyPerm(p):
		return nonePerm()
	case isNonePerm(p):
		return anyPermission()
	case p.GetNotRule() != nil:
		return p.GetNotRule()
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_NotRule{NotRule: p}}
}

// orOf is the OR of f over values, "any" when there are none (the field
// is not set); notOf is its negation, "any" when there are none.
func orOf(values []string, f func(string) *rbacv3.Principal) *rbacv3.Principal {
	if len(values) == 0 {
		return anyPrincipal()
	}
	ps := make([]*rbacv3.Principal, len(values))
	for i, v := range values {
		ps[i] = f(v)
	}
	return orPrincipal(ps...)
}

func notOf(values []string, f func(string) *rbacv3.Principal) *rbacv3.Principal {
	if len(values) == 0 {
		return anyPrincipal()
	}
	return notPrincipal(orOf(values, f))
}

func orPermOf(values []string, f func(string) *rbacv3.Permission) *rbacv3.Permission {
	if len(values) == 0 {
		return anyPermission()
	}
	return orPermOfNil(values, f)
}

// orPermOfNil is the OR of f over values, "none" when there are none (for
// a negation: NOT of nothing is anything).
func orPermOfNil(values []string, f func(string) *rbacv3.Permission) *rbacv3.Permission {
	ps := make([]*rbacv3.Permission, len(values))
	for i, v := range values {
		ps[i] = f(v)
	}
	return orPerm(ps...)
}

func principalName(m *matcher.StringMatcher) *rbacv3.Principal {
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_Authenticated_{Authenticated: &rbacv3.Principal_Authenticated{PrincipalName: m}}}
}

func exact(s string) *matcher.StringMatcher {
	return &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: s}}
}

func regexMatcher(re string) *matcher.StringMatcher {
	return &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_SafeRegex{SafeRegex: &matcher.RegexMatcher{Regex: re}}}
}

// valueMatcher is an Istio string value (exact, "prefix*", "*suffix", "*"
// for any non-empty value), case-insensitive when fold.
func valueMatcher(v string, fold bool) *matcher.StringMatcher {
	switch {
	case v == "*":
		return regexMatcher(`(?s)^.+$`)
	case strings.HasSuffix(v, "*"):
		return &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Prefix{Prefix: strings.TrimSuffix(v, "*")}, IgnoreCase: fold}
	case strings.HasPrefix(v, "*"):
		return &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Suffix{Suffix: v[1:]}, IgnoreCase: fold}
	}
	return &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: v}, IgnoreCase: fold}
}
