// Package identity establishes the one SPIFFE identity of the caller of a
// request, from what Envoy tells the ext_authz server about it, in a fixed
// precedence:
//
//  1. attributes.source.principal, only if it parses as a SPIFFE ID of a
//     trust domain that has a bundle (Envoy falls back to a DNS SAN or the
//     certificate subject when a certificate has no URI SAN: those are not
//     identities and are ignored);
//  2. attributes.source.certificate (URL-encoded PEM), verified as an
//     X509-SVID against the trust bundles plus the checks x509svid.Verify
//     leaves out. When both are present they must name the same ID;
//  3. x-forwarded-client-cert, only when the peer established by 1 or 2 is a
//     configured trusted hop (a gateway that terminates the client's mTLS);
//     the last element, appended by that hop, names the caller. From any
//     other peer the header is ignored and must be stripped;
//  4. a JWT-SVID (authorization: Bearer, or a configured header), validated
//     by go-spiffe against the JWT bundles with a mandatory audience list,
//     a maximum lifetime and a clock skew. A valid token is always attached
//     to the request; its subject is the caller only when 1-3 gave none.
//
// A credential that is present but fails validation is an error (the request
// is denied); an absent one is not. The caller may have no identity at all.
package identity

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/meshguard/meshguard/authz/internal/xfcc"
	"github.com/meshguard/meshguard/policies"
)

// Limits on attacker-controlled input.
const (
	// MaxIDBytes is the SPIFFE specification's limit on a SPIFFE ID.
	MaxIDBytes          = 2048
	maxCertificateBytes = 64 << 10
	maxChainCerts       = 8
	maxTokenBytes       = 16 << 10
)

// HeaderXFCC is the header Envoy forwards client certificate details in.
const HeaderXFCC = "x-forwarded-client-cert"

// Method says which credential established the identity.
type Method string

// Methods.
const (
	MethodNone        Method = "none"
	MethodPrincipal   Method = "principal"
	MethodCertificate Method = "certificate"
	MethodXFCC        Method = "xfcc"
	MethodJWT         Method = "jwt"
)

// Failure is the kind of an identity failure: a bounded metric label.
type Failure string

// Failure kinds.
const (
	FailPrincipal   Failure = "principal"    // principal is a SPIFFE ID with no trusted bundle, or malformed
	FailCertificate Failure = "certificate"  // certificate does not verify as an X509-SVID
	FailMismatch    Failure = "mismatch"     // principal and certificate disagree
	FailXFCC        Failure = "xfcc"         // trusted hop sent an unusable XFCC
	FailJWT         Failure = "jwt"          // token present and invalid
	NotSPIFFE       Failure = "not_spiffe"   // principal is not a SPIFFE ID (ignored, not an error)
	UntrustedXFCC   Failure = "xfcc_ignored" // XFCC from a peer that is not a trusted hop (ignored, not an error)
)

// Error is a failed identity: the request must be denied.
type Error struct {
	Kind Failure
	Err  error
}

func (e *Error) Error() string { return fmt.Sprintf("identity: %s: %v", e.Kind, e.Err) }
func (e *Error) Unwrap() error { return e.Err }

// Reason is the decision reason code for the failure.
func (e *Error) Reason() policies.Reason {
	if e.Kind == FailJWT {
		return policies.ReasonDeniedJWT
	}
	return policies.ReasonDeniedIdentity
}

// Bundles gives trust bundles by trust domain (a go-spiffe workloadapi
// BundleSource, an x509bundle/jwtbundle Set, ...).
type Bundles interface {
	x509bundle.Source
	jwtbundle.Source
}

