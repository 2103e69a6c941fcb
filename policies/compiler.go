package policies

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Compile turns a bundle into a Snapshot. A bundle from NewBundle or
// DecodeBundle was compiled when it was validated, and that snapshot is the
// answer; any other bundle (a literal) is validated and compiled now: a set
// that does not compile is refused whole.
func Compile(b *Bundle) (*Snapshot, error) {
	if b == nil {
		return nil, fmt.Errorf("policies: compile: no bundle")
	}
	if b.compiled != nil {
		return b.compiled, nil
	}
	s, diags := compileSet(&b.Set)
	if err := diags.Err(); err != nil {
		return nil, fmt.Errorf("policies: compile bundle %s: %w", b.Version, err)
	}
	s.version, s.hash = b.Version, b.Hash
	return s, nil
}

// Validate checks a set and returns every problem found, errors and
// warnings, each with the object and field it concerns.
func Validate(s *Set) Diagnostics {
	_, diags := compileSet(s)
	return append(diags, Lint(s)...)
}

// Istio's dry-run annotation on AuthorizationPolicy.
const annotationDryRun = "istio.io/dry-run"

type compiler struct {
	diags  Diagnostics
	obj    string
	ns     string // the namespace of the object being compiled
	loc    Location
	ord    int
	snap   *Snapshot
	scopes map[string]*scope
}

func (c *compiler) errf(field, code, format string, args ...any) {
	c.diags = append(c.diags, Diagnostic{Severity: SeverityError, Code: code, Message: fmt.Sprintf(format, args...), Object: c.obj, Field: field, Loc: c.loc})
}

func (c *compiler) warnf(field, code, format string, args ...any) {
	c.diags = append(c.diags, Diagnostic{Severity: SeverityWarning, Code: code, Message: fmt.Sprintf(format, args...), Object: c.obj, Field: field, Loc: c.loc})
}

func (c *compiler) at(kind string, m ObjectMeta, loc Location) {
	c.obj = kind + "/" + m.Namespace + "/" + m.Name
	c.ns = m.Namespace
	c.loc = loc
	if m.Name == "" {
		c.errf("metadata.name", CodeMissingField, "metadata.name is required")
	}
	if m.Namespace == "" {
		c.errf("metadata.namespace", CodeMissingField, "metadata.namespace is required")
	}
}

func compileSet(set *Set) (*Snapshot, Diagnostics) {
	c := &compiler{scopes: map[string]*scope{}}
	s := &Snapshot{set: set, namespaces: map[string]*scope{}}
	c.snap = s

	c.obj, c.loc = "settings", Location{}
	s.rootNS = set.Settings.RootNamespace
	if s.rootNS == "" {
		s.rootNS = DefaultRootNamespace
	}
	switch set.Settings.PathNormalization {
	case "":
		s.normalization = NormalizationBase
	case NormalizationBase, NormalizationMergeSlashes, NormalizationDecodeAndMergeSlashes:
		s.normalization = set.Settings.PathNormalization
	case "NONE":
		c.errf("spec.pathNormalization", CodeInvalidValue, "pathNormalization NONE is not supported: meshguard always normalizes (BASE, MERGE_SLASHES, DECODE_AND_MERGE_SLASHES)")
	default:
		c.errf("spec.pathNormalization", CodeInvalidValue, "unknown pathNormalization %q (BASE, MERGE_SLASHES, DECODE_AND_MERGE_SLASHES)", set.Settings.PathNormalization)
	}
	c.settings(&set.Settings)

	seen := map[string]bool{}
	s.routes = map[string]*routeInfo{}
	s.quarantines = map[string]quarantineEntry{}
	for _, st := range c.stages(set) {
		for i := range st.n {
			m, loc := st.object(i)
			c.at(st.kind, m, loc)
			k := st.kind + "/" + m.Namespace + "/" + m.Name
			if seen[k] {
				c.errf("metadata.name", CodeDuplicateObject, "%s is defined more than once", k)
			}
			seen[k] = true
			st.compile(i)
		}
	}

	// Scopes: the root namespace is the mesh scope.
	if sc := c.scopes[s.rootNS]; sc != nil {
		s.mesh = *sc
		if len(sc.targets) > 0 {
			s.namespaces[s.rootNS] = &scope{targets: sc.targets}
		}
		s.mesh.targets = nil
	}
	for ns, sc := range c.scopes {
		if ns != s.rootNS {
			s.namespaces[ns] = sc
		}
	}
	for _, ri := range s.routes {
		if ri.b != nil {
			buildBucket(ri.b, s.localTDs)
		}
	}
	forEachBucket(s, func(b *bucket) { buildBucket(b, s.localTDs) })
	forEachScope(s, (*scope).indexSelectors)
	forEachScope(s, (*scope).indexPatterns)
	s.nrules = c.ord
	s.views = newViewCache()
	return s, c.diags
}

// stage compiles the objects of one kind: the set's n objects of the kind,
// where each sits (for diagnostics) and how it compiles.
type stage struct {
	kind    string
	n       int
	object  func(i int) (ObjectMeta, Location)
	compile func(i int)
}

// stages lists the set's kinds in the order they compile. Every object is
// located, checked for a duplicate and compiled the same way, whatever its
// kind.
func (c *compiler) stages(set *Set) []stage {
	return []stage{
		{KindAuthorizationPolicy, len(set.AuthorizationPolicies),
			func(i int) (ObjectMeta, Location) { p := &set.AuthorizationPolicies[i]; return p.Metadata, p.Loc },
			func(i int) { c.authorizationPolicy(&set.AuthorizationPolicies[i]) }},
		{KindRequestAuthentication, len(set.RequestAuthentications),
			func(i int) (ObjectMeta, Location) { p := &set.RequestAuthentications[i]; return p.Metadata, p.Loc },
			func(i int) { c.requestAuthentication(&set.RequestAuthentications[i]) }},
		{KindIdentityPolicy, len(set.IdentityPolicies),
			func(i int) (ObjectMeta, Location) { p := &set.IdentityPolicies[i]; return p.Metadata, p.Loc },
			func(i int) { c.identityPolicy(&set.IdentityPolicies[i]) }},
		{KindDefaultDeny, len(set.DefaultDenies),
			func(i int) (ObjectMeta, Location) { p := &set.DefaultDenies[i]; return p.Metadata, p.Loc },
			func(i int) { c.defaultDeny(&set.DefaultDenies[i]) }},
		{KindRouteOverride, len(set.RouteOverrides),
			func(i int) (ObjectMeta, Location) { p := &set.RouteOverrides[i]; return p.Metadata, p.Loc },
			func(i int) { c.routeOverride(&set.RouteOverrides[i]) }},
		{KindTrafficBaseline, len(set.TrafficBaselines),
			func(i int) (ObjectMeta, Location) { p := &set.TrafficBaselines[i]; return p.Metadata, p.Loc },
			func(i int) { c.baseline(&set.TrafficBaselines[i]) }},
		{KindAnomalyProfile, len(set.AnomalyProfiles),
			func(i int) (ObjectMeta, Location) { p := &set.AnomalyProfiles[i]; return p.Metadata, p.Loc },
			func(i int) { c.anomalyProfile(&set.AnomalyProfiles[i]) }},
		{KindQuarantine, len(set.Quarantines),
			func(i int) (ObjectMeta, Location) { p := &set.Quarantines[i]; return p.Metadata, p.Loc },
			func(i int) { c.quarantine(&set.Quarantines[i]) }},
	}
}

