package policies

import (
	"fmt"
	"strings"
)

// pathView is every reading of a request path the engine needs. ALLOW rules
// see norm only (the configured normalization); DENY, AUDIT and CUSTOM rules
// match if any reading matches, so that no encoding trick evades them.
type pathView struct {
	norm   string
	alt    string // the most decoded reading: every %XX, '\' as '/', ';' params dropped, slashes merged
	unsafe string // why the path is ambiguous to backends; "" when it is not
}

// Why a path is unsafe (static strings, part of explain output).
const (
	unsafeNoSlash       = "path does not start with '/'"
	unsafeEscapedSlash  = "path contains an escaped slash or backslash (%2F, %5C)"
	unsafeBackslash     = "path contains a backslash"
	unsafeSemicolon     = "path contains ';' path parameters"
	unsafeControl       = "path contains NUL, control or non-ASCII bytes"
	unsafeBadEscape     = "path contains an invalid percent-encoding"
	unsafeDoubleEncoded = "path contains a double percent-encoding (%25)"
)

func stripQuery(p string) string {
	if i := strings.IndexByte(p, '?'); i >= 0 {
		p = p[:i]
	}
	if i := strings.IndexByte(p, '#'); i >= 0 {
		p = p[:i]
	}
	return p
}

// special marks the bytes classifyPath must look at; every other byte of a
// path is ordinary. '?' and '#' end the path.
var special = func() (t [256]bool) {
	for c := 0; c < 0x20; c++ {
		t[c] = true
	}
	for c := 0x7f; c < 256; c++ {
		t[c] = true
	}
	t['\\'], t[';'], t['%'], t['/'], t['?'], t['#'] = true, true, true, true, true, true
	return t
}()

// viewPath classifies and normalizes a path. It allocates only when the path
// needs rewriting, which ordinary paths do not.
func viewPath(raw, normalization string) pathView {
	p, unsafe, clean := classifyPath(raw)
	if clean {
		return pathView{norm: p, alt: p}
	}
	p = stripQuery(raw)
	return pathView{
		norm:   normalizePath(p, normalization),
		alt:    aggressivePath(p),
		unsafe: unsafe,
	}
}

func isHex(c byte) bool {
	return ('0' <= c && c <= '9') || ('a' <= c && c <= 'f') || ('A' <= c && c <= 'F')
}

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}

// classifyPath reads the path of raw (raw up to its query or fragment) in
// one pass, and returns why the path is unsafe ("" if not) and whether it is
// clean: already in every normal form, so that no rewriting is needed. When
// it is clean it also returns the path.
//
// Looking ahead from byte i never passes the end of the path: the byte that
// ends it, if any, is '?' or '#', which is neither a hex digit, nor '/',
// nor '.'.
func classifyPath(raw string) (p, unsafe string, clean bool) {
	if raw == "" || raw[0] != '/' {
		return "", unsafeNoSlash, false
	}
	clean = true
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		if !special[c] {
			continue
		}
		switch {
		case c == '/':
			if i+1 < len(raw) && (raw[i+1] == '/' || raw[i+1] == '.' && dotSegmentAt(raw, i+1)) {
				clean = false
			}
		case c == '?' || c == '#':
			if clean {
				p = raw[:i]
			}
			return p, unsafe, clean
		case c < 0x20 || c >= 0x7f:
			return "", unsafeControl, false
		case c == '\\':
			unsafe, clean = firstReason(unsafe, unsafeBackslash), false
		case c == ';':
			unsafe, clean = firstReason(unsafe, unsafeSemicolon), false
		case c == '%':
			clean = false
			if i+2 >= len(raw) || !isHex(raw[i+1]) || !isHex(raw[i+2]) {
				return "", unsafeBadEscape, false
			}
			v := unhex(raw[i+1])<<4 | unhex(raw[i+2])
			switch {
			case v == '/' || v == '\\':
				unsafe = firstReason(unsafe, unsafeEscapedSlash)
			case v == '%':
				unsafe = firstReason(unsafe, unsafeDoubleEncoded)
			case v < 0x20 || v >= 0x7f:
				return "", unsafeControl, false
			}
		}
	}
	if clean {
		p = raw
	}
	return p, unsafe, clean
}

func firstReason(cur, r string) string {
	if cur != "" {
		return cur
	}
	return r
}

// dotSegmentAt reports whether a "." or ".." segment starts at i. A
// segment ends at '/', at the end of p, or where the path ends in p (at '?'
// or '#').
func dotSegmentAt(p string, i int) bool {
	if i >= len(p) || p[i] != '.' {
		return false
	}
	if segmentEnd(p, i+1) {
		return true
	}
	return p[i+1] == '.' && segmentEnd(p, i+2)
}

func segmentEnd(p string, i int) bool {
	return i == len(p) || p[i] == '/' || p[i] == '?' || p[i] == '#'
}

func isUnreserved(c byte) bool {
	return ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') || ('0' <= c && c <= '9') ||
		c == '-' || c == '.' || c == '_' || c == '~'
}

