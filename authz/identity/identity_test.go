package identity

import (
	"bytes"
	"encoding/pem"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/meshguard/meshguard/authz/internal/xfcc"
	"github.com/meshguard/meshguard/internal/testbed/ca"
	"github.com/meshguard/meshguard/policies"
)

func TestNewRefusesEmptyAudience(t *testing.T) {
	c, err := ca.New(spiffeid.RequireTrustDomainFromString("prod.example"))
	if err != nil {
		t.Fatal(err)
	}
	bundles := spiffebundle.NewSet(c.Bundle())
	for _, auds := range [][]string{nil, {}, {""}, {"  "}} {
		if _, err := New(Config{Bundles: bundles, JWTAudiences: auds}); err == nil || !strings.Contains(err.Error(), "audience") {
			t.Errorf("audiences %q: err = %v, want a refusal", auds, err)
		}
	}
	if _, err := New(Config{Bundles: bundles, JWTDisabled: true}); err != nil {
		t.Errorf("JWT disabled explicitly: %v", err)
	}
	if _, err := New(Config{JWTAudiences: []string{"a"}}); err == nil {
		t.Error("no bundle source accepted")
	}
}

func TestResolveWithJWTDisabledIgnoresTokens(t *testing.T) {
	c, _ := ca.New(spiffeid.RequireTrustDomainFromString("prod.example"))
	r, err := New(Config{Bundles: spiffebundle.NewSet(c.Bundle()), JWTDisabled: true})
	if err != nil {
		t.Fatal(err)
	}
	id, err := r.Resolve(Request{Headers: policies.MapHeaders{"authorization": "Bearer garbage"}})
	if err != nil || !id.ID.IsZero() || id.Method != MethodNone {
		t.Errorf("Resolve = %+v, %v", id, err)
	}
}

func TestResolvePrincipalEdgeCases(t *testing.T) {
	c, _ := ca.New(spiffeid.RequireTrustDomainFromString("prod.example"))
	r, err := New(Config{Bundles: spiffebundle.NewSet(c.Bundle()), JWTAudiences: []string{"a"}, Now: time.Now})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		principal string
		wantErr   bool
		wantID    string
	}{
		{"spiffe://prod.example/ns/a/sa/b", false, "spiffe://prod.example/ns/a/sa/b"},
		{"spiffe://prod.example/ns/a/sa/\xff", true, ""},
		{"spiffe://prod.example/" + strings.Repeat("x", MaxIDBytes), true, ""},
		{"SPIFFE://prod.example/a", true, ""},
		{"spiffe://prod.example/a/", true, ""},
		{"spiffe://prod.example/a?b", true, ""},
		{"spiffe://other.example/a", true, ""},
		{"spiffe://prod.example", true, ""},  // a trust domain, not a workload
		{"spiffe://prod.example/", true, ""}, // the same, malformed
		{"CN=frontend,O=acme", false, ""},
		{"frontend.example.com", false, ""},
	}
	for _, tt := range tests {
		id, err := r.Resolve(Request{Principal: tt.principal})
		if (err != nil) != tt.wantErr {
			t.Errorf("%q: err = %v, want error %v", tt.principal, err, tt.wantErr)
			continue
		}
		if got := id.ID; (got.IsZero() && tt.wantID != "") || (!got.IsZero() && got.String() != tt.wantID) {
			t.Errorf("%q: id = %v, want %q", tt.principal, got, tt.wantID)
		}
	}
}

