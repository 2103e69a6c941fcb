package policies_test

import (
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshguard/meshguard/policies"
)

const (
	frontend = "spiffe://cluster.local/ns/shop/sa/frontend"
	admin    = "spiffe://cluster.local/ns/ops/sa/admin"
	other    = "spiffe://cluster.local/ns/other/sa/batch"
	foreign  = "spiffe://partner.example/ns/shop/sa/frontend"
)

func TestNoPolicyAllows(t *testing.T) {
	s := compileYAML(t, "")
	check(t, s, rq(frontend, "GET", "/"), want{true, policies.ReasonAllowedNoPolicy, "", ""})
	check(t, s, rq("", "GET", "/"), want{true, policies.ReasonAllowedNoPolicy, "", ""})
}

func TestAllowSemantics(t *testing.T) {
	t.Run("allow nothing", func(t *testing.T) {
		s := compileYAML(t, `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: shop}
spec: {}`)
		check(t, s, rq(frontend, "GET", "/"), want{false, policies.ReasonDeniedNoMatch, "", ""})
	})
	t.Run("allow all with an empty rule", func(t *testing.T) {
		s := compileYAML(t, `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: shop}
spec:
  rules: [{}]`)
		check(t, s, rq("", "GET", "/"), want{true, policies.ReasonAllowedByPolicy, "AuthorizationPolicy/shop/allow-all", "0"})
	})
	t.Run("deny without rules has no effect", func(t *testing.T) {
		s := compileYAML(t, `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-none, namespace: shop}
spec: {action: DENY}`)
		check(t, s, rq(frontend, "GET", "/"), want{true, policies.ReasonAllowedNoPolicy, "", ""})
	})
	t.Run("deny wins over allow", func(t *testing.T) {
		s := compileYAML(t, `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: shop}
spec:
  rules: [{}]
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: deny-delete, namespace: shop}
spec:
  action: DENY
  rules:
  - to: [{operation: {methods: [DELETE]}}]`)
		check(t, s, rq(frontend, "DELETE", "/x"), want{false, policies.ReasonDeniedByPolicy, "AuthorizationPolicy/shop/deny-delete", "0"})
		check(t, s, rq(frontend, "GET", "/x"), want{true, policies.ReasonAllowedByPolicy, "AuthorizationPolicy/shop/allow-all", ""})
	})
}

func TestScoping(t *testing.T) {
	s := compileYAML(t, `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-deny-debug, namespace: istio-system}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/debug*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-web-only-get, namespace: istio-system}
spec:
  selector: {matchLabels: {app: web}}
  action: DENY
  rules: [{to: [{operation: {notMethods: [GET, HEAD]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-allow, namespace: shop}
spec:
  selector: {matchLabels: {app: web, version: v1}}
  rules: [{from: [{source: {principals: ["cluster.local/ns/shop/sa/frontend"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: svc-allow, namespace: billing}
spec:
  targetRefs: [{kind: Service, group: "", name: ledger}]
  rules: [{from: [{source: {namespaces: [ops]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: other-ns, namespace: other}
spec: {}`)
	// mesh-wide DENY applies everywhere
	check(t, s, rq(frontend, "GET", "/debug/pprof"), want{false, policies.ReasonDeniedByPolicy, "AuthorizationPolicy/istio-system/mesh-deny-debug", ""})
	check(t, s, rq(frontend, "GET", "/debug", withTarget("billing", nil, "")), want{false, policies.ReasonDeniedByPolicy, "", ""})
	// root-namespace selector applies to app=web in any namespace
	check(t, s, rq(frontend, "POST", "/x"), want{false, policies.ReasonDeniedByPolicy, "AuthorizationPolicy/istio-system/mesh-web-only-get", ""})
	check(t, s, rq(frontend, "POST", "/x", withTarget("billing", map[string]string{"app": "web"}, "")), want{false, policies.ReasonDeniedByPolicy, "AuthorizationPolicy/istio-system/mesh-web-only-get", ""})
	check(t, s, rq(frontend, "POST", "/x", withTarget("billing", map[string]string{"app": "api"}, "")), want{true, policies.ReasonAllowedNoPolicy, "", ""})
	// selector needs every label
	check(t, s, rq(frontend, "GET", "/x"), want{true, policies.ReasonAllowedByPolicy, "AuthorizationPolicy/shop/web-allow", ""})
	check(t, s, rq(other, "GET", "/x"), want{false, policies.ReasonDeniedNoMatch, "", ""})
	check(t, s, rq(other, "GET", "/x", withTarget("shop", map[string]string{"app": "web", "version": "v2"}, "")), want{true, policies.ReasonAllowedNoPolicy, "", ""})
	// targetRefs: only requests to that Service
	ledger := func(a *policies.Attributes) {
		a.Target.Namespace, a.Target.Service, a.Target.Labels, a.Target.Resolved = "billing", "ledger", nil, true
	}
	check(t, s, rq(frontend, "GET", "/x", ledger), want{false, policies.ReasonDeniedNoMatch, "", ""})
	check(t, s, rq(admin, "GET", "/x", ledger), want{true, policies.ReasonAllowedByPolicy, "AuthorizationPolicy/billing/svc-allow", ""})
	check(t, s, rq(frontend, "GET", "/x", withTarget("billing", nil, "")), want{true, policies.ReasonAllowedNoPolicy, "", ""})
	// namespace taken from the target ID when not given
	check(t, s, rq(frontend, "GET", "/x", withTarget("", nil, "spiffe://cluster.local/ns/other/sa/x")), want{false, policies.ReasonDeniedNoMatch, "", ""})
}

