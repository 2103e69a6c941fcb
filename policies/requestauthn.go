package policies

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/meshguard/meshguard/policies/internal/strictjson"
)

// Istio's RequestAuthentication, compiled. The policy package scopes the
// rules to workloads exactly as it scopes AuthorizationPolicies (mesh-wide
// in the root namespace, namespace-wide, by selector, by targetRefs) and
// checks them with Istio's validation; verifying tokens needs keys, and is
// the enforcement point's (meshguard's authz server): JWTProviders tells it
// which rules apply to a request's target.

// Limits of Istio's CRD and API.
const (
	maxJWTRules             = 4096
	maxTargetRefs           = 16
	maxSpaceDelimitedClaims = 64
	maxJWKSURIBytes         = 2048
	// DefaultJWKSTimeout bounds a key set fetch when a rule sets no timeout.
	DefaultJWKSTimeout = 5 * time.Second
)

// Default token locations of a rule that names none: the Authorization
// header's Bearer token and the access_token query parameter.
const (
	DefaultTokenHeader = "authorization"
	DefaultTokenPrefix = "Bearer "
	DefaultTokenParam  = "access_token"
)

// defaultSpaceDelimited are the claims Istio always reads as
// space-delimited lists (besides a rule's spaceDelimitedClaims).
var defaultSpaceDelimited = []string{"permission", "scope"}

// JWTProvider is one jwtRule of a RequestAuthentication, compiled: what an
// enforcement point needs to find and verify the tokens the rule reads
// (Envoy calls it a JWT provider). Read-only.
type JWTProvider struct {
	// Ref is the RequestAuthentication and the rule's index.
	Ref RuleRef
	// Issuer is the iss a token must have; empty: any (Istio requires one
	// unless JWKSURI is set).
	Issuer    string
	Audiences []string
	// JWKS is an inline key set; JWKSURI where the key set is fetched. With
	// neither, the key set is found by OpenID discovery from Issuer.
	JWKS    string
	JWKSURI string
	// Headers (names lowercase), Params and Cookies are where the rule's
	// tokens are found, the defaults applied.
	Headers []JWTHeader
	Params  []string
	Cookies []string
	// Forward keeps the token in the upstream request (Istio's
	// forwardOriginalToken); otherwise the header it came in is removed.
	Forward bool
	// PayloadHeader (lowercase) receives a valid token's payload,
	// base64url-encoded as it was in the token; ClaimHeaders copy claims.
	PayloadHeader string
	ClaimHeaders  []ClaimToHeader
	// Timeout bounds a key set fetch.
	Timeout time.Duration
	// SpaceDelimited are the top-level claims read as lists of their
	// space-separated words (scope and permission always).
	SpaceDelimited []string
	ord            int
}

// DiscoveryURL is where OpenID discovery finds the provider's key set URI
// (issuer + "/.well-known/openid-configuration"), or "" when the rule has
// keys or a key set URI, or an issuer that is not an http(s) URL.
func (p *JWTProvider) DiscoveryURL() string {
	if p.JWKS != "" || p.JWKSURI != "" {
		return ""
	}
	u, err := url.Parse(p.Issuer)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return ""
	}
	return strings.TrimSuffix(p.Issuer, "/") + "/.well-known/openid-configuration"
}

// JWTProviders returns the jwtRules of the RequestAuthentications that apply
// to the target, ordered by issuer (as Istio orders them), and why they
// cannot be known for it: a selector- or targetRef-scoped policy may apply
// and the target's labels or service are unknown (Applied.Unresolved).
// Callers must not modify the list.
func (s *Snapshot) JWTProviders(t *Target) ([]*JWTProvider, string) {
	if s.njwt == 0 {
		return nil, ""
	}
	if _, ok := targetNamespace(t); !ok {
		return nil, "the target's namespace is not known"
	}
	if why := s.unresolved(t); why != "" {
		return nil, why
	}
	h := s.views.hash(t)
	if v := s.views.get(h, t); v != nil {
		return v.jwt, ""
	}
	var arr [maxBuckets]*bucket
	bs := s.collect(&Attributes{Target: *t}, nil, arr[:0], nil)
	s.views.put(h, s, t, bs)
	return providersOf(bs), ""
}

