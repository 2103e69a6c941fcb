package api

import (
	"encoding/json"
	"testing"

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