// TestUnresolvedTargetFailsClosed: an enforcement point that does not know
// its target's labels (or its service) cannot tell whether a selector-scoped
// (targetRef-scoped) policy applies, so it denies; it never skips a DENY that
// might apply while a namespace-wide ALLOW admits the request.
func TestUnresolvedTargetFailsClosed(t *testing.T) {
	s := compileYAML(t, `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: read-api, namespace: shop}
spec:
  rules: [{to: [{operation: {methods: [GET]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: v2-no-export, namespace: shop}
spec:
  selector: {matchLabels: {app: web, version: v2}}
  action: DENY
  rules: [{to: [{operation: {paths: ["/export"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ledger-ops, namespace: billing}
spec:
  targetRefs: [{kind: Service, group: "", name: ledger}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/export"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: plain, namespace: plain}
spec:
  rules: [{to: [{operation: {methods: [GET]}}]}]`)
	unknown := func(ns string) func(*policies.Attributes) {
		return func(a *policies.Attributes) {
			a.Target = policies.Target{ID: spiffeid.RequireFromString("spiffe://cluster.local/ns/" + ns + "/sa/web")}
		}
	}
	v := func(version string) func(*policies.Attributes) {
		return withTarget("shop", map[string]string{"app": "web", "version": version}, "")
	}
	// Labels known: the DENY applies to v2 only.
	check(t, s, rq(frontend, "GET", "/export", v("v1")), want{true, policies.ReasonAllowedByPolicy, "AuthorizationPolicy/shop/read-api", ""})
	check(t, s, rq(frontend, "GET", "/export", v("v2")), want{false, policies.ReasonDeniedByPolicy, "AuthorizationPolicy/shop/v2-no-export", ""})
	// Labels unknown: the DENY may apply, so nothing is allowed, not even
	// what no selector-scoped policy could deny.
	check(t, s, rq(frontend, "GET", "/export", unknown("shop")), want{false, policies.ReasonDeniedUnresolved, "", ""})
	check(t, s, rq(frontend, "GET", "/other", unknown("shop")), want{false, policies.ReasonDeniedUnresolved, "", ""})
	// Known to have no labels: the selector does not select it.
	check(t, s, rq(frontend, "GET", "/export", withTarget("shop", nil, "")), want{true, policies.ReasonAllowedByPolicy, "", ""})
	// A namespace without scoped policies needs no labels.
	check(t, s, rq(frontend, "GET", "/export", unknown("plain")), want{true, policies.ReasonAllowedByPolicy, "AuthorizationPolicy/plain/plain", ""})
	// targetRefs: an unknown service cannot be matched either.
	check(t, s, rq(frontend, "GET", "/export", unknown("billing")), want{false, policies.ReasonDeniedUnresolved, "", ""})
	check(t, s, rq(frontend, "GET", "/export", func(a *policies.Attributes) {
		a.Target = policies.Target{Namespace: "billing", Service: "ledger"}
	}), want{false, policies.ReasonDeniedByPolicy, "AuthorizationPolicy/billing/ledger-ops", ""})
	check(t, s, rq(frontend, "GET", "/export", func(a *policies.Attributes) {
		a.Target = policies.Target{Namespace: "billing", Resolved: true}
	}), want{true, policies.ReasonAllowedNoPolicy, "", ""})
	// Explain says why.
	_, tr := s.Explain(rq(frontend, "GET", "/export", unknown("shop")))
	if len(tr.Notes) != 1 || !strings.Contains(tr.Notes[0], "namespace shop has selector-scoped policies") {
		t.Errorf("explain notes %q", tr.Notes)
	}

	// A root-namespace selector makes every namespace need labels.
	mesh := compileYAML(t, `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-web, namespace: istio-system}
spec:
  selector: {matchLabels: {app: web}}
  action: DENY
  rules: [{to: [{operation: {paths: ["/export"]}}]}]`)
	check(t, mesh, rq(frontend, "GET", "/other", unknown("plain")), want{false, policies.ReasonDeniedUnresolved, "", ""})
	check(t, mesh, rq(frontend, "GET", "/export", withTarget("plain", map[string]string{"app": "web"}, "")), want{false, policies.ReasonDeniedByPolicy, "AuthorizationPolicy/istio-system/mesh-web", ""})
}

