package policytest_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/policytest"
	"github.com/meshguard/meshguard/policies/source"
)

const policySrc = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: catalog-read, namespace: shop}
spec:
  selector: {matchLabels: {app: catalog}}
  rules:
  - from:
    - source: {principals: [prod.example/ns/shop/sa/web]}
    to:
    - operation: {methods: [GET]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: shop}
spec:
  action: DENY
  rules:
  - to:
    - operation: {paths: [/admin*]}
`

func snapshot(t *testing.T, src string) *policies.Snapshot {
	t.Helper()
	set, diags := source.Parse("p.yaml", []byte(src))
	if diags.HasErrors() {
		t.Fatalf("policies: %v", diags.Err())
	}
	b, _, err := policies.NewBundle("test", set)
	if err != nil {
		t.Fatal(err)
	}
	s, err := policies.Compile(b)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

const casesSrc = `- name: web reads the catalog
  request:
    source: spiffe://prod.example/ns/shop/sa/web
    method: GET
    path: /v1/books
    target: {namespace: shop, labels: {app: catalog}}
  expect:
    allowed: true
    reason: allowed_by_policy
    policy: AuthorizationPolicy/shop/catalog-read
    rule: "0"
    mode: enforce
- name: admin is denied even to web
  request:
    source: spiffe://prod.example/ns/shop/sa/web
    method: GET
    path: /admin/users
    target: {namespace: shop, labels: {app: catalog}}
  expect: {allowed: false, reason: denied_by_policy, policy: AuthorizationPolicy/shop/deny-admin}
---
- name: a wrong expectation
  request:
    source: spiffe://prod.example/ns/shop/sa/batch
    method: GET
    path: /v1/books
    target: {namespace: shop, labels: {app: catalog}}
  expect: {allowed: true, policy: AuthorizationPolicy/shop/catalog-read, audit: true}
