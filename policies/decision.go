package policies

// Reason is a stable, machine-readable reason code. Codes are part of the
// product's interface (responses, decision logs, metrics labels): never
// rename one, only add.
type Reason string

// Reason codes.
const (
	ReasonAllowedNoPolicy  Reason = "allowed_no_policy"     // no ALLOW policy applies to the workload
	ReasonAllowedByPolicy  Reason = "allowed_by_policy"     // an ALLOW rule matched
	ReasonAllowedModeOff   Reason = "allowed_mode_off"      // enforcement is off for the route
	ReasonDeniedByPolicy   Reason = "denied_by_policy"      // a DENY rule matched
	ReasonDeniedNoMatch    Reason = "denied_no_allow_match" // ALLOW policies apply, none matched
	ReasonDeniedDefault    Reason = "denied_default_deny"   // a DefaultDeny applies, no ALLOW matched
	ReasonDeniedUnsafePath Reason = "denied_unsafe_path"    // path a backend may read differently
	ReasonDeniedInvalidReq Reason = "denied_invalid_request"
	ReasonDeniedQuarantine Reason = "denied_quarantined"
	ReasonDeniedBaseline   Reason = "denied_unknown_edge"
	ReasonDeniedNoPolicy   Reason = "denied_no_policy_loaded"
	ReasonDeniedNoMTLS     Reason = "denied_mtls_required"
	ReasonDeniedIdentity   Reason = "denied_invalid_identity"
	ReasonDeniedJWT        Reason = "denied_invalid_jwt"
	ReasonDeniedInternal   Reason = "denied_internal_error"
	ReasonDeniedTimeout    Reason = "denied_timeout"
	ReasonDeniedAnomaly    Reason = "denied_anomaly"
	// ReasonDeniedCustomProvider: a CUSTOM rule matched whose provider cannot
	// be used (invalid, not declared, or one of several for the workload):
	// Istio denies what such rules match.
	ReasonDeniedCustomProvider Reason = "denied_custom_provider"
	// ReasonDeniedUnknownTarget: the target workload's namespace is not
	// known (no namespace given, and an ID not of the form
	// /ns/<ns>/sa/<sa>), so the policies that apply to it are not known.
	ReasonDeniedUnknownTarget Reason = "denied_unknown_target"
	ReasonRateLimited         Reason = "rate_limited_anomaly"
	// ReasonDeniedUnresolved: a selector- or targetRef-scoped policy may
	// apply to the target, but the target's labels (or its service and
	// gateway) are unknown to the enforcement point, so whether it applies
	// cannot be decided.
	ReasonDeniedUnresolved Reason = "denied_unresolved_target"
	// ReasonDeniedToken: a token was found where a RequestAuthentication
	// rule of the target reads tokens and it is not valid for any rule
	// (Istio's jwt_authn filter answers 401): malformed, of an unknown
	// issuer, expired or not yet valid, signed by no key of the rule's key
	// set, the key set unavailable.
	ReasonDeniedToken Reason = "denied_invalid_token"
	// ReasonDeniedTokenAudience: the only fault of the token is that none of
	// its audiences is allowed (Istio's jwt_authn filter answers 403).
	ReasonDeniedTokenAudience Reason = "denied_token_audience"
	// ReasonDeniedInvalidPolicy: a fail-closed stand-in matched. The control
	// plane could not convert or validate an object whose absence could open
	// access (a DENY AuthorizationPolicy or IdentityPolicy, a
	// RequestAuthentication) and put a DENY in its place, marked with
	// AnnotationConversionError; the decision's policy names the stand-in.
	ReasonDeniedInvalidPolicy Reason = "denied_invalid_policy"
)

// AnnotationConversionError marks a fail-closed stand-in: the control plane
// sets it, with the conversion or validation error as its value, on the
// DENY it puts in place of an object it could not use. The stand-in's
// rules deny with ReasonDeniedInvalidPolicy.
const AnnotationConversionError = "meshguard.dev/conversion-error"

// Denies reports whether the code is a denial.
func (r Reason) Denies() bool {
	switch r {
	case ReasonAllowedNoPolicy, ReasonAllowedByPolicy, ReasonAllowedModeOff:
		return false
	}
	return true
}

// Action is a policy action.
type Action uint8

// Actions, in evaluation order.
const (
	ActionAllow Action = iota
	ActionDeny
	ActionAudit
	ActionCustom
)

func (a Action) String() string {
	switch a {
	case ActionAllow:
		return "ALLOW"
	case ActionDeny:
		return "DENY"
	case ActionAudit:
		return "AUDIT"
	case ActionCustom:
		return "CUSTOM"
	}
	return "UNKNOWN"
}

// RuleRef names the rule behind a decision: "kind/namespace/name" and the
// rule's index (or name, for meshguard rules that have one).
type RuleRef struct {
	Policy string `json:"policy,omitempty"`
	Rule   string `json:"rule,omitempty"`
}

// IsZero reports whether no rule is referenced.
func (r RuleRef) IsZero() bool { return r.Policy == "" }

// Decision is the engine's answer.
type Decision struct {
	Allowed bool
	Reason  Reason
	// Mode is the mode the deciding rule ran in: enforce, or dry-run when
	// Allowed is true only because the denying rule was in dry-run
	// (WouldDeny is then set and Ref is the rule that would have denied).
	Mode      Mode
	WouldDeny bool
	Ref       RuleRef
	// Audit is set when an AUDIT policy matched; AuditRef names it.
	Audit    bool
	AuditRef RuleRef
	// Custom is the extension provider of a CUSTOM policy that matched: the
	// request must also be allowed by that provider.
	Custom string
	// Version of the snapshot that decided.
	Version string
}

// Deny returns a deny decision with the given reason and no rule.
func Deny(r Reason) Decision { return Decision{Reason: r, Mode: ModeEnforce} }
