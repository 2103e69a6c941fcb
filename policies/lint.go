package policies

import (
	"fmt"
	"reflect"
	"slices"
	"strings"

	"github.com/meshguard/meshguard/policies/internal/strictjson"
)

// Lint returns warnings about a set that is valid but probably not what its
// author meant: deprecated fields, rules or values that can never match,
// rules shadowed by an earlier rule of the same policy, and policies that
// have no effect. Every warning is certain: Lint reports only what follows
// from the rules' text, never guesses.
func Lint(s *Set) Diagnostics {
	l := linter{settings: &s.Settings, jwtSVIDs: usesJWT(s) && !requiresMTLS(s), requestAuthn: len(s.RequestAuthentications) > 0}
	l.local = []string{DefaultTrustDomain}
	if td := s.Settings.TrustDomain; td != "" {
		l.local = []string{td}
	}
	l.local = append(l.local, s.Settings.TrustDomainAliases...)
	for i := range s.AuthorizationPolicies {
		l.authorizationPolicy(&s.AuthorizationPolicies[i])
	}
	l.customProviders(s)
	for i := range s.RequestAuthentications {
		l.requestAuthentication(&s.RequestAuthentications[i])
	}
	for i := range s.IdentityPolicies {
		p := &s.IdentityPolicies[i]
		l.object = objectRef(KindIdentityPolicy, p.Metadata)
		action := strings.ToUpper(p.Spec.Action)
		l.allow = action == "" || action == "ALLOW"
		l.identityRules(p.Spec.Rules, p.Spec.Mode)
		if len(p.Spec.Rules) == 0 && (action == "DENY" || action == "AUDIT") {
			l.warn(CodeNoEffect, "spec.rules", "a %s policy without rules matches no request and has no effect", action)
		}
	}
	for i := range s.RouteOverrides {
		p := &s.RouteOverrides[i]
		l.object = objectRef(KindRouteOverride, p.Metadata)
		action := strings.ToUpper(p.Spec.Action)
		l.allow = action == "" || action == "ALLOW"
		l.identityRules(p.Spec.Rules, p.Spec.Mode)
	}
	return l.diags
}

func objectRef(kind string, m ObjectMeta) string {
	return kind + "/" + m.Namespace + "/" + m.Name
}

type linter struct {
	settings *MeshSettingsSpec
	local    []string // the mesh's trust domains
	jwtSVIDs bool     // the set requires JWT-SVIDs somewhere
	// requestAuthn: the set has RequestAuthentications (end-user tokens).
	requestAuthn bool
	object       string
	// allow is set for ALLOW policies. A negative field on an absent
	// attribute (no principal, no header) refuses on the allow side and
	// matches on the deny side, so `notPrincipals: ["*"]` is a dead ALLOW
	// rule but the usual DENY-plaintext rule.
	allow bool
	diags Diagnostics
}

func (l *linter) warn(code, field, format string, args ...any) {
	l.diags = append(l.diags, Diagnostic{
		Severity: SeverityWarning,
		Code:     code,
		Message:  fmt.Sprintf(format, args...),
		Object:   l.object,
		Field:    field,
	})
}

func (l *linter) authorizationPolicy(p *AuthorizationPolicy) {
	l.object = objectRef(KindAuthorizationPolicy, p.Metadata)
	spec := &p.Spec
	if spec.TargetRef != nil {
		l.warn(CodeDeprecated, "spec.targetRef", "targetRef is deprecated by Istio; use targetRefs")
	}
	action := strings.ToUpper(spec.Action)
	l.allow = action == "" || action == "ALLOW"
	if len(spec.Rules) == 0 && (action == "DENY" || action == "AUDIT" || action == "CUSTOM") {
		l.warn(CodeNoEffect, "spec.rules", "a %s policy without rules matches no request and has no effect", action)
	}
	for i := range spec.Rules {
		r := &spec.Rules[i]
		field := fmt.Sprintf("spec.rules[%d]", i)
		for j := range r.From {
			l.source(&r.From[j].Source, fmt.Sprintf("%s.from[%d].source", field, j))
		}
		for j := range r.To {
			l.operation(&r.To[j].Operation, fmt.Sprintf("%s.to[%d].operation", field, j))
		}
		for j := range r.When {
			c := &r.When[j]
			l.excluded(c.Values, c.NotValues, fmt.Sprintf("%s.when[%d]", field, j), "values", "notValues", exactCovers)
			l.condition(c, fmt.Sprintf("%s.when[%d]", field, j))
		}
		l.peerOnly(r, field)
	}
	for j := 1; j < len(spec.Rules); j++ {
		for i := 0; i < j; i++ {
			if ruleCovers(&spec.Rules[i], &spec.Rules[j]) {
				l.warn(CodeShadowed, fmt.Sprintf("spec.rules[%d]", j),
					"every request this rule matches is already matched by the earlier rule spec.rules[%d]; it is redundant", i)
				break
			}
		}
	}
}