// Config configures a Resolver.
type Config struct {
	Bundles Bundles
	// TrustedHops are the peers whose XFCC header is believed.
	TrustedHops []spiffeid.ID
	// JWTDisabled turns the JWT-SVID path off. Otherwise JWTAudiences must
	// not be empty: a token is accepted only if its aud has one of them.
	JWTDisabled  bool
	JWTAudiences []string
	// JWTHeader is the lowercase header carrying the token. "authorization"
	// (the default) requires the Bearer scheme; any other header carries the
	// bare token.
	JWTHeader string
	// JWTMaxLifetime bounds exp-iat (default 1h); ClockSkew is the leeway
	// for exp, nbf and iat (default 30s).
	JWTMaxLifetime time.Duration
	ClockSkew      time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Resolver establishes identities. Safe for concurrent use.
type Resolver struct {
	bundles     Bundles
	trustedHops map[spiffeid.ID]struct{}
	jwtOn       bool
	audiences   []string
	jwtHeader   string
	maxLifetime time.Duration
	skew        time.Duration
	now         func() time.Time
}

// New validates cfg and returns a Resolver.
func New(cfg Config) (*Resolver, error) {
	var errs []error
	if cfg.Bundles == nil {
		errs = append(errs, errors.New("no trust bundle source"))
	}
	var auds []string
	for _, a := range cfg.JWTAudiences {
		if a = strings.TrimSpace(a); a != "" {
			auds = append(auds, a)
		}
	}
	if !cfg.JWTDisabled && len(auds) == 0 {
		errs = append(errs, errors.New("JWT-SVID validation needs at least one audience (or disable JWT-SVIDs explicitly)"))
	}
	r := &Resolver{
		bundles:     cfg.Bundles,
		trustedHops: make(map[spiffeid.ID]struct{}, len(cfg.TrustedHops)),
		jwtOn:       !cfg.JWTDisabled,
		audiences:   auds,
		jwtHeader:   strings.ToLower(cfg.JWTHeader),
		maxLifetime: cfg.JWTMaxLifetime,
		skew:        cfg.ClockSkew,
		now:         cfg.Now,
	}
	for _, h := range cfg.TrustedHops {
		if h.IsZero() {
			errs = append(errs, errors.New("empty trusted hop ID"))
			continue
		}
		r.trustedHops[h] = struct{}{}
	}
	if r.jwtHeader == "" {
		r.jwtHeader = "authorization"
	}
	if r.maxLifetime == 0 {
		r.maxLifetime = time.Hour
	}
	if r.maxLifetime < 0 || r.skew < 0 {
		errs = append(errs, errors.New("JWT max lifetime and clock skew must not be negative"))
	}
	if r.skew == 0 {
		r.skew = 30 * time.Second
	}
	if r.now == nil {
		r.now = time.Now
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("identity: config: %w", err)
	}
	return r, nil
}

// JWTHeader is the header the resolver reads tokens from.
func (r *Resolver) JWTHeader() string { return r.jwtHeader }

// Request is what the enforcement point knows about the caller.
type Request struct {
	Principal   string // attributes.source.principal
	Certificate string // attributes.source.certificate, URL-encoded PEM
	// Peer is the identity of the connection the request came over when it
	// was established out of band (HTTP mode: the authenticated Envoy);
	// Principal and Certificate take precedence over it.
	Peer    spiffeid.ID
	Headers policies.HeaderGetter
}

// Identity is the outcome.
type Identity struct {
	// ID is the caller (zero: none) and Method how it was established.
	ID     spiffeid.ID
	Method Method
	// Peer is the immediate peer (from principal, certificate or Request.Peer).
	Peer spiffeid.ID
	// MTLS: the caller was authenticated by a client certificate.
	MTLS bool
	// JWT is the validated token, if any.
	JWT *policies.JWT
	// Ignored lists credentials that were present and ignored: NotSPIFFE,
	// UntrustedXFCC. An ignored XFCC header must be removed from the request.
	Ignored []Failure
}

// IgnoredXFCC reports whether an untrusted XFCC header was present.
func (id *Identity) IgnoredXFCC() bool {
	for _, f := range id.Ignored {
		if f == UntrustedXFCC {
			return true
		}
	}
	return false
}

// Resolve establishes the caller identity of one request.
func (r *Resolver) Resolve(req Request) (Identity, error) {
	var out Identity
	get := func(name string) (string, bool) {
		if req.Headers == nil {
			return "", false
		}
		return req.Headers.Get(name)
	}

	var principal spiffeid.ID
	if req.Principal != "" {
		id, spiffe, err := r.principal(req.Principal)
		if err != nil {
			return out, &Error{Kind: FailPrincipal, Err: err}
		}
		if spiffe {
			principal = id
			out.ID, out.Method, out.MTLS = id, MethodPrincipal, true
		} else {
			out.Ignored = append(out.Ignored, NotSPIFFE)
		}
	}
	if req.Certificate != "" {
		id, err := r.certificate(req.Certificate)
		if err != nil {
			return out, &Error{Kind: FailCertificate, Err: err}
		}
		if !principal.IsZero() && id != principal {
			return out, &Error{Kind: FailMismatch, Err: fmt.Errorf("principal %s but certificate %s", principal, id)}
		}
		if principal.IsZero() {
			out.ID, out.Method = id, MethodCertificate
		}
		out.MTLS = true
	}
	out.Peer = out.ID
	if out.Peer.IsZero() && !req.Peer.IsZero() {
		out.Peer = req.Peer
	}

	if h, ok := get(HeaderXFCC); ok {
		if _, trusted := r.trustedHops[out.Peer]; trusted && !out.Peer.IsZero() {
			id, err := r.xfcc(h, out.Peer)
			if err != nil {
				return out, &Error{Kind: FailXFCC, Err: err}
			}
			out.ID, out.Method, out.MTLS = id, MethodXFCC, true
		} else {
			out.Ignored = append(out.Ignored, UntrustedXFCC)
		}
	}

	if r.jwtOn {
		if tok, ok := r.token(get); ok {
			j, err := r.jwt(tok)
			if err != nil {
				return out, &Error{Kind: FailJWT, Err: err}
			}
			out.JWT = j
			if out.ID.IsZero() {
				out.ID, out.Method = j.Subject, MethodJWT
			}
		}
	}
	if out.ID.IsZero() {
		out.Method = MethodNone
	}
	return out, nil
}

// parseID reads a SPIFFE ID from untrusted input and checks that its trust
// domain has an X.509 bundle.
func (r *Resolver) parseID(s string) (spiffeid.ID, error) {
	if len(s) > MaxIDBytes {
		return spiffeid.ID{}, fmt.Errorf("SPIFFE ID of %d bytes exceeds %d", len(s), MaxIDBytes)
	}
	if !utf8.ValidString(s) {
		return spiffeid.ID{}, errors.New("SPIFFE ID is not valid UTF-8")
	}
	id, err := spiffeid.FromString(s)
	if err != nil {
		return spiffeid.ID{}, err
	}
	if !r.trusted(id.TrustDomain()) {
		return spiffeid.ID{}, fmt.Errorf("%s: trust domain %q is not trusted", id, id.TrustDomain().Name())
	}
	return id, nil
}

// trusted reports whether td has an X.509 bundle. A source that can answer
// without copying the bundle (spiffebundle.Set) is asked directly.
func (r *Resolver) trusted(td spiffeid.TrustDomain) bool {
	if h, ok := r.bundles.(interface {
		Has(spiffeid.TrustDomain) bool
	}); ok {
		return h.Has(td)
	}
	_, err := r.bundles.GetX509BundleForTrustDomain(td)
	return err == nil
}

// principal returns (id, true) for a SPIFFE principal, (zero, false) for a
// principal that is not one (DNS SAN, subject), and an error for a SPIFFE ID
// that is malformed or of an untrusted domain.
func (r *Resolver) principal(p string) (spiffeid.ID, bool, error) {
	if !strings.HasPrefix(strings.ToLower(p), "spiffe://") {
		return spiffeid.ID{}, false, nil
	}
	id, err := r.parseID(p)
	if err != nil {
		return spiffeid.ID{}, false, err
	}
	return id, true, nil
}

func (r *Resolver) certificate(enc string) (spiffeid.ID, error) {
	if len(enc) > maxCertificateBytes {
		return spiffeid.ID{}, fmt.Errorf("certificate of %d bytes exceeds %d", len(enc), maxCertificateBytes)
	}
	// PathUnescape, not QueryUnescape: '+' is a base64 character.
	raw, err := url.PathUnescape(enc)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("certificate is not URL-encoded: %w", err)
	}
	certs, err := parsePEMCerts([]byte(raw))
	if err != nil {
		return spiffeid.ID{}, err
	}
	return r.verifyChain(certs)
}

