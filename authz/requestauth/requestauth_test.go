package requestauth

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/netip"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/meshguard/meshguard/policies"
)

const idp = "https://idp.example"

// TestTokens: one inline key set of an RSA, an EC and an Ed25519 key, and
// tokens of every kind a client may send.
func TestTokens(t *testing.T) {
	k1, k2, k3 := rsaSigner(t, "k1"), ecSigner(t, "k2"), edSigner(t, "k3")
	snap, ps := compile(t, rule(map[string]any{"issuer": idp, "audiences": []string{"api", "https://web.example/"}, "jwks": jwks(t, k1, k2, k3)}))
	a := newAuth(t, Config{})
	now := time.Now().Unix()
	hs := func() string {
		sg, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: []byte(strings.Repeat("s", 32))}, (&jose.SignerOptions{}).WithHeader("kid", "k1"))
		if err != nil {
			t.Fatal(err)
		}
		obj, _ := sg.Sign([]byte(jsonString(claims(idp, "alice", "api"))))
		s, _ := obj.CompactSerialize()
		return s
	}()
	good := k1.sign(t, claims(idp, "alice", "api"))
	parts := strings.Split(good, ".")
	tampered := parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte(jsonString(claims(idp, "mallory", "api")))) + "." + parts[2]
	tests := []struct {
		name   string
		token  string
		reason policies.Reason // "" : valid
		status int
		msg    string
	}{
		{"RS256", good, "", 0, ""},
		{"ES256", k2.sign(t, claims(idp, "alice", "api")), "", 0, ""},
		{"EdDSA", k3.sign(t, claims(idp, "alice", "api")), "", 0, ""},
		{"one of several audiences", k1.sign(t, claims(idp, "alice", "other", "api")), "", 0, ""},
		{"audiences compared without scheme and trailing slash", k1.sign(t, claims(idp, "alice", "web.example")), "", 0, ""},
		{"expired within the 60s skew", k1.sign(t, with(claims(idp, "alice", "api"), "exp", now-30)), "", 0, ""},
		{"not yet valid within the skew", k1.sign(t, with(claims(idp, "alice", "api"), "nbf", now+30)), "", 0, ""},
		{"no exp", k1.sign(t, map[string]any{"iss": idp, "sub": "alice", "aud": "api"}), "", 0, ""},
		{"HS256 refused", hs, policies.ReasonDeniedToken, 401, "[alg] is not accepted"},
		{"alg none refused", unsigned(map[string]any{"alg": "none"}, claims(idp, "alice", "api")), policies.ReasonDeniedToken, 401, "[alg] is not accepted"},
		{"expired", k1.sign(t, with(claims(idp, "alice", "api"), "exp", now-120)), policies.ReasonDeniedToken, 401, "Jwt is expired"},
		{"not yet valid", k1.sign(t, with(claims(idp, "alice", "api"), "nbf", now+120)), policies.ReasonDeniedToken, 401, "Jwt not yet valid"},
		{"wrong audience: 403, as Envoy", k1.sign(t, claims(idp, "alice", "other")), policies.ReasonDeniedTokenAudience, 403, "Audiences in Jwt are not allowed"},
		{"no audience", k1.sign(t, claims(idp, "alice")), policies.ReasonDeniedTokenAudience, 403, "Audiences"},
		{"wrong issuer", k1.sign(t, claims("https://evil.example", "alice", "api")), policies.ReasonDeniedToken, 401, "Jwt issuer is not configured"},
		{"no issuer", k1.sign(t, claims("", "alice", "api")), policies.ReasonDeniedToken, 401, "Jwt issuer is not configured"},
		{"unknown kid", rsaSigner2(t, "k9").sign(t, claims(idp, "alice", "api")), policies.ReasonDeniedToken, 401, "doesn't have key to match kid"},
		{"another key under a known kid", rsaSigner2(t, "k1").sign(t, claims(idp, "alice", "api")), policies.ReasonDeniedToken, 401, "Jwt verification fails"},
		{"tampered payload", tampered, policies.ReasonDeniedToken, 401, "Jwt verification fails"},
		{"not a JWT", "abc", policies.ReasonDeniedToken, 401, "two dots"},
		{"an empty part", parts[0] + ".." + parts[2], policies.ReasonDeniedToken, 401, "two dots"},
		{"header not base64url", "A." + parts[1] + "." + parts[2], policies.ReasonDeniedToken, 401, "header is an invalid Base64url"},
		{"header not JSON", base64.RawURLEncoding.EncodeToString([]byte("{")) + "." + parts[1] + "." + parts[2], policies.ReasonDeniedToken, 401, "header is an invalid JSON"},
		{"kid not a string", unsigned(map[string]any{"alg": "RS256", "kid": 1}, claims(idp, "alice", "api")), policies.ReasonDeniedToken, 401, "[kid]"},
		{"crit", unsigned(map[string]any{"alg": "RS256", "crit": []string{"b64"}, "b64": false}, claims(idp, "alice", "api")), policies.ReasonDeniedToken, 401, "[crit]"},
		{"exp not a number", unsigned(map[string]any{"alg": "RS256"}, with(claims(idp, "alice", "api"), "exp", "tomorrow")), policies.ReasonDeniedToken, 401, "[exp] field is not an integer"},
		{"negative nbf", unsigned(map[string]any{"alg": "RS256"}, with(claims(idp, "alice", "api"), "nbf", -1)), policies.ReasonDeniedToken, 401, "[nbf]"},
		{"aud a number", unsigned(map[string]any{"alg": "RS256"}, with(claims(idp, "alice"), "aud", 7)), policies.ReasonDeniedToken, 401, "[aud]"},
		{"aud list with a number", unsigned(map[string]any{"alg": "RS256"}, with(claims(idp, "alice"), "aud", []any{"api", 7})), policies.ReasonDeniedToken, 401, "[aud]"},
		{"iss not a string", unsigned(map[string]any{"alg": "RS256"}, with(claims(idp, "alice", "api"), "iss", true)), policies.ReasonDeniedToken, 401, "[iss]"},
		{"sub not a string", unsigned(map[string]any{"alg": "RS256"}, with(claims(idp, "alice", "api"), "sub", 1)), policies.ReasonDeniedToken, 401, "[sub]"},
		{"payload not an object", parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte("[1]")) + "." + parts[2], policies.ReasonDeniedToken, 401, "payload is an invalid JSON"},
		{"too large", k1.sign(t, with(claims(idp, "alice", "api"), "pad", strings.Repeat("x", 70<<10))), policies.ReasonDeniedToken, 401, "too large"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, f := a.Authenticate(context.Background(), snap, ps, Request{Headers: bearer(tt.token), Path: "/"})
			if tt.reason == "" {
				if f != nil {
					t.Fatalf("refused: %v", f)
				}
				if res.Token == nil || res.Token.Subject != "alice" || res.Token.Issuer != idp || res.Token.Principal != idp+"/alice" || !res.Token.SVID.IsZero() {
					t.Fatalf("token %+v", res.Token)
				}
				return
			}
			if f == nil {
				t.Fatalf("accepted: %+v", res.Token)
			}
			if f.Reason != tt.reason || f.Status != tt.status || !strings.Contains(f.Message, tt.msg) {
				t.Fatalf("got %s %d %q, want %s %d %q", f.Reason, f.Status, f.Message, tt.reason, tt.status, tt.msg)
			}
			if res.Token != nil {
				t.Fatal("a refused request has a token")
			}
		})
	}

	t.Run("no token is no failure", func(t *testing.T) {
		for _, h := range []headers{nil, {}, {"authorization": "Basic YWxhZGRpbjpvcGVuc2VzYW1l"}} {
			res, f := a.Authenticate(context.Background(), snap, ps, Request{Headers: h, Path: "/x?a=b"})
			if f != nil || res.Token != nil {
				t.Errorf("%v: %+v %v", h, res, f)
			}
		}
	})
}