func (l *linter) source(s *Source, field string) {
	l.trustDomainNames(s.Principals, field+".principals", true)
	l.trustDomainNames(s.NotPrincipals, field+".notPrincipals", true)
	l.trustDomainNames(s.TrustDomains, field+".trustDomains", false)
	l.trustDomainNames(s.NotTrustDomains, field+".notTrustDomains", false)
	l.namespaceReadings(len(s.Namespaces)+len(s.ServiceAccounts) > 0, len(s.NotNamespaces)+len(s.NotServiceAccounts) > 0, field)
	l.excluded(s.ServiceAccounts, s.NotServiceAccounts, field, "serviceAccounts", "notServiceAccounts", exactCovers)
	l.excluded(s.TrustDomains, s.NotTrustDomains, field, "trustDomains", "notTrustDomains", istioCovers)
	l.excluded(s.Principals, s.NotPrincipals, field, "principals", "notPrincipals", istioCovers)
	l.excluded(s.RequestPrincipals, s.NotRequestPrincipals, field, "requestPrincipals", "notRequestPrincipals", reqPrincipalCovers)
	l.requestPrincipals(s.RequestPrincipals, field+".requestPrincipals")
	l.requestPrincipals(s.NotRequestPrincipals, field+".notRequestPrincipals")
	l.excluded(s.Namespaces, s.NotNamespaces, field, "namespaces", "notNamespaces", istioCovers)
	l.excluded(s.IPBlocks, s.NotIPBlocks, field, "ipBlocks", "notIpBlocks", exactCovers)
	l.excluded(s.RemoteIPBlocks, s.NotRemoteIPBlocks, field, "remoteIpBlocks", "notRemoteIpBlocks", exactCovers)
}

func (l *linter) operation(o *Operation, field string) {
	l.excluded(o.Hosts, o.NotHosts, field, "hosts", "notHosts", hostCovers)
	l.excluded(o.Ports, o.NotPorts, field, "ports", "notPorts", exactCovers)
	l.excluded(o.Methods, o.NotMethods, field, "methods", "notMethods", istioCovers)
	l.excluded(o.Paths, o.NotPaths, field, "paths", "notPaths", pathCovers)
	l.methods(o.Methods, field+".methods")
	l.paths(o.Paths, field+".paths")
	l.hosts(o.Hosts, field+".hosts")
	l.anyTemplates(o.Paths, field+".paths")
	l.anyTemplates(o.NotPaths, field+".notPaths")
}

// excluded warns about positive values that a negative value of the same
// field excludes, and, in ALLOW rules, about a negative "*", which excludes
// every request that has the attribute while its absence refuses too.
func (l *linter) excluded(pos, neg []string, field, posName, negName string, covers func(broad, narrow string) bool) {
	for i, n := range neg {
		if n == "*" && l.allow {
			l.warn(CodeNeverMatches, fmt.Sprintf("%s.%s[%d]", field, negName, i),
				"%s contains \"*\": in an ALLOW rule this excludes every request, so the rule never matches", negName)
			return
		}
	}
	if len(neg) == 0 {
		return
	}
	dead := 0
	for i, p := range pos {
		for _, n := range neg {
			if covers(n, p) {
				dead++
				l.warn(CodeNeverMatches, fmt.Sprintf("%s.%s[%d]", field, posName, i),
					"%q is excluded by %s %q: this value can never match", p, negName, n)
				break
			}
		}
	}
	if dead > 0 && dead == len(pos) {
		l.warn(CodeNeverMatches, field, "every value of %s is excluded by %s: this never matches", posName, negName)
	}
}

