package source

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/meshguard/meshguard/policies"
)

// errorsOf returns the error diagnostics of a parse, located.
func errorsOf(t *testing.T, src string) policies.Diagnostics {
	t.Helper()
	_, diags := Parse("in.yaml", []byte(src))
	return diags.Errors()
}

type wantDiag struct {
	code  string
	line  int
	col   int
	field string // optional
	msg   string // substring, optional
}

func checkDiags(t *testing.T, got policies.Diagnostics, want []wantDiag) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d diagnostics, want %d:\n%s", len(got), len(want), dump(got))
	}
	for i, w := range want {
		g := got[i]
		if g.Code != w.code || g.Loc.Line != w.line || (w.col != 0 && g.Loc.Column != w.col) ||
			(w.field != "" && g.Field != w.field) || !strings.Contains(g.Message, w.msg) || g.Loc.File != "in.yaml" {
			t.Errorf("diagnostic %d = %s (field %q)\nwant code %s at line %d col %d field %q msg ~%q", i, g, g.Field, w.code, w.line, w.col, w.field, w.msg)
		}
	}
}

func dump(ds policies.Diagnostics) string {
	var b strings.Builder
	for _, d := range ds {
		b.WriteString("  " + d.String() + "  {field " + d.Field + "}\n")
	}
	return b.String()
}

const validAP = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: httpbin
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/sleep"]
    to:
    - operation:
        methods: ["GET"]
        paths: ["/info*"]
`

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want []wantDiag
	}{
		{
			name: "yaml syntax",
			src:  "apiVersion: v1\nkind: [a,\n",
			want: []wantDiag{{code: policies.CodeYAMLSyntax, line: 2}},
		},
		{
			name: "syntax error after a good document keeps the good one",
			src:  validAP + "---\nkind: x\n  bad: indent\n",
			want: []wantDiag{{code: policies.CodeYAMLSyntax, line: 20}},
		},
		{
			name: "unknown fields everywhere, all reported",
			src: `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: a
  nmespace: foo
spec:
  rules:
  - from:
    - source:
        principal: ["x"]
    to:
    - operations:
        methods: ["GET"]
  actoin: DENY
extra: 1
`,
			want: []wantDiag{
				{code: policies.CodeUnknownField, line: 5, col: 3, field: "metadata.nmespace", msg: `did you mean "namespace"`},
				{code: policies.CodeUnknownField, line: 10, col: 9, field: "spec.rules[0].from[0].source.principal", msg: `did you mean "principals"`},
				{code: policies.CodeUnknownField, line: 12, col: 7, field: "spec.rules[0].to[0].operations", msg: `did you mean "operation"`},
				{code: policies.CodeUnknownField, line: 14, col: 3, field: "spec.actoin", msg: `did you mean "action"`},
				{code: policies.CodeUnknownField, line: 15, col: 1, field: "extra"},
			},
		},
		{
			name: "wrong types",
			src: `apiVersion: meshguard.dev/v1alpha1
kind: RouteOverride
metadata:
  name: r
  labels: [a]
spec:
  route: 42
  allowUnsafePaths: "yes"
  rules:
    from: []
  anomaly:
    rateZ: high
---
apiVersion: meshguard.dev/v1alpha1
kind: AnomalyProfile
metadata: {name: p}
spec:
  errors:
    minRequests: 2.5
  rate: {zScore: 3, minRps: 1.5}
  responses: {rate: [block]}
`,
			want: []wantDiag{
				{code: policies.CodeWrongType, line: 5, col: 11, field: "metadata.labels", msg: "expected a mapping, got a list"},
				{code: policies.CodeWrongType, line: 7, col: 10, field: "spec.route", msg: `quote it: "42"`},
				{code: policies.CodeWrongType, line: 8, col: 21, field: "spec.allowUnsafePaths", msg: "expected true or false"},
				{code: policies.CodeWrongType, line: 10, col: 5, field: "spec.rules", msg: "expected a list, got a mapping"},
				{code: policies.CodeWrongType, line: 12, col: 12, field: "spec.anomaly.rateZ", msg: "expected a number"},
				{code: policies.CodeWrongType, line: 19, col: 18, field: "spec.errors.minRequests", msg: "expected an integer"},
				{code: policies.CodeWrongType, line: 21, col: 21, field: "spec.responses.rate", msg: "expected a string, got a list"},
			},
		},
		{
			name: "document that is not a mapping",
			src:  "- a\n- b\n",
			want: []wantDiag{{code: policies.CodeWrongType, line: 1, col: 1, msg: "a document must be a mapping"}},
		},
		{
			name: "missing apiVersion and kind",
			src:  "metadata:\n  name: a\n---\napiVersion: meshguard.dev/v1alpha1\nmetadata: {name: b}\n",
			want: []wantDiag{
				{code: policies.CodeMissingField, line: 1, field: "apiVersion"},
				{code: policies.CodeMissingField, line: 1, field: "kind"},
				{code: policies.CodeMissingField, line: 4, field: "kind"},
			},
		},
		{
			name: "apiVersion and kind of the wrong type",
			src:  "apiVersion: 1\nkind: [x]\n",
			want: []wantDiag{
				{code: policies.CodeWrongType, line: 1, col: 1, field: "apiVersion"},
				{code: policies.CodeWrongType, line: 2, col: 1, field: "kind"},
			},
		},
		{
			name: "unknown kind and kind under the wrong apiVersion",
			src: `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a}