// normalizePath applies Istio's pathNormalization. BASE is Envoy's
// normalize_path (RFC 3986: decode unreserved characters, '\' as '/',
// resolve dot segments); MERGE_SLASHES adds merging of repeated slashes;
// DECODE_AND_MERGE_SLASHES also decodes %2F and %5C first.
func normalizePath(p, normalization string) string {
	decodeSlashes := normalization == NormalizationDecodeAndMergeSlashes
	merge := decodeSlashes || normalization == NormalizationMergeSlashes
	var b strings.Builder
	b.Grow(len(p))
	for i := 0; i < len(p); i++ {
		c := p[i]
		if c == '%' && i+2 < len(p) && isHex(p[i+1]) && isHex(p[i+2]) {
			v := unhex(p[i+1])<<4 | unhex(p[i+2])
			if isUnreserved(v) || (decodeSlashes && (v == '/' || v == '\\')) {
				c = v
				i += 2
			} else {
				b.WriteByte('%')
				b.WriteByte(upperHex(p[i+1]))
				b.WriteByte(upperHex(p[i+2]))
				i += 2
				continue
			}
		}
		if c == '\\' {
			c = '/'
		}
		b.WriteByte(c)
	}
	return cleanSegments(b.String(), merge, false)
}

func upperHex(c byte) byte {
	if 'a' <= c && c <= 'f' {
		return c - 'a' + 'A'
	}
	return c
}

// aggressivePath is the reading a lenient backend might make: every
// percent-encoding decoded (repeatedly, to catch double encoding),
// backslashes as slashes, ';' parameters dropped, slashes merged, dot
// segments resolved. DENY rules are matched against it too.
func aggressivePath(p string) string {
	for round := 0; round < 3; round++ {
		if strings.IndexByte(p, '%') < 0 {
			break
		}
		var b strings.Builder
		b.Grow(len(p))
		for i := 0; i < len(p); i++ {
			if p[i] == '%' && i+2 < len(p) && isHex(p[i+1]) && isHex(p[i+2]) {
				b.WriteByte(unhex(p[i+1])<<4 | unhex(p[i+2]))
				i += 2
				continue
			}
			b.WriteByte(p[i])
		}
		p = b.String()
	}
	p = strings.ReplaceAll(p, "\\", "/")
	if p == "" || p[0] != '/' {
		p = "/" + p
	}
	return cleanSegments(p, true, true)
}

// cleanSegments resolves "." and ".." segments (RFC 3986 5.2.4), optionally
// merging empty segments and dropping ";params" from each segment.
func cleanSegments(p string, merge, dropParams bool) string {
	if p == "" {
		return "/"
	}
	segs := strings.Split(p[1:], "/")
	out := make([]string, 0, len(segs))
	for i, s := range segs {
		if dropParams {
			if j := strings.IndexByte(s, ';'); j >= 0 {
				s = s[:j]
			}
		}
		last := i == len(segs)-1
		switch s {
		case ".":
			if last {
				out = append(out, "")
			}
			continue
		case "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
			if last {
				out = append(out, "")
			}
			continue
		case "":
			if merge && !last {
				continue
			}
		}
		out = append(out, s)
	}
	if merge {
		// a trailing empty segment is kept (it is "/x/"), a leading run of
		// them was skipped above
		for len(out) > 1 && out[len(out)-1] == "" && out[len(out)-2] == "" {
			out = out[:len(out)-1]
		}
	}
	return "/" + strings.Join(out, "/")
}

// ----- Istio path matching -----

type pathKind uint8

const (
	pathExact pathKind = iota
	pathPrefix
	pathSuffix
	pathAny
	pathTemplate
)

// pathMatcher is one Istio path value: exact, "prefix*", "*suffix", "*", or
// a template (Envoy's uri_template, which Istio generates for paths with
// "{*}" or "{**}"): "{*}" is one segment, "{**}" zero or more segments (it
// is the last operator; literal segments may follow it).
type pathMatcher struct {
	kind pathKind
	v    string
	segs []string // template segments, after the leading '/'
	any  int      // template: the index of "{**}" in segs, -1 without
}

func compilePath(v string) (pathMatcher, error) {
	if strings.ContainsAny(v, "{}") {
		return compileTemplate(v)
	}
	if err := validIstioString(v); err != nil {
		return pathMatcher{}, err
	}
	m := newStrMatcher(v, false)
	pm := pathMatcher{v: m.v}
	switch m.kind {
	case strAny:
		pm.kind = pathAny
	case strPrefix:
		pm.kind = pathPrefix
	case strSuffix:
		pm.kind = pathSuffix
	default:
		pm.kind = pathExact
	}
	return pm, nil
}

