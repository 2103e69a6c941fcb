package requestauth

import (
	"net/url"
	"strings"

	"github.com/meshguard/meshguard/policies"
)

// Where tokens are found, as Envoy's jwt_authn extractor
// (source/extensions/filters/http/jwt_authn/extractor.cc) finds them for
// the providers Istio configures:
//
//   - a header location (name, prefix): the header's value, duplicates
//     joined with ','. With a prefix, the value must contain it (anywhere,
//     case-sensitively); the token is the run of base64url characters and
//     dots after it, skipping anything else first (the whole value when
//     there is no such run). Without a prefix, the token is the whole value.
//   - a query parameter: its percent-decoded value.
//   - a cookie: its value (without surrounding quotes) in the cookie header.
//
// Envoy reads the first occurrence of a parameter or cookie; meshguard
// reads every occurrence, and each must be a valid token (a request cannot
// hide a bad token behind a good one).

// location is one place a token can be: a header (with a prefix), a query
// parameter or a cookie, and the providers that read it.
type location struct {
	kind      locKind
	name      string // lowercase header name, parameter or cookie name
	prefix    string
	providers []*policies.JWTProvider
}

type locKind uint8

const (
	locHeader locKind = iota
	locParam
	locCookie
)

func (k locKind) String() string {
	switch k {
	case locParam:
		return "query parameter"
	case locCookie:
		return "cookie"
	}
	return "header"
}

// found is one token at one location.
type found struct {
	token string
	loc   *location
}

// locations merges the providers' locations: one per distinct (kind, name,
// prefix), with every provider that reads it, in provider order.
func locations(ps []*policies.JWTProvider) []*location {
	var out []*location
	add := func(kind locKind, name, prefix string, p *policies.JWTProvider) {
		for _, l := range out {
			if l.kind == kind && l.name == name && l.prefix == prefix {
				l.providers = append(l.providers, p)
				return
			}
		}
		out = append(out, &location{kind: kind, name: name, prefix: prefix, providers: []*policies.JWTProvider{p}})
	}
	for _, p := range ps {
		for _, h := range p.Headers {
			add(locHeader, h.Name, h.Prefix, p)
		}
		for _, n := range p.Params {
			add(locParam, n, "", p)
		}
		for _, n := range p.Cookies {
			add(locCookie, n, "", p)
		}
	}
	return out
}

// HeaderGetter returns a request header by lowercase name, duplicates
// joined with ',' (as Envoy presents them to ext_authz).
type HeaderGetter = policies.HeaderGetter

// extract finds the tokens at the locations. path is the request's :path,
// query included. At most maxTokens are returned; more reports overflow.
func extract(locs []*location, h HeaderGetter, path string) (out []found, overflow bool) {
	add := func(tok string, l *location) {
		if len(out) == maxTokens {
			overflow = true
			return
		}
		out = append(out, found{token: tok, loc: l})
	}
	var query []kv
	queryDone := false
	var cookies []kv
	cookiesDone := false
	for _, l := range locs {
		switch l.kind {
		case locHeader:
			if h == nil {
				continue
			}
			v, ok := h.Get(l.name)
			if !ok {
				continue
			}
			if tok, ok := headerToken(v, l.prefix); ok {
				add(tok, l)
			}
		case locParam:
			if !queryDone {
				query, queryDone = parseQuery(path), true
			}
			for _, p := range query {
				if p.k == l.name {
					add(p.v, l)
				}
			}
		case locCookie:
			if !cookiesDone {
				if h != nil {
					if v, ok := h.Get("cookie"); ok {
						cookies = parseCookies(v)
					}
				}
				cookiesDone = true
			}
			for _, c := range cookies {
				if c.k == l.name {
					add(c.v, l)
				}
			}
		}
	}
	return out, overflow
}

// jwtChars are base64url's alphabet and the dot: what a compact JWT is
// made of.
const jwtChars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."

// headerToken is the token in a header value for a location with prefix,
// as Envoy's extractor reads it.
func headerToken(v, prefix string) (string, bool) {
	if prefix == "" {
		return v, true
	}
	i := strings.Index(v, prefix)
	if i < 0 {
		return "", false
	}
	return jwtAfter(v, i+len(prefix)), true
}

// jwtAfter is the first run of JWT characters at or after offset after,
// or v itself when there is none.
func jwtAfter(v string, after int) string {
	start := -1
	for i := after; i < len(v); i++ {
		if strings.IndexByte(jwtChars, v[i]) >= 0 {
			start = i
			break
		}
	}
	if start < 0 {
		return v
	}
	end := start
	for end < len(v) && strings.IndexByte(jwtChars, v[end]) >= 0 {
		end++
	}
	return v[start:end]
}

type kv struct{ k, v string }

// parseQuery reads the query of a :path: '&'-separated pairs, each split
// at its first '=', percent-decoded (an invalid encoding is kept as sent).
func parseQuery(path string) []kv {
	i := strings.IndexByte(path, '?')
	if i < 0 {
		return nil
	}
	q := path[i+1:]
	if j := strings.IndexByte(q, '#'); j >= 0 {
		q = q[:j]
	}
	var out []kv
	for q != "" {
		var pair string
		pair, q, _ = strings.Cut(q, "&")
		if pair == "" {
			continue
		}
		k, v, _ := strings.Cut(pair, "=")
		out = append(out, kv{unescape(k), unescape(v)})
	}
	return out
}

func unescape(s string) string {
	if strings.IndexByte(s, '%') < 0 {
		return s
	}
	if u, err := url.PathUnescape(s); err == nil {
		return u
	}
	return s
}

// parseCookies reads a cookie header: "name=value" pairs separated by ';'
// (and by ',' where Envoy joined several cookie headers), spaces trimmed, a
// quoted value unquoted.
func parseCookies(v string) []kv {
	var out []kv
	for v != "" {
		var c string
		if i := strings.IndexAny(v, ";,"); i >= 0 {
			c, v = v[:i], v[i+1:]
		} else {
			c, v = v, ""
		}
		c = strings.TrimSpace(c)
		k, val, ok := strings.Cut(c, "=")
		if !ok || k == "" {
			continue
		}
		k, val = strings.TrimSpace(k), strings.TrimSpace(val)
		if len(val) >= 2 && val[0] == '"' && val[len(val)-1] == '"' {
			val = val[1 : len(val)-1]
		}
		out = append(out, kv{k, val})
	}
	return out
}
