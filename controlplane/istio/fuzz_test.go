package istio

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	securityv1beta1api "istio.io/api/security/v1beta1"
	istiofake "istio.io/client-go/pkg/clientset/versioned/fake"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/meshguard/meshguard/policies"
)

// FuzzConvertAuthorizationPolicy feeds arbitrary AuthorizationPolicy specs
// (as the API server would hand them over) to the converter: it must not
// panic, must keep every rule it converts, and every DENY policy it refuses
// must have a deny-everything stand-in.
func FuzzConvertAuthorizationPolicy(f *testing.F) {
	for _, seed := range []string{
		`{}`,
		`{"action":"DENY","rules":[{"from":[{"source":{"principals":["a/ns/b/sa/c"],"notNamespaces":["x"]}}],"to":[{"operation":{"paths":["/admin*"],"methods":["GET"]}}],"when":[{"key":"request.headers[x]","values":["1"]}]}]}`,
		`{"action":"DENY","rules":[{"from":[{"source":{"serviceAccounts":["ns/sa"]}}]}]}`,
		`{"action":"CUSTOM","provider":{"name":"meshguard"},"rules":[{}]}`,
		`{"selector":{"matchLabels":{"app":"api"}},"rules":[{"to":[{"operation":{"notPorts":["8080"]}}]},{}]}`,
		`{"targetRefs":[{"kind":"Service","name":"api"}],"action":"AUDIT","rules":[{"from":[{"source":{"notTrustDomains":["evil"]}}]}]}`,
		`{"rules":[{"from":[{}],"to":[{}],"when":[{}]}]}`,
	} {
		f.Add([]byte(seed))
	}
	meta := &metav1.ObjectMeta{Name: "p", Namespace: "ns"}
	f.Fuzz(func(t *testing.T, data []byte) {
		var spec securityv1beta1api.AuthorizationPolicy
		if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(data, &spec); err != nil {
			return
		}
		ap, err := convertAuthorizationPolicy(policies.APIVersionIstioV1, meta, &spec)
		if err == nil {
			if len(ap.Spec.Rules) != len(spec.GetRules()) {
				t.Fatalf("%d rules converted from %d", len(ap.Spec.Rules), len(spec.GetRules()))
			}
			if ap.Spec.Action != spec.GetAction().String() {
				t.Fatalf("action %s from %s", ap.Spec.Action, spec.GetAction())
			}
			return
		}
		sub, ok := failClosedAuthorizationPolicy(policies.APIVersionIstioV1, meta, &spec, err)
		if ok != (spec.GetAction() == securityv1beta1api.AuthorizationPolicy_DENY) {
			t.Fatalf("stand-in %v for action %s", ok, spec.GetAction())
		}
		if ok && (sub.Spec.Action != "DENY" || len(sub.Spec.Rules) != 1 || len(sub.Spec.Rules[0].From)+len(sub.Spec.Rules[0].To)+len(sub.Spec.Rules[0].When) != 0) {
			t.Fatalf("stand-in is not deny-everything: %+v", sub.Spec)
		}
	})
}

