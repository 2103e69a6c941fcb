package policies_test

import (
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshguard/meshguard/policies"
)

func TestIDPattern(t *testing.T) {
	cases := []struct {
		pattern, id string
		match       bool
	}{
		{"spiffe://mesh.test", "spiffe://mesh.test/ns/x/sa/y", true},
		{"spiffe://mesh.test", "spiffe://other.test/ns/x/sa/y", false},
		{"spiffe://mesh.test/ns/*/sa/web", "spiffe://mesh.test/ns/shop/sa/web", true},
		{"spiffe://mesh.test/ns/*/sa/web", "spiffe://mesh.test/ns/shop/sa/web/extra", false},
		{"spiffe://mesh.test/ns/*/sa/web", "spiffe://mesh.test/ns/shop/sa/api", false},
		{"spiffe://mesh.test/ns/*/sa/web", "spiffe://mesh.test/ns/a/b/sa/web", false},
		{"spiffe://mesh.test/ns/ops/**", "spiffe://mesh.test/ns/ops/sa/x", true},
		{"spiffe://mesh.test/ns/ops/**", "spiffe://mesh.test/ns/opsx/sa/x", false},
		{"spiffe://mesh.test/ns/ops/**", "spiffe://mesh.test/ns/ops", false},
		{"spiffe://mesh.test/ns/shop/sa/web", "spiffe://mesh.test/ns/shop/sa/web", true},
		{"spiffe://mesh.test/ns/shop/sa/web", "spiffe://mesh.test/ns/shop/sa/we", false},
	}
	for _, tc := range cases {
		p, err := policies.ParseIDPattern(tc.pattern)
		if err != nil {
			t.Fatalf("%s: %v", tc.pattern, err)
		}
		if got := p.Match(spiffeid.RequireFromString(tc.id)); got != tc.match {
			t.Errorf("%s ~ %s = %v", tc.pattern, tc.id, got)
		}
		if p.Match(spiffeid.ID{}) {
			t.Errorf("%s matched the zero ID", tc.pattern)
		}
		if p.String() != tc.pattern {
			t.Errorf("String() = %q", p.String())
		}
	}
	for _, bad := range []string{"", "*", "web", "spiffe://", "spiffe://*/x", "spiffe://UPPER", "spiffe://td//x", "spiffe://td/a*b", "spiffe://td/**/x", "spiffe://td/../x", "spiffe://td/./x", "spiffe://td/x/"} {
		if _, err := policies.ParseIDPattern(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
