package policies

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// The references below are Istio's own readings, built the way Istio's
// translation builds them (pilot/pkg/security/authz/model/generator.go)
// and run by Go's RE2, the engine Envoy runs them with.

// istioNamespaceRegexp is srcNamespaceGenerator's ".*/ns/<ns>/.*".
func istioNamespaceRegexp(v string) *regexp.Regexp {
	parts := strings.Split(v, "*")
	for i, p := range parts {
		parts[i] = regexp.QuoteMeta(p)
	}
	return regexp.MustCompile("^(?:.*/ns/" + strings.Join(parts, ".*") + "/.*)$")
}

// istioServiceAccountRegexp is serviceAccountRegex's
// "spiffe://.+/ns/<ns>/(.+/|)sa/<sa>(/.+)?".
func istioServiceAccountRegexp(ns, sa string) *regexp.Regexp {
	return regexp.MustCompile(fmt.Sprintf("^(?:spiffe://.+/ns/%s/(.+/|)sa/%s(/.+)?)$", regexp.QuoteMeta(ns), regexp.QuoteMeta(sa)))
}

// istioPrincipals is Istio's trust domain rewriting of principals
// (pilot/pkg/security/trustdomain.Bundle.ReplaceTrustDomainAliases): a
// principal of exactly five parts whose trust domain is cluster.local, or
// matches one of the mesh's (exactly, or as a "*suffix" wildcard), is
// written once per trust domain of the mesh, kept as written where its
// wildcard matches that trust domain.
func istioPrincipals(v string, local []string) []string {
	parts := strings.Split(v, "/")
	if len(parts) != 5 || parts[0] == "*" {
		return []string{v}
	}
	td := parts[0]
	wildMatches := func(l string) bool { return strings.HasPrefix(td, "*") && strings.HasSuffix(l, td[1:]) }
	if td != DefaultTrustDomain && !slices.ContainsFunc(local, func(l string) bool { return l == td || wildMatches(l) }) {
		return []string{v}
	}
	var out []string
	for _, l := range local {
		if wildMatches(l) {
			out = append(out, v)
		} else {
			out = append(out, l+"/"+strings.Join(parts[1:], "/"))
		}
	}
	return out
}