func TestSourceFields(t *testing.T) {
	s := compileYAML(t, `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow, namespace: shop}
spec:
  rules:
  - from: [{source: {principals: ["cluster.local/ns/shop/sa/frontend"]}}]
    to: [{operation: {paths: ["/exact"]}}]
  - from: [{source: {principals: ["cluster.local/ns/ops/*"]}}]
    to: [{operation: {paths: ["/prefix"]}}]
  - from: [{source: {principals: ["*/sa/batch"]}}]
    to: [{operation: {paths: ["/suffix"]}}]
  - from: [{source: {principals: ["*"]}}]
    to: [{operation: {paths: ["/any-authenticated"]}}]
  - from: [{source: {notPrincipals: ["cluster.local/ns/shop/sa/frontend"]}}]
    to: [{operation: {paths: ["/not-frontend"]}}]
  - from: [{source: {namespaces: ["shop"]}}]
    to: [{operation: {paths: ["/ns-shop"]}}]
  - from: [{source: {notNamespaces: ["shop"]}}]
    to: [{operation: {paths: ["/not-ns-shop"]}}]
  - from: [{source: {requestPrincipals: ["cluster.local/*"]}}]
    to: [{operation: {paths: ["/jwt"]}}]
  - from: [{source: {notRequestPrincipals: ["*"]}}]
    to: [{operation: {paths: ["/no-jwt"]}}]
  - from: [{source: {ipBlocks: ["10.1.0.0/16"]}}]
    to: [{operation: {paths: ["/ip"]}}]
  - from: [{source: {notIpBlocks: ["10.1.0.0/16"]}}]
    to: [{operation: {paths: ["/not-ip"]}}]
  - from: [{source: {remoteIpBlocks: ["203.0.113.7"]}}]
    to: [{operation: {paths: ["/remote"]}}]
  - from: [{source: {notRemoteIpBlocks: ["203.0.113.0/24"]}}]
    to: [{operation: {paths: ["/not-remote"]}}]
  - from: [{source: {principals: ["cluster.local/ns/other/sa/batch"]}}, {source: {namespaces: ["ops"]}}]
    to: [{operation: {paths: ["/or"]}}]`)
	cases := []struct {
		name, src, path string
		opts            []func(*policies.Attributes)
		allowed         bool
	}{
		{"exact principal", frontend, "/exact", nil, true},
		{"exact principal, other caller", other, "/exact", nil, false},
		{"exact principal, other trust domain", foreign, "/exact", nil, false},
		{"prefix principal", admin, "/prefix", nil, true},
		{"prefix principal no match", frontend, "/prefix", nil, false},
		{"suffix principal", other, "/suffix", nil, true},
		{"* needs authentication", "", "/any-authenticated", nil, false},
		{"* any authenticated", foreign, "/any-authenticated", nil, true},
		{"notPrincipals other", other, "/not-frontend", nil, true},
		{"notPrincipals self", frontend, "/not-frontend", nil, false},
		{"notPrincipals never admits unauthenticated", "", "/not-frontend", nil, false},
		{"namespaces", frontend, "/ns-shop", nil, true},
		{"namespaces other", other, "/ns-shop", nil, false},
		{"namespace by position, not substring", "spiffe://cluster.local/ns/evil/sa/x/ns/shop/sa/y", "/ns-shop", nil, false},
		{"namespace needs the sa segment", "spiffe://cluster.local/ns/shop/x/y", "/ns-shop", nil, false},
		{"notNamespaces other", other, "/not-ns-shop", nil, true},
		{"notNamespaces never admits unauthenticated", "", "/not-ns-shop", nil, false},
		{"notNamespaces never admits a principal without namespace", "spiffe://cluster.local/workload/x", "/not-ns-shop", nil, false},
		{"requestPrincipals", frontend, "/jwt", []func(*policies.Attributes){withJWT(frontend, []string{"web"}, nil)}, true},
		{"requestPrincipals without token", frontend, "/jwt", nil, false},
		{"notRequestPrincipals never admits without token", frontend, "/no-jwt", nil, false},
		{"ipBlocks", frontend, "/ip", nil, true},
		{"ipBlocks other", frontend, "/ip", []func(*policies.Attributes){withIP("10.2.0.1", "")}, false},
		{"ipBlocks IPv4-mapped IPv6", frontend, "/ip", []func(*policies.Attributes){withIP("::ffff:10.1.9.9", "")}, true},
		{"notIpBlocks", frontend, "/not-ip", []func(*policies.Attributes){withIP("192.0.2.1", "")}, true},
		{"notIpBlocks inside", frontend, "/not-ip", nil, false},
		{"remoteIpBlocks", frontend, "/remote", []func(*policies.Attributes){withIP("10.1.2.3", "203.0.113.7")}, true},
		{"remoteIpBlocks falls back to the peer", frontend, "/remote", nil, false},
		{"notRemoteIpBlocks", frontend, "/not-remote", []func(*policies.Attributes){withIP("10.1.2.3", "198.51.100.1")}, true},
		{"notRemoteIpBlocks inside", frontend, "/not-remote", []func(*policies.Attributes){withIP("10.1.2.3", "203.0.113.9")}, false},
		{"from entries are ORed (1)", other, "/or", nil, true},
		{"from entries are ORed (2)", admin, "/or", nil, true},
		{"from entries are ORed (none)", frontend, "/or", nil, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			reason := policies.ReasonAllowedByPolicy
			if !c.allowed {
				reason = policies.ReasonDeniedNoMatch
			}
			check(t, s, rq(c.src, "GET", c.path, c.opts...), want{c.allowed, reason, "", ""})
		})
	}
}

