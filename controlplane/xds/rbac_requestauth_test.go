package xds_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/meshguard/meshguard/controlplane/xds"
	"github.com/meshguard/meshguard/policies"
)

// TestProxylessRequestAuthentication: a proxyless server verifies no
// token, so where a RequestAuthentication applies grpc-go's RBAC, as
// generated and served over xDS, denies a request that carries a token
// where a jwtRule reads one (valid or not: an enforcement point would
// refuse an invalid one), or a header a rule writes; a request without
// one goes on, as through Envoy. Out of the RequestAuthentication's scope
// nothing changes. Each such rule is recorded as an approximation.
func TestProxylessRequestAuthentication(t *testing.T) {
	f := newFixture(t)
	set := setFromYAML(t, `
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: end-users, namespace: ns-0}
spec:
  jwtRules:
  - issuer: https://issuer.example
    jwks: '{"keys":[]}'
    outputPayloadToHeader: x-jwt-payload
  - issuer: https://other.example
    jwks: '{"keys":[]}'
    fromHeaders: [{name: x-token}]
    fromCookies: [session]
    outputClaimToHeaders: [{header: X-Tenant, claim: tenant}]`)
	b, _, err := policies.NewBundle("requestauth", set)
	if err != nil {
		t.Fatal(err)
	}
	eb, err := f.gen.Encode(b)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.srv.Publish(b); err != nil {
		t.Fatal(err)
	}
	f.srv.Wait()
	t.Cleanup(f.stopAll)

	caller := id("spiffe://" + td + "/ns/ns-0/sa/svc-7")
	cases := []struct {
		name    string
		headers []string
		deny    bool // in the RequestAuthentication's scope
	}{
		{"no token", nil, false},
		{"a bearer token", []string{"authorization", "Bearer abc.def.ghi"}, true},
		{"bearer after another scheme", []string{"authorization", "Basic x, Bearer abc"}, true},
		{"another scheme only", []string{"authorization", "Basic dXNlcjpwdw=="}, false},
		{"a token in the rule's own header", []string{"x-token", "abc.def.ghi"}, true},
		{"an empty value of that header", []string{"x-token", ""}, true},
		{"the rule's cookie", []string{"cookie", "theme=dark; session=abc.def.ghi"}, true},
		{"another cookie", []string{"cookie", "mysession=abc"}, false},
		{"a forged payload header", []string{"x-jwt-payload", "eyJzdWIiOiJhZG1pbiJ9"}, true},
		{"a forged claim header", []string{"x-tenant", "acme"}, true},
		{"an unrelated header", []string{"x-request-id", "1"}, false},
	}
	for _, w := range f.mesh.Workloads {
		inScope := w.Namespace == "ns-0"
		_, approx := xds.CompileRBAC(w, w.Inbound[0], eb, time.Now())
		if inScope != (len(approx) == 2) {
			t.Errorf("%s: approximations %q", w.Key, approx)
		}
		conn, err := grpc.NewClient(f.serve(w), grpc.WithTransportCredentials(f.creds(caller)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		for _, tc := range cases {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			ctx = metadata.AppendToOutgoingContext(ctx, tc.headers...)
			err := conn.Invoke(ctx, "/helloworld.Greeter/SayHello", &emptypb.Empty{}, &emptypb.Empty{})
			cancel()
			want := codes.OK
			if inScope && tc.deny {
				want = codes.PermissionDenied
			}
			if got := status.Code(err); got != want {
				t.Errorf("%s, %s: %v, want %v", w.Key, tc.name, err, want)
			}
		}
	}
}