// compileTemplate validates a path template as Istio does: operators are
// whole segments, nothing follows "{**}" but literal segments, and every
// literal segment is a non-empty run of RFC 3986 pchar characters.
func compileTemplate(v string) (pathMatcher, error) {
	if !strings.HasPrefix(v, "/") {
		return pathMatcher{}, fmt.Errorf("path template %q must start with '/'", v)
	}
	segs := strings.Split(v[1:], "/")
	pm := pathMatcher{kind: pathTemplate, v: v, segs: segs, any: -1}
	for i, s := range segs {
		switch {
		case s == "{*}" || s == "{**}":
			if pm.any >= 0 {
				return pathMatcher{}, fmt.Errorf("path template %q: {**} must be the last operator", v)
			}
			if s == "{**}" {
				pm.any = i
			}
		case s == "" && i == len(segs)-1:
			// a trailing '/'
		case strings.ContainsAny(s, "{}*"):
			return pathMatcher{}, fmt.Errorf("path template %q: segment %q: operators must be whole segments {*} or {**}", v, s)
		case !validLiteral(s):
			return pathMatcher{}, fmt.Errorf("path template %q: segment %q: a literal segment is one or more of A-Z a-z 0-9 -._~%%!$&'()+,;:@=", v, s)
		}
	}
	return pm, nil
}

// pchar marks RFC 3986's pchar characters that Envoy's uri_template
// operators match ('*' and '=' excluded, as Envoy does).
var pchar = func() (t [256]bool) {
	for _, c := range "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~%!$&'()+,;:@" {
		t[c] = true
	}
	return t
}()

// validLiteral is Istio's check of a template's literal segment.
func validLiteral(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !pchar[s[i]] && s[i] != '=' {
			return false
		}
	}
	return true
}

func (m *pathMatcher) match(p string, fold bool) bool {
	switch m.kind {
	case pathAny:
		return true
	case pathExact:
		if fold {
			return strings.EqualFold(p, m.v)
		}
		return p == m.v
	case pathPrefix:
		return len(p) >= len(m.v) && eq(p[:len(m.v)], m.v, fold)
	case pathSuffix:
		return len(p) >= len(m.v) && eq(p[len(p)-len(m.v):], m.v, fold)
	}
	return m.matchTemplate(p, fold)
}

func eq(a, b string, fold bool) bool {
	if fold {
		return strings.EqualFold(a, b)
	}
	return a == b
}

// matchTemplate is Envoy's uri_template match, the regular expression
// "/" + the segments joined by '/' with "{*}" as [pchar]+ and "{**}" as
// [pchar/]*. lenient (the deny side) folds case and lets the operators
// match any byte, so that no reading evades a deny.
func (m *pathMatcher) matchTemplate(p string, lenient bool) bool {
	if p == "" || p[0] != '/' {
		return false
	}
	segs := m.segs
	if m.any >= 0 {
		segs = segs[:m.any]
	}
	i := 1
	for si, seg := range segs {
		j := strings.IndexByte(p[i:], '/')
		end := len(p)
		if j >= 0 {
			end = i + j
		}
		cur := p[i:end]
		if seg == "{*}" {
			if !opMatch(cur, lenient) || cur == "" {
				return false
			}
		} else if !eq(cur, seg, lenient) {
			return false
		}
		last := si == len(segs)-1 && m.any < 0
		if last {
			return end == len(p)
		}
		if end == len(p) {
			return false
		}
		i = end + 1
	}
	if m.any < 0 {
		return false // no segments at all: the pattern "/" is not a template
	}
	// p[i:] is what "{**}" and the literal segments after it read.
	rest := p[i:]
	if tail := m.segs[m.any+1:]; len(tail) > 0 {
		n := len(tail) // the '/' before each literal
		for _, t := range tail {
			n += len(t)
		}
		if len(rest) < n {
			return false
		}
		at := len(rest) - n
		for _, t := range tail {
			if rest[at] != '/' || !eq(rest[at+1:at+1+len(t)], t, lenient) {
				return false
			}
			at += 1 + len(t)
		}
		rest = rest[:len(rest)-n]
	}
	return opMatch(rest, lenient)
}

// opMatch reports whether an operator may read s: only pchar characters and
// '/' in Envoy, anything on the lenient side.
func opMatch(s string, lenient bool) bool {
	if lenient {
		return true
	}
	for i := 0; i < len(s); i++ {
		if !pchar[s[i]] && s[i] != '/' {
			return false
		}
	}
	return true
}

// firstSegment returns the first path segment of a pattern's literal part
// (for indexing) when it has one.
func (m *pathMatcher) firstSegment() (string, bool) {
	var lit string
	switch m.kind {
	case pathExact, pathPrefix:
		lit = m.v
	case pathTemplate:
		if len(m.segs) == 0 || strings.HasPrefix(m.segs[0], "{") {
			return "", false
		}
		return m.segs[0], len(m.segs) > 1 || m.segs[0] != ""
	default:
		return "", false
	}
	if !strings.HasPrefix(lit, "/") {
		return "", false
	}
	rest := lit[1:]
	j := strings.IndexByte(rest, '/')
	if j < 0 {
		// "/api*" covers "/apix": the first segment is not fixed, unless exact
		if m.kind == pathExact {
			return rest, true
		}
		return "", false
	}
	return rest[:j], true
}

// firstSegmentOf returns the first segment of a request path.
func firstSegmentOf(p string) string {
	if p == "" || p[0] != '/' {
		return ""
	}
	rest := p[1:]
	if j := strings.IndexByte(rest, '/'); j >= 0 {
		return rest[:j]
	}
	return rest
}
