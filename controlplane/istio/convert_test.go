package istio

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	securityv1beta1api "istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/meshguard/meshguard/policies"
)

func TestConvertAuthorizationPolicy(t *testing.T) {
	meta := &metav1.ObjectMeta{
		Name: "p", Namespace: "ns", Labels: map[string]string{"team": "a"},
		Annotations: map[string]string{"kubectl.kubernetes.io/last-applied-configuration": "{...}", "note": "x"},
	}
	tests := []struct {
		name    string
		spec    *securityv1beta1api.AuthorizationPolicy
		want    policies.AuthorizationPolicySpec
		wantErr string
	}{
		{
			name: "nil spec is allow-nothing",
			spec: nil,
			want: policies.AuthorizationPolicySpec{},
		},
		{
			name: "every field",
			spec: &securityv1beta1api.AuthorizationPolicy{
				Selector:   &typev1beta1.WorkloadSelector{MatchLabels: map[string]string{"app": "api"}},
				TargetRefs: []*typev1beta1.PolicyTargetReference{{Group: "", Kind: "Service", Name: "api"}},
				Action:     securityv1beta1api.AuthorizationPolicy_DENY,
				Rules: []*securityv1beta1api.Rule{{
					From: []*securityv1beta1api.Rule_From{{Source: &securityv1beta1api.Source{
						Principals: []string{"cluster.local/ns/a/sa/b"}, NotPrincipals: []string{"x"},
						RequestPrincipals: []string{"iss/sub"}, NotRequestPrincipals: []string{"y"},
						Namespaces: []string{"a"}, NotNamespaces: []string{"b"},
						IpBlocks: []string{"10.0.0.0/8"}, NotIpBlocks: []string{"10.1.0.0/16"},
						RemoteIpBlocks: []string{"1.2.3.4"}, NotRemoteIpBlocks: []string{"5.6.7.8"},
					}}},
					To: []*securityv1beta1api.Rule_To{{Operation: &securityv1beta1api.Operation{
						Hosts: []string{"h"}, NotHosts: []string{"nh"}, Ports: []string{"80"}, NotPorts: []string{"81"},
						Methods: []string{"GET"}, NotMethods: []string{"PUT"}, Paths: []string{"/a/*"}, NotPaths: []string{"/a/b"},
					}}},
					When: []*securityv1beta1api.Condition{{Key: "request.headers[x]", Values: []string{"1"}, NotValues: []string{"2"}}},
				}},
			},
			want: policies.AuthorizationPolicySpec{
				Selector:   &policies.WorkloadSelector{MatchLabels: map[string]string{"app": "api"}},
				TargetRefs: []policies.PolicyTargetReference{{Kind: "Service", Name: "api"}},
				Action:     "DENY",
				Rules: []policies.Rule{{
					From: []policies.RuleFrom{{Source: policies.Source{
						Principals: []string{"cluster.local/ns/a/sa/b"}, NotPrincipals: []string{"x"},
						RequestPrincipals: []string{"iss/sub"}, NotRequestPrincipals: []string{"y"},
						Namespaces: []string{"a"}, NotNamespaces: []string{"b"},
						IPBlocks: []string{"10.0.0.0/8"}, NotIPBlocks: []string{"10.1.0.0/16"},
						RemoteIPBlocks: []string{"1.2.3.4"}, NotRemoteIPBlocks: []string{"5.6.7.8"},
					}}},
					To: []policies.RuleTo{{Operation: policies.Operation{
						Hosts: []string{"h"}, NotHosts: []string{"nh"}, Ports: []string{"80"}, NotPorts: []string{"81"},
						Methods: []string{"GET"}, NotMethods: []string{"PUT"}, Paths: []string{"/a/*"}, NotPaths: []string{"/a/b"},
					}}},
					When: []policies.Condition{{Key: "request.headers[x]", Values: []string{"1"}, NotValues: []string{"2"}}},
				}},
			},
		},
		{
			name: "custom with provider and deprecated targetRef",
			spec: &securityv1beta1api.AuthorizationPolicy{
				TargetRef:    &typev1beta1.PolicyTargetReference{Group: "gateway.networking.k8s.io", Kind: "Gateway", Name: "gw"},
				Action:       securityv1beta1api.AuthorizationPolicy_CUSTOM,
				ActionDetail: &securityv1beta1api.AuthorizationPolicy_Provider{Provider: &securityv1beta1api.AuthorizationPolicy_ExtensionProvider{Name: "meshguard"}},
				Rules:        []*securityv1beta1api.Rule{{}},
			},
			want: policies.AuthorizationPolicySpec{
				TargetRef: &policies.PolicyTargetReference{Group: "gateway.networking.k8s.io", Kind: "Gateway", Name: "gw"},
				Action:    "CUSTOM",
				Provider:  &policies.ExtensionProvider{Name: "meshguard"},
				Rules:     []policies.Rule{{}},
			},
		},
		{
			name: "null rule, source and operation are empty ones",
			spec: &securityv1beta1api.AuthorizationPolicy{Rules: []*securityv1beta1api.Rule{
				nil,
				{From: []*securityv1beta1api.Rule_From{{}}, To: []*securityv1beta1api.Rule_To{{}}},
			}},
			want: policies.AuthorizationPolicySpec{Action: "ALLOW", Rules: []policies.Rule{
				{},
				{From: []policies.RuleFrom{{}}, To: []policies.RuleTo{{}}},
			}},
		},
		{
			name: "service accounts and trust domains (istio.io/api v1.31)",
			spec: &securityv1beta1api.AuthorizationPolicy{Rules: []*securityv1beta1api.Rule{{
				From: []*securityv1beta1api.Rule_From{{Source: &securityv1beta1api.Source{
					ServiceAccounts: []string{"ns/sa"}, NotServiceAccounts: []string{"other"},
					TrustDomains: []string{"cluster.local"}, NotTrustDomains: []string{"evil"},
				}}},
			}}},
			want: policies.AuthorizationPolicySpec{Action: "ALLOW", Rules: []policies.Rule{{From: []policies.RuleFrom{{Source: policies.Source{
				ServiceAccounts: []string{"ns/sa"}, NotServiceAccounts: []string{"other"},
				TrustDomains: []string{"cluster.local"}, NotTrustDomains: []string{"evil"},
			}}}}}},
		},
		{
			name:    "unknown action",
			spec:    &securityv1beta1api.AuthorizationPolicy{Action: 42},
			wantErr: "spec.action: unknown value 42",
		},
		{
			name:    "null condition",
			spec:    &securityv1beta1api.AuthorizationPolicy{Rules: []*securityv1beta1api.Rule{{When: []*securityv1beta1api.Condition{nil}}}},
			wantErr: "spec.rules[0].when[0]: null condition",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := convertAuthorizationPolicy(policies.APIVersionIstioV1, meta, tt.spec)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.spec == nil {
				tt.want.Action = ""
			} else if tt.want.Action == "" {
				tt.want.Action = "ALLOW"
			}
			if !reflect.DeepEqual(got.Spec, tt.want) {
				t.Errorf("spec:\n got %+v\nwant %+v", got.Spec, tt.want)
			}
			wantMeta := policies.ObjectMeta{Name: "p", Namespace: "ns", Labels: map[string]string{"team": "a"}, Annotations: map[string]string{"note": "x"}}
			if !reflect.DeepEqual(got.Metadata, wantMeta) {
				t.Errorf("metadata = %+v, want %+v", got.Metadata, wantMeta)
			}
			if got.APIVersion != policies.APIVersionIstioV1 || got.Kind != policies.KindAuthorizationPolicy {
				t.Errorf("type = %s %s", got.APIVersion, got.Kind)
			}
		})
	}
}

