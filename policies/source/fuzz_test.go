package source

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/meshguard/meshguard/policies"
)

// aliasBomb is the "billion laughs" of YAML: nine levels of nine aliases.
func aliasBomb() string {
	var b strings.Builder
	b.WriteString("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: bomb}\n")
	b.WriteString("x0: &a0 [\"cluster.local/ns/a/sa/b\"]\n")
	for i := 1; i <= 9; i++ {
		fmt.Fprintf(&b, "x%d: &a%d [", i, i)
		for j := 0; j < 9; j++ {
			if j > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "*a%d", i-1)
		}
		b.WriteString("]\n")
	}
	return b.String()
}

// typedBomb nests aliases along the model's own lists (rules → from →
// principals) so that every alias is decoded, not rejected for its type.
func typedBomb(width int) string {
	var b strings.Builder
	b.WriteString("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: bomb, namespace: x}\nspec:\n")
	b.WriteString("  rules:\n  - from: &froms\n")
	b.WriteString("    - source: &src\n        principals: &p [")
	for j := 0; j < width; j++ {
		if j > 0 {
			b.WriteString(", ")
		}
		b.WriteString(`"a"`)
	}
	b.WriteString("]\n")
	for j := 1; j < width; j++ {
		b.WriteString("    - source: *src\n")
	}
	for j := 1; j < width; j++ {
		b.WriteString("  - from: *froms\n")
	}
	return b.String()
}

// listBomb is a v1 List whose items all alias one large policy.
func listBomb(n int) string {
	var b strings.Builder
	b.WriteString("apiVersion: v1\nkind: List\nitems:\n- &p\n  apiVersion: security.istio.io/v1\n  kind: AuthorizationPolicy\n  metadata: {name: a}\n  spec:\n    rules:\n    - from:\n      - source:\n          principals: [")
	for j := 0; j < n; j++ {
		if j > 0 {
			b.WriteString(", ")
		}
		b.WriteString(`"a"`)
	}
	b.WriteString("]\n")
	for j := 1; j < n; j++ {
		b.WriteString("- *p\n")
	}
	return b.String()
}

func TestAliasBombs(t *testing.T) {
	tests := []struct {
		name string
		src  string
		code string
	}{
		// rejected for its type, every alias once: no expansion happens
		{"untyped billion laughs", aliasBomb() + "spec:\n  rules: *a9\n", policies.CodeWrongType},
		// 300 rules × 300 sources × 300 principals = 27 million nodes
		{"typed expansion", typedBomb(300), policies.CodeTooLarge},
		// 2,000 List items that are each an alias of one 2,000-principal policy
		{"list of aliases", listBomb(2000), policies.CodeTooLarge},
		{"self-referencing anchor", "apiVersion: meshguard.dev/v1alpha1\nkind: DefaultDeny\nmetadata: &m {name: a, labels: *m}\n", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			_, diags := Parse("in.yaml", []byte(tt.src))
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("took %s", d)
			}
			if !diags.HasErrors() {
				t.Fatal("no error")
			}
			if len(diags) > maxDiagnosticsPerFile+1 {
				t.Errorf("%d diagnostics, want at most %d", len(diags), maxDiagnosticsPerFile+1)
			}
			found := tt.code == ""
			for _, d := range diags {
				found = found || d.Code == tt.code
			}
			if !found {
				t.Errorf("no %s diagnostic in:\n%s", tt.code, dump(diags))
			}
		})
	}
	// a modest, legitimate use of aliases is within the budget
	if _, diags := Parse("in.yaml", []byte(typedBomb(20))); diags.HasErrors() {
		t.Fatalf("20×20×20 expansion rejected:\n%s", dump(diags[:min(3, len(diags))]))
	}
}

func TestDeepNesting(t *testing.T) {
	src := "apiVersion: meshguard.dev/v1alpha1\nkind: DefaultDeny\nmetadata: {name: a}\nspec: " + strings.Repeat("[", 20000) + "\n"
	_, diags := Parse("in.yaml", []byte(src))
	if len(diags) != 1 || diags[0].Code != policies.CodeYAMLSyntax {
		t.Fatalf("diagnostics:\n%s", dump(diags))
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(validAP))
	f.Add([]byte(locateSrc))
	f.Add([]byte(aliasBomb() + "spec:\n  rules: *a9\n"))
	f.Add([]byte(typedBomb(8)))
	f.Add([]byte(listBomb(8)))
	f.Add([]byte("apiVersion: meshguard.dev/v1alpha1\nkind: DefaultDeny\nmetadata: &m {name: a, labels: *m}\n"))
	f.Add([]byte("---\n---\n~\n---\n[]\n---\n\"x\"\n"))
	f.Add([]byte("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, name: b}\nspec: {<<: [*x]}\n"))
	f.Add([]byte("a: &a\n  b: *a\n"))
	f.Add([]byte("apiVersion: meshguard.dev/v1alpha1\nkind: AnomalyProfile\nmetadata: {name: p}\nspec:\n  rate: {zScore: .inf, minRps: -1e400}\n  errors: {minRequests: 0x10}\n  responses: {rate: !!binary aGk=}\n"))
	f.Add([]byte("apiVersion: meshguard.dev/v1alpha1\nkind: TrafficBaseline\nmetadata:\n  name: b\nspec:\n  mode: enforce\n  edges:\n  - {source: 'spiffe://x/ns/a/sa/b', destination: svc, routes: [r]}\n"))
	f.Add([]byte("\xff\xfe\x00a\x00:\x00 \x001\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		set, diags := Parse("fuzz.yaml", data)
		for _, d := range diags {
			if d.Code == "" || d.Message == "" {
				t.Fatalf("diagnostic without code or message: %+v", d)
			}
			if d.Severity == policies.SeverityError && d.Loc.File != "fuzz.yaml" {
				t.Fatalf("error without file: %s", d)
			}
		}
		if len(diags) > maxDiagnosticsPerFile+64 {
			t.Fatalf("%d diagnostics", len(diags))
		}
		if !diags.HasErrors() {
			// whatever parses cleanly must be the same when parsed again
			_, again := Parse("fuzz.yaml", data)
			if len(again) != len(diags) {
				t.Fatalf("parse is not deterministic: %d then %d diagnostics", len(diags), len(again))
			}
			for _, p := range set.AuthorizationPolicies {
				if p.Metadata.Name == "" || p.Metadata.Namespace == "" || p.Loc.Line == 0 {
					t.Fatalf("object without name, namespace or location: %+v", p)
				}
			}
		}
	})
}
