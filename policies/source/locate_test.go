package source

import (
	"reflect"
	"testing"

	"github.com/meshguard/meshguard/policies"
)

func TestParseFieldPath(t *testing.T) {
	tests := []struct {
		in   string
		want []segment
	}{
		{"", nil},
		{"spec", []segment{{key: "spec", index: -1}}},
		{"spec.rules[0].from[12].source.principals[1]", []segment{
			{key: "spec", index: -1}, {key: "rules", index: -1}, {index: 0}, {key: "from", index: -1}, {index: 12},
			{key: "source", index: -1}, {key: "principals", index: -1}, {index: 1},
		}},
		{`metadata.labels["app.kubernetes.io/name"]`, []segment{
			{key: "metadata", index: -1}, {key: "labels", index: -1}, {key: "app.kubernetes.io/name", index: -1},
		}},
		{`spec.responses[rate]`, []segment{{key: "spec", index: -1}, {key: "responses", index: -1}, {key: "rate", index: -1}}},
		{`a[`, []segment{{key: "a", index: -1}, {key: "", index: -1}}},
		{`a["x]`, []segment{{key: "a", index: -1}, {key: `"x`, index: -1}}},
	}
	for _, tt := range tests {
		if got := parseFieldPath(tt.in); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("parseFieldPath(%q) = %+v, want %+v", tt.in, got, tt.want)
		}
	}
}

const locateSrc = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: httpbin
  namespace: foo
  labels:
    app.kubernetes.io/name: httpbin
spec:
  selector:
    matchLabels: {app: httpbin}
  action: ALLOW
  rules:
  - from:
    - source:
        principals:
        - cluster.local/ns/default/sa/sleep
        - "bad principal"
    to:
    - operation:
        ports: ["80", "99999"]
        paths: [/a, /b]
    when:
    - key: request.headers[x-token]
      values: ["t"]
  - from: &f
    - source: {namespaces: [x]}
  - from: *f
    to:
    - operation:
        <<: {methods: [GET]}
        hosts: [a.example]
---
apiVersion: meshguard.dev/v1alpha1
kind: MeshSettings
metadata: {name: mesh}
spec:
  rootNamespace: istio-system
  pathNormalization: WRONG
`

// TestLocate feeds diagnostics shaped like the validator's (object and field
// path, no location) through the resolver and checks the exact positions.
func TestLocate(t *testing.T) {
	r := newReader()
	r.add("p.yaml", []byte(locateSrc))
	if len(r.diags) != 0 {
		t.Fatalf("parse: %s", dump(r.diags))
	}
	const obj = "AuthorizationPolicy/foo/httpbin"
	tests := []struct {
		object, field string
		line, col     int
	}{
		{obj, "", 1, 1},
		{obj, "metadata.name", 4, 9},
		{obj, "spec", 8, 1},
		{obj, "spec.action", 11, 11},
		{obj, "spec.selector.matchLabels.app", 10, 24},
		{obj, "spec.rules", 12, 3},
		{obj, "spec.rules[0]", 13, 5},
		{obj, "spec.rules[0].from[0].source.principals", 15, 9},
		{obj, "spec.rules[0].from[0].source.principals[1]", 17, 11},
		{obj, "spec.rules[0].to[0].operation.ports[1]", 20, 23},
		{obj, "spec.rules[0].to[0].operation.paths[1]", 21, 21},
		{obj, "spec.rules[0].when[0].key", 23, 12},
		{obj, "spec.rules[0].when[0].values[0]", 24, 16},
		// a missing field points at the deepest enclosing node that exists
		{obj, "spec.rules[0].to[0].operation.methods", 19, 7},
		{obj, "spec.rules[0].from[0].source.principals[7]", 15, 9},
		{obj, "spec.provider.name", 8, 1},
		// label keys with dots, written with dots or quoted
		{obj, "metadata.labels.app.kubernetes.io/name", 7, 29},
		{obj, `metadata.labels["app.kubernetes.io/name"]`, 7, 29},
		// through an alias (points at the anchored value) and a merge key
		{obj, "spec.rules[2].from[0].source.namespaces[0]", 26, 29},
		{obj, "spec.rules[2].to[0].operation.methods[0]", 30, 24},
		{obj, "spec.rules[2].to[0].operation.hosts[0]", 31, 17},
		// a path relative to spec
		{obj, "rules[1]", 25, 5},
		// settings, by object or by the set's field name
		{"MeshSettings/default/mesh", "spec.pathNormalization", 38, 22},
		{"MeshSettings", "spec.rootNamespace", 37, 18},
		{"", "settings.pathNormalization", 38, 22},
		{"settings", "spec.pathNormalization", 38, 22},
	}
	for _, tt := range tests {
		d := policies.Diagnostic{Object: tt.object, Field: tt.field}
		r.locate(&d)
		if d.Loc.File != "p.yaml" || d.Loc.Line != tt.line || d.Loc.Column != tt.col {
			t.Errorf("%s %s: located at %s:%d:%d, want line %d col %d", tt.object, tt.field, d.Loc.File, d.Loc.Line, d.Loc.Column, tt.line, tt.col)
		}
	}
	// unknown objects keep whatever location they had
	d := policies.Diagnostic{Object: "AuthorizationPolicy/foo/other", Field: "spec", Loc: policies.Location{File: "x", Line: 3}}
	r.locate(&d)
	if d.Loc != (policies.Location{File: "x", Line: 3}) {
		t.Errorf("unknown object relocated to %+v", d.Loc)
	}
}

// TestLintLocated checks that warnings from the set-wide pass come back
// with the YAML position of the field they name.
func TestLintLocated(t *testing.T) {
	src := `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: a, namespace: foo}
spec:
  rules:
  - to:
    - operation:
        methods:
        - GET
        - get
        paths: ["api/v1"]
  - to:
    - operation: {methods: [GET], paths: [api/v1], ports: ["80"]}
`
	_, diags := Parse("in.yaml", []byte(src))
	checkDiags(t, diags, []wantDiag{
		{code: policies.CodeNeverMatches, line: 10, col: 11, field: "spec.rules[0].to[0].operation.methods[1]"},
		{code: policies.CodeNeverMatches, line: 11, col: 17, field: "spec.rules[0].to[0].operation.paths[0]"},
		{code: policies.CodeShadowed, line: 12, col: 5, field: "spec.rules[1]", msg: "spec.rules[0]"},
		{code: policies.CodeNeverMatches, line: 13, col: 43, field: "spec.rules[1].to[0].operation.paths[0]"},
	})
}