func parsePEMCerts(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("unexpected PEM block %q", block.Type)
		}
		if len(certs) == maxChainCerts {
			return nil, fmt.Errorf("more than %d certificates", maxChainCerts)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse certificate: %w", err)
		}
		certs = append(certs, c)
	}
	if len(strings.TrimSpace(string(data))) != 0 {
		return nil, errors.New("trailing data after the PEM certificates")
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM certificate")
	}
	return certs, nil
}

// verifyChain verifies an X509-SVID chain (leaf first) and adds the checks
// x509svid.Verify leaves out: a digitalSignature key usage, an EKU set that
// allows client authentication (clientAuth or anyExtendedKeyUsage; no EKU
// extension at all is accepted, as RFC 5280 reads it), and a leaf that is not
// itself a trust anchor.
func (r *Resolver) verifyChain(certs []*x509.Certificate) (spiffeid.ID, error) {
	leaf := certs[0]
	if len(leaf.URIs) != 1 {
		return spiffeid.ID{}, fmt.Errorf("leaf has %d URI SANs, want exactly 1", len(leaf.URIs))
	}
	if len(leaf.URIs[0].String()) > MaxIDBytes {
		return spiffeid.ID{}, fmt.Errorf("leaf URI SAN exceeds %d bytes", MaxIDBytes)
	}
	id, chains, err := x509svid.Verify(certs, r.bundles, x509svid.WithTime(r.now()))
	if err != nil {
		return spiffeid.ID{}, err
	}
	if leaf.KeyUsage&x509.KeyUsageDigitalSignature == 0 {
		return spiffeid.ID{}, fmt.Errorf("%s: leaf lacks the digitalSignature key usage", id)
	}
	if len(leaf.ExtKeyUsage) > 0 || len(leaf.UnknownExtKeyUsage) > 0 {
		ok := false
		for _, u := range leaf.ExtKeyUsage {
			if u == x509.ExtKeyUsageClientAuth || u == x509.ExtKeyUsageAny {
				ok = true
			}
		}
		if !ok {
			return spiffeid.ID{}, fmt.Errorf("%s: leaf EKU does not allow client authentication", id)
		}
	}
	for _, ch := range chains {
		if len(ch) < 2 {
			return spiffeid.ID{}, fmt.Errorf("%s: leaf is itself a trust anchor", id)
		}
	}
	return id, nil
}

