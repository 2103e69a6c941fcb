package policies_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshguard/meshguard/policies"
)

// Above eight rules a bucket indexes its rules by principal: the index must
// find a rule by every principal the rule can match — the mesh's trust
// domains for a cluster.local principal, the forwarded client for an
// IdentityPolicy's ids, and every rule when only a deferred JWT-SVID could
// name the caller.
func TestIndexFindsEveryReading(t *testing.T) {
	var b strings.Builder
	b.WriteString(`apiVersion: meshguard.dev/v1alpha1
kind: MeshSettings
metadata: {name: mesh, namespace: istio-system}
spec: {trustDomain: prod.example, trustDomainAliases: [old.example]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow, namespace: shop}
spec:
  rules:
`)
	for i := range 12 {
		fmt.Fprintf(&b, "  - from: [{source: {principals: [\"cluster.local/ns/web/sa/w%d\"]}}]\n", i)
	}
	b.WriteString(`---
apiVersion: meshguard.dev/v1alpha1
kind: IdentityPolicy
metadata: {name: ids, namespace: shop}
spec:
  rules:
`)
	for i := range 12 {
		fmt.Fprintf(&b, "  - from: [{ids: [\"spiffe://prod.example/ns/edge/sa/c%d\"]}]\n    to: [{paths: [\"/kinds\"]}]\n", i)
	}
	s := compileYAML(t, b.String())
	target := func(a *policies.Attributes) { a.Target = policies.Target{Namespace: "shop"} }
	for _, tc := range []struct {
		name    string
		a       *policies.Attributes
		allowed bool
	}{
		{"the mesh's trust domain", rq("spiffe://prod.example/ns/web/sa/w7", "GET", "/", target), true},
		{"an alias", rq("spiffe://old.example/ns/web/sa/w11", "GET", "/", target), true},
		{"a foreign cluster.local", rq("spiffe://cluster.local/ns/web/sa/w7", "GET", "/", target), false},
		{"a forwarded client by its ID", rq("spiffe://prod.example/ns/istio-system/sa/gw", "GET", "/kinds", target, func(a *policies.Attributes) {
			a.ForwardedClient = spiffeid.RequireFromString("spiffe://prod.example/ns/edge/sa/c9")
		}), true},
		{"a deferred JWT-SVID takes the permissive side", rq("", "GET", "/kinds", target, func(a *policies.Attributes) { a.JWTDeferred = true }), true},
		{"a deferred JWT-SVID beside a peer is not the caller", rq("spiffe://prod.example/ns/other/sa/x", "GET", "/kinds", target, func(a *policies.Attributes) { a.JWTDeferred = true }), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if d := s.Decide(tc.a); d.Allowed != tc.allowed {
				t.Errorf("allowed %v (%s), want %v", d.Allowed, d.Reason, tc.allowed)
			}
			if d, _ := s.Explain(tc.a); d.Allowed != tc.allowed {
				t.Errorf("explain: allowed %v, want %v", d.Allowed, tc.allowed)
			}
		})
	}
}

// Quarantine holds however a quarantined workload presents itself: as the
// peer, as a client a trusted hop forwards, or by its JWT-SVID.
func TestQuarantineEveryIdentity(t *testing.T) {
	s := compileYAML(t, `apiVersion: meshguard.dev/v1alpha1
kind: Quarantine
metadata: {name: q, namespace: istio-system}
spec: {identity: "spiffe://cluster.local/ns/shop/sa/bad"}`)
	bad := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/bad")
	for name, a := range map[string]*policies.Attributes{
		"peer":      rq(bad.String(), "GET", "/"),
		"forwarded": rq("spiffe://cluster.local/ns/gw/sa/gw", "GET", "/", func(a *policies.Attributes) { a.ForwardedClient = bad }),
		"JWT-SVID":  rq("spiffe://cluster.local/ns/web/sa/ok", "GET", "/", func(a *policies.Attributes) { a.JWT = &policies.JWT{Subject: bad.String(), SVID: bad} }),
	} {
		if d := s.Decide(a); d.Reason != policies.ReasonDeniedQuarantine {
			t.Errorf("%s: %s, want %s", name, d.Reason, policies.ReasonDeniedQuarantine)
		}
	}
}