func TestFailClosedAuthorizationPolicy(t *testing.T) {
	meta := &metav1.ObjectMeta{Name: "p", Namespace: "ns"}
	deny := &securityv1beta1api.AuthorizationPolicy{
		Selector: &typev1beta1.WorkloadSelector{MatchLabels: map[string]string{"app": "db"}},
		Action:   securityv1beta1api.AuthorizationPolicy_DENY,
		Rules:    []*securityv1beta1api.Rule{{When: []*securityv1beta1api.Condition{nil}}},
	}
	_, err := convertAuthorizationPolicy(policies.APIVersionIstioV1, meta, deny)
	if err == nil {
		t.Fatal("a null condition converted")
	}
	sub, ok := failClosedAuthorizationPolicy(policies.APIVersionIstioV1, meta, deny, err)
	if !ok {
		t.Fatal("a DENY policy that cannot be converted must have a stand-in")
	}
	if sub.Spec.Action != "DENY" || len(sub.Spec.Rules) != 1 || !reflect.DeepEqual(sub.Spec.Rules[0], policies.Rule{}) {
		t.Errorf("stand-in is not deny-everything: %+v", sub.Spec)
	}
	if sub.Spec.Selector == nil || sub.Spec.Selector.MatchLabels["app"] != "db" {
		t.Errorf("stand-in lost the scope: %+v", sub.Spec.Selector)
	}
	if sub.Metadata.Annotations[AnnotationConversionError] == "" {
		t.Error("stand-in does not say why it exists")
	}
	for _, action := range []securityv1beta1api.AuthorizationPolicy_Action{
		securityv1beta1api.AuthorizationPolicy_ALLOW, securityv1beta1api.AuthorizationPolicy_AUDIT, securityv1beta1api.AuthorizationPolicy_CUSTOM,
	} {
		allow := &securityv1beta1api.AuthorizationPolicy{Action: action}
		if _, ok := failClosedAuthorizationPolicy(policies.APIVersionIstioV1, meta, allow, err); ok {
			t.Errorf("%s: dropping it only narrows access; no stand-in expected", action)
		}
	}
}

