package policies

import (
	"fmt"
	"regexp"
	"strings"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// What translators of a policy into another enforcement language (the
// control plane's Envoy RBAC for proxyless gRPC servers) take from the
// engine, so that a pattern and a scope mean there what they mean here:
// patterns as RE2 expressions that match exactly what the engine matches,
// and the engine's own scope resolution.

// idSegment is one valid SPIFFE ID path segment: letters, digits, '.', '-'
// and '_', and neither "." nor "..".
const idSegment = `(?:[A-Za-z0-9_-][A-Za-z0-9._-]*|\.[A-Za-z0-9_-][A-Za-z0-9._-]*|\.\.[A-Za-z0-9._-]+)`

// Regexp returns an RE2 expression, anchored at both ends, that matches the
// string form of exactly the SPIFFE IDs Match matches, and no string that
// is not a valid SPIFFE ID but for the exact ID of a pattern without globs.
func (p IDPattern) Regexp() string {
	if p.p.exact != "" {
		return "^" + regexp.QuoteMeta(p.p.exact) + "$"
	}
	var b strings.Builder
	b.WriteString("^spiffe://")
	b.WriteString(regexp.QuoteMeta(p.p.td))
	if p.p.tdOnly {
		b.WriteString("(?:/" + idSegment + ")*$")
		return b.String()
	}
	for i, seg := range p.p.segs {
		b.WriteString("/")
		switch {
		case seg == "**" && i == len(p.p.segs)-1:
			b.WriteString(idSegment + "(?:/" + idSegment + ")*")
		case seg == "*":
			b.WriteString(idSegment)
		default:
			b.WriteString(regexp.QuoteMeta(seg))
		}
	}
	b.WriteString("$")
	return b.String()
}

// Exact returns the one ID the pattern matches when it has no globs and
// names no whole trust domain.
func (p IDPattern) Exact() (spiffeid.ID, bool) {
	if p.p.exact == "" {
		return spiffeid.ID{}, false
	}
	id, err := spiffeid.FromString(p.p.exact)
	return id, err == nil
}

// NamespaceIDRegexp returns an RE2 expression, anchored at both ends, that
// matches the SPIFFE IDs whose namespace, as the engine reads it for Istio's
// namespaces and source.namespace (the path is exactly
// /ns/<namespace>/sa/<service account>), matches ns: an RE2 expression over
// one path segment.
func NamespaceIDRegexp(ns string) string {
	return `^spiffe://[^/]+/ns/(?:` + ns + `)/sa/[^/]+$`
}

// MatchValue reports whether s matches the Istio string value pattern as
// the engine matches route names, namespaces and the like: exact,
// "prefix*", "*suffix", or "*" for any non-empty value; case-sensitive.
func MatchValue(pattern, s string) bool {
	m := newStrMatcher(pattern, false)
	return m.match(s)
}

// PathPattern is an Istio path value as the engine compiles it: exact,
// "prefix*", "*suffix", "*", or a template (Envoy's uri_template) whose
// segments may be "{*}" (one segment) and "{**}" (zero or more, the last
// operator; literal segments may follow it).
type PathPattern struct {
	m   pathMatcher
	src string
}

// ParsePathPattern parses a path value of a rule's paths or notPaths.
func ParsePathPattern(v string) (PathPattern, error) {
	m, err := compilePath(v)
	if err != nil {
		return PathPattern{}, err
	}
	if strings.ContainsAny(v, "?#") {
		return PathPattern{}, fmt.Errorf("path %q contains '?' or '#'", v)
	}
	if !utf8.ValidString(v) {
		// No expression can state it; no safe request path holds it either
		// (the engine refuses paths with bytes outside ASCII).
		return PathPattern{}, fmt.Errorf("path %q is not valid UTF-8", v)
	}
	return PathPattern{m: m, src: v}, nil
}

// Match reports whether the normalized path p matches. fold is the deny
// side's lenient reading, which the engine gives paths of DENY, AUDIT and
// CUSTOM rules and notPaths of ALLOW rules: case folded, and template
// operators reading any character.
func (p *PathPattern) Match(path string, fold bool) bool { return p.m.match(path, fold) }

// Regexp returns an RE2 expression, anchored at both ends, that matches
// exactly the paths Match matches with the same fold.
func (p PathPattern) Regexp(fold bool) string {
	flags := "(?s)"
	if fold {
		flags = "(?is)"
	}
	q := regexp.QuoteMeta
	switch p.m.kind {
	case pathAny:
		return flags + "^.*$"
	case pathExact:
		return flags + "^" + q(p.m.v) + "$"
	case pathPrefix:
		return flags + "^" + q(p.m.v) + ".*$"
	case pathSuffix:
		return flags + "^.*" + q(p.m.v) + "$"
	}
	// A template is Envoy's uri_template: "{*}" one segment of pchar
	// characters, "{**}" the rest of pchar characters and '/', up to the
	// literal segments after it. Lenient (fold), the operators read any
	// character.
	one, rest := "["+pcharClass+"]+", "["+pcharClass+"/]*"
	if fold {
		one, rest = "[^/]+", ".*"
	}
	parts := make([]string, len(p.m.segs))
	for i, seg := range p.m.segs {
		switch seg {
		case "{**}":
			parts[i] = rest
		case "{*}":
			parts[i] = one
		default:
			parts[i] = q(seg)
		}
	}
	if p.m.any >= 0 {
		// "{**}" also reads nothing: the '/' after it then follows the
		// one before it.
		before := strings.Join(parts[:p.m.any], "/")
		after := strings.Join(parts[p.m.any+1:], "/")
		re := "^/" + before
		if p.m.any > 0 {
			re += "/"
		}
		re += rest
		if after != "" || p.m.any < len(parts)-1 {
			re += "/" + after
		}
		return flags + re + "$"
	}
	return flags + "^/" + strings.Join(parts, "/") + "$"
}

// pcharClass is RFC 3986's pchar less '=', as a character class body: what
// Envoy's uri_template operators match.
const pcharClass = `A-Za-z0-9\-._~%!$&'()+,;:@`

// String returns the value as written.
func (p PathPattern) String() string { return p.src }

// PoliciesFor returns the policy objects whose scope covers the workload t,
// as Decide resolves it for a request to t: those of the root namespace
// (mesh-wide), and in t's namespace those for the whole namespace, those
// whose selector matches t's labels, whose targetRefs name t's service or
// gateway, and whose workload patterns match t's ID. Each is
// "Kind/namespace/name", listed once, whatever its mode (a DefaultDeny whose
// mode is off is not compiled and not listed). A RouteOverride's rules apply
// per route: see Route.
func (s *Snapshot) PoliciesFor(t *Target) []string {
	var arr [maxBuckets]*bucket
	bs := s.collect(&Attributes{Target: *t}, nil, arr[:0], nil)
	var out []string
	seen := map[string]bool{}
	for _, b := range bs {
		for _, ref := range b.policies {
			if !seen[ref] {
				seen[ref] = true
				out = append(out, ref)
			}
		}
	}
	return out
}

// PeerField is one of Istio's peer fields: principals, namespaces,
// serviceAccounts or trustDomains (and the source.principal,
// source.namespace, source.serviceAccount and source.trustDomain conditions,
// which match as the field of the same name). They match the mTLS peer's
// SPIFFE ID only.
type PeerField string

// The peer fields.
const (
	PeerPrincipals      PeerField = "principals"
	PeerNamespaces      PeerField = "namespaces"
	PeerServiceAccounts PeerField = "serviceAccounts"
	PeerTrustDomains    PeerField = "trustDomains"
)

// never matches nothing.
const never = `[^\x00-\x{10FFFF}]`

// PeerRegexp returns an RE2 expression, anchored at both ends, that matches
// the string form of exactly the peer SPIFFE IDs that value of field
// matches in this snapshot (with its mesh's trust domains and aliases), on
// the deny side (DENY, AUDIT and CUSTOM rules) or the allow side; a not-form
// (notPrincipals, ..., notValues) takes the other side, as the engine does.
// namespace is the policy's: a service account named without a namespace
// is in it. The engine's two readings of an ID (see peer.go) are in it: on
// the deny side either, on the allow side both. A value the compiler
// refuses is an error.
func (s *Snapshot) PeerRegexp(field PeerField, value, namespace string, deny bool) (string, error) {
	if !utf8.ValidString(value) || !utf8.ValidString(namespace) {
		return "", fmt.Errorf("%s value %q is not valid UTF-8", field, value)
	}
	q := regexp.QuoteMeta
	switch field {
	case PeerPrincipals:
		v := strings.TrimPrefix(value, "spiffe://")
		if err := validIstioString(v); err != nil {
			return "", err
		}
		m := newPrincipalMatcher(v, s.localTDs)
		lit := `^spiffe://` + valueRegexp(m.m, ".") + `$`
		if !m.local {
			return lit, nil
		}
		loc := `^spiffe://` + s.localRegexp() + valueRegexp(m.rest, ".") + `$`
		switch {
		case m.wildTD && deny:
			return lit + "|" + loc, nil
		case m.wildTD:
			return lit, nil
		case m.rewritten:
			return loc, nil
		case deny:
			return lit + "|" + loc, nil
		}
		// Both readings: the literal one names the trust domain, which
		// must then be one of the mesh's (a cluster.local that is not the
		// mesh's never matches on the allow side).
		td, _, _ := strings.Cut(v, "/")
		if !containsString(s.localTDs, td) {
			return "^" + never + "$", nil
		}
		return lit, nil
	case PeerNamespaces:
		if err := validIstioString(value); err != nil {
			return "", err
		}
		m := newStrMatcher(value, false)
		if deny {
			// Istio's ".*/ns/<value>/.*", a '*' of the value being ".*".
			ns := valueRegexp(m, ".")
			if m.kind == strAny {
				ns = `.*`
			}
			return `(?s)^.*/ns/` + ns + `/.*$`, nil
		}
		return NamespaceIDRegexp(valueRegexp(m, "[^/]")), nil
	case PeerServiceAccounts:
		ns, sa, ok := strings.Cut(value, "/")
		if !ok {
			ns, sa = namespace, value
		}
		if ns == "" || sa == "" || strings.ContainsAny(sa, "/*") || strings.Contains(ns, "*") {
			return "", fmt.Errorf("service account %q: want \"name\" or \"namespace/name\"", value)
		}
		if deny {
			// Istio's "spiffe://.+/ns/<ns>/(.+/|)sa/<sa>(/.+)?".
			return `(?s)^spiffe://.+/ns/` + q(ns) + `/(?:.+/|)sa/` + q(sa) + `(?:/.+)?$`, nil
		}
		return `^spiffe://[^/]+/ns/` + q(ns) + `/sa/` + q(sa) + `$`, nil
	case PeerTrustDomains:
		if err := validIstioString(value); err != nil {
			return "", err
		}
		m := newTDMatcher(value, s.localTDs)
		var td string
		switch m.kind {
		case tdMesh:
			td = s.localRegexp()
		case tdClusterLocal:
			if !deny {
				return "^" + never + "$", nil
			}
			td = `(?:` + s.localRegexp() + `|` + q(DefaultTrustDomain) + `)`
		default:
			td = valueRegexp(m.m, "[^/]")
		}
		return `(?s)^spiffe://` + td + `(?:/.*)?$`, nil
	}
	return "", fmt.Errorf("unknown peer field %q", field)
}

// localRegexp matches one of the mesh's trust domains.
func (s *Snapshot) localRegexp() string {
	alts := make([]string, len(s.localTDs))
	for i, td := range s.localTDs {
		alts[i] = regexp.QuoteMeta(td)
	}
	return `(?:` + strings.Join(alts, "|") + `)`
}

// valueRegexp is an Istio value (exact, prefix, suffix, any non-empty) as
// an unanchored expression whose wildcard part is made of class.
func valueRegexp(m strMatcher, class string) string {
	q := regexp.QuoteMeta(m.v)
	switch m.kind {
	case strAny:
		return `(?s:` + class + `+)`
	case strPrefix:
		return q + `(?s:` + class + `*)`
	case strSuffix:
		return `(?s:` + class + `*)` + q
	}
	return q
}
