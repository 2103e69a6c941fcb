package policies

import (
	"encoding/json"
	"testing"
)

// keyCount and Mode.UnmarshalJSON read JSON with the bundle's own reader,
// not encoding/json, which the wasm filter (it links this package) cannot
// afford. These targets hold them to what they were with encoding/json.

// referenceKeyCount is keyCount as written with encoding/json.
func referenceKeyCount(jwks string) int {
	var doc struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if json.Unmarshal([]byte(jwks), &doc) != nil {
		return 0
	}
	return len(doc.Keys)
}

// referenceModeUnmarshal is Mode.UnmarshalJSON as written with
// encoding/json.
func referenceModeUnmarshal(b []byte) (Mode, error) {
	if string(b) == "false" {
		return ModeOff, nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return "", err
	}
	return Mode(s), nil
}

var jsonParitySeeds = []string{
	``, ` `, `null`, `false`, `true`, `0`, `[]`, `{}`, `"x"`, `"enforce"`, ` "dry-run" `, `"off"x`, `"a" "b"`,
	`"\u00e9\ud800\uDC00"`, `"\ud800"`, "\"\xff\"", "\"a\x01\"", `"\q"`, `{"keys":[]}`, `{"keys":[1,{},"x",null]}`,
	`{"KEYS":[1,2]}`, `{"keys":[1,2],"Keys":[3]}`, `{"keys":[1],"keys":null}`, `{"keys":"x","keys":[1]}`,
	`{"keys":[1,2]}x`, `{"keys":[1,2]}}`, `{"keys":[1,]}`, `{"kelvin":[1],"\u212aeys":[1,2]}`, `{"keys":{}}`,
	`{"keys":[[[[[]]]]],"other":{"keys":[1,2,3]}}`, `{"keys":[1 2]}`, `{"keys":[01]}`, `{"x":1,"keys":[true,false]} `,
}

func FuzzKeyCountParity(f *testing.F) {
	for _, s := range jsonParitySeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, jwks string) {
		if got, want := keyCount(jwks), referenceKeyCount(jwks); got != want {
			t.Fatalf("keyCount(%q) = %d, encoding/json counts %d", jwks, got, want)
		}
	})
}

func FuzzModeUnmarshalJSONParity(f *testing.F) {
	for _, s := range jsonParitySeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		want, wantErr := referenceModeUnmarshal(data)
		var got Mode
		gotErr := got.UnmarshalJSON(data)
		if (gotErr == nil) != (wantErr == nil) || (gotErr == nil && got != want) {
			t.Fatalf("UnmarshalJSON(%q) = %q, %v; encoding/json: %q, %v", data, got, gotErr, want, wantErr)
		}
	})
}
