package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshguard/meshguard/policies"
)

var update = flag.Bool("update", false, "rewrite the golden files of testdata/")

const (
	examplePolicies = "../../examples/policies"
	exampleTests    = "../../examples/tests"
	testdata        = "testdata/policy/"
)

// run executes the CLI in-process and returns stdout, stderr and the exit
// status main would use.
func run(t *testing.T, stdin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	root := newRootCmd()
	var out, errb bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errb)
	root.SetIn(strings.NewReader(stdin))
	root.SetArgs(args)
	err := root.Execute()
	switch {
	case err == nil:
		code = 0
	default:
		var ec exitCoder
		if errors.As(err, &ec) {
			code = ec.ExitCode()
		} else {
			code = 2
		}
		if msg := err.Error(); msg != "" {
			errb.WriteString("meshguard: " + msg + "\n")
		}
	}
	return out.String(), errb.String(), code
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", "policy", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./cmd/meshguard -run %s -update)", err, t.Name())
	}
	if got != string(want) {
		t.Errorf("output differs from %s (rerun with -update if intended)\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

func TestPolicyLintGolden(t *testing.T) {
	out, _, code := run(t, "", "policy", "lint", testdata+"bad.yaml")
	if code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	golden(t, "bad.golden", out)
}

func TestPolicyLintJSON(t *testing.T) {
	out, _, code := run(t, "", "policy", "lint", "--format", "json", testdata+"bad.yaml")
	if code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	var doc lintJSON
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if doc.Errors != 8 || doc.Warnings != 4 || len(doc.Diagnostics) != 12 {
		t.Fatalf("errors %d warnings %d diagnostics %d", doc.Errors, doc.Warnings, len(doc.Diagnostics))
	}
	d := doc.Diagnostics[0]
	want := diagnosticJSON{Severity: "error", Code: policies.CodeUnknownField, Object: "AuthorizationPolicy/foo/httpbin",
		Field: "spec.rules[0].from[0].source.notPrincipal", File: testdata + "bad.yaml", Line: 15, Column: 9,
		Message: `unknown field "notPrincipal"; did you mean "notPrincipals"?`}
	if d != want {
		t.Errorf("first diagnostic = %+v\nwant %+v", d, want)
	}
}

func TestPolicyLintExitStatus(t *testing.T) {
	empty := t.TempDir()
	tests := []struct {
		name  string
		stdin string
		args  []string
		code  int
		out   string
	}{
		{"examples are clean", "", []string{examplePolicies}, 0, "0 error(s), 0 warning(s)\n"},
		{"warnings only", "", []string{testdata + "warnings.yaml"}, 0, "1 warning(s)"},
		{"warnings as errors", "", []string{"--warnings-as-errors", testdata + "warnings.yaml"}, 1, "warning[no_effect]"},
		{"several paths", "", []string{examplePolicies, testdata + "warnings.yaml"}, 0, "0 error(s), 1 warning(s)"},
		{"stdin", "apiVersion: x/v1\nkind: Y\n", []string{"-"}, 1, "<stdin>:2:7: error[unknown_kind]"},
		{"missing path", "", []string{testdata + "nope"}, 2, ""},
		{"directory without policy files", "", []string{empty}, 2, ""},
		{"no path", "", []string{}, 2, ""},
		{"bad format", "", []string{"--format", "xml", examplePolicies}, 2, ""},
		{"stdin with a path", "", []string{"-", examplePolicies}, 2, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, code := run(t, tt.stdin, append([]string{"policy", "lint"}, tt.args...)...)
			if code != tt.code || !strings.Contains(out, tt.out) {
				t.Errorf("exit %d (want %d)\nstdout:\n%s\nstderr:\n%s", code, tt.code, out, errOut)
			}
		})
	}
}

func TestPolicyBundle(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "bundle.json")
	_, errOut, code := run(t, "", "policy", "bundle", examplePolicies, "-o", file, "--version", "2025-06-01.1")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	b, err := policies.DecodeBundle(data)
	if err != nil {
		t.Fatal(err)
	}
	if b.Version != "2025-06-01.1" || !strings.HasPrefix(b.Hash, "sha256:") || len(b.Set.AuthorizationPolicies) == 0 {
		t.Fatalf("bundle %s %s", b.Version, b.Hash)
	}
	if !strings.Contains(errOut, "wrote "+file+": version 2025-06-01.1, "+b.Hash) {
		t.Errorf("stderr = %q", errOut)
	}
	// the same policies give the same content hash; the default version is
	// derived from it
	out, _, code := run(t, "", "policy", "bundle", examplePolicies, "-o", "-")
	if code != 0 {
		t.Fatal(code)
	}
	b2, err := policies.DecodeBundle([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	if b2.Hash != b.Hash || b2.Version != strings.TrimPrefix(b.Hash, "sha256:")[:12] {
		t.Errorf("hash %s version %s, want %s", b2.Hash, b2.Version, b.Hash)
	}
	// policies with errors: refused, nothing written
	bad := filepath.Join(dir, "bad.json")
	_, errOut, code = run(t, "", "policy", "bundle", testdata+"bad.yaml", "-o", bad)
	if code != 1 || !strings.Contains(errOut, "error[unknown_field]") {
		t.Errorf("exit %d, stderr:\n%s", code, errOut)
	}
	if _, err := os.Stat(bad); !os.IsNotExist(err) {
		t.Errorf("a bundle was written for policies with errors: %v", err)
	}
	if _, _, code := run(t, "", "policy", "bundle", examplePolicies); code != 2 {
		t.Errorf("bundle without -o: exit %d", code)
	}
}

func TestPolicyExplain(t *testing.T) {
	args := []string{"policy", "explain", examplePolicies,
		"--source", "spiffe://cluster.local/ns/bookstore/sa/frontend", "--method", "GET", "--path", "/api/books",
		"--target-ns", "bookstore", "--target-label", "app=catalog"}
	out, errOut, code := run(t, "", args...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{
		"decision: ALLOW (allowed_by_policy)\n",
		"mode:     enforce\n",
		"policy:   AuthorizationPolicy/bookstore/catalog rule 0 (" + examplePolicies + "/bookstore.yaml:25)\n",
		"MATCH    ALLOW  AuthorizationPolicy/bookstore/catalog rule 0",
		"no match DENY   AuthorizationPolicy/istio-system/deny-plaintext rule 0",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}

	out, _, code = run(t, "", append(args, "--format", "json", "--method", "POST")...)
	if code != 0 {
		t.Fatal(code)
	}
	var doc explainJSON
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if doc.Decision.Allowed || doc.Decision.Reason != string(policies.ReasonDeniedNoMatch) || doc.Request.Method != "POST" || len(doc.Trace.Steps) == 0 {
		t.Errorf("json = %+v", doc)
	}

	// a request file, with a flag overriding it; dry-run and audit shown
	out, _, code = run(t, "", "policy", "explain", examplePolicies, "--request", testdata+"request.yaml")
	if code != 0 || !strings.Contains(out, "decision: ALLOW (allowed_by_policy)") ||
		!strings.Contains(out, "audit:    AuthorizationPolicy/bookstore/audit-order-cancellations rule 0") {
		t.Errorf("request file: exit %d\n%s", code, out)
	}
	out, _, _ = run(t, "", "policy", "explain", examplePolicies, "--source", "spiffe://cluster.local/ns/backoffice/sa/support",
		"--method", "POST", "--path", "/v1/refunds", "--route", "payments-refunds", "--target-ns", "payments",
		"--target-id", "spiffe://cluster.local/ns/payments/sa/payments-api")
	if !strings.Contains(out, "decision: ALLOW (dry-run; enforced, it would be denied: denied_by_policy)") ||
		!strings.Contains(out, "RouteOverride/payments/refunds-require-ticket rule no-ticket") {
		t.Errorf("dry-run:\n%s", out)
	}

	for name, bad := range map[string][]string{
		"malformed source":  {"--source", "spiffe://Bad Domain/x"},
		"source w/o scheme": {"--source", "cluster.local/ns/a/sa/b"},
		"bad header":        {"--header", "novalue"},
		"bad label":         {"--target-label", "=x"},
		"bad mtls":          {"--mtls", "maybe"},
		"missing request":   {"--request", testdata + "nope.yaml"},
		"unknown field":     {"--request", testdata + "warnings.yaml"},
	} {
		if _, errOut, code := run(t, "", append([]string{"policy", "explain", examplePolicies, "--method", "GET", "--path", "/"}, bad...)...); code != 2 {
			t.Errorf("%s: exit %d, want 2 (%s)", name, code, errOut)
		}
	}
	if _, _, code := run(t, "", "policy", "explain", testdata+"bad.yaml", "--method", "GET", "--path", "/"); code != 1 {
		t.Errorf("explain with broken policies: exit %d, want 1", code)
	}
}

func TestPolicyTest(t *testing.T) {
	out, errOut, code := run(t, "", "policy", "test", examplePolicies, "--tests", exampleTests)
	if code != 0 || !strings.Contains(out, " passed, 0 failed\n") || strings.Contains(out, "FAIL") {
		t.Fatalf("exit %d\n%s\n%s", code, out, errOut)
	}
	out, _, code = run(t, "", "policy", "test", examplePolicies, "--tests", testdata+"failing-tests.yaml")
	want := "FAIL catalog is open to everyone (wrong) (" + testdata + "failing-tests.yaml:1)\n" +
		"     allowed: got false, want true\n" +
		"     policy: got \"\", want \"AuthorizationPolicy/bookstore/catalog\"\n" +
		"PASS frontend reads the catalog (" + testdata + "failing-tests.yaml:8)\n" +
		"1 passed, 1 failed\n"
	if code != 1 || out != want {
		t.Errorf("exit %d\n%s\nwant\n%s", code, out, want)
	}
	out, _, code = run(t, "", "policy", "test", examplePolicies, "--tests", testdata+"failing-tests.yaml", "--format", "json")
	var doc testRunJSON
	if err := json.Unmarshal([]byte(out), &doc); err != nil || code != 1 {
		t.Fatalf("exit %d %v\n%s", code, err, out)
	}
	if doc.Passed != 1 || doc.Failed != 1 || doc.Results[0].Passed || len(doc.Results[0].Diffs) != 2 || doc.Results[1].Decision.Policy != "AuthorizationPolicy/bookstore/catalog" {
		t.Errorf("json = %+v", doc)
	}
	if _, _, code := run(t, "", "policy", "test", examplePolicies); code != 2 {
		t.Errorf("without --tests: exit %d", code)
	}
	if _, _, code := run(t, "", "policy", "test", examplePolicies, "--tests", testdata+"bad.yaml"); code != 2 {
		t.Errorf("tests file that is not a list of cases: exit %d", code)
	}
}

func TestCompletion(t *testing.T) {
	out, _, code := run(t, "", "completion", "bash")
	if code != 0 || !strings.Contains(out, "__start_meshguard") {
		t.Fatalf("completion bash: exit %d\n%.200s", code, out)
	}
	out, _, code = run(t, "", "__complete", "policy", "lint", "--format", "")
	if code != 0 || !strings.Contains(out, "text\njson\n") {
		t.Errorf("--format completion: %q", out)
	}
	out, _, _ = run(t, "", "__complete", "policy", "")
	for _, sub := range []string{"lint", "bundle", "explain", "test"} {
		if !strings.Contains(out, sub+"\t") {
			t.Errorf("policy subcommand %s not completed:\n%s", sub, out)
		}
	}
}

// TestDocsExamples keeps docs/policies.md truthful: every YAML example in it
// lints clean, and its test-file example passes against the examples.
func TestDocsExamples(t *testing.T) {
	doc, err := os.ReadFile("../../docs/policies.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := strings.Split(string(doc), "```yaml\n")[1:]
	if len(blocks) < 8 {
		t.Fatalf("only %d YAML examples in docs/policies.md", len(blocks))
	}
	tested := false
	for i, b := range blocks {
		b = b[:strings.Index(b, "```")]
		if strings.HasPrefix(b, "- name:") {
			file := filepath.Join(t.TempDir(), "doc-tests.yaml")
			if err := os.WriteFile(file, []byte(b), 0o644); err != nil {
				t.Fatal(err)
			}
			out, errOut, code := run(t, "", "policy", "test", examplePolicies, "--tests", file)
			if code != 0 {
				t.Errorf("test-file example: exit %d\n%s%s", code, out, errOut)
			}
			tested = true
			continue
		}
		if out, _, code := run(t, b, "policy", "lint", "--warnings-as-errors", "-"); code != 0 {
			t.Errorf("YAML example %d does not lint clean:\n%s\n%s", i, b, out)
		}
	}
	if !tested {
		t.Error("no test-file example found")
	}
}

// TestPolicyExplainHeaderReadings: a header given twice is explained as
// its readings, each failing one on its own line.
func TestPolicyExplainHeaderReadings(t *testing.T) {
	dir := t.TempDir()
	file := dir + "/tenants.yaml"
	if err := os.WriteFile(file, []byte(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: tenants, namespace: shop}
spec:
  rules:
  - when: [{key: "request.headers[x-tenant]", values: ["acme*"]}]
`), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := run(t, "", "policy", "explain", file, "--source", "spiffe://cluster.local/ns/shop/sa/web",
		"--method", "GET", "--path", "/", "--target-ns", "shop", "--header", "x-tenant=acme", "--header", "X-Tenant=other")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{
		"decision: DENY (denied_no_allow_match)\n",
		"no match ALLOW  AuthorizationPolicy/shop/tenants rule 0 [enforce]: a condition did not match (when)\n" +
			`      request.headers[x-tenant]: element 2 of 2, "other", is not among values` + "\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}