// The identities stay apart: a principal is the peer; XFCC from a trusted
// hop that is the peer names a forwarded client and leaves the peer alone;
// XFCC that the calling Envoy sets in HTTP mode names the request's peer; a
// certificate with DNS SANs only is ignored, not denied.
func TestResolveKeepsIdentitiesApart(t *testing.T) {
	c, _ := ca.New(spiffeid.RequireTrustDomainFromString("prod.example"))
	gw := spiffeid.RequireFromString("spiffe://prod.example/ns/istio-system/sa/gw")
	envoy := spiffeid.RequireFromString("spiffe://prod.example/ns/shop/sa/api-envoy")
	client := spiffeid.RequireFromString("spiffe://prod.example/ns/web/sa/frontend")
	r, err := New(Config{Bundles: spiffebundle.NewSet(c.Bundle()), TrustedHops: []spiffeid.ID{gw, envoy}, JWTAudiences: []string{"a"}})
	if err != nil {
		t.Fatal(err)
	}
	xfcc := func(by spiffeid.ID) policies.MapHeaders {
		return policies.MapHeaders{HeaderXFCC: "By=" + by.String() + ";URI=" + client.String()}
	}

	id, err := r.Resolve(Request{Principal: gw.String(), Headers: xfcc(gw)})
	if err != nil || id.Peer != gw || id.ForwardedClient != client || id.ID != client || id.Method != MethodXFCC {
		t.Errorf("XFCC through a gateway: %+v, %v", id, err)
	}
	var a policies.Attributes
	id.Attributes(&a)
	if a.Peer != gw || a.ForwardedClient != client || a.Caller() != client {
		t.Errorf("attributes: %+v", a)
	}

	id, err = r.Resolve(Request{Conn: envoy, Headers: xfcc(envoy)})
	if err != nil || id.Peer != client || !id.ForwardedClient.IsZero() || id.ID != client {
		t.Errorf("HTTP mode, XFCC of the calling Envoy: %+v, %v", id, err)
	}
	id, err = r.Resolve(Request{Conn: envoy})
	if err != nil || !id.Peer.IsZero() || !id.ID.IsZero() {
		t.Errorf("HTTP mode without XFCC: the calling Envoy is not the request's peer: %+v, %v", id, err)
	}

	svid, err := c.IssueX509SVID(client, time.Hour, ca.WithoutURIs(), ca.WithDNSNames("frontend.web.svc"))
	if err != nil {
		t.Fatal(err)
	}
	id, err = r.Resolve(Request{Principal: "frontend.web.svc", Certificate: certParam(svid)})
	if err != nil || !id.Peer.IsZero() || !id.MTLS || len(id.Ignored) != 1 || id.Ignored[0] != IgnoredNotSPIFFE {
		t.Errorf("DNS SANs only: %+v, %v", id, err)
	}
	id, err = r.Resolve(Request{Principal: client.String(), Certificate: certParam(svid)})
	if err == nil {
		t.Errorf("a SPIFFE principal with a certificate that has no SPIFFE ID: %+v", id)
	}
}