// settings compiles what the mesh settings say of trust domains and CUSTOM
// providers.
func (c *compiler) settings(ms *MeshSettingsSpec) {
	s := c.snap
	td := ms.TrustDomain
	if td == "" {
		td = DefaultTrustDomain
	}
	s.localTDs = []string{td}
	if _, err := spiffeid.TrustDomainFromString(td); err != nil {
		c.errf("spec.trustDomain", CodeInvalidValue, "trust domain %q: %v", td, err)
	}
	for i, a := range ms.TrustDomainAliases {
		if _, err := spiffeid.TrustDomainFromString(a); err != nil || a == "" {
			c.errf(fmt.Sprintf("spec.trustDomainAliases[%d]", i), CodeInvalidValue, "trust domain alias %q is not a trust domain name", a)
			continue
		}
		if !containsString(s.localTDs, a) {
			s.localTDs = append(s.localTDs, a)
		}
	}
	for i, p := range ms.ExtensionProviders {
		if err := validProviderName(p); err != nil {
			c.errf(fmt.Sprintf("spec.extensionProviders[%d]", i), CodeInvalidValue, "extension provider %q: %v", p, err)
		}
	}
	s.multiCustom = ms.MultipleCustomProviders
}

// validProviderName is Istio's rule for extension provider names, which
// become parts of Envoy metadata keys: 1 to 63 lowercase letters, digits
// and hyphens, not starting or ending with a hyphen.
func validProviderName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("empty name")
	case len(name) > 63:
		return fmt.Errorf("longer than 63 characters")
	case name[0] == '-' || name[len(name)-1] == '-':
		return fmt.Errorf("starts or ends with a hyphen")
	}
	for i := 0; i < len(name); i++ {
		if ch := name[i]; !('a' <= ch && ch <= 'z' || '0' <= ch && ch <= '9' || ch == '-') {
			return fmt.Errorf("%q at %d: only lowercase letters, digits and hyphens", ch, i)
		}
	}
	return nil
}

// providerProblem says why a CUSTOM policy's provider cannot be used, or
// "" when it can: Istio then turns the policy's rules into DENY rules.
func (c *compiler) providerProblem(name string) string {
	if err := validProviderName(name); err != nil {
		return fmt.Sprintf("provider %q is invalid (%v)", name, err)
	}
	if ps := c.snap.set.Settings.ExtensionProviders; len(ps) > 0 && !containsString(ps, name) {
		return fmt.Sprintf("provider %q is not among the mesh's extension providers %v", name, ps)
	}
	return ""
}

func forEachBucket(s *Snapshot, f func(*bucket)) {
	visit := func(sc *scope) {
		if sc.all != nil {
			f(sc.all)
		}
		for _, x := range sc.selectors {
			f(x.b)
		}
		for _, x := range sc.patterns {
			f(x.b)
		}
		for _, b := range sc.targets {
			f(b)
		}
	}
	visit(&s.mesh)
	for _, sc := range s.namespaces {
		visit(sc)
	}
}

func forEachScope(s *Snapshot, f func(*scope)) {
	f(&s.mesh)
	for _, sc := range s.namespaces {
		f(sc)
	}
}

func buildBucket(b *bucket, local []string) {
	for i := range b.idx {
		b.idx[i].build(local)
		if b.idx[i].hasDryRun {
			b.hasDryRun = true
		}
	}
	if b.defaultDeny[1] && !b.defaultDeny[0] {
		b.hasDryRun = true
	}
}

func (c *compiler) scope(ns string) *scope {
	sc := c.scopes[ns]
	if sc == nil {
		sc = &scope{}
		c.scopes[ns] = sc
	}
	return sc
}

func (c *compiler) nsBucket(ns string) *bucket {
	sc := c.scope(ns)
	if sc.all == nil {
		name := "namespace " + ns
		if ns == c.snap.rootNS {
			name = "mesh (root namespace " + ns + ")"
		}
		sc.all = &bucket{name: name}
	}
	return sc.all
}

func (c *compiler) selectorBucket(ns string, labels map[string]string) *bucket {
	sc := c.scope(ns)
	for _, x := range sc.selectors {
		if sameLabels(x.labels, labels) {
			return x.b
		}
	}
	keys := sortedKeys(labels)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + labels[k]
	}
	b := &bucket{name: "namespace " + ns + " selector " + strings.Join(parts, ",")}
	sc.selectors = append(sc.selectors, selectorBucket{labels: labels, b: b})
	return b
}

func sameLabels(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if bv, ok := b[k]; !ok || bv != v {
			return false
		}
	}
	return true
}

func (c *compiler) targetBucket(ns string, key targetKey) *bucket {
	sc := c.scope(ns)
	if sc.targets == nil {
		sc.targets = map[targetKey]*bucket{}
	}
	b := sc.targets[key]
	if b == nil {
		kind := "Service"
		if key.gateway {
			kind = "Gateway"
		}
		b = &bucket{name: "namespace " + ns + " " + kind + " " + key.name}
		sc.targets[key] = b
	}
	return b
}

func (c *compiler) patternBucket(ns string, field string, workloads []string) *bucket {
	pats := c.idPatterns(field, workloads)
	sc := c.scope(ns)
	b := &bucket{name: "namespace " + ns + " workloads " + strings.Join(workloads, ",")}
	sc.patterns = append(sc.patterns, patternBucket{workloads: pats, b: b})
	return b
}

func parseMode(m Mode) (Mode, bool) {
	switch m {
	case "", ModeEnforce:
		return ModeEnforce, true
	case ModeDryRun, ModeOff:
		return m, true
	}
	return "", false
}

func (c *compiler) mode(field string, m Mode, inherit Mode) Mode {
	if m == "" {
		return inherit
	}
	pm, ok := parseMode(m)
	if !ok {
		c.errf(field, CodeInvalidMode, "mode %q: want enforce, dry-run or off", m)
		return inherit
	}
	return pm
}