// TestLocations: where tokens are found, as Envoy's extractor finds them,
// and meshguard's "every token must be valid".
func TestLocations(t *testing.T) {
	k1 := rsaSigner(t, "k1")
	set := jwks(t, k1)
	alice := k1.sign(t, claims(idp, "alice", "api"))
	bad := rsaSigner2(t, "k1").sign(t, claims(idp, "mallory", "api"))
	other := "https://other.example"
	bob := k1.sign(t, claims(other, "bob"))
	snap, ps := compile(t,
		rule(map[string]any{"issuer": idp, "audiences": []string{"api"}, "jwks": set}),
		rule(map[string]any{"issuer": other, "jwks": set, "fromHeaders": []any{map[string]any{"name": "X-Other"}}, "fromCookies": []string{"session"}}),
		rule(map[string]any{"issuer": idp, "jwks": set, "fromHeaders": []any{map[string]any{"name": "x-idp", "prefix": "Token "}}, "fromParams": []string{"jwt"}}),
	)
	a := newAuth(t, Config{})
	tests := []struct {
		name string
		h    headers
		path string
		sub  string // "" : no token; "!" : refused
		msg  string
	}{
		{"default: Authorization Bearer", bearer(alice), "/", "alice", ""},
		{"default: access_token parameter", nil, "/p?x=1&access_token=" + alice, "alice", ""},
		{"a parameter percent-encoded", nil, "/p?access_token=" + strings.Replace(alice, ".", "%2E", 1), "alice", ""},
		{"a prefix found anywhere in the value, the token after it", headers{"authorization": "Basic x, Bearer  " + alice + " trailing"}, "/", "alice", ""},
		{"a header without the prefix holds no token", headers{"authorization": "bearer " + alice}, "/", "", ""},
		{"a header without a prefix: the whole value", headers{"x-other": bob}, "/", "bob", ""},
		{"a custom prefix", headers{"x-idp": "Token " + alice}, "/", "alice", ""},
		{"a custom parameter", nil, "/p?jwt=" + alice, "alice", ""},
		{"a cookie, quoted", headers{"cookie": `a=1; session="` + bob + `"; b=2`}, "/", "bob", ""},
		{"cookies Envoy joined with ','", headers{"cookie": "a=1,session=" + bob}, "/", "bob", ""},
		{"the same token at two places", headers{"authorization": "Bearer " + alice, "x-idp": "Token " + alice}, "/?access_token=" + alice, "alice", ""},
		{"an invalid token beside a valid one is refused", headers{"authorization": "Bearer " + alice, "x-idp": "Token " + bad}, "/", "!", "Jwt verification fails"},
		{"a second occurrence of a parameter is a token too", nil, "/p?jwt=" + alice + "&jwt=" + bad, "!", "Jwt verification fails"},
		{"a token of another issuer at a place only its rule reads", headers{"x-other": alice}, "/", "!", "Jwt issuer is not configured"},
		{"two different valid tokens are refused", headers{"authorization": "Bearer " + alice, "x-other": bob}, "/", "!", "several different valid tokens"},
		{"a token no rule's place holds is not read", headers{"x-unread": bad}, "/", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, f := a.Authenticate(context.Background(), snap, ps, Request{Headers: tt.h, Path: tt.path})
			switch {
			case tt.sub == "!":
				if f == nil || !strings.Contains(f.Message, tt.msg) {
					t.Fatalf("want refused (%s), got %+v %v", tt.msg, res.Token, f)
				}
			case f != nil:
				t.Fatalf("refused: %v", f)
			case tt.sub == "" && res.Token != nil:
				t.Fatalf("want no token, got %+v", res.Token)
			case tt.sub != "" && (res.Token == nil || res.Token.Subject != tt.sub):
				t.Fatalf("want %s's token, got %+v", tt.sub, res.Token)
			}
		})
	}

	t.Run("too many tokens", func(t *testing.T) {
		q := "/p?"
		for i := 0; i < maxTokens+1; i++ {
			q += "jwt=" + alice + "&"
		}
		if _, f := a.Authenticate(context.Background(), snap, ps, Request{Path: q}); f == nil || !strings.Contains(f.Message, "too many") {
			t.Fatalf("got %v", f)
		}
	})
}

