package identity

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// The X.509 checks: SPIFFE IDs read from the peer's principal and from
// XFCC, and the peer certificate verified as an X509-SVID.

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
	if err := workload(id); err != nil {
		return spiffeid.ID{}, err
	}
	if !r.trusted(id.TrustDomain()) {
		return spiffeid.ID{}, fmt.Errorf("%s: trust domain %q is not trusted", id, id.TrustDomain().Name())
	}
	return id, nil
}

// workload refuses a SPIFFE ID without a path: it names a trust domain, not
// a workload (the X509-SVID and JWT-SVID specifications).
func workload(id spiffeid.ID) error {
	if id.Path() == "" {
		return fmt.Errorf("%s names a trust domain, not a workload: an SVID's SPIFFE ID has a path", id)
	}
	return nil
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

// certificate verifies the peer certificate as an X509-SVID. A leaf without
// any URI SAN (DNS SANs only) is not a SPIFFE certificate: it gives the
// zero ID and no error, and is ignored like its principal.
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
	if len(certs[0].URIs) == 0 {
		return spiffeid.ID{}, nil
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
	at := r.now()
	if past := at.Sub(leaf.NotAfter); past > 0 && past <= r.peerGrace {
		// A connection established while the SVID was valid (see
		// Config.PeerCertificateGrace).
		at = leaf.NotAfter
	}
	id, chains, err := x509svid.Verify(certs, r.bundles, x509svid.WithTime(at))
	if err != nil {
		return spiffeid.ID{}, err
	}
	if err := workload(id); err != nil {
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
