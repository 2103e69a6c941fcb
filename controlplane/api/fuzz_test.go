package api

import (
	"encoding/json"
	"net/url"
	"testing"
	"time"

	"github.com/meshguard/meshguard/policies/wire"
)

func FuzzDecodeBatch(f *testing.F) {
	seed, _ := json.Marshal(wire.EventBatch{Reporter: "spiffe://td/r", Events: []wire.Event{
		{Kind: wire.EventAnomaly, Detector: "lateral", Source: "spiffe://td/a", Profile: "p"},
		{Kind: wire.EventEdge, Source: "spiffe://td/a", Destination: "b", Route: "r", Method: "GET"},
	}})
	f.Add(seed)
	f.Add([]byte(`{"reporter":"x","events":[]}{"trailing":1}`))
	f.Add([]byte(`{"events":[{"kind":"anomaly","unixMillis":1e400}]}`))
	f.Add([]byte(`{"events":[{"kind":"edge","extra":true}]}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := DecodeBatch(data)
		if err != nil {
			return
		}
		if len(b.Events) > MaxBatchEvents {
			t.Fatalf("accepted %d events", len(b.Events))
		}
		for _, ev := range b.Events {
			if kindLabel(ev.Kind) == "other" {
				t.Fatalf("accepted kind %q", ev.Kind)
			}
		}
	})
}

// FuzzParseQuery: the admin API's record and incident queries accept only
// valid filters, and whatever ParseFilter accepts survives FilterValues.
func FuzzParseQuery(f *testing.F) {
	f.Add("identity=spiffe%3A%2F%2Ftd%2Fns%2Fa%2F%2A%2F%2A&since=15m&kind=decision&decision=deny&limit=5&order=asc")
	f.Add("policy=P&rule=0&until=2026-01-01T00:00:00Z&reason=denied_by_policy")
	f.Add("identity=spiffe%3A%2F%2Ftd&window=10m&before=quarantine")
	f.Add("rule=0&limit=-1&since=-5m&%zz")
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, raw string) {
		q, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		_, _, _ = ParseTimeline(q, now)
		flt, err := ParseFilter(q, now)
		if err != nil {
			return
		}
		if err := flt.Validate(); err != nil {
			t.Fatalf("ParseFilter accepted an invalid filter: %v", err)
		}
		if _, err := ParseFilter(FilterValues(flt), now); err != nil {
			t.Fatalf("round trip of %q: %v", raw, err)
		}
	})
}

// FuzzDecodeDecisions: no decision batch is accepted that breaks a limit.
func FuzzDecodeDecisions(f *testing.F) {
	f.Add([]byte(`{"dropped":1,"decisions":[{"time":"2026-01-01T00:00:00Z","decision_id":"d","reason":"r"}]}`))
	f.Add([]byte(`{"decisions":[{"time":"2026-01-01T00:00:00Z","reason":"r"}]}`))
	f.Add([]byte(`{"decisions":null}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := DecodeDecisions(data)
		if err != nil {
			return
		}
		if len(b.Decisions) > MaxDecisions {
			t.Fatalf("accepted %d decisions", len(b.Decisions))
		}
		for _, d := range b.Decisions {
			if d.Time.IsZero() || d.DecisionID == "" || d.Reason == "" {
				t.Fatalf("accepted %+v", d)
			}
		}
	})
}
