package identity

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Limits on attacker-controlled input.
const (
	// MaxIDBytes is the SPIFFE specification's limit on a SPIFFE ID.
	MaxIDBytes          = 2048
	maxCertificateBytes = 64 << 10
	maxChainCerts       = 8
	maxTokenBytes       = 16 << 10
)

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
	// PeerCertificateGrace is how long past its expiry (notAfter) the peer
	// certificate Envoy reports is still accepted; zero or negative: not at
	// all. Envoy verifies a client certificate once, at the handshake, and
	// keeps the connection (and reports that certificate) after the SVID
	// rotates; the server cannot see when the handshake happened. Within
	// the grace the chain is verified as of the leaf's notAfter, the last
	// moment Envoy could have accepted it: every other check (trust
	// bundle, signatures, the intermediates' validity) still applies.
	PeerCertificateGrace time.Duration
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
	peerGrace   time.Duration
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
		peerGrace:   cfg.PeerCertificateGrace,
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