func TestDenyNegativesMatchUnauthenticated(t *testing.T) {
	// Istio's documented way to refuse plaintext: DENY notPrincipals ["*"].
	s := compileYAML(t, `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: require-mtls, namespace: istio-system}
spec:
  action: DENY
  rules: [{from: [{source: {notPrincipals: ["*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-shop, namespace: shop}
spec:
  action: DENY
  rules: [{from: [{source: {notNamespaces: ["shop"]}}], to: [{operation: {paths: ["/internal/*"]}}]}]`)
	check(t, s, rq("", "GET", "/"), want{false, policies.ReasonDeniedByPolicy, "AuthorizationPolicy/istio-system/require-mtls", ""})
	check(t, s, rq(frontend, "GET", "/"), want{true, policies.ReasonAllowedNoPolicy, "", ""})
	check(t, s, rq("spiffe://cluster.local/odd/path", "GET", "/internal/x"), want{false, policies.ReasonDeniedByPolicy, "AuthorizationPolicy/shop/only-shop", ""})
	check(t, s, rq(frontend, "GET", "/internal/x"), want{true, "", "", ""})
}

func TestOperationFields(t *testing.T) {
	s := compileYAML(t, `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow, namespace: shop}
spec:
  rules:
  - to: [{operation: {hosts: ["web.shop.svc.cluster.local"], paths: ["/host"]}}]
  - to: [{operation: {hosts: ["*.example.com"], paths: ["/host-suffix"]}}]
  - to: [{operation: {hosts: ["api.example.com:8443"], paths: ["/host-port"]}}]
  - to: [{operation: {notHosts: ["evil.example.com"], paths: ["/not-host"]}}]
  - to: [{operation: {ports: ["8080"], paths: ["/port"]}}]
  - to: [{operation: {notPorts: ["8080"], paths: ["/not-port"]}}]
  - to: [{operation: {methods: ["GET"], paths: ["/method"]}}]
  - to: [{operation: {notMethods: ["DELETE"], paths: ["/not-method"]}}]
  - to: [{operation: {paths: ["/exact"]}}]
  - to: [{operation: {paths: ["/prefix/*"]}}]
  - to: [{operation: {paths: ["*.png"]}}]
  - to: [{operation: {paths: ["/users/{*}/profile"]}}]
  - to: [{operation: {paths: ["/files/{**}"]}}]
  - to: [{operation: {paths: ["/api/*"], notPaths: ["/api/private*"]}}]`)
	cases := []struct {
		name, method, path string
		opts               []func(*policies.Attributes)
		allowed            bool
	}{
		{"host exact", "GET", "/host", nil, true},
		{"host case-insensitive", "GET", "/host", []func(*policies.Attributes){withHost("WEB.Shop.svc.cluster.local")}, true},
		{"host with port", "GET", "/host", []func(*policies.Attributes){withHost("web.shop.svc.cluster.local:8080")}, false}, // Istio compares :authority exactly
		{"host with trailing dot", "GET", "/host", []func(*policies.Attributes){withHost("web.shop.svc.cluster.local.")}, false},
		{"host other", "GET", "/host", []func(*policies.Attributes){withHost("web.other")}, false},
		{"host suffix", "GET", "/host-suffix", []func(*policies.Attributes){withHost("a.example.com")}, true},
		{"host suffix other", "GET", "/host-suffix", []func(*policies.Attributes){withHost("example.com.evil.net")}, false},
		{"host with port rule", "GET", "/host-port", []func(*policies.Attributes){withHost("api.example.com:8443")}, true},
		{"host with port rule, other port", "GET", "/host-port", []func(*policies.Attributes){withHost("api.example.com:9443")}, false},
		{"notHosts", "GET", "/not-host", nil, true},
		{"notHosts evil any case", "GET", "/not-host", []func(*policies.Attributes){withHost("EVIL.example.com.:443")}, false},
		{"ports", "GET", "/port", nil, true},
		{"notPorts", "GET", "/not-port", nil, false},
		{"methods", "GET", "/method", nil, true},
		{"methods exact", "get", "/method", nil, false},
		{"methods other", "POST", "/method", nil, false},
		{"notMethods", "POST", "/not-method", nil, true},
		{"notMethods any case", "delete", "/not-method", nil, false},
		{"path exact", "GET", "/exact", nil, true},
		{"path exact ignores query", "GET", "/exact?x=1", nil, true},
		{"path exact ignores fragment", "GET", "/exact#frag", nil, true},
		{"path exact is exact", "GET", "/exact/", nil, false},
		{"path exact case-sensitive", "GET", "/EXACT", nil, false},
		{"path prefix", "GET", "/prefix/a/b", nil, true},
		{"path prefix not the parent", "GET", "/prefix", nil, false},
		{"path suffix", "GET", "/img/logo.png", nil, true},
		{"template one segment", "GET", "/users/42/profile", nil, true},
		{"template not two segments", "GET", "/users/4/2/profile", nil, false},
		{"template not empty", "GET", "/users//profile", nil, false},
		{"template rest", "GET", "/files/a/b/c.txt", nil, true},
		{"template rest may be empty", "GET", "/files/", nil, true}, // {**} is zero or more segments, as Envoy's uri_template
		{"template rest not parent", "GET", "/files", nil, false},
		{"notPaths", "GET", "/api/public", nil, true},
		{"notPaths excluded", "GET", "/api/private/x", nil, false},
		{"notPaths excluded with dot segments", "GET", "/api/public/../private/x", nil, false},
		{"notPaths excluded with double slash", "GET", "/api//private/x", nil, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := s.Decide(rq(frontend, c.method, c.path, c.opts...))
			if d.Allowed != c.allowed {
				_, tr := s.Explain(rq(frontend, c.method, c.path, c.opts...))
				t.Errorf("got %+v, want allowed=%v\n%+v", d, c.allowed, tr)
			}
		})
	}
}

