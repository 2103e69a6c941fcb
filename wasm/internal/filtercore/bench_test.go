package filtercore

import (
	"net/netip"
	"testing"

	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/wire"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshguard/meshguard/wasm/internal/scenario"
)

// benchStream is a plugin configured with o, the fake host it runs on, and
// the stream of r on a long-lived connection (conn), as in a mesh.
func benchStream(b *testing.B, o scenario.Options, r scenario.Request, conn byte) (*fakeHost, *Plugin, *fakeStream) {
	b.Helper()
	h := newFakeHost()
	p := NewVM(h).NewPlugin()
	if err := p.Configure(scenario.Config(b, o)); err != nil {
		b.Fatal(err)
	}
	r.Headers = [][2]string{{"user-agent", "shop-web/1.4"}, {"accept", "application/json"}, {"x-request-id", "0b5e2f7c"}}
	s := streamFor(r)
	s.props["connection.id"] = []byte{conn, 0, 0, 0, 0, 0, 0, 0}
	return h, p, s
}

// benchRequests sends s's request b.N times, each a millisecond after the
// last, and fails unless ok says the outcome is the expected one; a
// forwarded request gets a 200 response.
func benchRequests(b *testing.B, h *fakeHost, p *Plugin, s *fakeStream, ok func(forwarded bool, st *StreamState) bool) {
	b.Helper()
	req := s.req
	var st StreamState // one state, reset per request: escaping to ok costs no allocation per request
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s.req = req
		h.now += 1e6
		st = StreamState{}
		forwarded := p.OnRequestHeaders(s, &st)
		if !ok(forwarded, &st) {
			b.Fatalf("unexpected outcome: forwarded=%v, local reply %+v", forwarded, s.local)
		}
		if forwarded {
			s.resp = [][2]string{{":status", "200"}}
			p.OnResponseHeaders(s, &st)
		}
	}
}

// BenchmarkAllowedRequest is the allow path with the fake host: the Go cost
// of the filter's own logic, without any proxy-wasm boundary.
func BenchmarkAllowedRequest(b *testing.B) {
	h, p, s := benchStream(b, scenario.Options{}, scenario.Request{Source: scenario.Web, SourceAddr: "10.0.0.7:4000", DestAddr: "10.0.0.9:8080",
		Route: "orders-api", Method: "GET", Path: "/api/orders/17?expand=items", Authority: "orders.shop.svc.cluster.local:8080"}, 7)
	benchRequests(b, h, p, s, func(forwarded bool, _ *StreamState) bool { return forwarded })
}

// BenchmarkDeniedRequest is the deny path with the fake host: the decision,
// the deny body's JSON (policies/internal/strictjson) and the local reply.
func BenchmarkDeniedRequest(b *testing.B) {
	h, p, s := benchStream(b, scenario.Options{}, scenario.Request{Source: scenario.Web, SourceAddr: "10.0.0.7:4000", DestAddr: "10.0.0.9:8080",
		Route: "orders-admin", Method: "GET", Path: "/admin/users", Authority: "orders.shop.svc.cluster.local:8080"}, 8)
	benchRequests(b, h, p, s, func(forwarded bool, _ *StreamState) bool { return !forwarded })
}

// BenchmarkOutboundRequest is the outbound side's path with the fake host:
// the workload's own request, let out, with the configuration the control
// plane writes (direction "listener", a listed upstream cluster).
func BenchmarkOutboundRequest(b *testing.B) {
	h, p, s := benchStream(b, scenario.Options{Direction: wire.DirectionListener}, scenario.Request{Direction: scenario.ListenerOutbound,
		SourceAddr: "127.0.0.1:51000", DestAddr: "127.0.0.1:9001", Route: "outbound", Cluster: "outbound|orders",
		Method: "POST", Path: "/api/orders/17", Authority: "orders"}, 9)
	benchRequests(b, h, p, s, func(forwarded bool, st *StreamState) bool { return forwarded && st.outbound })
}

// BenchmarkDecide is the policy engine's share of the allow path.
func BenchmarkDecide(b *testing.B) {
	cfg, err := ParseConfig(scenario.Config(b, scenario.Options{}), Node{})
	if err != nil {
		b.Fatal(err)
	}
	id := spiffeid.RequireFromString(scenario.Web)
	hv := &headerView{h: [][2]string{{"user-agent", "x"}}}
	a := policies.Attributes{Peer: id, MTLS: true, SourceIP: netip.MustParseAddr("10.0.0.7"), DestinationIP: netip.MustParseAddr("10.0.0.9"),
		DestinationPort: 8080, Target: cfg.target, Method: "GET", Host: "orders.shop.svc.cluster.local:8080",
		Path: "/api/orders/17?expand=items", Route: "orders-api", Headers: hv}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if d := cfg.snap.Decide(&a); !d.Allowed {
			b.Fatal(d.Reason)
		}
	}
}

// BenchmarkFakeStreamOnly is the fake host's own share of
// BenchmarkAllowedRequest, to subtract.
func BenchmarkFakeStreamOnly(b *testing.B) {
	r := scenario.Request{Source: scenario.Web, SourceAddr: "10.0.0.7:4000", DestAddr: "10.0.0.9:8080", Route: "orders-api",
		Method: "GET", Path: "/api/orders/17?expand=items", Authority: "orders.shop.svc.cluster.local:8080",
		Headers: [][2]string{{"user-agent", "shop-web/1.4"}, {"accept", "application/json"}, {"x-request-id", "0b5e2f7c"}}}
	s := streamFor(r)
	req := s.req
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		s.req = req
		h, _ := s.RequestHeaders()
		for _, p := range []Prop{PropConnID, PropURISANPeer, PropSourceAddr, PropDestAddr, PropSNI, PropRouteName} {
			s.Property(p)
		}
		_ = h
		s.AddRequestHeader("a", "b")
		s.AddRequestHeader("c", "d")
		s.AddRequestHeader("e", "f")
		s.resp = [][2]string{{":status", "200"}}
		s.ResponseHeader(":status")
	}
}

// BenchmarkParseConfig is the filter's configuration load (what a VM does on
// every ECDS push): decode the plugin configuration, decode and verify the
// bundle, compile it, and compile the detection settings.
func BenchmarkParseConfig(b *testing.B) {
	data := scenario.Config(b, scenario.Options{})
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := ParseConfig(data, Node{}); err != nil {
			b.Fatal(err)
		}
	}
}
