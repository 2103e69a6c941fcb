package detect

import (
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// idPattern matches SPIFFE IDs with the policies package's syntax: an exact
// ID, "spiffe://td" (every ID of a trust domain) and path-segment globs where
// a "*" segment matches exactly one segment ("spiffe://td/ns/*/sa/web") and a
// trailing "**" matches one or more segments.
type idPattern struct {
	td       string   // trust domain name
	segments []string // nil: the whole trust domain
	rest     bool     // trailing "**"
}

func parseIDPattern(s string) (idPattern, error) {
	const scheme = "spiffe://"
	if !strings.HasPrefix(s, scheme) {
		return idPattern{}, fmt.Errorf("identity pattern %q: want spiffe://trust-domain[/path]", s)
	}
	rest := s[len(scheme):]
	td, path, hasPath := strings.Cut(rest, "/")
	if _, err := spiffeid.TrustDomainFromString(td); err != nil || td == "" {
		return idPattern{}, fmt.Errorf("identity pattern %q: %w", s, err)
	}
	p := idPattern{td: td}
	if !hasPath {
		return p, nil
	}
	segs := strings.Split(path, "/")
	for i, seg := range segs {
		switch {
		case seg == "**":
			if i != len(segs)-1 {
				return idPattern{}, fmt.Errorf("identity pattern %q: ** only as the last segment", s)
			}
			p.rest = true
			segs = segs[:i]
		case seg == "*":
		case strings.Contains(seg, "*"):
			return idPattern{}, fmt.Errorf("identity pattern %q: * must be a whole segment", s)
		default:
			if err := spiffeid.ValidatePathSegment(seg); err != nil {
				return idPattern{}, fmt.Errorf("identity pattern %q: segment %q: %w", s, seg, err)
			}
		}
	}
	p.segments = segs
	if p.segments == nil {
		p.segments = []string{}
	}
	return p, nil
}

// match reports whether id matches. The zero ID (no identity) never matches,
// not even "*".
func (p *idPattern) match(id spiffeid.ID) bool {
	if id.IsZero() {
		return false
	}
	if id.TrustDomain().Name() != p.td {
		return false
	}
	if p.segments == nil {
		return true
	}
	path := id.Path() // "/a/b/c" or ""
	for _, seg := range p.segments {
		if len(path) == 0 || path[0] != '/' {
			return false
		}
		path = path[1:]
		end := strings.IndexByte(path, '/')
		if end < 0 {
			end = len(path)
		}
		if seg != "*" && seg != path[:end] {
			return false
		}
		path = path[end:]
	}
	if p.rest {
		return len(path) > 1 // at least one more segment
	}
	return len(path) == 0
}

func parseIDPatterns(field string, in []string) ([]idPattern, []error) {
	var errs []error
	out := make([]idPattern, 0, len(in))
	for _, s := range in {
		p, err := parseIDPattern(s)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", field, err))
			continue
		}
		out = append(out, p)
	}
	return out, errs
}

func matchAny(ps []idPattern, id spiffeid.ID) bool {
	for i := range ps {
		if ps[i].match(id) {
			return true
		}
	}
	return false
}