// methods warns about lower-case methods in ALLOW rules, which compare
// exactly; DENY-side rules compare methods case-insensitively, so that no
// spelling evades them, and need no warning.
func (l *linter) methods(methods []string, field string) {
	if !l.allow {
		return
	}
	for i, m := range methods {
		if m != strings.ToUpper(m) {
			l.warn(CodeNeverMatches, fmt.Sprintf("%s[%d]", field, i),
				"method %q is not upper case; methods match exactly and clients send %q, so this never matches", m, strings.ToUpper(m))
		}
	}
}

// paths warns about paths that cannot match any request path.
func (l *linter) paths(paths []string, field string) {
	for i, p := range paths {
		if p != "" && !strings.HasPrefix(p, "/") && !strings.HasPrefix(p, "*") {
			l.warn(CodeNeverMatches, fmt.Sprintf("%s[%d]", field, i),
				"path %q does not begin with \"/\" or \"*\"; request paths always begin with \"/\", so this never matches", p)
		}
	}
}

func (l *linter) identityRules(rules []IdentityRule, policyMode Mode) {
	for i := range rules {
		r := &rules[i]
		field := fmt.Sprintf("spec.rules[%d]", i)
		for j := range r.From {
			f := &r.From[j]
			l.excluded(f.IDs, f.NotIDs, fmt.Sprintf("%s.from[%d]", field, j), "ids", "notIds", exactCovers)
		}
		for j := range r.To {
			t := &r.To[j]
			tf := fmt.Sprintf("%s.to[%d]", field, j)
			l.excluded(t.Methods, t.NotMethods, tf, "methods", "notMethods", istioCovers)
			l.excluded(t.Paths, t.NotPaths, tf, "paths", "notPaths", pathCovers)
			l.methods(t.Methods, tf+".methods")
			l.paths(t.Paths, tf+".paths")
		}
		for j := range r.When {
			c := &r.When[j]
			l.excluded(c.Values, c.NotValues, fmt.Sprintf("%s.when[%d]", field, j), "values", "notValues", exactCovers)
		}
	}
	for j := 1; j < len(rules); j++ {
		for i := 0; i < j; i++ {
			if identityRuleCovers(&rules[i], &rules[j], policyMode) {
				name := fmt.Sprintf("spec.rules[%d]", i)
				if rules[i].Name != "" {
					name += fmt.Sprintf(" (%q)", rules[i].Name)
				}
				l.warn(CodeShadowed, fmt.Sprintf("spec.rules[%d]", j),
					"every request this rule matches is already matched by the earlier rule %s; it is redundant", name)
				break
			}
		}
	}
}

// ----- meanings that changed -----
//
// meshguard reads Istio's fields as Istio does. These warnings point at the
// policies that match differently than they did before: each is certain
// from the set, except peerOnly, which warns where the set shows JWT-SVIDs
// in use (a caller forwarded by a trusted hop in XFCC is not visible in a
// set: see docs/policies.md).

func (l *linter) changed(field, format string, args ...any) {
	l.warn(CodeMeaningChanged, field, format, args...)
}

// meshNamesChanged reports whether "cluster.local" and the mesh's own trust
// domain names mean more, or other, than themselves.
func (l *linter) meshNamesChanged() bool {
	return len(l.local) > 1 || l.local[0] != DefaultTrustDomain
}

