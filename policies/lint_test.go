package policies

import (
	"strings"
	"testing"
)

func ap(action string, rules ...Rule) AuthorizationPolicy {
	return AuthorizationPolicy{
		APIVersion: APIVersionIstioV1,
		Kind:       KindAuthorizationPolicy,
		Metadata:   ObjectMeta{Name: "p", Namespace: "foo"},
		Spec:       AuthorizationPolicySpec{Action: action, Rules: rules},
	}
}

func from(s Source) []RuleFrom               { return []RuleFrom{{Source: s}} }
func to(o Operation) []RuleTo                { return []RuleTo{{Operation: o}} }
func list(v ...string) []string              { return v }
func cond(key string, v ...string) Condition { return Condition{Key: key, Values: v} }

type wantLint struct{ code, field, msg string }

func checkLint(t *testing.T, got Diagnostics, want []wantLint) {
	t.Helper()
	if len(got) != len(want) {
		var b strings.Builder
		for _, d := range got {
			b.WriteString("  " + d.String() + "\n")
		}
		t.Fatalf("got %d warnings, want %d:\n%s", len(got), len(want), b.String())
	}
	for i, w := range want {
		g := got[i]
		if g.Severity != SeverityWarning || g.Code != w.code || g.Field != w.field || !strings.Contains(g.Message, w.msg) {
			t.Errorf("warning %d = %s (field %q), want %s %s ~%q", i, g, g.Field, w.code, w.field, w.msg)
		}
	}
}