// FuzzIstioPeerReadings holds the peer matchers to Istio's readings: the
// deny side of namespaces, service accounts and five-part principals is
// exactly Istio's, and the allow side never matches what Istio's reading
// does not.
func FuzzIstioPeerReadings(f *testing.F) {
	for _, s := range [][3]string{
		{"spiffe://cluster.local/ns/evil/sa/x/pod/y", "evil", "x"},
		{"spiffe://cluster.local/ns/a/x/ns/evil/y", "evil", "y"},
		{"spiffe://ns/evil/x", "evil", "x"},
		{"spiffe://td/ns/shop/cluster/e/sa/api", "shop", "api"},
		{"spiffe://td/ns/shop/sa/api-2", "shop", "api"},
		{"spiffe://td/ns/shop/sa/api/", "shop*", "api"},
		{"spiffe://prod.example/ns/web/sa/frontend", "*b", "frontend"},
		{"spiffe://old.example/ns/web/sa/frontend", "*", "frontend"},
	} {
		f.Add(s[0], s[1], s[2], "cluster.local/ns/web/sa/frontend")
	}
	f.Add("spiffe://some-example/ns/foo/sa/x", "foo", "x", "*-td/ns/foo/sa/x")
	f.Add("spiffe://new-td/ns/foo/sa/x", "foo", "x", "*-td/ns/foo/sa/x")
	f.Add("spiffe://prod.example/ns/foo/sa/x", "foo", "x", "*-td/ns/foo/sa/x")
	f.Add("spiffe://prod.example/ns/foo/sa/x", "foo", "x", "*.example/ns/foo/sa/x")
	local := []string{"prod.example", "old.example", "new-td"}
	f.Fuzz(func(t *testing.T, rawID, ns, sa, principal string) {
		id, err := spiffeid.FromString(rawID)
		if err != nil || id.Path() == "" || !utf8.ValidString(ns) || !utf8.ValidString(sa) || !utf8.ValidString(principal) {
			return // policy values are YAML strings: UTF-8
		}
		var p peerView
		p.init(id, local)
		if validIstioString(ns) == nil {
			m := newStrMatcher(ns, false)
			set := nsSet{m}
			want := istioNamespaceRegexp(ns).MatchString(p.uri)
			if got := set.match(&p, true); got != want {
				t.Fatalf("namespace %q of %s: deny side %v, Istio %v", ns, p.uri, got, want)
			}
			if set.match(&p, false) && !want {
				t.Fatalf("namespace %q of %s: allow side matches what Istio does not", ns, p.uri)
			}
		}
		if ns != "" && sa != "" && !strings.ContainsAny(ns+sa, "*/") {
			set := saSet{{ns: ns, sa: sa}}
			want := istioServiceAccountRegexp(ns, sa).MatchString(p.uri)
			if got := set.match(&p, true); got != want {
				t.Fatalf("service account %s/%s of %s: deny side %v, Istio %v", ns, sa, p.uri, got, want)
			}
			if set.match(&p, false) && !want {
				t.Fatalf("service account %s/%s of %s: allow side matches what Istio does not", ns, sa, p.uri)
			}
		}
		if validIstioString(principal) == nil {
			m := newPrincipalMatcher(principal, local)
			istio := false
			for _, v := range istioPrincipals(principal, local) {
				sm := newStrMatcher(v, false)
				istio = istio || sm.match(p.principal)
			}
			allow, deny := m.match(&p, false), m.match(&p, true)
			if allow && !istio {
				t.Fatalf("principal %q of %s: allow side matches what Istio does not", principal, p.uri)
			}
			if istio && !deny {
				t.Fatalf("principal %q of %s: deny side misses what Istio matches", principal, p.uri)
			}
			if allow && !deny {
				t.Fatalf("principal %q of %s: allow side wider than deny side", principal, p.uri)
			}
		}
	})
}

// envoyTemplateRegexp is Envoy's uri_template as a regular expression
// (source/extensions/path/uri_template_lib): {*} is one or more pchar
// characters, {**} zero or more pchar characters or '/'.
func envoyTemplateRegexp(tmpl string) *regexp.Regexp {
	const lit = `a-zA-Z0-9\-._~%!$&'()+,;:@`
	segs := strings.Split(tmpl[1:], "/")
	for i, s := range segs {
		switch s {
		case "{*}":
			segs[i] = "[" + lit + "]+"
		case "{**}":
			segs[i] = "[" + lit + "/]*"
		default:
			segs[i] = regexp.QuoteMeta(s)
		}
	}
	return regexp.MustCompile("^/" + strings.Join(segs, "/") + "$")
}

// FuzzPathTemplate holds templates to Envoy's uri_template on the allow
// side, and the deny side to a superset of it.
func FuzzPathTemplate(f *testing.F) {
	for _, s := range [][2]string{
		{"/api/private/{**}", "/api/private/"},
		{"/api/private/{**}", "/api/private"},
		{"/files/{*}/x", "/files/a/x"},
		{"/docs/{**}/index.html", "/docs//index.html"},
		{"/{**}", "/"},
		{"/a/{*}/", "/a/b/"},
		{"/u/{*}", "/u/a\"b"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, tmpl, p string) {
		m, err := compilePath(tmpl)
		if err != nil || m.kind != pathTemplate || !utf8.ValidString(tmpl) {
			return
		}
		want := envoyTemplateRegexp(tmpl).MatchString(p)
		if got := m.match(p, false); got != want {
			t.Fatalf("template %q, path %q: %v, Envoy %v", tmpl, p, got, want)
		}
		if want && !m.match(p, true) {
			t.Fatalf("template %q, path %q: the deny side misses what Envoy matches", tmpl, p)
		}
	})
}
