package server

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	jose "github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshguard/meshguard/authz/requestauth"
	"github.com/meshguard/meshguard/policies"
)

const endUserIssuer = "https://idp.example"

// idp is an OpenID provider in process: it signs tokens and serves its key
// set over HTTP, and can rotate its key.
type idp struct {
	srv  *httptest.Server
	keys atomic.Pointer[[]idpKey]
	hits atomic.Int64
}

type idpKey struct {
	kid  string
	alg  jose.SignatureAlgorithm
	priv any
	pub  any
}

func newIDP(t *testing.T) *idp {
	t.Helper()
	p := &idp{}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	p.keys.Store(&[]idpKey{{kid: "rsa-1", alg: jose.RS256, priv: rsaKey, pub: &rsaKey.PublicKey}})
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.hits.Add(1)
		var set jose.JSONWebKeySet
		for _, k := range *p.keys.Load() {
			set.Keys = append(set.Keys, jose.JSONWebKey{Key: k.pub, KeyID: k.kid, Algorithm: string(k.alg), Use: "sig"})
		}
		_ = json.NewEncoder(w).Encode(set)
	}))
	t.Cleanup(p.srv.Close)
	return p
}

// rotate adds an ES256 key, which signs from now on.
func (p *idp) rotate(t *testing.T) {
	t.Helper()
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ks := append([]idpKey{{kid: "ec-2", alg: jose.ES256, priv: ec, pub: &ec.PublicKey}}, *p.keys.Load()...)
	p.keys.Store(&ks)
}

