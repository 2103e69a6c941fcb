package console

import (
	"crypto/tls"
	"crypto/x509"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// ServerTLSConfig is the TLS configuration of a listener that serves the
// console next to mTLS-only endpoints: a client certificate is asked for
// and, when one is given, verified against the bundle and authorized like
// any mTLS caller; a client without one (a browser through a port-forward,
// with a bearer token) may connect, and every endpoint that needs a
// certificate (the events endpoint, the admin API) refuses it.
func ServerTLSConfig(svid x509svid.Source, bundle x509bundle.Source, authorizer tlsconfig.Authorizer) *tls.Config {
	c := tlsconfig.MTLSServerConfig(svid, bundle, authorizer)
	verify := c.VerifyPeerCertificate
	c.ClientAuth = tls.RequestClientCert
	c.VerifyPeerCertificate = func(raw [][]byte, chains [][]*x509.Certificate) error {
		if len(raw) == 0 {
			return nil
		}
		return verify(raw, chains)
	}
	return c
}
