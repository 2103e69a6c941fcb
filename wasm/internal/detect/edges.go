package detect

import (
	"errors"
	"fmt"
	"strings"

	"github.com/meshguard/meshguard/policies"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// BaselineMode is the strictest mode among the bundle's TrafficBaselines.
type BaselineMode uint8

// Baseline modes.
const (
	BaselineNone BaselineMode = iota
	BaselineLearn
	BaselineShadow
	BaselineEnforce
)

func (m BaselineMode) String() string {
	switch m {
	case BaselineLearn:
		return policies.BaselineLearn
	case BaselineShadow:
		return policies.BaselineShadow
	case BaselineEnforce:
		return policies.BaselineEnforce
	}
	return "none"
}

type baselineEdge struct {
	source idPattern
	routes []string // empty: any route
}

type baseline struct {
	mode   BaselineMode
	byDest map[string][]baselineEdge
}

func compileBaseline(tbs []policies.TrafficBaseline) (baseline, []error) {
	var errs []error
	b := baseline{byDest: map[string][]baselineEdge{}}
	for i := range tbs {
		where := "TrafficBaseline " + qualified(tbs[i].Metadata)
		var m BaselineMode
		switch tbs[i].Spec.Mode {
		case policies.BaselineLearn:
			m = BaselineLearn
		case policies.BaselineShadow:
			m = BaselineShadow
		case policies.BaselineEnforce:
			m = BaselineEnforce
		default:
			errs = append(errs, fmt.Errorf("%s: mode %q: want learn, shadow or enforce", where, tbs[i].Spec.Mode))
		}
		b.mode = max(b.mode, m)
		for j, e := range tbs[i].Spec.Edges {
			p, err := parseIDPattern(e.Source)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: edges[%d]: %w", where, j, err))
				continue
			}
			d := strings.ToLower(strings.TrimSuffix(e.Destination, "."))
			if d == "" || strings.ContainsAny(d, "/ ") {
				errs = append(errs, fmt.Errorf("%s: edges[%d]: destination %q is not a service name", where, j, e.Destination))
				continue
			}
			b.byDest[d] = append(b.byDest[d], baselineEdge{source: p, routes: e.Routes})
		}
	}
	if len(errs) > 0 {
		return b, []error{errors.Join(errs...)}
	}
	return b, nil
}

// known reports whether source → dest → route is in the baseline. dest is a
// host name; "reviews.default.svc.cluster.local" also matches baseline
// destinations "reviews.default" and "reviews".
func (b *baseline) known(src spiffeid.ID, dest, route string) bool {
	if b.lookup(src, dest, route) {
		return true
	}
	if i := strings.Index(dest, ".svc"); i > 0 {
		if b.lookup(src, dest[:i], route) {
			return true
		}
		if j := indexByte(dest, '.'); j > 0 && j < i {
			return b.lookup(src, dest[:j], route)
		}
	}
	return false
}

func (b *baseline) lookup(src spiffeid.ID, dest, route string) bool {
	for _, e := range b.byDest[dest] {
		if !e.source.match(src) {
			continue
		}
		if len(e.routes) == 0 {
			return true
		}
		for _, r := range e.routes {
			if r == route {
				return true
			}
		}
	}
	return false
}

// edgeSlot caches the baseline answer for one edge so a request costs one
// array probe; slots are overwritten on collision (bounded memory, and a
// re-reported edge is harmless).
type edgeSlot struct {
	hash     uint64
	gen      uint32
	known    bool
	reported bool
}

func edgeHash(id, dest, route string) uint64 {
	h := fnvString(fnvOffset, id)
	h = fnvByte(h, 0)
	h = fnvString(h, dest)
	h = fnvByte(h, 0)
	h = fnvString(h, route)
	return mix(h) | 1 // never zero: zero marks an empty slot
}
