package policies

import (
	"fmt"
	"slices"
	"time"

	"github.com/meshguard/meshguard/policies/internal/strictjson"
)

// API groups and versions accepted in documents.
const (
	APIVersionIstioV1      = "security.istio.io/v1"
	APIVersionIstioV1beta1 = "security.istio.io/v1beta1"
	APIVersionMeshguard    = "meshguard.dev/v1alpha1"
)

// Kinds accepted in documents.
const (
	KindAuthorizationPolicy = "AuthorizationPolicy" // Istio, both versions
	// KindRequestAuthentication is Istio's RequestAuthentication, both versions.
	KindRequestAuthentication = "RequestAuthentication"
	KindIdentityPolicy        = "IdentityPolicy"  // meshguard: rules by SPIFFE ID pattern
	KindDefaultDeny           = "DefaultDeny"     // meshguard: allow-nothing unless an ALLOW matches
	KindRouteOverride         = "RouteOverride"   // meshguard: per Envoy route tuning
	KindTrafficBaseline       = "TrafficBaseline" // meshguard: allowed service-graph edges
	KindAnomalyProfile        = "AnomalyProfile"  // meshguard: detectors, thresholds, responses
	KindQuarantine            = "Quarantine"      // meshguard: identities denied mesh-wide
	KindMeshSettings          = "MeshSettings"    // meshguard: root namespace, path normalization
)

// Location is where a document or field came from. It is empty for
// documents that did not come from a file (bundles, the Kubernetes API).
type Location struct {
	File   string `json:"file,omitempty"`
	Line   int    `json:"line,omitempty"`
	Column int    `json:"column,omitempty"`
}