func TestConditions(t *testing.T) {
	s := compileYAML(t, `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow, namespace: shop}
spec:
  rules:
  - to: [{operation: {paths: ["/header"]}}]
    when: [{key: "request.headers[X-Tenant]", values: ["acme", "shared*"]}]
  - to: [{operation: {paths: ["/not-header"]}}]
    when: [{key: "request.headers[x-tenant]", notValues: ["blocked"]}]
  - to: [{operation: {paths: ["/source-ip"]}}]
    when: [{key: source.ip, values: ["10.1.0.0/16"]}]
  - to: [{operation: {paths: ["/remote-ip"]}}]
    when: [{key: remote.ip, notValues: ["203.0.113.0/24"]}]
  - to: [{operation: {paths: ["/dest-ip"]}}]
    when: [{key: destination.ip, values: ["10.9.9.9"]}]
  - to: [{operation: {paths: ["/dest-port"]}}]
    when: [{key: destination.port, values: ["8080"]}]
  - to: [{operation: {paths: ["/source-ns"]}}]
    when: [{key: source.namespace, values: ["shop"]}]
  - to: [{operation: {paths: ["/source-principal"]}}]
    when: [{key: source.principal, values: ["cluster.local/ns/ops/sa/admin"]}]
  - to: [{operation: {paths: ["/auth-principal"]}}]
    when: [{key: request.auth.principal, values: ["cluster.local/*"]}]
  - to: [{operation: {paths: ["/auth-aud"]}}]
    when: [{key: request.auth.audiences, values: ["payments"]}]
  - to: [{operation: {paths: ["/auth-presenter"]}}]
    when: [{key: request.auth.presenter, values: ["cli"]}]
  - to: [{operation: {paths: ["/claims"]}}]
    when: [{key: "request.auth.claims[groups]", values: ["admins"]}]
  - to: [{operation: {paths: ["/nested-claims"]}}]
    when: [{key: "request.auth.claims[org][team]", values: ["sre"]}]
  - to: [{operation: {paths: ["/sni"]}}]
    when: [{key: connection.sni, values: ["*.shop.svc.cluster.local"]}]
  - to: [{operation: {paths: ["/and"]}}]
    when:
    - {key: "request.headers[x-a]", values: ["1"]}
    - {key: "request.headers[x-b]", values: ["2"]}`)
	jwt := withJWT(frontend, []string{"payments", "web"}, map[string]any{"groups": []any{"devs", "admins"}, "org": map[string]any{"team": "sre"}})
	jwtPresenter := func(a *policies.Attributes) { jwt(a); a.JWT.Presenter = "cli" }
	sni := func(a *policies.Attributes) { a.SNI = "web.shop.svc.cluster.local" }
	destIP := func(a *policies.Attributes) { a.DestinationIP = mustAddr("10.9.9.9") }
	cases := []struct {
		name, src, path string
		opts            []func(*policies.Attributes)
		allowed         bool
	}{
		{"header value (name case-insensitive)", frontend, "/header", []func(*policies.Attributes){withHeader("x-tenant", "acme")}, true},
		{"header prefix value", frontend, "/header", []func(*policies.Attributes){withHeader("x-tenant", "shared-1")}, true},
		{"header other value", frontend, "/header", []func(*policies.Attributes){withHeader("x-tenant", "evil")}, false},
		{"header missing", frontend, "/header", nil, false},
		{"duplicated header cannot satisfy an ALLOW", frontend, "/header", []func(*policies.Attributes){withHeader("x-tenant", "evil,acme")}, false},
		{"header notValues", frontend, "/not-header", []func(*policies.Attributes){withHeader("x-tenant", "acme")}, true},
		{"header notValues hit", frontend, "/not-header", []func(*policies.Attributes){withHeader("x-tenant", "blocked")}, false},
		{"header notValues missing header", frontend, "/not-header", nil, false},
		{"source.ip", frontend, "/source-ip", nil, true},
		{"remote.ip notValues", frontend, "/remote-ip", []func(*policies.Attributes){withIP("10.1.2.3", "198.51.100.2")}, true},
		{"remote.ip notValues hit", frontend, "/remote-ip", []func(*policies.Attributes){withIP("10.1.2.3", "203.0.113.2")}, false},
		{"destination.ip", frontend, "/dest-ip", []func(*policies.Attributes){destIP}, true},
		{"destination.ip missing", frontend, "/dest-ip", nil, false},
		{"destination.port", frontend, "/dest-port", nil, true},
		{"source.namespace", frontend, "/source-ns", nil, true},
		{"source.namespace other", other, "/source-ns", nil, false},
		{"source.principal", admin, "/source-principal", nil, true},
		{"source.principal other", frontend, "/source-principal", nil, false},
		{"request.auth.principal", frontend, "/auth-principal", []func(*policies.Attributes){jwt}, true},
		{"request.auth.principal without token", frontend, "/auth-principal", nil, false},
		{"request.auth.audiences", frontend, "/auth-aud", []func(*policies.Attributes){jwt}, true},
		{"request.auth.presenter", frontend, "/auth-presenter", []func(*policies.Attributes){jwtPresenter}, true},
		{"request.auth.presenter other", frontend, "/auth-presenter", []func(*policies.Attributes){jwt}, false},
		{"request.auth.claims list", frontend, "/claims", []func(*policies.Attributes){jwt}, true},
		{"request.auth.claims nested", frontend, "/nested-claims", []func(*policies.Attributes){jwt}, true},
		{"connection.sni", frontend, "/sni", []func(*policies.Attributes){sni}, true},
		{"conditions are ANDed", frontend, "/and", []func(*policies.Attributes){withHeader("x-a", "1"), withHeader("x-b", "2")}, true},
		{"conditions are ANDed (one missing)", frontend, "/and", []func(*policies.Attributes){withHeader("x-a", "1")}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := s.Decide(rq(c.src, "GET", c.path, c.opts...))
			if d.Allowed != c.allowed {
				_, tr := s.Explain(rq(c.src, "GET", c.path, c.opts...))
				t.Errorf("got %+v, want allowed=%v\n%+v", d, c.allowed, tr)
			}
		})
	}
}

