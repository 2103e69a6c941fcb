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

// TestExplainFailedReadings: when a header condition fails, explain names
// each reading of the header that decided, apart: an ALLOW each element of
// a duplicated header that does not match, a DENY every reading it tried.
func TestExplainFailedReadings(t *testing.T) {
	s := compileYAML(t, `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: tenants, namespace: shop}
spec:
  rules:
  - when:
    - {key: "request.headers[x-tenant]", values: ["acme*"]}
    - {key: "request.headers[x-role]", notValues: ["evil"]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-debug, namespace: shop}
spec:
  action: DENY
  rules:
  - when: [{key: "request.headers[x-debug]", values: ["1"]}]`)
	for _, c := range []struct {
		name    string
		headers policies.MapHeaders
		want    map[string][]string // policy -> failed
	}{
		{"one element outside the prefix", policies.MapHeaders{"x-tenant": "acme-a, other, zed", "x-role": "ok"}, map[string][]string{
			"AuthorizationPolicy/shop/tenants": {
				`request.headers[x-tenant]: element 2 of 3, "other", is not among values`,
				`request.headers[x-tenant]: element 3 of 3, "zed", is not among values`,
			},
			"AuthorizationPolicy/shop/no-debug": {`request.headers[x-debug]: absent`},
		}},
		{"an excluded element and an absent header", policies.MapHeaders{"x-role": "ok,evil", "x-debug": "0,2"}, map[string][]string{
			"AuthorizationPolicy/shop/tenants": {
				`request.headers[x-tenant]: absent`,
				`request.headers[x-role]: element 2 of 2, "evil", is among notValues`,
			},
			"AuthorizationPolicy/shop/no-debug": {
				`request.headers[x-debug]: "0,2" is not among values`,
				`request.headers[x-debug]: element 1 of 2, "0", is not among values`,
				`request.headers[x-debug]: element 2 of 2, "2", is not among values`,
			},
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			a := rq("spiffe://cluster.local/ns/shop/sa/x", "GET", "/")
			a.Headers = c.headers
			d, tr := s.Explain(a)
			if d.Allowed {
				t.Fatalf("allowed: %+v", d)
			}
			got := map[string][]string{}
			for _, st := range tr.Steps {
				if st.Matched || st.Why != "a condition did not match (when)" {
					t.Errorf("step %+v", st)
				}
				got[st.Policy] = st.Failed
			}
			for p, want := range c.want {
				if strings.Join(got[p], "\n") != strings.Join(want, "\n") {
					t.Errorf("%s failed:\n%s\nwant:\n%s", p, strings.Join(got[p], "\n"), strings.Join(want, "\n"))
				}
			}
		})
	}
}
