package policies

import (
	"net/netip"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Attributes is one request as the engine sees it. Enforcement points fill
// it from what they have verified; the engine never trusts a field it was not
// given. The zero value is an unauthenticated request with no target.
type Attributes struct {
	// Peer is the SPIFFE ID the mTLS connection authenticated: the X509-SVID
	// of the direct peer. It is Istio's source.principal, and Istio's peer
	// fields (principals, namespaces, serviceAccounts, trustDomains, their
	// not forms, and the source.principal, source.namespace,
	// source.serviceAccount and source.trustDomain conditions) match it and
	// nothing else. Zero over plaintext, and when the client certificate
	// carries no SPIFFE ID.
	Peer spiffeid.ID
	// MTLS reports that the connection was mutually authenticated, with or
	// without a SPIFFE ID.
	MTLS bool
	// ForwardedClient is the original client that a trusted hop (a gateway
	// that terminated the client's mTLS) names in x-forwarded-client-cert.
	// It is a meshguard attribute: meshguard's own kinds match it (see
	// Caller), Istio's peer fields never do (the peer is the hop).
	ForwardedClient spiffeid.ID
	// SourceIP is the direct peer address (Istio source.ip).
	SourceIP netip.Addr
	// RemoteIP is the original client address (Istio remote.ip).
	RemoteIP netip.Addr
	// DestinationIP and DestinationPort are where the request arrived.
	DestinationIP   netip.Addr
	DestinationPort uint32
	// SNI is the server name of the TLS connection (connection.sni).
	SNI string

	// Target is the workload receiving the request.
	Target Target

	// Request.
	Method string
	Host   string // :authority, as received
	Path   string // :path as received, query and fragment included
	// Route is the Envoy route name (xds.route_name or a context extension).
	Route string
	// Headers gives request headers by lowercase name. Duplicated headers
	// arrive comma-joined, as Envoy presents them. Nil: no headers.
	Headers HeaderGetter

	// JWT is the request's validated token, if any: Istio's request
	// principal. It is the end-user token a RequestAuthentication rule
	// validated, else the request's JWT-SVID. requestPrincipals and the
	// request.auth.* conditions match it, and meshguard's jwt requirements
	// match it when it is a JWT-SVID (JWT.SVID is set) and JWTSVID is nil.
	JWT *JWT
	// JWTSVID is the request's validated JWT-SVID when the request also
	// carries an end-user token (in JWT). meshguard's jwt requirements,
	// Caller and quarantines read the JWT-SVID; Istio's fields never do
	// then.
	JWTSVID *JWT
	// JWTDeferred says that the request's tokens, if it carries any (a
	// JWT-SVID, an end-user JWT of a RequestAuthentication), are verified
	// after this decision by meshguard's ext_authz server, which evaluates
	// the same policy in full (the wasm filter, which cannot verify them,
	// sets it where the control plane says the server follows). Every check
	// that needs a verified token then takes the permissive side: met in
	// ALLOW rules, unmet in DENY, AUDIT and CUSTOM rules. Rules combine their
	// checks with and/or only, so the decision is never stricter than the
	// full one, whatever token the request carries, and the server's full
	// decision (which also refuses an invalid token) is the one that holds.
	// JWT and JWTSVID are ignored.
	JWTDeferred bool
}

// Caller is the identity meshguard's own kinds match (IdentityPolicy and
// RouteOverride ids, notIds and trustDomains; TrafficBaseline edges;
// AnomalyProfile workloads): the client a trusted hop forwarded, else the
// mTLS peer, else the subject of a JWT-SVID. Zero when the request has none.
func (a *Attributes) Caller() spiffeid.ID {
	switch {
	case !a.ForwardedClient.IsZero():
		return a.ForwardedClient
	case !a.Peer.IsZero():
		return a.Peer
	}
	if t := a.svid(); t != nil {
		return t.SVID
	}
	return spiffeid.ID{}
}

// svid is the request's validated JWT-SVID, or nil.
func (a *Attributes) svid() *JWT {
	if a.JWTSVID != nil {
		return a.JWTSVID
	}
	if a.JWT != nil && !a.JWT.SVID.IsZero() {
		return a.JWT
	}
	return nil
}

// Target is the workload a request is for: how policies are scoped to it.
type Target struct {
	// ID is the workload's SPIFFE ID (destination.principal), zero if unknown.
	ID spiffeid.ID
	// Namespace of the workload. When empty it is read from ID by position
	// (/ns/<namespace>/sa/<sa>); an ID of any other form gives no
	// namespace, and the request is denied (denied_unknown_target) rather
	// than decided by mesh-wide policies alone.
	Namespace string
	// Labels of the workload, for Istio selectors: all of them, from a
	// source the client cannot touch.
	Labels map[string]string
	// Service is the Kubernetes Service name the request addressed, and
	// Gateway the Gateway name when the workload is a gateway: for targetRefs.
	Service string
	Gateway string
	// Resolved says that Labels, Service and Gateway are everything a
	// trusted source (the control plane's route configuration, the proxy's
	// node metadata, a workload registry) knows of the workload, even when
	// they are empty. Without it, a target with no labels has unknown
	// labels, and one with neither service nor gateway an unknown service:
	// a selector-scoped (or targetRef-scoped) policy of its namespace or of
	// the mesh then cannot be decided for it, and the request is denied
	// with ReasonDeniedUnresolved instead of skipping that policy.
	Resolved bool
}

// HeaderGetter returns a request header by lowercase name.
type HeaderGetter interface {
	Get(name string) (value string, ok bool)
}

// MapHeaders adapts a map of lowercase names to values.
type MapHeaders map[string]string

// Get implements HeaderGetter.
func (m MapHeaders) Get(name string) (string, bool) {
	v, ok := m[name]
	return v, ok
}

// JWT is a token that the enforcement point has fully validated (signature,
// audience, expiry): a JWT-SVID, or an end-user token of Istio's request
// authentication.
type JWT struct {
	// Issuer and Subject are the iss and sub claims.
	Issuer  string
	Subject string
	// Principal is Istio's request principal: "iss/sub" (sub alone for a
	// token without iss).
	Principal string
	// SVID is the subject as a SPIFFE ID when the token was verified as a
	// JWT-SVID, against SPIFFE trust bundles; zero for any other token.
	SVID      spiffeid.ID
	Audiences []string
	Presenter string
	// Claims are the token's claims as decoded from JSON.
	Claims map[string]any
}
