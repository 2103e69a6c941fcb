package istio

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"

	securityv1beta1api "istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/meshguard/meshguard/policies"
)

// AnnotationConversionError is set on the fail-closed stand-in that replaces
// a DENY policy, RequestAuthentication or DefaultDeny the watcher could not
// convert; its value is the conversion error. A stand-in's rules deny with
// denied_invalid_policy.
const AnnotationConversionError = policies.AnnotationConversionError

// convertAuthorizationPolicy turns Istio's AuthorizationPolicy (v1 and
// v1beta1 share the spec type) into the model, field for field.
func convertAuthorizationPolicy(apiVersion string, meta *metav1.ObjectMeta, spec *securityv1beta1api.AuthorizationPolicy) (policies.AuthorizationPolicy, error) {
	ap := policies.AuthorizationPolicy{
		APIVersion: apiVersion,
		Kind:       policies.KindAuthorizationPolicy,
		Metadata:   objectMeta(meta),
	}
	if spec == nil {
		return ap, nil // an empty spec is ALLOW with no rules: allow nothing
	}
	action, ok := securityv1beta1api.AuthorizationPolicy_Action_name[int32(spec.GetAction())]
	if !ok {
		return ap, fmt.Errorf("spec.action: unknown value %d", spec.GetAction())
	}
	ap.Spec.Action = action
	if p := spec.GetProvider(); p != nil {
		ap.Spec.Provider = &policies.ExtensionProvider{Name: p.GetName()}
	}
	var err error
	if ap.Spec.Selector, ap.Spec.TargetRef, ap.Spec.TargetRefs, err = convertScope(spec); err != nil {
		return ap, err
	}
	for i, r := range spec.GetRules() {
		rule, err := convertRule(r)
		if err != nil {
			return ap, fmt.Errorf("spec.rules[%d]%w", i, err)
		}
		ap.Spec.Rules = append(ap.Spec.Rules, rule)
	}
	return ap, nil
}

// convertRequestAuthentication turns Istio's RequestAuthentication (v1 and
// v1beta1 share the spec type) into the model, field for field, as a policy
// file holding the same object decodes.
func convertRequestAuthentication(apiVersion string, meta *metav1.ObjectMeta, spec *securityv1beta1api.RequestAuthentication) (policies.RequestAuthentication, error) {
	ra := policies.RequestAuthentication{
		APIVersion: apiVersion,
		Kind:       policies.KindRequestAuthentication,
		Metadata:   objectMeta(meta),
	}
	if spec == nil {
		return ra, nil // no jwtRules: validates no token
	}
	var err error
	if ra.Spec.Selector, ra.Spec.TargetRef, ra.Spec.TargetRefs, err = convertScope(spec); err != nil {
		return ra, err
	}
	for i, r := range spec.GetJwtRules() {
		rule, err := convertJWTRule(r)
		if err != nil {
			return ra, fmt.Errorf("spec.jwtRules[%d]%w", i, err)
		}
		ra.Spec.JWTRules = append(ra.Spec.JWTRules, rule)
	}
	return ra, nil
}

// convertJWTRule converts one jwtRule. A null rule is the empty one, which
// validation refuses (it names neither issuer nor key set). The proto has
// one field for jwksUri and its alias jwks_uri: the API server stores
// either, and the client reads both into it.
func convertJWTRule(r *securityv1beta1api.JWTRule) (policies.JWTRule, error) {
	var out policies.JWTRule
	if r == nil {
		return out, nil
	}
	out.Issuer = r.GetIssuer()
	out.Audiences = r.GetAudiences()
	out.JWKSURI = r.GetJwksUri()
	out.JWKS = r.GetJwks()
	for i, h := range r.GetFromHeaders() {
		if h == nil {
			return out, fmt.Errorf(".fromHeaders[%d]: null entry", i)
		}
		out.FromHeaders = append(out.FromHeaders, policies.JWTHeader{Name: h.GetName(), Prefix: h.GetPrefix()})
	}
	out.FromParams = r.GetFromParams()
	out.FromCookies = r.GetFromCookies()
	out.OutputPayloadToHeader = r.GetOutputPayloadToHeader()
	out.ForwardOriginalToken = r.GetForwardOriginalToken()
	for i, c := range r.GetOutputClaimToHeaders() {
		if c == nil {
			return out, fmt.Errorf(".outputClaimToHeaders[%d]: null entry", i)
		}
		out.OutputClaimToHeaders = append(out.OutputClaimToHeaders, policies.ClaimToHeader{Header: c.GetHeader(), Claim: c.GetClaim()})
	}
	if d := r.GetTimeout(); d != nil {
		if err := d.CheckValid(); err != nil {
			return out, fmt.Errorf(".timeout: %w", err)
		}
		// The model reads a Go duration; the validation then applies
		// Istio's limits (at least 1ms, ms precision).
		out.Timeout = d.AsDuration().String()
	}
	out.SpaceDelimitedClaims = r.GetSpaceDelimitedClaims()
	return out, nil
}

