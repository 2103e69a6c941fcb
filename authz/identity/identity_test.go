package identity

import (
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

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