func (p *idp) token(t *testing.T, claims map[string]any) string {
	t.Helper()
	k := (*p.keys.Load())[0]
	sg, err := jose.NewSigner(jose.SigningKey{Algorithm: k.alg, Key: k.priv}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", k.kid))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(claims)
	obj, err := sg.Sign(b)
	if err != nil {
		t.Fatal(err)
	}
	s, _ := obj.CompactSerialize()
	return s
}

func userClaims(sub string, extra ...any) map[string]any {
	now := time.Now().Unix()
	c := map[string]any{"iss": endUserIssuer, "sub": sub, "aud": "shop-api", "iat": now, "exp": now + 600}
	for i := 0; i+1 < len(extra); i += 2 {
		c[extra[i].(string)] = extra[i+1]
	}
	return c
}

// requestAuthSet: the shop namespace accepts the identity provider's
// tokens (a RequestAuthentication) and authorizes by them: orders for any
// user, writes for a scope, never for mallory.
func requestAuthSet(jwksURI string) policies.Set {
	set := testSet()
	set.RequestAuthentications = []policies.RequestAuthentication{{
		APIVersion: policies.APIVersionIstioV1, Kind: policies.KindRequestAuthentication,
		Metadata: policies.ObjectMeta{Name: "idp", Namespace: "shop"},
		Spec: policies.RequestAuthenticationSpec{JWTRules: []policies.JWTRule{{
			Issuer: endUserIssuer, Audiences: []string{"shop-api"}, JWKSURI: jwksURI,
			OutputPayloadToHeader: "x-jwt-payload",
			OutputClaimToHeaders:  []policies.ClaimToHeader{{Header: "x-user", Claim: "sub"}},
		}}},
	}}
	set.AuthorizationPolicies = append(set.AuthorizationPolicies,
		policies.AuthorizationPolicy{
			APIVersion: policies.APIVersionIstioV1, Kind: policies.KindAuthorizationPolicy,
			Metadata: policies.ObjectMeta{Name: "orders", Namespace: "shop"},
			Spec: policies.AuthorizationPolicySpec{Rules: []policies.Rule{
				{
					From: []policies.RuleFrom{{Source: policies.Source{RequestPrincipals: []string{endUserIssuer + "/*"}}}},
					To:   []policies.RuleTo{{Operation: policies.Operation{Methods: []string{"GET"}, Paths: []string{"/orders/*"}}}},
				},
				{
					To:   []policies.RuleTo{{Operation: policies.Operation{Methods: []string{"POST"}, Paths: []string{"/orders/*"}}}},
					When: []policies.Condition{{Key: "request.auth.claims[scope]", Values: []string{"orders:write"}}},
				},
			}},
		},
		policies.AuthorizationPolicy{
			APIVersion: policies.APIVersionIstioV1, Kind: policies.KindAuthorizationPolicy,
			Metadata: policies.ObjectMeta{Name: "no-mallory", Namespace: "shop"},
			Spec: policies.AuthorizationPolicySpec{Action: "DENY", Rules: []policies.Rule{{
				When: []policies.Condition{{Key: "request.auth.principal", Values: []string{endUserIssuer + "/mallory"}}},
			}}},
		},
	)
	return set
}

// TestRequestAuthentication: end-user tokens over real gRPC, validated
// against a real key set server and authorized by the policy.
func TestRequestAuthentication(t *testing.T) {
	p := newIDP(t)
	e := newEnv(t, withRequestAuth(t, requestauth.Config{MinRefetch: time.Millisecond}))
	e.load(t, "v1", requestAuthSet(p.srv.URL+"/keys"))
	now := time.Now().Unix()
	withAuth := func(r *authv3.CheckRequest, tok string) *authv3.CheckRequest {
		r.Attributes.Request.Http.Headers["authorization"] = "Bearer " + tok
		return r
	}
	tests := []struct {
		name    string
		req     func() *authv3.CheckRequest
		allowed bool
		reason  policies.Reason
		status  int
		detail  string
	}{
		{"a user reads orders", func() *authv3.CheckRequest { return withAuth(get("/orders/1", nil), p.token(t, userClaims("alice"))) },
			true, policies.ReasonAllowedByPolicy, 0, ""},
		{"no token: no request principal, not an error", func() *authv3.CheckRequest { return get("/orders/1", nil) },
			false, policies.ReasonDeniedNoMatch, 403, ""},
		{"a token in the access_token parameter", func() *authv3.CheckRequest {
			return get("/orders/1?access_token="+p.token(t, userClaims("alice")), nil)
		}, true, policies.ReasonAllowedByPolicy, 0, ""},
		{"a scope claim, space-delimited, admits a write", func() *authv3.CheckRequest {
			return withAuth(envoyRequest("POST", "/orders/2", nil), p.token(t, userClaims("bob", "scope", "orders:read orders:write")))
		}, true, policies.ReasonAllowedByPolicy, 0, ""},
		{"without the scope, no write", func() *authv3.CheckRequest {
			return withAuth(envoyRequest("POST", "/orders/2", nil), p.token(t, userClaims("bob", "scope", "orders:read")))
		}, false, policies.ReasonDeniedNoMatch, 403, ""},
		{"a DENY on the principal", func() *authv3.CheckRequest { return withAuth(get("/orders/1", nil), p.token(t, userClaims("mallory"))) },
			false, policies.ReasonDeniedByPolicy, 403, ""},
		{"an expired token: 401", func() *authv3.CheckRequest {
			return withAuth(get("/orders/1", nil), p.token(t, userClaims("alice", "exp", now-300)))
		}, false, policies.ReasonDeniedToken, 401, "Jwt is expired"},
		{"a token for another audience: 403", func() *authv3.CheckRequest {
			return withAuth(get("/orders/1", nil), p.token(t, userClaims("alice", "aud", "other")))
		}, false, policies.ReasonDeniedTokenAudience, 403, "Audiences in Jwt are not allowed"},
		{"a token of another issuer (and no JWT-SVID): 401", func() *authv3.CheckRequest {
			return withAuth(get("/orders/1", nil), p.token(t, userClaims("alice", "iss", "https://evil.example")))
		}, false, policies.ReasonDeniedToken, 401, "Jwt issuer is not configured"},
		{"a JWT-SVID where the RequestAuthentication reads tokens is left to meshguard's JWT-SVID path", func() *authv3.CheckRequest {
			return withAuth(get("/api/items", nil), mustJWT(t, e.ca, idBatch, []string{audience}, time.Minute))
		}, true, policies.ReasonAllowedByPolicy, 0, ""},
		{"an invalid token on a path that needs none is still refused", func() *authv3.CheckRequest {
			return withPrincipal(withAuth(get("/api/items", nil), p.token(t, userClaims("alice", "exp", now-300))), idFrontend.String())
		}, false, policies.ReasonDeniedToken, 401, "Jwt is expired"},
		{"a forged payload header without a token is removed, the peer allowed", func() *authv3.CheckRequest {
			return withPrincipal(get("/api/items", map[string]string{"x-jwt-payload": "forged"}), idFrontend.String())
		}, true, policies.ReasonAllowedByPolicy, 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := e.check(t, tt.req())
			md := resp.GetDynamicMetadata().GetFields()
			if got := policies.Reason(md["reason"].GetStringValue()); got != tt.reason {
				t.Fatalf("reason %q, want %q (%v)", got, tt.reason, resp.GetDeniedResponse().GetBody())
			}
			if tt.allowed {
				if resp.GetOkResponse() == nil {
					t.Fatalf("denied: %v", resp.GetDeniedResponse())
				}
				return
			}
			d := resp.GetDeniedResponse()
			if d == nil || int(d.GetStatus().GetCode()) != tt.status {
				t.Fatalf("status %v, want %d", d.GetStatus(), tt.status)
			}
			if tt.detail != "" && !strings.Contains(d.GetBody(), tt.detail) {
				t.Errorf("body %q, want %q", d.GetBody(), tt.detail)
			}
			var challenge string
			for _, h := range d.GetHeaders() {
				if h.GetHeader().GetKey() == "www-authenticate" {
					challenge = h.GetHeader().GetValue()
				}
			}
			if tok := tt.reason == policies.ReasonDeniedToken || tt.reason == policies.ReasonDeniedTokenAudience; tok != (challenge != "") ||
				(tok && challenge != `Bearer realm="http://api.shop.svc.cluster.local:8080`+strings.Split(tt.req().GetAttributes().GetRequest().GetHttp().GetPath(), "?")[0]+`", error="invalid_token"`) {
				t.Errorf("www-authenticate %q", challenge)
			}
		})
	}

	t.Run("outputs on the upstream request", func(t *testing.T) {
		tok := p.token(t, userClaims("alice"))
		resp := e.check(t, withAuth(get("/orders/1", map[string]string{"x-jwt-payload": "forged", "x-user": "root"}), tok))
		ok := resp.GetOkResponse()
		if ok == nil {
			t.Fatalf("denied: %v", resp.GetDeniedResponse())
		}
		set := map[string]string{}
		for _, h := range ok.GetHeaders() {
			set[h.GetHeader().GetKey()] = h.GetHeader().GetValue()
		}
		if set["x-user"] != "alice" || set["x-jwt-payload"] != strings.Split(tok, ".")[1] {
			t.Errorf("headers set: %v", set)
		}
		if !contains(ok.GetHeadersToRemove(), "authorization") || contains(ok.GetHeadersToRemove(), "x-user") {
			t.Errorf("headers removed: %v (the token, not forwarded; never a header the server sets)", ok.GetHeadersToRemove())
		}
	})

	t.Run("a rotated key is fetched on its first token", func(t *testing.T) {
		hits := p.hits.Load()
		p.rotate(t) // the provider signs with a new ES256 key from now on
		resp := e.check(t, withAuth(get("/orders/1", nil), p.token(t, userClaims("alice"))))
		if resp.GetOkResponse() == nil {
			t.Fatalf("denied: %v", resp.GetDeniedResponse())
		}
		if p.hits.Load() <= hits {
			t.Error("the key set was not fetched again")
		}
	})

	t.Run("a JWT-SVID beside the user's token stays meshguard's", func(t *testing.T) {
		e2 := newEnv(t, func(_ *Config, ic *identityConfig) { ic.JWTHeader = "x-svid" })
		e2.load(t, "v1", requestAuthSet(p.srv.URL+"/keys"))
		svid := mustJWT(t, e2.ca, idBatch, []string{audience}, time.Minute)
		req := withAuth(get("/api/items", map[string]string{"x-svid": svid}), p.token(t, userClaims("alice")))
		resp := e2.check(t, req)
		if resp.GetOkResponse() == nil {
			t.Fatalf("the batch-jwt IdentityPolicy reads the JWT-SVID: %v", resp.GetDeniedResponse())
		}
		if got := okHeader(resp, "x-meshguard-source-id"); got != idBatch.String() {
			t.Errorf("caller %q, want the JWT-SVID's subject", got)
		}
	})
}

