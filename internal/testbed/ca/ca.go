// Package ca is a small in-process SPIFFE certificate authority: it issues
// X509-SVIDs (URI SAN certificates) and JWT-SVIDs for one trust domain and
// hands out the matching trust bundle. meshguard's tests use it to build
// identities (and broken ones) without SPIRE, and `meshguard demo` uses it
// when no SPIFFE Workload API socket is given. It is not a production CA: keys
// live in memory and nothing is persisted unless WriteFiles is called.
package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// CA issues SVIDs for one trust domain. It is safe for concurrent use: its
// fields never change after New.
type CA struct {
	td      spiffeid.TrustDomain
	root    *x509.Certificate
	rootKey crypto.Signer
	jwtKey  crypto.Signer
	jwtKID  string
	now     func() time.Time
}

// Option configures New.
type Option func(*CA)

// WithClock makes the CA read the time from now (for expiry tests).
func WithClock(now func() time.Time) Option { return func(c *CA) { c.now = now } }

// New creates a CA with a fresh P-256 root key and a fresh JWT signing key.
func New(td spiffeid.TrustDomain, opts ...Option) (*CA, error) {
	if td.IsZero() {
		return nil, errors.New("ca: trust domain is required")
	}
	c := &CA{td: td, now: time.Now}
	for _, o := range opts {
		o(c)
	}
	rootKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("ca: generate root key: %w", err)
	}
	now := c.now()
	tmpl := &x509.Certificate{
		SerialNumber:          mustSerial(),
		Subject:               pkix.Name{Organization: []string{"meshguard"}, CommonName: "meshguard CA " + td.Name()},
		URIs:                  []*url.URL{td.ID().URL()},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, rootKey.Public(), rootKey)
	if err != nil {
		return nil, fmt.Errorf("ca: create root: %w", err)
	}
	root, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("ca: parse root: %w", err)
	}
	jwtKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("ca: generate JWT key: %w", err)
	}
	kid, err := keyID(jwtKey.Public())
	if err != nil {
		return nil, err
	}
	c.root, c.rootKey, c.jwtKey, c.jwtKID = root, rootKey, jwtKey, kid
	return c, nil
}

// TrustDomain is the CA's trust domain.
func (c *CA) TrustDomain() spiffeid.TrustDomain { return c.td }

// Root is the CA certificate (the X.509 authority of the bundle).
func (c *CA) Root() *x509.Certificate { return c.root }

// JWTKeyID is the key ID of the JWT signing key in the bundle.
func (c *CA) JWTKeyID() string { return c.jwtKID }

// X509Bundle is the trust domain's X.509 bundle.
func (c *CA) X509Bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(c.td, []*x509.Certificate{c.root})
}

// JWTBundle is the trust domain's JWT bundle.
func (c *CA) JWTBundle() *jwtbundle.Bundle {
	return jwtbundle.FromJWTAuthorities(c.td, map[string]crypto.PublicKey{c.jwtKID: c.jwtKey.Public()})
}

// Bundle is the trust domain's SPIFFE bundle (X.509 and JWT authorities).
func (c *CA) Bundle() *spiffebundle.Bundle {
	b := spiffebundle.New(c.td)
	b.AddX509Authority(c.root)
	if err := b.AddJWTAuthority(c.jwtKID, c.jwtKey.Public()); err != nil {
		// Unreachable: the key ID is non-empty by construction.
		panic(err)
	}
	return b
}

// X509Option adjusts the certificate template before signing; tests use it
// to issue SVIDs that a verifier must refuse.
type X509Option func(*x509.Certificate)

// WithExtraURIs adds URI SANs after the SVID's SPIFFE ID.
func WithExtraURIs(uris ...*url.URL) X509Option {
	return func(t *x509.Certificate) { t.URIs = append(t.URIs, uris...) }
}

// WithoutURIs removes every URI SAN (an X.509 certificate that is not an SVID).
func WithoutURIs() X509Option { return func(t *x509.Certificate) { t.URIs = nil } }

// WithDNSNames sets DNS SANs.
func WithDNSNames(names ...string) X509Option {
	return func(t *x509.Certificate) { t.DNSNames = names }
}

// WithKeyUsage replaces the key usage.
func WithKeyUsage(ku x509.KeyUsage) X509Option {
	return func(t *x509.Certificate) { t.KeyUsage = ku }
}

// WithExtKeyUsage replaces the extended key usages (none: no EKU extension).
func WithExtKeyUsage(eku ...x509.ExtKeyUsage) X509Option {
	return func(t *x509.Certificate) { t.ExtKeyUsage = eku }
}

// WithIsCA marks the certificate as a CA.
func WithIsCA() X509Option {
	return func(t *x509.Certificate) { t.IsCA, t.BasicConstraintsValid = true, true }
}

// WithValidity sets the validity period explicitly.
func WithValidity(notBefore, notAfter time.Time) X509Option {
	return func(t *x509.Certificate) { t.NotBefore, t.NotAfter = notBefore, notAfter }
}

