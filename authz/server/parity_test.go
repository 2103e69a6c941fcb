package server

import (
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/source"
)

// paritySet is written the way Istio documents AuthorizationPolicy; the
// mesh's trust domain is prod.example, the trust domain of the test CA.
const paritySet = `
apiVersion: meshguard.dev/v1alpha1
kind: MeshSettings
metadata: {name: mesh, namespace: istio-system}
spec:
  trustDomain: prod.example
  extensionProviders: [meshguard, opa]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: require-mtls, namespace: istio-system}
spec:
  action: DENY
  rules:
  - from: [{source: {notPrincipals: ["*"]}}]
    to: [{operation: {paths: ["/mtls/*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny, namespace: shop}
spec:
  action: DENY
  rules:
  - from: [{source: {principals: ["cluster.local/ns/ops/sa/admin"]}}]
    to: [{operation: {paths: ["/td/*"]}}]
  - from: [{source: {namespaces: ["batch"]}}]
    to: [{operation: {paths: ["/ns/*"]}}]
  - to: [{operation: {hosts: ["api.shop.svc.cluster.local"], paths: ["/host/*"]}}]
  - to: [{operation: {paths: ["/private/{**}"]}}]
  - when: [{key: "request.headers[x-debug]", values: ["*"]}]
  - from: [{source: {serviceAccounts: ["ops/admin"]}}]
    to: [{operation: {paths: ["/sa/*"]}}]
  - to: [{operation: {paths: ["/role/*"]}}]
    when: [{key: "request.headers[x-role]", values: ["evil"]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow, namespace: shop}
spec:
  rules:
  - from: [{source: {principals: ["cluster.local/ns/web/sa/frontend"]}}]
  - to: [{operation: {hosts: ["api.shop.svc.cluster.local"], paths: ["/host-allow"]}}]
  - to: [{operation: {paths: ["/files/{**}", "/mtls/*", "/ns/*", "/sa/*", "/host/*", "/private/*", "/role/*"]}}]
  - to: [{operation: {paths: ["/tenant"]}}]
    when: [{key: "request.headers[x-tenant]", values: ["acme*"]}]
  - from: [{source: {serviceAccounts: ["batch/job"]}}]
    to: [{operation: {paths: ["/jobs"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: opa, namespace: shop}
spec:
  action: CUSTOM
  provider: {name: opa}
  rules:
  - to: [{operation: {paths: ["/reports/*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: meshguard, namespace: shop}
spec:
  action: CUSTOM
  provider: {name: meshguard}
  rules:
  - to: [{operation: {paths: ["/checked/*"]}}]
`

