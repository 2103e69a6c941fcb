package policies_test

import (
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshguard/meshguard/policies"
)

func TestIdentityPolicy(t *testing.T) {
	s := compileYAML(t, `
apiVersion: meshguard.dev/v1alpha1
kind: IdentityPolicy
metadata: {name: web-callers, namespace: shop}
spec:
  workloads: ["spiffe://cluster.local/ns/shop/sa/web"]
  rules:
  - name: frontends
    from: [{ids: ["spiffe://cluster.local/ns/*/sa/frontend"]}]
    to: [{methods: [GET], paths: ["/catalog/*"]}]
  - name: ops-anything
    from: [{ids: ["spiffe://cluster.local/ns/ops/**"]}]
  - name: partner-domain
    from: [{trustDomains: [partner.example]}]
    to: [{routes: [partner-api]}]
  - name: batch-with-token
    from: [{ids: ["spiffe://cluster.local/ns/other/sa/batch"]}]
    jwt:
      audiences: [web]
      trustDomains: [cluster.local]
      subjects: ["spiffe://cluster.local/ns/other/sa/*"]
      claims: [{name: scope, values: [orders.read]}]
  - name: not-yet
    mode: dry-run
    from: [{ids: ["spiffe://cluster.local/ns/shop/sa/legacy"]}]
---
apiVersion: meshguard.dev/v1alpha1
kind: IdentityPolicy
metadata: {name: mesh-no-legacy-writes, namespace: istio-system}
spec:
  action: DENY
  rules:
  - name: legacy-writes
    from: [{ids: ["spiffe://cluster.local/ns/*/sa/legacy"]}]
    to: [{methods: [POST, PUT, DELETE]}]`)
	web := "spiffe://cluster.local/ns/shop/sa/web"
	tgt := withTarget("shop", nil, web)
	batchJWT := func(claims map[string]any, aud ...string) func(*policies.Attributes) {
		return withJWT(other, aud, claims)
	}
	check(t, s, rq(frontend, "GET", "/catalog/1", tgt), want{true, policies.ReasonAllowedByPolicy, "IdentityPolicy/shop/web-callers", "frontends"})
	check(t, s, rq("spiffe://cluster.local/ns/edge/sa/frontend", "GET", "/catalog/1", tgt), want{true, "", "", "frontends"})
	check(t, s, rq("spiffe://cluster.local/ns/edge/sub/sa/frontend", "GET", "/catalog/1", tgt), want{false, policies.ReasonDeniedNoMatch, "", ""})
	check(t, s, rq(foreign, "GET", "/catalog/1", tgt), want{false, policies.ReasonDeniedNoMatch, "", ""})
	check(t, s, rq(admin, "DELETE", "/anything", tgt), want{true, "", "", "ops-anything"})
	check(t, s, rq(foreign, "GET", "/p", tgt, withRoute("partner-api")), want{true, "", "", "partner-domain"})
	check(t, s, rq(foreign, "GET", "/p", tgt, withRoute("internal")), want{false, "", "", ""})
	// JWT-SVID requirement
	check(t, s, rq(other, "GET", "/orders", tgt), want{false, policies.ReasonDeniedNoMatch, "", ""})
	check(t, s, rq(other, "GET", "/orders", tgt, batchJWT(map[string]any{"scope": "orders.read"}, "web")), want{true, "", "", "batch-with-token"})
	check(t, s, rq(other, "GET", "/orders", tgt, batchJWT(map[string]any{"scope": "orders.read"}, "other-aud")), want{false, "", "", ""})
	check(t, s, rq(other, "GET", "/orders", tgt, batchJWT(map[string]any{"scope": []any{"a", "orders.read"}}, "web")), want{true, "", "", "batch-with-token"})
	check(t, s, rq(other, "GET", "/orders", tgt, batchJWT(map[string]any{"scope": "orders.write"}, "web")), want{false, "", "", ""})
	// a rule in dry-run: allowed only in the shadow decision, so the real
	// decision denies (the rule does not admit yet)
	d := check(t, s, rq("spiffe://cluster.local/ns/shop/sa/legacy", "GET", "/x", tgt), want{false, policies.ReasonDeniedNoMatch, "", ""})
	if d.WouldDeny {
		t.Errorf("%+v", d)
	}
	// the mesh-wide DENY holds for workloads the pattern policy does not select
	check(t, s, rq("spiffe://cluster.local/ns/a/sa/legacy", "POST", "/x", withTarget("b", nil, "spiffe://cluster.local/ns/b/sa/x")), want{false, policies.ReasonDeniedByPolicy, "IdentityPolicy/istio-system/mesh-no-legacy-writes", "legacy-writes"})
	// other workloads of the namespace are not in the policy's scope
	check(t, s, rq(other, "GET", "/x", withTarget("shop", nil, "spiffe://cluster.local/ns/shop/sa/db")), want{true, policies.ReasonAllowedNoPolicy, "", ""})
}

