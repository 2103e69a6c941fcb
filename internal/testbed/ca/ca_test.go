package ca

import (
	"crypto/x509"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

func TestIssuedSVIDsVerify(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	c, err := New(td)
	if err != nil {
		t.Fatal(err)
	}
	id := spiffeid.RequireFromPath(td, "/ns/default/sa/web")
	svid, err := c.IssueX509SVID(id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := x509svid.Verify(svid.Certificates, c.X509Bundle())
	if err != nil || got != id {
		t.Fatalf("Verify = %v, %v", got, err)
	}
	leaf := svid.Certificates[0]
	if leaf.IsCA || leaf.KeyUsage&x509.KeyUsageDigitalSignature == 0 || len(leaf.URIs) != 1 {
		t.Errorf("leaf is not a well-formed SVID: ca=%v ku=%v uris=%v", leaf.IsCA, leaf.KeyUsage, leaf.URIs)
	}

	tok, err := c.IssueJWTSVID(id, []string{"aud1"}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	js, err := jwtsvid.ParseAndValidate(tok, c.JWTBundle(), []string{"aud1"})
	if err != nil || js.ID != id {
		t.Fatalf("JWT ParseAndValidate = %v, %v", js, err)
	}
	if _, err := jwtsvid.ParseAndValidate(tok, c.JWTBundle(), []string{"other"}); err == nil {
		t.Error("JWT accepted for another audience")
	}

	other, _ := New(td)
	if _, _, err := x509svid.Verify(svid.Certificates, other.X509Bundle()); err == nil {
		t.Error("SVID verified against another CA of the same trust domain")
	}
}

func TestWriteFilesRoundTrip(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	c, err := New(td)
	if err != nil {
		t.Fatal(err)
	}
	id := spiffeid.RequireFromPath(td, "/authz")
	f, err := c.WriteFiles(t.TempDir(), id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	svid, err := x509svid.Load(f.Cert, f.Key)
	if err != nil || svid.ID != id {
		t.Fatalf("Load = %v, %v", svid, err)
	}
	b, err := spiffebundle.Load(td, f.SPIFFEBundle)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, b); err != nil {
		t.Errorf("SVID does not verify against the written SPIFFE bundle: %v", err)
	}
	if !b.HasJWTAuthority(c.JWTKeyID()) {
		t.Error("written SPIFFE bundle lacks the JWT key")
	}
}

func TestNewNeedsTrustDomain(t *testing.T) {
	if _, err := New(spiffeid.TrustDomain{}); err == nil {
		t.Error("New accepted a zero trust domain")
	}
}