// TestRequestAuthenticationGateway: a RequestAuthentication attached to a
// Gateway by targetRefs applies to the gateway only.
func TestRequestAuthenticationGateway(t *testing.T) {
	p := newIDP(t)
	e := newEnv(t)
	set := requestAuthSet(p.srv.URL + "/keys")
	set.RequestAuthentications = append(set.RequestAuthentications, policies.RequestAuthentication{
		APIVersion: policies.APIVersionIstioV1, Kind: policies.KindRequestAuthentication,
		Metadata: policies.ObjectMeta{Name: "edge", Namespace: "gw"},
		Spec: policies.RequestAuthenticationSpec{
			TargetRefs: []policies.PolicyTargetReference{{Group: "gateway.networking.k8s.io", Kind: "Gateway", Name: "edge"}},
			JWTRules:   []policies.JWTRule{{Issuer: endUserIssuer, JWKSURI: p.srv.URL + "/keys", FromHeaders: []policies.JWTHeader{{Name: "x-token"}}}},
		},
	})
	set.AuthorizationPolicies = append(set.AuthorizationPolicies, policies.AuthorizationPolicy{
		APIVersion: policies.APIVersionIstioV1, Kind: policies.KindAuthorizationPolicy,
		Metadata: policies.ObjectMeta{Name: "edge", Namespace: "gw"},
		Spec: policies.AuthorizationPolicySpec{Rules: []policies.Rule{{
			From: []policies.RuleFrom{{Source: policies.Source{RequestPrincipals: []string{"*"}}}},
		}}},
	})
	e.load(t, "v1", set)
	gateway := func(h map[string]string) *authv3.CheckRequest {
		r := get("/", h)
		r.Attributes.Destination.Principal = "spiffe://prod.example/ns/gw/sa/edge"
		r.Attributes.Destination.Labels = map[string]string{"gateway.networking.k8s.io/gateway-name": "edge"}
		return r
	}
	for _, tc := range []struct {
		name   string
		req    *authv3.CheckRequest
		reason policies.Reason
	}{
		{"a user's token in the gateway's header", gateway(map[string]string{"x-token": p.token(t, userClaims("alice"))}), policies.ReasonAllowedByPolicy},
		{"no token at the gateway", gateway(nil), policies.ReasonDeniedNoMatch},
		{"a bad token at the gateway", gateway(map[string]string{"x-token": "garbage"}), policies.ReasonDeniedToken},
		{"the gateway's header means nothing elsewhere", withPrincipal(get("/api/items", map[string]string{"x-token": "garbage"}), idFrontend.String()), policies.ReasonAllowedByPolicy},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := e.check(t, tc.req)
			if got := policies.Reason(resp.GetDynamicMetadata().GetFields()["reason"].GetStringValue()); got != tc.reason {
				t.Fatalf("reason %q, want %q", got, tc.reason)
			}
		})
	}
}

