package strictjson

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// FuzzStringParity holds the string decoder (its plain fast path and
// unquote) to encoding/json, read as Decode promises (a Decoder followed
// by a More check): the same documents accepted, the same values.
func FuzzStringParity(f *testing.F) {
	for _, s := range []string{`"plain"`, `""`, `"a\"b"`, `"\u00e9t\u00e9 \ud83d\ude00"`, `"\ud800x"`, "\"caf\xc3\xa9\"",
		"\"bad \xff utf8\"", `"tab	in"`, `"unterminated`, `"a\qb"`, `"\u12"`, `"` + strings.Repeat("x", 300) + `\n"`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var got string
		err := Decode(data, "the string", func(d *Decoder) { d.String(&got, "a string") })
		var want string
		dec := json.NewDecoder(bytes.NewReader(data))
		stdErr := dec.Decode(&want)
		if stdErr == nil && dec.More() {
			stdErr = errors.New("trailing data")
		}
		if (err == nil) != (stdErr == nil) {
			t.Fatalf("%q: strictjson %v, encoding/json %v", data, err, stdErr)
		}
		if err == nil && got != want {
			t.Fatalf("%q: got %q, want %q", data, got, want)
		}
	})
}