func unstructuredObj(kind, ns, name string, spec map[string]any) *unstructured.Unstructured {
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": policies.APIVersionMeshguard,
		"kind":       kind,
		"metadata":   map[string]any{"name": name, "namespace": ns, "uid": ns + "-" + name},
	}}
	if spec != nil {
		u.Object["spec"] = spec
	}
	return u
}

func TestAddMeshguard(t *testing.T) {
	tests := []struct {
		name    string
		obj     *unstructured.Unstructured
		check   func(t *testing.T, s *policies.Set, settings *policies.MeshSettingsSpec)
		wantErr string
	}{
		{
			name: "identity policy",
			obj: unstructuredObj("IdentityPolicy", "ns", "ip", map[string]any{
				"workloads": []any{"spiffe://td/ns/ns/sa/api"},
				"action":    "ALLOW",
				"mode":      "dry-run",
				"rules": []any{map[string]any{
					"name": "r", "from": []any{map[string]any{"ids": []any{"spiffe://td/ns/*/sa/web"}}},
					"to":  []any{map[string]any{"routes": []any{"get-users"}, "methods": []any{"GET"}}},
					"jwt": map[string]any{"audiences": []any{"api"}, "claims": []any{map[string]any{"name": "groups", "values": []any{"admin"}}}},
				}},
			}),
			check: func(t *testing.T, s *policies.Set, _ *policies.MeshSettingsSpec) {
				if len(s.IdentityPolicies) != 1 {
					t.Fatalf("identity policies = %d", len(s.IdentityPolicies))
				}
				p := s.IdentityPolicies[0]
				if p.Spec.Mode != policies.ModeDryRun || p.Spec.Rules[0].JWT.Claims[0].Values[0] != "admin" || p.Spec.Rules[0].To[0].Routes[0] != "get-users" {
					t.Errorf("spec = %+v", p.Spec)
				}
				if p.Metadata.Name != "ip" || p.Metadata.Namespace != "ns" || p.Kind != policies.KindIdentityPolicy {
					t.Errorf("meta = %+v", p.Metadata)
				}
			},
		},
		{
			name: "anomaly profile with numbers",
			obj: unstructuredObj("AnomalyProfile", "ns", "ap", map[string]any{
				"rate":      map[string]any{"halfLife": "30s", "zScore": int64(4), "minRps": 2.5},
				"responses": map[string]any{"rate": "quarantine"},
			}),
			check: func(t *testing.T, s *policies.Set, _ *policies.MeshSettingsSpec) {
				if r := s.AnomalyProfiles[0].Spec.Rate; r.ZScore != 4 || r.MinRPS != 2.5 {
					t.Errorf("rate = %+v", r)
				}
			},
		},
		{
			name: "mesh settings come back apart",
			obj:  unstructuredObj("MeshSettings", "istio-system", "mesh", map[string]any{"rootNamespace": "istio-system", "trustDomain": "example.org"}),
			check: func(t *testing.T, s *policies.Set, settings *policies.MeshSettingsSpec) {
				if settings == nil || settings.TrustDomain != "example.org" {
					t.Errorf("settings = %+v", settings)
				}
			},
		},
		{name: "unknown field", obj: unstructuredObj("Quarantine", "ns", "q", map[string]any{"identity": "spiffe://td/x", "expires": "soon"}), wantErr: `unknown field "expires"`},
		{name: "wrong type", obj: unstructuredObj("DefaultDeny", "ns", "d", map[string]any{"workloads": "spiffe://td/x"}), wantErr: "cannot unmarshal"},
		{name: "missing spec", obj: unstructuredObj("TrafficBaseline", "ns", "b", nil), wantErr: "spec: missing"},
		{name: "unknown kind", obj: unstructuredObj("Firewall", "ns", "f", map[string]any{}), wantErr: `kind "Firewall"`},
		{
			name: "wrong group",
			obj: func() *unstructured.Unstructured {
				u := unstructuredObj("Quarantine", "ns", "q", map[string]any{"identity": "spiffe://td/x"})
				u.SetAPIVersion("meshguard.dev/v2")
				return u
			}(),
			wantErr: "apiVersion",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s policies.Set
			settings, err := addMeshguard(&s, tt.obj)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, &s, settings)
		})
	}
}