// TestRequestAuthenticationHTTPMode: the same over Envoy's HTTP ext_authz
// mode: the status is Envoy's, the outputs are response headers.
func TestRequestAuthenticationHTTPMode(t *testing.T) {
	p := newIDP(t)
	e := newEnv(t)
	e.load(t, "v1", requestAuthSet(p.srv.URL+"/keys"))
	do := func(path, tok string) *http.Response {
		t.Helper()
		req, err := http.NewRequest(http.MethodGet, e.httpURL+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("authorization", "Bearer "+tok)
		req.Header.Set("x-meshguard-ctx-meshguard.workload", idAPI.String())
		resp, err := e.http.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	resp := do("/orders/1", p.token(t, userClaims("alice")))
	if resp.StatusCode != 200 || resp.Header.Get("x-user") != "alice" || !strings.Contains(resp.Header.Get(HeaderAuthRemove), "authorization") {
		t.Errorf("valid token: %d %v", resp.StatusCode, resp.Header)
	}
	resp = do("/orders/1", p.token(t, userClaims("alice", "exp", time.Now().Unix()-300)))
	if resp.StatusCode != 401 || !strings.HasPrefix(resp.Header.Get("www-authenticate"), "Bearer realm=") {
		t.Errorf("expired token: %d %v", resp.StatusCode, resp.Header)
	}
}

func withRequestAuth(t *testing.T, cfg requestauth.Config) envOpt {
	return func(c *Config, _ *identityConfig) {
		a, err := requestauth.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(a.Close)
		c.RequestAuth = a
	}
}

func okHeader(resp *authv3.CheckResponse, k string) string {
	for _, h := range resp.GetOkResponse().GetHeaders() {
		if h.GetHeader().GetKey() == k {
			return h.GetHeader().GetValue()
		}
	}
	return ""
}

func contains(list []string, v string) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

var _ = spiffeid.ID{}