// TestRulesOfOneIssuer: several rules of one issuer (a mesh-wide and a
// namespace RequestAuthentication) read the same place: a token valid for
// any of them is valid, as Envoy's OR of the providers.
func TestRulesOfOneIssuer(t *testing.T) {
	k1, k2 := rsaSigner(t, "k1"), ecSigner(t, "k2")
	snap, ps := compile(t,
		rule(map[string]any{"issuer": idp, "audiences": []string{"mesh"}, "jwks": jwks(t, k1)}),
		rule(map[string]any{"issuer": idp, "audiences": []string{"api"}, "jwks": jwks(t, k2)}),
	)
	a := newAuth(t, Config{})
	for _, tc := range []struct {
		tok    string
		reason policies.Reason
	}{
		{k1.sign(t, claims(idp, "alice", "mesh")), ""},
		{k2.sign(t, claims(idp, "alice", "api")), ""},
		{k2.sign(t, claims(idp, "alice", "mesh")), policies.ReasonDeniedToken},          // the mesh rule's audience, the other's key
		{k1.sign(t, claims(idp, "alice", "other")), policies.ReasonDeniedTokenAudience}, // no rule's audience
	} {
		_, f := a.Authenticate(context.Background(), snap, ps, Request{Headers: bearer(tc.tok), Path: "/"})
		if (f == nil) != (tc.reason == "") || (f != nil && f.Reason != tc.reason) {
			t.Errorf("want %q, got %v", tc.reason, f)
		}
	}
}

