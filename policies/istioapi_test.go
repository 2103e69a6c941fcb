package policies_test

import (
	"strings"
	"testing"

	"github.com/meshguard/meshguard/policies"
)

// Today's Istio API is validated with Istio's rules (pkg/config/validation
// and pkg/config/security): each bad value is an error on its field.
func TestIstioAPIValidation(t *testing.T) {
	tests := []struct {
		name, yaml, field, msg string
	}{
		{"serviceAccounts with principals", `
  rules: [{from: [{source: {serviceAccounts: [a], principals: ["td/ns/a/sa/b"]}}]}]`,
			"spec.rules[0].from[0].source.serviceAccounts", "cannot be set with namespaces or principals"},
		{"notServiceAccounts with notNamespaces", `
  rules: [{from: [{source: {notServiceAccounts: [a], notNamespaces: [b]}}]}]`,
			"spec.rules[0].from[0].source.serviceAccounts", "cannot be set with namespaces or principals"},
		{"serviceAccounts wildcard", `
  rules: [{from: [{source: {serviceAccounts: ["shop/*"]}}]}]`,
			"spec.rules[0].from[0].source.serviceAccounts[0]", "wildcards are not allowed"},
		{"serviceAccounts two slashes", `
  rules: [{from: [{source: {serviceAccounts: ["a/b/c"]}}]}]`,
			"spec.rules[0].from[0].source.serviceAccounts[0]", `want "name" or "namespace/name"`},
		{"serviceAccounts empty namespace", `
  rules: [{from: [{source: {notServiceAccounts: ["/b"]}}]}]`,
			"spec.rules[0].from[0].source.notServiceAccounts[0]", `want "name" or "namespace/name"`},
		{"serviceAccounts too many", `
  rules: [{from: [{source: {serviceAccounts: [a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q]}}]}]`,
			"spec.rules[0].from[0].source.serviceAccounts", "at most 16"},
		{"serviceAccounts too long", `
  rules: [{from: [{source: {serviceAccounts: ["` + strings.Repeat("a", 321) + `"]}}]}]`,
			"spec.rules[0].from[0].source.serviceAccounts[0]", "at most 320"},
		{"trustDomains with a slash", `
  rules: [{from: [{source: {trustDomains: ["td/ns"]}}]}]`,
			"spec.rules[0].from[0].source.trustDomains[0]", "contains '/'"},
		{"notTrustDomains wildcard in the middle", `
  rules: [{from: [{source: {notTrustDomains: ["a*b"]}}]}]`,
			"spec.rules[0].from[0].source.notTrustDomains[0]", "'*' is only allowed"},
		{"source.serviceAccount wildcard", `
  rules: [{when: [{key: source.serviceAccount, values: ["*"]}]}]`,
			"spec.rules[0].when[0].values[0]", "wildcards are not allowed"},
		{"path template: operator after {**}", `
  rules: [{to: [{operation: {paths: ["/a/{**}/{*}"]}}]}]`,
			"spec.rules[0].to[0].operation.paths[0]", "{**} must be the last operator"},
		{"path template: empty segment", `
  rules: [{to: [{operation: {paths: ["/a//{*}"]}}]}]`,
			"spec.rules[0].to[0].operation.paths[0]", "a literal segment is"},
		{"path template: glued operator", `
  rules: [{to: [{operation: {paths: ["/a/{*}.txt"]}}]}]`,
			"spec.rules[0].to[0].operation.paths[0]", "operators must be whole segments"},
		{"CUSTOM with principals", `
  action: CUSTOM
  provider: {name: meshguard}
  rules: [{from: [{source: {principals: ["td/ns/a/sa/b"]}}]}]`,
			"spec.rules[0].from[0].source.principals", "not supported with action CUSTOM"},
		{"CUSTOM with request.auth", `
  action: CUSTOM
  provider: {name: meshguard}
  rules: [{when: [{key: request.auth.principal, values: ["x"]}]}]`,
			"spec.rules[0].when[0].key", "not supported with action CUSTOM"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			set := setFromYAML(t, "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop}\nspec:"+tt.yaml)
			errs := policies.Validate(&set).Errors()
			for _, d := range errs {
				if d.Field == tt.field && strings.Contains(d.Message, tt.msg) {
					return
				}
			}
			t.Errorf("want an error on %s ~%q, got %v", tt.field, tt.msg, errs)
		})
	}
	ok := setFromYAML(t, `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: shop}
spec:
  rules:
  - from: [{source: {serviceAccounts: ["web/frontend", "api"], trustDomains: ["cluster.local", "partner-*", "*-legacy", "*"]}}]
  - from: [{source: {notServiceAccounts: [api], notTrustDomains: [evil.example]}}]
    to: [{operation: {paths: ["/docs/{**}/index.html", "/u/{*}/", "/{**}"]}}]
    when: [{key: source.serviceAccount, values: [a]}, {key: source.trustDomain, notValues: ["x*"]}]`)
	if errs := policies.Validate(&ok).Errors(); len(errs) > 0 {
		t.Errorf("valid Istio API refused: %v", errs)
	}
}

func TestMeshSettingsValidation(t *testing.T) {
	for _, tt := range []struct {
		spec policies.MeshSettingsSpec
		msg  string
	}{
		{policies.MeshSettingsSpec{TrustDomainAliases: []string{"Bad Domain"}}, "trust domain alias"},
		{policies.MeshSettingsSpec{TrustDomainAliases: []string{""}}, "trust domain alias"},
		{policies.MeshSettingsSpec{ExtensionProviders: []string{"My_Provider"}}, "extension provider"},
		{policies.MeshSettingsSpec{ExtensionProviders: []string{"-x"}}, "extension provider"},
		{policies.MeshSettingsSpec{TrustDomain: "a/b"}, "trust domain"},
	} {
		set := policies.Set{Settings: tt.spec}
		errs := policies.Validate(&set).Errors()
		if len(errs) != 1 || !strings.Contains(errs[0].Message, tt.msg) {
			t.Errorf("%+v: errors %v, want one ~%q", tt.spec, errs, tt.msg)
		}
	}
}
