package main

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	jose "github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	securityv1beta1api "istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	securityv1beta1 "istio.io/client-go/pkg/apis/security/v1beta1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshguard/meshguard/internal/testbed/ca"
	"github.com/meshguard/meshguard/policies"
)

// TestKubeRequestAuthenticationAtTheAuthzServer runs `meshguard
// controlplane --kubernetes` against a real kube-apiserver (envtest) and
// `meshguard authz` subscribed to it over ADS, as a user runs them, and an
// identity provider serving its key set over HTTP. A RequestAuthentication
// created in the cluster makes the authz server validate the provider's
// tokens: a valid one is the request principal an ALLOW names, an invalid
// one is refused with 401; one the API server stores but Istio's
// validation refuses denies every request to the workloads it selects;
// deleted, both are gone. About 8 s (most of it the API server's start).
func TestKubeRequestAuthenticationAtTheAuthzServer(t *testing.T) {
	dir := t.TempDir()
	cfg, kubeconfig := startAPIServer(t, dir)
	createNamespaces(t, cfg, "shop", "meshguard")
	ic := istioclient.NewForConfigOrDie(cfg)
	ctx := context.Background()

	// The identity provider: signs with one RSA key, serves its key set.
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	idp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: "k1", Algorithm: string(jose.RS256), Use: "sig"}}})
	}))
	t.Cleanup(idp.Close)
	const issuer = "https://idp.example"
	sign := func(k *rsa.PrivateKey, sub string) string {
		sg, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: k}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", "k1"))
		if err != nil {
			t.Fatal(err)
		}
		now := time.Now().Unix()
		claims, _ := json.Marshal(map[string]any{"iss": issuer, "sub": sub, "aud": "orders", "iat": now, "exp": now + 600})
		obj, err := sg.Sign(claims)
		if err != nil {
			t.Fatal(err)
		}
		s, _ := obj.CompactSerialize()
		return s
	}
	forger, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	valid, forged := sign(key, "alice"), sign(forger, "alice")

	// What the cluster allows: orders to the provider's users, payments
	// to anyone.
	aps := ic.SecurityV1().AuthorizationPolicies("shop")
	for _, ap := range []*securityv1.AuthorizationPolicy{
		{
			ObjectMeta: metav1.ObjectMeta{Name: "orders-users", Namespace: "shop"},
			Spec: securityv1beta1api.AuthorizationPolicy{
				Selector: &typev1beta1.WorkloadSelector{MatchLabels: map[string]string{"app": "orders"}},
				Rules:    []*securityv1beta1api.Rule{{From: []*securityv1beta1api.Rule_From{{Source: &securityv1beta1api.Source{RequestPrincipals: []string{issuer + "/*"}}}}}},
			},
		},
		{
			ObjectMeta: metav1.ObjectMeta{Name: "payments-open", Namespace: "shop"},
			Spec: securityv1beta1api.AuthorizationPolicy{
				Selector: &typev1beta1.WorkloadSelector{MatchLabels: map[string]string{"app": "payments"}},
				Rules:    []*securityv1beta1api.Rule{{}},
			},
		},
	} {
		if _, err := aps.Create(ctx, ap, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	// The authz server reads the mesh's trust bundle (whose peers it
	// would accept) even without TLS.
	authority, err := ca.New(spiffeid.RequireTrustDomainFromString("cluster.local"))
	if err != nil {
		t.Fatal(err)
	}
	_, _, bundle := writeSVID(t, authority, dir, "authz", spiffeid.RequireFromString("spiffe://cluster.local/ns/meshguard/sa/authz"))
	xdsAddr, authzAddr := freeAddr(t), freeAddr(t)
	runBackground := func(name string, args ...string) {
		cctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() {
			out, err := runCmd(t, cctx, args...)
			if err != nil {
				err = fmt.Errorf("%w\n%s", err, out)
			}
			done <- err
		}()
		t.Cleanup(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("%s: %v", name, err)
				}
			case <-time.After(20 * time.Second):
				t.Errorf("%s did not stop within 20s of cancel", name)
			}
		})
	}
	runBackground("controlplane", "controlplane", "--insecure-plaintext", "--xds-addr", xdsAddr, "--http-addr", freeAddr(t),
		"--metrics-addr", freeAddr(t), "--log-level", "error", "--kubernetes", "--kubeconfig", kubeconfig, "--state-namespace", "meshguard")
	runBackground("authz", "authz", "--insecure-plaintext", "--grpc-addr", authzAddr, "--admin-addr", freeAddr(t),
		"--bundle", "cluster.local="+bundle, "--no-jwt-svid", "--decision-log", "off", "--control-plane", xdsAddr, "--node-id", "authz-kube", "--log-level", "error")
	cc, err := grpc.NewClient(authzAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	authz := authv3.NewAuthorizationClient(cc)

	// check asks for GET / on app's pod with the token (none: "") as the
	// sidecar's ext_authz filter does, and returns the reason, for a
	// denial its HTTP status, and the policy that decided.
	check := func(app, token string) (policies.Reason, int, string) {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		host := app + ".shop.svc.cluster.local"
		headers := map[string]string{":method": "GET", ":path": "/", ":authority": host, ":scheme": "http"}
		if token != "" {
			headers["authorization"] = "Bearer " + token
		}
		addr := func(port uint32) *corev3.Address {
			return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
				Address: "10.0.0.9", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}}
		}
		resp, err := authz.Check(cctx, &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
			Source: &authv3.AttributeContext_Peer{Address: addr(41234), Principal: "spiffe://cluster.local/ns/shop/sa/web"},
			Destination: &authv3.AttributeContext_Peer{Address: addr(8080), Principal: "spiffe://cluster.local/ns/shop/sa/" + app,
				Labels: map[string]string{"app": app}},
			Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
				Method: "GET", Path: "/", Host: host, Scheme: "http", Protocol: "HTTP/1.1", Headers: headers,
			}},
		}})
		if err != nil {
			return policies.Reason("error: " + err.Error()), 0, ""
		}
		md := resp.GetDynamicMetadata().GetFields()
		return policies.Reason(md["reason"].GetStringValue()), int(resp.GetDeniedResponse().GetStatus().GetCode()), md["policy"].GetStringValue()
	}
	type want struct {
		app, token string
		reason     policies.Reason
		status     int
	}
	until := func(what string, wants ...want) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			var bad []string
			for _, w := range wants {
				if r, s, _ := check(w.app, w.token); r != w.reason || s != w.status {
					bad = append(bad, fmt.Sprintf("%s with token %.8q: %s %d, want %s %d", w.app, w.token, r, s, w.reason, w.status))
				}
			}
			if len(bad) == 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: after 30s:\n%s", what, strings.Join(bad, "\n"))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	// No RequestAuthentication: a token is not read; the ALLOW on request
	// principals matches no request.
	until("the cluster's policies served",
		want{"orders", valid, policies.ReasonDeniedNoMatch, 403},
		want{"orders", forged, policies.ReasonDeniedNoMatch, 403},
		want{"payments", valid, policies.ReasonAllowedByPolicy, 0})

	// The provider's RequestAuthentication for the orders pods (v1), and
	// one the API server stores but Istio's validation refuses (an inline
	// key set that is not JSON) for the payments pods (v1beta1).
	if _, err := ic.SecurityV1().RequestAuthentications("shop").Create(ctx, &securityv1.RequestAuthentication{
		ObjectMeta: metav1.ObjectMeta{Name: "idp", Namespace: "shop"},
		Spec: securityv1beta1api.RequestAuthentication{
			Selector: &typev1beta1.WorkloadSelector{MatchLabels: map[string]string{"app": "orders"}},
			JwtRules: []*securityv1beta1api.JWTRule{{Issuer: issuer, Audiences: []string{"orders"}, JwksUri: idp.URL + "/keys"}},
		},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	until("RequestAuthentication created",
		want{"orders", valid, policies.ReasonAllowedByPolicy, 0},
		want{"orders", forged, policies.ReasonDeniedToken, 401},
		want{"orders", "", policies.ReasonDeniedNoMatch, 403})

	if _, err := ic.SecurityV1beta1().RequestAuthentications("shop").Create(ctx, &securityv1beta1.RequestAuthentication{
		ObjectMeta: metav1.ObjectMeta{Name: "broken", Namespace: "shop"},
		Spec: securityv1beta1api.RequestAuthentication{
			Selector: &typev1beta1.WorkloadSelector{MatchLabels: map[string]string{"app": "payments"}},
			JwtRules: []*securityv1beta1api.JWTRule{{Issuer: issuer, Jwks: "not a key set"}},
		},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	until("invalid RequestAuthentication created",
		want{"payments", valid, policies.ReasonDeniedInvalidPolicy, 403},
		want{"payments", "", policies.ReasonDeniedInvalidPolicy, 403},
		want{"orders", valid, policies.ReasonAllowedByPolicy, 0})
	// The denial names the object that caused it.
	if _, _, ref := check("payments", valid); ref != "AuthorizationPolicy/shop/RequestAuthentication.broken" {
		t.Errorf("denied by %q, want the stand-in of the RequestAuthentication broken", ref)
	}

	for _, name := range []string{"idp", "broken"} {
		if err := ic.SecurityV1().RequestAuthentications("shop").Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	until("RequestAuthentications deleted",
		want{"orders", valid, policies.ReasonDeniedNoMatch, 403},
		want{"orders", forged, policies.ReasonDeniedNoMatch, 403},
		want{"payments", valid, policies.ReasonAllowedByPolicy, 0})
}