// providersOf merges the buckets' providers: by issuer, then rule order,
// each once.
func providersOf(bs []*bucket) []*JWTProvider {
	var out []*JWTProvider
	for _, b := range bs {
		out = append(out, b.jwt...)
	}
	if len(out) < 2 {
		return out
	}
	// An insertion sort: a few providers, each bucket's already in rule
	// order (a generic sort would cost the wasm filter kilobytes).
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && providerBefore(out[j], out[j-1]); j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return slices.Compact(out)
}

func providerBefore(a, b *JWTProvider) bool {
	if a.Issuer != b.Issuer {
		return a.Issuer < b.Issuer
	}
	return a.ord < b.ord
}

// HasRequestAuthentication reports whether the set has jwtRules at all.
func (s *Snapshot) HasRequestAuthentication() bool { return s.njwt > 0 }

// AllJWTProviders returns every jwtRule of the set's RequestAuthentications,
// in set order, whatever workload it applies to: the key sets an
// enforcement point may need. Callers must not modify the list.
func (s *Snapshot) AllJWTProviders() []*JWTProvider { return s.jwtAll }

func (c *compiler) requestAuthentication(p *RequestAuthentication) {
	switch p.APIVersion {
	case APIVersionIstioV1, APIVersionIstioV1beta1, "":
	default:
		c.errf("apiVersion", CodeUnknownKind, "apiVersion %q: want %s or %s", p.APIVersion, APIVersionIstioV1, APIVersionIstioV1beta1)
	}
	sp := &p.Spec
	if len(sp.TargetRefs) > maxTargetRefs {
		c.errf("spec.targetRefs", CodeInvalidValue, "%d targetRefs: at most %d (as in Istio)", len(sp.TargetRefs), maxTargetRefs)
	}
	if len(sp.JWTRules) > maxJWTRules {
		c.errf("spec.jwtRules", CodeInvalidValue, "%d jwtRules: at most %d (as in Istio)", len(sp.JWTRules), maxJWTRules)
	}
	c.selectorLabels(sp.Selector)
	buckets := c.scopeBuckets(p.Metadata.Namespace, sp.Selector, sp.TargetRef, sp.TargetRefs)
	for i := range sp.JWTRules {
		pr := c.jwtRule(fmt.Sprintf("spec.jwtRules[%d]", i), &sp.JWTRules[i])
		if pr == nil {
			continue
		}
		pr.Ref = RuleRef{Policy: c.obj, Rule: fmt.Sprint(i)}
		pr.ord = c.snap.njwt
		c.snap.njwt++
		c.snap.jwtAll = append(c.snap.jwtAll, pr)
		for _, b := range buckets {
			b.jwt = append(b.jwt, pr)
		}
	}
}

// selectorLabels is Istio's validation of a workload selector's labels.
func (c *compiler) selectorLabels(sel *WorkloadSelector) {
	if sel == nil {
		return
	}
	for _, k := range sortedKeys(sel.MatchLabels) {
		v := sel.MatchLabels[k]
		switch {
		case k == "":
			c.errf("spec.selector.matchLabels", CodeInvalidValue, "an empty label key is not supported")
		case strings.Contains(k, "*") || strings.Contains(v, "*"):
			c.errf("spec.selector.matchLabels."+k, CodeInvalidValue, "wildcards are not supported in a selector (%s=%s)", k, v)
		}
	}
}

