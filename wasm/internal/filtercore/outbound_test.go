package filtercore

import (
	"encoding/binary"
	"encoding/json"
	"strings"
	"testing"

	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/wire"
	"github.com/meshguard/meshguard/wasm/internal/scenario"
)

// outboundConfig is the scenario configuration on the outbound side,
// changed by mod.
func outboundConfig(t *testing.T, o scenario.Options, mod func(*wire.FilterConfig)) []byte {
	t.Helper()
	var fc wire.FilterConfig
	if err := json.Unmarshal(scenario.Config(t, o), &fc); err != nil {
		t.Fatal(err)
	}
	fc.Direction = wire.DirectionOutbound
	if mod != nil {
		mod(&fc)
	}
	data, err := json.Marshal(fc)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func outbound(cluster string) scenario.Request {
	return scenario.Request{Direction: scenario.ListenerOutbound, SourceAddr: "127.0.0.1:51000", DestAddr: "10.96.0.40:80",
		Route: "outbound", Cluster: cluster, Method: "GET", Path: "/", Authority: "upstream.local"}
}

func TestOutboundIdentity(t *testing.T) {
	noID := func(fc *wire.FilterConfig) { fc.Workload.ID = "" }
	for _, tc := range []struct {
		name   string
		mod    func(*wire.FilterConfig)
		props  map[string][]byte
		allows bool
		log    string
	}{
		{name: "the configuration's", allows: true},
		{name: "the node's, in the bundle's trust domain", mod: noID, allows: true,
			props: map[string][]byte{"node.metadata.NAMESPACE": []byte("shop"), "node.metadata.SERVICE_ACCOUNT": []byte("orders")}},
		{name: "none", mod: noID, log: "no workload.id and no NAMESPACE and SERVICE_ACCOUNT"},
		{name: "the node's is no SPIFFE ID", mod: noID, log: "is not a SPIFFE ID",
			props: map[string][]byte{"node.metadata.NAMESPACE": []byte("shop"), "node.metadata.SERVICE_ACCOUNT": []byte("a/b")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newFakeHost()
			h.props = tc.props
			p := NewVM(h).NewPlugin()
			if err := p.Configure(outboundConfig(t, scenario.Options{}, tc.mod)); err != nil {
				t.Fatal(err)
			}
			s := streamFor(outbound("outbound|payments"))
			var st StreamState
			forwarded := p.OnRequestHeaders(s, &st)
			if forwarded != tc.allows {
				t.Fatalf("forwarded = %v, local %+v", forwarded, s.local)
			}
			if tc.allows {
				if p.cfg.self.String() != scenario.Workload {
					t.Fatalf("self %s", p.cfg.self)
				}
				return
			}
			if r, _ := scenario.Header(s.local.Headers, wire.HeaderReason); r != string(policies.ReasonDeniedIdentity) {
				t.Fatalf("reason %q", r)
			}
			if !strings.Contains(strings.Join(h.logs, "\n"), tc.log) {
				t.Fatalf("logs %q lack %q", h.logs, tc.log)
			}
		})
	}
}

func TestOutboundConfigErrors(t *testing.T) {
	for name, mod := range map[string]func(*wire.FilterConfig){
		"unknown direction": func(fc *wire.FilterConfig) { fc.Direction = "sideways" },
		"upstream without a service": func(fc *wire.FilterConfig) {
			fc.Workload.Upstreams = map[string]string{"outbound|x": ""}
		},
		"upstream service with a slash": func(fc *wire.FilterConfig) {
			fc.Workload.Upstreams = map[string]string{"outbound|x": "a/b"}
		},
	} {
		if _, err := ParseConfig(outboundConfig(t, scenario.Options{}, mod), Node{}); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestDestinationOfACluster(t *testing.T) {
	for name, want := range map[string]string{
		"outbound|9080||reviews.default.svc.cluster.local":    "reviews.default",
		"outbound|9080|v2|reviews.default.svc.cluster.local.": "reviews.default",
		"outbound|443||api.stripe.com":                        "api.stripe.com",
		"outbound|443||kubernetes.default.svc":                "kubernetes.default",
		"outbound|80||svc-x.shop.svcs.example":                "svc-x.shop.svcs.example",
		"PassthroughCluster":                                  "",
		"BlackHoleCluster":                                    "",
		"inbound|8080||":                                      "",
		"outbound|orders":                                     "",
	} {
		if got := istioClusterService(name); got != want {
			t.Errorf("istioClusterService(%q) = %q, want %q", name, got, want)
		}
	}
	// The configuration's names first, then Istio's, then the address.
	h := newFakeHost()
	p := NewVM(h).NewPlugin()
	if err := p.Configure(outboundConfig(t, scenario.Options{}, nil)); err != nil {
		t.Fatal(err)
	}
	for cluster, want := range map[string]string{
		"outbound|payments": "payments.payments",
		"outbound|80||ledger.payments.svc.cluster.local": "ledger.payments",
		"PassthroughCluster":                             "10.96.0.40",
		"":                                               "10.96.0.40",
	} {
		s := streamFor(outbound(cluster))
		var st StreamState
		p.OnRequestHeaders(s, &st)
		if st.dest != want {
			t.Errorf("cluster %q: destination %q, want %q", cluster, st.dest, want)
		}
	}
}

// TestOutboundQuarantineResponse: a quarantine response on the outbound
// side blocks the workload's own requests on every worker VM and asks the
// control plane to quarantine it; its inbound side is not the one blocked
// for other callers.
func TestOutboundQuarantineResponse(t *testing.T) {
	h := newFakeHost()
	cfg := outboundConfig(t, scenario.Options{EgressResponse: "quarantine"}, func(fc *wire.FilterConfig) { fc.Direction = wire.DirectionListener })
	vm1, vm2 := NewVM(h), NewVM(h)
	p1, p2 := vm1.NewPlugin(), vm2.NewPlugin()
	for _, p := range []*Plugin{p1, p2} {
		if err := p.Configure(cfg); err != nil {
			t.Fatal(err)
		}
	}
	do := func(p *Plugin, r scenario.Request) *fakeStream {
		s := streamFor(r)
		var st StreamState
		p.OnRequestHeaders(s, &st)
		return s
	}
	if s := do(p1, outbound("outbound|443||kubernetes.default.svc.cluster.local")); s.local == nil || s.local.Status != 403 {
		t.Fatal("egress to the Kubernetes API not blocked")
	}
	p1.OnTick()
	var b wire.EventBatch
	if len(h.calls) != 1 || json.Unmarshal(h.calls[0].body, &b) != nil {
		t.Fatalf("event callouts %+v", h.calls)
	}
	var found bool
	for _, e := range b.Events {
		found = found || (e.Kind == wire.EventAnomaly && e.Detector == "egress" && e.Response == "quarantine" &&
			e.Source == scenario.Workload && e.Destination == "kubernetes.default")
	}
	if !found || b.Reporter != scenario.Workload {
		t.Fatalf("no quarantine report of the workload by itself: %+v", b)
	}
	p2.OnTick()
	s := do(p2, outbound("outbound|payments"))
	if s.local == nil || s.local.Status != 403 {
		t.Fatal("the other worker let the workload's own request out")
	}
	if r, _ := scenario.Header(s.local.Headers, wire.HeaderReason); r != string(policies.ReasonDeniedAnomaly) {
		t.Fatalf("reason %q", r)
	}
	// Callers of the workload are not blocked by its own quarantine response.
	in := scenario.Request{Direction: scenario.ListenerInbound, Source: scenario.Web, SourceAddr: "10.0.0.7:1", DestAddr: "10.0.0.9:8080",
		Route: "orders-api", Method: "GET", Path: "/api/orders/1", Authority: "orders"}
	if s := do(p2, in); s.local != nil {
		t.Fatalf("a caller of the workload denied: %+v", s.local)
	}
	p2.OnTick()
	for name, want := range map[string]uint64{
		mOutRequests: 2, mDecisions + ".reason.denied_anomaly": 2, mDecisions + ".reason.allowed_by_policy": 1,
	} {
		if h.counters[name] != want {
			t.Errorf("%s = %d, want %d", name, h.counters[name], want)
		}
	}
}

// TestListenerDirectionReadOncePerConnection: with direction "listener"
// the direction is a connection's, read with its other properties.
func TestListenerDirectionReadOncePerConnection(t *testing.T) {
	h := newFakeHost()
	p := NewVM(h).NewPlugin()
	if err := p.Configure(outboundConfig(t, scenario.Options{}, func(fc *wire.FilterConfig) { fc.Direction = wire.DirectionListener })); err != nil {
		t.Fatal(err)
	}
	s := streamFor(outbound("outbound|payments"))
	s.props["connection.id"] = binary.LittleEndian.AppendUint64(nil, 7)
	var st StreamState
	if !p.OnRequestHeaders(s, &st) || !st.outbound {
		t.Fatalf("outbound request not let through: %+v", s.local)
	}
	// The same connection: its direction is known, not read again.
	delete(s.props, "listener_direction")
	st = StreamState{}
	if !p.OnRequestHeaders(s, &st) || !st.outbound {
		t.Fatalf("second request of the connection: %+v", s.local)
	}
	s = streamFor(outbound("outbound|payments"))
	delete(s.props, "listener_direction")
	s.props["connection.id"] = binary.LittleEndian.AppendUint64(nil, 8)
	if p.OnRequestHeaders(s, &StreamState{}) {
		t.Fatal("a connection without a direction let through")
	}
	if !strings.Contains(strings.Join(h.logs, "\n"), "no traffic_direction") {
		t.Fatalf("not logged: %q", h.logs)
	}
}

// TestKeepLatest: the shared blocklist, over its bound, keeps the blocks
// that expire last.
func TestKeepLatest(t *testing.T) {
	var list []block
	for i := 0; i < 2*maxSharedBlocks; i++ {
		list = append(list, block{key: uint64(i + 1), until: int64((i * 7919) % (2 * maxSharedBlocks))})
	}
	kept := keepLatest(list, maxSharedBlocks)
	if len(kept) != maxSharedBlocks {
		t.Fatalf("%d kept", len(kept))
	}
	for _, b := range kept {
		if b.until < maxSharedBlocks {
			t.Fatalf("kept a block expiring at %d, earlier than %d dropped ones", b.until, maxSharedBlocks)
		}
	}
	if got := keepLatest([]block{{1, 5}}, maxSharedBlocks); len(got) != 1 {
		t.Fatalf("a short list changed: %v", got)
	}
}

// TestOutboundIdentityOfAFetchedBundle: a configuration that fetches its
// bundle (Istio's WasmPlugin) learns the workload's identity from its node
// in the trust domain of the bundle it fetches.
func TestOutboundIdentityOfAFetchedBundle(t *testing.T) {
	data := outboundConfig(t, scenario.Options{}, func(fc *wire.FilterConfig) {
		fc.Workload.ID = ""
		fc.Bundle = nil
		fc.BundleFetch = &wire.BundleFetch{}
	})
	cfg, err := ParseConfig(data, Node{Namespace: "shop", ServiceAccount: "orders"})
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.self.IsZero() || cfg.snap != nil {
		t.Fatalf("an identity before the bundle: %v", cfg.self)
	}
	b, _, err := policies.NewBundle("v1", scenario.Set(scenario.Options{}))
	if err != nil {
		t.Fatal(err)
	}
	next, err := cfg.withBundle(b)
	if err != nil {
		t.Fatal(err)
	}
	if next.self.String() != scenario.Workload || next.selfReason != "" || next.detectOut == nil {
		t.Fatalf("self %v (%s), outbound detection %v", next.self, next.selfReason, next.detectOut != nil)
	}
}