// trustDomainNames warns about principals (principal: true) or trust
// domains that name cluster.local or one of the mesh's trust domains.
func (l *linter) trustDomainNames(vals []string, field string, principal bool) {
	if !l.meshNamesChanged() {
		return
	}
	for i, v := range vals {
		td := v
		if principal {
			if strings.HasPrefix(v, "*") {
				continue
			}
			var ok bool
			if td, _, ok = strings.Cut(strings.TrimPrefix(v, "spiffe://"), "/"); !ok {
				continue
			}
		}
		if td == DefaultTrustDomain || contains(l.local, td) {
			l.changed(fmt.Sprintf("%s[%d]", field, i),
				"%q names the mesh's trust domains %v, as Istio reads it: callers of any of them match, and a foreign trust domain named cluster.local does not", v, l.local)
		}
	}
}

// namespaceReadings warns that namespaces and service accounts read Istio's
// way (anywhere in the ID) on the deny side, and in negative fields.
func (l *linter) namespaceReadings(positive, negative bool, field string) {
	if positive && !l.allow {
		l.changed(field, "namespaces and serviceAccounts in a %s rule now also match SPIFFE IDs with more path segments, as Istio reads them (.*/ns/<namespace>/.*)", "deny-side")
	}
	if negative {
		l.changed(field, "notNamespaces and notServiceAccounts now also read a namespace or service account anywhere in the SPIFFE ID, as Istio does")
	}
}

// hosts warns about ALLOW hosts that no longer match a :authority with a
// port or a trailing dot.
func (l *linter) hosts(hosts []string, field string) {
	if !l.allow {
		return
	}
	for i, h := range hosts {
		if h == "*" || strings.HasSuffix(h, "*") || strings.Contains(h, ":") {
			continue
		}
		l.changed(fmt.Sprintf("%s[%d]", field, i),
			"host %q is compared with :authority exactly, as in Istio: a request to %q or %q no longer matches; list host:port too", h, h+":80", h+".")
	}
}

// anyTemplates warns about "{**}" as the last segment, which now matches
// nothing after the last '/' too.
func (l *linter) anyTemplates(paths []string, field string) {
	for i, p := range paths {
		if strings.HasSuffix(p, "/{**}") {
			l.changed(fmt.Sprintf("%s[%d]", field, i),
				"{**} is zero or more segments, as in Envoy: %q now also matches %q", p, strings.TrimSuffix(p, "{**}"))
		}
	}
}

// condition warns about header presence and the peer's conditions.
func (l *linter) condition(c *Condition, field string) {
	if strings.HasPrefix(c.Key, "request.headers[") && (contains(c.Values, "*") || contains(c.NotValues, "*")) {
		l.changed(field, "\"*\" of a header is presence, as Istio's present_match: a header sent with an empty value now counts as present")
	}
	if strings.HasPrefix(c.Key, "request.headers[") && l.allow && (len(c.NotValues) > 0 || slices.ContainsFunc(c.Values, func(v string) bool {
		return v != "*" && (strings.HasPrefix(v, "*") || strings.HasSuffix(v, "*"))
	})) {
		l.changed(field, "a header's comma-separated elements are each a reading of it: this ALLOW condition now needs every element of a duplicated header (or of a value with commas) to match too, not only the joined value")
	}
	switch c.Key {
	case "source.principal":
		l.trustDomainNames(c.Values, field+".values", true)
		l.trustDomainNames(c.NotValues, field+".notValues", true)
	case "source.trustDomain":
		l.trustDomainNames(c.Values, field+".values", false)
		l.trustDomainNames(c.NotValues, field+".notValues", false)
	case "source.namespace", "source.serviceAccount":
		l.namespaceReadings(len(c.Values) > 0, len(c.NotValues) > 0, field)
	case "request.auth.principal":
		l.requestPrincipals(c.Values, field+".values")
		l.requestPrincipals(c.NotValues, field+".notValues")
	}
}