// TestJWTSVIDBeside: the JWT-SVID path's token is left to it when no rule
// names its issuer, and claimed when one does.
func TestJWTSVIDBeside(t *testing.T) {
	k1 := rsaSigner(t, "k1")
	snap, ps := compile(t, rule(map[string]any{"issuer": idp, "jwks": jwks(t, k1)}))
	a := newAuth(t, Config{})
	svid := unsigned(map[string]any{"alg": "ES256", "kid": "spire"}, claims("", "spiffe://td/ns/a/sa/b", "meshguard"))
	res, f := a.Authenticate(context.Background(), snap, ps, Request{Headers: bearer(svid), Path: "/", SVIDToken: svid})
	if f != nil || res.Token != nil || res.SVIDTokenClaimed {
		t.Fatalf("a JWT-SVID no rule claims: %+v %v", res, f)
	}
	if _, f := a.Authenticate(context.Background(), snap, ps, Request{Headers: bearer(svid), Path: "/"}); f == nil || f.Reason != policies.ReasonDeniedToken {
		t.Fatalf("without the JWT-SVID path, an unknown issuer is refused: %v", f)
	}
	tok := k1.sign(t, claims(idp, "alice"))
	res, f = a.Authenticate(context.Background(), snap, ps, Request{Headers: bearer(tok), Path: "/", SVIDToken: tok})
	if f != nil || res.Token == nil || !res.SVIDTokenClaimed {
		t.Fatalf("an end-user token at the JWT-SVID header: %+v %v", res, f)
	}
}

// TestOutputs: the rule's outputs become header changes, and claims the
// engine matches.
func TestOutputs(t *testing.T) {
	k1 := rsaSigner(t, "k1")
	snap, ps := compile(t, rule(map[string]any{
		"issuer": idp, "jwks": jwks(t, k1), "outputPayloadToHeader": "X-Jwt-Payload",
		"spaceDelimitedClaims": []string{"roles"},
		"outputClaimToHeaders": []any{
			map[string]any{"header": "x-sub", "claim": "sub"},
			map[string]any{"header": "x-level", "claim": "level"},
			map[string]any{"header": "x-ratio", "claim": "ratio"},
			map[string]any{"header": "x-admin", "claim": "admin"},
			map[string]any{"header": "x-team", "claim": "org.team"},
			map[string]any{"header": "x-org", "claim": "org"},
			map[string]any{"header": "x-missing", "claim": "nope"},
			map[string]any{"header": "x-newline", "claim": "evil"},
		},
	}))
	a := newAuth(t, Config{})
	c := with(claims(idp, "alice"), "level", 3, "ratio", 1.5, "admin", true, "org", map[string]any{"team": "sre"},
		"evil", "a\r\nx-injected: 1", "scope", "read  write", "permission", "", "roles", "a b", "groups", "x y")
	tok := k1.sign(t, c)
	res, f := a.Authenticate(context.Background(), snap, ps, Request{Headers: bearer(tok), Path: "/"})
	if f != nil {
		t.Fatal(f)
	}
	want := [][2]string{
		{"x-jwt-payload", strings.Split(tok, ".")[1]},
		{"x-sub", "alice"}, {"x-level", "3"}, {"x-ratio", "1.500000"}, {"x-admin", "true"}, {"x-team", "sre"},
		{"x-org", base64.StdEncoding.EncodeToString([]byte(`{"team":"sre"}`))},
	}
	if !reflect.DeepEqual(res.Set, want) {
		t.Errorf("set\n got %v\nwant %v", res.Set, want)
	}
	for _, h := range []string{"x-missing", "x-newline", "x-level", "authorization"} {
		mustContain(t, append(res.Remove, "x-level"), h) // outputs not written are still removed: a client cannot send them
	}
	if slicesContain(res.Remove, "x-sub") {
		t.Errorf("a header set is not removed: %v", res.Remove)
	}
	cl := res.Token.Claims
	if !reflect.DeepEqual(cl["scope"], []any{"read", "write"}) || !reflect.DeepEqual(cl["roles"], []any{"a", "b"}) ||
		cl["groups"] != "x y" || cl["permission"] != "" {
		t.Errorf("space-delimited claims: scope %v roles %v groups %v permission %q", cl["scope"], cl["roles"], cl["groups"], cl["permission"])
	}

	// Without a token, the outputs are removed all the same.
	res, f = a.Authenticate(context.Background(), snap, ps, Request{Headers: headers{"x-jwt-payload": "forged"}, Path: "/"})
	if f != nil || res.Token != nil || !slicesContain(res.Remove, "x-jwt-payload") || slicesContain(res.Remove, "authorization") {
		t.Errorf("no token: %+v %v", res, f)
	}

	_, fwd := compile(t, rule(map[string]any{"issuer": idp, "jwks": jwks(t, k1), "forwardOriginalToken": true}))
	res, f = a.Authenticate(context.Background(), snap, fwd, Request{Headers: bearer(tok), Path: "/"})
	if f != nil || slicesContain(res.Remove, "authorization") {
		t.Errorf("forwardOriginalToken keeps the header: %+v %v", res.Remove, f)
	}
}