func (r *Resolver) xfcc(header string, hop spiffeid.ID) (spiffeid.ID, error) {
	els, err := xfcc.Parse(header)
	if err != nil {
		return spiffeid.ID{}, err
	}
	last := els[len(els)-1]
	if len(last.By) != 1 || last.By[0] != hop.String() {
		return spiffeid.ID{}, fmt.Errorf("last element By=%q is not the trusted hop %s", last.By, hop)
	}
	if len(last.URI) != 1 {
		return spiffeid.ID{}, fmt.Errorf("last element has %d URI values, want exactly 1", len(last.URI))
	}
	id, err := r.parseID(last.URI[0])
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("last element URI: %w", err)
	}
	return id, nil
}

func (r *Resolver) token(get func(string) (string, bool)) (string, bool) {
	v, ok := get(r.jwtHeader)
	if !ok {
		return "", false
	}
	if r.jwtHeader != "authorization" {
		return strings.TrimSpace(v), true
	}
	scheme, tok, found := strings.Cut(strings.TrimSpace(v), " ")
	if !found || !strings.EqualFold(scheme, "bearer") {
		// Another scheme (Basic, ...) carries no JWT-SVID.
		return "", false
	}
	return strings.TrimSpace(tok), true
}

func (r *Resolver) jwt(tok string) (*policies.JWT, error) {
	if len(tok) > maxTokenBytes {
		return nil, fmt.Errorf("token of %d bytes exceeds %d", len(tok), maxTokenBytes)
	}
	if len(r.audiences) == 0 {
		// Unreachable through New; go-spiffe skips the audience check on an
		// empty list, so never call it that way.
		return nil, errors.New("no audience configured")
	}
	svid, err := jwtsvid.ParseAndValidate(tok, r.bundles, r.audiences)
	if err != nil {
		return nil, err
	}
	now := r.now()
	exp, _ := numericClaim(svid.Claims, "exp")
	if !now.Add(-r.skew).Before(exp) {
		return nil, fmt.Errorf("%s: token expired at %s", svid.ID, exp.UTC().Format(time.RFC3339))
	}
	if nbf, ok := numericClaim(svid.Claims, "nbf"); ok && nbf.After(now.Add(r.skew)) {
		return nil, fmt.Errorf("%s: token not valid before %s", svid.ID, nbf.UTC().Format(time.RFC3339))
	}
	start, ok := numericClaim(svid.Claims, "iat")
	if ok && start.After(now.Add(r.skew)) {
		return nil, fmt.Errorf("%s: token issued in the future (%s)", svid.ID, start.UTC().Format(time.RFC3339))
	}
	if !ok {
		// Without iat the lifetime is unknown: count it from now.
		start = now
	}
	if life := exp.Sub(start); life > r.maxLifetime {
		return nil, fmt.Errorf("%s: token lifetime %s exceeds %s", svid.ID, life, r.maxLifetime)
	}
	iss, _ := svid.Claims["iss"].(string)
	azp, _ := svid.Claims["azp"].(string)
	principal := svid.ID.String()
	if iss != "" {
		principal = iss + "/" + principal
	}
	return &policies.JWT{
		Subject:   svid.ID,
		Principal: principal,
		Issuer:    iss,
		Audiences: svid.Audience,
		Presenter: azp,
		Claims:    svid.Claims,
	}, nil
}

func numericClaim(claims map[string]any, name string) (time.Time, bool) {
	switch v := claims[name].(type) {
	case float64:
		return time.Unix(int64(v), 0), true
	case int64:
		return time.Unix(v, 0), true
	}
	return time.Time{}, false
}
