package api_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/meshguard/meshguard/controlplane/api"
	"github.com/meshguard/meshguard/controlplane/learn"
	"github.com/meshguard/meshguard/controlplane/quarantine"
	"github.com/meshguard/meshguard/controlplane/record"
	"github.com/meshguard/meshguard/controlplane/state/disk"
	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/wire"
)

// sink is a record sink that can be full.
type sink struct {
	mu   sync.Mutex
	full bool
	recs []record.Record
}

func (s *sink) Append(recs []record.Record) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.full {
		return record.ErrFull
	}
	s.recs = append(s.recs, recs...)
	return nil
}

type nopSource struct{}

func (nopSource) SetSource(string, policies.Set) error { return nil }

func recordsHandler(t *testing.T, insecure bool, rs api.RecordSink) (*httptest.Server, *prometheus.Registry) {
	t.Helper()
	ds, err := disk.Open(t.TempDir(), disk.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ds.Close() })
	qm, err := quarantine.New(quarantine.Options{Store: ds, Sink: nopSource{}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(qm.Close)
	reg := prometheus.NewRegistry()
	h, err := api.New(api.Options{Quarantine: qm, Learner: learn.New(0, nil), TrustDomain: td, Insecure: insecure, Records: rs, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(h)
	t.Cleanup(ts.Close)
	return ts, reg
}

func post(t *testing.T, url, body string) *http.Response {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

func batch(n int, dropped uint64) string {
	b := wire.DecisionBatch{Reporter: "authz-1", Dropped: dropped}
	for i := range n {
		b.Decisions = append(b.Decisions, wire.Decision{Time: time.Unix(int64(i), 0).UTC(), DecisionID: fmt.Sprint("d", i), Reason: "denied_by_policy",
			Source: "spiffe://example.org/ns/a/sa/x", Destination: "spiffe://example.org/ns/b/sa/y", Method: "GET", Path: "/p"})
	}
	data, _ := json.Marshal(b)
	return string(data)
}

func TestDecisionsEndpoint(t *testing.T) {
	s := &sink{}
	ts, reg := recordsHandler(t, true, s)
	url := ts.URL + wire.DecisionsPath
	if resp := post(t, url, batch(3, 7)); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("status %s", resp.Status)
	}
	if len(s.recs) != 3 || s.recs[0].Kind != record.KindDecision || s.recs[0].Action != record.ActionDeny ||
		s.recs[0].Reporter != "unauthenticated:authz-1" || s.recs[0].Decision == nil || s.recs[0].Decision.Path != "/p" {
		t.Fatalf("records %+v", s.recs)
	}
	// A full store: 503 with Retry-After, nothing taken, counted.
	s.full = true
	resp := post(t, url, batch(2, 0))
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("full store: %s %v", resp.Status, resp.Header)
	}
	s.full = false
	for _, tc := range []struct{ name, body string }{
		{"unknown field", `{"decisions":[],"admin":true}`},
		{"no decision id", `{"decisions":[{"time":"2026-01-01T00:00:00Z","reason":"r"}]}`},
		{"bad time", `{"decisions":[{"time":"noon","decision_id":"d","reason":"r"}]}`},
		{"trailing data", `{"decisions":[]} {}`},
		{"too many", batch(api.MaxDecisions+1, 0)},
	} {
		if resp := post(t, url, tc.body); resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%s: %s", tc.name, resp.Status)
		}
	}
	if len(s.recs) != 3 {
		t.Errorf("rejected batches reached the store: %d records", len(s.recs))
	}
	for name, want := range map[string]float64{
		"meshguard_controlplane_decisions_dropped_by_reporters_total": 7,
	} {
		if got := testutil.ToFloat64(gather(t, reg, name)); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	// With TLS required, a caller without a client certificate is refused.
	strict, _ := recordsHandler(t, false, s)
	if resp := post(t, strict.URL+wire.DecisionsPath, batch(1, 0)); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("unauthenticated: %s", resp.Status)
	}
	// No record store: 404, so that a shipper counts its batches as refused.
	none, _ := recordsHandler(t, true, nil)
	if resp := post(t, none.URL+wire.DecisionsPath, batch(1, 0)); resp.StatusCode != http.StatusNotFound {
		t.Errorf("no store: %s", resp.Status)
	}
}

// gather returns the one counter of the family name.
func gather(t *testing.T, reg *prometheus.Registry, name string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "x"}, func() float64 { return mf.GetMetric()[0].GetCounter().GetValue() })
		}
	}
	t.Fatalf("no metric %s", name)
	return nil
}

// TestEventsBecomeRecords: anomalies and unknown edges are detections;
// with the store full they are counted, and the quarantine loop still runs.
func TestEventsBecomeRecords(t *testing.T) {
	s := &sink{}
	ts, reg := recordsHandler(t, true, s)
	body, _ := json.Marshal(wire.EventBatch{Events: []wire.Event{
		{Kind: wire.EventAnomaly, Detector: "enumeration", Source: "spiffe://example.org/ns/a/sa/x", Response: "block", UnixMillis: 1000},
		{Kind: wire.EventEdge, Source: "spiffe://example.org/ns/a/sa/x", Destination: "b", Detail: "unknown baseline=shadow", UnixMillis: 1000},
		{Kind: wire.EventEdge, Source: "spiffe://example.org/ns/a/sa/x", Destination: "b", Detail: "known", UnixMillis: 1000},
	}})
	if resp := post(t, ts.URL+wire.EventsPath, string(body)); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("events: %s", resp.Status)
	}
	if len(s.recs) != 2 || s.recs[0].Reason != "enumeration" || s.recs[1].Reason != "baseline" {
		t.Fatalf("records %+v", s.recs)
	}
	s.full = true
	if resp := post(t, ts.URL+wire.EventsPath, string(body)); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("events with a full store: %s", resp.Status)
	}
	mfs, _ := reg.Gather()
	refused := 0.0
	for _, mf := range mfs {
		if mf.GetName() == "meshguard_controlplane_records_refused_total" {
			for _, m := range mf.GetMetric() {
				refused += m.GetCounter().GetValue()
			}
		}
	}
	if refused != 2 {
		t.Errorf("refused records counted: %v", refused)
	}
}

func TestParseFilter(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	f, err := api.ParseFilter(map[string][]string{"identity": {"spiffe://td/ns/a/*/*"}, "since": {"15m"}, "kind": {"decision"},
		"decision": {"deny"}, "policy": {"P"}, "rule": {"0"}, "limit": {"5"}, "order": {"asc"}}, now)
	if err != nil || !f.Since.Equal(now.Add(-15*time.Minute)) || !f.Ascending || f.Limit != 5 || f.Rule != "0" {
		t.Fatalf("%+v %v", f, err)
	}
	back, err := api.ParseFilter(api.FilterValues(f), now)
	if err != nil || back.Policy != "P" || len(back.Identity) != 1 || !back.Since.Equal(f.Since) {
		t.Errorf("round trip %+v %v", back, err)
	}
	_, err = api.ParseFilter(map[string][]string{"since": {"yesterday"}, "order": {"up"}, "drop": {"x"}, "limit": {"many"}}, now)
	for _, want := range []string{"since", "order", `"drop"`, "limit"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not mention %s", err, want)
		}
	}
}
