package xdsserver

import (
	"context"
	"errors"
	"google.golang.org/protobuf/types/known/anypb"
	"net"
	"sync"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	adsclient "github.com/envoyproxy/go-control-plane/pkg/client/sotw/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshguard/meshguard/controlplane/mesh"
	"github.com/meshguard/meshguard/controlplane/store"
	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/wire"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const testMesh = `
apiVersion: meshguard.dev/v1alpha1
kind: Mesh
metadata: {name: t}
spec:
  trustDomain: example.org
  authz: {address: 127.0.0.1, port: 9191, spiffeID: spiffe://example.org/ns/meshguard/sa/authz}
  controlPlane: {address: 127.0.0.1, port: 8443, spiffeID: spiffe://example.org/ns/meshguard/sa/cp}
  wasm: {file: /etc/meshguard/meshguard.wasm}
  workloads:
  - name: web
    namespace: shop
    spiffeID: spiffe://example.org/ns/shop/sa/web
    inbound: [{name: http, port: 15006, appPort: 8080, routes: [{name: web-root, prefix: /}]}]
`

type harness struct {
	store *store.Store
	srv   *Server
	reg   *prometheus.Registry
	conn  *grpc.ClientConn
}

func newHarness(t *testing.T, tune ...func(*Options)) *harness {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	m, err := mesh.Parse([]byte(testMesh))
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewPedanticRegistry()
	opts := Options{Mesh: m, Registerer: reg}
	for _, f := range tune {
		f(&opts)
	}
	srv, err := New(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.New(store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	unsub := st.Subscribe(func(b *policies.Bundle) { _ = srv.Publish(b) })
	g := grpc.NewServer()
	srv.Register(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = g.Serve(lis) }()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = conn.Close()
		cancel()
		g.Stop()
		<-done
		unsub()
	})
	return &harness{store: st, srv: srv, reg: reg, conn: conn}
}

func quarantine(id string) policies.Set {
	return policies.Set{Quarantines: []policies.Quarantine{{
		APIVersion: policies.APIVersionMeshguard, Kind: policies.KindQuarantine,
		Metadata: policies.ObjectMeta{Name: "q", Namespace: "istio-system"},
		Spec:     policies.QuarantineSpec{Identity: id},
	}}}
}

// subscriber is what an authz server does: take the bundle resource, decode
// it strictly, ACK it and keep it, or NACK it and keep the last good one.
type subscriber struct {
	mu      sync.Mutex
	good    *policies.Bundle
	seen    map[string]time.Time // good version → when it arrived
	nacked  int
	updates chan struct{}
}

func runSubscriber(t *testing.T, ctx context.Context, conn *grpc.ClientConn, nodeID string) *subscriber {
	t.Helper()
	sub := &subscriber{seen: map[string]time.Time{}, updates: make(chan struct{}, 64)}
	ctx, cancel := context.WithCancel(ctx)
	c := adsclient.NewADSClient(ctx, &core.Node{Id: nodeID}, resource.ExtensionConfigType)
	if err := c.InitConnect(conn); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		for {
			resp, err := c.Fetch()
			if err != nil {
				return
			}
			b, derr := decodeBundleResource(resp.Resources)
			sub.mu.Lock()
			if derr != nil {
				sub.nacked++
				sub.mu.Unlock()
				_ = c.Nack(derr.Error())
			} else {
				sub.good = b
				sub.seen[b.Version] = time.Now()
				sub.mu.Unlock()
				_ = c.Ack()
			}
			select {
			case sub.updates <- struct{}{}:
			default:
			}
		}
	}()
	return sub
}

func decodeBundleResource(res []*anyProto) (*policies.Bundle, error) {
	for _, a := range res {
		var tec core.TypedExtensionConfig
		if err := a.UnmarshalTo(&tec); err != nil {
			return nil, err
		}
		if tec.Name != wire.BundleResourceName {
			continue
		}
		var sv wrapperspb.StringValue
		if err := tec.TypedConfig.UnmarshalTo(&sv); err != nil {
			return nil, err
		}
		return policies.DecodeBundle([]byte(sv.Value))
	}
	return nil, errNoBundle
}

func (s *subscriber) waitVersion(t *testing.T, version string, within time.Duration) time.Time {
	t.Helper()
	deadline := time.After(within)
	for {
		s.mu.Lock()
		at, ok := s.seen[version]
		s.mu.Unlock()
		if ok {
			return at
		}
		select {
		case <-s.updates:
		case <-deadline:
			t.Fatalf("version %s not received within %s", version, within)
		}
	}
}

func TestBundleDistributionACKNACKAndPropagation(t *testing.T) {
	h := newHarness(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)

	if err := h.store.SetSource("files", quarantine("spiffe://example.org/ns/a/sa/one")); err != nil {
		t.Fatal(err)
	}
	v1 := h.store.Bundle().Version
	// Two authz servers, not workloads of the mesh, connect after the first
	// bundle exists: they get it on connect.
	subs := []*subscriber{
		runSubscriber(t, ctx, h.conn, "authz-1"),
		runSubscriber(t, ctx, h.conn, "authz-2"),
	}
	for _, s := range subs {
		s.waitVersion(t, v1, 2*time.Second)
	}

	// A change reaches every subscriber within 1 s.
	start := time.Now()
	if err := h.store.SetSource("files", quarantine("spiffe://example.org/ns/a/sa/two")); err != nil {
		t.Fatal(err)
	}
	v2 := h.store.Bundle().Version
	for _, s := range subs {
		at := s.waitVersion(t, v2, time.Second)
		t.Logf("%s reached a subscriber in %s", v2, at.Sub(start))
	}

	// A corrupt bundle (its hash does not match its content) is NACKed;
	// subscribers keep the last good one and the server counts the NACKs.
	bad := *h.store.Bundle()
	bad.Version = "corrupt"
	bad.Hash = "sha256:0000"
	if err := h.srv.Publish(&bad); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for testutil.ToFloat64(h.srv.m.nacks.WithLabelValues("extension_config")) < 2 {
		if time.Now().After(deadline) {
			t.Fatal("server did not see both NACKs")
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, s := range subs {
		s.mu.Lock()
		if s.nacked != 1 || s.good.Version != v2 {
			t.Errorf("subscriber nacked=%d good=%s, want 1 and %s", s.nacked, s.good.Version, v2)
		}
		s.mu.Unlock()
	}

	// The next good bundle is taken again.
	if err := h.store.SetSource("files", policies.Set{}); err != nil {
		t.Fatal(err)
	}
	v3 := h.store.Bundle().Version
	for _, s := range subs {
		s.waitVersion(t, v3, time.Second)
	}
}

func TestDeltaADSReceivesBundle(t *testing.T) {
	h := newHarness(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := h.store.SetSource("files", quarantine("spiffe://example.org/ns/a/sa/one")); err != nil {
		t.Fatal(err)
	}
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(h.conn).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&discovery.DeltaDiscoveryRequest{
		Node:                   &core.Node{Id: "authz-delta"},
		TypeUrl:                wire.BundleTypeURL,
		ResourceNamesSubscribe: []string{wire.BundleResourceName},
	}); err != nil {
		t.Fatal(err)
	}
	recv := func() *policies.Bundle {
		t.Helper()
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		var anys []*anyProto
		for _, r := range resp.Resources {
			anys = append(anys, r.Resource)
		}
		b, err := decodeBundleResource(anys)
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: wire.BundleTypeURL, ResponseNonce: resp.Nonce}); err != nil {
			t.Fatal(err)
		}
		return b
	}
	if got := recv(); got.Version != h.store.Bundle().Version {
		t.Fatalf("delta got %s, want %s", got.Version, h.store.Bundle().Version)
	}
	start := time.Now()
	if err := h.store.SetSource("files", quarantine("spiffe://example.org/ns/a/sa/two")); err != nil {
		t.Fatal(err)
	}
	if got := recv(); got.Version != h.store.Bundle().Version {
		t.Fatalf("delta got %s, want %s", got.Version, h.store.Bundle().Version)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("delta update took %s", d)
	}
	_ = stream.CloseSend()
}

func TestEnvoyNodeGetsItsWorkload(t *testing.T) {
	h := newHarness(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := h.store.SetSource("files", policies.Set{}); err != nil {
		t.Fatal(err)
	}
	c := adsclient.NewADSClient(ctx, &core.Node{Id: "web-7f9c", Cluster: "web.shop"}, resource.ListenerType)
	if err := c.InitConnect(h.conn); err != nil {
		t.Fatal(err)
	}
	resp, err := c.Fetch()
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Resources) != 1 {
		t.Fatalf("listeners = %d, want 1", len(resp.Resources))
	}
	var l listener.Listener
	if err := resp.Resources[0].UnmarshalTo(&l); err != nil {
		t.Fatal(err)
	}
	if l.Name != "inbound_http" {
		t.Fatalf("listener %q", l.Name)
	}
	if err := c.Ack(); err != nil {
		t.Fatal(err)
	}

	// Envoy asks for the filter config by name, an authz server for the
	// bundle by name, on one ADS stream each: each gets exactly that.
	for _, name := range []string{wire.FilterConfigName, wire.BundleResourceName} {
		stream, err := discovery.NewAggregatedDiscoveryServiceClient(h.conn).StreamAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.Send(&discovery.DiscoveryRequest{
			Node: &core.Node{Id: "web-7f9c", Cluster: "web.shop"}, TypeUrl: resource.ExtensionConfigType, ResourceNames: []string{name},
		}); err != nil {
			t.Fatal(err)
		}
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Resources) != 1 {
			t.Fatalf("%s: %d resources", name, len(resp.Resources))
		}
		var tec core.TypedExtensionConfig
		if err := resp.Resources[0].UnmarshalTo(&tec); err != nil || tec.Name != name {
			t.Fatalf("%s: got %q (%v)", name, tec.Name, err)
		}
		if resp.VersionInfo != h.store.Bundle().Version {
			t.Fatalf("%s: version %q, want the bundle version %q", name, resp.VersionInfo, h.store.Bundle().Version)
		}
		_ = stream.CloseSend()
	}
	if got := testutil.ToFloat64(h.srv.m.nodes); got != 1 {
		t.Fatalf("nodes = %v", got)
	}
	// Its last stream gone, the node is forgotten.
	cancel()
	waitFor(t, "the node to be forgotten", func() bool {
		_, err := h.srv.Cache().GetSnapshot("web-7f9c")
		return testutil.ToFloat64(h.srv.m.nodes) == 0 && err != nil
	})
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestGoneNodeFreesItsPushSlot: a node that disconnects without answering
// a push gives its slot back at once instead of after the push timeout,
// and later pushes skip it, so pods that come and go do not slow the
// fleet's convergence.
func TestGoneNodeFreesItsPushSlot(t *testing.T) {
	h := newHarness(t, func(o *Options) { o.MaxInFlight = 1; o.PushTimeout = time.Minute })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := h.store.SetSource("files", quarantine("spiffe://example.org/ns/a/sa/one")); err != nil {
		t.Fatal(err)
	}
	ask := func(ctx context.Context, id string) (discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient, *discovery.DiscoveryResponse) {
		t.Helper()
		stream, err := discovery.NewAggregatedDiscoveryServiceClient(h.conn).StreamAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: id, Cluster: "web.shop"},
			TypeUrl: resource.ExtensionConfigType, ResourceNames: []string{wire.FilterConfigName}}); err != nil {
			t.Fatal(err)
		}
		got := make(chan *discovery.DiscoveryResponse, 1)
		go func() {
			resp, err := stream.Recv()
			if err == nil {
				got <- resp
			}
			close(got)
		}()
		select {
		case resp := <-got:
			if resp == nil {
				t.Fatalf("%s: stream failed", id)
			}
			return stream, resp
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: no response while another node holds the only push slot", id)
		}
		return nil, nil
	}
	// The first pod takes the only slot and never answers, then goes.
	goneCtx, gone := context.WithCancel(ctx)
	ask(goneCtx, "web-gone")
	gone()
	waitFor(t, "web-gone to be forgotten", func() bool { return testutil.ToFloat64(h.srv.m.nodes) == 0 })

	// The next pod is served at once, and so is an update.
	stream, resp := ask(ctx, "web-next")
	if err := h.store.SetSource("files", quarantine("spiffe://example.org/ns/a/sa/two")); err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&discovery.DiscoveryRequest{TypeUrl: resource.ExtensionConfigType, ResourceNames: []string{wire.FilterConfigName},
		VersionInfo: resp.VersionInfo, ResponseNonce: resp.Nonce}); err != nil {
		t.Fatal(err)
	}
	next, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if next.VersionInfo != h.store.Bundle().Version {
		t.Fatalf("update: version %q, want %q", next.VersionInfo, h.store.Bundle().Version)
	}
	if _, err := h.srv.Cache().GetSnapshot("web-gone"); err == nil {
		t.Fatal("the gone node got a snapshot again")
	}
}

type anyProto = anypb.Any

var errNoBundle = errors.New("no bundle resource in the response")

// TestECDSByNameGetsEveryUpdate is what Envoy does for the wasm filter: an
// ADS stream that asks for the filter's extension config by its name alone
// (the node's snapshot also holds the bundle resource), ACKs, and must get
// each new version, and only that resource, without naming the rest.
func TestECDSByNameGetsEveryUpdate(t *testing.T) {
	h := newHarness(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := h.store.SetSource("files", quarantine("spiffe://example.org/ns/a/sa/one")); err != nil {
		t.Fatal(err)
	}
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(h.conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	node := &core.Node{Id: "web-1", Cluster: "web.shop"}
	req := &discovery.DiscoveryRequest{Node: node, TypeUrl: resource.ExtensionConfigType, ResourceNames: []string{wire.FilterConfigName}}
	recv := func(want string) {
		t.Helper()
		if err := stream.Send(req); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		var (
			resp *discovery.DiscoveryResponse
			rerr error
		)
		go func() { defer close(done); resp, rerr = stream.Recv() }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatalf("no response for version %s", want)
		}
		if rerr != nil {
			t.Fatal(rerr)
		}
		if resp.VersionInfo != want || len(resp.Resources) != 1 {
			t.Fatalf("version %q with %d resources, want %q with 1", resp.VersionInfo, len(resp.Resources), want)
		}
		var tec core.TypedExtensionConfig
		if err := resp.Resources[0].UnmarshalTo(&tec); err != nil || tec.Name != wire.FilterConfigName {
			t.Fatalf("got %q (%v)", tec.Name, err)
		}
		// ACK: the next request carries the version and nonce.
		req = &discovery.DiscoveryRequest{Node: node, TypeUrl: resource.ExtensionConfigType, ResourceNames: []string{wire.FilterConfigName},
			VersionInfo: resp.VersionInfo, ResponseNonce: resp.Nonce}
	}
	recv(h.store.Bundle().Version)
	for _, id := range []string{"two", "three"} {
		if err := h.store.SetSource("files", quarantine("spiffe://example.org/ns/a/sa/"+id)); err != nil {
			t.Fatal(err)
		}
		recv(h.store.Bundle().Version)
	}
	_ = stream.CloseSend()
}

// TestBundleHeartbeats: an authz-like node that declares the TTL client
// feature gets the bundle with a TTL and a heartbeat (the resource without
// its body) every interval while nothing changes; a node that does not
// declare it, and an Envoy node, get the bundle bare and no heartbeat.
func TestBundleHeartbeats(t *testing.T) {
	h := newHarness(t, func(o *Options) { o.BundleHeartbeat = 50 * time.Millisecond })
	if err := h.store.SetSource("files", quarantine("spiffe://example.org/ns/x/sa/y")); err != nil {
		t.Fatal(err)
	}
	type seen struct {
		wrapped, heartbeats, bare int
		ttl                       time.Duration
	}
	watch := func(node *core.Node, typ string, names []string) func() seen {
		ctx, cancel := context.WithCancel(context.Background())
		st, err := discovery.NewAggregatedDiscoveryServiceClient(h.conn).StreamAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var mu sync.Mutex
		var got seen
		done := make(chan struct{})
		t.Cleanup(func() { cancel(); <-done })
		if err := st.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: typ, ResourceNames: names}); err != nil {
			t.Fatal(err)
		}
		go func() {
			defer close(done)
			for {
				resp, err := st.Recv()
				if err != nil {
					return
				}
				mu.Lock()
				for _, r := range resp.GetResources() {
					if r.GetTypeUrl() != "type.googleapis.com/envoy.service.discovery.v3.Resource" {
						got.bare++
						continue
					}
					var w discovery.Resource
					if err := r.UnmarshalTo(&w); err != nil {
						t.Error(err)
					}
					got.ttl = w.GetTtl().AsDuration()
					if w.GetResource() == nil {
						got.heartbeats++
					} else {
						got.wrapped++
					}
				}
				mu.Unlock()
				_ = st.Send(&discovery.DiscoveryRequest{TypeUrl: typ, ResourceNames: names, VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()})
			}
		}()
		return func() seen { mu.Lock(); defer mu.Unlock(); return got }
	}
	ttlNode := watch(&core.Node{Id: "authz-new", ClientFeatures: []string{ClientFeatureTTL}}, resource.ExtensionConfigType, []string{wire.BundleResourceName})
	oldNode := watch(&core.Node{Id: "authz-old"}, resource.ExtensionConfigType, []string{wire.BundleResourceName})
	envoy := watch(&core.Node{Id: "web-1", Cluster: "web.shop", ClientFeatures: []string{ClientFeatureTTL}}, resource.ExtensionConfigType, []string{wire.FilterConfigName})
	waitFor(t, "heartbeats to the TTL node", func() bool { return ttlNode().heartbeats >= 3 })
	if s := ttlNode(); s.wrapped != 1 || s.ttl != 150*time.Millisecond || s.bare != 0 {
		t.Errorf("TTL node saw %+v, want one bundle with a 150ms TTL and heartbeats", s)
	}
	if s := oldNode(); s.bare != 1 || s.wrapped+s.heartbeats != 0 {
		t.Errorf("node without the feature saw %+v, want the bare bundle only", s)
	}
	if s := envoy(); s.bare != 1 || s.wrapped+s.heartbeats != 0 {
		t.Errorf("Envoy node saw %+v, want its filter config bare: it must never expire", s)
	}
	// An update reaches the TTL node with its body.
	if err := h.store.SetSource("files", quarantine("spiffe://example.org/ns/x/sa/z")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "update to the TTL node", func() bool { return ttlNode().wrapped == 2 })
}
