package policies

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// strKind is how an Istio string value matches: exact, "prefix*", "*suffix"
// or "*" (any non-empty value, or, for a header, presence).
type strKind uint8

const (
	strExact strKind = iota
	strPrefix
	strSuffix
	strAny
	strPresent // "*" of a header condition: Envoy's present_match, empty values too
)

// strMatcher is one Istio string value. fold makes it case-insensitive.
type strMatcher struct {
	kind strKind
	v    string
	fold bool
}

func newStrMatcher(v string, fold bool) strMatcher {
	switch {
	case v == "*":
		return strMatcher{kind: strAny, fold: fold}
	case strings.HasSuffix(v, "*"):
		return strMatcher{kind: strPrefix, v: v[:len(v)-1], fold: fold}
	case strings.HasPrefix(v, "*"):
		return strMatcher{kind: strSuffix, v: v[1:], fold: fold}
	}
	return strMatcher{kind: strExact, v: v, fold: fold}
}

func (m *strMatcher) match(s string) bool {
	switch m.kind {
	case strPresent:
		return true
	case strAny:
		return s != ""
	case strPrefix:
		if len(s) < len(m.v) {
			return false
		}
		if m.fold {
			return strings.EqualFold(s[:len(m.v)], m.v)
		}
		return s[:len(m.v)] == m.v
	case strSuffix:
		if len(s) < len(m.v) {
			return false
		}
		if m.fold {
			return strings.EqualFold(s[len(s)-len(m.v):], m.v)
		}
		return s[len(s)-len(m.v):] == m.v
	}
	if m.fold {
		return strings.EqualFold(s, m.v)
	}
	return s == m.v
}

// strSet is an OR of string matchers.
type strSet []strMatcher

func (ss strSet) match(s string) bool {
	for i := range ss {
		m := &ss[i]
		if m.kind == strExact && !m.fold {
			// the common case, without a call
			if s == m.v {
				return true
			}
		} else if m.match(s) {
			return true
		}
	}
	return false
}

// validIstioString rejects "*" in the middle of a value, which Istio does
// not support (only prefix, suffix or presence matching).
func validIstioString(v string) error {
	if v == "" {
		return fmt.Errorf("empty value")
	}
	if v == "*" {
		return nil
	}
	inner := v
	if strings.HasPrefix(inner, "*") {
		inner = inner[1:]
	} else if strings.HasSuffix(inner, "*") {
		inner = inner[:len(inner)-1]
	}
	if strings.Contains(inner, "*") {
		return fmt.Errorf("%q: '*' is only allowed as a whole value, a prefix (\"*suffix\") or a suffix (\"prefix*\")", v)
	}
	return nil
}

// ----- ports -----

type portSet []uint32

func (p portSet) match(port uint32) bool {
	for _, v := range p {
		if v == port {
			return true
		}
	}
	return false
}

func parsePort(v string) (uint32, error) {
	n, err := strconv.ParseUint(v, 10, 32)
	if err != nil || n > 65535 {
		return 0, fmt.Errorf("%q is not a port number (0-65535)", v)
	}
	return uint32(n), nil
}

// ----- IP blocks -----

type ipSet []netip.Prefix

