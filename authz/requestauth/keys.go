package requestauth

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"strings"

	jose "github.com/go-jose/go-jose/v4"
)

// key is one public key a token may be verified with.
type key struct {
	kid string
	alg string // the key's "alg", "" when it names none
	pub any    // *rsa.PublicKey, *ecdsa.PublicKey or ed25519.PublicKey
}

// keySet is a parsed key set. Immutable.
type keySet struct {
	keys []key
}

// Key set parsing follows Envoy's (jwt_verify_lib src/jwks.cc): a JSON Web
// Key Set whose keys that do not parse are skipped, or the X.509 form some
// providers serve (a JSON object mapping key IDs to PEM certificates, whose
// RSA keys are used); a set without a usable key is an error. meshguard
// skips, besides, what it will not verify with: symmetric keys (HMAC),
// keys for encryption ("use": "enc"), curves other than P-256, P-384, P-521
// and Ed25519. A key's private part, if present, is ignored.

var (
	errNoKeys = errors.New("the key set has no key to verify with")
)

// parseKeySet reads a key set.
func parseKeySet(data []byte) (*keySet, error) {
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(data, &doc); err != nil || doc == nil {
		return nil, errors.New("the key set is not a JSON object")
	}
	raw, ok := doc["keys"]
	if !ok {
		return parseX509Set(doc)
	}
	var list []json.RawMessage
	if err := json.Unmarshal(raw, &list); err != nil {
		return nil, errors.New("the key set's \"keys\" is not an array")
	}
	ks := &keySet{}
	for _, r := range list {
		if k, ok := parseKey(r); ok {
			ks.keys = append(ks.keys, k)
		}
	}
	if len(ks.keys) == 0 {
		return nil, errNoKeys
	}
	return ks, nil
}

// parseKey reads one JSON Web Key; false when it is not one meshguard
// verifies with.
func parseKey(raw json.RawMessage) (key, bool) {
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil || m == nil {
		return key{}, false
	}
	if use, _ := m["use"].(string); use != "" && use != "sig" {
		return key{}, false
	}
	if kty, _ := m["kty"].(string); kty != "RSA" && kty != "EC" && kty != "OKP" {
		return key{}, false
	}
	// go-jose wants unpadded base64url; Envoy accepts padding too.
	for _, n := range []string{"n", "e", "x", "y", "crv"} {
		if s, ok := m[n].(string); ok && n != "crv" {
			m[n] = strings.TrimRight(s, "=")
		}
	}
	for _, n := range []string{"d", "p", "q", "dp", "dq", "qi", "x5c", "x5t", "x5t#S256", "x5u"} {
		delete(m, n) // the public part only; certificates are not read
	}
	clean, err := json.Marshal(m)
	if err != nil {
		return key{}, false
	}
	var jwk jose.JSONWebKey
	if err := jwk.UnmarshalJSON(clean); err != nil || !jwk.Valid() {
		return key{}, false
	}
	k := key{kid: jwk.KeyID, alg: jwk.Algorithm}
	switch pub := jwk.Key.(type) {
	case *rsa.PublicKey:
		k.pub = pub
	case *ecdsa.PublicKey:
		switch pub.Curve.Params().Name {
		case "P-256", "P-384", "P-521":
		default:
			return key{}, false
		}
		k.pub = pub
	case ed25519.PublicKey:
		k.pub = pub
	default:
		return key{}, false
	}
	return k, true
}

// parseX509Set reads the X.509 form: key ID → PEM certificate, every value
// a certificate (otherwise it is not this form).
func parseX509Set(doc map[string]json.RawMessage) (*keySet, error) {
	if len(doc) == 0 {
		return nil, errors.New("the key set has no \"keys\"")
	}
	ks := &keySet{}
	for kid, raw := range doc {
		var s string
		if kid == "" || json.Unmarshal(raw, &s) != nil || !strings.HasPrefix(s, "-----BEGIN CERTIFICATE-----") {
			return nil, errors.New("the key set has no \"keys\"")
		}
		b, _ := pem.Decode([]byte(s))
		if b == nil || b.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("key %q: not a PEM certificate", kid)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("key %q: %v", kid, err)
		}
		pub, ok := c.PublicKey.(*rsa.PublicKey)
		if !ok {
			return nil, fmt.Errorf("key %q: not an RSA key", kid)
		}
		ks.keys = append(ks.keys, key{kid: kid, pub: pub})
	}
	// map order is random; keys are tried in kid order
	slices.SortFunc(ks.keys, func(a, b key) int { return strings.Compare(a.kid, b.kid) })
	return ks, nil
}

// candidates are the keys a token with kid and alg may be verified with, as
// jwt_verify_lib picks them: a key whose kid differs from the token's (both
// set) is skipped, and so is a key whose alg differs from the token's.
func (ks *keySet) candidates(kid, alg string, dst []key) []key {
	for _, k := range ks.keys {
		if kid != "" && k.kid != "" && k.kid != kid {
			continue
		}
		if k.alg != "" && k.alg != alg {
			continue
		}
		dst = append(dst, k)
	}
	return dst
}