// TestCheckIstioParity runs each class of Istio semantics over real gRPC:
// requests shaped as Envoy sends them, decided as Istio and Envoy decide
// them (or stricter, where docs/policies.md says so).
func TestCheckIstioParity(t *testing.T) {
	e := newEnv(t)
	set, diags := source.Parse("parity.yaml", []byte(paritySet))
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	e.load(t, "parity", set)
	jwt := func(id spiffeid.ID) map[string]string {
		return map[string]string{"authorization": "Bearer " + mustJWT(t, e.ca, id, []string{audience}, time.Minute)}
	}
	withHost := func(r *authv3.CheckRequest, h string) *authv3.CheckRequest {
		r.Attributes.Request.Http.Host = h
		r.Attributes.Request.Http.Headers[":authority"] = h
		return r
	}
	tests := []struct {
		class, name string
		req         *authv3.CheckRequest
		allowed     bool
		reason      policies.Reason
	}{
		{"1 peer", "a JWT-SVID without mTLS is no peer for the require-mTLS DENY",
			get("/mtls/x", jwt(idFrontend)), false, policies.ReasonDeniedByPolicy},
		{"1 peer", "the mTLS peer passes the require-mTLS DENY",
			withPrincipal(get("/mtls/x", nil), idBatch.String()), true, policies.ReasonAllowedByPolicy},
		{"2 trust domains", "cluster.local in a DENY is the mesh's trust domain",
			withPrincipal(get("/td/x", nil), idAdmin.String()), false, policies.ReasonDeniedByPolicy},
		{"2 trust domains", "cluster.local in an ALLOW is the mesh's trust domain",
			withPrincipal(get("/anything", nil), idFrontend.String()), true, policies.ReasonAllowedByPolicy},
		{"3 namespaces", "a DENY on a namespace catches extra path segments",
			withPrincipal(get("/ns/x", nil), "spiffe://prod.example/ns/batch/sa/job/pod/7"), false, policies.ReasonDeniedByPolicy},
		{"3 namespaces", "a target whose namespace is unknown denies",
			func() *authv3.CheckRequest {
				r := withPrincipal(get("/anything", nil), idFrontend.String())
				r.Attributes.Destination.Principal = "spiffe://prod.example/workloads/api"
				return r
			}(), false, policies.ReasonDeniedUnknownTarget},
		{"4 hosts", "an ALLOW host does not admit host:port",
			withPrincipal(get("/host-allow", nil), idBatch.String()), false, policies.ReasonDeniedNoMatch},
		{"4 hosts", "an ALLOW host admits the exact authority",
			withHost(withPrincipal(get("/host-allow", nil), idBatch.String()), "API.shop.svc.cluster.local"), true, policies.ReasonAllowedByPolicy},
		{"4 hosts", "a DENY host catches host:port",
			withPrincipal(get("/host/x", nil), idBatch.String()), false, policies.ReasonDeniedByPolicy},
		{"5 templates", "a DENY {**} matches zero segments",
			withPrincipal(get("/private/", nil), idBatch.String()), false, policies.ReasonDeniedByPolicy},
		{"5 templates", "an ALLOW {**} admits zero segments",
			withPrincipal(get("/files/", nil), idBatch.String()), true, policies.ReasonAllowedByPolicy},
		{"6 headers", "a DENY on presence catches an empty header",
			withPrincipal(get("/files/a", map[string]string{"x-debug": ""}), idBatch.String()), false, policies.ReasonDeniedByPolicy},
		{"6 headers", "an ALLOW prefix admits a duplicated header whose every element has it",
			withPrincipal(get("/tenant", map[string]string{"x-tenant": "acme-a,acme-b"}), idBatch.String()), true, policies.ReasonAllowedByPolicy},
		{"6 headers", "an ALLOW prefix refuses a duplicated header as Envoy joins it, one element outside",
			withPrincipal(get("/tenant", map[string]string{"x-tenant": "acme,other"}), idBatch.String()), false, policies.ReasonDeniedNoMatch},
		{"6 headers", "an ALLOW prefix refuses header lines in header_map, one outside",
			withHeaderLines(withPrincipal(get("/tenant", nil), idBatch.String()), "x-tenant", "acme", "other"), false, policies.ReasonDeniedNoMatch},
		{"6 headers", "an ALLOW prefix admits header lines in header_map that all have it",
			withHeaderLines(withPrincipal(get("/tenant", nil), idBatch.String()), "x-tenant", "acme-a", "acme-b"), true, policies.ReasonAllowedByPolicy},
		{"6 headers", "a DENY matches one header line of several",
			withHeaderLines(withPrincipal(get("/role/x", nil), idBatch.String()), "x-role", "user", "evil"), false, policies.ReasonDeniedByPolicy},
		{"6 headers", "and lets the lines through when none matches",
			withHeaderLines(withPrincipal(get("/role/x", nil), idBatch.String()), "x-role", "user", "evil-ish"), true, policies.ReasonAllowedByPolicy},
		{"7 today's API", "serviceAccounts admit the peer's account",
			withPrincipal(get("/jobs", nil), idBatch.String()), true, policies.ReasonAllowedByPolicy},
		{"7 today's API", "serviceAccounts do not admit a bearer JWT-SVID",
			get("/jobs", jwt(idBatch)), false, policies.ReasonDeniedNoMatch},
		{"7 today's API", "a DENY on serviceAccounts catches the peer",
			withPrincipal(get("/sa/x", nil), idAdmin.String()), false, policies.ReasonDeniedByPolicy},
		{"9 CUSTOM", "CUSTOM policies of two providers for one workload deny what they match",
			withPrincipal(get("/reports/1", nil), idFrontend.String()), false, policies.ReasonDeniedCustomProvider},
		{"9 CUSTOM", "and requests they do not match go on",
			withPrincipal(get("/other", nil), idFrontend.String()), true, policies.ReasonAllowedByPolicy},
	}
	for _, tt := range tests {
		t.Run(tt.class+": "+tt.name, func(t *testing.T) {
			resp := e.check(t, tt.req)
			md := resp.GetDynamicMetadata().GetFields()
			if got := policies.Reason(md["reason"].GetStringValue()); got != tt.reason {
				t.Errorf("reason %q, want %q", got, tt.reason)
			}
			if allowed := resp.GetOkResponse() != nil; allowed != tt.allowed {
				t.Errorf("allowed %v, want %v", allowed, tt.allowed)
			}
		})
	}
}

// withHeaderLines sends the request's headers in header_map, as Envoy does
// with encode_raw_headers, name once per value given.
func withHeaderLines(r *authv3.CheckRequest, name string, values ...string) *authv3.CheckRequest {
	hm := &corev3.HeaderMap{}
	for k, v := range r.Attributes.Request.Http.Headers {
		hm.Headers = append(hm.Headers, &corev3.HeaderValue{Key: k, Value: v})
	}
	for _, v := range values {
		hm.Headers = append(hm.Headers, &corev3.HeaderValue{Key: name, RawValue: []byte(v)})
	}
	r.Attributes.Request.Http.Headers = nil
	r.Attributes.Request.Http.HeaderMap = hm
	return r
}

// TestCheckHeaderMapDuplicates sends over real gRPC a header repeated
// 150,000 times in header_map (Envoy's encoding of raw headers): it is
// refused on its size before any join.
func TestCheckHeaderMapDuplicates(t *testing.T) {
	e := newEnv(t)
	e.load(t, "v1", testSet())
	r := withPrincipal(get("/api/items", nil), idFrontend.String())
	hm := &corev3.HeaderMap{}
	for k, v := range r.Attributes.Request.Http.Headers {
		hm.Headers = append(hm.Headers, &corev3.HeaderValue{Key: k, Value: v})
	}
	for range 150_000 {
		hm.Headers = append(hm.Headers, &corev3.HeaderValue{Key: "x-a", Value: "b"})
	}
	r.Attributes.Request.Http.Headers = nil
	r.Attributes.Request.Http.HeaderMap = hm
	start := time.Now()
	resp := e.check(t, r)
	if got := resp.GetDynamicMetadata().GetFields()["reason"].GetStringValue(); got != string(policies.ReasonDeniedInvalidReq) {
		t.Fatalf("reason %q, want %s", got, policies.ReasonDeniedInvalidReq)
	}
	t.Logf("150,000 duplicates refused in %v (over gRPC, decoding included)", time.Since(start))
}
