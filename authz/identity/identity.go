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
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshguard/meshguard/policies"
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
	FailPrincipal   Failure = "principal"   // principal is a SPIFFE ID with no trusted bundle, or malformed
	FailCertificate Failure = "certificate" // certificate does not verify as an X509-SVID
	FailMismatch    Failure = "mismatch"    // principal and certificate disagree
	FailXFCC        Failure = "xfcc"        // trusted hop sent an unusable XFCC
	FailJWT         Failure = "jwt"         // token present and invalid
)

// IgnoredCredential is a credential that was present and ignored, which is
// not a failure: the request goes on without it. Its value is a bounded
// metric label, counted next to the failures.
type IgnoredCredential string

// Ignored credentials.
const (
	// IgnoredNotSPIFFE: the peer's principal is not a SPIFFE ID (a DNS SAN
	// or a certificate subject, which Envoy falls back to).
	IgnoredNotSPIFFE IgnoredCredential = "not_spiffe"
	// IgnoredUntrustedXFCC: an XFCC header from a peer that is not a
	// trusted hop; it must be removed from the request.
	IgnoredUntrustedXFCC IgnoredCredential = "xfcc_ignored"
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

// Request is what the enforcement point knows about the caller.
type Request struct {
	Principal   string // attributes.source.principal
	Certificate string // attributes.source.certificate, URL-encoded PEM
	// Conn is the identity of the connection the check came over when the
	// check carries no principal or certificate (HTTP mode: the calling
	// Envoy, authenticated by mTLS). It is not the request's peer: the
	// calling Envoy is, when it is a trusted hop, believed about its own
	// peer in XFCC.
	Conn spiffeid.ID
	// Local is the SPIFFE ID of the Envoy that sent the check, from its own
	// certificate (attributes.destination.principal): the workload's
	// sidecar. Zero when unknown.
	Local   spiffeid.ID
	Headers policies.HeaderGetter
	// SkipToken is a token the request's RequestAuthentication validated as
	// an end-user token: when the JWT-SVID header holds it, the JWT-SVID
	// path does not read it.
	SkipToken string
}

// Identity is the outcome: the request's identities, each for what it is.
type Identity struct {
	// Peer is the request's mTLS-authenticated peer, Istio's
	// source.principal (policies.Attributes.Peer): from the principal or
	// certificate Envoy reports, or in HTTP mode from the XFCC the calling
	// Envoy (a trusted hop) sets for its own peer. Zero without one.
	Peer spiffeid.ID
	// ForwardedClient is the client that a trusted hop in front, the
	// request's peer (a gateway that terminated the client's mTLS), names
	// in XFCC. It never replaces the peer.
	ForwardedClient spiffeid.ID
	// MTLS: the peer presented a client certificate, with or without a
	// SPIFFE ID.
	MTLS bool
	// JWT is the validated JWT-SVID, if any: a request principal.
	JWT *policies.JWT
	// ID is the caller as meshguard's own kinds see it
	// (policies.Attributes.Caller): the forwarded client, else the peer,
	// else the JWT-SVID's subject; zero: none. Method says which.
	ID     spiffeid.ID
	Method Method
	// Ignored lists credentials that were present and ignored. An ignored
	// XFCC header must be removed from the request.
	Ignored []IgnoredCredential
	// LocalXFCC: the XFCC header's last element is the checking Envoy's
	// own, set for the peer it verified (By= the local workload, URI= the
	// peer), as Istio's sidecars set it for the application. Not an
	// identity (it says nothing the peer does not), hidden from the
	// policy engine like any XFCC that is not a trusted hop's, but left
	// on the request for the application.
	LocalXFCC bool
}

// Attributes fills the engine's identity attributes.
func (id *Identity) Attributes(a *policies.Attributes) {
	a.Peer, a.ForwardedClient, a.MTLS, a.JWT = id.Peer, id.ForwardedClient, id.MTLS, id.JWT
}

// IgnoredXFCC reports whether an untrusted XFCC header was present.
func (id *Identity) IgnoredXFCC() bool {
	for _, f := range id.Ignored {
		if f == IgnoredUntrustedXFCC {
			return true
		}
	}
	return false
}
