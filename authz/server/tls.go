package server

import (
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
)

// Callers are the identities allowed to call the server (the Envoys): exact
// SPIFFE IDs and whole trust domains.
type Callers struct {
	IDs          []spiffeid.ID
	TrustDomains []spiffeid.TrustDomain
}

// Authorizer returns the TLS authorizer for c; an empty c is an error,
// because a server nobody may call is a misconfiguration.
func (c Callers) Authorizer() (tlsconfig.Authorizer, error) {
	if len(c.IDs) == 0 && len(c.TrustDomains) == 0 {
		return nil, errors.New("server: no allowed caller identities configured")
	}
	ids := make(map[spiffeid.ID]struct{}, len(c.IDs))
	for _, id := range c.IDs {
		ids[id] = struct{}{}
	}
	tds := make(map[spiffeid.TrustDomain]struct{}, len(c.TrustDomains))
	for _, td := range c.TrustDomains {
		tds[td] = struct{}{}
	}
	return func(id spiffeid.ID, _ [][]*x509.Certificate) error {
		if _, ok := ids[id]; ok {
			return nil
		}
		if _, ok := tds[id.TrustDomain()]; ok {
			return nil
		}
		return fmt.Errorf("server: caller %s is not an allowed Envoy identity", id)
	}, nil
}
