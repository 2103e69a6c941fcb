package replay

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/source"
	"github.com/meshguard/meshguard/policies/wire"
)

const (
	frontend = "spiffe://cluster.local/ns/bookstore/sa/frontend"
	reviews  = "spiffe://cluster.local/ns/bookstore/sa/reviews"
	catalog  = "spiffe://cluster.local/ns/bookstore/sa/catalog"
)

// recorded is the policy the traffic was decided under: frontend and
// reviews may GET catalog's API.
const recordedPolicy = `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: catalog, namespace: bookstore}
spec:
  selector: {matchLabels: {app: catalog}}
  rules:
  - from: [{source: {principals: [cluster.local/ns/bookstore/sa/frontend, cluster.local/ns/bookstore/sa/reviews]}}]
    to: [{operation: {methods: [GET], paths: ["/api/books", "/api/books/*"]}}]
`

// stricter drops reviews and asks every caller for a tenant header on
// writes (which the log records), and adds a DENY on an unrecorded header.
const stricterPolicy = `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: catalog, namespace: bookstore}
spec:
  selector: {matchLabels: {app: catalog}}
  rules:
  - from: [{source: {principals: [cluster.local/ns/bookstore/sa/frontend]}}]
    to: [{operation: {methods: [GET], paths: ["/api/books", "/api/books/*"]}}]
`

func bundle(t testing.TB, yaml string) *policies.Bundle {
	t.Helper()
	set, diags := source.Parse("test.yaml", []byte(yaml))
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	b, _, err := policies.NewBundle("", set)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var t0 = time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)

func rec(i int, src, path string, headers map[string]string) wire.Decision {
	return wire.Decision{
		Time: t0.Add(time.Duration(i) * time.Second), DecisionID: fmt.Sprintf("d-%d", i), Protocol: "grpc",
		Source: src, SourceMethod: "certificate", Peer: src, MTLS: true, SourceIP: "10.0.0.1", DestinationIP: "10.0.0.2", DestinationPort: 8080,
		Destination: catalog, TargetNamespace: "bookstore", TargetService: "catalog", TargetLabels: map[string]string{"app": "catalog"},
		Method: "GET", Host: "catalog:8080", Path: path, Route: "catalog-api", Headers: headers, HeaderNames: []string{"x-tenant"},
	}
}

// recordedLog decides a traffic mix under the recorded policy, as an authz
// server would, and returns its lines.
func recordedLog(t testing.TB, n int) []wire.Decision {
	snap, err := policies.Compile(bundle(t, recordedPolicy))
	if err != nil {
		t.Fatal(err)
	}
	var out []wire.Decision
	for i := range n {
		var d wire.Decision
		switch i % 10 {
		case 0, 1, 2, 3, 4: // frontend reads: allowed, stay allowed
			d = rec(i, frontend, "/api/books/1", map[string]string{"x-tenant": "t1"})
		case 5, 6, 7: // reviews reads: allowed, denied by the candidate
			d = rec(i, reviews, "/api/books", nil)
		case 8: // reviews scanning: denied, stays denied
			d = rec(i, reviews, fmt.Sprintf("/admin/%d", i), nil)
		case 9: // quarantined: runtime state, not replayed
			d = rec(i, reviews, "/api/books", nil)
			d.Allowed, d.Reason = false, string(policies.ReasonDeniedQuarantine)
			out = append(out, d)
			continue
		}
		a, _, err := Attributes(&d)
		if err != nil {
			t.Fatal(err)
		}
		dec := snap.Decide(a)
		d.Allowed, d.Reason, d.Policy, d.Rule = dec.Allowed, string(dec.Reason), dec.Ref.Policy, dec.Ref.Rule
		out = append(out, d)
	}
	return out
}

func jsonl(t testing.TB, ds []wire.Decision) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	for i := range ds {
		if err := enc.Encode(&ds[i]); err != nil {
			t.Fatal(err)
		}
	}
	return b.Bytes()
}

