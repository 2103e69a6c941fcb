package policies_test

import (
	"testing"

	"github.com/meshguard/meshguard/internal/policygen"
	"github.com/meshguard/meshguard/policies"
)

// The explain path evaluates every rule without the index; it must reach
// the same decision as the indexed path for every request.
func TestExplainMatchesDecide(t *testing.T) {
	for _, rules := range []int{10, 1000} {
		set, m := policygen.Realistic(rules, 1)
		b, _, err := policies.NewBundle("", set)
		if err != nil {
			t.Fatal(err)
		}
		s, err := policies.Compile(b)
		if err != nil {
			t.Fatal(err)
		}
		reqs := policygen.Requests(&set, m, 2000, 2)
		allowed := 0
		for i := range reqs {
			d, _ := s.Explain(&reqs[i])
			if d2 := s.Decide(&reqs[i]); d2 != d {
				t.Fatalf("rules=%d request %d: explain %+v != decide %+v", rules, i, d, d2)
			}
			if d.Allowed {
				allowed++
			}
		}
		if allowed == 0 || allowed == len(reqs) {
			t.Fatalf("rules=%d: %d of %d allowed: the generated mix should have both", rules, allowed, len(reqs))
		}
	}
}
