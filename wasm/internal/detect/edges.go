package detect

import (
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

// EdgeOracle answers whether an edge is in the bundle's TrafficBaselines.
// *policies.Snapshot implements it, so the filter and the authz server read
// the baseline the same way.
type EdgeOracle interface {
	BaselineMode() string
	KnownEdge(source spiffeid.ID, destination, route string) bool
	// KnownDestination: an edge source → destination on any route (what
	// the caller's own, outbound side can check).
	KnownDestination(source spiffeid.ID, destination string) bool
}

func parseBaselineMode(s string) BaselineMode {
	switch s {
	case policies.BaselineLearn:
		return BaselineLearn
	case policies.BaselineShadow:
		return BaselineShadow
	case policies.BaselineEnforce:
		return BaselineEnforce
	}
	return BaselineNone
}

// knownEdge asks the oracle about dest as given and, for a Kubernetes service
// host such as "reviews.default.svc.cluster.local", also about
// "reviews.default" and "reviews", the forms baselines are written in. An
// outbound request asks about the destination on any route, and about
// "reviews" for "reviews.default".
func knownEdge(o EdgeOracle, src spiffeid.ID, dest, route string, outbound bool) bool {
	if known(o, src, dest, route, outbound) {
		return true
	}
	if j := indexByte(dest, '.'); outbound && j > 0 && !strings.Contains(dest, ".svc") && indexByte(dest[j+1:], '.') < 0 {
		// The outbound side names a Kubernetes service "<svc>.<ns>"; a
		// baseline may name it "<svc>".
		return known(o, src, dest[:j], route, outbound)
	}
	if i := strings.Index(dest, ".svc"); i > 0 {
		if known(o, src, dest[:i], route, outbound) {
			return true
		}
		if j := indexByte(dest, '.'); j > 0 && j < i {
			return known(o, src, dest[:j], route, outbound)
		}
	}
	return false
}

func known(o EdgeOracle, src spiffeid.ID, dest, route string, outbound bool) bool {
	if outbound {
		return o.KnownDestination(src, dest)
	}
	return o.KnownEdge(src, dest, route)
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
