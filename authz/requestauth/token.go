package requestauth

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"math"
	"strings"

	jose "github.com/go-jose/go-jose/v4"
)

// A token is read as Envoy's jwt_verify_lib reads it (src/jwt.cc): three
// dot-separated base64url parts; a header with a string "alg" meshguard
// accepts and an optional string "kid"; a payload object whose iss, sub
// and jti are strings when present, iat, nbf and exp non-negative numbers
// (read as whole seconds), aud a string or a list of strings. meshguard
// refuses, besides, HMAC and "none" (jwt_verify_lib implements HMAC; its
// keys would be secrets shipped to every enforcement point) and a header
// with "crit" (RFC 7515 extensions it does not implement, such as b64).

// acceptedAlgs are the signature algorithms meshguard verifies.
var acceptedAlgs = []jose.SignatureAlgorithm{
	jose.RS256, jose.RS384, jose.RS512,
	jose.PS256, jose.PS384, jose.PS512,
	jose.ES256, jose.ES384, jose.ES512,
	jose.EdDSA,
}

func acceptedAlg(alg string) bool {
	for _, a := range acceptedAlgs {
		if string(a) == alg {
			return true
		}
	}
	return false
}

// jwt is a parsed, not yet verified, token.
type jwt struct {
	raw        string
	alg, kid   string
	payloadB64 string // the payload part as sent
	payload    []byte
	claims     map[string]any
	iss, sub   string
	hasIss     bool
	hasSub     bool
	aud        []string
	nbf, exp   uint64
}

// parseJWT reads a token; the failure says why it is malformed.
func parseJWT(tok string) (*jwt, *failure) {
	if len(tok) > maxTokenBytes {
		return nil, fail(statusTooLarge)
	}
	parts := strings.Split(tok, ".")
	n := 0
	for _, p := range parts {
		if p != "" {
			n++
		}
	}
	if len(parts) != 3 || n != 3 {
		return nil, fail(statusBadFormat)
	}
	t := &jwt{raw: tok, payloadB64: parts[1]}
	hdr, err := b64(parts[0])
	if err != nil {
		return nil, fail(statusHeaderBase64)
	}
	var h map[string]any
	if err := decodeJSON(hdr, &h); err != nil || h == nil {
		return nil, fail(statusHeaderJSON)
	}
	alg, ok := h["alg"].(string)
	if !ok {
		return nil, fail(statusHeaderAlg)
	}
	if !acceptedAlg(alg) {
		return nil, fail(statusAlgNotAccepted)
	}
	t.alg = alg
	if v, present := h["kid"]; present {
		if t.kid, ok = v.(string); !ok {
			return nil, fail(statusHeaderKid)
		}
	}
	if _, crit := h["crit"]; crit {
		return nil, fail(statusHeaderCrit)
	}
	if t.payload, err = b64(parts[1]); err != nil {
		return nil, fail(statusPayloadBase64)
	}
	if err := decodeJSON(t.payload, &t.claims); err != nil || t.claims == nil {
		return nil, fail(statusPayloadJSON)
	}
	if t.iss, t.hasIss, ok = stringClaim(t.claims, "iss"); !ok {
		return nil, fail(statusIssNotString)
	}
	if t.sub, t.hasSub, ok = stringClaim(t.claims, "sub"); !ok {
		return nil, fail(statusSubNotString)
	}
	if _, _, ok = stringClaim(t.claims, "jti"); !ok {
		return nil, fail(statusJtiNotString)
	}
	for _, c := range []struct {
		name string
		dst  *uint64
		bad  status
	}{{"iat", nil, statusIatNotInteger}, {"nbf", &t.nbf, statusNbfNotInteger}, {"exp", &t.exp, statusExpNotInteger}} {
		v, present := t.claims[c.name]
		if !present {
			continue
		}
		f, isNum := v.(float64)
		if !isNum || f < 0 || f >= math.MaxUint64 || math.IsNaN(f) {
			return nil, fail(c.bad)
		}
		if c.dst != nil {
			*c.dst = uint64(f)
		}
	}
	switch a := t.claims["aud"].(type) {
	case nil:
		if _, present := t.claims["aud"]; present {
			return nil, fail(statusAudNotString)
		}
	case string:
		t.aud = []string{a}
	case []any:
		for _, e := range a {
			s, ok := e.(string)
			if !ok {
				return nil, fail(statusAudNotString)
			}
			t.aud = append(t.aud, s)
		}
	default:
		return nil, fail(statusAudNotString)
	}
	return t, nil
}

// b64 decodes base64url, with or without padding.
func b64(s string) ([]byte, error) {
	return base64.RawURLEncoding.DecodeString(strings.TrimRight(s, "="))
}

// decodeJSON decodes one JSON value, and nothing after it.
func decodeJSON(data []byte, dst any) error {
	d := json.NewDecoder(bytes.NewReader(data))
	if err := d.Decode(dst); err != nil {
		return err
	}
	if d.More() {
		return errTrailing
	}
	return nil
}

// stringClaim reads a string claim: its value, whether it is present, and
// false when it is present and not a string.
func stringClaim(c map[string]any, name string) (string, bool, bool) {
	v, present := c[name]
	if !present {
		return "", false, true
	}
	s, ok := v.(string)
	return s, true, ok
}

// verify checks the token's signature with the candidate keys: nil when
// one verifies; statusKidAlgMismatch when no key fits the token's kid and
// alg; statusVerification otherwise.
func (t *jwt) verify(ks *keySet) *failure {
	var arr [8]key
	cands := ks.candidates(t.kid, t.alg, arr[:0])
	if len(cands) == 0 {
		return fail(statusKidAlgMismatch)
	}
	jws, err := jose.ParseSignedCompact(t.raw, acceptedAlgs)
	if err != nil {
		return fail(statusVerification)
	}
	for _, k := range cands {
		if _, err := jws.Verify(k.pub); err == nil {
			return nil
		}
	}
	return fail(statusVerification)
}