---
apiVersion: meshguard.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: b}
---
apiVersion: security.istio.io/v1beta2
kind: AuthorizationPolicy
metadata: {name: c}
`,
			want: []wantDiag{
				{code: policies.CodeUnknownKind, line: 2, col: 7, field: "kind", msg: `unknown kind "VirtualService"`},
				{code: policies.CodeUnknownKind, line: 5, col: 13, field: "apiVersion", msg: `use "security.istio.io/v1"`},
				{code: policies.CodeUnknownKind, line: 9, col: 13, field: "apiVersion"},
			},
		},
		{
			name: "missing metadata.name",
			src:  "apiVersion: meshguard.dev/v1alpha1\nkind: DefaultDeny\nmetadata:\n  namespace: foo\nspec: {}\n---\napiVersion: meshguard.dev/v1alpha1\nkind: DefaultDeny\n",
			want: []wantDiag{
				{code: policies.CodeMissingField, line: 3, col: 1, field: "metadata.name"},
				{code: policies.CodeMissingField, line: 7, col: 1, field: "metadata.name"},
			},
		},
		{
			name: "duplicate keys",
			src:  "apiVersion: meshguard.dev/v1alpha1\nkind: DefaultDeny\nmetadata: {name: a, name: b}\nspec:\n  mode: enforce\n  mode: off\n",
			want: []wantDiag{
				{code: policies.CodeDuplicateField, line: 3, col: 21, field: "metadata.name", msg: "first at line 3"},
				{code: policies.CodeDuplicateField, line: 6, col: 3, field: "spec.mode", msg: "first at line 5"},
			},
		},
		{
			name: "duplicate objects, namespace defaulted",
			src: `apiVersion: meshguard.dev/v1alpha1
kind: DefaultDeny
metadata: {name: a}
---
apiVersion: meshguard.dev/v1alpha1
kind: DefaultDeny
metadata: {name: a, namespace: default}
---
apiVersion: meshguard.dev/v1alpha1
kind: IdentityPolicy
metadata: {name: a}
---
apiVersion: meshguard.dev/v1alpha1
kind: MeshSettings
metadata: {name: mesh}
---
apiVersion: meshguard.dev/v1alpha1
kind: MeshSettings
metadata: {name: mesh2}
`,
			want: []wantDiag{
				{code: policies.CodeDuplicateObject, line: 5, col: 1, msg: "DefaultDeny/default/a is defined twice; first at in.yaml:1:1"},
				{code: policies.CodeDuplicateObject, line: 17, col: 1, msg: "at most one MeshSettings"},
			},
		},
		{
			name: "integer out of range (YAML resolves it to a string)",
			src:  "apiVersion: meshguard.dev/v1alpha1\nkind: AnomalyProfile\nmetadata: {name: a}\nspec:\n  lateral: {maxNewEdges: 0x7FFFFFFFFFFFFFFFFF}\n",
			want: []wantDiag{{code: policies.CodeWrongType, line: 5, col: 26, field: "spec.lateral.maxNewEdges", msg: "expected an integer"}},
		},
		{
			name: "custom tags are not strings",
			src:  "apiVersion: meshguard.dev/v1alpha1\nkind: Quarantine\nmetadata: {name: a}\nspec:\n  identity: !secret spiffe://x/y\n",
			want: []wantDiag{{code: policies.CodeWrongType, line: 5, col: 13, field: "spec.identity", msg: "tagged !secret"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkDiags(t, errorsOf(t, tt.src), tt.want)
		})
	}
}

func TestParseTooLarge(t *testing.T) {
	data := []byte(strings.Repeat("# padding\n", MaxFileSize/10+1))
	set, diags := Parse("in.yaml", data)
	checkDiags(t, diags, []wantDiag{{code: policies.CodeTooLarge, line: 0, msg: "larger than"}})
	if len(set.AuthorizationPolicies) != 0 {
		t.Fatal("a too large input produced policies")
	}
}

func TestParseValid(t *testing.T) {
	src := validAP + `---
