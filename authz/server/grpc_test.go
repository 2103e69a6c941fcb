package server

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/meshguard/meshguard/authz/identity"
	"github.com/meshguard/meshguard/internal/testbed/ca"
	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/wire"
)

// envoyRequest builds a CheckRequest the way Envoy's ext_authz filter does:
// pseudo-headers inside headers, lowercase keys, the query inside path,
// destination.principal the sidecar's own SPIFFE ID.
func envoyRequest(method, path string, headers map[string]string) *authv3.CheckRequest {
	h := map[string]string{
		":authority":        "api.shop.svc.cluster.local:8080",
		":method":           method,
		":path":             path,
		":scheme":           "http",
		"x-request-id":      "5e6a1c2b-1f0e-4d1a-9a1e-0d3c8b1f2a77",
		"x-forwarded-proto": "http",
		"user-agent":        "curl/8.5.0",
		"accept":            "*/*",
	}
	for k, v := range headers {
		h[k] = v
	}
	sock := func(ip string, port uint32) *corev3.Address {
		return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: ip, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}}
	}
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source:      &authv3.AttributeContext_Peer{Address: sock("10.0.3.7", 41234)},
		Destination: &authv3.AttributeContext_Peer{Address: sock("10.0.9.2", 8080), Principal: idAPI.String()},
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Id: h["x-request-id"], Method: method, Path: path, Host: h[":authority"],
			Scheme: "http", Protocol: "HTTP/1.1", Headers: h,
		}},
		TlsSession: &authv3.AttributeContext_TLSSession{Sni: "outbound_.8080_._.api.shop.svc.cluster.local"},
	}}
}

func withPrincipal(r *authv3.CheckRequest, p string) *authv3.CheckRequest {
	r.Attributes.Source.Principal = p
	return r
}

func withCert(r *authv3.CheckRequest, c string) *authv3.CheckRequest {
	r.Attributes.Source.Certificate = c
	return r
}

func withRoute(r *authv3.CheckRequest, route string) *authv3.CheckRequest {
	r.Attributes.ContextExtensions = map[string]string{wire.ContextRoute: route}
	return r
}

// unsignedToken builds a JWT with the given header and claims and signature.
func unsignedToken(header, claims map[string]any, sig string) string {
	enc := func(v any) string {
		b, _ := json.Marshal(v)
		return base64.RawURLEncoding.EncodeToString(b)
	}
	return enc(header) + "." + enc(claims) + "." + sig
}

type identityCase struct {
	name       string
	req        func(t *testing.T, e *env) *authv3.CheckRequest
	allowed    bool
	reason     policies.Reason
	source     spiffeid.ID // expected x-meshguard-source-id (zero: none)
	removes    []string    // expected in headers_to_remove
	keeps      []string    // expected not in headers_to_remove
	failure    string      // identity failure kind counted
	statusCode int         // HTTP status of a deny (default 403)
}