`

func TestRun(t *testing.T) {
	cases, err := policytest.Parse("cases.yaml", []byte(casesSrc))
	if err != nil {
		t.Fatal(err)
	}
	if len(cases) != 3 || cases[0].Line != 1 || cases[1].Line != 13 || cases[2].Line != 21 || cases[2].File != "cases.yaml" {
		t.Fatalf("cases = %+v", cases)
	}
	res := policytest.Run(snapshot(t, policySrc), cases)
	if !res[0].Passed() || !res[1].Passed() {
		t.Fatalf("results: %+v %+v", res[0], res[1])
	}
	want := []string{
		"allowed: got false, want true",
		`policy: got "", want "AuthorizationPolicy/shop/catalog-read"`,
		"audit: got false, want true",
	}
	if res[2].Passed() || strings.Join(res[2].Diffs, "\n") != strings.Join(want, "\n") {
		t.Fatalf("diffs = %q, want %q", res[2].Diffs, want)
	}
}

func TestParseRejects(t *testing.T) {
	tests := []struct {
		name, src, want string
	}{
		{"unknown field", "- name: a\n  request: {methd: GET}\n  expect: {allowed: true}\n", "field methd not found"},
		{"unknown expect field", "- name: a\n  expect: {allow: true}\n", "field allow not found"},
		{"wrong type", "- name: a\n  request: {destinationPort: -1}\n  expect: {allowed: true}\n", "cannot unmarshal"},
		{"malformed source", "- name: a\n  request: {source: spiffe://Prod/ns/x}\n  expect: {allowed: true}\n", `cases.yaml:1: case "a": request.source`},
		{"source without scheme", "- name: a\n  request: {source: prod.example/ns/x/sa/y}\n  expect: {allowed: true}\n", "request.source"},
		{"malformed target id", "- name: a\n  request: {target: {id: 'spiffe://td/a/../b'}}\n  expect: {allowed: true}\n", "request.target.id"},
		{"malformed jwt-svid subject", "- name: a\n  request: {jwt: {subject: web, svid: true}}\n  expect: {allowed: true}\n", "request.jwt.subject"},
		{"jwt-svid subject without a path", "- name: a\n  request: {jwt: {subject: \"spiffe://td\"}}\n  expect: {allowed: true}\n", "names a trust domain"},
		{"peer without a path", "- name: a\n  request: {source: \"spiffe://td\"}\n  expect: {allowed: true}\n", "names a trust domain"},
		{"peer over plaintext", "- name: a\n  request: {source: spiffe://td/a, mtls: false}\n  expect: {allowed: true}\n", "cannot be given with mtls: false"},
		{"forwarded client without a hop", "- name: a\n  request: {forwardedClient: spiffe://td/a}\n  expect: {allowed: true}\n", "needs the trusted hop"},
		{"jwt without subject or issuer", "- name: a\n  request: {jwt: {audiences: [x]}}\n  expect: {allowed: true}\n", "request.jwt needs a subject or an issuer"},
		{"jwtSvid alone", "- name: a\n  request: {jwtSvid: {subject: spiffe://td/a}}\n  expect: {allowed: true}\n", "give that as request.jwt"},
		{"jwtSvid not a SPIFFE ID", "- name: a\n  request: {jwt: {issuer: x, subject: y}, jwtSvid: {subject: bob}}\n  expect: {allowed: true}\n", "request.jwtSvid.subject"},
		{"bad ip", "- name: a\n  request: {sourceIp: 10.0.0.300}\n  expect: {allowed: true}\n", "request.sourceIp"},
		{"duplicate header by case", "- name: a\n  request: {headers: {X-A: b, x-a: c}}\n  expect: {allowed: true}\n", `"x-a" given twice`},
		{"empty expect", "- name: a\n  request: {method: GET}\n", "expect is empty"},
		{"bad mode", "- name: a\n  expect: {mode: shadow}\n", "expect.mode"},
		{"no name", "- request: {method: GET}\n  expect: {allowed: true}\n", "case has no name"},
		{"duplicate names", "- name: a\n  expect: {allowed: true}\n- name: a\n  expect: {allowed: true}\n", "cases.yaml:3: case \"a\" is also at line 1"},
		{"not a list", "name: a\n", "a test file is a list of cases"},
		{"syntax", "- name: [\n", "policytest: cases.yaml"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := policytest.Parse("cases.yaml", []byte(tt.src))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tt.want)
			}
		})
	}
	// every problem is reported, not only the first
	_, err := policytest.Parse("cases.yaml", []byte("- name: a\n  request: {source: x}\n  expect: {allowed: true}\n- name: b\n  request: {remoteIp: y}\n  expect: {allowed: true}\n"))
	if err == nil || !strings.Contains(err.Error(), `case "a"`) || !strings.Contains(err.Error(), `case "b"`) {
		t.Fatalf("err = %v", err)
	}
}

func TestAttributes(t *testing.T) {
	cases, err := policytest.Parse("c.yaml", []byte(`- name: full
  request:
    source: spiffe://prod.example/ns/shop/sa/web
    method: POST
    host: pay.shop.svc:8443
    path: /v1/charge
    headers: {X-Request-Id: abc, x-tenant: "a, b"}
    route: charge
    target: {namespace: pay, id: spiffe://prod.example/ns/pay/sa/api, labels: {app: api}, service: pay}
    jwt:
      subject: spiffe://prod.example/ns/shop/sa/web
      issuer: https://issuer.example
      audiences: [payments]
      claims: {groups: [admins], level: 3, org: {team: pay}}
    sourceIp: 10.1.2.3
    remoteIp: "2001:db8::1"
    destinationPort: 8443
  expect: {allowed: true}
- name: plaintext
  request: {method: GET, path: /}
  expect: {allowed: true}
- name: mtls without a SPIFFE ID
  request: {mtls: true, jwt: {subject: alice, issuer: https://idp.example}}
  expect: {allowed: true}
- name: forwarded by a gateway
  request: {source: spiffe://prod.example/ns/gw/sa/ingress, forwardedClient: spiffe://prod.example/ns/shop/sa/web}
  expect: {allowed: true}
`))
	if err != nil {
		t.Fatal(err)
	}
	a, err := cases[0].Attributes()
	if err != nil {
		t.Fatal(err)
	}
	if a.Peer.String() != "spiffe://prod.example/ns/shop/sa/web" || !a.MTLS || a.Target.ID.Path() != "/ns/pay/sa/api" ||
		a.Target.Labels["app"] != "api" || a.SourceIP.String() != "10.1.2.3" || a.RemoteIP.String() != "2001:db8::1" ||
		a.DestinationPort != 8443 || a.Route != "charge" || a.Host != "pay.shop.svc:8443" {
		t.Fatalf("attributes = %+v", a)
	}
	if v, ok := a.Headers.Get("x-request-id"); !ok || v != "abc" {
		t.Errorf("header lookup by lower-case name: %q %v", v, ok)
	}
	j := a.JWT
	if j.Principal != "https://issuer.example/spiffe://prod.example/ns/shop/sa/web" || j.Audiences[0] != "payments" {
		t.Errorf("jwt = %+v", j)
	}
	if lvl, ok := j.Claims["level"].(float64); !ok || lvl != 3 {
		t.Errorf("numeric claim = %#v, want float64 as from JSON", j.Claims["level"])
	}
	if g, ok := j.Claims["groups"].([]any); !ok || g[0] != "admins" {
		t.Errorf("list claim = %#v", j.Claims["groups"])
	}
	if team := j.Claims["org"].(map[string]any)["team"]; team != "pay" {
		t.Errorf("nested claim = %#v", team)
	}
	if a, _ := cases[1].Attributes(); a.MTLS || !a.Peer.IsZero() || a.Headers != nil {
		t.Errorf("unauthenticated = %+v", a)
	}
	if a, _ := cases[2].Attributes(); !a.MTLS || !a.Peer.IsZero() || !a.JWT.SVID.IsZero() || a.JWT.Principal != "https://idp.example/alice" {
		t.Errorf("an end-user token over mTLS without a SPIFFE ID = %+v %+v", a, a.JWT)
	}
	if a, _ := cases[3].Attributes(); a.Peer.Path() != "/ns/gw/sa/ingress" || a.Caller().Path() != "/ns/shop/sa/web" {
		t.Errorf("forwarded = %+v", a)
	}
	if j.SVID.String() != "spiffe://prod.example/ns/shop/sa/web" || a.Caller() != a.Peer {
		t.Errorf("a JWT-SVID beside a peer: svid %v, caller %v", j.SVID, a.Caller())
	}
}

func TestLoadDirectory(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string]string{
		"b.yaml":      "- name: b\n  expect: {allowed: true}\n",
		"sub/a.yml":   "- name: a\n  expect: {allowed: false}\n",
		"notes.md":    "not yaml",
		".git/x.yaml": "garbage: [",
	} {
		p := filepath.Join(dir, name)
		_ = os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cases, err := policytest.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(cases) != 2 || cases[0].Name != "b" || cases[1].Name != "a" || cases[1].File != filepath.Join(dir, "sub", "a.yml") {
		t.Fatalf("cases = %+v", cases)
	}
	one, err := policytest.Load(filepath.Join(dir, "b.yaml"))
	if err != nil || len(one) != 1 || one[0].File != filepath.Join(dir, "b.yaml") {
		t.Fatalf("single file: %v %+v", err, one)
	}
	if _, err := policytest.Load(filepath.Join(dir, "nope")); err == nil {
		t.Fatal("missing path loaded")
	}
}