# a comment-only document is skipped
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata:
  name: deny-admin
  namespace: foo
  uid: 1234
  resourceVersion: "99"
  creationTimestamp: "2025-01-01T00:00:00Z"
  managedFields: [{manager: kubectl}]
spec:
  action: DENY
  rules:
  - to:
    - operation:
        paths: ["/admin*"]
status:
  validationMessages: []
---
apiVersion: meshguard.dev/v1alpha1
kind: MeshSettings
metadata: {name: mesh, namespace: istio-system}
spec: {rootNamespace: istio-system, trustDomain: prod.example, pathNormalization: MERGE_SLASHES}
---
apiVersion: meshguard.dev/v1alpha1
kind: IdentityPolicy
metadata: {name: b}
spec:
  rules:
  - name: web
    from: [{ids: ["spiffe://prod.example/ns/*/sa/web"]}]
    jwt: {audiences: [payments]}
---
apiVersion: meshguard.dev/v1alpha1
kind: IdentityPolicy
metadata: {name: a}
spec: {}
`
	set, diags := Parse("in.yaml", []byte(src))
	if diags.HasErrors() {
		t.Fatalf("unexpected errors:\n%s", dump(diags))
	}
	if got := len(set.AuthorizationPolicies); got != 2 {
		t.Fatalf("%d authorization policies, want 2", got)
	}
	// sorted by namespace, name: foo/deny-admin before foo/httpbin
	ap := set.AuthorizationPolicies
	if ap[0].Metadata.Name != "deny-admin" || ap[1].Metadata.Name != "httpbin" {
		t.Errorf("order = %s, %s", ap[0].Metadata.Name, ap[1].Metadata.Name)
	}
	if ap[0].Loc != (policies.Location{File: "in.yaml", Line: 21, Column: 1}) {
		t.Errorf("deny-admin Loc = %+v", ap[0].Loc)
	}
	if ap[1].Spec.Rules[0].From[0].Source.Principals[0] != "cluster.local/ns/default/sa/sleep" || ap[1].Spec.Selector.MatchLabels["app"] != "httpbin" {
		t.Errorf("httpbin decoded wrong: %+v", ap[1].Spec)
	}
	if ap[0].APIVersion != policies.APIVersionIstioV1beta1 || ap[0].Spec.Action != "DENY" {
		t.Errorf("deny-admin decoded wrong: %+v", ap[0])
	}
	if set.Settings.TrustDomain != "prod.example" || set.Settings.PathNormalization != policies.NormalizationMergeSlashes {
		t.Errorf("settings = %+v", set.Settings)
	}
	ip := set.IdentityPolicies
	if len(ip) != 2 || ip[0].Metadata.Name != "a" || ip[1].Metadata.Namespace != DefaultNamespace {
		t.Fatalf("identity policies = %+v", ip)
	}
	if ip[1].Spec.Rules[0].JWT == nil || ip[1].Spec.Rules[0].JWT.Audiences[0] != "payments" {
		t.Errorf("jwt not decoded: %+v", ip[1].Spec.Rules[0])
	}
}

// TestParseList reads the v1 List that `kubectl get -A -o yaml` prints.
func TestParseList(t *testing.T) {
	src := `apiVersion: v1
kind: List
metadata:
  resourceVersion: ""
items:
- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata:
    name: a
    namespace: foo
    uid: 0d5e
    resourceVersion: "42"
  spec:
    action: DENY
    rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
  status: {}
- apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: b, namespace: foo}
  spec:
    actoin: DENY
- apiVersion: v1
  kind: List
  items: []
`
	set, diags := Parse("in.yaml", []byte(src))
	checkDiags(t, diags, []wantDiag{
		{code: policies.CodeUnknownField, line: 21, col: 5, field: "spec.actoin"},
		{code: policies.CodeUnknownKind, line: 23, col: 9, field: "kind", msg: "unknown kind \"List\""},
	})
	if len(set.AuthorizationPolicies) != 1 || set.AuthorizationPolicies[0].Loc.Line != 6 || set.AuthorizationPolicies[0].Loc.Column != 3 {
		t.Fatalf("set = %+v", set.AuthorizationPolicies)
	}
	_, diags = Parse("in.yaml", []byte("apiVersion: v1\nkind: List\nitems: {a: b}\nextra: 1\n"))
	checkDiags(t, diags, []wantDiag{
		{code: policies.CodeWrongType, line: 3, col: 8, field: "items"},
		{code: policies.CodeUnknownField, line: 4, col: 1, field: "extra"},
	})
}

func TestParseAnchorsAndMergeKeys(t *testing.T) {
	src := `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: a, namespace: foo}
