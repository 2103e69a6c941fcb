package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/source"
)

func newPolicyCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Lint, test, explain and bundle policies",
		Long: `Work with policy files: Istio AuthorizationPolicy (security.istio.io/v1 and
v1beta1) and meshguard's own kinds (meshguard.dev/v1alpha1), in YAML files or
directories of them (read recursively, *.yaml and *.yml, multi-document).
A path of "-" reads standard input.

Exit status: 0 when all is well, 1 when the policies have errors (or a test
fails), 2 when the command could not run (bad flags, unreadable paths or
paths without policy files, malformed test files or requests).`,
	}
	cmd.AddCommand(
		newPolicyLintCmd(),
		newPolicyBundleCmd(),
		newPolicyExplainCmd(),
		newPolicyTestCmd(),
		newPolicyReplayCmd(),
	)
	return cmd
}

const (
	formatText = "text"
	formatJSON = "json"
)

func addFormatFlag(cmd *cobra.Command, format *string) {
	cmd.Flags().StringVar(format, "format", formatText, "output format: text or json")
	_ = cmd.RegisterFlagCompletionFunc("format", cobra.FixedCompletions([]string{formatText, formatJSON}, cobra.ShellCompDirectiveNoFileComp))
}

func checkFormat(format string) error {
	if format != formatText && format != formatJSON {
		return fmt.Errorf("--format %q: want text or json", format)
	}
	return nil
}

// policyFiles completes paths to YAML files and directories.
func policyFiles(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	return []string{"yaml", "yml"}, cobra.ShellCompDirectiveFilterFileExt
}

// loadPolicies reads the paths ("-" alone reads standard input).
func loadPolicies(cmd *cobra.Command, paths []string) (policies.Set, policies.Diagnostics, error) {
	for _, p := range paths {
		if p == "-" {
			if len(paths) != 1 {
				return policies.Set{}, nil, fmt.Errorf(`"-" (standard input) cannot be combined with other paths`)
			}
			data, err := io.ReadAll(io.LimitReader(cmd.InOrStdin(), source.MaxFileSize+1))
			if err != nil {
				return policies.Set{}, nil, fmt.Errorf("read standard input: %w", err)
			}
			set, diags := source.Parse("<stdin>", data)
			return set, diags, nil
		}
	}
	// An empty directory or a mistyped glob must not pass as "no problems".
	files, err := source.Files(paths...)
	if err != nil {
		return policies.Set{}, nil, err
	}
	if len(files) == 0 {
		return policies.Set{}, nil, fmt.Errorf("no policy files (*.yaml, *.yml) in %s", strings.Join(paths, " "))
	}
	return source.Load(paths...)
}

// loadValid reads the paths and fails (exit 1, errors on stderr) when the
// set has errors; warnings are printed to stderr and otherwise ignored.
func loadValid(cmd *cobra.Command, paths []string) (policies.Set, error) {
	set, diags, err := loadPolicies(cmd, paths)
	if err != nil {
		return set, err
	}
	for _, d := range diags {
		fmt.Fprintln(cmd.ErrOrStderr(), d.String())
	}
	if n := len(diags.Errors()); n > 0 {
		return set, &exitError{code: 1, msg: fmt.Sprintf("%d error(s) in the policies; fix them first (meshguard policy lint)", n)}
	}
	return set, nil
}

// compile turns a valid set into a snapshot.
func compile(version string, set policies.Set) (*policies.Bundle, *policies.Snapshot, error) {
	b, _, err := policies.NewBundle(version, set)
	if err != nil {
		return nil, nil, &exitError{code: 1, msg: err.Error()}
	}
	s, err := policies.Compile(b)
	if err != nil {
		return nil, nil, &exitError{code: 1, msg: err.Error()}
	}
	return b, s, nil
}

// ----- lint -----

type diagnosticJSON struct {
	Severity string `json:"severity"`
	Code     string `json:"code"`
	Message  string `json:"message"`
	Object   string `json:"object,omitempty"`
	Field    string `json:"field,omitempty"`
	File     string `json:"file,omitempty"`
	Line     int    `json:"line,omitempty"`
	Column   int    `json:"column,omitempty"`
}

