package policies_test

import (
	"strings"
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

// TestApplicable lists what selects a workload, in evaluation order, and
// leaves out what selects others; every rule it lists is one explain
// considers for a request that matches none.
func TestApplicable(t *testing.T) {
	s := compileYAML(t, `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-web, namespace: shop}
spec:
  selector: {matchLabels: {app: orders}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/shop/sa/web]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: shop}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-other, namespace: shop}
spec:
  selector: {matchLabels: {app: payments}}
  action: ALLOW
  rules:
  - {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-audit, namespace: istio-system}
spec:
  action: AUDIT
  rules:
  - to: [{operation: {methods: [DELETE]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: elsewhere, namespace: bank}
spec:
  action: DENY
  rules:
  - {}`)
	if u := s.Applicable(&policies.Target{Namespace: "shop"}).Unresolved; u == "" {
		t.Error("a target without labels in a namespace with selector-scoped policies is not unresolved")
	}
	target := policies.Target{Namespace: "shop", Labels: map[string]string{"app": "orders"}, Resolved: true}
	got := s.Applicable(&target)
	if got.Unresolved != "" {
		t.Errorf("resolved target: %s", got.Unresolved)
	}
	var rules []string
	for _, r := range got.Rules {
		rules = append(rules, r.Action+" "+r.Policy+"#"+r.Rule)
	}
	want := []string{
		"AUDIT AuthorizationPolicy/istio-system/mesh-audit#0",
		"DENY AuthorizationPolicy/shop/deny-admin#0",
		"ALLOW AuthorizationPolicy/shop/allow-web#0",
	}
	if strings.Join(rules, "\n") != strings.Join(want, "\n") {
		t.Fatalf("rules:\n%s\nwant:\n%s", strings.Join(rules, "\n"), strings.Join(want, "\n"))
	}
	a := rq("spiffe://cluster.local/ns/nowhere/sa/x", "GET", "/public", withTarget("shop", map[string]string{"app": "orders"}, ""))
	_, tr := s.Explain(a)
	if strings.Join(tr.Scopes, ",") != strings.Join(got.Scopes, ",") {
		t.Errorf("scopes %v, explain's %v", got.Scopes, tr.Scopes)
	}
	if len(tr.Steps) != len(got.Rules) {
		t.Errorf("explain considered %d rules, Applicable lists %d", len(tr.Steps), len(got.Rules))
	}
}
