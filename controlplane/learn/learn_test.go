package learn

import (
	"strings"
	"testing"
	"time"

	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/wire"
)

func TestObserveAndDraft(t *testing.T) {
	l := New(3, func() time.Time { return time.Unix(100, 0) })
	l.Observe([]wire.Event{
		{Kind: wire.EventEdge, Source: "spiffe://td/ns/shop/sa/web", Destination: "orders.shop.svc.cluster.local", Route: "orders-list", Method: "get"},
		{Kind: wire.EventEdge, Source: "spiffe://td/ns/shop/sa/web", Destination: "orders.shop.svc.cluster.local", Route: "orders-create", Method: "POST", Count: 5},
		{Kind: wire.EventEdge, Source: "spiffe://td/ns/shop/sa/cron", Destination: "orders.shop.svc.cluster.local"},
		{Kind: wire.EventEdge, Source: "not-an-id", Destination: "orders"},
		{Kind: wire.EventEdge, Source: "spiffe://td/x", Destination: "bad dest\n"},
		{Kind: wire.EventEdge, Source: "spiffe://td/ns/a/sa/b", Destination: "payments"},
		{Kind: wire.EventEdge, Source: "spiffe://td/ns/a/sa/c", Destination: "payments"}, // over the 3-edge bound
		{Kind: wire.EventAnomaly, Source: "spiffe://td/ns/a/sa/d", Destination: "payments"},
	})
	edges := l.Edges()
	if len(edges) != 3 || l.Dropped() != 3 {
		t.Fatalf("edges %d dropped %d", len(edges), l.Dropped())
	}
	if edges[1].Count != 6 || strings.Join(edges[1].Methods, ",") != "GET,POST" || strings.Join(edges[1].Routes, ",") != "orders-create,orders-list" {
		t.Fatalf("edge %+v", edges[1])
	}
	d, err := MakeDraft(edges, DraftOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(d.AuthorizationPolicies) != 2 {
		t.Fatalf("policies %d", len(d.AuthorizationPolicies))
	}
	orders := d.AuthorizationPolicies[0]
	if orders.Metadata.Namespace != "shop" || orders.Spec.Selector.MatchLabels["app"] != "orders" || len(orders.Spec.Rules) != 2 {
		t.Fatalf("orders policy %+v", orders)
	}
	if orders.Spec.Rules[0].From[0].Source.Principals[0] != "td/ns/shop/sa/cron" || len(orders.Spec.Rules[0].To) != 0 {
		t.Fatalf("cron rule %+v", orders.Spec.Rules[0])
	}
	if pay := d.AuthorizationPolicies[1]; pay.Metadata.Namespace != "default" {
		t.Fatalf("payments namespace %q", pay.Metadata.Namespace)
	}
	if d.Baseline.Spec.Mode != policies.BaselineShadow || len(d.Baseline.Spec.Edges) != 3 {
		t.Fatalf("baseline %+v", d.Baseline.Spec)
	}
}