func slicesContain(list []string, v string) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

// TestRemoteKeySets: jwksUri and OpenID discovery against a real HTTP
// server in process; rotation, refresh, failure and limits.
func TestRemoteKeySets(t *testing.T) {
	k1, k2 := rsaSigner(t, "k1"), rsaSigner2(t, "k2")
	auth := func(t *testing.T, a *Authenticator, snap *policies.Snapshot, ps []*policies.JWTProvider, tok string) *Failure {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, f := a.Authenticate(ctx, snap, ps, Request{Headers: bearer(tok), Path: "/"})
		return f
	}

	t.Run("jwksUri, and a rotated key fetched on its first token", func(t *testing.T) {
		srv := newJWKSServer(t, jwks(t, k1))
		snap, ps := compile(t, rule(map[string]any{"issuer": idp, "jwksUri": srv.URL + "/keys"}))
		a := newAuth(t, Config{MinRefetch: time.Millisecond})
		if f := auth(t, a, snap, ps, k1.sign(t, claims(idp, "alice"))); f != nil {
			t.Fatal(f)
		}
		hits := srv.hits.Load()
		srv.body.Store(jwks(t, k1, k2)) // the provider rotates in k2
		time.Sleep(2 * time.Millisecond)
		if f := auth(t, a, snap, ps, k2.sign(t, claims(idp, "alice"))); f != nil {
			t.Fatalf("a key rotated in: %v", f)
		}
		if srv.hits.Load() != hits+1 {
			t.Errorf("fetches: %d, want %d", srv.hits.Load(), hits+1)
		}
		if f := auth(t, a, snap, ps, k1.sign(t, claims(idp, "alice"))); f != nil {
			t.Fatalf("the old key still verifies: %v", f)
		}
	})

	t.Run("an unknown kid refetches at most once per MinRefetch", func(t *testing.T) {
		srv := newJWKSServer(t, jwks(t, k1))
		snap, ps := compile(t, rule(map[string]any{"issuer": idp, "jwksUri": srv.URL + "/keys"}))
		a := newAuth(t, Config{MinRefetch: time.Hour})
		if f := auth(t, a, snap, ps, k1.sign(t, claims(idp, "alice"))); f != nil {
			t.Fatal(f)
		}
		hits := srv.hits.Load()
		for i := 0; i < 5; i++ {
			if f := auth(t, a, snap, ps, k2.sign(t, claims(idp, "alice"))); f == nil || !strings.Contains(f.Message, "kid") {
				t.Fatalf("unknown kid: %v", f)
			}
		}
		if srv.hits.Load() != hits {
			t.Errorf("an unknown kid fetched %d times within MinRefetch", srv.hits.Load()-hits)
		}
	})

	t.Run("OpenID discovery from the issuer", func(t *testing.T) {
		srv := newJWKSServer(t, jwks(t, k1))
		iss := srv.URL
		snap, ps := compile(t, rule(map[string]any{"issuer": iss}))
		a := newAuth(t, Config{})
		if f := auth(t, a, snap, ps, k1.sign(t, claims(iss, "alice"))); f != nil {
			t.Fatal(f)
		}
	})

	t.Run("unavailable: tokens refused, tokenless requests pass", func(t *testing.T) {
		srv := newJWKSServer(t, jwks(t, k1))
		srv.fail.Store(true)
		snap, ps := compile(t, rule(map[string]any{"issuer": idp, "jwksUri": srv.URL + "/keys"}))
		a := newAuth(t, Config{})
		f := auth(t, a, snap, ps, k1.sign(t, claims(idp, "alice")))
		if f == nil || f.Status != 401 || !strings.Contains(f.Message, "Jwks remote fetch is failed") || !strings.Contains(f.Error(), "status 503") {
			t.Fatalf("got %v", f)
		}
		if _, f := a.Authenticate(context.Background(), snap, ps, Request{Path: "/"}); f != nil {
			t.Fatalf("no token: %v", f)
		}
	})

	t.Run("a failed refresh keeps the last good keys", func(t *testing.T) {
		srv := newJWKSServer(t, jwks(t, k1))
		snap, ps := compile(t, rule(map[string]any{"issuer": idp, "jwksUri": srv.URL + "/keys"}))
		var now atomic.Int64
		now.Store(time.Now().UnixNano())
		a := newAuth(t, Config{Refresh: time.Minute, MinRefetch: time.Second, Now: func() time.Time { return time.Unix(0, now.Load()) }})
		tok := k1.sign(t, claims(idp, "alice"))
		if f := auth(t, a, snap, ps, tok); f != nil {
			t.Fatal(f)
		}
		srv.fail.Store(true)
		now.Add(int64(2 * time.Minute))
		hits := srv.hits.Load()
		a.refreshDue()
		waitFor(t, func() bool { return srv.hits.Load() > hits })
		a.fetches.Wait()
		if f := auth(t, a, snap, ps, tok); f != nil {
			t.Fatalf("after a failed refresh: %v", f)
		}
	})

	t.Run("a fetch is bounded in time", func(t *testing.T) {
		srv := newJWKSServer(t, jwks(t, k1))
		srv.delay.Store(int64(2 * time.Second))
		snap, ps := compile(t, rule(map[string]any{"issuer": idp, "jwksUri": srv.URL + "/keys", "timeout": "50ms"}))
		a := newAuth(t, Config{})
		start := time.Now()
		f := auth(t, a, snap, ps, k1.sign(t, claims(idp, "alice")))
		if f == nil || !strings.Contains(f.Error(), "deadline") {
			t.Fatalf("got %v", f)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("took %v", d)
		}
	})

	t.Run("a fetch is bounded in size", func(t *testing.T) {
		srv := newJWKSServer(t, jwks(t, k1))
		snap, ps := compile(t, rule(map[string]any{"issuer": idp, "jwksUri": srv.URL + "/keys"}))
		a := newAuth(t, Config{MaxKeySetBytes: 100})
		if f := auth(t, a, snap, ps, k1.sign(t, claims(idp, "alice"))); f == nil || !strings.Contains(f.Error(), "exceeds 100 bytes") {
			t.Fatalf("got %v", f)
		}
	})

	t.Run("a request waits for a fetch no longer than its deadline", func(t *testing.T) {
		srv := newJWKSServer(t, jwks(t, k1))
		srv.delay.Store(int64(time.Second))
		snap, ps := compile(t, rule(map[string]any{"issuer": idp, "jwksUri": srv.URL + "/keys"}))
		a := newAuth(t, Config{})
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
		defer cancel()
		_, f := a.Authenticate(ctx, snap, ps, Request{Headers: bearer(k1.sign(t, claims(idp, "alice"))), Path: "/"})
		if f == nil || !errors.Is(ctx.Err(), context.DeadlineExceeded) {
			t.Fatalf("got %v", f)
		}
	})

	t.Run("Run prepares the serving snapshot", func(t *testing.T) {
		srv := newJWKSServer(t, jwks(t, k1))
		snap, _ := compile(t, rule(map[string]any{"issuer": idp, "jwksUri": srv.URL + "/keys"}))
		a := newAuth(t, Config{})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); a.Run(ctx, func() *policies.Snapshot { return snap }) }()
		waitFor(t, func() bool { return srv.hits.Load() == 1 })
		cancel()
		<-done
	})

	t.Run("Prepare fetches before the first token, and drops what a new policy no longer names", func(t *testing.T) {
		srv := newJWKSServer(t, jwks(t, k1))
		snap, _ := compile(t, rule(map[string]any{"issuer": idp, "jwksUri": srv.URL + "/keys"}))
		a := newAuth(t, Config{})
		a.Prepare(snap)
		waitFor(t, func() bool { return srv.hits.Load() == 1 })
		a.fetches.Wait()
		if n := a.countUnavailable(); n != 0 {
			t.Errorf("unavailable %v", n)
		}
		snap2, _ := compile(t, rule(map[string]any{"issuer": idp, "jwks": jwks(t, k1)}))
		a.Prepare(snap2)
		a.mu.Lock()
		n := len(a.remote)
		a.mu.Unlock()
		if n != 0 {
			t.Errorf("%d fetched sources kept", n)
		}
	})
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
		time.Sleep(time.Millisecond)
	}
}