spec:
  rules:
  - from: &callers
    - source: {principals: [cluster.local/ns/foo/sa/web]}
    to:
    - operation: &base {methods: [GET], paths: [/a]}
  - from: *callers
    to:
    - operation:
        <<: *base
        paths: [/b]
`
	set, diags := Parse("in.yaml", []byte(src))
	if diags.HasErrors() {
		t.Fatalf("errors:\n%s", dump(diags))
	}
	r := set.AuthorizationPolicies[0].Spec.Rules
	if r[1].From[0].Source.Principals[0] != "cluster.local/ns/foo/sa/web" {
		t.Errorf("alias not followed: %+v", r[1])
	}
	op := r[1].To[0].Operation
	if op.Methods[0] != "GET" || len(op.Paths) != 1 || op.Paths[0] != "/b" {
		t.Errorf("merge key: %+v", op)
	}
}

func TestLoadDirectory(t *testing.T) {
	dir := t.TempDir()
	write := func(name, data string) {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("a.yaml", validAP)
	write("sub/b.yml", "apiVersion: meshguard.dev/v1alpha1\nkind: DefaultDeny\nmetadata: {name: dd, namespace: foo}\n")
	write("sub/notes.txt", "not yaml: [")
	write(".hidden/c.yaml", "not yaml: [")
	write("sub/bad.yaml", "apiVersion: meshguard.dev/v1alpha1\nkind: DefaultDeny\nmetadata: {name: x}\nspec: {nope: 1}\n")

	set, diags, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	errs := diags.Errors()
	if len(errs) != 1 || errs[0].Code != policies.CodeUnknownField || errs[0].Loc.File != filepath.Join(dir, "sub/bad.yaml") || errs[0].Loc.Line != 4 {
		t.Fatalf("diagnostics:\n%s", dump(diags))
	}
	if len(set.AuthorizationPolicies) != 1 || len(set.DefaultDenies) != 1 {
		t.Fatalf("set = %+v", set)
	}
	// a file named again, directly, is not read twice
	if set2, diags2, err := Load(dir, filepath.Join(dir, "a.yaml"), dir+"/"); err != nil || len(diags2.Errors()) != 1 || len(set2.AuthorizationPolicies) != 1 {
		t.Fatalf("overlapping paths: %v\n%s", err, dump(diags2))
	}
	if _, _, err := Load(filepath.Join(dir, "missing")); err == nil {
		t.Fatal("Load of a missing path succeeded")
	}
	// a file named explicitly is read whatever its extension
	if _, diags, err := Load(filepath.Join(dir, "sub/notes.txt")); err != nil || len(diags.Errors()) != 1 || diags[0].Code != policies.CodeYAMLSyntax {
		t.Fatalf("explicit file: %v %s", err, dump(diags))
	}
}

// TestLoadConfigMapMount reads a directory laid out as Kubernetes mounts a
// ConfigMap: keys are symlinks through ..data into a hidden timestamped
// directory. Each key is read once.
func TestLoadConfigMapMount(t *testing.T) {
	dir := t.TempDir()
	ts := filepath.Join(dir, "..2025_06_01_12_00_00.123")
	if err := os.Mkdir(ts, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ts, "policies.yaml"), []byte(validAP), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, l := range [][2]string{
		{filepath.Base(ts), filepath.Join(dir, "..data")},
		{filepath.Join("..data", "policies.yaml"), filepath.Join(dir, "policies.yaml")},
		{"/nonexistent/dangling.yaml", filepath.Join(dir, "dangling.yaml")},
	} {
		if err := os.Symlink(l[0], l[1]); err != nil {
			t.Skipf("symlinks: %v", err)
		}
	}
	set, diags, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if diags.HasErrors() || len(set.AuthorizationPolicies) != 1 {
		t.Fatalf("set %+v\n%s", set, dump(diags))
	}
}

func TestLoadFS(t *testing.T) {
	fsys := fstest.MapFS{
		"p/a.yaml":  {Data: []byte(validAP)},
		"p/b.yaml":  {Data: []byte("apiVersion: meshguard.dev/v1alpha1\nkind: DefaultDeny\nmetadata: {name: dd}\n")},
		"p/big.yml": {Data: make([]byte, MaxFileSize+1)},
	}
	set, diags, err := LoadFS(fsys, "p")
	if err != nil {
		t.Fatal(err)
	}
	if len(set.AuthorizationPolicies) != 1 || len(set.DefaultDenies) != 1 {
		t.Fatalf("set = %+v", set)
	}
	if errs := diags.Errors(); len(errs) != 1 || errs[0].Code != policies.CodeTooLarge || errs[0].Loc.File != "p/big.yml" {
		t.Fatalf("diagnostics:\n%s", dump(diags))
	}
}
