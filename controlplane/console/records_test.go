package console

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshguard/meshguard/controlplane/quarantine"
	"github.com/meshguard/meshguard/policies/wire"
)

// postDecisions ships decisions as an authz server would, through the
// decisions endpoint.
func (p *plane) postDecisions(ds ...wire.Decision) {
	p.t.Helper()
	body, err := json.Marshal(wire.DecisionBatch{Reporter: "spiffe://cluster.local/ns/meshguard/sa/authz", Decisions: ds})
	if err != nil {
		p.t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodPost, p.url+wire.DecisionsPath, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := p.client(spiffeid.ID{}).Do(req)
	if err != nil {
		p.t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		p.t.Fatalf("decisions: %d", resp.StatusCode)
	}
}

// TestTimelineAndAuthzDenials: with the record store wired as the
// controlplane command wires it, the identity page shows the store's
// incident timeline of the identity, newest first — the quarantine, the
// detection, the filter's denials with their count, a denial an authz
// server shipped — and the denials authz servers ship reach the graph and
// the feed (a request the filter let through), while their allows do not.
func TestTimelineAndAuthzDenials(t *testing.T) {
	p := newPlane(t, planeOptions{records: true})
	catalog, reviews, orders := idOf("/ns/bookstore/sa/catalog"), idOf("/ns/bookstore/sa/reviews"), idOf("/ns/bookstore/sa/orders")
	now := time.Now()
	filterDeny := decision(reviews, "catalog-api", "deny", "denied_no_allow_match", 6)
	filterDeny.UnixMillis = now.Add(-10 * time.Millisecond).UnixMilli()
	p.post(catalog, filterDeny,
		wire.Event{Kind: wire.EventAnomaly, Source: reviews.String(), Route: "catalog-api", Detector: "enumeration", Response: "block",
			Detail: "distinct_paths", UnixMillis: now.UnixMilli()})
	authz := func(allowed bool, reason, path string, at time.Time) wire.Decision {
		return wire.Decision{Time: at, DecisionID: "d-" + path, Protocol: "grpc", Source: reviews.String(), SourceMethod: "principal",
			Peer: reviews.String(), MTLS: true, Destination: orders.String(), TargetNamespace: "bookstore", Method: "POST", Path: path,
			Route: "orders-api", Allowed: allowed, Reason: reason, Policy: "AuthorizationPolicy/bookstore/orders", Rule: "0"}
	}
	p.postDecisions(authz(false, "denied_by_policy", "/orders/1", now.Add(-3*time.Millisecond)),
		authz(false, "denied_by_policy", "/orders/2", now.Add(-2*time.Millisecond)),
		authz(true, "allowed_by_policy", "/orders/3", now.Add(-time.Millisecond)))
	if _, err := p.qm.Add(context.Background(), quarantine.AddRequest{Identity: reviews.String(), Reason: "scanning", By: operatorID.String()}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.records.Sync(ctx); err != nil {
		t.Fatal(err)
	}

	resp, body := p.do(p.client(spiffeid.ID{}), call{method: "GET", path: "/console/api/identity?id=" + reviews.String(), header: bearer(testViewerToken)})
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("identity page: %d %s", resp.StatusCode, body)
	}
	var page IdentityPage
	if err := json.Unmarshal(body, &page); err != nil {
		t.Fatal(err)
	}
	if !page.Timeline.Available || page.Timeline.Error != "" {
		t.Fatalf("timeline %+v", page.Timeline)
	}
	var lines []string
	for _, e := range page.Timeline.Entries {
		l := e.Kind + ":" + e.Action
		switch {
		case e.Count > 1:
			l += ":" + strings.TrimPrefix(e.Destination, "spiffe://cluster.local") + ":x" + itoa(e.Count)
		case e.Kind == "decision":
			l += ":" + strings.TrimPrefix(e.Destination, "spiffe://cluster.local") + ":" + e.Path
		}
		lines = append(lines, l)
	}
	want := []string{"quarantine:add", "detection:block", "decision:allow:/ns/bookstore/sa/orders:/orders/3",
		"decision:deny:/ns/bookstore/sa/orders:/orders/2", "decision:deny:/ns/bookstore/sa/orders:/orders/1",
		"decision:deny:/ns/bookstore/sa/catalog:x6"}
	if strings.Join(lines, " ") != strings.Join(want, " ") {
		t.Errorf("timeline, newest first:\n got %v\nwant %v", lines, want)
	}

	// The graph: the filter's denials on reviews → catalog, the authz
	// server's on reviews → orders (two denials, not its allow).
	resp, body = p.do(p.client(spiffeid.ID{}), call{method: "GET", path: "/console/api/graph", header: bearer(testViewerToken)})
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("graph: %d", resp.StatusCode)
	}
	var snap Snapshot
	if err := json.Unmarshal(body, &snap); err != nil {
		t.Fatal(err)
	}
	var authzEdge *EdgeView
	for i, e := range snap.Edges {
		if e.Source == reviews.String() && e.Target == orders.String() {
			authzEdge = &snap.Edges[i]
		}
	}
	if authzEdge == nil || authzEdge.Totals != [4]uint64{0, 2, 0, 0} {
		t.Errorf("authz edge %+v", authzEdge)
	}
	found := false
	for _, f := range snap.Feed {
		if f.Kind == KindDeny && f.Destination == orders.String() {
			found = f.Count == 2 && f.Reason == "denied_by_policy" && f.Policy == "AuthorizationPolicy/bookstore/orders" && f.Detail == "ext_authz"
		}
	}
	if !found {
		t.Errorf("no feed entry of the authz denials: %+v", snap.Feed)
	}
}

func itoa(n uint64) string {
	b, _ := json.Marshal(n)
	return string(b)
}