func TestFailClosedMeshguard(t *testing.T) {
	cause := errors.New("bad")
	tests := []struct {
		name string
		obj  *unstructured.Unstructured
		want bool
	}{
		{"deny identity policy", unstructuredObj("IdentityPolicy", "ns", "p", map[string]any{"action": "DENY", "workloads": []any{"spiffe://td/a"}, "rules": "garbage"}), true},
		{"allow identity policy", unstructuredObj("IdentityPolicy", "ns", "p", map[string]any{"action": "ALLOW", "rules": "garbage"}), false},
		{"default deny", unstructuredObj("DefaultDeny", "ns", "d", map[string]any{"workloads": 3}), true},
		{"route override", unstructuredObj("RouteOverride", "ns", "r", map[string]any{"route": 1}), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s policies.Set
			if got := failClosedMeshguard(&s, tt.obj, cause); got != tt.want {
				t.Fatalf("failClosed = %v, want %v", got, tt.want)
			}
			if !tt.want {
				return
			}
			switch {
			case len(s.IdentityPolicies) == 1:
				p := s.IdentityPolicies[0]
				if p.Spec.Action != "DENY" || p.Spec.Mode != policies.ModeEnforce || len(p.Spec.Rules) != 1 || p.Spec.Workloads[0] != "spiffe://td/a" {
					t.Errorf("stand-in = %+v", p.Spec)
				}
			case len(s.DefaultDenies) == 1:
				if d := s.DefaultDenies[0]; d.Spec.Mode != policies.ModeEnforce || len(d.Spec.Workloads) != 0 {
					t.Errorf("stand-in = %+v", d.Spec)
				}
			default:
				t.Fatalf("no stand-in in %+v", s)
			}
		})
	}
}
