package istio

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"

	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	securityv1beta1 "istio.io/client-go/pkg/apis/security/v1beta1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/source"
)

// raFromCluster reads a RequestAuthentication document as the watcher's
// informers hand it over (client-go decodes the API server's JSON into
// istio.io/client-go's type) and converts it.
func raFromCluster(t *testing.T, doc string) (policies.RequestAuthentication, error) {
	t.Helper()
	js, err := yaml.YAMLToJSON([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	var head metav1.TypeMeta
	if err := json.Unmarshal(js, &head); err != nil {
		t.Fatal(err)
	}
	switch head.APIVersion {
	case policies.APIVersionIstioV1:
		var ra securityv1.RequestAuthentication
		if err := json.Unmarshal(js, &ra); err != nil {
			t.Fatal(err)
		}
		return convertRequestAuthentication(head.APIVersion, &ra.ObjectMeta, &ra.Spec)
	case policies.APIVersionIstioV1beta1:
		var ra securityv1beta1.RequestAuthentication
		if err := json.Unmarshal(js, &ra); err != nil {
			t.Fatal(err)
		}
		return convertRequestAuthentication(head.APIVersion, &ra.ObjectMeta, &ra.Spec)
	}
	t.Fatalf("apiVersion %q", head.APIVersion)
	return policies.RequestAuthentication{}, nil
}

// errorsOf lists a set's validation errors as object, field and code.
func errorsOf(set *policies.Set) []string {
	var out []string
	for _, d := range policies.Validate(set).Errors() {
		out = append(out, d.Object+" "+d.Field+" "+d.Code)
	}
	return out
}

// TestConvertRequestAuthenticationAsAFile: a RequestAuthentication read
// from the cluster is the same policy as the same document in a policy
// file: the same scope, the same compiled rules (issuer, audiences, key
// set, token locations, outputs, timeout), and the same validation errors.
func TestConvertRequestAuthenticationAsAFile(t *testing.T) {
	const jwks = `{"keys":[{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0","kid":"k1"}]}`
	tests := []struct {
		name string
		doc  string
		// errs are the validation errors, "" when valid.
		errs string
	}{
		{name: "every field, inline key set", doc: `apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: idp, namespace: shop, labels: {team: a}}
spec:
  selector: {matchLabels: {app: orders}}
  jwtRules:
  - issuer: https://idp.example
    audiences: [orders, "https://orders.example/"]
    jwks: '` + jwks + `'
    fromHeaders: [{name: X-Token, prefix: "Token "}, {name: x-other}]
    fromParams: [tok]
    fromCookies: [session]
    forwardOriginalToken: true
    outputPayloadToHeader: x-jwt-payload
    outputClaimToHeaders: [{header: x-user, claim: sub}, {header: x-group, claim: groups.0}]
    spaceDelimitedClaims: [roles]
  - issuer: other
    jwks: '` + jwks + `'
`},
		{name: "targetRefs, jwksUri, timeout", doc: `apiVersion: security.istio.io/v1beta1
kind: RequestAuthentication
metadata: {name: gw, namespace: ingress}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: public}, {kind: Service, name: api}]
  jwtRules:
  - issuer: https://idp.example
    jwksUri: https://idp.example/keys
    timeout: 1.5s
`},
		{name: "deprecated targetRef, a timeout in ms", doc: `apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: svc, namespace: shop}
spec:
  targetRef: {kind: Service, name: api}
  jwtRules:
  - jwksUri: https://idp.example/keys
    timeout: 250ms
`},
		{name: "no issuer and no key set URI", errs: "RequestAuthentication/shop/bad spec.jwtRules[0].issuer missing_field", doc: `apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: bad, namespace: shop}
spec:
  jwtRules: [{fromParams: [t]}]
`},
		{name: "an inline key set that is not one", errs: "RequestAuthentication/shop/bad spec.jwtRules[0].jwks invalid_jwks", doc: `apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: bad, namespace: shop}
spec:
  jwtRules: [{issuer: x, jwks: "not a key set"}]
`},
		{name: "meshguard's own header as an output", errs: "RequestAuthentication/shop/bad spec.jwtRules[0].outputPayloadToHeader invalid_value", doc: `apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: bad, namespace: shop}
spec:
  jwtRules: [{issuer: x, jwksUri: "https://x/keys", outputPayloadToHeader: x-meshguard-source-id}]
`},
		{name: "a targetRef of a kind Istio does not attach to", errs: "RequestAuthentication/shop/bad spec.targetRefs[0].kind invalid_value", doc: `apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: bad, namespace: shop}
spec:
  targetRefs: [{kind: Deployment, name: api}]
  jwtRules: [{issuer: x, jwksUri: "https://x/keys"}]
`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file, diags := source.Parse("ra.yaml", []byte(tt.doc))
			if len(file.RequestAuthentications) != 1 {
				t.Fatalf("the file holds %d RequestAuthentications: %v", len(file.RequestAuthentications), diags)
			}
			fromFile := file.RequestAuthentications[0]
			fromCluster, err := raFromCluster(t, tt.doc)
			if err != nil {
				t.Fatalf("convert: %v", err)
			}
			cluster := policies.Set{RequestAuthentications: []policies.RequestAuthentication{fromCluster}}
			fileSet := policies.Set{RequestAuthentications: []policies.RequestAuthentication{fromFile}}
			got, want := strings.Join(errorsOf(&cluster), "; "), strings.Join(errorsOf(&fileSet), "; ")
			if got != want || got != tt.errs {
				t.Fatalf("validation errors:\n cluster %q\n file    %q\n want    %q", got, want, tt.errs)
			}
			if fromCluster.APIVersion != fromFile.APIVersion || !reflect.DeepEqual(fromCluster.Metadata, fromFile.Metadata) {
				t.Errorf("header %s %+v, file %s %+v", fromCluster.APIVersion, fromCluster.Metadata, fromFile.APIVersion, fromFile.Metadata)
			}
			if !reflect.DeepEqual(fromCluster.Spec.Selector, fromFile.Spec.Selector) || !reflect.DeepEqual(fromCluster.Spec.TargetRef, fromFile.Spec.TargetRef) ||
				!reflect.DeepEqual(fromCluster.Spec.TargetRefs, fromFile.Spec.TargetRefs) {
				t.Errorf("scope differs:\n cluster %+v\n file    %+v", fromCluster.Spec, fromFile.Spec)
			}
			if tt.errs != "" {
				return
			}
			if got, want := providers(t, cluster), providers(t, fileSet); got != want {
				t.Errorf("compiled rules differ:\n cluster %s\n file    %s", got, want)
			}
		})
	}
}

// providers is a set's compiled jwtRules, printed.
func providers(t *testing.T, set policies.Set) string {
	t.Helper()
	b, _, err := policies.NewBundle("", set)
	if err != nil {
		t.Fatal(err)
	}
	snap, err := policies.Compile(b)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range snap.AllJWTProviders() {
		out = append(out, fmt.Sprintf("%+v", *p))
	}
	if len(out) == 0 {
		t.Fatal("no rule compiled")
	}
	return strings.Join(out, "\n")
}

// TestConvertRequestAuthenticationAlias: the API server stores jwksUri's
// alias jwks_uri as written; it reaches the model as the key set URI.
func TestConvertRequestAuthenticationAlias(t *testing.T) {
	ra, err := raFromCluster(t, `apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: a, namespace: shop}
spec:
  jwtRules: [{issuer: x, jwks_uri: "https://x/keys"}]
`)
	if err != nil {
		t.Fatal(err)
	}
	set := policies.Set{RequestAuthentications: []policies.RequestAuthentication{ra}}
	if got := providers(t, set); !strings.Contains(got, "JWKSURI:https://x/keys") {
		t.Errorf("compiled %s", got)
	}
}

func TestFailClosedRequestAuthentication(t *testing.T) {
	ra, err := raFromCluster(t, `apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: idp, namespace: shop}
spec:
  selector: {matchLabels: {app: orders}}
  jwtRules: [{issuer: x, jwks: "{}"}]
`)
	if err != nil {
		t.Fatal(err)
	}
	meta := &metav1.ObjectMeta{Name: ra.Metadata.Name, Namespace: ra.Metadata.Namespace}
	cause := policies.Validate(&policies.Set{RequestAuthentications: []policies.RequestAuthentication{ra}}).Err()
	if cause == nil {
		t.Fatal("an empty key set validated")
	}
	for _, widen := range []bool{false, true} {
		var js securityv1.RequestAuthentication
		if err := json.Unmarshal([]byte(`{"spec":{"selector":{"matchLabels":{"app":"orders"}},"targetRefs":[{"kind":"Service","name":"api"}]}}`), &js); err != nil {
			t.Fatal(err)
		}
		sub := failClosedRequestAuthentication(meta, &js.Spec, cause, widen)
		if sub.Spec.Action != "DENY" || len(sub.Spec.Rules) != 1 || !reflect.DeepEqual(sub.Spec.Rules[0], policies.Rule{}) {
			t.Errorf("stand-in is not deny-everything: %+v", sub.Spec)
		}
		if sub.Metadata.Name != "RequestAuthentication.idp" || sub.Metadata.Namespace != "shop" || sub.Metadata.Annotations[AnnotationConversionError] == "" {
			t.Errorf("stand-in metadata %+v", sub.Metadata)
		}
		scoped := sub.Spec.Selector != nil && sub.Spec.Selector.MatchLabels["app"] == "orders" && len(sub.Spec.TargetRefs) == 1
		unscoped := sub.Spec.Selector == nil && sub.Spec.TargetRef == nil && len(sub.Spec.TargetRefs) == 0
		if (!widen && !scoped) || (widen && !unscoped) {
			t.Errorf("widen=%v: stand-in scope %+v", widen, sub.Spec)
		}
	}
	// Kubernetes names are lowercase: a stand-in's name is never a real
	// AuthorizationPolicy's.
	if n := StandInName(policies.KindRequestAuthentication, "idp"); strings.ToLower(n) == n {
		t.Errorf("stand-in name %q", n)
	}
}
