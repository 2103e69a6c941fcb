package policies_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/meshguard/meshguard/policies/policytest"
	"github.com/meshguard/meshguard/policies/source"
)

// TestCases runs the data-driven cases in testdata/cases/<name>/: the
// policies of policies.yaml against the requests of cases.yaml.
func TestCases(t *testing.T) {
	dirs, err := filepath.Glob("testdata/cases/*")
	if err != nil || len(dirs) == 0 {
		t.Fatalf("no cases: %v", err)
	}
	for _, dir := range dirs {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			set, diags, err := source.Load(filepath.Join(dir, "policies.yaml"))
			if err != nil || diags.HasErrors() {
				t.Fatalf("load: %v %v", err, diags)
			}
			s := compileSet(t, "cases", set)
			if _, err := os.Stat(filepath.Join(dir, "cases.yaml")); err != nil {
				t.Fatal(err)
			}
			cases, err := policytest.Load(filepath.Join(dir, "cases.yaml"))
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range policytest.Run(s, cases) {
				if !r.Passed() {
					t.Errorf("%s:%d %s: %v %v", r.Case.File, r.Case.Line, r.Case.Name, r.Err, r.Diffs)
				}
			}
		})
	}
}