// scoped is what Istio's security objects share: whom they select.
type scoped interface {
	GetSelector() *typev1beta1.WorkloadSelector
	GetTargetRef() *typev1beta1.PolicyTargetReference
	GetTargetRefs() []*typev1beta1.PolicyTargetReference
}

// convertScope converts an object's selector, targetRef and targetRefs. A
// null targetRefs entry is an error; the entries that read are returned
// with it.
func convertScope(spec scoped) (sel *policies.WorkloadSelector, ref *policies.PolicyTargetReference, refs []policies.PolicyTargetReference, err error) {
	if s := spec.GetSelector(); s != nil {
		sel = &policies.WorkloadSelector{MatchLabels: maps.Clone(s.GetMatchLabels())}
	}
	if r := spec.GetTargetRef(); r != nil {
		tr := targetRef(r)
		ref = &tr
	}
	for _, r := range spec.GetTargetRefs() {
		if r == nil {
			err = errors.New("spec.targetRefs: null entry")
			continue
		}
		refs = append(refs, targetRef(r))
	}
	return sel, ref, refs, err
}

func targetRef(r *typev1beta1.PolicyTargetReference) policies.PolicyTargetReference {
	return policies.PolicyTargetReference{
		Group:     r.GetGroup(),
		Kind:      r.GetKind(),
		Name:      r.GetName(),
		Namespace: r.GetNamespace(),
	}
}

// convertRule converts one rule. A null rule, source or operation is the
// empty one, which Istio reads as "matches anything".
func convertRule(r *securityv1beta1api.Rule) (policies.Rule, error) {
	var out policies.Rule
	if r == nil {
		return out, nil
	}
	for _, f := range r.GetFrom() {
		s := f.GetSource()
		out.From = append(out.From, policies.RuleFrom{Source: policies.Source{
			Principals:           s.GetPrincipals(),
			NotPrincipals:        s.GetNotPrincipals(),
			RequestPrincipals:    s.GetRequestPrincipals(),
			NotRequestPrincipals: s.GetNotRequestPrincipals(),
			Namespaces:           s.GetNamespaces(),
			NotNamespaces:        s.GetNotNamespaces(),
			IPBlocks:             s.GetIpBlocks(),
			NotIPBlocks:          s.GetNotIpBlocks(),
			RemoteIPBlocks:       s.GetRemoteIpBlocks(),
			NotRemoteIPBlocks:    s.GetNotRemoteIpBlocks(),
			ServiceAccounts:      s.GetServiceAccounts(),
			NotServiceAccounts:   s.GetNotServiceAccounts(),
			TrustDomains:         s.GetTrustDomains(),
			NotTrustDomains:      s.GetNotTrustDomains(),
		}})
	}
	for _, t := range r.GetTo() {
		op := t.GetOperation()
		out.To = append(out.To, policies.RuleTo{Operation: policies.Operation{
			Hosts:      op.GetHosts(),
			NotHosts:   op.GetNotHosts(),
			Ports:      op.GetPorts(),
			NotPorts:   op.GetNotPorts(),
			Methods:    op.GetMethods(),
			NotMethods: op.GetNotMethods(),
			Paths:      op.GetPaths(),
			NotPaths:   op.GetNotPaths(),
		}})
	}
	for i, c := range r.GetWhen() {
		if c == nil {
			return out, fmt.Errorf(".when[%d]: null condition", i)
		}
		out.When = append(out.When, policies.Condition{Key: c.GetKey(), Values: c.GetValues(), NotValues: c.GetNotValues()})
	}
	return out, nil
}

func objectMeta(m *metav1.ObjectMeta) policies.ObjectMeta {
	return policies.ObjectMeta{
		Name:        m.Name,
		Namespace:   m.Namespace,
		Labels:      maps.Clone(m.Labels),
		Annotations: userAnnotations(m.Annotations),
	}
}