// FuzzAddMeshguard feeds arbitrary meshguard objects to the strict decoder.
func FuzzAddMeshguard(f *testing.F) {
	for _, seed := range []string{
		`{"apiVersion":"meshguard.dev/v1alpha1","kind":"IdentityPolicy","metadata":{"name":"a","namespace":"b"},"spec":{"action":"DENY","workloads":["spiffe://td/x"],"rules":[{"from":[{"ids":["spiffe://td/*"]}]}]}}`,
		`{"apiVersion":"meshguard.dev/v1alpha1","kind":"DefaultDeny","metadata":{"name":"a"},"spec":{"workloads":7}}`,
		`{"apiVersion":"meshguard.dev/v1alpha1","kind":"Quarantine","metadata":{"name":"a"},"spec":{"identity":"spiffe://td/x","unknown":1}}`,
		`{"apiVersion":"meshguard.dev/v1alpha1","kind":"MeshSettings","metadata":{"name":"m"},"spec":{"trustDomain":"td"}}`,
		`{"apiVersion":"meshguard.dev/v1alpha1","kind":"AnomalyProfile","metadata":{"name":"a"},"spec":{"rate":{"zScore":1e308},"responses":{"rate":"block"}}}`,
		`{"apiVersion":"meshguard.dev/v2","kind":"Quarantine","metadata":{"name":"a"},"spec":{}}`,
		`{"apiVersion":"meshguard.dev/v1alpha1","kind":"TrafficBaseline","metadata":{"name":"a"},"spec":null}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var u unstructured.Unstructured
		if err := u.UnmarshalJSON(data); err != nil {
			return
		}
		var set policies.Set
		settings, err := addMeshguard(&set, &u)
		docs := len(set.IdentityPolicies) + len(set.DefaultDenies) + len(set.RouteOverrides) + len(set.TrafficBaselines) + len(set.AnomalyProfiles) + len(set.Quarantines)
		if err != nil {
			if docs != 0 || settings != nil {
				t.Fatalf("a failed conversion added %d documents", docs)
			}
			var sub policies.Set
			if failClosedMeshguard(&sub, &u, err) {
				for _, p := range sub.IdentityPolicies {
					if p.Spec.Action != "DENY" || p.Spec.Mode != policies.ModeEnforce {
						t.Fatalf("stand-in %+v", p.Spec)
					}
				}
				if len(sub.IdentityPolicies)+len(sub.DefaultDenies) != 1 {
					t.Fatalf("stand-in set %+v", sub)
				}
			}
			return
		}
		if u.GetKind() == policies.KindMeshSettings {
			if settings == nil || docs != 0 {
				t.Fatal("MeshSettings not returned apart")
			}
			return
		}
		if docs != 1 || !strings.HasPrefix(u.GetAPIVersion(), "meshguard.dev/") {
			t.Fatalf("%d documents from one %s object", docs, u.GetKind())
		}
	})
}

// FuzzMeshConfig feeds arbitrary MeshConfig YAML to the reader: it must not
// panic, and what it reads merges with itself and goes through validation
// without a panic.
func FuzzMeshConfig(f *testing.F) {
	f.Add(sampleMesh)
	f.Add("trustDomain: cluster.local")
	f.Add("trustDomainAliases: [a, b]\nextensionProviders: [{name: x}, {name: ''}]")
	f.Add("pathNormalization: {normalization: NONE}\nrootNamespace: mesh")
	f.Add("trustDomain: [x]")
	f.Add("{")
	f.Fuzz(func(t *testing.T, mesh string) {
		got, err := meshSettingsFromConfigMap(meshConfigMap("istio-system", "istio", mesh))
		if err != nil {
			return
		}
		merged, err := mergeMeshSettings(got, got)
		if err != nil || !merged.Equal(&got) {
			t.Fatalf("settings do not merge with themselves: %+v, %v", merged, err)
		}
		_ = policies.Validate(&policies.Set{Settings: got})
	})
}

// FuzzConvertRequestAuthentication feeds arbitrary RequestAuthentication
// specs to the converter and the watcher's acceptance: it must not panic,
// must keep every rule it converts, and whatever fails must leave a
// deny-everything stand-in that validates (so the set is never without it).
func FuzzConvertRequestAuthentication(f *testing.F) {
	for _, seed := range []string{
		`{}`,
		`{"selector":{"matchLabels":{"app":"api"}},"jwtRules":[{"issuer":"https://idp","jwksUri":"https://idp/keys","audiences":["a"],"fromHeaders":[{"name":"x-t","prefix":"B "}],"fromParams":["t"],"outputClaimToHeaders":[{"header":"x-u","claim":"sub"}],"timeout":"1.5s"}]}`,
		`{"targetRefs":[{"kind":"Gateway","name":"gw"}],"jwtRules":[{"issuer":"x","jwks":"{\"keys\":[]}"}]}`,
		`{"targetRefs":[{"kind":"Deployment","name":"x"}],"jwtRules":[{}]}`,
		`{"selector":{"matchLabels":{"*":"x"}},"jwtRules":[{"issuer":"x","jwks":"nope","outputPayloadToHeader":"x-meshguard-a"}]}`,
		`{"jwtRules":[{"issuer":"x","timeout":"-1s"}]}`,
	} {
		f.Add([]byte(seed))
	}
	meta := &metav1.ObjectMeta{Name: "ra", Namespace: "ns"}
	w, err := New(Options{Istio: istiofake.NewSimpleClientset(), Dynamic: fakeDynamic(), Sink: SinkFunc(func(string, policies.Set) error { return nil })})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var spec securityv1beta1api.RequestAuthentication
		if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(data, &spec); err != nil {
			return
		}
		ra, err := convertRequestAuthentication(policies.APIVersionIstioV1, meta, &spec)
		if err == nil && len(ra.Spec.JWTRules) != len(spec.GetJwtRules()) {
			t.Fatalf("%d rules converted from %d", len(ra.Spec.JWTRules), len(spec.GetJwtRules()))
		}
		var set policies.Set
		p := w.acceptRA(&set, gvIstioV1, meta, &spec)
		switch {
		case p.Err == nil && (len(set.RequestAuthentications) != 1 || len(set.AuthorizationPolicies) != 0):
			t.Fatalf("accepted, set %+v", set)
		case p.Err != nil && (!p.FailClosed || len(set.RequestAuthentications) != 0 || len(set.AuthorizationPolicies) != 1):
			t.Fatalf("refused (%v) without a stand-in: %+v", p.Err, set)
		}
		if _, _, err := policies.NewBundle("", set); err != nil {
			t.Fatalf("the set does not compile: %v", err)
		}
	})
}
