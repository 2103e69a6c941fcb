package policies_test

import (
	"testing"

	"github.com/meshguard/meshguard/internal/testbed/policygen"
	"github.com/meshguard/meshguard/policies"
)

// The explain path evaluates every rule without the index; it must reach
// the same decision as the indexed path for every request.
func TestExplainMatchesDecide(t *testing.T) {
	for _, rules := range []int{10, 1000} {
		set, m := policygen.Realistic(rules, 1)
		s := compileSet(t, "", set)
		reqs := policygen.Requests(&set, m, 2000, 2)
		allowed := 0
		for i := range reqs {
			d, _ := s.Explain(&reqs[i])
			if d2 := s.Decide(&reqs[i]); d2 != d {
				t.Fatalf("rules=%d request %d: explain %+v != decide %+v", rules, i, d, d2)
			}
			if d.Allowed {
				allowed++
			}
		}
		if allowed == 0 || allowed == len(reqs) {
			t.Fatalf("rules=%d: %d of %d allowed: the generated mix should have both", rules, allowed, len(reqs))
		}
	}
}

// TestExplainWhy: explain names the first part of a rule that does not
// match in the order the policy writes them, whatever order the engine
// tests them in.
func TestExplainWhy(t *testing.T) {
	s := compileYAML(t, `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: shop}
spec:
  action: DENY
  rules:
  - from: [{source: {notNamespaces: [ops]}}]
    to: [{operation: {paths: ["/admin*"]}}]
    when: [{key: "request.headers[x-debug]", values: ["1"]}]`)
	for _, c := range []struct {
		source, path, header, why string
	}{
		{"spiffe://cluster.local/ns/ops/sa/x", "/public", "", "source did not match (from)"},
		{"spiffe://cluster.local/ns/shop/sa/x", "/public", "", "operation did not match (to)"},
		{"spiffe://cluster.local/ns/shop/sa/x", "/admin", "", "a condition did not match (when)"},
		{"spiffe://cluster.local/ns/shop/sa/x", "/admin", "1", ""},
	} {
		a := rq(c.source, "GET", c.path)
		if c.header != "" {
			a.Headers = policies.MapHeaders{"x-debug": c.header}
		}
		_, tr := s.Explain(a)
		if len(tr.Steps) != 1 || tr.Steps[0].Why != c.why || tr.Steps[0].Matched != (c.why == "") {
			t.Errorf("%s %s: steps %+v, want why %q", c.source, c.path, tr.Steps, c.why)
		}
	}
}
