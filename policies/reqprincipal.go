package policies

import (
	"fmt"
	"strings"
)

// Request principals as Istio matches them. Istio's translation
// (pilot/pkg/security/authz/model/generator.go, requestPrincipalGenerator)
// splits a requestPrincipals value, and a request.auth.principal condition
// value, at its last '/' into an issuer and a subject and matches each
// against the validated token's iss and sub claims apart:
//
//	"*"              iss and sub present and non-empty
//	"*<iss>/<sub>"   iss ends with <iss> ("*" alone: any), sub is <sub>
//	"*<suffix>"      (no '/') any iss, sub ends with <suffix>
//	"<iss>/<sub>*"   iss is <iss>, sub starts with <sub> ("*" alone: any)
//	"<prefix>*"      (no '/') iss starts with <prefix>, any sub
//	"<iss>/<sub>"    both exactly; without '/', iss is the value and sub ""
//
// So a subject that holds a '/' (every JWT-SVID's spiffe:// subject) is
// never matched exactly: the value's last '/' splits inside it. An ALLOW
// rule reads values that way only. A DENY, AUDIT or CUSTOM rule also reads
// a value as a whole against "iss/sub" (the subject alone without iss),
// meshguard's reading before it followed Istio, so that a deny written for
// a subject with a '/' still denies it.

// reqMatcher is one side (iss or sub) of a split value. strAny is Istio's
// ".+": present and non-empty; the others need the claim present.
type reqMatcher = strMatcher

// reqPrincipal is one compiled value.
type reqPrincipal struct {
	iss, sub reqMatcher
	whole    strMatcher
}

type reqPrincipalSet []reqPrincipal

func newReqPrincipal(v string) reqPrincipal {
	idx := strings.LastIndexByte(v, '/')
	found := idx >= 0
	iss, sub := v, ""
	if found {
		iss, sub = v[:idx], v[idx+1:]
	}
	exact := func(s string) reqMatcher { return strMatcher{kind: strExact, v: s} }
	anyOf := reqMatcher{kind: strAny}
	var p reqPrincipal
	switch {
	case v == "*":
		p.iss, p.sub = anyOf, anyOf
	case strings.HasPrefix(v, "*"):
		if found {
			if iss == "*" {
				p.iss = anyOf
			} else {
				p.iss = strMatcher{kind: strSuffix, v: iss[1:]}
			}
			p.sub = exact(sub)
		} else {
			p.iss, p.sub = anyOf, strMatcher{kind: strSuffix, v: v[1:]}
		}
	case strings.HasSuffix(v, "*"):
		if found {
			p.iss = exact(iss)
			if sub == "*" {
				p.sub = anyOf
			} else {
				p.sub = strMatcher{kind: strPrefix, v: sub[:len(sub)-1]}
			}
		} else {
			p.iss, p.sub = strMatcher{kind: strPrefix, v: v[:len(v)-1]}, anyOf
		}
	default:
		p.iss, p.sub = exact(iss), exact(sub)
	}
	p.whole = newStrMatcher(v, false)
	return p
}

// tokenClaims are the iss and sub of a token, and whether it has them.
type tokenClaims struct {
	iss, sub       string
	hasIss, hasSub bool
	whole          string // "iss/sub", or sub alone without iss
}

func claimsOf(j *JWT) tokenClaims {
	var t tokenClaims
	t.iss, t.hasIss = claimOr(j, "iss", j.Issuer)
	t.sub, t.hasSub = claimOr(j, "sub", j.Subject)
	t.whole = j.Principal
	return t
}

// claimOr is a string claim of the token: the field the enforcement point
// filled, else the claim itself (which may be present and empty).
func claimOr(j *JWT, name, field string) (string, bool) {
	if field != "" {
		return field, true
	}
	s, ok := j.Claims[name].(string)
	return s, ok
}

// split reports whether some value matches the token in Istio's reading.
func (ps reqPrincipalSet) split(t *tokenClaims) bool {
	for i := range ps {
		p := &ps[i]
		if t.hasIss && t.hasSub && p.iss.match(t.iss) && p.sub.match(t.sub) {
			return true
		}
	}
	return false
}

// whole reports whether some value, read as a whole, matches "iss/sub".
func (ps reqPrincipalSet) whole(t *tokenClaims) bool {
	if t.whole == "" {
		return false
	}
	for i := range ps {
		if ps[i].whole.match(t.whole) {
			return true
		}
	}
	return false
}

// matchPositive: an ALLOW rule reads the values as Istio does; a deny-side
// rule takes either reading.
func (ps reqPrincipalSet) matchPositive(t *tokenClaims, deny bool) bool {
	if ps.split(t) {
		return true
	}
	return deny && ps.whole(t)
}

// excludes reports whether a negative field excludes the token: on the
// allow side when any reading is in the list, on the deny side only when
// every reading is (a deny-side rule matches when some reading is outside).
func (ps reqPrincipalSet) excludes(t *tokenClaims, deny bool) bool {
	if deny {
		return ps.split(t) && (t.whole == "" || ps.whole(t))
	}
	return ps.split(t) || ps.whole(t)
}

func (c *compiler) requestPrincipals(field string, vals []string) reqPrincipalSet {
	if len(vals) == 0 {
		return nil
	}
	out := make(reqPrincipalSet, 0, len(vals))
	for i, v := range vals {
		if err := validIstioString(v); err != nil {
			c.errf(fmt.Sprintf("%s[%d]", field, i), CodeInvalidValue, "%v", err)
			continue
		}
		out = append(out, newReqPrincipal(v))
	}
	return out
}

// parseClaimPath reads the claim names of a request.auth.claims key after
// "request.auth.claims", as Istio does (extractNameInNestedBrackets):
// "[a][b]" is the nested claim a.b; a name is read up to its first ']' and
// may not hold '['. When that reading fails, the whole key is one bracketed
// name ("[a[b]]" is the claim "a[b]"). meshguard refuses empty names, which
// no token's claim is meant to be.
func parseClaimPath(s string) ([]string, error) {
	var names []string
	for begin := 0; begin < len(s); {
		end := claimEnd(s, begin)
		if end < 0 {
			if !strings.HasPrefix(s, "[") || !strings.HasSuffix(s, "]") || len(s) < 3 {
				return nil, fmt.Errorf("want [name] or [a][b], got %q", s)
			}
			return []string{s[1 : len(s)-1]}, nil
		}
		if end == begin+1 {
			return nil, fmt.Errorf("empty claim name in %q", s)
		}
		names = append(names, s[begin+1:end])
		begin = end + 1
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("want [name] or [a][b], got %q", s)
	}
	return names, nil
}

// claimEnd is the index of the ']' closing the name opened at begin, or -1
// when s[begin] is not '[' or another '[' comes first.
func claimEnd(s string, begin int) int {
	if begin >= len(s) || s[begin] != '[' {
		return -1
	}
	for i := begin + 1; i < len(s); i++ {
		switch s[i] {
		case '[':
			return -1
		case ']':
			return i
		}
	}
	return -1
}