// ObjectMeta is the subset of Kubernetes object metadata meshguard reads.
type ObjectMeta struct {
	Name        string            `json:"name"`
	Namespace   string            `json:"namespace,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// ----- Istio AuthorizationPolicy (security.istio.io/v1, v1beta1) -----

// AuthorizationPolicy is Istio's AuthorizationPolicy, field for field.
type AuthorizationPolicy struct {
	APIVersion string                  `json:"apiVersion"`
	Kind       string                  `json:"kind"`
	Metadata   ObjectMeta              `json:"metadata"`
	Spec       AuthorizationPolicySpec `json:"spec"`
	Loc        Location                `json:"-"`
}

// AuthorizationPolicySpec mirrors istio.security.v1beta1.AuthorizationPolicy.
type AuthorizationPolicySpec struct {
	Selector   *WorkloadSelector       `json:"selector,omitempty"`
	TargetRef  *PolicyTargetReference  `json:"targetRef,omitempty"` // deprecated by Istio in favour of targetRefs
	TargetRefs []PolicyTargetReference `json:"targetRefs,omitempty"`
	Rules      []Rule                  `json:"rules,omitempty"`
	Action     string                  `json:"action,omitempty"` // ALLOW (default), DENY, AUDIT, CUSTOM
	Provider   *ExtensionProvider      `json:"provider,omitempty"`
}

// WorkloadSelector selects workloads by label.
type WorkloadSelector struct {
	MatchLabels map[string]string `json:"matchLabels,omitempty"`
}

// PolicyTargetReference names a Gateway, Service or ServiceEntry.
type PolicyTargetReference struct {
	Group     string `json:"group,omitempty"`
	Kind      string `json:"kind"`
	Name      string `json:"name"`
	Namespace string `json:"namespace,omitempty"`
}

// ExtensionProvider names the provider of a CUSTOM policy.
type ExtensionProvider struct {
	Name string `json:"name"`
}

// Rule matches when any From matches (or none is given), any To matches (or
// none is given) and every When matches.
type Rule struct {
	From []RuleFrom  `json:"from,omitempty"`
	To   []RuleTo    `json:"to,omitempty"`
	When []Condition `json:"when,omitempty"`
}

// RuleFrom wraps a Source.
type RuleFrom struct {
	Source Source `json:"source"`
}

// Source is who sends the request. Fields are ANDed, values within a field
// are ORed. Principals, namespaces, service accounts and trust domains are
// the mTLS peer's (Attributes.Peer), as in Istio; request principals are the
// request's validated token's.
type Source struct {
	Principals           []string `json:"principals,omitempty"`
	NotPrincipals        []string `json:"notPrincipals,omitempty"`
	RequestPrincipals    []string `json:"requestPrincipals,omitempty"`
	NotRequestPrincipals []string `json:"notRequestPrincipals,omitempty"`
	Namespaces           []string `json:"namespaces,omitempty"`
	NotNamespaces        []string `json:"notNamespaces,omitempty"`
	IPBlocks             []string `json:"ipBlocks,omitempty"`
	NotIPBlocks          []string `json:"notIpBlocks,omitempty"`
	RemoteIPBlocks       []string `json:"remoteIpBlocks,omitempty"`
	NotRemoteIPBlocks    []string `json:"notRemoteIpBlocks,omitempty"`
	// ServiceAccounts are "namespace/name", or "name" in the policy's
	// namespace; they cannot be combined with principals or namespaces.
	ServiceAccounts    []string `json:"serviceAccounts,omitempty"`
	NotServiceAccounts []string `json:"notServiceAccounts,omitempty"`
	TrustDomains       []string `json:"trustDomains,omitempty"`
	NotTrustDomains    []string `json:"notTrustDomains,omitempty"`
}

// RuleTo wraps an Operation.
type RuleTo struct {
	Operation Operation `json:"operation"`
}

// Operation is what the request asks for.
type Operation struct {
	Hosts      []string `json:"hosts,omitempty"`
	NotHosts   []string `json:"notHosts,omitempty"`
	Ports      []string `json:"ports,omitempty"`
	NotPorts   []string `json:"notPorts,omitempty"`
	Methods    []string `json:"methods,omitempty"`
	NotMethods []string `json:"notMethods,omitempty"`
	Paths      []string `json:"paths,omitempty"`
	NotPaths   []string `json:"notPaths,omitempty"`
}

// Condition is one `when` entry: Key is one of Istio's documented keys.
type Condition struct {
	Key       string   `json:"key"`
	Values    []string `json:"values,omitempty"`
	NotValues []string `json:"notValues,omitempty"`
}

// ----- Istio RequestAuthentication (security.istio.io/v1, v1beta1) -----

// RequestAuthentication is Istio's RequestAuthentication, field for field:
// the end-user JWTs the selected workloads accept. A token found where one
// of its rules looks must be valid (or the request is refused); a request
// without one is not refused. Enforcement points that can verify tokens
// (meshguard's authz server) apply it; what it validates feeds
// requestPrincipals and the request.auth.* conditions.
type RequestAuthentication struct {
	APIVersion string                    `json:"apiVersion"`
	Kind       string                    `json:"kind"`
	Metadata   ObjectMeta                `json:"metadata"`
	Spec       RequestAuthenticationSpec `json:"spec"`
	Loc        Location                  `json:"-"`
}

// RequestAuthenticationSpec mirrors istio.security.v1beta1.RequestAuthentication.
type RequestAuthenticationSpec struct {
	Selector   *WorkloadSelector       `json:"selector,omitempty"`
	TargetRef  *PolicyTargetReference  `json:"targetRef,omitempty"` // deprecated by Istio in favour of targetRefs
	TargetRefs []PolicyTargetReference `json:"targetRefs,omitempty"`
	JWTRules   []JWTRule               `json:"jwtRules,omitempty"`
}

// JWTRule mirrors istio.security.v1beta1.JWTRule: one issuer, where its
// keys are, where its tokens are found and what a valid one adds to the
// request.
type JWTRule struct {
	Issuer    string   `json:"issuer,omitempty"`
	Audiences []string `json:"audiences,omitempty"`
	// JWKSURI is where the key set is fetched; JWKSURIAlias is the same
	// field under the name Istio's CRD also accepts (jwks_uri). JWKS is an
	// inline key set. With none of them, the key set is found by OpenID
	// discovery from the issuer.
	JWKSURI      string `json:"jwksUri,omitempty"`
	JWKSURIAlias string `json:"jwks_uri,omitempty"`
	JWKS         string `json:"jwks,omitempty"`
	// FromHeaders, FromParams and FromCookies are where tokens are found;
	// with none, the Authorization header's Bearer token and the
	// access_token query parameter.
	FromHeaders           []JWTHeader     `json:"fromHeaders,omitempty"`
	FromParams            []string        `json:"fromParams,omitempty"`
	FromCookies           []string        `json:"fromCookies,omitempty"`
	OutputPayloadToHeader string          `json:"outputPayloadToHeader,omitempty"`
	ForwardOriginalToken  bool            `json:"forwardOriginalToken,omitempty"`
	OutputClaimToHeaders  []ClaimToHeader `json:"outputClaimToHeaders,omitempty"`
	// Timeout bounds a key set fetch (a duration such as "5s"; default 5s).
	Timeout              string   `json:"timeout,omitempty"`
	SpaceDelimitedClaims []string `json:"spaceDelimitedClaims,omitempty"`
}

// JWTHeader is a header a token is read from; Prefix (such as "Bearer ")
// is stripped first, and a value without it holds no token.
type JWTHeader struct {
	Name   string `json:"name"`
	Prefix string `json:"prefix,omitempty"`
}

// ClaimToHeader copies a claim of a valid token into a request header.
type ClaimToHeader struct {
	Header string `json:"header"`
	Claim  string `json:"claim"`
}

// ----- meshguard.dev/v1alpha1 -----

// Mode is an enforcement mode.
type Mode string

// UnmarshalJSON accepts a string, and also false for "off": YAML 1.1
// readers (kubectl, sigs.k8s.io/yaml) turn an unquoted off into false.
func (m *Mode) UnmarshalJSON(b []byte) error {
	if string(b) == "false" {
		*m = ModeOff
		return nil
	}
	var s string
	d := strictjson.NewDecoder(b)
	empty := d.EOF()
	d.String(&s, "string")
	d.Finish("the mode")
	if empty || d.Err() != nil {
		return fmt.Errorf("mode: want a string (enforce, dry-run, off), got %s", b)
	}
	*m = Mode(s)
	return nil
}

// Enforcement modes. The zero value means "inherit" (enforce at the top).
// decodeJSON is UnmarshalJSON for the generated decoders.
func (m *Mode) decodeJSON(d *strictjson.Decoder) {
	switch {
	case d.IsFalse():
		*m = ModeOff
	case d.Null():
		*m = ""
	default:
		var s string
		raw := d.Raw()
		if d.Err() != nil {
			return
		}
		if raw[0] != '"' {
			d.Fail(fmt.Errorf("mode: want a string (enforce, dry-run, off), got %s", raw))
			return
		}
		strictjson.NewDecoder(raw).String(&s, "string")
		*m = Mode(s)
	}
}

const (
	ModeEnforce Mode = "enforce"
	ModeDryRun  Mode = "dry-run"
	ModeOff     Mode = "off"
)

// IdentityPolicy expresses what Istio cannot: workloads and callers chosen by
// SPIFFE ID pattern, JWT-SVID requirements, routes by Envoy route name and an
// enforcement mode per policy and per rule.
type IdentityPolicy struct {
	APIVersion string             `json:"apiVersion"`
	Kind       string             `json:"kind"`
	Metadata   ObjectMeta         `json:"metadata"`
	Spec       IdentityPolicySpec `json:"spec"`
	Loc        Location           `json:"-"`
}

// IdentityPolicySpec: Workloads are SPIFFE ID patterns of the destination
// workloads; empty means every workload of the policy's namespace (or of the
// mesh when the policy lives in the root namespace).
type IdentityPolicySpec struct {
	Workloads []string       `json:"workloads,omitempty"`
	Action    string         `json:"action,omitempty"` // ALLOW (default), DENY, AUDIT
	Mode      Mode           `json:"mode,omitempty"`
	Rules     []IdentityRule `json:"rules,omitempty"`
}

// IdentityRule matches when every non-empty part matches.
type IdentityRule struct {
	Name string `json:"name,omitempty"`
	Mode Mode   `json:"mode,omitempty"`
	// From: callers by SPIFFE ID pattern (exact ID, spiffe://td for a whole
	// trust domain, or path-segment globs such as spiffe://td/ns/*/sa/web).
	From []IdentitySource `json:"from,omitempty"`
	To   []IdentityTarget `json:"to,omitempty"`
	When []Condition      `json:"when,omitempty"`
	JWT  *JWTRequirement  `json:"jwt,omitempty"`
}

// IdentitySource selects callers.
type IdentitySource struct {
	IDs          []string `json:"ids,omitempty"`
	NotIDs       []string `json:"notIds,omitempty"`
	TrustDomains []string `json:"trustDomains,omitempty"`
}

// IdentityTarget selects operations; Routes are Envoy route names.
type IdentityTarget struct {
	Routes     []string `json:"routes,omitempty"`
	Hosts      []string `json:"hosts,omitempty"`
	Ports      []string `json:"ports,omitempty"`
	Methods    []string `json:"methods,omitempty"`
	NotMethods []string `json:"notMethods,omitempty"`
	Paths      []string `json:"paths,omitempty"`
	NotPaths   []string `json:"notPaths,omitempty"`
}

// JWTRequirement requires a validated JWT-SVID on the request.
type JWTRequirement struct {
	Audiences    []string         `json:"audiences,omitempty"`    // at least one must be in the token's aud
	TrustDomains []string         `json:"trustDomains,omitempty"` // the token's subject trust domain
	Subjects     []string         `json:"subjects,omitempty"`     // SPIFFE ID patterns of the token subject
	Claims       []ClaimCondition `json:"claims,omitempty"`
}

// ClaimCondition matches a claim (nested with dots: "groups", "org.team").
type ClaimCondition struct {
	Name   string   `json:"name"`
	Values []string `json:"values"`
}

// DefaultDeny makes the selected workloads deny every request that no ALLOW
// policy admits (Istio's allow-nothing, with its own reason code).
type DefaultDeny struct {
	APIVersion string          `json:"apiVersion"`
	Kind       string          `json:"kind"`
	Metadata   ObjectMeta      `json:"metadata"`
	Spec       DefaultDenySpec `json:"spec"`
	Loc        Location        `json:"-"`
}

// DefaultDenySpec: Workloads are SPIFFE ID patterns; empty means the whole
// namespace (or mesh, in the root namespace).
type DefaultDenySpec struct {
	Workloads []string `json:"workloads,omitempty"`
	Mode      Mode     `json:"mode,omitempty"`
}

// RouteOverride tunes one Envoy route, by route name.
type RouteOverride struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Metadata   ObjectMeta        `json:"metadata"`
	Spec       RouteOverrideSpec `json:"spec"`
	Loc        Location          `json:"-"`
}

// RouteOverrideSpec: Mode overrides the mode of every decision on the route;
// Rules are extra rules evaluated with Action for requests on the route;
// AllowUnsafePaths opts the route out of denying ambiguous paths (DENY rules
// still hold for every reading of the path); Anomaly overrides thresholds.
type RouteOverrideSpec struct {
	Route            string            `json:"route"`
	Mode             Mode              `json:"mode,omitempty"`
	Action           string            `json:"action,omitempty"`
	Rules            []IdentityRule    `json:"rules,omitempty"`
	AllowUnsafePaths bool              `json:"allowUnsafePaths,omitempty"`
	DisableExtAuthz  bool              `json:"disableExtAuthz,omitempty"`
	Anomaly          *AnomalyOverrides `json:"anomaly,omitempty"`
}

// AnomalyOverrides replace anomaly thresholds on one route.
type AnomalyOverrides struct {
	Profile   string   `json:"profile,omitempty"`
	RateZ     *float64 `json:"rateZ,omitempty"`
	MinRPS    *float64 `json:"minRps,omitempty"`
	ErrorRate *float64 `json:"errorRatio,omitempty"`
	Response  string   `json:"response,omitempty"`
}

// Baseline modes.
const (
	BaselineLearn   = "learn"
	BaselineShadow  = "shadow"
	BaselineEnforce = "enforce"
)

// TrafficBaseline lists the edges of the service graph that are expected.
type TrafficBaseline struct {
	APIVersion string              `json:"apiVersion"`
	Kind       string              `json:"kind"`
	Metadata   ObjectMeta          `json:"metadata"`
	Spec       TrafficBaselineSpec `json:"spec"`
	Loc        Location            `json:"-"`
}

// TrafficBaselineSpec: Mode is learn (record), shadow (report unknown edges)
// or enforce (deny unknown edges).
type TrafficBaselineSpec struct {
	Mode  string `json:"mode"`
	Edges []Edge `json:"edges,omitempty"`
}

// Edge is source identity → destination service → routes.
type Edge struct {
	Source      string   `json:"source"`           // SPIFFE ID pattern
	Destination string   `json:"destination"`      // service name (host without port)
	Routes      []string `json:"routes,omitempty"` // Envoy route names; empty = any
}

// AnomalyProfile configures detectors and what to do when they fire.
type AnomalyProfile struct {
	APIVersion string             `json:"apiVersion"`
	Kind       string             `json:"kind"`
	Metadata   ObjectMeta         `json:"metadata"`
	Spec       AnomalyProfileSpec `json:"spec"`
	Loc        Location           `json:"-"`
}

// AnomalyProfileSpec: Workloads are SPIFFE ID patterns of the callers it
// watches (empty: all).
type AnomalyProfileSpec struct {
	Workloads   []string             `json:"workloads,omitempty"`
	Rate        *RateDetector        `json:"rate,omitempty"`
	Errors      *ErrorDetector       `json:"errors,omitempty"`
	Enumeration *EnumerationDetector `json:"enumeration,omitempty"`
	Egress      *EgressDetector      `json:"egress,omitempty"`
	Lateral     *LateralDetector     `json:"lateral,omitempty"`
	// Responses maps a detector name (rate, errors, enumeration, egress,
	// lateral) to a response: log, count, rate-limit, block, quarantine.
	Responses map[string]string `json:"responses,omitempty"`
	// QuarantineFor is how long a quarantine it triggers lasts (Go duration).
	QuarantineFor string `json:"quarantineFor,omitempty"`
	// Correlation turns on the control plane's correlation of what several
	// sidecars report about a caller this profile watches; absent: off.
	Correlation *Correlation `json:"correlation,omitempty"`
}

// Correlation defaults and bounds.
const (
	DefaultCorrelationWindow          = time.Minute
	MaxCorrelationWindow              = time.Hour
	DefaultCorrelationMaxDestinations = 3
)

// Settings returns the correlation's window, maximum and response with the
// defaults filled in. The values must have passed compilation.
func (c *Correlation) Settings() (window time.Duration, maxDestinations int, response string) {
	window, maxDestinations, response = DefaultCorrelationWindow, DefaultCorrelationMaxDestinations, "quarantine"
	if d, err := time.ParseDuration(c.Window); err == nil && d > 0 {
		window = min(d, MaxCorrelationWindow)
	}
	if c.MaxDestinations > 0 {
		maxDestinations = c.MaxDestinations
	}
	if c.Response != "" {
		response = c.Response
	}
	return window, maxDestinations, response
}

// Correlation: the control plane puts together the reports about one
// source identity from every sidecar (the inbound sides of the
// destinations it calls and its own outbound side) and every control plane
// replica. Reports count when they are about the source: an anomaly, or an
// edge that a shadow or enforce TrafficBaseline does not list.
type Correlation struct {
	Window string `json:"window,omitempty"` // default 1m, at most 1h
	// MaxDestinations: reports from more distinct destinations than this
	// within Window are one fan-out finding (default 3).
	MaxDestinations int `json:"maxDestinations,omitempty"`
	// Response to a fan-out finding: log or quarantine (default quarantine).
	Response string `json:"response,omitempty"`
}

// RateDetector: decayed EWMA of the request rate and its variance.
type RateDetector struct {
	HalfLife string  `json:"halfLife,omitempty"` // Go duration, default 30s
	ZScore   float64 `json:"zScore,omitempty"`   // default 4
	MinRPS   float64 `json:"minRps,omitempty"`   // minimum-volume floor, default 5
}

// ErrorDetector: ratios of error classes per window.
type ErrorDetector struct {
	Window        string   `json:"window,omitempty"`        // default 10s
	MinRequests   int      `json:"minRequests,omitempty"`   // default 20
	AuthRatio     float64  `json:"authRatio,omitempty"`     // 401/403, default 0.5
	NotFoundRatio float64  `json:"notFoundRatio,omitempty"` // 404, default 0.5
	ErrorRatio    float64  `json:"errorRatio,omitempty"`    // 4xx/5xx, default 0.8
	RareMethods   []string `json:"rareMethods,omitempty"`   // default TRACE, CONNECT, OPTIONS, PROPFIND
}

// EnumerationDetector: distinct paths and destinations per window.
type EnumerationDetector struct {
	Window          string `json:"window,omitempty"`          // default 10s
	MaxPaths        int    `json:"maxPaths,omitempty"`        // default 50, at most MaxEnumerationPaths
	MaxDestinations int    `json:"maxDestinations,omitempty"` // default 10, at most MaxEnumerationDestinations
}

// DefaultAnomalyProfile names the built-in profile of a set without
// AnomalyProfiles: every detector, each with the "log" response.
const DefaultAnomalyProfile = "default"

// The enumeration detector counts distinct paths and destinations in
// fixed-size sketches; a limit above these would never be reached
// accurately, so the compiler refuses it.
const (
	MaxEnumerationPaths        = 512
	MaxEnumerationDestinations = 128
)

// EgressDetector: sensitive destinations (Kubernetes API, cloud metadata).
type EgressDetector struct {
	Destinations []string `json:"destinations,omitempty"` // hosts or IPs; defaults cover k8s API and metadata
	AllowedIDs   []string `json:"allowedIds,omitempty"`   // SPIFFE ID patterns allowed to reach them
}

// LateralDetector: unknown edges against the TrafficBaseline.
type LateralDetector struct {
	MaxNewEdges int `json:"maxNewEdges,omitempty"` // per window, default 3
}

// Quarantine denies every request from an identity mesh-wide until it expires
// or is released.
type Quarantine struct {
	APIVersion string         `json:"apiVersion"`
	Kind       string         `json:"kind"`
	Metadata   ObjectMeta     `json:"metadata"`
	Spec       QuarantineSpec `json:"spec"`
	Loc        Location       `json:"-"`
}

// QuarantineSpec: Identity is an exact SPIFFE ID; ExpiresAt is RFC 3339
// (empty: until released).
type QuarantineSpec struct {
	Identity  string `json:"identity"`
	Reason    string `json:"reason,omitempty"`
	ExpiresAt string `json:"expiresAt,omitempty"`
	CreatedBy string `json:"createdBy,omitempty"`
}

// Path normalization options, as Istio's meshConfig.pathNormalization.
const (
	NormalizationBase                  = "BASE"
	NormalizationMergeSlashes          = "MERGE_SLASHES"
	NormalizationDecodeAndMergeSlashes = "DECODE_AND_MERGE_SLASHES"
)

// MeshSettings holds mesh-wide settings. At most one per set.
type MeshSettings struct {
	APIVersion string           `json:"apiVersion"`
	Kind       string           `json:"kind"`
	Metadata   ObjectMeta       `json:"metadata"`
	Spec       MeshSettingsSpec `json:"spec"`
	Loc        Location         `json:"-"`
}

// MeshSettingsSpec mirrors what meshguard reads of Istio's MeshConfig.
// RootNamespace defaults to istio-system. TrustDomain (default
// cluster.local) and TrustDomainAliases are the mesh's own trust domains:
// "cluster.local" and each of them in an Istio principal or trust domain
// means all of them. ExtensionProviders names the providers CUSTOM policies
// may use (empty: not declared, not checked); MultipleCustomProviders lets a
// workload have CUSTOM policies of several providers (Istio's
// PILOT_ENABLE_MULTIPLE_CUSTOM_AUTHZ_PROVIDERS).
type MeshSettingsSpec struct {
	RootNamespace           string   `json:"rootNamespace,omitempty"`
	TrustDomain             string   `json:"trustDomain,omitempty"`
	PathNormalization       string   `json:"pathNormalization,omitempty"`
	TrustDomainAliases      []string `json:"trustDomainAliases,omitempty"`
	ExtensionProviders      []string `json:"extensionProviders,omitempty"`
	MultipleCustomProviders bool     `json:"multipleCustomProviders,omitempty"`
}

// IsZero reports whether the settings set nothing.
func (m *MeshSettingsSpec) IsZero() bool { return m.Equal(&MeshSettingsSpec{}) }

// Equal reports whether two settings say the same (lists in order).
func (m *MeshSettingsSpec) Equal(o *MeshSettingsSpec) bool {
	return m.RootNamespace == o.RootNamespace && m.TrustDomain == o.TrustDomain &&
		m.PathNormalization == o.PathNormalization && m.MultipleCustomProviders == o.MultipleCustomProviders &&
		slices.Equal(m.TrustDomainAliases, o.TrustDomainAliases) && slices.Equal(m.ExtensionProviders, o.ExtensionProviders)
}

// Set is a validated collection of documents: what a Bundle carries.
type Set struct {
	Settings              MeshSettingsSpec      `json:"settings"`
	AuthorizationPolicies []AuthorizationPolicy `json:"authorizationPolicies,omitempty"`
	// RequestAuthentications are Istio's, like AuthorizationPolicies.
	RequestAuthentications []RequestAuthentication `json:"requestAuthentications,omitempty"`
	IdentityPolicies       []IdentityPolicy        `json:"identityPolicies,omitempty"`
	DefaultDenies          []DefaultDeny           `json:"defaultDenies,omitempty"`
	RouteOverrides         []RouteOverride         `json:"routeOverrides,omitempty"`
	TrafficBaselines       []TrafficBaseline       `json:"trafficBaselines,omitempty"`
	AnomalyProfiles        []AnomalyProfile        `json:"anomalyProfiles,omitempty"`
	Quarantines            []Quarantine            `json:"quarantines,omitempty"`
}

// EachObject calls fn with the kind and metadata of every object of the
// set, kind by kind in the order of the fields above (Settings is not an
// object).
func (s *Set) EachObject(fn func(kind string, m ObjectMeta)) {
	for i := range s.AuthorizationPolicies {
		fn(KindAuthorizationPolicy, s.AuthorizationPolicies[i].Metadata)
	}
	for i := range s.RequestAuthentications {
		fn(KindRequestAuthentication, s.RequestAuthentications[i].Metadata)
	}
	for i := range s.IdentityPolicies {
		fn(KindIdentityPolicy, s.IdentityPolicies[i].Metadata)
	}
	for i := range s.DefaultDenies {
		fn(KindDefaultDeny, s.DefaultDenies[i].Metadata)
	}
	for i := range s.RouteOverrides {
		fn(KindRouteOverride, s.RouteOverrides[i].Metadata)
	}
	for i := range s.TrafficBaselines {
		fn(KindTrafficBaseline, s.TrafficBaselines[i].Metadata)
	}
	for i := range s.AnomalyProfiles {
		fn(KindAnomalyProfile, s.AnomalyProfiles[i].Metadata)
	}
	for i := range s.Quarantines {
		fn(KindQuarantine, s.Quarantines[i].Metadata)
	}
}