func TestDefaultDeny(t *testing.T) {
	s := compileYAML(t, `
apiVersion: meshguard.dev/v1alpha1
kind: DefaultDeny
metadata: {name: lock-shop, namespace: shop}
spec: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: frontend-in, namespace: shop}
spec:
  rules: [{from: [{source: {principals: ["cluster.local/ns/shop/sa/frontend"]}}]}]`)
	check(t, s, rq(frontend, "GET", "/"), want{true, policies.ReasonAllowedByPolicy, "", ""})
	check(t, s, rq(other, "GET", "/"), want{false, policies.ReasonDeniedNoMatch, "", ""})
	check(t, s, rq(other, "GET", "/", withTarget("shop", map[string]string{"app": "db"}, "")), want{false, policies.ReasonDeniedNoMatch, "", ""})
}

func TestDefaultDenyAlone(t *testing.T) {
	s := compileYAML(t, `
apiVersion: meshguard.dev/v1alpha1
kind: DefaultDeny
metadata: {name: lock-shop, namespace: shop}
spec: {}`)
	check(t, s, rq(frontend, "GET", "/"), want{false, policies.ReasonDeniedDefault, "DefaultDeny/shop/lock-shop", ""})
	check(t, s, rq(frontend, "GET", "/", withTarget("other", nil, "")), want{true, policies.ReasonAllowedNoPolicy, "", ""})
}

func TestDefaultDenyScopes(t *testing.T) {
	s := compileYAML(t, `
apiVersion: meshguard.dev/v1alpha1
kind: DefaultDeny
metadata: {name: lock-db, namespace: data}
spec:
  workloads: ["spiffe://cluster.local/ns/data/sa/db"]
---
apiVersion: meshguard.dev/v1alpha1
kind: DefaultDeny
metadata: {name: maybe-lock-cache, namespace: data}
spec:
  workloads: ["spiffe://cluster.local/ns/data/sa/cache"]
  mode: dry-run
---
apiVersion: meshguard.dev/v1alpha1
kind: DefaultDeny
metadata: {name: lock-mesh, namespace: istio-system}
spec:
  workloads: ["spiffe://cluster.local/ns/vault/**"]`)
	db := withTarget("data", nil, "spiffe://cluster.local/ns/data/sa/db")
	check(t, s, rq(frontend, "GET", "/", db), want{false, policies.ReasonDeniedDefault, "DefaultDeny/data/lock-db", ""})
	d := check(t, s, rq(frontend, "GET", "/", withTarget("data", nil, "spiffe://cluster.local/ns/data/sa/cache")), want{true, policies.ReasonDeniedDefault, "DefaultDeny/data/maybe-lock-cache", ""})
	if !d.WouldDeny || d.Mode != policies.ModeDryRun {
		t.Errorf("dry-run default deny: %+v", d)
	}
	check(t, s, rq(frontend, "GET", "/", withTarget("data", nil, "spiffe://cluster.local/ns/data/sa/api")), want{true, policies.ReasonAllowedNoPolicy, "", ""})
	check(t, s, rq(frontend, "GET", "/", withTarget("vault", nil, "spiffe://cluster.local/ns/vault/sa/server")), want{false, policies.ReasonDeniedDefault, "DefaultDeny/istio-system/lock-mesh", ""})
	// a principal glob that is not a whole segment is an error
	set := setFromYAML(t, `
apiVersion: meshguard.dev/v1alpha1
kind: DefaultDeny
metadata: {name: bad, namespace: data}
spec:
  workloads: ["spiffe://cluster.local/ns/data/sa/db-*"]`)
	if !policies.Validate(&set).HasErrors() {
		t.Error("partial-segment glob accepted")
	}
}

