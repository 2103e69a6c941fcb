package examples_test

import (
	"testing"

	"github.com/meshguard/meshguard/examples"
	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/policytest"
	"github.com/meshguard/meshguard/policies/source"
)

// TestExamples checks that the example policies are clean (no errors, no
// warnings) and that every example test case passes against them.
func TestExamples(t *testing.T) {
	fsys := examples.FS()
	set, diags, err := source.LoadFS(fsys, "policies")
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range diags {
		t.Errorf("%s", d)
	}
	b, _, err := policies.NewBundle("examples", set)
	if err != nil {
		t.Fatal(err)
	}
	snap, err := policies.Compile(b)
	if err != nil {
		t.Fatal(err)
	}
	cases, err := policytest.LoadFS(fsys, "tests")
	if err != nil {
		t.Fatal(err)
	}
	if len(cases) < 30 {
		t.Fatalf("only %d example cases", len(cases))
	}
	for _, r := range policytest.Run(snap, cases) {
		if !r.Passed() {
			t.Errorf("%s:%d %s: %v %v", r.Case.File, r.Case.Line, r.Case.Name, r.Err, r.Diffs)
		}
	}
	// every kind the demo relies on is present
	if len(set.AuthorizationPolicies) == 0 || len(set.IdentityPolicies) == 0 || len(set.DefaultDenies) == 0 ||
		len(set.RouteOverrides) == 0 || len(set.TrafficBaselines) == 0 || len(set.AnomalyProfiles) == 0 ||
		set.Settings.RootNamespace == "" {
		t.Errorf("examples lack a kind: %+v", set)
	}
}
