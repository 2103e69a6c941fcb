package policies_test

import (
	"testing"

	"github.com/meshguard/meshguard/policies"
)

// TestDenyHoldsAgainstTricks: for every normalization setting, a corpus of
// path, host, method and header tricks never slips past a DENY rule. Each
// trick must be denied — by the DENY rule itself or as an unsafe path — and
// never allowed, even though an ALLOW-everything policy is in place.
func TestDenyHoldsAgainstTricks(t *testing.T) {
	const policy = `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: shop}
spec:
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: shop}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin", "/admin/*"]}}]
  - to: [{operation: {paths: ["/internal/{**}"], methods: [DELETE]}}]
  - to: [{operation: {hosts: ["secret.example.com"]}}]
  - to: [{operation: {paths: ["/tenant/*"]}}]
    when: [{key: "request.headers[x-role]", values: ["evil"]}]
  - to: [{operation: {paths: ["/export/*"]}}]
    when: [{key: "request.headers[x-role]", notValues: ["auditor"]}]`
	type trick struct {
		name, method, host, path string
		headers                  map[string]string
	}
	h := func(k, v string) map[string]string { return map[string]string{k: v} }
	tricks := []trick{
		{"plain", "GET", "", "/admin", nil},
		{"sub path", "GET", "", "/admin/users", nil},
		{"trailing slash", "GET", "", "/admin/", nil},
		{"double slash", "GET", "", "//admin", nil},
		{"double slash inside", "GET", "", "/admin//users", nil},
		{"many slashes", "GET", "", "///admin///users", nil},
		{"dot segment", "GET", "", "/./admin", nil},
		{"dot dot segment", "GET", "", "/public/../admin", nil},
		{"dot dot past root", "GET", "", "/../../admin/users", nil},
		{"trailing dot segment", "GET", "", "/admin/users/.", nil},
		{"encoded dot", "GET", "", "/%2e/admin", nil},
		{"encoded dot dot", "GET", "", "/public/%2e%2e/admin", nil},
		{"encoded dot dot upper", "GET", "", "/public/%2E%2E/admin", nil},
		{"mixed encoded dot dot", "GET", "", "/public/.%2e/admin", nil},
		{"encoded letter", "GET", "", "/%61dmin", nil},
		{"encoded letters", "GET", "", "/%61%64%6d%69%6e/users", nil},
		{"encoded slash", "GET", "", "/admin%2Fusers", nil},
		{"encoded slash lower", "GET", "", "/x/..%2fadmin", nil},
		{"encoded backslash", "GET", "", "/x/..%5Cadmin", nil},
		{"backslash", "GET", "", "/x\\..\\admin", nil},
		{"backslash prefix", "GET", "", "\\admin", nil},
		{"double encoding", "GET", "", "/x/%252e%252e/admin", nil},
		{"double encoded slash", "GET", "", "/admin%252Fusers", nil},
		{"semicolon param", "GET", "", "/admin;jsessionid=1", nil},
		{"semicolon segment", "GET", "", "/x;/../admin", nil},
		{"semicolon dot dot", "GET", "", "/..;/admin", nil},
		{"NUL", "GET", "", "/admin%00.png", nil},
		{"raw NUL", "GET", "", "/admin\x00", nil},
		{"tab", "GET", "", "/admin\t", nil},
		{"newline", "GET", "", "/admin\n/x", nil},
		{"DEL byte", "GET", "", "/admin\x7f", nil},
		{"non-ASCII", "GET", "", "/admin\xc0\xaf", nil},
		{"overlong UTF-8 slash", "GET", "", "/x/..%c0%afadmin", nil},
		{"bad escape", "GET", "", "/admin%zz", nil},
		{"truncated escape", "GET", "", "/admin%2", nil},
		{"query", "GET", "", "/admin?x=/public", nil},
		{"query with encoded path", "GET", "", "/admin?%2F", nil},
		{"fragment", "GET", "", "/admin#/public", nil},
		{"no leading slash", "GET", "", "admin", nil},
		{"absolute URI", "GET", "", "http://web/admin", nil},
		{"asterisk", "OPTIONS", "", "*", nil},
		{"upper case path", "GET", "", "/ADMIN", nil},
		{"mixed case path", "GET", "", "/Admin/Users", nil},
		{"method lower case", "delete", "", "/internal/x", nil},
		{"method mixed case", "Delete", "", "/internal/a/b", nil},
		{"template dot dot", "DELETE", "", "/internal/x/../y", nil},
		{"host", "GET", "secret.example.com", "/", nil},
		{"host upper", "GET", "SECRET.Example.COM", "/", nil},
		{"host port", "GET", "secret.example.com:443", "/", nil},
		{"host trailing dot", "GET", "secret.example.com.", "/", nil},
		{"host trailing dot and port", "GET", "Secret.Example.com.:8443", "/", nil},
		{"header", "GET", "", "/tenant/1", h("x-role", "evil")},
		{"duplicated header", "GET", "", "/tenant/1", h("x-role", "ok,evil")},
		{"duplicated header spaced", "GET", "", "/tenant/1", h("x-role", "ok, evil")},
		{"duplicated header first", "GET", "", "/tenant/1", h("x-role", "evil,ok")},
		{"notValues duplicated", "GET", "", "/export/all", h("x-role", "auditor,intruder")},
		{"notValues missing header", "GET", "", "/export/all", nil},
	}
	for _, norm := range []string{policies.NormalizationBase, policies.NormalizationMergeSlashes, policies.NormalizationDecodeAndMergeSlashes} {
		s := compileYAML(t, policy+"\n---\napiVersion: meshguard.dev/v1alpha1\nkind: MeshSettings\nmetadata: {name: mesh, namespace: istio-system}\nspec: {pathNormalization: "+norm+"}")
		for _, tr := range tricks {
			a := rq(frontend, tr.method, tr.path)
			if tr.host != "" {
				a.Host = tr.host
			}
			for k, v := range tr.headers {
				a.Headers.(policies.MapHeaders)[k] = v
			}
			d := s.Decide(a)
			if d.Allowed {
				_, trace := s.Explain(a)
				t.Errorf("%s: %s %q %q slipped past DENY: %+v\n%+v", norm, tr.name, tr.method, tr.path, d, trace)
			}
		}
		// and ordinary requests are still allowed
		for _, p := range []string{"/public", "/administrator", "/adminx", "/tenant/1", "/export/x"} {
			a := rq(frontend, "GET", p, withHeader("x-role", "auditor"))
			if d := s.Decide(a); !d.Allowed {
				t.Errorf("%s: legitimate %s denied: %+v", norm, p, d)
			}
		}
	}
}
