package policies_test

import (
	"strings"
	"testing"

	"github.com/meshguard/meshguard/policies"
)

// FuzzDuplicatedHeader holds header matching to its readings, whatever
// value a client sends (duplicated headers arrive comma-joined): an ALLOW
// admits only when the joined value and every element (trimmed of spaces
// and tabs) match, each of values and notValues; a DENY refuses whenever
// one of them does.
func FuzzDuplicatedHeader(f *testing.F) {
	s := compileYAML(f, `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow, namespace: shop}
spec:
  rules:
  - to: [{operation: {paths: ["/prefix"]}}]
    when: [{key: "request.headers[x-tenant]", values: ["acme*"]}]
  - to: [{operation: {paths: ["/suffix", "/deny"]}}]
    when: [{key: "request.headers[x-tenant]", values: ["*-eu"], notValues: ["evil-eu"]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny, namespace: shop}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/deny"]}}]
    when: [{key: "request.headers[x-role]", values: ["admin*"]}]`)
	for _, seed := range []string{"acme", "acme,other", "acme-a, acme-b", "a-eu,\tevil-eu", ",", "", "admin,x", "x, admin-1", "acme,"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, v string) {
		readings := []string{v}
		if strings.Contains(v, ",") {
			for _, el := range strings.Split(v, ",") {
				readings = append(readings, strings.Trim(el, " \t"))
			}
		}
		every := func(ok func(string) bool) bool {
			for _, r := range readings {
				if !ok(r) {
					return false
				}
			}
			return true
		}
		decide := func(path string, h policies.MapHeaders) bool {
			a := rq("spiffe://cluster.local/ns/shop/sa/x", "GET", path)
			a.Headers = h
			return s.Decide(a).Allowed
		}
		if got, want := decide("/prefix", policies.MapHeaders{"x-tenant": v}), every(func(r string) bool { return strings.HasPrefix(r, "acme") }); got != want {
			t.Errorf("ALLOW acme* on %q: allowed %v, want %v", v, got, want)
		}
		suffixOK := func(r string) bool { return len(r) >= len("-eu") && strings.HasSuffix(r, "-eu") && r != "evil-eu" }
		if got, want := decide("/suffix", policies.MapHeaders{"x-tenant": v}), every(suffixOK); got != want {
			t.Errorf("ALLOW *-eu not evil-eu on %q: allowed %v, want %v", v, got, want)
		}
		denied := !every(func(r string) bool { return !strings.HasPrefix(r, "admin") })
		if got := decide("/deny", policies.MapHeaders{"x-tenant": "a-eu", "x-role": v}); got == denied {
			t.Errorf("DENY admin* on %q: allowed %v, want denied %v", v, got, denied)
		}
	})
}
