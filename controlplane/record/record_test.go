package record

import (
	"testing"

	"github.com/meshguard/meshguard/policies/wire"
)

const (
	filter = "spiffe://cluster.local/ns/bookstore/sa/catalog"
	caller = "spiffe://cluster.local/ns/bookstore/sa/reviews"
)

// TestFromEventsDecisionReports: a filter's decision reports become
// decision records with their counts: denials and dry-run would-denies
// always, reports of allowed requests only as sampled; outcomes the
// control plane does not know are not records.
func TestFromEventsDecisionReports(t *testing.T) {
	events := []wire.Event{
		{Kind: wire.EventDecision, Source: caller, Route: "catalog-api", Method: "DELETE", Path: "/api/books/1", Response: "deny",
			Count: 7, UnixMillis: 1000, Detail: "denied_no_allow_match"},
		{Kind: wire.EventDecision, Source: caller, Route: "catalog-api", Response: "dry-run", Count: 2, UnixMillis: 1000,
			Detail: "denied_by_policy RouteOverride/bookstore/beta#no-reviews"},
		{Kind: wire.EventDecision, Source: caller, Route: "catalog-api", Response: "allow", Count: 40, UnixMillis: 1000,
			Detail: "allowed_by_policy AuthorizationPolicy/bookstore/catalog#0"},
		{Kind: wire.EventDecision, Source: caller, Response: "maybe", Count: 1, UnixMillis: 1000, Detail: "x"},
		{Kind: wire.EventAnomaly, Detector: "enumeration", Source: caller, Response: "block", Count: 30, UnixMillis: 1000},
	}
	for _, tc := range []struct {
		name   string
		o      EventOptions
		allows int
	}{
		{"allows not sampled", EventOptions{}, 0},
		{"every allow report", EventOptions{AllowSample: 1}, 1},
		{"half, drawn above", EventOptions{AllowSample: 0.5, Rand: func() float64 { return 0.7 }}, 0},
		{"half, drawn below", EventOptions{AllowSample: 0.5, Rand: func() float64 { return 0.2 }}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			recs := FromEvents(filter, events, tc.o)
			if len(recs) != 3+tc.allows {
				t.Fatalf("%d records: %+v", len(recs), recs)
			}
			d := recs[0]
			if d.Kind != KindDecision || d.Action != ActionDeny || d.Count != 7 || d.Destination != filter || d.Reason != "denied_no_allow_match" ||
				d.Method != "DELETE" || d.Path != "/api/books/1" || d.Decision != nil {
				t.Errorf("deny report: %+v", d)
			}
			w := recs[1]
			if w.Action != ActionWouldDeny || w.Count != 2 || w.Policy != "RouteOverride/bookstore/beta" || w.Rule != "no-reviews" {
				t.Errorf("dry-run report: %+v", w)
			}
			if tc.allows > 0 {
				a := recs[2]
				if a.Action != ActionAllow || a.Count != 40 || a.Policy != "AuthorizationPolicy/bookstore/catalog" || a.Rule != "0" {
					t.Errorf("allow report: %+v", a)
				}
			}
			if last := recs[len(recs)-1]; last.Kind != KindDetection || last.Reason != "enumeration" {
				t.Errorf("anomaly: %+v", last)
			}
		})
	}
}