// jwtRule checks one rule with Istio's validation (and its CRD's) and
// compiles it; nil when it has errors.
func (c *compiler) jwtRule(f string, r *JWTRule) *JWTProvider {
	before := len(c.diags.Errors())
	p := &JWTProvider{Issuer: r.Issuer, Audiences: r.Audiences, JWKS: r.JWKS, Forward: r.ForwardOriginalToken, Timeout: DefaultJWKSTimeout}
	for i, a := range r.Audiences {
		if a == "" {
			c.errf(fmt.Sprintf("%s.audiences[%d]", f, i), CodeInvalidValue, "audience must be a non-empty string")
		}
	}
	uri, uriField := r.JWKSURI, f+".jwksUri"
	if r.JWKSURIAlias != "" {
		if uri != "" {
			c.errf(f+".jwks_uri", CodeConflict, "jwksUri and jwks_uri are the same field; set one")
		}
		uri, uriField = r.JWKSURIAlias, f+".jwks_uri"
	}
	if r.Issuer == "" && uri == "" {
		c.errf(f+".issuer", CodeMissingField, "issuer or jwksUri must be a non-empty string (as in Istio)")
	}
	if uri != "" {
		if r.JWKS != "" {
			c.errf(f+".jwks", CodeConflict, "only one of jwks or jwksUri can be set")
		}
		p.JWKSURI = uri
	}
	c.keySource(f, uriField, uri, r.JWKS)
	for i, h := range r.FromHeaders {
		hf := fmt.Sprintf("%s.fromHeaders[%d]", f, i)
		if h.Name == "" {
			c.errf(hf+".name", CodeMissingField, "location header name must be a non-empty string")
			continue
		}
		if err := checkHeaderName(h.Name); err != nil {
			c.errf(hf+".name", CodeInvalidValue, "%v", err)
			continue
		}
		p.Headers = append(p.Headers, JWTHeader{Name: strings.ToLower(h.Name), Prefix: h.Prefix})
	}
	for i, v := range r.FromParams {
		if v == "" {
			c.errf(fmt.Sprintf("%s.fromParams[%d]", f, i), CodeInvalidValue, "location query must be a non-empty string")
		}
	}
	for i, v := range r.FromCookies {
		if v == "" {
			c.errf(fmt.Sprintf("%s.fromCookies[%d]", f, i), CodeInvalidValue, "cookie name must be a non-empty string")
		}
	}
	p.Params, p.Cookies = r.FromParams, r.FromCookies
	if len(r.FromHeaders)+len(r.FromParams)+len(r.FromCookies) == 0 {
		p.Headers = []JWTHeader{{Name: DefaultTokenHeader, Prefix: DefaultTokenPrefix}}
		p.Params = []string{DefaultTokenParam}
	}
	if h := r.OutputPayloadToHeader; h != "" {
		if err := checkOutputHeader(h); err != nil {
			c.errf(f+".outputPayloadToHeader", CodeInvalidValue, "%v", err)
		}
		p.PayloadHeader = strings.ToLower(h)
	}
	seen := map[string]bool{}
	for i, ch := range r.OutputClaimToHeaders {
		hf := fmt.Sprintf("%s.outputClaimToHeaders[%d]", f, i)
		if ch.Header == "" || ch.Claim == "" {
			c.errf(hf, CodeMissingField, "outputClaimToHeaders header and claim must be non-empty strings")
			continue
		}
		if !strictHeaderName(ch.Header) {
			c.errf(hf+".header", CodeInvalidValue, "header name %q is not a valid header name (letters, digits, '-' and '_')", ch.Header)
			continue
		}
		if err := checkOutputHeader(ch.Header); err != nil {
			c.errf(hf+".header", CodeInvalidValue, "%v", err)
			continue
		}
		h := strings.ToLower(ch.Header)
		if seen[h] || h == p.PayloadHeader {
			c.errf(hf+".header", CodeConflict, "header %q is written twice: the headers of outputClaimToHeaders must be unique", ch.Header)
			continue
		}
		seen[h] = true
		p.ClaimHeaders = append(p.ClaimHeaders, ClaimToHeader{Header: h, Claim: ch.Claim})
	}
	if r.Timeout != "" {
		d, err := time.ParseDuration(r.Timeout)
		switch {
		case err != nil:
			c.errf(f+".timeout", CodeInvalidDuration, "timeout %q is not a duration", r.Timeout)
		case d < time.Millisecond:
			c.errf(f+".timeout", CodeInvalidDuration, "timeout %q: must be at least 1ms", r.Timeout)
		case d%time.Millisecond != 0:
			c.errf(f+".timeout", CodeInvalidDuration, "timeout %q: only durations to ms precision are supported", r.Timeout)
		default:
			p.Timeout = d
		}
	}
	if len(r.SpaceDelimitedClaims) > maxSpaceDelimitedClaims {
		c.errf(f+".spaceDelimitedClaims", CodeInvalidValue, "%d claims: at most %d", len(r.SpaceDelimitedClaims), maxSpaceDelimitedClaims)
	}
	p.SpaceDelimited = slices.Clone(defaultSpaceDelimited)
	for i, v := range r.SpaceDelimitedClaims {
		if v == "" {
			c.errf(fmt.Sprintf("%s.spaceDelimitedClaims[%d]", f, i), CodeInvalidValue, "claim name must be a non-empty string")
			continue
		}
		p.SpaceDelimited = append(p.SpaceDelimited, v)
	}
	strictjson.SortStrings(p.SpaceDelimited)
	p.SpaceDelimited = slices.Compact(p.SpaceDelimited)
	if len(c.diags.Errors()) != before {
		return nil
	}
	return p
}

