package requestauth

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/meshguard/meshguard/policies"
)

// signer is a test identity provider's key.
type signer struct {
	kid  string
	alg  jose.SignatureAlgorithm
	priv any
	pub  any
}

var (
	keyOnce          sync.Once
	rsaKey1, rsaKey2 *rsa.PrivateKey
	ecKey            *ecdsa.PrivateKey
	edPub            ed25519.PublicKey
	edPriv           ed25519.PrivateKey
)

func keys(t testing.TB) {
	t.Helper()
	keyOnce.Do(func() {
		var err error
		if rsaKey1, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
		if rsaKey2, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
		if ecKey, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			panic(err)
		}
		if edPub, edPriv, err = ed25519.GenerateKey(rand.Reader); err != nil {
			panic(err)
		}
	})
}

func rsaSigner(t testing.TB, kid string) signer {
	keys(t)
	return signer{kid: kid, alg: jose.RS256, priv: rsaKey1, pub: &rsaKey1.PublicKey}
}

func rsaSigner2(t testing.TB, kid string) signer {
	keys(t)
	return signer{kid: kid, alg: jose.RS256, priv: rsaKey2, pub: &rsaKey2.PublicKey}
}

func ecSigner(t testing.TB, kid string) signer {
	keys(t)
	return signer{kid: kid, alg: jose.ES256, priv: ecKey, pub: &ecKey.PublicKey}
}

func edSigner(t testing.TB, kid string) signer {
	keys(t)
	return signer{kid: kid, alg: jose.EdDSA, priv: edPriv, pub: edPub}
}

// jwks is the public key set of the signers.
func jwks(t testing.TB, ss ...signer) string {
	t.Helper()
	var set jose.JSONWebKeySet
	for _, s := range ss {
		set.Keys = append(set.Keys, jose.JSONWebKey{Key: s.pub, KeyID: s.kid, Algorithm: string(s.alg), Use: "sig"})
	}
	b, err := json.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// sign makes a token of claims.
func (s signer) sign(t testing.TB, claims map[string]any) string {
	t.Helper()
	opts := (&jose.SignerOptions{}).WithType("JWT")
	if s.kid != "" {
		opts = opts.WithHeader("kid", s.kid)
	}
	sg, err := jose.NewSigner(jose.SigningKey{Algorithm: s.alg, Key: s.priv}, opts)
	if err != nil {
		t.Fatal(err)
	}
	payload, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	obj, err := sg.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := obj.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// unsigned makes a token with the given header and claims and a garbage
// signature.
func unsigned(header, claims map[string]any) string {
	h, _ := json.Marshal(header)
	c, _ := json.Marshal(claims)
	enc := base64.RawURLEncoding.EncodeToString
	return enc(h) + "." + enc(c) + "." + enc([]byte("signature"))
}

// claims are a token's claims for issuer, subject and audiences, valid
// from an hour ago for an hour.
func claims(iss, sub string, aud ...string) map[string]any {
	now := time.Now().Unix()
	c := map[string]any{"iat": now - 60, "nbf": now - 60, "exp": now + 3600}
	if iss != "" {
		c["iss"] = iss
	}
	if sub != "" {
		c["sub"] = sub
	}
	switch len(aud) {
	case 0:
	case 1:
		c["aud"] = aud[0]
	default:
		c["aud"] = aud
	}
	return c
}

func with(c map[string]any, kv ...any) map[string]any {
	for i := 0; i+1 < len(kv); i += 2 {
		c[kv[i].(string)] = kv[i+1]
	}
	return c
}

// compile compiles RequestAuthentication documents in namespace shop and
// returns the snapshot and the providers of a workload of shop.
func compile(t testing.TB, specs ...string) (*policies.Snapshot, []*policies.JWTProvider) {
	t.Helper()
	var set policies.Set
	for i, spec := range specs {
		var s policies.RequestAuthenticationSpec
		if err := json.Unmarshal([]byte(spec), &s); err != nil {
			t.Fatalf("spec %d: %v", i, err)
		}
		set.RequestAuthentications = append(set.RequestAuthentications, policies.RequestAuthentication{
			APIVersion: policies.APIVersionIstioV1, Kind: policies.KindRequestAuthentication,
			Metadata: policies.ObjectMeta{Name: "ra" + string(rune('a'+i)), Namespace: "shop"}, Spec: s,
		})
	}
	b, diags, err := policies.NewBundle("", set)
	if err != nil {
		t.Fatalf("bundle: %v", diags)
	}
	snap, err := policies.Compile(b)
	if err != nil {
		t.Fatal(err)
	}
	ps, why := snap.JWTProviders(&policies.Target{Namespace: "shop", Resolved: true})
	if why != "" {
		t.Fatal(why)
	}
	return snap, ps
}

func rule(v map[string]any) string {
	b, _ := json.Marshal(map[string]any{"jwtRules": []any{v}})
	return string(b)
}

func newAuth(t testing.TB, cfg Config) *Authenticator {
	t.Helper()
	if cfg.Client == nil {
		cfg.Client = http.DefaultClient // tests fetch from loopback servers
	}
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	return a
}

// jwksServer serves a key set that a test can change, counting requests.
type jwksServer struct {
	*httptest.Server
	body  atomic.Value // string
	fail  atomic.Bool
	delay atomic.Int64 // nanoseconds
	hits  atomic.Int64
}

func newJWKSServer(t testing.TB, body string) *jwksServer {
	t.Helper()
	s := &jwksServer{}
	s.body.Store(body)
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.hits.Add(1)
		if d := time.Duration(s.delay.Load()); d > 0 {
			select {
			case <-time.After(d):
			case <-r.Context().Done():
				return
			}
		}
		if s.fail.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		if r.URL.Path == "/.well-known/openid-configuration" {
			_ = json.NewEncoder(w).Encode(map[string]string{"issuer": "http://" + r.Host, "jwks_uri": "http://" + r.Host + "/keys"})
			return
		}
		w.Header().Set("content-type", "application/json")
		_, _ = w.Write([]byte(s.body.Load().(string)))
	}))
	t.Cleanup(s.Close)
	return s
}

// headers is a request's headers.
type headers map[string]string

func (h headers) Get(name string) (string, bool) {
	v, ok := h[name]
	return v, ok
}

func bearer(tok string) headers { return headers{"authorization": "Bearer " + tok} }

func mustContain(t *testing.T, list []string, v string) {
	t.Helper()
	for _, x := range list {
		if x == v {
			return
		}
	}
	t.Errorf("%q not in %v", v, list)
}

func jsonString(v any) string {
	b, _ := json.Marshal(v)
	return strings.TrimSpace(string(b))
}