func TestRouteOverride(t *testing.T) {
	s := compileYAML(t, `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: frontend-only, namespace: shop}
spec:
  rules: [{from: [{source: {principals: ["cluster.local/ns/shop/sa/frontend"]}}]}]
---
apiVersion: meshguard.dev/v1alpha1
kind: RouteOverride
metadata: {name: refunds-trial, namespace: shop}
spec:
  route: refunds
  mode: dry-run
---
apiVersion: meshguard.dev/v1alpha1
kind: RouteOverride
metadata: {name: health-off, namespace: shop}
spec:
  route: health
  mode: off
---
apiVersion: meshguard.dev/v1alpha1
kind: RouteOverride
metadata: {name: export-extra, namespace: shop}
spec:
  route: export
  action: DENY
  rules:
  - name: no-bulk
    when: [{key: "request.headers[x-bulk]", values: ["true"]}]
---
apiVersion: meshguard.dev/v1alpha1
kind: RouteOverride
metadata: {name: legacy-paths, namespace: shop}
spec:
  route: legacy
  allowUnsafePaths: true
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: shop}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin/*"]}}]}]`)
	d := check(t, s, rq(other, "POST", "/refund", withRoute("refunds")), want{true, policies.ReasonDeniedNoMatch, "", ""})
	if !d.WouldDeny || d.Mode != policies.ModeDryRun {
		t.Errorf("route dry-run: %+v", d)
	}
	check(t, s, rq(other, "POST", "/refund", withRoute("payments")), want{false, policies.ReasonDeniedNoMatch, "", ""})
	d = check(t, s, rq("", "GET", "/healthz", withRoute("health")), want{true, policies.ReasonAllowedModeOff, "RouteOverride/shop/health-off", ""})
	if d.Mode != policies.ModeOff {
		t.Errorf("%+v", d)
	}
	check(t, s, rq(frontend, "GET", "/export", withRoute("export"), withHeader("x-bulk", "true")), want{false, policies.ReasonDeniedByPolicy, "RouteOverride/shop/export-extra", "no-bulk"})
	check(t, s, rq(frontend, "GET", "/export", withRoute("export")), want{true, policies.ReasonAllowedByPolicy, "", ""})
	// unsafe paths: denied by default, accepted on the opted-out route, but
	// DENY rules still hold for every reading
	check(t, s, rq(frontend, "GET", "/files/a%2Fb"), want{false, policies.ReasonDeniedUnsafePath, "", ""})
	check(t, s, rq(frontend, "GET", "/files/a%2Fb", withRoute("legacy")), want{true, policies.ReasonAllowedByPolicy, "", ""})
	check(t, s, rq(frontend, "GET", "/admin%2Fusers", withRoute("legacy")), want{false, policies.ReasonDeniedByPolicy, "AuthorizationPolicy/shop/deny-admin", ""})
	check(t, s, rq(frontend, "GET", "/x;/../admin/users", withRoute("legacy")), want{false, policies.ReasonDeniedByPolicy, "AuthorizationPolicy/shop/deny-admin", ""})
	check(t, s, rq(frontend, "GET", "/admin\\users", withRoute("legacy")), want{false, policies.ReasonDeniedByPolicy, "", ""})
}

func TestQuarantine(t *testing.T) {
	future := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	past := time.Now().Add(-time.Minute).UTC().Format(time.RFC3339)
	s := compileYAML(t, `
apiVersion: meshguard.dev/v1alpha1
kind: Quarantine
metadata: {name: q1, namespace: istio-system}
spec: {identity: "`+other+`", reason: "lateral movement", expiresAt: "`+future+`"}
---
apiVersion: meshguard.dev/v1alpha1
kind: Quarantine
metadata: {name: q2, namespace: istio-system}
spec: {identity: "`+admin+`", reason: "old", expiresAt: "`+past+`"}
---
apiVersion: meshguard.dev/v1alpha1
kind: Quarantine
metadata: {name: q3, namespace: istio-system}
spec: {identity: "spiffe://cluster.local/ns/x/sa/forever"}
---
apiVersion: meshguard.dev/v1alpha1
kind: RouteOverride
metadata: {name: off, namespace: shop}
spec: {route: health, mode: "off"}`)
	check(t, s, rq(other, "GET", "/"), want{false, policies.ReasonDeniedQuarantine, "Quarantine/istio-system/q1", ""})
	// quarantine holds even where enforcement is off
	check(t, s, rq(other, "GET", "/", withRoute("health")), want{false, policies.ReasonDeniedQuarantine, "", ""})
	check(t, s, rq(admin, "GET", "/"), want{true, policies.ReasonAllowedNoPolicy, "", ""})
	check(t, s, rq("spiffe://cluster.local/ns/x/sa/forever", "GET", "/"), want{false, policies.ReasonDeniedQuarantine, "", ""})
	if ref, ok := s.QuarantineRef(spiffeid.RequireFromString(other), time.Now().UnixNano()); !ok || ref.Policy != "Quarantine/istio-system/q1" {
		t.Errorf("QuarantineRef = %+v, %v", ref, ok)
	}
	if _, ok := s.QuarantineRef(spiffeid.RequireFromString(admin), time.Now().UnixNano()); ok {
		t.Error("QuarantineRef of an identity that is not quarantined")
	}
	if reason, ok := s.Quarantined(spiffeid.RequireFromString(other), time.Now().Add(2*time.Hour)); ok {
		t.Errorf("quarantine did not expire: %q", reason)
	}
}