// checkHeaderName: a token location's header is an HTTP field name.
func checkHeaderName(h string) error {
	for i := 0; i < len(h); i++ {
		if !isTokenChar(h[i]) {
			return fmt.Errorf("header name %q is not an HTTP header name", h)
		}
	}
	return nil
}

// checkOutputHeader: a header the server writes is an HTTP field name, and
// not one of meshguard's own.
func checkOutputHeader(h string) error {
	if err := checkHeaderName(h); err != nil {
		return err
	}
	if strings.HasPrefix(strings.ToLower(h), "x-meshguard-") {
		return fmt.Errorf("header %q: x-meshguard-* headers are meshguard's own", h)
	}
	return nil
}

// strictHeaderName is the pattern of Istio's CRD for outputClaimToHeaders:
// ^[-_A-Za-z0-9]+$.
func strictHeaderName(h string) bool {
	if h == "" {
		return false
	}
	for i := 0; i < len(h); i++ {
		ch := h[i]
		if !('a' <= ch && ch <= 'z' || 'A' <= ch && ch <= 'Z' || '0' <= ch && ch <= '9' || ch == '-' || ch == '_') {
			return false
		}
	}
	return true
}

// isTokenChar is RFC 9110's tchar.
func isTokenChar(ch byte) bool {
	switch {
	case 'a' <= ch && ch <= 'z', 'A' <= ch && ch <= 'Z', '0' <= ch && ch <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", ch) >= 0
}

// KeySetProblem is something KeySetProblems found wrong with a key of a
// key set that does not make the whole set unusable.
type KeySetProblem struct {
	Key        int  // index in "keys"
	Private    bool // the key holds private key material
	Unusable   bool // meshguard will not verify with it
	Reason     string
	KeyID, Kty string
}

// KeySetProblems checks a JSON Web Key Set's structure (see checkKeySet)
// and lists its keys that hold private material or that meshguard will not
// verify tokens with: symmetric keys (HMAC), keys for encryption ("use":
// "enc"), algorithms other than RS*, PS*, ES* and EdDSA, and curves other
// than P-256, P-384, P-521 and Ed25519.
func KeySetProblems(data []byte) ([]KeySetProblem, error) {
	// Read with the bundle's own JSON reader, not encoding/json: this runs
	// in the compile the wasm filter shares, whose module size is budgeted.
	d := strictjson.NewDecoder(data)
	if d.EOF() {
		return nil, errors.New("not a JSON object: empty")
	}
	var keys []byte
	d.Object("a key set", func(key []byte) bool {
		if string(key) == "keys" {
			keys = d.Raw()
		} else {
			d.Skip()
		}
		return true
	})
	d.Finish("the key set")
	if err := d.Err(); err != nil {
		return nil, fmt.Errorf("not a JSON object: %v", err)
	}
	if keys == nil {
		return nil, errors.New("no \"keys\" member")
	}
	var elems [][]byte
	kd := strictjson.NewDecoder(keys)
	if !kd.Null() {
		kd.Array("keys", func(int) { elems = append(elems, kd.Raw()) })
	}
	if kd.Err() != nil {
		return nil, errors.New("\"keys\" is not an array")
	}
	var out []KeySetProblem
	for i, raw := range elems {
		m := map[string][]byte{}
		ed := strictjson.NewDecoder(raw)
		if raw[0] == '{' {
			ed.Object("a key", func(key []byte) bool {
				k := string(key) // key is reused by the reads below
				m[k] = ed.Raw()
				return true
			})
		}
		if raw[0] != '{' || ed.Err() != nil {
			return nil, fmt.Errorf("keys[%d] is not an object", i)
		}
		p, err := checkKey(m)
		if err != nil {
			return nil, fmt.Errorf("keys[%d]: %v", i, err)
		}
		if p.Private || p.Unusable {
			p.Key = i
			out = append(out, p)
		}
	}
	return out, nil
}

// checkKey checks one key's members, each as its JSON text.
func checkKey(m map[string][]byte) (KeySetProblem, error) {
	var p KeySetProblem
	str := func(name string) (string, bool, error) {
		raw, ok := m[name]
		if !ok {
			return "", false, nil
		}
		var s string
		if len(raw) == 0 || raw[0] != '"' {
			return "", true, fmt.Errorf("%q is not a string", name)
		}
		d := strictjson.NewDecoder(raw)
		d.String(&s, "string")
		if d.Err() != nil {
			return "", true, fmt.Errorf("%q is not a string", name)
		}
		return s, true, nil
	}
	unusable := func(format string, args ...any) {
		if !p.Unusable {
			p.Unusable, p.Reason = true, fmt.Sprintf(format, args...)
		}
	}
	b64 := func(names ...string) error {
		for _, n := range names {
			s, ok, err := str(n)
			if err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("no %q", n)
			}
			if s == "" {
				// go-jose reads the key (and Istio accepts the key set);
				// it verifies nothing.
				unusable("%q is empty", n)
				continue
			}
			if _, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(s, "=")); err != nil {
				return fmt.Errorf("%q is not base64url", n)
			}
		}
		return nil
	}
	kty, ok, err := str("kty")
	if err != nil {
		return p, err
	}
	if !ok || kty == "" {
		return p, fmt.Errorf("no \"kty\"")
	}
	p.Kty = kty
	for _, n := range []string{"kid", "alg", "use", "crv"} {
		if _, _, err := str(n); err != nil {
			return p, err
		}
	}
	p.KeyID, _, _ = str("kid")
	alg, _, _ := str("alg")
	use, _, _ := str("use")
	crv, _, _ := str("crv")
	switch kty {
	case "RSA":
		if err := b64("n", "e"); err != nil {
			return p, err
		}
		if alg != "" && !strings.HasPrefix(alg, "RS") && !strings.HasPrefix(alg, "PS") {
			unusable("alg %q is not a signature algorithm of an RSA key meshguard accepts (RS256, RS384, RS512, PS256, PS384, PS512)", alg)
		}
	case "EC":
		if err := b64("x", "y"); err != nil {
			return p, err
		}
		switch crv {
		case "P-256", "P-384", "P-521":
		case "":
			return p, fmt.Errorf("no \"crv\"")
		default:
			unusable("curve %q is not P-256, P-384 or P-521", crv)
		}
		if alg != "" && alg != "ES256" && alg != "ES384" && alg != "ES512" {
			unusable("alg %q is not ES256, ES384 or ES512", alg)
		}
	case "OKP":
		if err := b64("x"); err != nil {
			return p, err
		}
		if crv != "Ed25519" {
			unusable("curve %q is not Ed25519", crv)
		}
		if alg != "" && alg != "EdDSA" {
			unusable("alg %q is not EdDSA", alg)
		}
	case "oct":
		// An empty secret is still a symmetric key (go-jose reads it):
		// it is refused below as one, not as a malformed set.
		k, ok, err := str("k")
		if err != nil {
			return p, err
		}
		if !ok {
			return p, fmt.Errorf("no \"k\"")
		}
		if _, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(k, "=")); err != nil {
			return p, fmt.Errorf("\"k\" is not base64url")
		}
		p.Private = true
		unusable("a symmetric (HMAC) key: meshguard verifies asymmetric signatures only, and would ship the secret to every enforcement point")
	default:
		return p, fmt.Errorf("kty %q is not RSA, EC, OKP or oct", kty)
	}
	if use != "" && use != "sig" {
		unusable("use %q: not a signature key", use)
	}
	for _, n := range []string{"d", "p", "q", "dp", "dq", "qi"} {
		if _, ok := m[n]; ok {
			p.Private = true
		}
	}
	return p, nil
}
