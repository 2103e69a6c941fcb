package loader

import (
	"context"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshguard/meshguard/policies/wire"
)

const nodeID = "authz-test"

// controlPlane is a real go-control-plane ADS server with a snapshot cache,
// as the meshguard control plane runs it, recording the requests it gets.
type controlPlane struct {
	cache cachev3.SnapshotCache
	addr  string
	mu    sync.Mutex
	reqs  []*discoveryv3.DiscoveryRequest
}

func startControlPlane(t *testing.T) *controlPlane {
	t.Helper()
	cp := &controlPlane{cache: cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil)}
	ctx, cancel := context.WithCancel(context.Background())
	cb := serverv3.CallbackFuncs{StreamRequestFunc: func(_ int64, r *discoveryv3.DiscoveryRequest) error {
		cp.mu.Lock()
		defer cp.mu.Unlock()
		cp.reqs = append(cp.reqs, r)
		return nil
	}}
	srv := serverv3.NewServer(ctx, cp.cache, cb)
	g := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, srv)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cp.addr = lis.Addr().String()
	done := make(chan struct{})
	go func() { defer close(done); _ = g.Serve(lis) }()
	t.Cleanup(func() { g.Stop(); cancel(); <-done })
	return cp
}

func (cp *controlPlane) publish(t *testing.T, version string, bundle []byte) {
	t.Helper()
	sv, err := anypb.New(wrapperspb.String(string(bundle)))
	if err != nil {
		t.Fatal(err)
	}
	res := &corev3.TypedExtensionConfig{Name: wire.BundleResourceName, TypedConfig: sv}
	snap, err := cachev3.NewSnapshot(version, map[resourcev3.Type][]types.Resource{resourcev3.ExtensionConfigType: {res}})
	if err != nil {
		t.Fatal(err)
	}
	if err := cp.cache.SetSnapshot(context.Background(), nodeID, snap); err != nil {
		t.Fatal(err)
	}
}

// lastRequest returns the last request that answers the given nonce.
func (cp *controlPlane) waitRequest(t *testing.T, pred func(*discoveryv3.DiscoveryRequest) bool) *discoveryv3.DiscoveryRequest {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		cp.mu.Lock()
		for _, r := range cp.reqs {
			if pred(r) {
				cp.mu.Unlock()
				return r
			}
		}
		cp.mu.Unlock()
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("the control plane never got the expected request")
	return nil
}

func TestADSSubscription(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	cp := startControlPlane(t)
	l, eng, m, _ := newLoader(t)

	conn, err := grpc.NewClient(cp.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	src := &ADSSource{Conn: conn, Node: &corev3.Node{Id: nodeID}, Log: slog.New(slog.DiscardHandler), MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond, RepeatNACKDelay: 20 * time.Millisecond}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); l.Run(ctx, src) }()
	defer func() { cancel(); <-done }()

	cp.publish(t, "x1", bundleJSON(t, "v1", set("one")))
	waitVersion(t, eng, "v1")
	cp.waitRequest(t, func(r *discoveryv3.DiscoveryRequest) bool {
		return r.GetVersionInfo() == "x1" && r.GetErrorDetail() == nil && r.GetResponseNonce() != ""
	})

	cp.publish(t, "x2", bundleJSON(t, "v2", set("two")))
	waitVersion(t, eng, "v2")

	// A broken version: NACKed with the error, v2 keeps serving.
	cp.publish(t, "x3", invalidBundle(t, "v3"))
	nack := cp.waitRequest(t, func(r *discoveryv3.DiscoveryRequest) bool { return r.GetErrorDetail() != nil })
	if nack.GetVersionInfo() != "x2" || nack.GetErrorDetail().GetMessage() == "" {
		t.Errorf("NACK = version %q detail %v; want the last good version x2 and a message", nack.GetVersionInfo(), nack.GetErrorDetail())
	}
	if got := eng.Snapshot().Version(); got != "v2" {
		t.Fatalf("serving %s after a broken version, want v2", got)
	}
	if got := testutil.ToFloat64(m.Reloads.WithLabelValues("ads", "rejected")); got != 1 {
		t.Errorf("ads rejected = %v, want 1", got)
	}

	// A wrong payload type is NACKed too.
	notString, _ := anypb.New(wrapperspb.Int64(7))
	snap, _ := cachev3.NewSnapshot("x4", map[resourcev3.Type][]types.Resource{resourcev3.ExtensionConfigType: {
		&corev3.TypedExtensionConfig{Name: wire.BundleResourceName, TypedConfig: notString}}})
	if err := cp.cache.SetSnapshot(context.Background(), nodeID, snap); err != nil {
		t.Fatal(err)
	}
	cp.waitRequest(t, func(r *discoveryv3.DiscoveryRequest) bool {
		return r.GetErrorDetail() != nil && r.GetVersionInfo() == "x2" && r.GetResponseNonce() != nack.GetResponseNonce()
	})

	// The next good version is taken.
	cp.publish(t, "x5", bundleJSON(t, "v5", set("five")))
	waitVersion(t, eng, "v5")
}

func TestADSReconnects(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	// Reserve an address, start the subscriber before the control plane
	// exists, then bring the control plane up on it.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	_ = lis.Close()

	l, eng, _, _ := newLoader(t)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	src := &ADSSource{Conn: conn, Node: &corev3.Node{Id: nodeID}, Log: slog.New(slog.DiscardHandler), MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond, RepeatNACKDelay: 20 * time.Millisecond}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); l.Run(ctx, src) }()
	defer func() { cancel(); <-done }()
	time.Sleep(100 * time.Millisecond)

	cache := cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil)
	sctx, scancel := context.WithCancel(context.Background())
	g := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, serverv3.NewServer(sctx, cache, nil))
	lis, err = net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("address %s taken again: %v", addr, err)
	}
	served := make(chan struct{})
	go func() { defer close(served); _ = g.Serve(lis) }()
	defer func() { g.Stop(); scancel(); <-served }()
	cp := &controlPlane{cache: cache}
	cp.publish(t, "x1", bundleJSON(t, "v1", set("one")))
	waitVersion(t, eng, "v1")
}
