package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/meshguard/meshguard/policies/policytest"
)

type testResultJSON struct {
	Name     string       `json:"name"`
	File     string       `json:"file"`
	Line     int          `json:"line"`
	Passed   bool         `json:"passed"`
	Diffs    []string     `json:"diffs,omitempty"`
	Error    string       `json:"error,omitempty"`
	Decision decisionJSON `json:"decision"`
}

type testRunJSON struct {
	Results []testResultJSON `json:"results"`
	Passed  int              `json:"passed"`
	Failed  int              `json:"failed"`
}

func newPolicyTestCmd() *cobra.Command {
	var format, tests string
	var verbose bool
	cmd := &cobra.Command{
		Use:   "test PATH... --tests DIR|FILE",
		Short: "Run YAML test cases (request → expected decision) against the policies",
		Long: `Compile the policies and run every test case of the --tests file or
directory (*.yaml, *.yml, recursively). A case is a request and the decision
expected for it (allowed, reason, policy, rule, mode, wouldDeny, audit,
custom); see docs/policies.md for the format. Prints PASS or FAIL per case
with what differed, and exits 1 when any case fails.`,
		Example:           `  meshguard policy test examples/policies --tests examples/tests`,
		Args:              cobra.MinimumNArgs(1),
		ValidArgsFunction: policyFiles,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkFormat(format); err != nil {
				return err
			}
			if tests == "" {
				return fmt.Errorf("--tests DIR|FILE is required")
			}
			cases, err := policytest.Load(tests)
			if err != nil {
				return err
			}
			set, err := loadValid(cmd, args)
			if err != nil {
				return err
			}
			_, snap, err := compile("", set)
			if err != nil {
				return err
			}
			results := policytest.Run(snap, cases)
			locs := objectLocations(&set)
			failed := 0
			for i := range results {
				if !results[i].Passed() {
					failed++
				}
			}
			out := cmd.OutOrStdout()
			if format == formatJSON {
				doc := testRunJSON{Results: []testResultJSON{}, Passed: len(results) - failed, Failed: failed}
				for _, r := range results {
					j := testResultJSON{Name: r.Case.Name, File: r.Case.File, Line: r.Case.Line, Passed: r.Passed(), Diffs: r.Diffs,
						Decision: toDecisionJSON(r.Decision, locs)}
					if r.Err != nil {
						j.Error = r.Err.Error()
					}
					doc.Results = append(doc.Results, j)
				}
				if err := writeJSON(out, doc); err != nil {
					return err
				}
			} else {
				printResults(out, results, verbose)
			}
			if failed > 0 {
				return &exitError{code: 1}
			}
			return nil
		},
	}
	addFormatFlag(cmd, &format)
	cmd.Flags().StringVar(&tests, "tests", "", "test file or directory of test files")
	cmd.Flags().BoolVarP(&verbose, "verbose", "v", false, "print the decision of passing cases too")
	_ = cmd.MarkFlagFilename("tests", "yaml", "yml")
	return cmd
}

func printResults(w io.Writer, results []policytest.Result, verbose bool) {
	failed := 0
	for _, r := range results {
		c := &r.Case
		where := fmt.Sprintf("%s:%d", c.File, c.Line)
		if r.Passed() {
			fmt.Fprintf(w, "PASS %s (%s)\n", c.Name, where)
			if verbose {
				fmt.Fprintf(w, "     allowed=%t reason=%s policy=%s rule=%s mode=%s\n",
					r.Decision.Allowed, r.Decision.Reason, r.Decision.Ref.Policy, r.Decision.Ref.Rule, r.Decision.Mode)
			}
			continue
		}
		failed++
		fmt.Fprintf(w, "FAIL %s (%s)\n", c.Name, where)
		if r.Err != nil {
			fmt.Fprintf(w, "     %v\n", r.Err)
		}
		for _, d := range r.Diffs {
			fmt.Fprintf(w, "     %s\n", d)
		}
	}
	fmt.Fprintf(w, "%d passed, %d failed\n", len(results)-failed, failed)
}
