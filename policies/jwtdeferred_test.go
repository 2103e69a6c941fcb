package policies_test

import (
	"testing"

	"github.com/meshguard/meshguard/policies"
)

// jwtPolicies mix every check that needs a JWT-SVID (requestPrincipals,
// notRequestPrincipals, request.auth.* conditions, meshguard's jwt
// requirement) on the ALLOW and the DENY side, next to checks that do not.
const jwtPolicies = `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: need-token, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  rules:
  - from:
    - source: {requestPrincipals: ["cluster.local/spiffe://cluster.local/ns/shop/sa/*"]}
    to:
    - operation: {methods: ["POST"], paths: ["/orders"]}
  - to:
    - operation: {methods: ["GET"], paths: ["/claims"]}
    when:
    - key: request.auth.claims[groups]
      values: ["admin"]
  - to:
    - operation: {methods: ["GET"], paths: ["/public"]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-tokenless, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  action: DENY
  rules:
  - from:
    - source: {notRequestPrincipals: ["*"]}
    to:
    - operation: {paths: ["/orders"]}
  - from:
    - source: {requestPrincipals: ["cluster.local/spiffe://cluster.local/ns/evil/sa/*"]}
  - from:
    - source: {namespaces: ["evil"]}
  - when:
    - key: request.auth.audiences
      values: ["forbidden"]
---
apiVersion: meshguard.dev/v1alpha1
kind: IdentityPolicy
metadata: {name: charges, namespace: shop}
spec:
  workloads: ["spiffe://cluster.local/ns/shop/sa/web"]
  action: ALLOW
  rules:
  - name: create-charge
    from:
    - ids: ["spiffe://cluster.local/ns/shop/sa/orders"]
    to:
    - methods: ["POST"]
      paths: ["/charges"]
    jwt:
      audiences: ["payments"]
      subjects: ["spiffe://cluster.local/ns/shop/sa/*"]
`

func TestJWTDeferredTakesThePermissiveSide(t *testing.T) {
	s := compileYAML(t, jwtPolicies)
	deferred := func(a *policies.Attributes) { a.JWTDeferred = true }
	orders := "spiffe://cluster.local/ns/shop/sa/orders"
	for _, tc := range []struct {
		name     string
		a        *policies.Attributes
		full     want // the decision without deferral (no token unless given)
		deferred want
	}{
		{"requestPrincipals ALLOW", rq(orders, "POST", "/orders"),
			want{allowed: false, reason: policies.ReasonDeniedByPolicy, policy: "AuthorizationPolicy/shop/deny-tokenless", rule: "0"},
			want{allowed: true, policy: "AuthorizationPolicy/shop/need-token", rule: "0"}},
		{"claims condition ALLOW", rq(orders, "GET", "/claims"),
			want{allowed: false}, want{allowed: true, policy: "AuthorizationPolicy/shop/need-token", rule: "1"}},
		{"jwt requirement ALLOW", rq(orders, "POST", "/charges"),
			want{allowed: false}, want{allowed: true, rule: "create-charge"}},
		{"jwt requirement keeps its other checks", rq("spiffe://cluster.local/ns/shop/sa/intruder", "POST", "/charges"),
			want{allowed: false}, want{allowed: false}},
		{"no rule without a JWT check is met by deferral", rq(orders, "DELETE", "/orders"),
			want{allowed: false}, want{allowed: false}},
		{"DENY on a missing token is left to the server", rq(orders, "POST", "/orders"),
			want{allowed: false}, want{allowed: true}},
		{"DENY without a JWT check still holds", rq("spiffe://cluster.local/ns/evil/sa/x", "GET", "/public"),
			want{allowed: false, reason: policies.ReasonDeniedByPolicy, policy: "AuthorizationPolicy/shop/deny-tokenless", rule: "2"},
			want{allowed: false, reason: policies.ReasonDeniedByPolicy, policy: "AuthorizationPolicy/shop/deny-tokenless", rule: "2"}},
		{"a token is ignored under deferral", rq(orders, "GET", "/public", withJWT("spiffe://cluster.local/ns/evil/sa/x", []string{"forbidden"}, nil)),
			want{allowed: false, policy: "AuthorizationPolicy/shop/deny-tokenless", rule: "1"}, want{allowed: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			check(t, s, tc.a, tc.full)
			a := *tc.a
			deferred(&a)
			check(t, s, &a, tc.deferred)
		})
	}
}

// TestJWTDeferredNeverStricter: for every request and every token, if the
// full decision allows, the deferred one (no token) allows too.
func TestJWTDeferredNeverStricter(t *testing.T) {
	s := compileYAML(t, jwtPolicies)
	sources := []string{"", "spiffe://cluster.local/ns/shop/sa/orders", "spiffe://cluster.local/ns/evil/sa/x", "spiffe://cluster.local/ns/shop/sa/intruder"}
	ops := [][2]string{{"POST", "/orders"}, {"GET", "/claims"}, {"POST", "/charges"}, {"GET", "/public"}, {"DELETE", "/orders"}}
	tokens := []func(*policies.Attributes){
		func(*policies.Attributes) {},
		withJWT("spiffe://cluster.local/ns/shop/sa/orders", []string{"payments"}, map[string]any{"groups": []any{"admin"}}),
		withJWT("spiffe://cluster.local/ns/shop/sa/orders", []string{"forbidden"}, nil),
		withJWT("spiffe://cluster.local/ns/evil/sa/x", []string{"payments"}, map[string]any{"groups": "admin"}),
		withJWT("spiffe://other.example/ns/shop/sa/orders", nil, nil),
	}
	var fullAllows, relaxed int
	for _, src := range sources {
		for _, op := range ops {
			for ti, tok := range tokens {
				full := s.Decide(rq(src, op[0], op[1], tok))
				d := rq(src, op[0], op[1], tok)
				d.JWTDeferred = true
				def := s.Decide(d)
				if full.Allowed && !def.Allowed {
					t.Errorf("%s %s from %q token %d: full decision allows (%s), deferred denies (%s %v)", op[0], op[1], src, ti, full.Ref, def.Reason, def.Ref)
				}
				if full.Allowed {
					fullAllows++
				} else if def.Allowed {
					relaxed++
				}
			}
		}
	}
	// The property is not vacuous: some requests are allowed in full, and
	// deferral lets through some that only the server can deny.
	if fullAllows == 0 || relaxed == 0 {
		t.Fatalf("allowed in full %d, allowed only under deferral %d: the combinations exercise nothing", fullAllows, relaxed)
	}
}