func mustSVID(t *testing.T, c *ca.CA, id spiffeid.ID, opts ...ca.X509Option) string {
	t.Helper()
	s, err := c.IssueX509SVID(id, time.Hour, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return certParam(s)
}

func mustJWT(t *testing.T, c *ca.CA, id spiffeid.ID, aud []string, ttl time.Duration, opts ...ca.JWTOption) string {
	t.Helper()
	tok, err := c.IssueJWTSVID(id, aud, ttl, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func get(path string, h map[string]string) *authv3.CheckRequest { return envoyRequest("GET", path, h) }

func identityCases() []identityCase {
	now := time.Now()
	return []identityCase{
		{
			name: "principal allowed, spoofed meshguard headers removed",
			req: func(t *testing.T, e *env) *authv3.CheckRequest {
				return withPrincipal(get("/api/items?id=1", map[string]string{"x-meshguard-source-id": idAdmin.String()}), idFrontend.String())
			},
			allowed: true, reason: policies.ReasonAllowedByPolicy, source: idFrontend, removes: []string{"x-meshguard-source-id"},
		},
		{
			name: "principal not allowed to POST",
			req: func(t *testing.T, e *env) *authv3.CheckRequest {
				return withPrincipal(envoyRequest("POST", "/api/items", nil), idFrontend.String())
			},
			reason: policies.ReasonDeniedNoMatch, source: idFrontend,
		},
		{
			name: "principal without URI SAN (DNS name) is not an identity",
			req: func(t *testing.T, e *env) *authv3.CheckRequest {
				return withPrincipal(get("/api/items", nil), "frontend.web.svc.cluster.local")
			},
			reason:  policies.ReasonDeniedNoMatch,
			failure: "not_spiffe",
		},
		{
			name: "principal of another trust domain",
			req: func(t *testing.T, e *env) *authv3.CheckRequest {
				return withPrincipal(get("/api/items", nil), idEvil.String())
			},
			reason: policies.ReasonDeniedIdentity, failure: "principal",
		},
		{
			name: "oversized principal",
			req: func(t *testing.T, e *env) *authv3.CheckRequest {
				return withPrincipal(get("/api/items", nil), "spiffe://prod.example/"+strings.Repeat("a", 3000))
			},
			reason: policies.ReasonDeniedIdentity, failure: "principal",
		},
		{
			name: "malformed principal",
			req: func(t *testing.T, e *env) *authv3.CheckRequest {
				return withPrincipal(get("/api/items", nil), "spiffe://prod.example/ns/../web/sa/frontend")
			},
			reason: policies.ReasonDeniedIdentity, failure: "principal",
		},
		{
			name:   "principal with invalid UTF-8 is rejected by the transport",
			req:    nil, // gRPC refuses invalid UTF-8 in string fields: covered in HTTP mode and the fuzz target
			reason: policies.ReasonDeniedIdentity,
		},
		{
			name: "verified certificate",
			req: func(t *testing.T, e *env) *authv3.CheckRequest {
				return withCert(get("/api/items", nil), mustSVID(t, e.ca, idBatch))
			},
			allowed: true, reason: policies.ReasonAllowedByPolicy, source: idBatch,
		},
		{
			name: "certificate and matching principal",
			req: func(t *testing.T, e *env) *authv3.CheckRequest {
				return withCert(withPrincipal(get("/api/items", nil), idBatch.String()), mustSVID(t, e.ca, idBatch))
			},
			allowed: true, reason: policies.ReasonAllowedByPolicy, source: idBatch,
		},
		{
			name: "certificate disagrees with principal",
			req: func(t *testing.T, e *env) *authv3.CheckRequest {
				return withCert(withPrincipal(get("/api/items", nil), idFrontend.String()), mustSVID(t, e.ca, idAdmin))
			},
			reason: policies.ReasonDeniedIdentity, failure: "mismatch",
		},
		{
			name: "certificate with two URI SANs",
			req: func(t *testing.T, e *env) *authv3.CheckRequest {
				return withCert(get("/api/items", nil), mustSVID(t, e.ca, idBatch, ca.WithExtraURIs(idAdmin.URL())))
			},
			reason: policies.ReasonDeniedIdentity, failure: "certificate",
		},
		{
			name: "certificate with DNS SANs only is ignored, not denied",
			req: func(t *testing.T, e *env) *authv3.CheckRequest {
				return withCert(get("/api/items", nil), mustSVID(t, e.ca, idBatch, ca.WithoutURIs(), ca.WithDNSNames("batch.example")))
			},
			reason: policies.ReasonDeniedNoMatch, failure: "not_spiffe",
		},
		{
			name: "certificate with DNS SANs only and its DNS principal, allowed by a request principal",
			req: func(t *testing.T, e *env) *authv3.CheckRequest {
				return withCert(withPrincipal(get("/api/items", map[string]string{"authorization": "Bearer " + mustJWT(t, e.ca, idBatch, []string{audience}, time.Minute)}), "batch.example"),
					mustSVID(t, e.ca, idBatch, ca.WithoutURIs(), ca.WithDNSNames("batch.example")))
			},
			allowed: true, reason: policies.ReasonAllowedByPolicy, source: idBatch, failure: "not_spiffe",
		},
		{
			name: "certificate of a trust domain's own ID (no path)",
			req: func(t *testing.T, e *env) *authv3.CheckRequest {
				return withCert(get("/api/items", nil), mustSVID(t, e.ca, spiffeid.RequireFromString("spiffe://prod.example")))
			},
			reason: policies.ReasonDeniedIdentity, failure: "certificate",
		},
		{
			name: "principal of a trust domain's own ID (no path)",
			req: func(t *testing.T, e *env) *authv3.CheckRequest {
				return withPrincipal(get("/api/items", nil), "spiffe://prod.example")
			},
			reason: policies.ReasonDeniedIdentity, failure: "principal",
		},
		{
			name: "JWT-SVID of a trust domain's own ID (no path)",
			req: func(t *testing.T, e *env) *authv3.CheckRequest {
				return get("/api/items", map[string]string{"authorization": "Bearer " + mustJWT(t, e.ca, spiffeid.RequireFromString("spiffe://prod.example"), []string{audience}, time.Minute)})
			},
			reason: policies.ReasonDeniedJWT, failure: "jwt",
		},
		{
			name: "certificate from another trust domain's CA",
			req: func(t *testing.T, e *env) *authv3.CheckRequest {
				return withCert(get("/api/items", nil), mustSVID(t, e.evil, idEvil))
			},
			reason: policies.ReasonDeniedIdentity, failure: "certificate",
		},
		{
			name: "certificate for our trust domain signed by a foreign CA",
			req: func(t *testing.T, e *env) *authv3.CheckRequest {
				return withCert(get("/api/items", nil), mustSVID(t, e.evil, idBatch))
			},
			reason: policies.ReasonDeniedIdentity, failure: "certificate",
		},
		{
			name: "CA certificate as leaf",
			req: func(t *testing.T, e *env) *authv3.CheckRequest {
				return withCert(get("/api/items", nil), mustSVID(t, e.ca, idBatch, ca.WithIsCA()))
			},
			reason: policies.ReasonDeniedIdentity, failure: "certificate",
		},
		{
			name: "leaf without digitalSignature",
			req: func(t *testing.T, e *env) *authv3.CheckRequest {
				return withCert(get("/api/items", nil), mustSVID(t, e.ca, idBatch, ca.WithKeyUsage(x509.KeyUsageKeyEncipherment)))
			},
			reason: policies.ReasonDeniedIdentity, failure: "certificate",
		},
		{
			name: "leaf with serverAuth EKU only",
			req: func(t *testing.T, e *env) *authv3.CheckRequest {
				return withCert(get("/api/items", nil), mustSVID(t, e.ca, idBatch, ca.WithExtKeyUsage(x509.ExtKeyUsageServerAuth)))
			},
			reason: policies.ReasonDeniedIdentity, failure: "certificate",
		},
		{
			name: "expired certificate",
			req: func(t *testing.T, e *env) *authv3.CheckRequest {
				return withCert(get("/api/items", nil), mustSVID(t, e.ca, idBatch, ca.WithValidity(now.Add(-2*time.Hour), now.Add(-time.Hour))))
			},
			reason: policies.ReasonDeniedIdentity, failure: "certificate",
		},
		{
			name: "certificate that is not PEM",
			req: func(t *testing.T, e *env) *authv3.CheckRequest {
				return withCert(get("/api/items", nil), url.PathEscape("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))
			},
			reason: policies.ReasonDeniedIdentity, failure: "certificate",
		},
		{
			name: "spoofed XFCC from a peer that is not a trusted hop is ignored and stripped",
			req: func(t *testing.T, e *env) *authv3.CheckRequest {
				return withPrincipal(envoyRequest("DELETE", "/api/items", map[string]string{
					"x-forwarded-client-cert": `By=` + idFrontend.String() + `;URI=` + idAdmin.String(),
				}), idFrontend.String())
			},
			reason: policies.ReasonDeniedNoMatch, source: idFrontend, failure: "xfcc_ignored",
		},
		{
			name: "spoofed XFCC is stripped on allow",
			req: func(t *testing.T, e *env) *authv3.CheckRequest {
				return withPrincipal(get("/api/items", map[string]string{"x-forwarded-client-cert": `URI=` + idAdmin.String()}), idFrontend.String())
			},
			allowed: true, reason: policies.ReasonAllowedByPolicy, source: idFrontend, removes: []string{"x-forwarded-client-cert"},
		},
		{
			name: "XFCC the local sidecar appended for its verified peer stays for the application",
			req: func(t *testing.T, e *env) *authv3.CheckRequest {
				return withPrincipal(get("/api/items", map[string]string{
					"x-forwarded-client-cert": `By=` + idAPI.String() + `;Hash=abcd;URI=` + idFrontend.String(),
				}), idFrontend.String())
			},
			allowed: true, reason: policies.ReasonAllowedByPolicy, source: idFrontend, keeps: []string{"x-forwarded-client-cert"},
		},
		{
			name: "XFCC whose last element is the local sidecar's but names another peer is stripped",
			req: func(t *testing.T, e *env) *authv3.CheckRequest {
				return withPrincipal(get("/api/items", map[string]string{
					"x-forwarded-client-cert": `By=` + idAPI.String() + `;URI=` + idAdmin.String(),
				}), idFrontend.String())
			},
			allowed: true, reason: policies.ReasonAllowedByPolicy, source: idFrontend, failure: "xfcc_ignored", removes: []string{"x-forwarded-client-cert"},
		},
		{
			name: "XFCC from a trusted hop names the caller for meshguard's kinds",
			req: func(t *testing.T, e *env) *authv3.CheckRequest {
				return withPrincipal(envoyRequest("DELETE", "/api/items", map[string]string{
					"x-forwarded-client-cert": `By=spiffe://other/x;URI=spiffe://prod.example/ns/web/sa/frontend,By=` + idGateway.String() + `;Hash=abcd;Subject="CN=admin,O=ops";URI=` + idAdmin.String(),
				}), idGateway.String())
			},
			allowed: true, reason: policies.ReasonAllowedByPolicy, source: idAdmin,
		},
		{
			name: "XFCC from a trusted hop never replaces the peer in Istio's principals",
			req: func(t *testing.T, e *env) *authv3.CheckRequest {
				return withPrincipal(get("/api/items", map[string]string{"x-forwarded-client-cert": `By=` + idGateway.String() + `;URI=` + idFrontend.String()}), idGateway.String())
			},
			reason: policies.ReasonDeniedNoMatch, source: idFrontend,
		},
		{
			name: "XFCC from a trusted hop with a By that is not the hop",
			req: func(t *testing.T, e *env) *authv3.CheckRequest {
				return withPrincipal(get("/api/items", map[string]string{"x-forwarded-client-cert": `By=` + idFrontend.String() + `;URI=` + idAdmin.String()}), idGateway.String())
			},
			reason: policies.ReasonDeniedIdentity, failure: "xfcc",
		},
		{
			name: "malformed XFCC from a trusted hop",
			req: func(t *testing.T, e *env) *authv3.CheckRequest {
				return withPrincipal(get("/api/items", map[string]string{"x-forwarded-client-cert": `By=` + idGateway.String() + `;URI="` + idAdmin.String()}), idGateway.String())
			},
			reason: policies.ReasonDeniedIdentity, failure: "xfcc",
		},
		{
			name: "XFCC from a trusted hop naming another trust domain",
			req: func(t *testing.T, e *env) *authv3.CheckRequest {
				return withPrincipal(get("/api/items", map[string]string{"x-forwarded-client-cert": `By=` + idGateway.String() + `;URI=` + idEvil.String()}), idGateway.String())
			},
			reason: policies.ReasonDeniedIdentity, failure: "xfcc",
		},
		{
			name: "XFCC with two URIs from a trusted hop",
			req: func(t *testing.T, e *env) *authv3.CheckRequest {
				return withPrincipal(get("/api/items", map[string]string{"x-forwarded-client-cert": `By=` + idGateway.String() + `;URI=` + idAdmin.String() + `;URI=` + idFrontend.String()}), idGateway.String())
			},
			reason: policies.ReasonDeniedIdentity, failure: "xfcc",
		},
		{
			name: "valid JWT-SVID without mTLS is a request principal",
			req: func(t *testing.T, e *env) *authv3.CheckRequest {
				return get("/api/items", map[string]string{"authorization": "Bearer " + mustJWT(t, e.ca, idBatch, []string{audience}, 5*time.Minute)})
			},
			allowed: true, reason: policies.ReasonAllowedByPolicy, source: idBatch,
		},
		{
			name: "valid JWT-SVID without mTLS is not a peer for Istio's principals",
			req: func(t *testing.T, e *env) *authv3.CheckRequest {
				return get("/api/items", map[string]string{"authorization": "Bearer " + mustJWT(t, e.ca, idFrontend, []string{audience}, 5*time.Minute)})
			},
			reason: policies.ReasonDeniedNoMatch, source: idFrontend,
		},
		{
			name: "JWT alg none",
			req: func(t *testing.T, e *env) *authv3.CheckRequest {
				tok := unsignedToken(map[string]any{"alg": "none", "typ": "JWT"}, map[string]any{"sub": idAdmin.String(), "aud": audience, "exp": now.Add(time.Minute).Unix()}, "")
				return get("/api/items", map[string]string{"authorization": "Bearer " + tok})
			},
			reason: policies.ReasonDeniedJWT, failure: "jwt",
		},
		{
			name: "JWT HS256",
			req: func(t *testing.T, e *env) *authv3.CheckRequest {
				tok := unsignedToken(map[string]any{"alg": "HS256", "typ": "JWT", "kid": e.ca.JWTKeyID()}, map[string]any{"sub": idAdmin.String(), "aud": audience, "exp": now.Add(time.Minute).Unix()}, "c2lnbmF0dXJl")
				return get("/api/items", map[string]string{"authorization": "Bearer " + tok})
			},
			reason: policies.ReasonDeniedJWT, failure: "jwt",
		},
		{
			name: "JWT without aud",
			req: func(t *testing.T, e *env) *authv3.CheckRequest {
				return get("/api/items", map[string]string{"authorization": "Bearer " + mustJWT(t, e.ca, idBatch, []string{audience}, time.Minute, ca.WithoutAudience())})
			},
			reason: policies.ReasonDeniedJWT, failure: "jwt",
		},
		{
			name: "JWT with empty aud",
			req: func(t *testing.T, e *env) *authv3.CheckRequest {
				return get("/api/items", map[string]string{"authorization": "Bearer " + mustJWT(t, e.ca, idBatch, []string{}, time.Minute, ca.WithClaim("aud", []string{}))})
			},
			reason: policies.ReasonDeniedJWT, failure: "jwt",
		},
		{
			name: "JWT for another audience",
			req: func(t *testing.T, e *env) *authv3.CheckRequest {
				return get("/api/items", map[string]string{"authorization": "Bearer " + mustJWT(t, e.ca, idBatch, []string{"someone-else"}, time.Minute)})
			},
			reason: policies.ReasonDeniedJWT, failure: "jwt",
		},
		{
			name: "expired JWT",
			req: func(t *testing.T, e *env) *authv3.CheckRequest {
				return get("/api/items", map[string]string{"authorization": "Bearer " + mustJWT(t, e.ca, idBatch, []string{audience}, -5*time.Minute, ca.WithIssuedAt(now.Add(-10*time.Minute)))})
			},
			reason: policies.ReasonDeniedJWT, failure: "jwt",
		},
		{
			name: "JWT expired within go-jose's leeway but past our skew",
			req: func(t *testing.T, e *env) *authv3.CheckRequest {
				return get("/api/items", map[string]string{"authorization": "Bearer " + mustJWT(t, e.ca, idBatch, []string{audience}, -45*time.Second, ca.WithIssuedAt(now.Add(-5*time.Minute)))})
			},
			reason: policies.ReasonDeniedJWT, failure: "jwt",
		},
		{
			name: "JWT not yet valid",
			req: func(t *testing.T, e *env) *authv3.CheckRequest {
				return get("/api/items", map[string]string{"authorization": "Bearer " + mustJWT(t, e.ca, idBatch, []string{audience}, 10*time.Minute, ca.WithNotBefore(now.Add(5*time.Minute)))})
			},
			reason: policies.ReasonDeniedJWT, failure: "jwt",
		},
		{
			name: "JWT issued in the future",
			req: func(t *testing.T, e *env) *authv3.CheckRequest {
				return get("/api/items", map[string]string{"authorization": "Bearer " + mustJWT(t, e.ca, idBatch, []string{audience}, 10*time.Minute, ca.WithIssuedAt(now.Add(5*time.Minute)))})
			},
			reason: policies.ReasonDeniedJWT, failure: "jwt",
		},
		{
			name: "JWT lifetime above the maximum",
			req: func(t *testing.T, e *env) *authv3.CheckRequest {
				return get("/api/items", map[string]string{"authorization": "Bearer " + mustJWT(t, e.ca, idBatch, []string{audience}, 48*time.Hour)})
			},
			reason: policies.ReasonDeniedJWT, failure: "jwt",
		},
		{
			name: "JWT with a kid from another trust domain",
			req: func(t *testing.T, e *env) *authv3.CheckRequest {
				// Signed by the evil CA, subject in our trust domain, kid of
				// the evil key: our bundle has no such key for prod.example.
				return get("/api/items", map[string]string{"authorization": "Bearer " + mustJWT(t, e.evil, idAdmin, []string{audience}, time.Minute)})
			},
			reason: policies.ReasonDeniedJWT, failure: "jwt",
		},
		{
			name: "JWT signed by another key under our kid",
			req: func(t *testing.T, e *env) *authv3.CheckRequest {
				return get("/api/items", map[string]string{"authorization": "Bearer " + mustJWT(t, e.evil, idAdmin, []string{audience}, time.Minute, ca.WithKeyID(e.ca.JWTKeyID()))})
			},
			reason: policies.ReasonDeniedJWT, failure: "jwt",
		},
		{
			name: "two bearer tokens comma-joined by Envoy",
			req: func(t *testing.T, e *env) *authv3.CheckRequest {
				tok := mustJWT(t, e.ca, idBatch, []string{audience}, time.Minute)
				return get("/api/items", map[string]string{"authorization": "Bearer " + tok + ",Bearer " + tok})
			},
			reason: policies.ReasonDeniedJWT, failure: "jwt",
		},
		{
			name: "Basic authorization is not a JWT-SVID",
			req: func(t *testing.T, e *env) *authv3.CheckRequest {
				return get("/api/items", map[string]string{"authorization": "Basic YWRtaW46YWRtaW4="})
			},
			reason: policies.ReasonDeniedNoMatch,
		},
		{
			name: "huge headers",
			req: func(t *testing.T, e *env) *authv3.CheckRequest {
				return withPrincipal(get("/api/items", map[string]string{"x-big": strings.Repeat("a", 300<<10)}), idFrontend.String())
			},
			reason: policies.ReasonDeniedInvalidReq, statusCode: 400,
		},
		{
			name: "huge XFCC from a trusted hop",
			req: func(t *testing.T, e *env) *authv3.CheckRequest {
				return withPrincipal(get("/api/items", map[string]string{"x-forwarded-client-cert": "By=" + idGateway.String() + ";URI=" + idAdmin.String() + strings.Repeat(";DNS=a", 20000)}), idGateway.String())
			},
			reason: policies.ReasonDeniedIdentity, failure: "xfcc",
		},
	}
}

func TestCheckIdentities(t *testing.T) {
	e := newEnv(t)
	e.load(t, "v1", testSet())
	for _, tc := range identityCases() {
		if tc.req == nil {
			continue
		}
		t.Run(tc.name, func(t *testing.T) {
			before := failures(t, e, tc.failure)
			resp := e.check(t, tc.req(t, e))
			assertResponse(t, resp, tc)
			if tc.failure != "" && failures(t, e, tc.failure) <= before {
				t.Errorf("identity failure %q not counted", tc.failure)
			}
		})
	}
}

func assertResponse(t *testing.T, resp *authv3.CheckResponse, tc identityCase) {
	t.Helper()
	md := resp.GetDynamicMetadata().GetFields()
	if got := policies.Reason(md["reason"].GetStringValue()); got != tc.reason {
		t.Errorf("reason = %q, want %q", got, tc.reason)
	}
	if md["decision_id"].GetStringValue() == "" {
		t.Error("no decision_id in dynamic metadata")
	}
	if _, ok := md["mode"]; !ok {
		t.Error("no mode in dynamic metadata")
	}
	ok := resp.GetOkResponse()
	if !tc.allowed {
		if resp.GetStatus().GetCode() != int32(codes.PermissionDenied) || ok != nil {
			t.Fatalf("want a deny, got status %v ok=%v", resp.GetStatus(), ok)
		}
		d := resp.GetDeniedResponse()
		want := tc.statusCode
		if want == 0 {
			want = 403
		}
		if int(d.GetStatus().GetCode()) != want {
			t.Errorf("HTTP status = %d, want %d", d.GetStatus().GetCode(), want)
		}
		var body denyBody
		if err := json.Unmarshal([]byte(d.GetBody()), &body); err != nil {
			t.Fatalf("deny body %q: %v", d.GetBody(), err)
		}
		if body.Reason != tc.reason || body.DecisionID != md["decision_id"].GetStringValue() {
			t.Errorf("deny body %+v does not carry reason %q and the decision id", body, tc.reason)
		}
		if headerValue(d.GetHeaders(), wire.HeaderReason) != string(tc.reason) {
			t.Errorf("x-meshguard-reason = %q", headerValue(d.GetHeaders(), wire.HeaderReason))
		}
		return
	}
	if resp.GetStatus().GetCode() != int32(codes.OK) || ok == nil {
		t.Fatalf("want OK, got status %v denied=%v", resp.GetStatus(), resp.GetDeniedResponse())
	}
	if got := headerValue(ok.GetHeaders(), wire.HeaderSourceID); got != idOrEmpty(tc.source) {
		t.Errorf("x-meshguard-source-id = %q, want %q", got, idOrEmpty(tc.source))
	}
	if headerValue(ok.GetHeaders(), wire.HeaderDecisionID) == "" {
		t.Error("no decision id header")
	}
	for _, h := range tc.keeps {
		if slices.Contains(ok.GetHeadersToRemove(), h) {
			t.Errorf("headers_to_remove %v has %q", ok.GetHeadersToRemove(), h)
		}
	}
	for _, h := range tc.removes {
		found := false
		for _, r := range ok.GetHeadersToRemove() {
			found = found || r == h
		}
		if !found {
			t.Errorf("headers_to_remove %v lacks %q", ok.GetHeadersToRemove(), h)
		}
	}
}

func idOrEmpty(id spiffeid.ID) string {
	if id.IsZero() {
		return ""
	}
	return id.String()
}

func headerValue(hs []*corev3.HeaderValueOption, name string) string {
	for _, h := range hs {
		if h.GetHeader().GetKey() == name {
			return h.GetHeader().GetValue()
		}
	}
	return ""
}

func failures(t *testing.T, e *env, kind string) float64 {
	t.Helper()
	if kind == "" {
		return 0
	}
	mfs, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "meshguard_authz_identity_failures_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "kind" && l.GetValue() == kind {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

func TestCheckModesAndRoutes(t *testing.T) {
	e := newEnv(t)
	e.load(t, "v1", testSet())

	// Dry-run route: the deny becomes an allow that says it would deny.
	resp := e.check(t, withRoute(withPrincipal(envoyRequest("DELETE", "/api/cart", nil), idFrontend.String()), "checkout"))
	if resp.GetOkResponse() == nil {
		t.Fatalf("dry-run route denied: %v", resp.GetDeniedResponse())
	}
	md := resp.GetDynamicMetadata().GetFields()
	if md["mode"].GetStringValue() != "dry-run" || !md["would_deny"].GetBoolValue() {
		t.Errorf("dry-run metadata = %v", md)
	}
	if !strings.Contains(e.decisionLog(`"would_deny":true`), `"would_deny":true`) {
		t.Errorf("decision log lacks the would-deny:\n%s", e.decisionLog())
	}

	// AUDIT marks the decision without changing it.
	resp = e.check(t, withPrincipal(get("/api/audited", nil), idFrontend.String()))
	md = resp.GetDynamicMetadata().GetFields()
	if resp.GetOkResponse() == nil || !md["audit"].GetBoolValue() || !strings.Contains(md["audit_policy"].GetStringValue(), "api-audit") {
		t.Errorf("audited request: ok=%v metadata=%v", resp.GetOkResponse() != nil, md)
	}
	if !strings.Contains(e.decisionLog(`"audit":true`), `"audit":true`) {
		t.Errorf("decision log lacks the audit mark")
	}

	// Off route.
	resp = e.check(t, withRoute(envoyRequest("DELETE", "/api/cart", nil), "legacy"))
	if resp.GetOkResponse() == nil || resp.GetDynamicMetadata().GetFields()["reason"].GetStringValue() != string(policies.ReasonAllowedModeOff) {
		t.Errorf("off route: %v", resp)
	}

	// The route header is ignored unless the wasm filter is trusted.
	resp = e.check(t, envoyRequest("DELETE", "/api/cart", map[string]string{wire.HeaderRoute: "legacy"}))
	if resp.GetOkResponse() != nil {
		t.Errorf("client-sent x-meshguard-route was believed")
	}
	e2 := newEnv(t, func(c *Config, _ *identityConfig) { c.Request.TrustRouteHeader = true })
	e2.load(t, "v1", testSet())
	resp = e2.check(t, envoyRequest("DELETE", "/api/cart", map[string]string{wire.HeaderRoute: "legacy"}))
	if resp.GetOkResponse() == nil {
		t.Errorf("trusted x-meshguard-route was not used: %v", resp.GetDeniedResponse())
	}

	// The workload comes from destination.principal: another namespace has
	// no ALLOW policy.
	r := withPrincipal(envoyRequest("DELETE", "/x", nil), idFrontend.String())
	r.Attributes.Destination.Principal = "spiffe://prod.example/ns/other/sa/svc"
	if resp = e.check(t, r); resp.GetDynamicMetadata().GetFields()["reason"].GetStringValue() != string(policies.ReasonAllowedNoPolicy) {
		t.Errorf("destination.principal not used for scoping: %v", resp.GetDynamicMetadata())
	}
	// ... and a context extension overrides it.
	r.Attributes.ContextExtensions = map[string]string{wire.ContextWorkload: idAPI.String()}
	if resp = e.check(t, r); resp.GetOkResponse() != nil {
		t.Errorf("context extension workload not used: %v", resp.GetDynamicMetadata())
	}

	// No target workload at all: denied unless unscoped requests are allowed.
	r = withPrincipal(get("/api/items", nil), idAdmin.String())
	r.Attributes.Destination.Principal = ""
	if resp = e.check(t, r); resp.GetDynamicMetadata().GetFields()["reason"].GetStringValue() != string(policies.ReasonDeniedInvalidReq) {
		t.Errorf("unscoped request: %v", resp.GetDynamicMetadata())
	}
	e3 := newEnv(t, func(c *Config, _ *identityConfig) { c.AllowUnscoped = true })
	e3.load(t, "v1", testSet())
	if resp = e3.check(t, r); resp.GetDynamicMetadata().GetFields()["reason"].GetStringValue() != string(policies.ReasonAllowedNoPolicy) {
		t.Errorf("unscoped request with AllowUnscoped: %v", resp.GetDynamicMetadata())
	}

	// Missing path: invalid request.
	r = envoyRequest("GET", "", nil)
	r.Attributes.Request.Http.Path = ""
	delete(r.Attributes.Request.Http.Headers, ":path")
	if resp = e.check(t, r); resp.GetDynamicMetadata().GetFields()["reason"].GetStringValue() != string(policies.ReasonDeniedInvalidReq) {
		t.Errorf("missing path: %v", resp.GetDynamicMetadata())
	}

	// Decision log: query removed, credentials never written.
	e.check(t, withPrincipal(get("/api/items?token=secret", map[string]string{"authorization": "Basic c2VjcmV0", "cookie": "s=secret", "x-tenant": "t1"}), idFrontend.String()))
	log := e.decisionLog(`"x-tenant":"t1"`)
	if strings.Contains(log, "secret") || strings.Contains(log, "c2VjcmV0") {
		t.Errorf("decision log leaks credentials or the query:\n%s", log)
	}
	if !strings.Contains(log, `"path":"/api/items"`) || !strings.Contains(log, `"x-tenant":"t1"`) {
		t.Errorf("decision log lacks the stripped path or the configured header:\n%s", log)
	}
}

type identityConfig = identity.Config

func TestFailClosed(t *testing.T) {
	t.Run("no policy loaded", func(t *testing.T) {
		e := newEnv(t)
		resp := e.check(t, withPrincipal(get("/api/items", nil), idAdmin.String()))
		assertResponse(t, resp, identityCase{reason: policies.ReasonDeniedNoPolicy})
		hc := healthpb.NewHealthClient(e.conn)
		st, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{Service: authv3.Authorization_ServiceDesc.ServiceName})
		if err != nil || st.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
			t.Errorf("health before load = %v, %v; want NOT_SERVING", st, err)
		}
		e.load(t, "v1", testSet())
		st, err = hc.Check(context.Background(), &healthpb.HealthCheckRequest{Service: authv3.Authorization_ServiceDesc.ServiceName})
		if err != nil || st.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("health after load = %v, %v; want SERVING", st, err)
		}
	})
	t.Run("panic in the engine", func(t *testing.T) {
		e := newEnv(t, withDecide(func(*policies.Attributes) policies.Decision { panic("boom") }))
		e.load(t, "v1", testSet())
		resp := e.check(t, withPrincipal(get("/api/items", nil), idAdmin.String()))
		assertResponse(t, resp, identityCase{reason: policies.ReasonDeniedInternal})
	})
	t.Run("engine answer without a reason", func(t *testing.T) {
		e := newEnv(t, withDecide(func(*policies.Attributes) policies.Decision { return policies.Decision{Allowed: true} }))
		e.load(t, "v1", testSet())
		resp := e.check(t, withPrincipal(get("/api/items", nil), idAdmin.String()))
		assertResponse(t, resp, identityCase{reason: policies.ReasonDeniedInternal})
	})
	t.Run("deadline", func(t *testing.T) {
		e := newEnv(t, func(c *Config, _ *identityConfig) { c.CheckTimeout = 20 * time.Millisecond },
			withDecide(func(a *policies.Attributes) policies.Decision {
				time.Sleep(60 * time.Millisecond)
				return policies.Decision{Allowed: true, Reason: policies.ReasonAllowedByPolicy}
			}))
		e.load(t, "v1", testSet())
		resp := e.check(t, withPrincipal(get("/api/items", nil), idAdmin.String()))
		assertResponse(t, resp, identityCase{reason: policies.ReasonDeniedTimeout})
	})
	t.Run("panic interceptor", func(t *testing.T) {
		e := newEnv(t)
		resp, err := e.srv.recoverInterceptor(context.Background(), &authv3.CheckRequest{}, &grpc.UnaryServerInfo{FullMethod: "/envoy.service.auth.v3.Authorization/Check"},
			func(context.Context, any) (any, error) { panic("boom") })
		if err != nil {
			t.Fatal(err)
		}
		assertResponse(t, resp.(*authv3.CheckResponse), identityCase{reason: policies.ReasonDeniedInternal})
		_, err = e.srv.recoverInterceptor(context.Background(), struct{}{}, &grpc.UnaryServerInfo{FullMethod: "/x/Y"},
			func(context.Context, any) (any, error) { panic("boom") })
		if status.Code(err) != codes.Internal {
			t.Errorf("non-Check panic: %v", err)
		}
	})
}

func TestOnlyConfiguredEnvoysMayCall(t *testing.T) {
	e := newEnv(t)
	e.load(t, "v1", testSet())
	for _, id := range []spiffeid.ID{idFrontend, spiffeid.RequireFromString("spiffe://evil.example/ns/shop/sa/api-envoy")} {
		issuer := e.ca
		if id.TrustDomain().Name() == "evil.example" {
			issuer = e.evil
		}
		svid, err := issuer.IssueX509SVID(id, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		conn, err := grpc.NewClient(e.grpcAddr, grpc.WithTransportCredentials(credentials.NewTLS(
			tlsconfig.MTLSClientConfig(svid, e.bundles, tlsconfig.AuthorizeID(idServer)))))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err = authv3.NewAuthorizationClient(conn).Check(ctx, withPrincipal(get("/api/items", nil), idAdmin.String()))
		cancel()
		_ = conn.Close()
		if err == nil {
			t.Errorf("caller %s was accepted", id)
		}
	}
}