func parseAction(s string) (Action, bool) {
	switch s {
	case "", "ALLOW":
		return ActionAllow, true
	case "DENY":
		return ActionDeny, true
	case "AUDIT":
		return ActionAudit, true
	case "CUSTOM":
		return ActionCustom, true
	}
	return 0, false
}

// ----- Istio AuthorizationPolicy -----

func (c *compiler) authorizationPolicy(p *AuthorizationPolicy) {
	switch p.APIVersion {
	case APIVersionIstioV1, APIVersionIstioV1beta1, "":
	default:
		c.errf("apiVersion", CodeUnknownKind, "apiVersion %q: want %s or %s", p.APIVersion, APIVersionIstioV1, APIVersionIstioV1beta1)
	}
	sp := &p.Spec
	act, ok := parseAction(sp.Action)
	if !ok {
		c.errf("spec.action", CodeInvalidAction, "action %q: want ALLOW, DENY, AUDIT or CUSTOM", sp.Action)
		return
	}
	pol := &cpolicy{ref: c.obj, action: act, mode: ModeEnforce, reason: standInReason(act, p.Metadata)}
	switch v := p.Metadata.Annotations[annotationDryRun]; v {
	case "", "false":
	case "true":
		pol.mode = ModeDryRun
	default:
		c.errf("metadata.annotations", CodeInvalidValue, "annotation %s: %q, want \"true\" or \"false\"", annotationDryRun, v)
	}
	idx := act // the index the rules go to
	if act == ActionCustom {
		if sp.Provider == nil || sp.Provider.Name == "" {
			c.errf("spec.provider", CodeMissingField, "a CUSTOM policy needs provider.name")
		} else {
			pol.provider = sp.Provider.Name
			if c.providerProblem(pol.provider) != "" {
				// As Istio: the rules of a CUSTOM policy whose provider
				// cannot be used deny what they match (lint says why).
				idx, pol.reason = ActionDeny, ReasonDeniedCustomProvider
			}
		}
		if pol.mode == ModeDryRun {
			c.errf("metadata.annotations", CodeConflict, "dry-run is not supported for CUSTOM policies (as in Istio)")
		}
	} else if sp.Provider != nil {
		c.errf("spec.provider", CodeConflict, "provider is only valid with action CUSTOM")
	}

	buckets := c.scopeBuckets(p.Metadata.Namespace, sp.Selector, sp.TargetRef, sp.TargetRefs)

	for _, b := range buckets {
		b.policies = append(b.policies, c.obj)
	}
	if act == ActionAllow {
		for _, b := range buckets {
			b.allowPols[1]++
			if pol.mode == ModeEnforce {
				b.allowPols[0]++
			}
		}
	}
	if act == ActionCustom && pol.provider != "" {
		for _, b := range buckets {
			if !containsString(b.providers, pol.provider) {
				b.providers = append(b.providers, pol.provider)
			}
		}
	}
	for i := range sp.Rules {
		f := fmt.Sprintf("spec.rules[%d]", i)
		if act == ActionCustom {
			c.customRule(f, &sp.Rules[i])
		}
		r := c.istioRule(f, &sp.Rules[i], pol, strconv.Itoa(i))
		if r == nil {
			continue
		}
		for _, b := range buckets {
			b.idx[idx].add(r)
		}
	}
}

// scopeBuckets returns the buckets an Istio policy (AuthorizationPolicy,
// RequestAuthentication) of namespace ns applies to: its targetRefs (the
// deprecated targetRef first), else its selector, else the whole namespace
// (the mesh, in the root namespace).
func (c *compiler) scopeBuckets(ns string, sel *WorkloadSelector, ref *PolicyTargetReference, refs []PolicyTargetReference) []*bucket {
	targets := refs
	if ref != nil {
		targets = append([]PolicyTargetReference{*ref}, targets...)
	}
	if sel != nil && len(targets) > 0 {
		c.errf("spec.selector", CodeConflict, "selector and targetRefs are mutually exclusive")
	}
	var buckets []*bucket
	switch {
	case len(targets) > 0:
		for i, t := range targets {
			f := fmt.Sprintf("spec.targetRefs[%d]", i)
			if ref != nil {
				if i == 0 {
					f = "spec.targetRef"
				} else {
					f = fmt.Sprintf("spec.targetRefs[%d]", i-1)
				}
			}
			if t.Namespace != "" && t.Namespace != ns {
				c.errf(f+".namespace", CodeInvalidValue, "targetRefs must be in the policy's namespace %q", ns)
				continue
			}
			if t.Name == "" {
				c.errf(f+".name", CodeMissingField, "targetRefs need a name")
				continue
			}
			switch t.Kind {
			case "Gateway":
				buckets = append(buckets, c.targetBucket(ns, targetKey{gateway: true, name: t.Name}))
			case "Service", "ServiceEntry":
				buckets = append(buckets, c.targetBucket(ns, targetKey{name: t.Name}))
			default:
				c.errf(f+".kind", CodeInvalidValue, "targetRefs kind %q: want Gateway, Service or ServiceEntry", t.Kind)
			}
		}
	case sel != nil && len(sel.MatchLabels) > 0:
		buckets = append(buckets, c.selectorBucket(ns, sel.MatchLabels))
	default:
		buckets = append(buckets, c.nsBucket(ns))
	}
	return buckets
}

// customRule refuses what Istio's validation refuses in a CUSTOM rule:
// identity fields and conditions, which its ext_authz filter cannot see.
func (c *compiler) customRule(field string, ru *Rule) {
	for i := range ru.From {
		s := &ru.From[i].Source
		for _, f := range []struct {
			name string
			n    int
		}{
			{"principals", len(s.Principals)}, {"notPrincipals", len(s.NotPrincipals)},
			{"requestPrincipals", len(s.RequestPrincipals)}, {"notRequestPrincipals", len(s.NotRequestPrincipals)},
			{"namespaces", len(s.Namespaces)}, {"notNamespaces", len(s.NotNamespaces)},
			{"serviceAccounts", len(s.ServiceAccounts)}, {"notServiceAccounts", len(s.NotServiceAccounts)},
			{"trustDomains", len(s.TrustDomains)}, {"notTrustDomains", len(s.NotTrustDomains)},
		} {
			if f.n > 0 {
				c.errf(fmt.Sprintf("%s.from[%d].source.%s", field, i, f.name), CodeConflict, "%s is not supported with action CUSTOM (as in Istio)", f.name)
			}
		}
	}
	for i := range ru.When {
		switch k := ru.When[i].Key; {
		case k == "source.namespace", k == "source.serviceAccount", k == "source.trustDomain", k == "source.principal", strings.HasPrefix(k, "request.auth."):
			c.errf(fmt.Sprintf("%s.when[%d].key", field, i), CodeConflict, "%s is not supported with action CUSTOM (as in Istio)", k)
		}
	}
}

