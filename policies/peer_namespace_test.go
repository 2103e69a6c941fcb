package policies

import "testing"

// TestIstioNamespaceOverlap: Istio's ".*/ns/prod/.*" finds "/ns/prod/"
// where it overlaps an earlier "/ns/": in "/ns/ns/prod/x" too.
func TestIstioNamespaceOverlap(t *testing.T) {
	for _, v := range []string{"prod", "pro*"} {
		m := newStrMatcher(v, false)
		for uri, want := range map[string]bool{
			"spiffe://td/ns/ns/prod/x":    true,
			"spiffe://ns/ns/prod/sa/web":  true,
			"spiffe://td/ns/x/ns/prod/sa": true,
			"spiffe://td/ns/ns/prod":      false,
		} {
			if got := istioNamespace(uri, &m); got != want {
				t.Errorf("%q ~ %s = %v, want %v", v, uri, got, want)
			}
		}
	}
}
