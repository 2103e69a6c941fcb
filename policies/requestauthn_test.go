package policies_test

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/meshguard/meshguard/policies"
)

// A valid RSA public key set (the key is never used to verify here).
const testJWKS = `{"keys":[{"kty":"RSA","kid":"k1","alg":"RS256","use":"sig","n":"sXch-9t-2Sxm5sN2cL0m0m-Cr6p8_6c4F3lP6uYvN1pYmwO6dS1n0L2x3hJ7N5f2y8l0D5yQd8pTlxm7gJw","e":"AQAB"}]}`

func raDoc(spec string) string {
	return "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: ra, namespace: shop}\nspec:\n" + spec
}

// TestRequestAuthenticationValidation holds the compiler to Istio's
// validation of RequestAuthentication (pkg/config/validation
// ValidateRequestAuthentication, validateJwtRule) and its CRD's rules.
func TestRequestAuthenticationValidation(t *testing.T) {
	long := "https://idp.example/" + strings.Repeat("a", 2050)
	many := make([]string, 65)
	for i := range many {
		many[i] = fmt.Sprintf("c%d", i)
	}
	tests := []struct {
		name  string
		spec  string
		code  string // "" : valid
		field string
	}{
		{"valid, every field", `  selector: {matchLabels: {app: api}}
  jwtRules:
  - issuer: https://idp.example
    audiences: [api, web]
    jwksUri: https://idp.example/keys
    fromHeaders: [{name: X-Jwt, prefix: "Bearer "}]
    fromParams: [token]
    fromCookies: [session]
    outputPayloadToHeader: x-jwt-payload
    forwardOriginalToken: true
    outputClaimToHeaders: [{header: x-sub, claim: sub}, {header: x-team, claim: org.team}]
    timeout: 2.5s
    spaceDelimitedClaims: [roles]
`, "", ""},
		{"valid: jwksUri without issuer", "  jwtRules: [{jwksUri: https://idp.example/keys}]\n", "", ""},
		{"valid: the jwks_uri spelling", "  jwtRules: [{issuer: a, jwks_uri: https://idp.example/keys}]\n", "", ""},
		{"valid: inline jwks", "  jwtRules: [{issuer: a, jwks: '" + testJWKS + "'}]\n", "", ""},
		{"no issuer and no jwksUri", "  jwtRules: [{jwks: '" + testJWKS + "'}]\n", policies.CodeMissingField, "spec.jwtRules[0].issuer"},
		{"jwks and jwksUri", "  jwtRules: [{issuer: a, jwksUri: https://x/k, jwks: '" + testJWKS + "'}]\n", policies.CodeConflict, "spec.jwtRules[0].jwks"},
		{"jwksUri and jwks_uri", "  jwtRules: [{issuer: a, jwksUri: https://x/k, jwks_uri: https://x/k}]\n", policies.CodeConflict, "spec.jwtRules[0].jwks_uri"},
		{"jwksUri scheme", "  jwtRules: [{issuer: a, jwksUri: ftp://x/k}]\n", policies.CodeInvalidValue, "spec.jwtRules[0].jwksUri"},
		{"jwksUri without host", "  jwtRules: [{issuer: a, jwksUri: 'https:///k'}]\n", policies.CodeInvalidValue, "spec.jwtRules[0].jwksUri"},
		{"jwksUri too long", "  jwtRules: [{issuer: a, jwksUri: " + long + "}]\n", policies.CodeInvalidValue, "spec.jwtRules[0].jwksUri"},
		{"jwks not JSON", "  jwtRules: [{issuer: a, jwks: 'nope'}]\n", policies.CodeInvalidKeySet, "spec.jwtRules[0].jwks"},
		{"jwks a single key, not a set", `  jwtRules: [{issuer: a, jwks: '{"kty":"RSA","n":"AQAB","e":"AQAB"}'}]` + "\n", policies.CodeInvalidKeySet, "spec.jwtRules[0].jwks"},
		{"jwks keys not an array", `  jwtRules: [{issuer: a, jwks: '{"keys":{}}'}]` + "\n", policies.CodeInvalidKeySet, "spec.jwtRules[0].jwks"},
		{"jwks key without kty", `  jwtRules: [{issuer: a, jwks: '{"keys":[{"n":"AQAB","e":"AQAB"}]}'}]` + "\n", policies.CodeInvalidKeySet, "spec.jwtRules[0].jwks"},
		{"jwks RSA key without n", `  jwtRules: [{issuer: a, jwks: '{"keys":[{"kty":"RSA","e":"AQAB"}]}'}]` + "\n", policies.CodeInvalidKeySet, "spec.jwtRules[0].jwks"},
		{"jwks EC key without crv", `  jwtRules: [{issuer: a, jwks: '{"keys":[{"kty":"EC","x":"AQAB","y":"AQAB"}]}'}]` + "\n", policies.CodeInvalidKeySet, "spec.jwtRules[0].jwks"},
		{"jwks key not base64url", `  jwtRules: [{issuer: a, jwks: '{"keys":[{"kty":"OKP","crv":"Ed25519","x":"+/"}]}'}]` + "\n", policies.CodeInvalidKeySet, "spec.jwtRules[0].jwks"},
		{"jwks unknown kty", `  jwtRules: [{issuer: a, jwks: '{"keys":[{"kty":"DSA"}]}'}]` + "\n", policies.CodeInvalidKeySet, "spec.jwtRules[0].jwks"},
		{"jwks kid not a string", `  jwtRules: [{issuer: a, jwks: '{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB","kid":1}]}'}]` + "\n", policies.CodeInvalidKeySet, "spec.jwtRules[0].jwks"},
		{"empty audience", "  jwtRules: [{issuer: a, audiences: ['']}]\n", policies.CodeInvalidValue, "spec.jwtRules[0].audiences[0]"},
		{"empty header name", "  jwtRules: [{issuer: a, fromHeaders: [{name: ''}]}]\n", policies.CodeMissingField, "spec.jwtRules[0].fromHeaders[0].name"},
		{"header name with a space", "  jwtRules: [{issuer: a, fromHeaders: [{name: 'x jwt'}]}]\n", policies.CodeInvalidValue, "spec.jwtRules[0].fromHeaders[0].name"},
		{"empty param", "  jwtRules: [{issuer: a, fromParams: ['']}]\n", policies.CodeInvalidValue, "spec.jwtRules[0].fromParams[0]"},
		{"empty cookie", "  jwtRules: [{issuer: a, fromCookies: ['']}]\n", policies.CodeInvalidValue, "spec.jwtRules[0].fromCookies[0]"},
		{"claim header outside Istio's pattern", "  jwtRules: [{issuer: a, outputClaimToHeaders: [{header: 'x.sub', claim: sub}]}]\n", policies.CodeInvalidValue, "spec.jwtRules[0].outputClaimToHeaders[0].header"},
		{"claim header without claim", "  jwtRules: [{issuer: a, outputClaimToHeaders: [{header: x-sub, claim: ''}]}]\n", policies.CodeMissingField, "spec.jwtRules[0].outputClaimToHeaders[0]"},
		{"claim headers not unique", "  jwtRules: [{issuer: a, outputClaimToHeaders: [{header: x-sub, claim: sub}, {header: X-Sub, claim: iss}]}]\n", policies.CodeConflict, "spec.jwtRules[0].outputClaimToHeaders[1].header"},
		{"claim header is meshguard's", "  jwtRules: [{issuer: a, outputClaimToHeaders: [{header: x-meshguard-source-id, claim: sub}]}]\n", policies.CodeInvalidValue, "spec.jwtRules[0].outputClaimToHeaders[0].header"},
		{"payload header not a header name", "  jwtRules: [{issuer: a, outputPayloadToHeader: 'x payload'}]\n", policies.CodeInvalidValue, "spec.jwtRules[0].outputPayloadToHeader"},
		{"timeout not a duration", "  jwtRules: [{issuer: a, timeout: soon}]\n", policies.CodeInvalidDuration, "spec.jwtRules[0].timeout"},
		{"timeout under 1ms", "  jwtRules: [{issuer: a, timeout: 0.5ms}]\n", policies.CodeInvalidDuration, "spec.jwtRules[0].timeout"},
		{"timeout below ms precision", "  jwtRules: [{issuer: a, timeout: 1.5ms}]\n", policies.CodeInvalidDuration, "spec.jwtRules[0].timeout"},
		{"empty space-delimited claim", "  jwtRules: [{issuer: a, spaceDelimitedClaims: ['']}]\n", policies.CodeInvalidValue, "spec.jwtRules[0].spaceDelimitedClaims[0]"},
		{"too many space-delimited claims", "  jwtRules: [{issuer: a, spaceDelimitedClaims: [" + strings.Join(many, ",") + "]}]\n", policies.CodeInvalidValue, "spec.jwtRules[0].spaceDelimitedClaims"},
		{"selector and targetRefs", "  selector: {matchLabels: {app: a}}\n  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: gw}]\n  jwtRules: [{issuer: a}]\n", policies.CodeConflict, "spec.selector"},
		{"targetRef kind", "  targetRefs: [{kind: Pod, name: p}]\n  jwtRules: [{issuer: a}]\n", policies.CodeInvalidValue, "spec.targetRefs[0].kind"},
		{"targetRef in another namespace", "  targetRefs: [{kind: Service, name: s, namespace: other}]\n  jwtRules: [{issuer: a}]\n", policies.CodeInvalidValue, "spec.targetRefs[0].namespace"},
		{"selector wildcard", "  selector: {matchLabels: {app: 'a*'}}\n  jwtRules: [{issuer: a}]\n", policies.CodeInvalidValue, "spec.selector.matchLabels.app"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			set := setFromYAML(t, raDoc(tt.spec))
			errs := policies.Validate(&set).Errors()
			if tt.code == "" {
				if len(errs) > 0 {
					t.Fatalf("valid policy refused: %v", errs)
				}
				return
			}
			for _, d := range errs {
				if d.Code == tt.code && d.Field == tt.field && d.Object == "RequestAuthentication/shop/ra" {
					return
				}
			}
			t.Fatalf("want error %s at %s, got %v", tt.code, tt.field, errs)
		})
	}
}