// userAnnotations drops the annotation kubectl keeps the whole last applied
// object in: it would double the bundle's size and change its hash on
// every apply without changing the policy.
func userAnnotations(a map[string]string) map[string]string {
	const lastApplied = "kubectl.kubernetes.io/last-applied-configuration"
	if _, ok := a[lastApplied]; !ok {
		return maps.Clone(a)
	}
	out := make(map[string]string, len(a))
	for k, v := range a {
		if k != lastApplied {
			out[k] = v
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// decodeSpec decodes an unstructured spec strictly into dst: a field the
// model does not know is an error, not silently dropped.
func decodeSpec(u *unstructured.Unstructured, dst any) error {
	raw, ok := u.Object["spec"]
	if !ok || raw == nil {
		return errors.New("spec: missing")
	}
	data, err := json.Marshal(raw)
	if err != nil {
		return fmt.Errorf("spec: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return fmt.Errorf("spec: %w", err)
	}
	return nil
}

// convertedMeta returns the model metadata of a meshguard object.
func convertedMeta(u *unstructured.Unstructured) policies.ObjectMeta {
	return policies.ObjectMeta{
		Name:        u.GetName(),
		Namespace:   u.GetNamespace(),
		Labels:      maps.Clone(u.GetLabels()),
		Annotations: userAnnotations(u.GetAnnotations()),
	}
}

// addMeshguard converts one meshguard.dev object and appends it to set. For
// MeshSettings it returns the spec instead, since a set holds one.
func addMeshguard(set *policies.Set, u *unstructured.Unstructured) (*policies.MeshSettingsSpec, error) {
	if av := u.GetAPIVersion(); av != policies.APIVersionMeshguard {
		return nil, fmt.Errorf("apiVersion %q, want %q", av, policies.APIVersionMeshguard)
	}
	meta := convertedMeta(u)
	kind := u.GetKind()
	switch kind {
	case policies.KindIdentityPolicy:
		var spec policies.IdentityPolicySpec
		if err := decodeSpec(u, &spec); err != nil {
			return nil, err
		}
		set.IdentityPolicies = append(set.IdentityPolicies, policies.IdentityPolicy{APIVersion: policies.APIVersionMeshguard, Kind: kind, Metadata: meta, Spec: spec})
	case policies.KindDefaultDeny:
		var spec policies.DefaultDenySpec
		if err := decodeSpec(u, &spec); err != nil {
			return nil, err
		}
		set.DefaultDenies = append(set.DefaultDenies, policies.DefaultDeny{APIVersion: policies.APIVersionMeshguard, Kind: kind, Metadata: meta, Spec: spec})
	case policies.KindRouteOverride:
		var spec policies.RouteOverrideSpec
		if err := decodeSpec(u, &spec); err != nil {
			return nil, err
		}
		set.RouteOverrides = append(set.RouteOverrides, policies.RouteOverride{APIVersion: policies.APIVersionMeshguard, Kind: kind, Metadata: meta, Spec: spec})
	case policies.KindTrafficBaseline:
		var spec policies.TrafficBaselineSpec
		if err := decodeSpec(u, &spec); err != nil {
			return nil, err
		}
		set.TrafficBaselines = append(set.TrafficBaselines, policies.TrafficBaseline{APIVersion: policies.APIVersionMeshguard, Kind: kind, Metadata: meta, Spec: spec})
	case policies.KindAnomalyProfile:
		var spec policies.AnomalyProfileSpec
		if err := decodeSpec(u, &spec); err != nil {
			return nil, err
		}
		set.AnomalyProfiles = append(set.AnomalyProfiles, policies.AnomalyProfile{APIVersion: policies.APIVersionMeshguard, Kind: kind, Metadata: meta, Spec: spec})
	case policies.KindQuarantine:
		var spec policies.QuarantineSpec
		if err := decodeSpec(u, &spec); err != nil {
			return nil, err
		}
		set.Quarantines = append(set.Quarantines, policies.Quarantine{APIVersion: policies.APIVersionMeshguard, Kind: kind, Metadata: meta, Spec: spec})
	case policies.KindMeshSettings:
		var spec policies.MeshSettingsSpec
		if err := decodeSpec(u, &spec); err != nil {
			return nil, err
		}
		return &spec, nil
	default:
		return nil, fmt.Errorf("kind %q is not a meshguard kind", kind)
	}
	return nil, nil
}

// failClosed returns what stands in for an AuthorizationPolicy the watcher
// could not convert. Leaving out an ALLOW (or AUDIT, or CUSTOM) policy can
// only narrow what is allowed, so those are dropped. Leaving out a DENY
// policy would open what it closed, so it is replaced by a DENY policy with
// the same scope and one empty rule: it denies every request to the
// workloads it selected until it is fixed.
func failClosedAuthorizationPolicy(apiVersion string, meta *metav1.ObjectMeta, spec *securityv1beta1api.AuthorizationPolicy, cause error) (policies.AuthorizationPolicy, bool) {
	if spec == nil || spec.GetAction() != securityv1beta1api.AuthorizationPolicy_DENY {
		return policies.AuthorizationPolicy{}, false
	}
	ap := policies.AuthorizationPolicy{
		APIVersion: apiVersion,
		Kind:       policies.KindAuthorizationPolicy,
		Metadata:   objectMeta(meta),
		Spec: policies.AuthorizationPolicySpec{
			Action: "DENY",
			Rules:  []policies.Rule{{}},
		},
	}
	// The scope as far as it reads (null entries left out): a stand-in
	// that fails to validate with it is widened by the watcher.
	ap.Spec.Selector, ap.Spec.TargetRef, ap.Spec.TargetRefs, _ = convertScope(spec)
	ap.Metadata.Annotations = withAnnotation(ap.Metadata.Annotations, AnnotationConversionError, cause.Error())
	return ap, true
}

// failClosedRequestAuthentication returns what stands in for a
// RequestAuthentication the watcher could not convert or that fails
// validation. Leaving it out would let the tokens it should refuse reach
// the workloads unchecked (without a request principal, but where no
// policy asks for one, a forged token would pass), so it is replaced by a
// DENY AuthorizationPolicy with the same scope and one empty rule: every
// request to the workloads it selected is denied until it is fixed. The
// stand-in's name is the object's kind and name ("RequestAuthentication.
// <name>"): Kubernetes names are lowercase, so it never collides with a
// real AuthorizationPolicy, and a decision's policy reference says which
// object denied. widen drops the scope (the whole namespace; the mesh in
// the root namespace), for when the scope itself is what is invalid.
func failClosedRequestAuthentication(meta *metav1.ObjectMeta, spec *securityv1beta1api.RequestAuthentication, cause error, widen bool) policies.AuthorizationPolicy {
	ap := policies.AuthorizationPolicy{
		APIVersion: policies.APIVersionIstioV1,
		Kind:       policies.KindAuthorizationPolicy,
		Metadata:   objectMeta(meta),
		Spec: policies.AuthorizationPolicySpec{
			Action: "DENY",
			Rules:  []policies.Rule{{}},
		},
	}
	ap.Metadata.Name = StandInName(policies.KindRequestAuthentication, meta.Name)
	ap.Metadata.Annotations = withAnnotation(ap.Metadata.Annotations, AnnotationConversionError, cause.Error())
	if widen || spec == nil {
		return ap
	}
	// The scope as far as it reads (null entries left out): a stand-in
	// that fails to validate with it is widened by the watcher.
	ap.Spec.Selector, ap.Spec.TargetRef, ap.Spec.TargetRefs, _ = convertScope(spec)
	return ap
}

// StandInName is the name of the DENY AuthorizationPolicy that stands in
// for an object of another kind the watcher could not convert.
func StandInName(kind, name string) string { return kind + "." + name }

// failClosedMeshguard is failClosedAuthorizationPolicy for meshguard kinds:
// a DENY IdentityPolicy becomes "deny everything to its workloads" (or to
// the whole namespace when its workloads cannot be read), a DefaultDeny that
// cannot be read covers the whole namespace. Other kinds are dropped.
func failClosedMeshguard(set *policies.Set, u *unstructured.Unstructured, cause error) bool {
	if u.GetAPIVersion() != policies.APIVersionMeshguard {
		return false
	}
	meta := convertedMeta(u)
	meta.Annotations = withAnnotation(meta.Annotations, AnnotationConversionError, cause.Error())
	switch u.GetKind() {
	case policies.KindIdentityPolicy:
		action, _, _ := unstructured.NestedString(u.Object, "spec", "action")
		if action != "DENY" {
			return false
		}
		workloads, _, err := unstructured.NestedStringSlice(u.Object, "spec", "workloads")
		if err != nil {
			workloads = nil
		}
		set.IdentityPolicies = append(set.IdentityPolicies, policies.IdentityPolicy{
			APIVersion: policies.APIVersionMeshguard, Kind: policies.KindIdentityPolicy, Metadata: meta,
			Spec: policies.IdentityPolicySpec{Workloads: workloads, Action: "DENY", Mode: policies.ModeEnforce, Rules: []policies.IdentityRule{{}}},
		})
		return true
	case policies.KindDefaultDeny:
		set.DefaultDenies = append(set.DefaultDenies, policies.DefaultDeny{
			APIVersion: policies.APIVersionMeshguard, Kind: policies.KindDefaultDeny, Metadata: meta,
			Spec: policies.DefaultDenySpec{Mode: policies.ModeEnforce},
		})
		return true
	}
	return false
}

func withAnnotation(a map[string]string, k, v string) map[string]string {
	out := maps.Clone(a)
	if out == nil {
		out = map[string]string{}
	}
	out[k] = v
	return out
}
