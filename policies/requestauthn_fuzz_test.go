package policies

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	jose "github.com/go-jose/go-jose/v4"
)

func TestParseClaimPath(t *testing.T) {
	tests := []struct {
		in   string
		want []string
	}{
		{"[a]", []string{"a"}},
		{"[a][b]", []string{"a", "b"}},
		{"[a.b]", []string{"a.b"}},
		{"[example.com/role][x]", []string{"example.com/role", "x"}},
		{"[a[b]]", []string{"a[b]"}},       // Istio's fallback: one bracketed name
		{"[a]x]", []string{"a]x"}},         // the fallback drops the names read so far
		{"[a][b[c]]", []string{"a][b[c]"}}, // ... whatever they were
		{"", nil},
		{"[]", nil},
		{"[a][]", nil},
		{"a", nil},
		{"[a]b", nil},
		{".x[a]", nil},
		{"[a", nil},
	}
	for _, tt := range tests {
		got, err := parseClaimPath(tt.in)
		if tt.want == nil {
			if err == nil {
				t.Errorf("parseClaimPath(%q) = %q, want an error", tt.in, got)
			}
			continue
		}
		if err != nil || strings.Join(got, "\x00") != strings.Join(tt.want, "\x00") {
			t.Errorf("parseClaimPath(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

// FuzzClaimPath: the claims path reader never panics, never yields an empty
// name, reads back what it is written as, and agrees with the compiler.
func FuzzClaimPath(f *testing.F) {
	for _, s := range []string{"[a]", "[a][b]", "[a[b]]", "[a]x]", "[]", "[a][]", "[", "]", "[a.b][c]"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		names, err := parseClaimPath(s)
		set := Set{AuthorizationPolicies: []AuthorizationPolicy{{
			Metadata: ObjectMeta{Name: "p", Namespace: "ns"},
			Spec:     AuthorizationPolicySpec{Rules: []Rule{{When: []Condition{{Key: "request.auth.claims" + s, Values: []string{"v"}}}}}},
		}}}
		_, diags := compileSet(&set)
		if (err == nil) != (diags.Err() == nil) {
			t.Fatalf("parseClaimPath(%q) err=%v, compiler %v", s, err, diags.Err())
		}
		if err != nil {
			return
		}
		if len(names) == 0 {
			t.Fatalf("parseClaimPath(%q): no names", s)
		}
		plain := true
		for _, n := range names {
			if n == "" {
				t.Fatalf("parseClaimPath(%q): an empty name", s)
			}
			plain = plain && !strings.ContainsAny(n, "[]")
		}
		if plain {
			back, err := parseClaimPath("[" + strings.Join(names, "][") + "]")
			if err != nil || strings.Join(back, "\x00") != strings.Join(names, "\x00") {
				t.Fatalf("parseClaimPath(%q) = %q, which reads back as %q, %v", s, names, back, err)
			}
		}
	})
}

// FuzzKeySet: the structural key set check never panics, and accepts every
// key set go-jose accepts (its keys' cryptographic checks are stricter).
func FuzzKeySet(f *testing.F) {
	for _, s := range []string{
		`{"keys":[]}`,
		`{"keys":[{"kty":"RSA","n":"sXch","e":"AQAB","kid":"a","use":"sig","alg":"RS256"}]}`,
		`{"keys":[{"kty":"EC","crv":"P-256","x":"AQAB","y":"AQAB"}]}`,
		`{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}`,
		`{"keys":[{"kty":"oct","k":"AQAB"}]}`,
		`{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB","d":"AQAB"}]}`,
		`{"kid":"-----BEGIN CERTIFICATE-----"}`,
		`{"keys":{}}`, `[]`, `null`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		problems, err := KeySetProblems(data)
		if err != nil {
			if problems != nil {
				t.Fatalf("problems %v with an error %v", problems, err)
			}
		}
		var n int
		if err == nil {
			var doc struct {
				Keys []json.RawMessage `json:"keys"`
			}
			if json.Unmarshal(data, &doc) != nil {
				t.Fatalf("accepted %q, which is not a key set", data)
			}
			n = len(doc.Keys)
			for _, p := range problems {
				if p.Key < 0 || p.Key >= n || (!p.Private && !p.Unusable) {
					t.Fatalf("problem %+v of %d keys", p, n)
				}
			}
		}
		trimmed := bytes.TrimSpace(data)
		if len(trimmed) == 0 || trimmed[0] != '{' || !bytes.Contains(data, []byte(`"keys"`)) {
			return
		}
		var set jose.JSONWebKeySet
		if json.Unmarshal(data, &set) == nil && set.Keys != nil && err != nil {
			t.Fatalf("go-jose accepts %q, meshguard refuses it: %v", data, err)
		}
	})
}
