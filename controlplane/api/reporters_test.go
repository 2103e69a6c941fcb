package api

import (
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshguard/meshguard/policies/wire"
)

var (
	orders  = spiffeid.RequireFromString("spiffe://example.org/ns/shop/sa/orders")
	sidecar = spiffeid.RequireFromString("spiffe://example.org/ns/shop/sa/web")
	gateway = spiffeid.RequireFromString("spiffe://example.org/gateway")
)

func testReporters(t testing.TB) *Reporters {
	r, err := NewReporters([]ReportingWorkload{{ID: orders, Namespace: "shop", Service: "orders"}},
		[]string{"spiffe://example.org/ns/shop/sa/*", "spiffe://example.org/gateway"})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestReporterScope(t *testing.T) {
	r := testReporters(t)
	const attacker = "spiffe://example.org/ns/shop/sa/attacker"
	tests := []struct {
		name     string
		reporter spiffeid.ID
		ev       wire.Event
		want     bool
	}{
		{"inbound anomaly, no destination", orders, wire.Event{Source: attacker}, true},
		{"edge into its service", orders, wire.Event{Source: attacker, Destination: "orders"}, true},
		{"edge into its service, qualified", orders, wire.Event{Source: attacker, Destination: "orders.shop.svc.cluster.local:8080"}, true},
		{"edge into another service", orders, wire.Event{Source: attacker, Destination: "payments.shop"}, false},
		{"edge into its service name in another namespace", orders, wire.Event{Source: attacker, Destination: "orders.bank"}, false},
		{"its own outbound call", orders, wire.Event{Source: orders.String(), Destination: "payments.bank"}, true},
		{"an IP destination", orders, wire.Event{Source: attacker, Destination: "10.0.0.7:8080"}, false},
		{"pattern reporter, its namespace", sidecar, wire.Event{Source: attacker, Destination: "catalog.shop.svc"}, true},
		{"pattern reporter, bare service", sidecar, wire.Event{Source: attacker, Destination: "catalog"}, true},
		{"pattern reporter, another namespace", sidecar, wire.Event{Source: attacker, Destination: "ledger.bank.svc.cluster.local"}, false},
		{"pattern reporter without a namespace", gateway, wire.Event{Source: attacker, Destination: "catalog.shop"}, false},
		{"pattern reporter without a namespace, no destination", gateway, wire.Event{Source: attacker}, true},
		{"malformed destination", sidecar, wire.Event{Source: attacker, Destination: "catalog..shop"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sc, ok := r.scopeOf(tt.reporter)
			if !ok {
				t.Fatalf("%s is not a reporter", tt.reporter)
			}
			if got := sc.allows(&tt.ev); got != tt.want {
				t.Fatalf("allows = %v, want %v", got, tt.want)
			}
		})
	}
	for _, id := range []string{"spiffe://example.org/ns/bank/sa/ledger", "spiffe://evil.org/ns/shop/sa/web", "spiffe://example.org/ns/shop/sa/web/extra"} {
		if _, ok := r.scopeOf(spiffeid.RequireFromString(id)); ok {
			t.Errorf("%s accepted as a reporter", id)
		}
	}
	var none *Reporters
	if _, ok := none.scopeOf(orders); ok || !none.Empty() {
		t.Error("no reporters accepted a reporter")
	}
}

func TestNewReportersErrors(t *testing.T) {
	_, err := NewReporters([]ReportingWorkload{{ID: orders}}, []string{"not-a-pattern", "spiffe://example.org/a/**/b"})
	if err == nil || strings.Count(err.Error(), "\n") != 2 {
		t.Fatalf("every problem reported: %v", err)
	}
}

// FuzzReporterScope: whatever the reporter and the event, a mesh workload
// is allowed only events about its own calls, destination-less anomalies
// or its own service, and a pattern reporter only its own namespace.
func FuzzReporterScope(f *testing.F) {
	f.Add("/ns/shop/sa/orders", "spiffe://example.org/ns/shop/sa/x", "orders.shop.svc.cluster.local")
	f.Add("/ns/shop/sa/web", "spiffe://example.org/ns/shop/sa/x", "catalog.bank:80")
	f.Add("/gateway", "", "a.b.svc")
	f.Add("/ns/shop/sa/web", "spiffe://example.org/ns/shop/sa/web", "x..y")
	r := testReporters(f)
	f.Fuzz(func(t *testing.T, path, source, dest string) {
		id, err := spiffeid.FromPath(spiffeid.RequireTrustDomainFromString("example.org"), path)
		if err != nil {
			return
		}
		sc, ok := r.scopeOf(id)
		if !ok {
			return
		}
		ev := wire.Event{Source: source, Destination: dest}
		if !sc.allows(&ev) || source == id.String() || dest == "" {
			return
		}
		svc, ns, parsed := splitDestination(dest)
		if !parsed {
			t.Fatalf("%s allowed an unparsable destination %q", id, dest)
		}
		if id == orders {
			if svc != "orders" || (ns != "" && ns != "shop") {
				t.Fatalf("orders allowed %q", dest)
			}
			return
		}
		if want := namespaceOfID(id); want == "" || (ns != "" && ns != want) {
			t.Fatalf("%s allowed %q", id, dest)
		}
	})
}