func TestLintAuthorizationPolicy(t *testing.T) {
	tests := []struct {
		name string
		p    AuthorizationPolicy
		want []wantLint
	}{
		{name: "clean ALLOW", p: ap("", Rule{From: from(Source{Principals: list("cluster.local/ns/a/sa/b")})})},
		{name: "ALLOW without rules is allow-nothing, meaningful", p: ap("ALLOW")},
		{name: "DENY without rules", p: ap("DENY"), want: []wantLint{{CodeNoEffect, "spec.rules", "DENY policy without rules"}}},
		{name: "AUDIT without rules", p: ap("AUDIT"), want: []wantLint{{CodeNoEffect, "spec.rules", "AUDIT"}}},
		{name: "CUSTOM without rules", p: ap("CUSTOM"), want: []wantLint{{CodeNoEffect, "spec.rules", "CUSTOM"}}},
		{
			name: "deprecated targetRef",
			p: func() AuthorizationPolicy {
				p := ap("", Rule{})
				p.Spec.TargetRef = &PolicyTargetReference{Kind: "Gateway", Name: "gw"}
				return p
			}(),
			want: []wantLint{{CodeDeprecated, "spec.targetRef", "use targetRefs"}},
		},
		{
			name: "targetRefs and v1beta1 are fine",
			p: func() AuthorizationPolicy {
				p := ap("", Rule{})
				p.APIVersion = APIVersionIstioV1beta1
				p.Spec.TargetRefs = []PolicyTargetReference{{Kind: "Gateway", Name: "gw"}}
				return p
			}(),
		},
		{
			name: "principal excluded by notPrincipals, all values",
			p:    ap("", Rule{From: from(Source{Principals: list("td/ns/a/sa/b"), NotPrincipals: list("td/ns/a/*")})}),
			want: []wantLint{
				{CodeNeverMatches, "spec.rules[0].from[0].source.principals[0]", `excluded by notPrincipals "td/ns/a/*"`},
				{CodeNeverMatches, "spec.rules[0].from[0].source", "every value of principals"},
			},
		},
		{
			name: "one of two namespaces excluded",
			p:    ap("", Rule{From: from(Source{Namespaces: list("a", "b"), NotNamespaces: list("b")})}),
			want: []wantLint{
				{CodeMeaningChanged, "spec.rules[0].from[0].source", "notNamespaces and notServiceAccounts now also read"},
				{CodeNeverMatches, "spec.rules[0].from[0].source.namespaces[1]", `"b" is excluded`},
			},
		},
		{
			name: "suffix exclusion is not a prefix exclusion",
			p:    ap("", Rule{From: from(Source{Principals: list("td/ns/a/*"), NotPrincipals: list("*/sa/admin")})}),
		},
		{
			name: "negative star in an ALLOW rule excludes everything",
			p:    ap("", Rule{To: to(Operation{NotPaths: list("*")})}),
			want: []wantLint{{CodeNeverMatches, "spec.rules[0].to[0].operation.notPaths[0]", "excludes every request"}},
		},
		{
			name: "negative star in a DENY rule is the deny-plaintext idiom",
			p:    ap("DENY", Rule{From: from(Source{NotPrincipals: list("*")})}),
		},
		{
			name: "lower-case method and relative path",
			p:    ap("", Rule{To: to(Operation{Methods: list("GET", "post"), Paths: list("/ok", "api/*", "*.js", "*")})}),
			want: []wantLint{
				{CodeNeverMatches, "spec.rules[0].to[0].operation.methods[1]", `clients send "POST"`},
				{CodeNeverMatches, "spec.rules[0].to[0].operation.paths[1]", `"api/*" does not begin`},
			},
		},
		{
			name: "lower-case methods in a DENY rule match case-insensitively",
			p:    ap("DENY", Rule{To: to(Operation{Methods: list("delete")})}),
		},
		{
			name: "hosts exclusion is case-insensitive",
			p:    ap("", Rule{To: to(Operation{Hosts: list("API.example.com"), NotHosts: list("*.example.com")})}),
			want: []wantLint{
				{CodeNeverMatches, "spec.rules[0].to[0].operation.hosts[0]", "excluded"},
				{CodeNeverMatches, "spec.rules[0].to[0].operation", "every value of hosts"},
				{CodeMeaningChanged, "spec.rules[0].to[0].operation.hosts[0]", "compared with :authority exactly"},
			},
		},
		{
			name: "condition value in notValues",
			p:    ap("DENY", Rule{When: []Condition{{Key: "request.headers[x]", Values: list("a"), NotValues: list("a")}}}),
			want: []wantLint{
				{CodeNeverMatches, "spec.rules[0].when[0].values[0]", "excluded"},
				{CodeNeverMatches, "spec.rules[0].when[0]", "every value"},
			},
		},
		{
			name: "identical rule is shadowed",
			p: ap("DENY",
				Rule{To: to(Operation{Paths: list("/admin*")})},
				Rule{To: to(Operation{Paths: list("/admin*")})}),
			want: []wantLint{{CodeShadowed, "spec.rules[1]", "earlier rule spec.rules[0]"}},
		},
		{
			name: "strictly broader earlier rule shadows",
			p: ap("",
				Rule{From: from(Source{Namespaces: list("shop*")}), To: to(Operation{Methods: list("GET", "HEAD")})},
				Rule{From: from(Source{Namespaces: list("shop-web"), Principals: list("td/ns/shop-web/sa/x")}),
					To: to(Operation{Methods: list("GET"), Paths: list("/x")}), When: []Condition{cond("request.headers[a]", "b")}}),
			want: []wantLint{{CodeShadowed, "spec.rules[1]", "spec.rules[0]"}},
		},
		{
			name: "empty rule shadows everything after it",
			p:    ap("", Rule{}, Rule{To: to(Operation{Methods: list("GET")})}, Rule{}),
			want: []wantLint{{CodeShadowed, "spec.rules[1]", "spec.rules[0]"}, {CodeShadowed, "spec.rules[2]", "spec.rules[0]"}},
		},
		{
			name: "a narrower earlier rule does not shadow",
			p: ap("",
				Rule{To: to(Operation{Methods: list("GET"), Paths: list("/x")})},
				Rule{To: to(Operation{Methods: list("GET")})}),
		},
		{
			name: "extra exclusion on the earlier rule: not certain, no warning",
			p: ap("",
				Rule{To: to(Operation{Methods: list("GET"), NotPaths: list("/private*")})},
				Rule{To: to(Operation{Methods: list("GET")})}),
		},
		{
			name: "condition only on the earlier rule: no warning",
			p: ap("",
				Rule{When: []Condition{cond("source.ip", "10.0.0.1")}},
				Rule{To: to(Operation{Methods: list("GET")})}),
		},
		{
			name: "any source vs some source",
			p: ap("",
				Rule{From: from(Source{Namespaces: list("a")})},
				Rule{}),
		},
		{
			name: "path templates are only covered by themselves",
			p: ap("",
				Rule{To: to(Operation{Paths: list("/api/*")})},
				Rule{To: to(Operation{Paths: list("/api/{*}/x")})}),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &Set{AuthorizationPolicies: []AuthorizationPolicy{tt.p}}
			got := Lint(s)
			for _, d := range got {
				if d.Object != "AuthorizationPolicy/foo/p" {
					t.Errorf("object = %q", d.Object)
				}
			}
			checkLint(t, got, tt.want)
		})
	}
}