func (s ipSet) match(a netip.Addr) bool {
	if !a.IsValid() {
		return false
	}
	a = a.Unmap()
	for _, p := range s {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func parseIPBlock(v string) (netip.Prefix, error) {
	if strings.Contains(v, "/") {
		p, err := netip.ParsePrefix(v)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not an IP address or CIDR block", v)
		}
		if p.Masked() != p {
			return netip.Prefix{}, fmt.Errorf("%q has bits set beyond its prefix length (did you mean %s?)", v, p.Masked())
		}
		return netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-unmapBits(p.Addr())), nil
	}
	a, err := netip.ParseAddr(v)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not an IP address or CIDR block", v)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

func unmapBits(a netip.Addr) int {
	if a.Is4In6() {
		return 96
	}
	return 0
}

// ----- SPIFFE ID patterns (meshguard kinds) -----

// idPattern matches SPIFFE IDs: an exact ID, a whole trust domain
// ("spiffe://td"), or path-segment globs where "*" is exactly one segment and
// a final "**" is one or more segments ("spiffe://td/ns/*/sa/web"). The
// trust domain itself may be "*" only in the form "spiffe://*/..." which is
// rejected: trust is per trust domain, never a wildcard.
type idPattern struct {
	td     string
	segs   []string // nil with tdOnly
	tdOnly bool
	exact  string // the whole ID when it has no globs
	rest   bool   // last segment is "**"
}

func parseIDPattern(v string) (idPattern, error) {
	const scheme = "spiffe://"
	if !strings.HasPrefix(v, scheme) {
		return idPattern{}, fmt.Errorf("%q: a SPIFFE ID pattern starts with spiffe://", v)
	}
	rest := v[len(scheme):]
	td, path, hasPath := strings.Cut(rest, "/")
	if _, err := spiffeid.TrustDomainFromString(td); err != nil || td == "" {
		return idPattern{}, fmt.Errorf("%q: invalid trust domain %q", v, td)
	}
	if !hasPath {
		return idPattern{td: td, tdOnly: true}, nil
	}
	segs := strings.Split(path, "/")
	glob := false
	for i, s := range segs {
		switch s {
		case "*":
			glob = true
		case "**":
			if i != len(segs)-1 {
				return idPattern{}, fmt.Errorf("%q: \"**\" must be the last segment", v)
			}
			glob = true
		default:
			if strings.Contains(s, "*") {
				return idPattern{}, fmt.Errorf("%q: '*' must be a whole path segment", v)
			}
			if err := spiffeid.ValidatePathSegment(s); err != nil {
				return idPattern{}, fmt.Errorf("%q: segment %q: %v", v, s, err)
			}
		}
	}
	p := idPattern{td: td, segs: segs, rest: segs[len(segs)-1] == "**"}
	if !glob {
		id, err := spiffeid.FromString(v)
		if err != nil {
			return idPattern{}, fmt.Errorf("%q: %v", v, err)
		}
		p.exact = id.String()
	}
	return p, nil
}

func (p *idPattern) match(id spiffeid.ID) bool {
	if id.IsZero() {
		return false
	}
	if p.exact != "" {
		return id.String() == p.exact
	}
	if id.TrustDomain().Name() != p.td {
		return false
	}
	if p.tdOnly {
		return true
	}
	path := id.Path()
	// path is "/a/b/c" (validated by spiffeid); walk it without allocating.
	i := 0
	for si, seg := range p.segs {
		if i >= len(path) || path[i] != '/' {
			return false
		}
		i++
		j := strings.IndexByte(path[i:], '/')
		var cur string
		if j < 0 {
			cur = path[i:]
			j = len(path)
		} else {
			cur = path[i : i+j]
			j = i + j
		}
		if seg == "**" && si == len(p.segs)-1 {
			return cur != ""
		}
		if seg != "*" && seg != cur {
			return false
		}
		if seg == "*" && cur == "" {
			return false
		}
		i = j
	}
	return i == len(path)
}

type idSet []idPattern

func (s idSet) match(id spiffeid.ID) bool {
	for i := range s {
		if s[i].match(id) {
			return true
		}
	}
	return false
}

// sourceNamespace reads the namespace of a Kubernetes-style SPIFFE ID by
// position: the path must be exactly /ns/<namespace>/sa/<serviceaccount>.
func sourceNamespace(id spiffeid.ID) (string, bool) {
	if id.IsZero() {
		return "", false
	}
	ns, _, ok := kubeIdentity(id.Path())
	return ns, ok
}

// IDPattern is a compiled SPIFFE ID pattern in the syntax of meshguard's
// kinds: an exact ID, "spiffe://td" for a whole trust domain, or path-segment
// globs where "*" is exactly one segment and a final "**" one or more. Other
// parts of meshguard use it so that a pattern means the same everywhere.
type IDPattern struct {
	p   idPattern
	src string
}

// ParseIDPattern parses a SPIFFE ID pattern.
func ParseIDPattern(s string) (IDPattern, error) {
	p, err := parseIDPattern(s)
	if err != nil {
		return IDPattern{}, err
	}
	return IDPattern{p: p, src: s}, nil
}

// Match reports whether id matches. The zero ID never matches.
func (p *IDPattern) Match(id spiffeid.ID) bool { return p.p.match(id) }

// String returns the pattern as written.
func (p IDPattern) String() string { return p.src }