// IssueX509SVID issues a leaf X509-SVID for id, valid for ttl: a fresh P-256
// key, digitalSignature key usage, serverAuth and clientAuth EKUs, one URI SAN.
// id must be in the CA's trust domain unless the test wants otherwise: the CA
// signs what it is asked to, so that tests can build foreign-domain SVIDs.
func (c *CA) IssueX509SVID(id spiffeid.ID, ttl time.Duration, opts ...X509Option) (*x509svid.SVID, error) {
	if id.IsZero() {
		return nil, errors.New("ca: SPIFFE ID is required")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("ca: generate leaf key: %w", err)
	}
	now := c.now()
	tmpl := &x509.Certificate{
		SerialNumber:          mustSerial(),
		Subject:               pkix.Name{Organization: []string{"meshguard"}},
		URIs:                  []*url.URL{id.URL()},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(ttl),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyAgreement,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	for _, o := range opts {
		o(tmpl)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.root, key.Public(), c.rootKey)
	if err != nil {
		return nil, fmt.Errorf("ca: sign leaf for %s: %w", id, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("ca: parse leaf: %w", err)
	}
	return &x509svid.SVID{ID: id, Certificates: []*x509.Certificate{leaf}, PrivateKey: key}, nil
}

// JWTOption adjusts the claims or header of a JWT-SVID.
type JWTOption func(*jwtParams)

type jwtParams struct {
	claims    map[string]any
	kid       string
	notBefore *time.Time
	issuedAt  *time.Time
	noAud     bool
	alg       jose.SignatureAlgorithm
}

// WithClaim sets an extra claim (or overrides a registered one).
func WithClaim(name string, value any) JWTOption {
	return func(p *jwtParams) { p.claims[name] = value }
}

// WithKeyID sets the kid header (default: the CA's JWT key ID).
func WithKeyID(kid string) JWTOption { return func(p *jwtParams) { p.kid = kid } }

// WithNotBefore sets the nbf claim.
func WithNotBefore(t time.Time) JWTOption { return func(p *jwtParams) { p.notBefore = &t } }

// WithIssuedAt sets the iat claim (default: now).
func WithIssuedAt(t time.Time) JWTOption { return func(p *jwtParams) { p.issuedAt = &t } }

// WithoutAudience omits the aud claim.
func WithoutAudience() JWTOption { return func(p *jwtParams) { p.noAud = true } }

// IssueJWTSVID signs a JWT-SVID (ES256) for id with the given audience,
// expiring after ttl (a negative ttl issues an expired token).
func (c *CA) IssueJWTSVID(id spiffeid.ID, audience []string, ttl time.Duration, opts ...JWTOption) (string, error) {
	p := &jwtParams{claims: map[string]any{}, kid: c.jwtKID, alg: jose.ES256}
	for _, o := range opts {
		o(p)
	}
	now := c.now()
	iat := now
	if p.issuedAt != nil {
		iat = *p.issuedAt
	}
	claims := jwt.Claims{
		Subject:  id.String(),
		Expiry:   jwt.NewNumericDate(now.Add(ttl)),
		IssuedAt: jwt.NewNumericDate(iat),
	}
	if !p.noAud {
		claims.Audience = audience
	}
	if p.notBefore != nil {
		claims.NotBefore = jwt.NewNumericDate(*p.notBefore)
	}
	signer, err := jose.NewSigner(
		jose.SigningKey{Algorithm: p.alg, Key: jose.JSONWebKey{Key: c.jwtKey, KeyID: p.kid}},
		(&jose.SignerOptions{}).WithType("JWT"),
	)
	if err != nil {
		return "", fmt.Errorf("ca: JWT signer: %w", err)
	}
	tok, err := jwt.Signed(signer).Claims(claims).Claims(p.claims).Serialize()
	if err != nil {
		return "", fmt.Errorf("ca: sign JWT for %s: %w", id, err)
	}
	return tok, nil
}

// Files names the PEM files WriteFiles produced.
type Files struct {
	Cert, Key, Bundle, SPIFFEBundle string
}

// WriteFiles issues an X509-SVID for id and writes, into dir, the
// certificate chain (svid.pem), its key (svid-key.pem, mode 0600), the
// X.509 trust bundle (bundle.pem) and the SPIFFE bundle with the JWT keys
// (bundle.spiffe.json): what `meshguard authz` takes for standalone use.
func (c *CA) WriteFiles(dir string, id spiffeid.ID, ttl time.Duration) (Files, error) {
	svid, err := c.IssueX509SVID(id, ttl)
	if err != nil {
		return Files{}, err
	}
	certPEM, keyPEM, err := svid.Marshal()
	if err != nil {
		return Files{}, fmt.Errorf("ca: marshal SVID: %w", err)
	}
	bundlePEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.root.Raw})
	spiffeJSON, err := c.Bundle().Marshal()
	if err != nil {
		return Files{}, fmt.Errorf("ca: marshal SPIFFE bundle: %w", err)
	}
	f := Files{
		Cert:         filepath.Join(dir, "svid.pem"),
		Key:          filepath.Join(dir, "svid-key.pem"),
		Bundle:       filepath.Join(dir, "bundle.pem"),
		SPIFFEBundle: filepath.Join(dir, "bundle.spiffe.json"),
	}
	for _, w := range []struct {
		path string
		data []byte
		mode os.FileMode
	}{{f.Cert, certPEM, 0o644}, {f.Key, keyPEM, 0o600}, {f.Bundle, bundlePEM, 0o644}, {f.SPIFFEBundle, spiffeJSON, 0o644}} {
		if err := os.WriteFile(w.path, w.data, w.mode); err != nil {
			return Files{}, fmt.Errorf("ca: write %s: %w", w.path, err)
		}
	}
	return f, nil
}

func keyID(pub crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("ca: marshal public key: %w", err)
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:8]), nil
}

func mustSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		// crypto/rand never fails on supported platforms.
		panic(err)
	}
	return n
}
