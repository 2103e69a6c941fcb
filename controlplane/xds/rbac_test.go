package xds

import (
	"regexp"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshguard/meshguard/controlplane/mesh"
	"github.com/meshguard/meshguard/policies"
)

const prodMesh = `
apiVersion: meshguard.dev/v1alpha1
kind: Mesh
metadata: {name: prod}
spec:
  trustDomain: cluster.local
  authz: {address: 127.0.0.1, port: 9191, spiffeID: spiffe://cluster.local/ns/meshguard/sa/authz}
  controlPlane: {address: 127.0.0.1, port: 8443, spiffeID: spiffe://cluster.local/ns/meshguard/sa/cp}
  wasm: {file: /etc/meshguard/meshguard.wasm}
  workloads:
  - {name: web, namespace: prod, spiffeID: spiffe://cluster.local/ns/prod/sa/web, proxyless: true, inbound: [{name: grpc, port: 50051}]}
`

// TestRBACDefaultDenyWithDoubleStar: a DefaultDeny scoped with "**"
// applies to a proxyless workload under it, as in the engine: its RBAC
// ends with an ALLOW filter that nothing matches.
func TestRBACDefaultDenyWithDoubleStar(t *testing.T) {
	m, err := mesh.Parse([]byte(prodMesh))
	if err != nil {
		t.Fatal(err)
	}
	set := policies.Set{DefaultDenies: []policies.DefaultDeny{{
		APIVersion: policies.APIVersionMeshguard, Kind: policies.KindDefaultDeny,
		Metadata: policies.ObjectMeta{Name: "prod", Namespace: "prod"},
		Spec:     policies.DefaultDenySpec{Workloads: []string{"spiffe://cluster.local/ns/prod/**"}},
	}}}
	b, _, err := policies.NewBundle("v", set)
	if err != nil {
		t.Fatal(err)
	}
	eb, err := NewGenerator(m).Encode(b)
	if err != nil {
		t.Fatal(err)
	}
	w := m.Workloads[0]
	filters, approx := compileRBAC(w, w.Inbound[0], eb, time.Now())
	if len(approx) > 0 {
		t.Fatal(approx)
	}
	if len(filters) != 1 || filters[0].GetRules().GetAction() != rbacv3.RBAC_ALLOW || len(filters[0].GetRules().GetPolicies()) != 0 {
		t.Fatalf("want one ALLOW filter without policies (deny all), got %v", filters)
	}
}

// TestEncodeRefusesWhatTheEngineRefuses: a pattern the engine's parser
// refuses ("web-*" is no whole-segment glob) is not translated into some
// other meaning: the bundle is refused.
func TestEncodeRefusesWhatTheEngineRefuses(t *testing.T) {
	set := policies.Set{IdentityPolicies: []policies.IdentityPolicy{{
		APIVersion: policies.APIVersionMeshguard, Kind: policies.KindIdentityPolicy,
		Metadata: policies.ObjectMeta{Name: "web", Namespace: "prod"},
		Spec: policies.IdentityPolicySpec{Rules: []policies.IdentityRule{{
			From: []policies.IdentitySource{{IDs: []string{"spiffe://cluster.local/ns/prod/sa/web-*"}}},
		}}},
	}}}
	if _, err := EncodeBundle(&policies.Bundle{Version: "v", Set: set}); err == nil || !strings.Contains(err.Error(), "whole path segment") {
		t.Fatalf("err = %v", err)
	}
}

// TestRBACElementTrimIsTheEngines: the element expressions of header
// conditions trim around an element what the engine trims, no more, no
// less: for every character c, the engine's ALLOW on values ["a*"] admits
// "a,<c>a<c>" exactly when the element expressions of "a*" match each
// element.
func TestRBACElementTrimIsTheEngines(t *testing.T) {
	set := policies.Set{AuthorizationPolicies: []policies.AuthorizationPolicy{{
		Metadata: policies.ObjectMeta{Name: "a", Namespace: "prod"},
		Spec: policies.AuthorizationPolicySpec{Rules: []policies.Rule{{
			When: []policies.Condition{{Key: "request.headers[x]", Values: []string{"a*"}}},
		}}},
	}}}
	b, _, err := policies.NewBundle("v", set)
	if err != nil {
		t.Fatal(err)
	}
	snap, err := policies.Compile(b)
	if err != nil {
		t.Fatal(err)
	}
	e, ok := elementRegexp("a*")
	if !ok {
		t.Fatal("no element expression for \"a*\"")
	}
	every := regexp.MustCompile(`(?s)^(?:` + e + `)(?:,(?:` + e + `))+$`)
	peer := spiffeid.RequireFromString("spiffe://cluster.local/ns/prod/sa/web")
	for r := rune(0); r < 0x3100; r++ {
		if r == ',' || !utf8.ValidRune(r) {
			continue
		}
		v := "a," + string(r) + "a" + string(r)
		d := snap.Decide(&policies.Attributes{
			Peer: peer, MTLS: true, Method: "GET", Path: "/",
			Target:  policies.Target{Namespace: "prod"},
			Headers: policies.MapHeaders{"x": v},
		})
		if got := every.MatchString(v); got != d.Allowed {
			t.Errorf("U+%04X: %q: element expressions match %v, engine allows %v (%s)", r, v, got, d.Allowed, d.Reason)
		}
	}
}
