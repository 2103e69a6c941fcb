package detect

import (
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshguard/meshguard/policies"
)

// Identity patterns have the policies package's syntax and meaning: the
// detectors parse and match them with policies.IDPattern.

func parseIDPatterns(in []string, g *guard, field string) []policies.IDPattern {
	out := make([]policies.IDPattern, 0, len(in))
	for _, s := range in {
		p, err := policies.ParseIDPattern(s)
		if err != nil {
			g.fail(field)
			continue
		}
		out = append(out, p)
	}
	return out
}

func matchAny(ps []policies.IDPattern, id spiffeid.ID) bool {
	for i := range ps {
		if ps[i].Match(id) {
			return true
		}
	}
	return false
}