// TestBlockedAddresses: key sets are never fetched from link-local or cloud
// metadata addresses, nor from blocked ranges.
func TestBlockedAddresses(t *testing.T) {
	for _, tc := range []struct {
		ip      string
		blocked bool
	}{
		{"169.254.169.254", true}, {"fe80::1", true}, {"100.100.100.200", true}, {"fd00:ec2::254", true},
		{"::ffff:169.254.169.254", true}, {"10.0.0.1", false}, {"127.0.0.1", false}, {"2001:db8::1", false},
	} {
		err := checkDialAddr(netip.MustParseAddr(tc.ip), nil)
		if (err != nil) != tc.blocked {
			t.Errorf("%s: %v", tc.ip, err)
		}
	}
	if err := checkDialAddr(netip.MustParseAddr("10.1.2.3"), []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}); !errors.Is(err, errBlocked) {
		t.Errorf("a blocked range: %v", err)
	}

	srv := newJWKSServer(t, `{"keys":[]}`)
	a := newAuth(t, Config{Client: NewHTTPClient([]netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")})})
	if _, err := a.fetch(srv.URL+"/keys", false, time.Second); !errors.Is(err, errBlocked) {
		t.Errorf("a fetch from a blocked range: %v", err)
	}
	if srv.hits.Load() != 0 {
		t.Error("the blocked server was reached")
	}
	a = newAuth(t, Config{Client: NewHTTPClient(nil)})
	if _, err := a.fetch("http://169.254.169.254/latest/meta-data", false, time.Second); !errors.Is(err, errBlocked) {
		t.Errorf("the metadata address: %v", err)
	}
}

// TestKeySets: the forms a key set comes in, and the keys skipped.
func TestKeySets(t *testing.T) {
	k1, k2 := rsaSigner(t, "k1"), ecSigner(t, "k2")
	var set struct {
		Keys []map[string]any `json:"keys"`
	}
	if err := json.Unmarshal([]byte(jwks(t, k1, k2)), &set); err != nil {
		t.Fatal(err)
	}
	padded := map[string]any{}
	for k, v := range set.Keys[0] {
		padded[k] = v
	}
	padded["kid"] = "padded"
	padded["e"] = set.Keys[0]["e"].(string) + "=" // Envoy accepts padding
	enc := map[string]any{}
	for k, v := range set.Keys[0] {
		enc[k] = v
	}
	enc["use"], enc["kid"] = "enc", "enc"
	doc, _ := json.Marshal(map[string]any{"keys": []any{
		set.Keys[0], set.Keys[1], padded, enc,
		map[string]any{"kty": "oct", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0", "kid": "hmac"},
		map[string]any{"kty": "RSA", "kid": "broken"},
		"not a key",
	}})
	ks, err := parseKeySet(doc)
	if err != nil {
		t.Fatal(err)
	}
	var kids []string
	for _, k := range ks.keys {
		kids = append(kids, k.kid)
	}
	if !reflect.DeepEqual(kids, []string{"k1", "k2", "padded"}) {
		t.Errorf("kept %v", kids)
	}
	for _, bad := range []string{`{"keys":[]}`, `{"keys":[{"kty":"oct","k":"AQAB"}]}`, `{"keys":{}}`, `[]`, `{}`, `{"a":"b"}`} {
		if _, err := parseKeySet([]byte(bad)); err == nil {
			t.Errorf("accepted %s", bad)
		}
	}
}

var _ http.Handler = http.HandlerFunc(nil)
