package requestauth

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"strings"
	"testing"
)

// FuzzHeaderToken: the token of a header value with a prefix is a run of
// JWT characters after the prefix (or the whole value when there is none),
// and the reader never panics.
func FuzzHeaderToken(f *testing.F) {
	for _, s := range [][2]string{{"Bearer a.b.c", "Bearer "}, {"Basic x, Bearer  a.b.c d", "Bearer "}, {"Bearer ", "Bearer "}, {"x", ""}, {"Token ###", "Token "}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, v, prefix string) {
		tok, ok := headerToken(v, prefix)
		i := strings.Index(v, prefix)
		switch {
		case prefix == "":
			if !ok || tok != v {
				t.Fatalf("no prefix: %q, %v", tok, ok)
			}
		case i < 0:
			if ok {
				t.Fatalf("%q has no %q, yet %q", v, prefix, tok)
			}
		case !ok:
			t.Fatalf("%q has %q", v, prefix)
		case tok != v:
			if tok == "" || strings.Trim(tok, jwtChars) != "" || !strings.Contains(v[i+len(prefix):], tok) {
				t.Fatalf("token %q of %q after %q", tok, v, prefix)
			}
		}
	})
}

// FuzzQueryAndCookies: the parameter and cookie readers never panic and
// give back names and values found in their input.
func FuzzQueryAndCookies(f *testing.F) {
	for _, s := range []string{"/p?a=b&c=%2E&&d", "/p", "/p?#x", "a=1; b=\"2\",c=3", "=;;x", "/p?%zz=%"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for _, p := range parseQuery(s) {
			if p.k == "" && p.v == "" && !strings.Contains(s, "=") {
				t.Fatalf("empty pair from %q", s)
			}
		}
		for _, c := range parseCookies(s) {
			if c.k == "" || strings.ContainsAny(c.k, ";,") || strings.ContainsAny(c.v, ";,") {
				t.Fatalf("cookie %+v from %q", c, s)
			}
		}
	})
}

// FuzzParseJWT: a token is either refused with a reason or read with an
// accepted algorithm, string iss and sub, and a list of audiences.
func FuzzParseJWT(f *testing.F) {
	f.Add(unsigned(map[string]any{"alg": "RS256", "kid": "k"}, claims(idp, "alice", "api")))
	f.Add(unsigned(map[string]any{"alg": "none"}, claims(idp, "alice")))
	f.Add(unsigned(map[string]any{"alg": "ES256"}, map[string]any{"aud": []any{"a", "b"}, "exp": 1e300}))
	f.Add("a.b.c")
	f.Add("..")
	f.Fuzz(func(t *testing.T, tok string) {
		j, bad := parseJWT(tok)
		if (j == nil) == (bad == nil) {
			t.Fatalf("token %+v, failure %+v", j, bad)
		}
		if bad != nil {
			if statusText[bad.st] == "" {
				t.Fatalf("a failure without a text: %d", bad.st)
			}
			return
		}
		if !acceptedAlg(j.alg) || j.claims == nil || (j.hasIss && j.claims["iss"] != j.iss) || (j.hasSub && j.claims["sub"] != j.sub) {
			t.Fatalf("read %+v", j)
		}
	})
}

// FuzzKeySetParse: a key set is refused, or holds at least one public key
// of a kind meshguard verifies with.
func FuzzKeySetParse(f *testing.F) {
	for _, s := range []string{
		`{"keys":[{"kty":"RSA","n":"sXch","e":"AQAB"}]}`,
		`{"keys":[{"kty":"EC","crv":"P-256","x":"AQAB","y":"AQAB"}]}`,
		`{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}`,
		`{"keys":[{"kty":"oct","k":"AQAB"}]}`,
		`{"k1":"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"}`,
		`{"keys":null}`, `null`, `[]`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		ks, err := parseKeySet(data)
		if (ks == nil) == (err == nil) {
			t.Fatalf("set %v, error %v", ks, err)
		}
		if err != nil {
			return
		}
		if len(ks.keys) == 0 {
			t.Fatal("a key set without keys")
		}
		for _, k := range ks.keys {
			switch k.pub.(type) {
			case *rsa.PublicKey, *ecdsa.PublicKey, ed25519.PublicKey:
			default:
				t.Fatalf("key %T", k.pub)
			}
		}
	})
}