func (c *compiler) newRule(pol *cpolicy, rule string, mode Mode) *crule {
	r := &crule{ord: c.ord, pol: pol, mode: mode, deny: pol.action != ActionAllow, ref: RuleRef{Policy: pol.ref, Rule: rule}}
	c.ord++
	return r
}

func (c *compiler) istioRule(field string, ru *Rule, pol *cpolicy, name string) *crule {
	r := c.newRule(pol, name, pol.mode)
	for i := range ru.From {
		r.from = append(r.from, c.istioSource(fmt.Sprintf("%s.from[%d].source", field, i), &ru.From[i].Source, r.deny))
	}
	for i := range ru.To {
		r.to = append(r.to, c.istioOperation(fmt.Sprintf("%s.to[%d].operation", field, i), &ru.To[i].Operation, r.deny))
	}
	for i := range ru.When {
		if cc, ok := c.condition(fmt.Sprintf("%s.when[%d]", field, i), &ru.When[i], r.deny); ok {
			r.when = append(r.when, cc)
		}
	}
	return r
}

func (c *compiler) istioSource(field string, s *Source, deny bool) cfrom {
	var f cfrom
	f.principals = c.principals(field+".principals", s.Principals)
	f.notPrincipals = c.principals(field+".notPrincipals", s.NotPrincipals)
	f.reqPrincipals = c.requestPrincipals(field+".requestPrincipals", s.RequestPrincipals)
	f.notReqPrincipals = c.requestPrincipals(field+".notRequestPrincipals", s.NotRequestPrincipals)
	f.namespaces = nsSet(c.strings(field+".namespaces", s.Namespaces, false))
	f.notNamespaces = nsSet(c.strings(field+".notNamespaces", s.NotNamespaces, false))
	f.serviceAccounts = c.serviceAccounts(field+".serviceAccounts", s.ServiceAccounts)
	f.notServiceAccounts = c.serviceAccounts(field+".notServiceAccounts", s.NotServiceAccounts)
	f.trustDomains = c.trustDomains(field+".trustDomains", s.TrustDomains)
	f.notTrustDomains = c.trustDomains(field+".notTrustDomains", s.NotTrustDomains)
	if len(s.ServiceAccounts)+len(s.NotServiceAccounts) > 0 && len(s.Principals)+len(s.NotPrincipals)+len(s.Namespaces)+len(s.NotNamespaces) > 0 {
		c.errf(field+".serviceAccounts", CodeConflict, "serviceAccounts cannot be set with namespaces or principals (as in Istio)")
	}
	f.ipBlocks = c.ipBlocks(field+".ipBlocks", s.IPBlocks)
	f.notIPBlocks = c.ipBlocks(field+".notIpBlocks", s.NotIPBlocks)
	f.remoteIPBlocks = c.ipBlocks(field+".remoteIpBlocks", s.RemoteIPBlocks)
	f.notRemoteBlocks = c.ipBlocks(field+".notRemoteIpBlocks", s.NotRemoteIPBlocks)
	if isEmptySource(s) {
		c.errf(field, CodeMissingField, "source has no field: at least one is required")
	}
	return f
}

func isEmptySource(s *Source) bool {
	return len(s.Principals)+len(s.NotPrincipals)+len(s.RequestPrincipals)+len(s.NotRequestPrincipals)+
		len(s.Namespaces)+len(s.NotNamespaces)+len(s.IPBlocks)+len(s.NotIPBlocks)+
		len(s.RemoteIPBlocks)+len(s.NotRemoteIPBlocks)+len(s.ServiceAccounts)+len(s.NotServiceAccounts)+
		len(s.TrustDomains)+len(s.NotTrustDomains) == 0
}

// maxServiceAccounts and maxServiceAccountBytes are Istio's limits.
const (
	maxServiceAccounts     = 16
	maxServiceAccountBytes = 320
)

// serviceAccounts compiles "namespace/name" or "name" (in the policy's
// namespace) values, with Istio's validation: no wildcard, one '/' at
// most, no empty part, at most 16 values of at most 320 bytes.
func (c *compiler) serviceAccounts(field string, vals []string) saSet {
	if len(vals) == 0 {
		return nil
	}
	if len(vals) > maxServiceAccounts {
		c.errf(field, CodeInvalidValue, "%d values: at most %d (as in Istio)", len(vals), maxServiceAccounts)
	}
	out := make(saSet, 0, len(vals))
	for i, v := range vals {
		f := fmt.Sprintf("%s[%d]", field, i)
		ns, sa, hasNS := strings.Cut(v, "/")
		if !hasNS {
			ns, sa = c.ns, v
		}
		switch {
		case v == "":
			c.errf(f, CodeInvalidValue, "empty value")
		case strings.Contains(v, "*"):
			c.errf(f, CodeInvalidValue, "service account %q: wildcards are not allowed", v)
		case strings.Count(v, "/") > 1, ns == "", sa == "":
			c.errf(f, CodeInvalidValue, "service account %q: want \"name\" or \"namespace/name\"", v)
		case len(v) > maxServiceAccountBytes:
			c.errf(f, CodeInvalidValue, "service account of %d bytes: at most %d", len(v), maxServiceAccountBytes)
		default:
			out = append(out, saMatcher{ns: ns, sa: sa})
		}
	}
	return out
}

// trustDomains compiles trust domain values: exact, "prefix*", "*suffix"
// or "*", never with '/'.
func (c *compiler) trustDomains(field string, vals []string) tdSet {
	if len(vals) == 0 {
		return nil
	}
	out := make(tdSet, 0, len(vals))
	for i, v := range vals {
		f := fmt.Sprintf("%s[%d]", field, i)
		if err := validIstioString(v); err != nil {
			c.errf(f, CodeInvalidValue, "%v", err)
			continue
		}
		if strings.ContainsAny(v, "/ \t\r\n") {
			c.errf(f, CodeInvalidValue, "trust domain %q contains '/' or white space", v)
			continue
		}
		out = append(out, newTDMatcher(v, c.snap.localTDs))
	}
	return out
}