// requestPrincipals warns about request principal values that Istio's
// reading (iss and sub apart, split at the value's last '/') matches
// differently than the whole "iss/sub" meshguard compared before: a value
// naming a subject with a '/' (a JWT-SVID's), and, in a set without
// RequestAuthentication (whose only request principals are JWT-SVIDs, which
// carry no iss unless their issuer sets one), every value.
func (l *linter) requestPrincipals(vals []string, field string) {
	for i, v := range vals {
		f := fmt.Sprintf("%s[%d]", field, i)
		switch {
		case strings.Contains(v, "spiffe://"):
			what := "no longer matches it (an IdentityPolicy's jwt.subjects does)"
			if !l.allow {
				what = "still matches it, reading the value whole as well"
			}
			l.changed(f, "%q: Istio splits a request principal at its last '/' into iss and sub, so a subject holding a '/' (a JWT-SVID's spiffe:// ID) is never matched exactly; this %s rule %s", v, map[bool]string{true: "ALLOW", false: "deny-side"}[l.allow], what)
		case !l.requestAuthn:
			l.changed(f, "%q: Istio matches a request principal's iss and sub apart, and the set has no RequestAuthentication: its only request principals are JWT-SVIDs, and one without an iss claim matches no value (\"*\" included)", v)
		}
	}
}

// requestAuthentication warns about a RequestAuthentication that is valid
// but will not do what its author means.
func (l *linter) requestAuthentication(p *RequestAuthentication) {
	l.object = objectRef(KindRequestAuthentication, p.Metadata)
	spec := &p.Spec
	if spec.TargetRef != nil {
		l.warn(CodeDeprecated, "spec.targetRef", "targetRef is deprecated by Istio; use targetRefs")
	}
	if spec.Selector != nil && len(spec.Selector.MatchLabels) == 0 {
		l.warn(CodeNoEffect, "spec.selector", "workload selector specified without labels: the policy applies to every workload of the namespace")
	}
	if len(spec.JWTRules) == 0 {
		l.warn(CodeNoEffect, "spec.jwtRules", "a RequestAuthentication without jwtRules validates no token and has no effect")
	}
	for i := range spec.JWTRules {
		r := &spec.JWTRules[i]
		f := fmt.Sprintf("spec.jwtRules[%d]", i)
		if r.JWKS != "" {
			problems, err := KeySetProblems([]byte(r.JWKS))
			if err != nil {
				continue // the compiler's error
			}
			usable := keyCount(r.JWKS)
			for _, kp := range problems {
				if kp.Private {
					l.warn(CodePrivateKey, f+".jwks", "jwks key at index %d contains private key material; only public keys are used for verification, and the key set is shipped to every enforcement point", kp.Key)
				}
				if kp.Unusable {
					usable--
					l.warn(CodeUnusableKey, f+".jwks", "jwks key at index %d is not used: %s", kp.Key, kp.Reason)
				}
			}
			if usable <= 0 {
				l.warn(CodeUnusableKey, f+".jwks", "the key set has no key meshguard verifies with: every token of this rule is refused")
			}
			continue
		}
		if r.JWKSURI == "" && r.JWKSURIAlias == "" {
			pr := JWTProvider{Issuer: r.Issuer}
			if pr.DiscoveryURL() == "" {
				l.warn(CodeUnusableKey, f+".issuer", "no jwks or jwksUri, and issuer %q is not an http(s) URL to discover the key set from: every token of this rule is refused", r.Issuer)
			}
		}
	}
}

// keyCount is the number of keys of a key set that KeySetProblems accepted,
// counted as json.Unmarshal into struct{ Keys []json.RawMessage } does:
// every member whose name equals "keys" under case folding is decoded in
// turn (null empties the list), and a document that is not an object, or
// one such member that is neither an array nor null, counts 0.
func keyCount(jwks string) int {
	d := strictjson.NewDecoder([]byte(jwks))
	if d.EOF() {
		return 0
	}
	n := 0
	d.Object("a key set", func(key []byte) bool {
		if !strictjson.Key(key, "keys") {
			d.Skip()
			return true
		}
		if d.Null() {
			n = 0
			return true
		}
		n = d.Array("keys", func(int) { d.Skip() })
		return true
	})
	d.Finish("the key set")
	if d.Err() != nil {
		return 0
	}
	return n
}