// TestStricterCandidateTurnsAllowsIntoDenies: 1000 recorded requests;
// reviews' 300 allowed reads turn into denies under the candidate, the
// rest stays; quarantined requests are not replayed, and say why.
func TestStricterCandidateTurnsAllowsIntoDenies(t *testing.T) {
	log := recordedLog(t, 1000)
	r, err := New(bundle(t, stricterPolicy), Options{Examples: 2})
	if err != nil {
		t.Fatal(err)
	}
	rep := r.NewReport()
	if err := r.ReplayJSONL(bytes.NewReader(jsonl(t, log)), Window{}, 4, rep); err != nil {
		t.Fatal(err)
	}
	rep.Finish()
	if rep.Total != 1000 || rep.Replayed != 900 || rep.Unchanged != 600 || rep.AllowToDeny != 300 || rep.DenyToAllow != 0 ||
		rep.Skipped[SkipRuntime] != 100 {
		t.Fatalf("report %+v", rep)
	}
	if len(rep.Groups) != 1 {
		t.Fatalf("%d groups: %+v", len(rep.Groups), rep.Groups)
	}
	g := rep.Groups[0]
	if g.Direction != DirAllowToDeny || g.Count != 300 || g.Source != reviews || g.Destination != catalog || g.Route != "catalog-api" ||
		g.Reason != string(policies.ReasonDeniedNoMatch) || len(g.Examples) != 2 || !g.Examples[0].Time.Equal(t0.Add(5*time.Second)) ||
		!strings.Contains(g.Examples[0].Recorded, "allowed_by_policy AuthorizationPolicy/bookstore/catalog") {
		t.Errorf("group %+v", g)
	}
	// The same log replayed under the policy it was decided with changes
	// nothing: the recorded attributes rebuild the decision faithfully.
	same, err := New(bundle(t, recordedPolicy), Options{})
	if err != nil {
		t.Fatal(err)
	}
	rep2 := same.NewReport()
	if err := same.ReplayJSONL(bytes.NewReader(jsonl(t, log)), Window{}, 2, rep2); err != nil {
		t.Fatal(err)
	}
	if rep2.Replayed != 900 || rep2.Unchanged != 900 {
		t.Errorf("replay under the recorded policy: %+v", rep2)
	}
	// A window selects by time.
	rep3 := r.NewReport()
	if err := r.ReplayJSONL(bytes.NewReader(jsonl(t, log)), Window{Since: t0.Add(500 * time.Second), Until: t0.Add(600 * time.Second)}, 1, rep3); err != nil {
		t.Fatal(err)
	}
	if rep3.Total != 100 || rep3.AllowToDeny != 30 {
		t.Errorf("window: %+v", rep3)
	}
}

// TestNotReplayable: what the candidate cannot decide is counted, by reason.
func TestNotReplayable(t *testing.T) {
	candidate := stricterPolicy + `---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-debug, namespace: bookstore}
spec:
  selector: {matchLabels: {app: catalog}}
  action: DENY
  rules:
  - when: [{key: "request.headers[x-debug]", values: ["1"]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: claims, namespace: bookstore}
spec:
  selector: {matchLabels: {app: other}}
  rules:
  - when: [{key: "request.auth.claims[group]", values: ["admins"]}]
`
	r, err := New(bundle(t, candidate), Options{})
	if err != nil {
		t.Fatal(err)
	}
	ok := rec(1, frontend, "/api/books", nil)
	ok.Allowed, ok.Reason = true, "allowed_by_policy"
	withJWT := ok
	withJWT.JWT = &wire.DecisionJWT{Subject: frontend, Audiences: []string{"a"}}
	identity := ok
	identity.Allowed, identity.Reason = false, string(policies.ReasonDeniedIdentity)
	badID := ok
	badID.Source, badID.Peer = "spiffe://bad id", "spiffe://bad id"
	noReq := ok
	noReq.Method, noReq.Path = "", ""
	rep := r.NewReport()
	for _, d := range []wire.Decision{ok, withJWT, identity, badID, noReq} {
		r.Replay(&d, rep)
	}
	// Every request to catalog reads x-debug, which was not recorded.
	want := map[string]int{SkipHeader: 1, SkipClaims: 1, SkipNotPolicy: 1, SkipUnreadable: 1, SkipNoRequest: 1}
	for k, v := range want {
		if rep.Skipped[k] != v {
			t.Errorf("skipped %s: %d, want %d (%v)", k, rep.Skipped[k], v, rep.Skipped)
		}
	}
	if rep.SkippedHeaders["x-debug"] != 1 || rep.Replayed != 0 {
		t.Errorf("report %+v", rep)
	}
	// With x-debug recorded (absent), the request replays.
	ok.HeaderNames = []string{"x-tenant", "x-debug"}
	rep = r.NewReport()
	r.Replay(&ok, rep)
	if rep.Replayed != 1 || rep.Unchanged != 1 {
		t.Errorf("recorded header: %+v", rep)
	}
}

// BenchmarkReplayJSONL is the replay rate of decision-log lines.
func BenchmarkReplayJSONL(b *testing.B) {
	data := jsonl(b, recordedLog(b, 100_000))
	r, err := New(bundle(b, stricterPolicy), Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for b.Loop() {
		rep := r.NewReport()
		if err := r.ReplayJSONL(bytes.NewReader(data), Window{}, 0, rep); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)*100_000/b.Elapsed().Seconds(), "records/s")
}