func TestRequestAuthenticationLimits(t *testing.T) {
	ra := policies.RequestAuthentication{APIVersion: policies.APIVersionIstioV1, Kind: policies.KindRequestAuthentication,
		Metadata: policies.ObjectMeta{Name: "ra", Namespace: "shop"}}
	for i := 0; i < 17; i++ {
		ra.Spec.TargetRefs = append(ra.Spec.TargetRefs, policies.PolicyTargetReference{Kind: "Service", Name: fmt.Sprint("s", i)})
	}
	for i := 0; i < 4097; i++ {
		ra.Spec.JWTRules = append(ra.Spec.JWTRules, policies.JWTRule{Issuer: fmt.Sprint("i", i)})
	}
	set := policies.Set{RequestAuthentications: []policies.RequestAuthentication{ra}}
	got := map[string]bool{}
	for _, d := range policies.Validate(&set).Errors() {
		got[d.Field] = true
	}
	if !got["spec.targetRefs"] || !got["spec.jwtRules"] {
		t.Fatalf("limits of 16 targetRefs and 4096 jwtRules not enforced: %v", got)
	}
}

func TestRequestAuthenticationLint(t *testing.T) {
	tests := []struct {
		name  string
		spec  string
		code  string
		field string
		msg   string
	}{
		{"private RSA key", `  jwtRules: [{issuer: a, jwks: '{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB","d":"AQAB"}]}'}]` + "\n",
			policies.CodePrivateKey, "spec.jwtRules[0].jwks", "private key material"},
		{"symmetric key", `  jwtRules: [{issuer: a, jwks: '{"keys":[{"kty":"oct","k":"AQAB"}]}'}]` + "\n",
			policies.CodeUnusableKey, "spec.jwtRules[0].jwks", "symmetric"},
		{"symmetric key only: every token refused", `  jwtRules: [{issuer: a, jwks: '{"keys":[{"kty":"oct","k":"AQAB"}]}'}]` + "\n",
			policies.CodeUnusableKey, "spec.jwtRules[0].jwks", "every token of this rule is refused"},
		{"encryption key", `  jwtRules: [{issuer: a, jwks: '{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB","use":"enc"}]}'}]` + "\n",
			policies.CodeUnusableKey, "spec.jwtRules[0].jwks", `use "enc"`},
		{"HMAC alg on an RSA key", `  jwtRules: [{issuer: a, jwks: '{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB","alg":"HS256"}]}'}]` + "\n",
			policies.CodeUnusableKey, "spec.jwtRules[0].jwks", `alg "HS256"`},
		{"RSA key with an empty modulus (go-jose reads it; it verifies nothing)", `  jwtRules: [{issuer: a, jwks: '{"keys":[{"kty":"RSA","n":"","e":""}]}'}]` + "\n",
			policies.CodeUnusableKey, "spec.jwtRules[0].jwks", `"n" is empty`},
		{"empty key set", `  jwtRules: [{issuer: a, jwks: '{"keys":[]}'}]` + "\n",
			policies.CodeUnusableKey, "spec.jwtRules[0].jwks", "every token of this rule is refused"},
		{"no key source", "  jwtRules: [{issuer: issuer-foo}]\n",
			policies.CodeUnusableKey, "spec.jwtRules[0].issuer", "not an http(s) URL"},
		{"selector without labels", "  selector: {}\n  jwtRules: [{issuer: https://a}]\n",
			policies.CodeNoEffect, "spec.selector", "without labels"},
		{"no rules", "  jwtRules: []\n",
			policies.CodeNoEffect, "spec.jwtRules", "has no effect"},
		{"deprecated targetRef", "  targetRef: {kind: Service, name: s}\n  jwtRules: [{issuer: https://a}]\n",
			policies.CodeDeprecated, "spec.targetRef", "deprecated"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			set := setFromYAML(t, raDoc(tt.spec))
			diags := policies.Validate(&set)
			if errs := diags.Errors(); len(errs) > 0 {
				t.Fatalf("errors: %v", errs)
			}
			for _, d := range diags.Warnings() {
				if d.Code == tt.code && d.Field == tt.field && strings.Contains(d.Message, tt.msg) {
					return
				}
			}
			t.Fatalf("want warning %s at %s (%q), got %v", tt.code, tt.field, tt.msg, diags)
		})
	}
	set := setFromYAML(t, raDoc("  jwtRules: [{issuer: https://a, jwks: '"+testJWKS+"'}, {issuer: https://b}]\n"))
	if d := policies.Validate(&set); len(d) > 0 {
		t.Fatalf("a public key set and a discoverable issuer: want no diagnostic, got %v", d)
	}
}