// peerOnly warns, where the set requires JWT-SVIDs and does not deny
// plaintext mesh-wide, about Istio peer fields: a caller authenticated by a
// JWT-SVID alone used to be matched as the peer. (Where plaintext is denied
// mesh-wide, such a caller never reaches the rule; that it is denied now is
// the fix of Istio's "require mTLS" idiom, not a meaning anyone relied on.)
func (l *linter) peerOnly(r *Rule, field string) {
	if !l.jwtSVIDs {
		return
	}
	peer := false
	for i := range r.From {
		s := &r.From[i].Source
		peer = peer || len(s.Principals)+len(s.NotPrincipals)+len(s.Namespaces)+len(s.NotNamespaces)+
			len(s.ServiceAccounts)+len(s.NotServiceAccounts)+len(s.TrustDomains)+len(s.NotTrustDomains) > 0
	}
	for i := range r.When {
		switch r.When[i].Key {
		case "source.principal", "source.namespace", "source.serviceAccount", "source.trustDomain":
			peer = true
		}
	}
	if !peer {
		return
	}
	what := "no longer matches a caller authenticated by a JWT-SVID alone, nor a client a trusted hop forwards in XFCC (use requestPrincipals, or an IdentityPolicy's ids)"
	if !l.allow {
		what = "now treats a caller authenticated by a JWT-SVID alone as having no peer (a DENY on notPrincipals denies it), and matches a trusted hop, not the client it forwards in XFCC"
	}
	l.changed(field, "Istio's peer fields match the mTLS peer only: this rule %s", what)
}

// requiresMTLS reports whether the set denies every request without an
// mTLS peer mesh-wide: Istio's idiom, a DENY in the root namespace for every
// workload with a rule of notPrincipals ["*"] alone.
func requiresMTLS(s *Set) bool {
	root := s.Settings.RootNamespace
	if root == "" {
		root = DefaultRootNamespace
	}
	for i := range s.AuthorizationPolicies {
		p := &s.AuthorizationPolicies[i]
		if p.Metadata.Namespace != root || p.Spec.Action != "DENY" || p.Spec.Selector != nil || p.Spec.TargetRef != nil ||
			len(p.Spec.TargetRefs) > 0 || p.Metadata.Annotations[annotationDryRun] == "true" {
			continue
		}
		for _, r := range p.Spec.Rules {
			if len(r.To) == 0 && len(r.When) == 0 && len(r.From) == 1 &&
				reflect.DeepEqual(r.From[0].Source, Source{NotPrincipals: []string{"*"}}) {
				return true
			}
		}
	}
	return false
}

// usesJWT reports whether the set requires JWT-SVIDs or request principals
// anywhere, which shows that requests carry them.
func usesJWT(s *Set) bool {
	for i := range s.IdentityPolicies {
		for _, r := range s.IdentityPolicies[i].Spec.Rules {
			if r.JWT != nil {
				return true
			}
		}
	}
	for i := range s.RouteOverrides {
		for _, r := range s.RouteOverrides[i].Spec.Rules {
			if r.JWT != nil {
				return true
			}
		}
	}
	for i := range s.AuthorizationPolicies {
		for _, r := range s.AuthorizationPolicies[i].Spec.Rules {
			for _, f := range r.From {
				if len(f.Source.RequestPrincipals)+len(f.Source.NotRequestPrincipals) > 0 {
					return true
				}
			}
			for _, c := range r.When {
				if strings.HasPrefix(c.Key, "request.auth.") {
					return true
				}
			}
		}
	}
	return false
}

// customProviders warns about CUSTOM policies whose rules deny: a provider
// that is invalid or not among the declared ones, and, unless several are
// allowed, a second provider in the set (a workload that policies of both
// apply to denies what they match).
func (l *linter) customProviders(s *Set) {
	first := ""
	for i := range s.AuthorizationPolicies {
		p := &s.AuthorizationPolicies[i]
		if !strings.EqualFold(p.Spec.Action, "CUSTOM") || p.Spec.Provider == nil || p.Spec.Provider.Name == "" {
			continue
		}
		l.object = objectRef(KindAuthorizationPolicy, p.Metadata)
		name := p.Spec.Provider.Name
		if err := validProviderName(name); err != nil {
			l.warn(CodeCustomProviderDenies, "spec.provider.name", "provider %q is not a valid extension provider name (%v): as in Istio, every request its rules match is denied", name, err)
			continue
		}
		if ps := s.Settings.ExtensionProviders; len(ps) > 0 && !contains(ps, name) {
			l.warn(CodeCustomProviderDenies, "spec.provider.name", "provider %q is not among the mesh's extension providers %v: as in Istio, every request its rules match is denied", name, ps)
			continue
		}
		if first == "" {
			first = name
		} else if name != first && !s.Settings.MultipleCustomProviders {
			l.warn(CodeCustomProviderDenies, "spec.provider.name",
				"provider %q beside %q: a workload that CUSTOM policies of both apply to denies every request they match, as in Istio (MeshSettings.multipleCustomProviders allows several)", name, first)
		}
	}
}