// principals compiles Istio principals ("trust-domain/ns/x/sa/y", with
// prefix/suffix wildcards). A "spiffe://" prefix is accepted with a warning.
func (c *compiler) principals(field string, vals []string) principalSet {
	if len(vals) == 0 {
		return nil
	}
	out := make(principalSet, 0, len(vals))
	for i, v := range vals {
		f := fmt.Sprintf("%s[%d]", field, i)
		if strings.HasPrefix(v, "spiffe://") {
			c.warnf(f, CodeInvalidPrincipal, "principal %q: Istio principals have no spiffe:// prefix; read as %q", v, v[len("spiffe://"):])
			v = v[len("spiffe://"):]
		}
		if err := validIstioString(v); err != nil {
			c.errf(f, CodeInvalidPrincipal, "principal: %v", err)
			continue
		}
		m := newStrMatcher(v, false)
		if m.kind == strExact {
			if _, err := spiffeid.FromString("spiffe://" + v); err != nil {
				c.errf(f, CodeInvalidPrincipal, "principal %q is not a SPIFFE ID without its scheme (trust-domain/path): %v", v, err)
				continue
			}
		}
		if strings.ContainsAny(v, " \t\r\n") {
			c.errf(f, CodeInvalidPrincipal, "principal %q contains white space", v)
			continue
		}
		out = append(out, newPrincipalMatcher(v, c.snap.localTDs))
	}
	return out
}

func (c *compiler) strings(field string, vals []string, fold bool) strSet {
	if len(vals) == 0 {
		return nil
	}
	out := make(strSet, 0, len(vals))
	for i, v := range vals {
		if err := validIstioString(v); err != nil {
			c.errf(fmt.Sprintf("%s[%d]", field, i), CodeInvalidValue, "%v", err)
			continue
		}
		out = append(out, newStrMatcher(v, fold))
	}
	return out
}

func (c *compiler) ipBlocks(field string, vals []string) ipSet {
	if len(vals) == 0 {
		return nil
	}
	out := make(ipSet, 0, len(vals))
	for i, v := range vals {
		p, err := parseIPBlock(v)
		if err != nil {
			c.errf(fmt.Sprintf("%s[%d]", field, i), CodeInvalidIPBlock, "%v", err)
			continue
		}
		out = append(out, p)
	}
	return out
}

func (c *compiler) ports(field string, vals []string) portSet {
	if len(vals) == 0 {
		return nil
	}
	out := make(portSet, 0, len(vals))
	for i, v := range vals {
		p, err := parsePort(v)
		if err != nil {
			c.errf(fmt.Sprintf("%s[%d]", field, i), CodeInvalidPort, "%v", err)
			continue
		}
		out = append(out, p)
	}
	return out
}

func (c *compiler) hosts(field string, vals []string) strSet {
	if len(vals) == 0 {
		return nil
	}
	out := make(strSet, 0, len(vals))
	for i, v := range vals {
		f := fmt.Sprintf("%s[%d]", field, i)
		if err := validIstioString(v); err != nil {
			c.errf(f, CodeInvalidHost, "%v", err)
			continue
		}
		if strings.ContainsAny(v, "/ \t") {
			c.errf(f, CodeInvalidHost, "host %q contains '/' or white space", v)
			continue
		}
		out = append(out, newStrMatcher(v, true))
	}
	return out
}

// methods: warnings about their case are Lint's.
func (c *compiler) methods(field string, vals []string, fold bool) strSet {
	return c.strings(field, vals, fold)
}

func (c *compiler) paths(field string, vals []string) []pathMatcher {
	if len(vals) == 0 {
		return nil
	}
	out := make([]pathMatcher, 0, len(vals))
	for i, v := range vals {
		f := fmt.Sprintf("%s[%d]", field, i)
		m, err := compilePath(v)
		if err != nil {
			c.errf(f, CodeInvalidPath, "%v", err)
			continue
		}
		if strings.ContainsAny(v, "?#") {
			c.errf(f, CodeInvalidPath, "path %q contains '?' or '#': queries and fragments are never part of the matched path", v)
			continue
		}
		out = append(out, m)
	}
	return out
}

func (c *compiler) istioOperation(field string, o *Operation, deny bool) cto {
	var t cto
	t.hosts = c.hosts(field+".hosts", o.Hosts)
	t.notHosts = c.hosts(field+".notHosts", o.NotHosts)
	t.ports = c.ports(field+".ports", o.Ports)
	t.notPorts = c.ports(field+".notPorts", o.NotPorts)
	t.methods = c.methods(field+".methods", o.Methods, deny)
	t.notMethods = c.methods(field+".notMethods", o.NotMethods, !deny)
	t.paths = c.paths(field+".paths", o.Paths)
	t.notPaths = c.paths(field+".notPaths", o.NotPaths)
	if len(o.Hosts)+len(o.NotHosts)+len(o.Ports)+len(o.NotPorts)+len(o.Methods)+len(o.NotMethods)+len(o.Paths)+len(o.NotPaths) == 0 {
		c.errf(field, CodeMissingField, "operation has no field: at least one is required")
	}
	return t
}

