package identity

import (
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshguard/meshguard/authz/internal/xfcc"
)

// Resolve establishes the caller identity of one request, in the
// precedence of the package documentation: the peer's principal and
// certificate, a trusted hop's XFCC, a JWT-SVID.
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
			out.Peer, out.ID, out.Method, out.MTLS = id, id, MethodPrincipal, true
		} else {
			out.Ignored = append(out.Ignored, IgnoredNotSPIFFE)
			out.MTLS = true
		}
	}
	if req.Certificate != "" {
		id, err := r.certificate(req.Certificate)
		if err != nil {
			return out, &Error{Kind: FailCertificate, Err: err}
		}
		switch {
		case id.IsZero():
			// A certificate without a URI SAN (DNS SANs only) names no
			// SPIFFE identity: ignored, as its principal is.
			if !principal.IsZero() {
				return out, &Error{Kind: FailMismatch, Err: fmt.Errorf("principal %s but a certificate without a SPIFFE ID", principal)}
			}
			if req.Principal == "" {
				out.Ignored = append(out.Ignored, IgnoredNotSPIFFE)
			}
		case !principal.IsZero() && id != principal:
			return out, &Error{Kind: FailMismatch, Err: fmt.Errorf("principal %s but certificate %s", principal, id)}
		case principal.IsZero():
			out.Peer, out.ID, out.Method = id, id, MethodCertificate
		}
		out.MTLS = true
	}

	if h, ok := get(HeaderXFCC); ok {
		// The hop that appended XFCC's last element: the peer (a gateway
		// in front), or in HTTP mode the calling Envoy itself.
		hop, ofConn := out.Peer, false
		if hop.IsZero() && req.Principal == "" && req.Certificate == "" {
			hop, ofConn = req.Conn, true
		}
		if _, trusted := r.trustedHops[hop]; trusted && !hop.IsZero() {
			id, err := r.xfcc(h, hop)
			if err != nil {
				return out, &Error{Kind: FailXFCC, Err: err}
			}
			if ofConn {
				// The calling Envoy's own peer: the request's peer.
				out.Peer = id
			} else {
				out.ForwardedClient = id
			}
			out.ID, out.Method, out.MTLS = id, MethodXFCC, true
		} else if r.localXFCC(h, req.Local, out.Peer) {
			out.LocalXFCC = true
		} else {
			out.Ignored = append(out.Ignored, IgnoredUntrustedXFCC)
		}
	}

	if r.jwtOn {
		if tok, ok := r.token(get); ok && (req.SkipToken == "" || tok != req.SkipToken) {
			j, err := r.jwt(tok)
			if err != nil {
				return out, &Error{Kind: FailJWT, Err: err}
			}
			out.JWT = j
			if out.ID.IsZero() {
				out.ID, out.Method = j.SVID, MethodJWT
			}
		}
	}
	if out.ID.IsZero() {
		out.Method = MethodNone
	}
	return out, nil
}

// localXFCC reports whether XFCC's last element is the one the local Envoy
// (local) appended for the peer it verified (peer): By= local, exactly one
// URI= the peer. What comes before it is the peer's to say, as in Istio.
func (r *Resolver) localXFCC(header string, local, peer spiffeid.ID) bool {
	if local.IsZero() || peer.IsZero() {
		return false
	}
	els, err := xfcc.Parse(header)
	if err != nil {
		return false
	}
	last := els[len(els)-1]
	return len(last.By) == 1 && last.By[0] == local.String() && len(last.URI) == 1 && last.URI[0] == peer.String()
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