// TestJWTProviders holds RequestAuthentication to the scoping of Istio's
// policies (the same as AuthorizationPolicy's): mesh-wide in the root
// namespace, namespace-wide, by selector, by targetRefs; every rule that
// applies, ordered by issuer.
func TestJWTProviders(t *testing.T) {
	s := compileYAML(t, `apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: mesh, namespace: istio-system}
spec:
  jwtRules: [{issuer: "https://mesh.example"}]
---
apiVersion: security.istio.io/v1beta1
kind: RequestAuthentication
metadata: {name: ns, namespace: shop}
spec:
  jwtRules:
  - issuer: "https://b.example"
    fromHeaders: [{name: X-Token}]
    timeout: 250ms
  - issuer: "https://a.example"
    jwksUri: "https://a.example/keys"
    outputClaimToHeaders: [{header: X-Sub, claim: sub}]
    outputPayloadToHeader: X-Payload
    spaceDelimitedClaims: [roles, scope]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: api, namespace: shop}
spec:
  selector: {matchLabels: {app: api}}
  jwtRules: [{issuer: "https://api.example", fromCookies: [session]}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: gateway, namespace: shop}
spec:
  targetRefs:
  - {kind: Gateway, group: gateway.networking.k8s.io, name: gw}
  - {kind: Service, name: gw-svc}
  jwtRules: [{issuer: "https://gw.example", fromParams: [t]}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: other, namespace: other}
spec:
  jwtRules: [{issuer: "https://other.example"}]
`)
	if !s.HasRequestAuthentication() {
		t.Fatal("HasRequestAuthentication = false")
	}
	refs := func(ps []*policies.JWTProvider) []string {
		var out []string
		for _, p := range ps {
			out = append(out, p.Ref.Policy+"#"+p.Ref.Rule+"="+p.Issuer)
		}
		return out
	}
	tests := []struct {
		name   string
		target policies.Target
		want   []string
		why    string
	}{
		{"workload with the selector's labels", policies.Target{Namespace: "shop", Labels: map[string]string{"app": "api"}, Resolved: true}, []string{
			"RequestAuthentication/shop/ns#1=https://a.example", "RequestAuthentication/shop/api#0=https://api.example",
			"RequestAuthentication/shop/ns#0=https://b.example", "RequestAuthentication/istio-system/mesh#0=https://mesh.example",
		}, ""},
		{"another workload of the namespace", policies.Target{Namespace: "shop", Labels: map[string]string{"app": "web"}, Resolved: true}, []string{
			"RequestAuthentication/shop/ns#1=https://a.example", "RequestAuthentication/shop/ns#0=https://b.example",
			"RequestAuthentication/istio-system/mesh#0=https://mesh.example",
		}, ""},
		{"the gateway, named by Gateway and Service: its rule once", policies.Target{Namespace: "shop", Gateway: "gw", Service: "gw-svc", Resolved: true}, []string{
			"RequestAuthentication/shop/ns#1=https://a.example", "RequestAuthentication/shop/ns#0=https://b.example",
			"RequestAuthentication/shop/gateway#0=https://gw.example", "RequestAuthentication/istio-system/mesh#0=https://mesh.example",
		}, ""},
		{"another namespace", policies.Target{Namespace: "other", Resolved: true}, []string{
			"RequestAuthentication/istio-system/mesh#0=https://mesh.example", "RequestAuthentication/other/other#0=https://other.example",
		}, ""},
		{"a namespace without its own", policies.Target{Namespace: "web", Resolved: true}, []string{"RequestAuthentication/istio-system/mesh#0=https://mesh.example"}, ""},
		{"unknown labels where a selector may apply", policies.Target{Namespace: "shop"}, nil, "selector-scoped"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for round := 0; round < 2; round++ { // the second from the target's view
				ps, why := s.JWTProviders(&tt.target)
				if !strings.Contains(why, tt.why) || (why == "") != (tt.why == "") {
					t.Fatalf("round %d: why = %q, want %q", round, why, tt.why)
				}
				if got := refs(ps); !reflect.DeepEqual(got, tt.want) {
					t.Fatalf("round %d: providers\n got %v\nwant %v", round, got, tt.want)
				}
			}
		})
	}

	ps, _ := s.JWTProviders(&policies.Target{Namespace: "shop", Labels: map[string]string{"app": "api"}, Resolved: true})
	byIssuer := map[string]*policies.JWTProvider{}
	for _, p := range ps {
		byIssuer[p.Issuer] = p
	}
	mesh, b, a, api := byIssuer["https://mesh.example"], byIssuer["https://b.example"], byIssuer["https://a.example"], byIssuer["https://api.example"]
	if !reflect.DeepEqual(mesh.Headers, []policies.JWTHeader{{Name: "authorization", Prefix: "Bearer "}}) || !reflect.DeepEqual(mesh.Params, []string{"access_token"}) {
		t.Errorf("default locations: %+v %+v", mesh.Headers, mesh.Params)
	}
	if mesh.Timeout != policies.DefaultJWKSTimeout || b.Timeout != 250*time.Millisecond {
		t.Errorf("timeouts: %v %v", mesh.Timeout, b.Timeout)
	}
	if !reflect.DeepEqual(b.Headers, []policies.JWTHeader{{Name: "x-token"}}) || b.Params != nil {
		t.Errorf("a named header replaces the defaults: %+v %+v", b.Headers, b.Params)
	}
	if !reflect.DeepEqual(api.Cookies, []string{"session"}) || api.Headers != nil || api.Params != nil {
		t.Errorf("a cookie replaces the defaults: %+v", api)
	}
	if !reflect.DeepEqual(a.SpaceDelimited, []string{"permission", "roles", "scope"}) || !reflect.DeepEqual(mesh.SpaceDelimited, []string{"permission", "scope"}) {
		t.Errorf("space-delimited claims: %v %v", a.SpaceDelimited, mesh.SpaceDelimited)
	}
	if a.PayloadHeader != "x-payload" || !reflect.DeepEqual(a.ClaimHeaders, []policies.ClaimToHeader{{Header: "x-sub", Claim: "sub"}}) || a.JWKSURI != "https://a.example/keys" {
		t.Errorf("outputs: %+v", a)
	}
	if got := mesh.DiscoveryURL(); got != "https://mesh.example/.well-known/openid-configuration" {
		t.Errorf("discovery URL %q", got)
	}
	if got := a.DiscoveryURL(); got != "" {
		t.Errorf("a rule with a jwksUri needs no discovery: %q", got)
	}

	none := compileYAML(t, "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop}\nspec: {}\n")
	if ps, why := none.JWTProviders(&policies.Target{Namespace: "shop"}); ps != nil || why != "" || none.HasRequestAuthentication() {
		t.Errorf("a set without RequestAuthentication: %v %q", ps, why)
	}
}

func TestJWTProvidersAllocations(t *testing.T) {
	s := compileYAML(t, raDoc("  jwtRules: [{issuer: https://a}, {issuer: https://b}]\n"))
	tg := &policies.Target{Namespace: "shop", Resolved: true}
	s.JWTProviders(tg)
	if n := testing.AllocsPerRun(100, func() { s.JWTProviders(tg) }); n != 0 {
		t.Errorf("JWTProviders allocates %v times per call from a target's view", n)
	}
}