// condition compiles one `when` entry with Istio's documented keys.
func (c *compiler) condition(field string, w *Condition, deny bool) (ccond, bool) {
	var cc ccond
	cc.key = w.Key
	if len(w.Values) == 0 && len(w.NotValues) == 0 {
		c.errf(field, CodeInvalidCondition, "condition %q needs values or notValues", w.Key)
		return cc, false
	}
	key := w.Key
	bracket := func(prefix string) (string, bool) {
		if !strings.HasPrefix(key, prefix+"[") || !strings.HasSuffix(key, "]") {
			return "", false
		}
		return key[len(prefix)+1 : len(key)-1], true
	}
	switch {
	case strings.HasPrefix(key, "request.headers"):
		name, ok := bracket("request.headers")
		if !ok || name == "" || strings.ContainsAny(name, "[] ") {
			c.errf(field+".key", CodeInvalidCondition, "key %q: want request.headers[name]", key)
			return cc, false
		}
		cc.kind, cc.name = condHeader, strings.ToLower(name)
		cc.values = presence(c.strings(field+".values", w.Values, false))
		cc.notValues = presence(c.strings(field+".notValues", w.NotValues, false))
		return cc, true
	case key == "source.ip", key == "remote.ip", key == "destination.ip":
		cc.kind = map[string]condKind{"source.ip": condSourceIP, "remote.ip": condRemoteIP, "destination.ip": condDestIP}[key]
		cc.ips = c.ipBlocks(field+".values", w.Values)
		cc.notIPs = c.ipBlocks(field+".notValues", w.NotValues)
		return cc, true
	case key == "destination.port":
		cc.kind = condDestPort
		cc.ports = c.ports(field+".values", w.Values)
		cc.notPorts = c.ports(field+".notValues", w.NotValues)
		return cc, true
	case key == "source.principal", key == "source.namespace", key == "source.serviceAccount", key == "source.trustDomain":
		// The same matching as the source's field of the same name.
		f := &cfrom{}
		switch key {
		case "source.principal":
			f.principals = c.principals(field+".values", w.Values)
			f.notPrincipals = c.principals(field+".notValues", w.NotValues)
		case "source.namespace":
			f.namespaces = nsSet(c.strings(field+".values", w.Values, false))
			f.notNamespaces = nsSet(c.strings(field+".notValues", w.NotValues, false))
		case "source.serviceAccount":
			f.serviceAccounts = c.serviceAccounts(field+".values", w.Values)
			f.notServiceAccounts = c.serviceAccounts(field+".notValues", w.NotValues)
		default:
			f.trustDomains = c.trustDomains(field+".values", w.Values)
			f.notTrustDomains = c.trustDomains(field+".notValues", w.NotValues)
		}
		f.seal()
		cc.kind, cc.peer = condSourcePeer, f
		return cc, true
	case key == "request.auth.principal":
		cc.kind = condAuthPrincipal
		cc.reqP = c.requestPrincipals(field+".values", w.Values)
		cc.notReqP = c.requestPrincipals(field+".notValues", w.NotValues)
		return cc, true
	case key == "request.auth.audiences":
		cc.kind = condAuthAudiences
	case key == "request.auth.presenter":
		cc.kind = condAuthPresenter
	case strings.HasPrefix(key, "request.auth.claims"):
		path, err := parseClaimPath(strings.TrimPrefix(key, "request.auth.claims"))
		if err != nil {
			c.errf(field+".key", CodeInvalidCondition, "key %q: %v (request.auth.claims[name], request.auth.claims[a][b])", key, err)
			return cc, false
		}
		cc.kind, cc.claim = condAuthClaims, path
	case key == "connection.sni":
		cc.kind = condSNI
	case strings.HasPrefix(key, "experimental.envoy.filters."):
		c.errf(field+".key", CodeInvalidCondition, "key %q: experimental Envoy filter metadata is not supported", key)
		return cc, false
	default:
		c.errf(field+".key", CodeInvalidCondition, "unknown condition key %q", key)
		return cc, false
	}
	cc.values = c.strings(field+".values", w.Values, false)
	cc.notValues = c.strings(field+".notValues", w.NotValues, false)
	return cc, true
}

// presence makes "*" mean a header's presence, empty value included, as
// Envoy's present_match that Istio generates for it.
func presence(ss strSet) strSet {
	for i := range ss {
		if ss[i].kind == strAny {
			ss[i].kind = strPresent
		}
	}
	return ss
}

// ----- meshguard kinds -----

func (c *compiler) checkMeshguardVersion(v string) {
	if v != APIVersionMeshguard && v != "" {
		c.errf("apiVersion", CodeUnknownKind, "apiVersion %q: want %s", v, APIVersionMeshguard)
	}
}

func (c *compiler) idPatterns(field string, vals []string) idSet {
	if len(vals) == 0 {
		return nil
	}
	out := make(idSet, 0, len(vals))
	for i, v := range vals {
		p, err := parseIDPattern(v)
		if err != nil {
			c.errf(fmt.Sprintf("%s[%d]", field, i), CodeInvalidPattern, "%v", err)
			continue
		}
		out = append(out, p)
	}
	return out
}

// meshBuckets returns the bucket a namespace-level meshguard object applies
// to: its workloads patterns, or the whole namespace (mesh, in the root).
func (c *compiler) meshBucket(ns string, workloads []string) *bucket {
	if len(workloads) > 0 {
		return c.patternBucket(ns, "spec.workloads", workloads)
	}
	return c.nsBucket(ns)
}

func (c *compiler) identityPolicy(p *IdentityPolicy) {
	c.checkMeshguardVersion(p.APIVersion)
	act, ok := parseAction(p.Spec.Action)
	if !ok || act == ActionCustom {
		c.errf("spec.action", CodeInvalidAction, "action %q: want ALLOW, DENY or AUDIT", p.Spec.Action)
		return
	}
	mode := c.mode("spec.mode", p.Spec.Mode, ModeEnforce)
	pol := &cpolicy{ref: c.obj, action: act, mode: mode, reason: standInReason(act, p.Metadata)}
	b := c.meshBucket(p.Metadata.Namespace, p.Spec.Workloads)
	b.policies = append(b.policies, c.obj)
	c.identityRules("spec.rules", p.Spec.Rules, pol, b)
}

func (c *compiler) identityRules(field string, rules []IdentityRule, pol *cpolicy, b *bucket) {
	if pol.mode == ModeOff {
		return
	}
	if pol.action == ActionAllow {
		b.allowPols[1]++
		if pol.mode == ModeEnforce {
			b.allowPols[0]++
		}
	}
	names := map[string]bool{}
	for i := range rules {
		ru := &rules[i]
		f := fmt.Sprintf("%s[%d]", field, i)
		name := ru.Name
		if name == "" {
			name = strconv.Itoa(i)
		} else if names[name] {
			c.errf(f+".name", CodeDuplicateObject, "rule name %q is used twice", name)
		}
		names[name] = true
		mode := c.mode(f+".mode", ru.Mode, pol.mode)
		if mode == ModeOff {
			continue
		}
		r := c.newRule(pol, name, mode)
		for j := range ru.From {
			s := &ru.From[j]
			sf := fmt.Sprintf("%s.from[%d]", f, j)
			var cf cfrom
			cf.ids = c.idPatterns(sf+".ids", s.IDs)
			cf.notIDs = c.idPatterns(sf+".notIds", s.NotIDs)
			for k, td := range s.TrustDomains {
				if _, err := spiffeid.TrustDomainFromString(td); err != nil || strings.Contains(td, "/") {
					c.errf(fmt.Sprintf("%s.trustDomains[%d]", sf, k), CodeInvalidValue, "trust domain %q is not valid", td)
				}
			}
			cf.callerDomains = s.TrustDomains
			if len(s.IDs)+len(s.NotIDs)+len(s.TrustDomains) == 0 {
				c.errf(sf, CodeMissingField, "from entry has no field: at least one is required")
			}
			r.from = append(r.from, cf)
		}
		for j := range ru.To {
			t := &ru.To[j]
			tf := fmt.Sprintf("%s.to[%d]", f, j)
			var ct cto
			ct.routes = c.strings(tf+".routes", t.Routes, false)
			ct.hosts = c.hosts(tf+".hosts", t.Hosts)
			ct.ports = c.ports(tf+".ports", t.Ports)
			ct.methods = c.methods(tf+".methods", t.Methods, r.deny)
			ct.notMethods = c.methods(tf+".notMethods", t.NotMethods, !r.deny)
			ct.paths = c.paths(tf+".paths", t.Paths)
			ct.notPaths = c.paths(tf+".notPaths", t.NotPaths)
			if len(t.Routes)+len(t.Hosts)+len(t.Ports)+len(t.Methods)+len(t.NotMethods)+len(t.Paths)+len(t.NotPaths) == 0 {
				c.errf(tf, CodeMissingField, "to entry has no field: at least one is required")
			}
			r.to = append(r.to, ct)
		}
		for j := range ru.When {
			if cc, ok := c.condition(fmt.Sprintf("%s.when[%d]", f, j), &ru.When[j], r.deny); ok {
				r.when = append(r.when, cc)
			}
		}
		if ru.JWT != nil {
			r.jwt = c.jwt(f+".jwt", ru.JWT)
		}
		b.idx[pol.action].add(r)
	}
}