func TestLintIdentityPolicy(t *testing.T) {
	web := IdentitySource{IDs: list("spiffe://prod.example/ns/shop/sa/web")}
	tests := []struct {
		name string
		spec IdentityPolicySpec
		want []wantLint
	}{
		{name: "DENY without rules", spec: IdentityPolicySpec{Action: "DENY"}, want: []wantLint{{CodeNoEffect, "spec.rules", "DENY"}}},
		{name: "ALLOW without rules", spec: IdentityPolicySpec{}},
		{
			name: "same rule twice",
			spec: IdentityPolicySpec{Rules: []IdentityRule{
				{Name: "web", From: []IdentitySource{web}},
				{Name: "again", From: []IdentitySource{web}, To: []IdentityTarget{{Routes: list("checkout")}}},
			}},
			want: []wantLint{{CodeShadowed, "spec.rules[1]", `spec.rules[0] ("web")`}},
		},
		{
			name: "a dry-run rule does not shadow an enforced one",
			spec: IdentityPolicySpec{Rules: []IdentityRule{
				{Mode: ModeDryRun, From: []IdentitySource{web}},
				{From: []IdentitySource{web}},
			}},
		},
		{
			name: "inherited modes compare equal",
			spec: IdentityPolicySpec{Mode: ModeDryRun, Rules: []IdentityRule{
				{From: []IdentitySource{web}},
				{Mode: ModeDryRun, From: []IdentitySource{web}},
			}},
			want: []wantLint{{CodeShadowed, "spec.rules[1]", "spec.rules[0]"}},
		},
		{
			name: "JWT requirement only on the earlier rule: no warning",
			spec: IdentityPolicySpec{Rules: []IdentityRule{
				{From: []IdentitySource{web}, JWT: &JWTRequirement{Audiences: list("a")}},
				{From: []IdentitySource{web}},
			}},
		},
		{
			name: "different trust domains: no warning",
			spec: IdentityPolicySpec{Rules: []IdentityRule{
				{From: []IdentitySource{{TrustDomains: list("a.example")}}},
				{From: []IdentitySource{{TrustDomains: list("b.example")}}},
			}},
		},
		{
			name: "never-matching values",
			spec: IdentityPolicySpec{Rules: []IdentityRule{{
				From: []IdentitySource{{IDs: list("spiffe://a/x"), NotIDs: list("spiffe://a/x")}},
				To:   []IdentityTarget{{Methods: list("delete"), Paths: list("v1/*")}},
			}}},
			want: []wantLint{
				{CodeNeverMatches, "spec.rules[0].from[0].ids[0]", "excluded"},
				{CodeNeverMatches, "spec.rules[0].from[0]", "every value of ids"},
				{CodeNeverMatches, "spec.rules[0].to[0].methods[0]", `"DELETE"`},
				{CodeNeverMatches, "spec.rules[0].to[0].paths[0]", "does not begin"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &Set{IdentityPolicies: []IdentityPolicy{{
				Kind: KindIdentityPolicy, Metadata: ObjectMeta{Name: "i", Namespace: "shop"}, Spec: tt.spec,
			}}}
			checkLint(t, Lint(s), tt.want)
		})
	}
}

func TestLintRouteOverride(t *testing.T) {
	s := &Set{RouteOverrides: []RouteOverride{{
		Kind: KindRouteOverride, Metadata: ObjectMeta{Name: "r", Namespace: "shop"},
		Spec: RouteOverrideSpec{Route: "checkout", Rules: []IdentityRule{
			{To: []IdentityTarget{{Methods: list("POST")}}},
			{To: []IdentityTarget{{Methods: list("POST"), Paths: list("/pay")}}},
		}},
	}}}
	got := Lint(s)
	checkLint(t, got, []wantLint{{CodeShadowed, "spec.rules[1]", "spec.rules[0]"}})
	if got[0].Object != "RouteOverride/shop/r" {
		t.Errorf("object = %q", got[0].Object)
	}
}

func TestIstioCovers(t *testing.T) {
	tests := []struct {
		broad, narrow string
		want          bool
	}{
		{"*", "anything", true},
		{"*", "*", true},
		{"a", "a", true},
		{"a", "b", false},
		{"a*", "abc", true},
		{"a*", "ab*", true},
		{"ab*", "a*", false},
		{"a*", "*a", false},
		{"a*", "*", false},
		{"*c", "abc", true},
		{"*c", "*bc", true},
		{"*bc", "*c", false},
		{"*c", "c*", false},
		{"abc", "a*", false},
	}
	for _, tt := range tests {
		if got := istioCovers(tt.broad, tt.narrow); got != tt.want {
			t.Errorf("istioCovers(%q, %q) = %v, want %v", tt.broad, tt.narrow, got, tt.want)
		}
	}
}

// The warnings about policies whose meaning changed when meshguard came to
// read Istio's fields as Istio does.
func TestLintMeaningChanged(t *testing.T) {
	jwtRule := IdentityPolicy{Metadata: ObjectMeta{Name: "jwt", Namespace: "foo"}, Spec: IdentityPolicySpec{Rules: []IdentityRule{{JWT: &JWTRequirement{Audiences: list("a")}}}}}
	tests := []struct {
		name string
		set  Set
		want []wantLint
	}{
		{
			name: "principals without JWT-SVIDs in the set",
			set:  Set{AuthorizationPolicies: []AuthorizationPolicy{ap("", Rule{From: from(Source{Principals: list("cluster.local/ns/a/sa/b")})})}},
		},
		{
			name: "principals in ALLOW where JWT-SVIDs are used",
			set: Set{AuthorizationPolicies: []AuthorizationPolicy{ap("", Rule{From: from(Source{Principals: list("cluster.local/ns/a/sa/b")})})},
				IdentityPolicies: []IdentityPolicy{jwtRule}},
			want: []wantLint{{CodeMeaningChanged, "spec.rules[0]", "no longer matches a caller authenticated by a JWT-SVID alone"}},
		},
		{
			name: "a namespace's DENY on notPrincipals where JWT-SVIDs are used",
			set: Set{AuthorizationPolicies: []AuthorizationPolicy{
				ap("DENY", Rule{From: from(Source{NotPrincipals: list("*")})}),
				ap("", Rule{From: from(Source{RequestPrincipals: list("*")})}),
			}},
			want: []wantLint{
				{CodeMeaningChanged, "spec.rules[0]", "a DENY on notPrincipals denies it"},
				{CodeMeaningChanged, "spec.rules[0].from[0].source.requestPrincipals[0]", "without an iss claim matches no value"},
			},
		},
		{
			name: "request principals naming a JWT-SVID subject, with a RequestAuthentication in the set",
			set: Set{
				RequestAuthentications: []RequestAuthentication{{Metadata: ObjectMeta{Name: "ra", Namespace: "foo"}, Spec: RequestAuthenticationSpec{JWTRules: []JWTRule{{Issuer: "https://idp.example"}}}}},
				AuthorizationPolicies: []AuthorizationPolicy{
					ap("", Rule{From: from(Source{RequestPrincipals: list("https://idp.example/*", "spiffe://td/ns/a/sa/b")})}),
					ap("DENY", Rule{When: []Condition{cond("request.auth.principal", "spiffe://td/ns/a/sa/evil")}}),
				}},
			want: []wantLint{
				{CodeMeaningChanged, "spec.rules[0].from[0].source.requestPrincipals[1]", "this ALLOW rule no longer matches it"},
				{CodeMeaningChanged, "spec.rules[0].when[0].values[0]", "this deny-side rule still matches it"},
			},
		},
		{
			name: "mesh-wide require-mTLS: JWT-SVID-only callers never reach the rules",
			set: func() Set {
				deny := ap("DENY", Rule{From: from(Source{NotPrincipals: list("*")})})
				deny.Metadata = ObjectMeta{Name: "require-mtls", Namespace: "istio-system"}
				return Set{AuthorizationPolicies: []AuthorizationPolicy{deny, ap("", Rule{From: from(Source{Principals: list("td/ns/a/sa/b")})})},
					IdentityPolicies: []IdentityPolicy{jwtRule}}
			}(),
		},
		{
			name: "cluster.local names the mesh's trust domains",
			set: Set{Settings: MeshSettingsSpec{TrustDomain: "prod.example"},
				AuthorizationPolicies: []AuthorizationPolicy{ap("", Rule{
					From: from(Source{Principals: list("cluster.local/ns/a/sa/b", "partner.example/ns/a/sa/b", "*/ns/a/sa/b"), TrustDomains: list("prod.example")}),
					When: []Condition{cond("source.principal", "prod.example/ns/x/sa/y")},
				})}},
			want: []wantLint{
				{CodeMeaningChanged, "spec.rules[0].from[0].source.principals[0]", "[prod.example]"},
				{CodeMeaningChanged, "spec.rules[0].from[0].source.trustDomains[0]", "names the mesh's trust domains"},
				{CodeMeaningChanged, "spec.rules[0].when[0].values[0]", "names the mesh's trust domains"},
			},
		},
		{
			name: "cluster.local when the mesh is cluster.local without aliases",
			set:  Set{AuthorizationPolicies: []AuthorizationPolicy{ap("", Rule{From: from(Source{Principals: list("cluster.local/ns/a/sa/b")})})}},
		},
		{
			name: "namespaces in DENY, and source.namespace",
			set: Set{AuthorizationPolicies: []AuthorizationPolicy{ap("DENY",
				Rule{From: from(Source{Namespaces: list("evil")})},
				Rule{When: []Condition{cond("source.namespace", "evil")}},
			)}},
			want: []wantLint{
				{CodeMeaningChanged, "spec.rules[0].from[0].source", "more path segments"},
				{CodeMeaningChanged, "spec.rules[1].when[0]", "more path segments"},
			},
		},
		{
			name: "namespaces in ALLOW stay strict",
			set:  Set{AuthorizationPolicies: []AuthorizationPolicy{ap("", Rule{From: from(Source{Namespaces: list("a")})})}},
		},
		{
			name: "hosts, {**} and header presence",
			set: Set{AuthorizationPolicies: []AuthorizationPolicy{ap("",
				Rule{To: to(Operation{Hosts: list("api.example.com", "api.example.com:8080", "api*"), Paths: list("/files/{**}", "/a/{**}/b")})},
				Rule{When: []Condition{cond("request.headers[x-debug]", "*")}},
			)}},
			want: []wantLint{
				{CodeMeaningChanged, "spec.rules[0].to[0].operation.hosts[0]", `"api.example.com:80"`},
				{CodeMeaningChanged, "spec.rules[0].to[0].operation.paths[0]", `now also matches "/files/"`},
				{CodeMeaningChanged, "spec.rules[1].when[0]", "empty value now counts as present"},
			},
		},
		{
			name: "ALLOW header patterns and notValues: every element of a duplicated header",
			set: Set{AuthorizationPolicies: []AuthorizationPolicy{ap("",
				Rule{When: []Condition{cond("request.headers[x-tenant]", "acme*"), {Key: "request.headers[x-role]", NotValues: list("evil")}}},
				Rule{When: []Condition{cond("request.headers[x-tenant]", "acme")}},
			)}},
			want: []wantLint{
				{CodeMeaningChanged, "spec.rules[0].when[0]", "every element of a duplicated header"},
				{CodeMeaningChanged, "spec.rules[0].when[1]", "every element of a duplicated header"},
			},
		},
		{
			name: "DENY header conditions catch every element: no warning",
			set:  Set{AuthorizationPolicies: []AuthorizationPolicy{ap("DENY", Rule{When: []Condition{cond("request.headers[x-tenant]", "acme*")}})}},
		},
		{
			name: "DENY hosts catch every reading: no warning",
			set:  Set{AuthorizationPolicies: []AuthorizationPolicy{ap("DENY", Rule{To: to(Operation{Hosts: list("admin.example.com")})})}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkLint(t, Lint(&tt.set), tt.want)
		})
	}
}

func TestLintCustomProviders(t *testing.T) {
	custom := func(name, provider string) AuthorizationPolicy {
		p := ap("CUSTOM", Rule{To: to(Operation{Paths: list("/x")})})
		p.Metadata.Name = name
		p.Spec.Provider = &ExtensionProvider{Name: provider}
		return p
	}
	tests := []struct {
		name string
		set  Set
		want []wantLint
	}{
		{name: "one provider", set: Set{AuthorizationPolicies: []AuthorizationPolicy{custom("a", "meshguard"), custom("b", "meshguard")}}},
		{
			name: "an invalid name",
			set:  Set{AuthorizationPolicies: []AuthorizationPolicy{custom("a", "Mesh_Guard")}},
			want: []wantLint{{CodeCustomProviderDenies, "spec.provider.name", "not a valid extension provider name"}},
		},
		{
			name: "not declared",
			set:  Set{Settings: MeshSettingsSpec{ExtensionProviders: list("meshguard")}, AuthorizationPolicies: []AuthorizationPolicy{custom("a", "opa")}},
			want: []wantLint{{CodeCustomProviderDenies, "spec.provider.name", "not among the mesh's extension providers"}},
		},
		{
			name: "two providers",
			set:  Set{AuthorizationPolicies: []AuthorizationPolicy{custom("a", "meshguard"), custom("b", "opa")}},
			want: []wantLint{{CodeCustomProviderDenies, "spec.provider.name", `provider "opa" beside "meshguard"`}},
		},
		{
			name: "two providers allowed",
			set:  Set{Settings: MeshSettingsSpec{MultipleCustomProviders: true}, AuthorizationPolicies: []AuthorizationPolicy{custom("a", "meshguard"), custom("b", "opa")}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkLint(t, Lint(&tt.set), tt.want)
		})
	}
}
