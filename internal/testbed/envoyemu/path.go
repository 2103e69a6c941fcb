package envoyemu

import (
	"strings"

	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
)

// Path handling of the HTTP connection manager, before routing and before
// any HTTP filter sees the request. Only the path is touched; the query is
// kept as received.

// pathAction is what the connection manager does with a request's path.
type pathAction int

const (
	pathContinue pathAction = iota
	pathRedirect            // UNESCAPE_AND_REDIRECT: answer 307 with the new path
	pathReject              // REJECT_REQUEST: answer 400
)

// adjustPath applies normalize_path, merge_slashes and
// path_with_escaped_slashes_action to the :path value p (path and query),
// in Envoy's order: normalization, then slash merging, then the escaped
// slash action on the result.
//
// normalize_path here is RFC 3986 remove_dot_segments, with "%2e" read as
// "." in a segment, as Envoy's (Chromium's) canonicalizer reads it; the
// canonicalizer's other rewrites (backslashes, percent-encoding case) are
// not emulated.
func adjustPath(cm *connManager, p string) (string, pathAction) {
	path, query, hasQuery := strings.Cut(p, "?")
	if cm.normalizePath {
		path = removeDotSegments(path)
	}
	if cm.mergeSlashes {
		path = mergeSlashes(path)
	}
	action := pathContinue
	if hasEscapedSlash(path) {
		switch cm.escapedSlashes {
		case hcmv3.HttpConnectionManager_UNESCAPE_AND_REDIRECT:
			path, action = unescapeSlashes(path), pathRedirect
		case hcmv3.HttpConnectionManager_REJECT_REQUEST:
			action = pathReject
		}
	}
	if hasQuery {
		return path + "?" + query, action
	}
	return path, action
}

func isDot(seg string) bool { return seg == "." || strings.EqualFold(seg, "%2e") }

func isDotDot(seg string) bool {
	if len(seg) < 2 || len(seg) > 6 {
		return false
	}
	l := strings.ToLower(seg)
	return l == ".." || l == ".%2e" || l == "%2e." || l == "%2e%2e"
}

// removeDotSegments is RFC 3986 section 5.2.4 over "/"-separated segments.
func removeDotSegments(p string) string {
	if !strings.HasPrefix(p, "/") {
		return p
	}
	segs := strings.Split(p[1:], "/")
	out := make([]string, 0, len(segs))
	for i, s := range segs {
		last := i == len(segs)-1
		switch {
		case isDot(s):
			if last {
				out = append(out, "")
			}
		case isDotDot(s):
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
			if last {
				out = append(out, "")
			}
		default:
			out = append(out, s)
		}
	}
	return "/" + strings.Join(out, "/")
}

func mergeSlashes(p string) string {
	if !strings.Contains(p, "//") {
		return p
	}
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		if p[i] == '/' && i > 0 && p[i-1] == '/' {
			continue
		}
		b.WriteByte(p[i])
	}
	return b.String()
}

func hasEscapedSlash(p string) bool {
	l := strings.ToLower(p)
	return strings.Contains(l, "%2f") || strings.Contains(l, "%5c")
}

func unescapeSlashes(p string) string {
	return strings.NewReplacer("%2F", "/", "%2f", "/", "%5C", "\\", "%5c", "\\").Replace(p)
}