type lintJSON struct {
	Diagnostics []diagnosticJSON `json:"diagnostics"`
	Errors      int              `json:"errors"`
	Warnings    int              `json:"warnings"`
}

func newPolicyLintCmd() *cobra.Command {
	var format string
	var warningsAsErrors bool
	cmd := &cobra.Command{
		Use:   "lint PATH...",
		Short: "Check policy files and report every problem with its file:line:column",
		Long: `Check policy files strictly (unknown fields, wrong types, invalid values,
duplicate objects) and report every error and warning at once, each with a
file:line:column and a stable code (see docs/policies.md).

Exits 1 when there are errors (or, with --warnings-as-errors, warnings).`,
		Example: `  meshguard policy lint examples/policies
  kubectl get authorizationpolicies -A -o yaml | meshguard policy lint -`,
		Args:              cobra.MinimumNArgs(1),
		ValidArgsFunction: policyFiles,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkFormat(format); err != nil {
				return err
			}
			_, diags, err := loadPolicies(cmd, args)
			if err != nil {
				return err
			}
			nerr, nwarn := len(diags.Errors()), len(diags.Warnings())
			out := cmd.OutOrStdout()
			if format == formatJSON {
				doc := lintJSON{Diagnostics: []diagnosticJSON{}, Errors: nerr, Warnings: nwarn}
				for _, d := range diags {
					doc.Diagnostics = append(doc.Diagnostics, diagnosticJSON{
						Severity: d.Severity.String(), Code: d.Code, Message: d.Message, Object: d.Object,
						Field: d.Field, File: d.Loc.File, Line: d.Loc.Line, Column: d.Loc.Column,
					})
				}
				if err := writeJSON(out, doc); err != nil {
					return err
				}
			} else {
				for _, d := range diags {
					fmt.Fprintln(out, d.String())
				}
				fmt.Fprintf(out, "%d error(s), %d warning(s)\n", nerr, nwarn)
			}
			if nerr > 0 || (warningsAsErrors && nwarn > 0) {
				return &exitError{code: 1}
			}
			return nil
		},
	}
	addFormatFlag(cmd, &format)
	cmd.Flags().BoolVar(&warningsAsErrors, "warnings-as-errors", false, "exit 1 on warnings too")
	return cmd
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// ----- bundle -----

func newPolicyBundleCmd() *cobra.Command {
	var output, version string
	cmd := &cobra.Command{
		Use:   "bundle PATH... -o FILE",
		Short: "Validate policies and write them as a bundle (the format the control plane ships)",
		Long: `Validate policy files and write the policy bundle: the validated set as JSON
with a format tag, a version and a sha256 content hash. The control plane
ships it; the authz server and the wasm filter load it. Refuses (exit 1) when
the policies have errors. The version defaults to the first 12 hex digits of
the content hash.`,
		Example:           `  meshguard policy bundle examples/policies -o bin/bundle.json --version 2025-06-01.1`,
		Args:              cobra.MinimumNArgs(1),
		ValidArgsFunction: policyFiles,
		RunE: func(cmd *cobra.Command, args []string) error {
			if output == "" {
				return fmt.Errorf("-o FILE is required (- for standard output)")
			}
			set, err := loadValid(cmd, args)
			if err != nil {
				return err
			}
			b, _, err := compile(version, set)
			if err != nil {
				return err
			}
			data, err := b.Encode()
			if err != nil {
				return err
			}
			data = append(data, '\n')
			if output == "-" {
				_, err = cmd.OutOrStdout().Write(data)
				return err
			}
			if err := writeFileAtomic(output, data); err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "wrote %s: version %s, %s, %d bytes\n", output, b.Version, b.Hash, len(data))
			return nil
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "", "file to write (- for standard output)")
	cmd.Flags().StringVar(&version, "version", "", "bundle version (default: the first 12 hex digits of the content hash)")
	return cmd
}

// writeFileAtomic writes through a temporary file and a rename, so that a
// reader never sees half a bundle.
func writeFileAtomic(name string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(name), "."+filepath.Base(name)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := os.Rename(tmp.Name(), name); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	return nil
}