func TestAuditCustomAndDryRun(t *testing.T) {
	s := compileYAML(t, `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit-writes, namespace: shop}
spec:
  action: AUDIT
  rules: [{to: [{operation: {methods: [POST]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: shop}
spec:
  action: CUSTOM
  provider: {name: meshguard}
  rules: [{to: [{operation: {paths: ["/payments/*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: try-deny-batch
  namespace: shop
  annotations: {istio.io/dry-run: "true"}
spec:
  action: DENY
  rules: [{from: [{source: {namespaces: [other]}}]}]`)
	d := check(t, s, rq(frontend, "POST", "/x"), want{true, policies.ReasonAllowedNoPolicy, "", ""})
	if !d.Audit || d.AuditRef.Policy != "AuthorizationPolicy/shop/audit-writes" {
		t.Errorf("AUDIT did not mark: %+v", d)
	}
	d = check(t, s, rq(frontend, "GET", "/payments/1"), want{true, policies.ReasonAllowedNoPolicy, "", ""})
	if d.Custom != "meshguard" || d.Audit {
		t.Errorf("CUSTOM: %+v", d)
	}
	d = check(t, s, rq(other, "GET", "/x"), want{true, policies.ReasonDeniedByPolicy, "AuthorizationPolicy/shop/try-deny-batch", "0"})
	if !d.WouldDeny || d.Mode != policies.ModeDryRun {
		t.Errorf("dry-run: %+v", d)
	}
	d = check(t, s, rq(frontend, "GET", "/x"), want{true, policies.ReasonAllowedNoPolicy, "", ""})
	if d.WouldDeny {
		t.Errorf("dry-run fired for a request it does not match: %+v", d)
	}
}

