package policies

import (
	"fmt"
	"reflect"
	"strings"
)

// Lint returns warnings about a set that is valid but probably not what its
// author meant: deprecated fields, rules or values that can never match,
// rules shadowed by an earlier rule of the same policy, and policies that
// have no effect. Every warning is certain: Lint reports only what follows
// from the rules' text, never guesses.
func Lint(s *Set) Diagnostics {
	var l linter
	for i := range s.AuthorizationPolicies {
		l.authorizationPolicy(&s.AuthorizationPolicies[i])
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
	object string
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
		}
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
	l.excluded(s.Principals, s.NotPrincipals, field, "principals", "notPrincipals", istioCovers)
	l.excluded(s.RequestPrincipals, s.NotRequestPrincipals, field, "requestPrincipals", "notRequestPrincipals", istioCovers)
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