func (c *compiler) jwt(field string, j *JWTRequirement) *cjwt {
	out := &cjwt{audiences: j.Audiences, trustDomains: j.TrustDomains}
	if len(j.Audiences) == 0 {
		c.errf(field+".audiences", CodeMissingField, "a JWT-SVID requirement needs at least one audience")
	}
	for i, a := range j.Audiences {
		if a == "" {
			c.errf(fmt.Sprintf("%s.audiences[%d]", field, i), CodeInvalidValue, "empty audience")
		}
	}
	for i, td := range j.TrustDomains {
		if _, err := spiffeid.TrustDomainFromString(td); err != nil || strings.Contains(td, "/") {
			c.errf(fmt.Sprintf("%s.trustDomains[%d]", field, i), CodeInvalidValue, "trust domain %q is not valid", td)
		}
	}
	out.subjects = c.idPatterns(field+".subjects", j.Subjects)
	for i, cl := range j.Claims {
		f := fmt.Sprintf("%s.claims[%d]", field, i)
		if cl.Name == "" {
			c.errf(f+".name", CodeMissingField, "claim name is required")
			continue
		}
		if len(cl.Values) == 0 {
			c.errf(f+".values", CodeMissingField, "claim %q needs values", cl.Name)
			continue
		}
		out.claims = append(out.claims, cclaim{path: strings.Split(cl.Name, "."), values: c.strings(f+".values", cl.Values, false)})
	}
	return out
}

func (c *compiler) defaultDeny(p *DefaultDeny) {
	c.checkMeshguardVersion(p.APIVersion)
	mode := c.mode("spec.mode", p.Spec.Mode, ModeEnforce)
	if mode == ModeOff {
		return
	}
	b := c.meshBucket(p.Metadata.Namespace, p.Spec.Workloads)
	b.policies = append(b.policies, c.obj)
	b.defaultDeny[1] = true
	if mode == ModeEnforce {
		b.defaultDeny[0] = true
	}
	if b.defaultRef.IsZero() {
		b.defaultRef = RuleRef{Policy: c.obj}
	}
}

func (c *compiler) routeOverride(p *RouteOverride) {
	c.checkMeshguardVersion(p.APIVersion)
	sp := &p.Spec
	if sp.Route == "" {
		c.errf("spec.route", CodeMissingField, "spec.route (the Envoy route name) is required")
		return
	}
	if _, dup := c.snap.routes[sp.Route]; dup {
		c.errf("spec.route", CodeDuplicateObject, "route %q already has an override", sp.Route)
		return
	}
	mode := c.mode("spec.mode", sp.Mode, "")
	ri := &routeInfo{spec: *sp, ref: RuleRef{Policy: c.obj}}
	ri.spec.Mode = mode
	c.snap.routes[sp.Route] = ri
	if sp.AllowUnsafePaths {
		c.warnf("spec.allowUnsafePaths", CodeNoEffect, "route %q accepts ambiguous paths; DENY rules still match every reading, ALLOW rules only the normalized one", sp.Route)
	}
	if a := sp.Anomaly; a != nil {
		if a.Response != "" && !validResponse(a.Response) {
			c.errf("spec.anomaly.response", CodeInvalidValue, "response %q: want log, count, rate-limit, block or quarantine", a.Response)
		}
		if a.RateZ != nil && !(*a.RateZ > 0) {
			c.errf("spec.anomaly.rateZ", CodeInvalidValue, "rateZ must be positive")
		}
		if a.MinRPS != nil && !(*a.MinRPS > 0) {
			c.errf("spec.anomaly.minRps", CodeInvalidValue, "minRps must be positive")
		}
		if a.ErrorRate != nil && !(*a.ErrorRate > 0 && *a.ErrorRate <= 1) {
			c.errf("spec.anomaly.errorRatio", CodeInvalidValue, "errorRatio must be in (0, 1]")
		}
		switch ps := c.snap.set.AnomalyProfiles; {
		case a.Profile == "" || anomalyProfileNamed(ps, a.Profile):
		case len(ps) == 0 && a.Profile == DefaultAnomalyProfile:
			// The built-in profile of a set without profiles.
		case len(ps) == 0:
			// A set without profiles (or one object validated on its own,
			// as the Kubernetes watcher does): every route uses the
			// detectors' built-in profile.
			c.warnf("spec.anomaly.profile", CodeNoEffect, "anomaly profile %q: the set has no AnomalyProfile; the built-in %q applies", a.Profile, DefaultAnomalyProfile)
		default:
			c.errf("spec.anomaly.profile", CodeInvalidValue, "anomaly profile %q does not exist", a.Profile)
		}
	}
	if len(sp.Rules) > 0 {
		act, ok := parseAction(sp.Action)
		if !ok || act == ActionCustom {
			c.errf("spec.action", CodeInvalidAction, "action %q: want ALLOW, DENY or AUDIT", sp.Action)
			return
		}
		inherit := mode
		if inherit == "" || inherit == ModeOff {
			inherit = ModeEnforce
		}
		pol := &cpolicy{ref: c.obj, action: act, mode: inherit, reason: ReasonDeniedByPolicy}
		ri.b = &bucket{name: "route " + sp.Route}
		c.identityRules("spec.rules", sp.Rules, pol, ri.b)
	} else if sp.Action != "" {
		c.warnf("spec.action", CodeNoEffect, "action without rules has no effect")
	}
}

// anomalyProfileNamed: a RouteOverride names a profile by its name alone.
func anomalyProfileNamed(ps []AnomalyProfile, name string) bool {
	for i := range ps {
		if ps[i].Metadata.Name == name {
			return true
		}
	}
	return false
}

// validEgressDestination: an IP address, or a host name (a trailing dot
// allowed) without a scheme, port, path or space.
func validEgressDestination(d string) bool {
	if _, err := netip.ParseAddr(d); err == nil {
		return true
	}
	h := strings.TrimSuffix(d, ".")
	return h != "" && !strings.ContainsAny(h, "/: ")
}

