package policies

import (
	"errors"
	"fmt"
	"strings"
)

// Severity of a Diagnostic.
type Severity uint8

// Severities.
const (
	SeverityError Severity = iota
	SeverityWarning
)

func (s Severity) String() string {
	if s == SeverityWarning {
		return "warning"
	}
	return "error"
}

// Diagnostic is one problem found in a policy set. Code is stable; Field is
// the path of the offending field inside the object (for example
// "spec.rules[0].from[0].source.principals[1]"), which readers of files turn
// into a line.
type Diagnostic struct {
	Severity Severity `json:"severity"`
	Code     string   `json:"code"`
	Message  string   `json:"message"`
	Object   string   `json:"object,omitempty"` // Kind/namespace/name
	Field    string   `json:"field,omitempty"`
	Loc      Location `json:"location"`
}

func (d Diagnostic) String() string {
	var b strings.Builder
	if d.Loc.File != "" {
		b.WriteString(d.Loc.File)
		if d.Loc.Line > 0 {
			fmt.Fprintf(&b, ":%d", d.Loc.Line)
			if d.Loc.Column > 0 {
				fmt.Fprintf(&b, ":%d", d.Loc.Column)
			}
		}
		b.WriteString(": ")
	}
	fmt.Fprintf(&b, "%s[%s]: ", d.Severity, d.Code)
	if d.Object != "" {
		b.WriteString(d.Object)
		if d.Field != "" {
			b.WriteString(" " + d.Field)
		}
		b.WriteString(": ")
	}
	b.WriteString(d.Message)
	return b.String()
}

// Diagnostics is a list of problems.
type Diagnostics []Diagnostic

// Errors returns the errors only.
func (ds Diagnostics) Errors() Diagnostics { return ds.filter(SeverityError) }

// Warnings returns the warnings only.
func (ds Diagnostics) Warnings() Diagnostics { return ds.filter(SeverityWarning) }

func (ds Diagnostics) filter(s Severity) Diagnostics {
	var out Diagnostics
	for _, d := range ds {
		if d.Severity == s {
			out = append(out, d)
		}
	}
	return out
}

// HasErrors reports whether any diagnostic is an error.
func (ds Diagnostics) HasErrors() bool {
	for _, d := range ds {
		if d.Severity == SeverityError {
			return true
		}
	}
	return false
}

// Err returns nil when there is no error, or an error listing every error.
func (ds Diagnostics) Err() error {
	errs := ds.Errors()
	if len(errs) == 0 {
		return nil
	}
	list := make([]error, len(errs))
	for i, d := range errs {
		list[i] = errors.New(d.String())
	}
	return &SetError{Diagnostics: errs, err: errors.Join(list...)}
}

// SetError is returned when a policy set does not validate. It carries every
// error found.
type SetError struct {
	Diagnostics Diagnostics
	err         error
}

func (e *SetError) Error() string {
	return fmt.Sprintf("policies: %d error(s):\n%s", len(e.Diagnostics), e.err.Error())
}

// Diagnostic codes. Stable: add, never rename.
const (
	CodeYAMLSyntax       = "yaml_syntax"
	CodeUnknownField     = "unknown_field"
	CodeUnknownKind      = "unknown_kind"
	CodeMissingField     = "missing_field"
	CodeInvalidValue     = "invalid_value"
	CodeInvalidAction    = "invalid_action"
	CodeInvalidMode      = "invalid_mode"
	CodeInvalidPrincipal = "invalid_principal"
	CodeInvalidSPIFFEID  = "invalid_spiffe_id"
	CodeInvalidPattern   = "invalid_pattern"
	CodeInvalidPath      = "invalid_path"
	CodeInvalidIPBlock   = "invalid_ip_block"
	CodeInvalidPort      = "invalid_port"
	CodeInvalidMethod    = "invalid_method"
	CodeInvalidHost      = "invalid_host"
	CodeInvalidCondition = "invalid_condition"
	CodeInvalidDuration  = "invalid_duration"
	CodeInvalidTime      = "invalid_time"
	CodeDuplicateObject  = "duplicate_object"
	CodeConflict         = "conflicting_fields"
	CodeDeprecated       = "deprecated_field"
	CodeNeverMatches     = "rule_never_matches"
	CodeShadowed         = "rule_shadowed"
	CodeNoEffect         = "no_effect"
	CodeInvalidBundle    = "invalid_bundle"
	CodeBundleHash       = "bundle_hash_mismatch"
	CodeWrongType        = "wrong_type"      // a value of the wrong YAML type (string for a list, ...)
	CodeDuplicateField   = "duplicate_field" // the same key twice in one YAML mapping
	CodeTooLarge         = "input_too_large" // a file or document over the size or alias-expansion limits
	// CodeMeaningChanged warns about a policy that matches differently since
	// meshguard reads Istio's fields as Istio does (peer fields, trust
	// domains, namespaces, hosts, {**}, header presence).
	CodeMeaningChanged = "meaning_changed"
	// CodeCustomProviderDenies warns about CUSTOM policies whose rules deny,
	// as in Istio: an invalid or undeclared provider, or several providers
	// for one workload.
	CodeCustomProviderDenies = "custom_provider_denies"
	// CodeInvalidKeySet: a RequestAuthentication rule's inline jwks is not
	// a JSON Web Key Set (error).
	CodeInvalidKeySet = "invalid_jwks"
	// CodeUnusableKey warns about keys meshguard will not verify a token
	// with (symmetric keys, keys for encryption, unknown algorithms), and
	// about a rule left without any key source: tokens that need them are
	// refused.
	CodeUnusableKey = "unusable_key"
	// CodePrivateKey warns about private key material in an inline jwks, as
	// Istio does: only the public part is used, and the bundle is shipped to
	// every enforcement point.
	CodePrivateKey = "jwks_private_key"
)