func TestBaselineAndProfiles(t *testing.T) {
	s := compileYAML(t, `
apiVersion: meshguard.dev/v1alpha1
kind: TrafficBaseline
metadata: {name: shop, namespace: shop}
spec:
  mode: shadow
  edges:
  - {source: "spiffe://cluster.local/ns/shop/sa/frontend", destination: web.shop.svc.cluster.local, routes: [catalog]}
  - {source: "spiffe://cluster.local/ns/ops/**", destination: web.shop.svc.cluster.local}
---
apiVersion: meshguard.dev/v1alpha1
kind: AnomalyProfile
metadata: {name: default, namespace: istio-system}
spec:
  rate: {zScore: 4, minRps: 5, halfLife: 30s}
  responses: {lateral: quarantine, rate: rate-limit}
  quarantineFor: 10m`)
	fe := spiffeid.RequireFromString(frontend)
	if s.BaselineMode() != policies.BaselineShadow {
		t.Errorf("mode %q", s.BaselineMode())
	}
	if !s.KnownEdge(fe, "WEB.shop.svc.cluster.local", "catalog") {
		t.Error("known edge not found")
	}
	if s.KnownEdge(fe, "web.shop.svc.cluster.local", "admin") {
		t.Error("edge on another route found")
	}
	if !s.KnownEdge(spiffeid.RequireFromString(admin), "web.shop.svc.cluster.local", "any") {
		t.Error("glob edge not found")
	}
	// A filter configured by the control plane names its service "web".
	for dest, want := range map[string]bool{"web": true, "WEB.shop": true, "web.shop.svc": false, "we": false, "web.other": false, "shop": false} {
		if s.KnownEdge(fe, dest, "catalog") != want {
			t.Errorf("KnownEdge(%q) = %v", dest, !want)
		}
	}
	// The caller's own side knows the service, not the route.
	for dest, want := range map[string]bool{"web": true, "web.shop.svc.cluster.local": true, "web.other": false, "orders": false} {
		if s.KnownDestination(fe, dest) != want {
			t.Errorf("KnownDestination(%q) = %v", dest, !want)
		}
	}
	if s.KnownDestination(spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/other"), "web") {
		t.Error("KnownDestination of a caller without an edge")
	}
	if p := s.AnomalyProfile(fe); p == nil || p.Spec.Responses["lateral"] != "quarantine" {
		t.Errorf("profile %+v", p)
	}
}

func TestEngineFailsClosedWithoutSnapshot(t *testing.T) {
	var e policies.Engine
	d := e.Decide(rq(frontend, "GET", "/"))
	if d.Allowed || d.Reason != policies.ReasonDeniedNoPolicy {
		t.Fatalf("%+v", d)
	}
	s := compileYAML(t, "")
	e.Swap(s)
	if d := e.Decide(rq(frontend, "GET", "/")); !d.Allowed {
		t.Fatalf("%+v", d)
	}
}

func TestInvalidRequestDenied(t *testing.T) {
	s := compileYAML(t, "")
	check(t, s, rq(frontend, "", "/"), want{false, policies.ReasonDeniedInvalidReq, "", ""})
	check(t, s, rq(frontend, "GET", ""), want{false, policies.ReasonDeniedInvalidReq, "", ""})
	check(t, s, rq(frontend, "GET", "*"), want{false, policies.ReasonDeniedUnsafePath, "", ""})
}

// TestStandInsDenyWithTheirOwnReason: a DENY the control plane put in place
// of an object it could not use (marked with AnnotationConversionError)
// denies with denied_invalid_policy, and its reference names it; the
// annotation changes nothing else, and nothing on an ALLOW.
func TestStandInsDenyWithTheirOwnReason(t *testing.T) {
	s := compileYAML(t, `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: RequestAuthentication.idp, namespace: shop, annotations: {meshguard.dev/conversion-error: "jwks: not a key set"}}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/pay*"]}}]}]
---
apiVersion: meshguard.dev/v1alpha1
kind: IdentityPolicy
metadata: {name: lock-web, namespace: shop, annotations: {meshguard.dev/conversion-error: "spec.rules: unreadable"}}
spec:
  action: DENY
  workloads: ["spiffe://cluster.local/ns/shop/sa/web"]
  rules: [{from: [{ids: ["spiffe://cluster.local/ns/*/sa/frontend"]}], to: [{paths: ["/admin*"]}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: open, namespace: shop, annotations: {meshguard.dev/conversion-error: "ignored on an ALLOW"}}
spec:
  rules: [{}]`)
	check(t, s, rq(other, "GET", "/pay/1"), want{false, policies.ReasonDeniedInvalidPolicy, "AuthorizationPolicy/shop/RequestAuthentication.idp", ""})
	check(t, s, rq(frontend, "GET", "/admin/x"), want{false, policies.ReasonDeniedInvalidPolicy, "IdentityPolicy/shop/lock-web", ""})
	check(t, s, rq(other, "GET", "/orders"), want{true, policies.ReasonAllowedByPolicy, "AuthorizationPolicy/shop/open", ""})
}
