package filtercore

import (
	"testing"

	"github.com/meshguard/meshguard/wasm/internal/scenario"
)

// BenchmarkAllowedRequest is the allow path with the fake host: the Go cost
// of the filter's own logic, without any proxy-wasm boundary.
func BenchmarkAllowedRequest(b *testing.B) {
	h := newFakeHost()
	vm := NewVM(h)
	p := vm.NewPlugin()
	if err := p.Configure(scenario.Config(b, scenario.Options{})); err != nil {
		b.Fatal(err)
	}
	r := scenario.Request{Source: scenario.Web, SourceAddr: "10.0.0.7:4000", DestAddr: "10.0.0.9:8080", Route: "orders-api",
		Method: "GET", Path: "/api/orders/17?expand=items", Authority: "orders.shop.svc.cluster.local:8080",
		Headers: [][2]string{{"user-agent", "shop-web/1.4"}, {"accept", "application/json"}, {"x-request-id", "0b5e2f7c"}}}
	s := streamFor(r)
	req := s.req
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s.req = req
		h.now += 1e6
		var st StreamState
		if !p.OnRequestHeaders(s, &st) {
			b.Fatal("denied")
		}
		s.resp = [][2]string{{":status", "200"}}
		p.OnResponseHeaders(s, &st)
	}
}