func TestDryRunAllowPolicy(t *testing.T) {
	s := compileYAML(t, `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: future-allow
  namespace: shop
  annotations: {istio.io/dry-run: "true"}
spec:
  rules: [{from: [{source: {namespaces: [shop]}}]}]`)
	d := check(t, s, rq(other, "GET", "/"), want{true, policies.ReasonDeniedNoMatch, "", ""})
	if !d.WouldDeny {
		t.Errorf("a dry-run ALLOW that would not admit the caller must record a would-deny: %+v", d)
	}
	d = check(t, s, rq(frontend, "GET", "/"), want{true, policies.ReasonAllowedNoPolicy, "", ""})
	if d.WouldDeny {
		t.Errorf("%+v", d)
	}
}

func TestValidationErrors(t *testing.T) {
	set := setFromYAML(t, `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad, namespace: shop}
spec:
  action: PERMIT
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad2, namespace: shop}
spec:
  rules:
  - from: [{source: {principals: ["a*b"], ipBlocks: ["10.0.0.1/8", "nope"]}}]
    to: [{operation: {ports: ["99999"], paths: ["/a/{**}/{*}", "/x?y"]}}]
    when: [{key: request.bogus, values: [x]}, {key: "request.headers[x]"}]
---
apiVersion: meshguard.dev/v1alpha1
kind: IdentityPolicy
metadata: {name: bad3, namespace: shop}
spec:
  workloads: ["spiffe://td/ns/*x/sa/y"]
  mode: sometimes
  rules:
  - from: [{ids: ["spiffe://td/**/x"]}]
    jwt: {audiences: []}
---
apiVersion: meshguard.dev/v1alpha1
kind: Quarantine
metadata: {name: q, namespace: istio-system}
spec: {identity: "spiffe://td/../x", expiresAt: tomorrow}`)
	diags := policies.Validate(&set)
	codes := map[string]int{}
	for _, d := range diags.Errors() {
		codes[d.Code]++
		if d.Object == "" {
			t.Errorf("diagnostic without object: %v", d)
		}
	}
	wantCodes := map[string]int{
		policies.CodeInvalidAction:    1,
		policies.CodeInvalidPrincipal: 1,
		policies.CodeInvalidIPBlock:   2,
		policies.CodeInvalidPort:      1,
		policies.CodeInvalidPath:      2,
		policies.CodeInvalidCondition: 2,
		policies.CodeInvalidPattern:   2,
		policies.CodeInvalidMode:      1,
		policies.CodeMissingField:     1,
		policies.CodeInvalidSPIFFEID:  1,
	}
	for code, n := range wantCodes {
		if codes[code] != n {
			t.Errorf("code %s: %d errors, want %d\n%v", code, codes[code], n, diags)
		}
	}
	if _, _, err := policies.NewBundle("", set); err == nil {
		t.Fatal("NewBundle accepted an invalid set")
	}
}
