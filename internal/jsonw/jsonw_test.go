package jsonw

import (
	"encoding/json"
	"testing"
)

func FuzzString(f *testing.F) {
	for _, s := range []string{"", "plain", `q"uote\`, "\x00\n\t", "é", "\xff\xfe", "<script>&"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		out := String(nil, s)
		var back string
		if err := json.Unmarshal(out, &back); err != nil {
			t.Fatalf("String(%q) = %s: not JSON: %v", s, out, err)
		}
		want, _ := json.Marshal(s)
		var wantBack string
		_ = json.Unmarshal(want, &wantBack)
		if back != wantBack {
			t.Fatalf("String(%q) decodes to %q, encoding/json's to %q", s, back, wantBack)
		}
	})
}

func TestFields(t *testing.T) {
	b := []byte{'{'}
	b = Field(b, true, "a", "x")
	b = Bool(b, "b", true)
	b = Int(b, "c", -3)
	b = append(b, '}')
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil || m["a"] != "x" || m["b"] != true || m["c"] != float64(-3) {
		t.Fatalf("%s -> %v, %v", b, m, err)
	}
}
