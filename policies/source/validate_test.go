package source

import (
	"os"
	"testing"

	"github.com/meshguard/meshguard/policies"
)

// TestValidatorDiagnosticsLocated runs the validator's checks through the
// reader and asserts that each of its codes lands on the exact line and
// column of the offending YAML value.
func TestValidatorDiagnosticsLocated(t *testing.T) {
	data, err := os.ReadFile("testdata/validate.yaml")
	if err != nil {
		t.Fatal(err)
	}
	_, diags := Parse("in.yaml", data)
	checkDiags(t, diags, []wantDiag{
		// The set requires a JWT-SVID (IdentityPolicy b): principals no
		// longer match a caller that has only one.
		{code: policies.CodeMeaningChanged, line: 6, col: 5, field: "spec.rules[0]"},
		{code: policies.CodeInvalidIPBlock, line: 8, col: 20, field: "spec.rules[0].from[0].source.ipBlocks[0]"},
		{code: policies.CodeMissingField, line: 10, col: 7, field: "spec.rules[0].from[1].source"},
		{code: policies.CodeInvalidPort, line: 13, col: 17, field: "spec.rules[0].to[0].operation.ports[0]"},
		{code: policies.CodeInvalidCondition, line: 15, col: 12, field: "spec.rules[0].when[0].key"},
		{code: policies.CodeInvalidAction, line: 22, col: 11, field: "spec.action"},
		{code: policies.CodeInvalidMode, line: 28, col: 9, field: "spec.mode"},
		{code: policies.CodeInvalidPattern, line: 32, col: 13, field: "spec.rules[0].from[0].ids[0]"},
		{code: policies.CodeDuplicateObject, line: 33, col: 11, field: "spec.rules[1].name"},
		{code: policies.CodeMissingField, line: 34, col: 11, field: "spec.rules[1].jwt.audiences"},
		{code: policies.CodeInvalidDuration, line: 40, col: 20, field: "spec.rate.halfLife"},
		{code: policies.CodeInvalidSPIFFEID, line: 46, col: 13, field: "spec.identity"},
		{code: policies.CodeInvalidTime, line: 53, col: 14, field: "spec.expiresAt"},
		{code: policies.CodeInvalidValue, line: 59, col: 22, field: "spec.pathNormalization"},
		{code: policies.CodeInvalidDuration, line: 65, col: 25, field: "spec.correlation.window"},
		{code: policies.CodeInvalidValue, line: 65, col: 46, field: "spec.correlation.maxDestinations"},
		{code: policies.CodeInvalidValue, line: 65, col: 60, field: "spec.correlation.response"},
	})
}