// ----- coverage: does every request matched by `narrow` match `broad`? -----
//
// These are conservative: false means "not certain", never "certainly not".

// istioCovers is coverage for Istio string matches: exact, "prefix*",
// "*suffix" and "*".
func istioCovers(broad, narrow string) bool {
	switch {
	case broad == "*":
		return true
	case broad == narrow:
		return true
	case len(broad) > 1 && strings.HasSuffix(broad, "*") && !strings.HasPrefix(broad, "*"):
		pre := strings.TrimSuffix(broad, "*")
		// narrow is exact, or a longer prefix pattern
		return strings.HasPrefix(narrow, pre) && !strings.HasPrefix(narrow, "*")
	case len(broad) > 1 && strings.HasPrefix(broad, "*") && !strings.HasSuffix(broad, "*"):
		suf := strings.TrimPrefix(broad, "*")
		return strings.HasSuffix(narrow, suf) && (!strings.HasSuffix(narrow, "*") || narrow == broad)
	}
	return false
}

// pathCovers is istioCovers for paths; templates ({*}, {**}) are only
// covered by "*" or by themselves.
// reqPrincipalCovers reports whether every token the request principal
// narrow matches is matched by broad, in Istio's reading (iss and sub
// apart).
func reqPrincipalCovers(broad, narrow string) bool {
	b, n := newReqPrincipal(broad), newReqPrincipal(narrow)
	return matcherCovers(b.iss, n.iss) && matcherCovers(b.sub, n.sub)
}

// matcherCovers reports whether b matches every string n matches.
func matcherCovers(b, n strMatcher) bool {
	switch b.kind {
	case strAny:
		return n.kind != strExact || n.v != ""
	case strExact:
		return n.kind == strExact && n.v == b.v
	case strPrefix:
		return (n.kind == strExact || n.kind == strPrefix) && strings.HasPrefix(n.v, b.v)
	case strSuffix:
		return (n.kind == strExact || n.kind == strSuffix) && strings.HasSuffix(n.v, b.v)
	}
	return false
}

func pathCovers(broad, narrow string) bool {
	if strings.Contains(broad, "{") || strings.Contains(narrow, "{") {
		return broad == "*" || broad == narrow
	}
	return istioCovers(broad, narrow)
}

// hostCovers is istioCovers for hosts, which match case-insensitively.
func hostCovers(broad, narrow string) bool {
	return istioCovers(strings.ToLower(broad), strings.ToLower(narrow))
}

func exactCovers(broad, narrow string) bool { return broad == narrow }