// standInReason is the reason a DENY's rules deny with: a fail-closed
// stand-in's (AnnotationConversionError) say so.
func standInReason(act Action, m ObjectMeta) Reason {
	if act == ActionDeny && m.Annotations[AnnotationConversionError] != "" {
		return ReasonDeniedInvalidPolicy
	}
	return ReasonDeniedByPolicy
}

func validResponse(r string) bool {
	switch r {
	case "log", "count", "rate-limit", "block", "quarantine":
		return true
	}
	return false
}

func (c *compiler) baseline(p *TrafficBaseline) {
	c.checkMeshguardVersion(p.APIVersion)
	rank := map[string]int{BaselineLearn: 1, BaselineShadow: 2, BaselineEnforce: 3}
	r, ok := rank[p.Spec.Mode]
	if !ok {
		c.errf("spec.mode", CodeInvalidMode, "baseline mode %q: want learn, shadow or enforce", p.Spec.Mode)
		return
	}
	if r > rank[c.snap.baseline] {
		c.snap.baseline = p.Spec.Mode
	}
	for i, e := range p.Spec.Edges {
		f := fmt.Sprintf("spec.edges[%d]", i)
		src, err := parseIDPattern(e.Source)
		if err != nil {
			c.errf(f+".source", CodeInvalidPattern, "%v", err)
			continue
		}
		if e.Destination == "" {
			c.errf(f+".destination", CodeMissingField, "edge destination (service) is required")
			continue
		}
		c.snap.edges = append(c.snap.edges, cedge{source: src, dest: strings.TrimSuffix(e.Destination, "."), routes: e.Routes})
	}
}

func (c *compiler) anomalyProfile(p *AnomalyProfile) {
	c.checkMeshguardVersion(p.APIVersion)
	sp := &p.Spec
	pats := c.idPatterns("spec.workloads", sp.Workloads)
	dur := func(field, v string) {
		if v == "" {
			return
		}
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			c.errf(field, CodeInvalidDuration, "duration %q: want a positive Go duration such as 30s", v)
		}
	}
	// The filter's detectors (wasm/internal/detect) read these fields
	// without checking them again: every check lives here.
	if r := sp.Rate; r != nil {
		dur("spec.rate.halfLife", r.HalfLife)
		if !(r.ZScore >= 0) || !(r.MinRPS >= 0) {
			c.errf("spec.rate", CodeInvalidValue, "zScore and minRps must not be negative")
		}
	}
	if e := sp.Errors; e != nil {
		dur("spec.errors.window", e.Window)
		if e.MinRequests < 0 {
			c.errf("spec.errors.minRequests", CodeInvalidValue, "minRequests must not be negative")
		}
		for _, v := range []float64{e.AuthRatio, e.NotFoundRatio, e.ErrorRatio} {
			if !(v >= 0 && v <= 1) {
				c.errf("spec.errors", CodeInvalidValue, "ratios must be in [0, 1]")
				break
			}
		}
	}
	if e := sp.Enumeration; e != nil {
		dur("spec.enumeration.window", e.Window)
		if e.MaxPaths < 0 || e.MaxDestinations < 0 || e.MaxPaths > MaxEnumerationPaths || e.MaxDestinations > MaxEnumerationDestinations {
			c.errf("spec.enumeration", CodeInvalidValue, "maxPaths must be in [0, %d] and maxDestinations in [0, %d] (0: the default)", MaxEnumerationPaths, MaxEnumerationDestinations)
		}
	}
	if e := sp.Egress; e != nil {
		for i, d := range e.Destinations {
			if !validEgressDestination(d) {
				c.errf(fmt.Sprintf("spec.egress.destinations[%d]", i), CodeInvalidValue, "%q is neither a host name nor an IP address", d)
			}
		}
		c.idPatterns("spec.egress.allowedIds", e.AllowedIDs)
	}
	if l := sp.Lateral; l != nil && l.MaxNewEdges < 0 {
		c.errf("spec.lateral.maxNewEdges", CodeInvalidValue, "maxNewEdges must not be negative")
	}
	detectors := map[string]bool{"rate": true, "errors": true, "enumeration": true, "egress": true, "lateral": true}
	for _, k := range sortedKeys(sp.Responses) {
		if !detectors[k] {
			c.errf("spec.responses."+k, CodeInvalidValue, "unknown detector %q (rate, errors, enumeration, egress, lateral)", k)
		}
		if !validResponse(sp.Responses[k]) {
			c.errf("spec.responses."+k, CodeInvalidValue, "response %q: want log, count, rate-limit, block or quarantine", sp.Responses[k])
		}
	}
	dur("spec.quarantineFor", sp.QuarantineFor)
	if co := sp.Correlation; co != nil {
		if co.Window != "" {
			if d, err := time.ParseDuration(co.Window); err != nil || d <= 0 || d > MaxCorrelationWindow {
				c.errf("spec.correlation.window", CodeInvalidDuration, "window %q: want a positive Go duration of at most %s", co.Window, MaxCorrelationWindow)
			}
		}
		if co.MaxDestinations < 0 {
			c.errf("spec.correlation.maxDestinations", CodeInvalidValue, "maxDestinations must not be negative")
		}
		switch co.Response {
		case "", "log", "quarantine":
		default:
			c.errf("spec.correlation.response", CodeInvalidValue, "response %q: want log or quarantine", co.Response)
		}
	}
	c.snap.profiles = append(c.snap.profiles, cprofile{workloads: pats, p: p})
}

func (c *compiler) quarantine(p *Quarantine) {
	c.checkMeshguardVersion(p.APIVersion)
	id, err := spiffeid.FromString(p.Spec.Identity)
	if err != nil {
		c.errf("spec.identity", CodeInvalidSPIFFEID, "identity %q: %v", p.Spec.Identity, err)
		return
	}
	var exp int64
	if p.Spec.ExpiresAt != "" {
		t, ok := parseRFC3339(p.Spec.ExpiresAt)
		if !ok {
			c.errf("spec.expiresAt", CodeInvalidTime, "expiresAt %q: want RFC 3339", p.Spec.ExpiresAt)
			return
		}
		exp = t
	}
	q := quarantineEntry{expires: exp, reason: p.Spec.Reason, ref: RuleRef{Policy: c.obj}}
	// Several quarantines of one identity: the longest wins.
	if old, ok := c.snap.quarantines[id.String()]; ok && (old.expires == 0 || (exp != 0 && old.expires > exp)) {
		return
	}
	c.snap.quarantines[id.String()] = q
}