// certParam URL-encodes a PEM certificate chain as Envoy does for
// attributes.source.certificate.
func certParam(svid *x509svid.SVID) string {
	var b bytes.Buffer
	for _, c := range svid.Certificates {
		_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return url.PathEscape(b.String())
}

// TestPeerCertificateGrace: a peer certificate Envoy still reports on a
// connection established before the SVID expired is accepted within the
// grace, verified as of its notAfter; past the grace, with no grace, not
// yet valid, or from a CA no longer trusted, it is refused.
func TestPeerCertificateGrace(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("prod.example")
	c, _ := ca.New(td)
	other, _ := ca.New(td) // the same trust domain, a CA the bundle does not hold
	client := spiffeid.RequireFromString("spiffe://prod.example/ns/web/sa/frontend")
	// The resolver's clock runs ahead, so that the CA (valid from a minute
	// ago) was valid through every leaf's validity.
	now := time.Now().Add(4 * time.Hour).Truncate(time.Second)
	issue := func(c *ca.CA, notBefore, notAfter time.Time) string {
		s, err := c.IssueX509SVID(client, time.Hour, ca.WithValidity(notBefore, notAfter))
		if err != nil {
			t.Fatal(err)
		}
		return certParam(s)
	}
	resolver := func(grace time.Duration) *Resolver {
		r, err := New(Config{Bundles: spiffebundle.NewSet(c.Bundle()), JWTDisabled: true, PeerCertificateGrace: grace,
			Now: func() time.Time { return now }})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	for _, tc := range []struct {
		name  string
		grace time.Duration
		cert  string
		ok    bool
	}{
		{"valid", time.Hour, issue(c, now.Add(-time.Hour), now.Add(time.Hour)), true},
		{"expired 10m ago, grace 1h", time.Hour, issue(c, now.Add(-time.Hour), now.Add(-10*time.Minute)), true},
		{"expired exactly the grace ago", time.Hour, issue(c, now.Add(-2*time.Hour), now.Add(-time.Hour)), true},
		{"expired past the grace", time.Hour, issue(c, now.Add(-3*time.Hour), now.Add(-time.Hour-time.Second)), false},
		{"expired, no grace", 0, issue(c, now.Add(-time.Hour), now.Add(-time.Second)), false},
		{"not yet valid", time.Hour, issue(c, now.Add(time.Minute), now.Add(time.Hour)), false},
		{"expired, from an untrusted CA", time.Hour, issue(other, now.Add(-time.Hour), now.Add(-10*time.Minute)), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, err := resolver(tc.grace).Resolve(Request{Principal: client.String(), Certificate: tc.cert})
			if tc.ok && (err != nil || id.Peer != client) {
				t.Fatalf("refused: %+v, %v", id, err)
			}
			if !tc.ok && err == nil {
				t.Fatalf("accepted: %+v", id)
			}
		})
	}
}

// TestLocalXFCC: XFCC whose last element the checking Envoy appended for
// the peer it verified is recognised (left for the application, never an
// identity); any other XFCC from a peer that is not a trusted hop is
// ignored and must be stripped.
func TestLocalXFCC(t *testing.T) {
	c, _ := ca.New(spiffeid.RequireTrustDomainFromString("prod.example"))
	local := spiffeid.RequireFromString("spiffe://prod.example/ns/shop/sa/api")
	peer := spiffeid.RequireFromString("spiffe://prod.example/ns/web/sa/frontend")
	admin := spiffeid.RequireFromString("spiffe://prod.example/ns/ops/sa/admin")
	r, err := New(Config{Bundles: spiffebundle.NewSet(c.Bundle()), JWTDisabled: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		local  spiffeid.ID
		header string
		own    bool
	}{
		{"the sidecar's own element", local, "By=" + local.String() + ";Hash=ab;URI=" + peer.String(), true},
		{"after what the peer sent (APPEND_FORWARD)", local, "By=x;URI=" + admin.String() + ",By=" + local.String() + ";URI=" + peer.String(), true},
		{"naming another client", local, "By=" + local.String() + ";URI=" + admin.String(), false},
		{"two URIs", local, "By=" + local.String() + ";URI=" + peer.String() + ";URI=" + admin.String(), false},
		{"another By", local, "By=" + admin.String() + ";URI=" + peer.String(), false},
		{"the sidecar unknown", spiffeid.ID{}, "By=" + local.String() + ";URI=" + peer.String(), false},
		{"the peer's element followed by a spoofed one", local, "By=" + local.String() + ";URI=" + peer.String() + ",By=" + admin.String() + ";URI=" + admin.String(), false},
		{"malformed", local, `By=` + local.String() + `;URI="` + peer.String(), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, err := r.Resolve(Request{Principal: peer.String(), Local: tc.local, Headers: policies.MapHeaders{HeaderXFCC: tc.header}})
			if err != nil || id.Peer != peer || !id.ForwardedClient.IsZero() || id.ID != peer {
				t.Fatalf("%+v, %v", id, err)
			}
			if id.LocalXFCC != tc.own || id.IgnoredXFCC() == tc.own {
				t.Fatalf("local %v, ignored %v; want local %v", id.LocalXFCC, id.IgnoredXFCC(), tc.own)
			}
		})
	}
}

// FuzzResolve: whatever a request carries, resolving it never panics, an
// XFCC header never replaces a verified peer, a forwarded client comes only
// from a trusted hop, and an XFCC left for the application (LocalXFCC) is
// exactly the checking Envoy's element for that peer.
func FuzzResolve(f *testing.F) {
	c, _ := ca.New(spiffeid.RequireTrustDomainFromString("prod.example"))
	gw := spiffeid.RequireFromString("spiffe://prod.example/ns/istio-system/sa/gw")
	local := spiffeid.RequireFromString("spiffe://prod.example/ns/shop/sa/api")
	peer := "spiffe://prod.example/ns/web/sa/frontend"
	r, err := New(Config{Bundles: spiffebundle.NewSet(c.Bundle()), TrustedHops: []spiffeid.ID{gw}, JWTDisabled: true, PeerCertificateGrace: time.Hour})
	if err != nil {
		f.Fatal(err)
	}
	svid, err := c.IssueX509SVID(spiffeid.RequireFromString(peer), time.Hour)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(peer, "", "By="+local.String()+";URI="+peer, true)
	f.Add(gw.String(), "", "By="+gw.String()+";URI="+peer, true)
	f.Add(peer, certParam(svid), "By=x;URI=spiffe://prod.example/a,By="+local.String()+";URI="+peer, true)
	f.Add("", "", `By="`+local.String()+`;URI=`+peer, false)
	f.Fuzz(func(t *testing.T, principal, cert, header string, withLocal bool) {
		req := Request{Principal: principal, Certificate: cert, Headers: policies.MapHeaders{HeaderXFCC: header}}
		if withLocal {
			req.Local = local
		}
		id, err := r.Resolve(req)
		if err != nil {
			return
		}
		if principal != "" && !id.Peer.IsZero() && id.Peer.String() != principal {
			t.Fatalf("peer %s, principal %q", id.Peer, principal)
		}
		if !id.ForwardedClient.IsZero() && id.Peer != gw {
			t.Fatalf("forwarded client %s from peer %s, not a trusted hop", id.ForwardedClient, id.Peer)
		}
		if id.LocalXFCC {
			els, err := xfcc.Parse(header)
			if err != nil || !withLocal || id.Peer.IsZero() {
				t.Fatalf("local XFCC %q: %v (local %v, peer %s)", header, err, withLocal, id.Peer)
			}
			last := els[len(els)-1]
			if len(last.By) != 1 || last.By[0] != local.String() || len(last.URI) != 1 || last.URI[0] != id.Peer.String() {
				t.Fatalf("local XFCC %q for peer %s", header, id.Peer)
			}
			if id.IgnoredXFCC() {
				t.Fatal("both left for the application and ignored")
			}
		}
	})
}