// fieldCovers: a positive field that is empty constrains nothing; otherwise
// every value of the narrow field must be covered by one of the broad one.
func fieldCovers(broad, narrow []string, covers func(string, string) bool) bool {
	if len(broad) == 0 {
		return true
	}
	if len(narrow) == 0 {
		return false
	}
	for _, n := range narrow {
		ok := false
		for _, b := range broad {
			if covers(b, n) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

// negCovers: the broad side's exclusions must all appear in the narrow side.
func negCovers(broad, narrow []string) bool {
	for _, b := range broad {
		if !contains(narrow, b) {
			return false
		}
	}
	return true
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func sourceCovers(b, n *Source) bool {
	return fieldCovers(b.Principals, n.Principals, istioCovers) && negCovers(b.NotPrincipals, n.NotPrincipals) &&
		fieldCovers(b.RequestPrincipals, n.RequestPrincipals, istioCovers) && negCovers(b.NotRequestPrincipals, n.NotRequestPrincipals) &&
		fieldCovers(b.Namespaces, n.Namespaces, istioCovers) && negCovers(b.NotNamespaces, n.NotNamespaces) &&
		fieldCovers(b.IPBlocks, n.IPBlocks, exactCovers) && negCovers(b.NotIPBlocks, n.NotIPBlocks) &&
		fieldCovers(b.RemoteIPBlocks, n.RemoteIPBlocks, exactCovers) && negCovers(b.NotRemoteIPBlocks, n.NotRemoteIPBlocks)
}

func operationCovers(b, n *Operation) bool {
	return fieldCovers(b.Hosts, n.Hosts, hostCovers) && negCovers(b.NotHosts, n.NotHosts) &&
		fieldCovers(b.Ports, n.Ports, exactCovers) && negCovers(b.NotPorts, n.NotPorts) &&
		fieldCovers(b.Methods, n.Methods, istioCovers) && negCovers(b.NotMethods, n.NotMethods) &&
		fieldCovers(b.Paths, n.Paths, pathCovers) && negCovers(b.NotPaths, n.NotPaths)
}

// conditionsCover: every condition of the broad rule appears, identical, in
// the narrow one (the narrow rule may add more).
func conditionsCover(broad, narrow []Condition) bool {
	for i := range broad {
		found := false
		for j := range narrow {
			if reflect.DeepEqual(broad[i], narrow[j]) {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// listCovers: an empty broad list matches anything; otherwise each narrow
// entry must be covered by some broad entry, and an empty narrow list
// (anything) is only covered by an empty broad one.
func listCovers[T any](broad, narrow []T, covers func(b, n *T) bool) bool {
	if len(broad) == 0 {
		return true
	}
	if len(narrow) == 0 {
		return false
	}
	for j := range narrow {
		ok := false
		for i := range broad {
			if covers(&broad[i], &narrow[j]) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

func ruleCovers(b, n *Rule) bool {
	return listCovers(b.From, n.From, func(x, y *RuleFrom) bool { return sourceCovers(&x.Source, &y.Source) }) &&
		listCovers(b.To, n.To, func(x, y *RuleTo) bool { return operationCovers(&x.Operation, &y.Operation) }) &&
		conditionsCover(b.When, n.When)
}

func setEqual(a, b []string) bool {
	return negCovers(a, b) && negCovers(b, a)
}

func identitySourceCovers(b, n *IdentitySource) bool {
	// How ids and trustDomains combine is the engine's business; only the
	// certain case is used: the same callers, fewer exclusions.
	return setEqual(b.IDs, n.IDs) && setEqual(b.TrustDomains, n.TrustDomains) && negCovers(b.NotIDs, n.NotIDs)
}

func identityTargetCovers(b, n *IdentityTarget) bool {
	return fieldCovers(b.Routes, n.Routes, exactCovers) &&
		fieldCovers(b.Hosts, n.Hosts, hostCovers) &&
		fieldCovers(b.Ports, n.Ports, exactCovers) &&
		fieldCovers(b.Methods, n.Methods, istioCovers) && negCovers(b.NotMethods, n.NotMethods) &&
		fieldCovers(b.Paths, n.Paths, pathCovers) && negCovers(b.NotPaths, n.NotPaths)
}

func identityRuleCovers(b, n *IdentityRule, policyMode Mode) bool {
	// A rule in another mode is not redundant: dry-run and enforce differ.
	bm, nm := b.Mode, n.Mode
	if bm == "" {
		bm = policyMode
	}
	if nm == "" {
		nm = policyMode
	}
	if bm != nm {
		return false
	}
	if b.JWT != nil && !reflect.DeepEqual(b.JWT, n.JWT) {
		return false
	}
	return listCovers(b.From, n.From, identitySourceCovers) &&
		listCovers(b.To, n.To, identityTargetCovers) &&
		conditionsCover(b.When, n.When)
}
