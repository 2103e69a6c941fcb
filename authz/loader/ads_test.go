package loader

import (
	"context"
	"log/slog"
	"net"
	"slices"
	"strings"
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

	"github.com/meshguard/meshguard/internal/testbed/netfault"
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

// startTTLControlPlane is a go-control-plane ADS server whose cache sends
// heartbeats every interval for resources with a TTL, as the meshguard
// control plane does for subscribers that declare the TTL client feature.
func startTTLControlPlane(t *testing.T, interval time.Duration) *controlPlane {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cp := &controlPlane{cache: cachev3.NewSnapshotCacheWithHeartbeating(ctx, false, cachev3.IDHash{}, nil, interval)}
	cb := serverv3.CallbackFuncs{StreamRequestFunc: func(_ int64, r *discoveryv3.DiscoveryRequest) error {
		cp.mu.Lock()
		defer cp.mu.Unlock()
		cp.reqs = append(cp.reqs, r)
		return nil
	}}
	g := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, serverv3.NewServer(ctx, cp.cache, cb))
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

func (cp *controlPlane) publishTTL(t *testing.T, version string, bundle []byte, ttl time.Duration) {
	t.Helper()
	sv, err := anypb.New(wrapperspb.String(string(bundle)))
	if err != nil {
		t.Fatal(err)
	}
	res := &corev3.TypedExtensionConfig{Name: wire.BundleResourceName, TypedConfig: sv}
	snap, err := cachev3.NewSnapshotWithTTLs(version, map[resourcev3.Type][]types.ResourceWithTTL{
		resourcev3.ExtensionConfigType: {{Resource: res, TTL: &ttl}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := cp.cache.SetSnapshot(context.Background(), nodeID, snap); err != nil {
		t.Fatal(err)
	}
}

func runADS(t *testing.T, l *Loader, src *ADSSource) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); l.Run(ctx, src) }()
	t.Cleanup(func() { cancel(); <-done })
}

func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > d {
			t.Fatalf("%s: not within %s", what, d)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(start)
}

// TestADSHeartbeatsKeepAnIdleBundleFresh: a control plane that has nothing
// new to send keeps the bundle confirmed with heartbeats, which are ACKed
// and not applied; the subscriber declared the TTL client feature.
func TestADSHeartbeatsKeepAnIdleBundleFresh(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
	cp := startTTLControlPlane(t, 50*time.Millisecond)
	l, eng, m, _ := newLoader(t)
	conn, err := grpc.NewClient(cp.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	src := &ADSSource{Conn: conn, Node: &corev3.Node{Id: nodeID}, Log: slog.New(slog.DiscardHandler), MaxStaleness: 300 * time.Millisecond, Metrics: m}
	cp.publishTTL(t, "x1", bundleJSON(t, "v1", set("one")), 150*time.Millisecond)
	runADS(t, l, src)
	waitVersion(t, eng, "v1")
	// Idle for several bounds: still fresh.
	for range 20 {
		time.Sleep(50 * time.Millisecond)
		if err := src.Fresh(); err != nil {
			t.Fatalf("idle control plane with heartbeats: %v", err)
		}
	}
	if d := src.Staleness(time.Now()); d > 150*time.Millisecond {
		t.Errorf("staleness %s with heartbeats every 50ms", d)
	}
	cp.waitRequest(t, func(r *discoveryv3.DiscoveryRequest) bool {
		return slices.Contains(r.GetNode().GetClientFeatures(), ClientFeatureTTL)
	})
	if got := testutil.ToFloat64(m.Reloads.WithLabelValues("ads", "applied")); got != 1 {
		t.Errorf("applied %v times; heartbeats must not apply", got)
	}
	if got := testutil.ToFloat64(m.ControlPlaneStreams.WithLabelValues("watchdog")); got != 0 {
		t.Errorf("watchdog fired %v times on a healthy stream", got)
	}
}

// TestADSSilentPartition: a control plane that vanishes without a reset
// (the proxy stops forwarding) is noticed within the TTL by the watchdog;
// the bundle keeps serving but turns stale past the bound; when the path
// heals the subscription comes back and the bundle is fresh again.
func TestADSSilentPartition(t *testing.T) {
	cp := startTTLControlPlane(t, 50*time.Millisecond)
	proxy, err := netfault.Listen(cp.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { proxy.Close() })
	l, eng, m, _ := newLoader(t)
	conn, err := grpc.NewClient(proxy.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	src := &ADSSource{Conn: conn, Node: &corev3.Node{Id: nodeID}, Log: slog.New(slog.DiscardHandler), MaxStaleness: 400 * time.Millisecond,
		Metrics: m, MinBackoff: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond, FirstResponseTimeout: 200 * time.Millisecond}
	cp.publishTTL(t, "x1", bundleJSON(t, "v1", set("one")), 150*time.Millisecond)
	runADS(t, l, src)
	waitVersion(t, eng, "v1")

	proxy.Blackhole()
	noticed := waitFor(t, "partition noticed", 2*time.Second, func() bool {
		return testutil.ToFloat64(m.ControlPlaneStreams.WithLabelValues("watchdog")) > 0
	})
	t.Logf("silent partition noticed after %s (TTL 150ms)", noticed)
	if testutil.ToFloat64(m.ControlPlaneConnected) != 0 {
		t.Error("still connected after the watchdog")
	}
	waitFor(t, "stale", 2*time.Second, func() bool { return src.Fresh() != nil })
	waitFor(t, "stale counted", 2*time.Second, func() bool { return testutil.ToFloat64(m.PolicyStale) == 1 })
	if got := eng.Snapshot().Version(); got != "v1" {
		t.Fatalf("serving %s during the partition, want the last good v1", got)
	}
	proxy.Heal()
	waitFor(t, "fresh after healing", 5*time.Second, func() bool { return src.Fresh() == nil })
}

// TestADSWithoutTTLTheLiveStreamConfirms: a control plane that sends no
// heartbeats (no TTL on the resource) keeps the bundle fresh as long as
// the stream lives; when the stream ends, staleness counts from then.
func TestADSWithoutTTLTheLiveStreamConfirms(t *testing.T) {
	cp := startControlPlane(t)
	l, eng, m, _ := newLoader(t)
	conn, err := grpc.NewClient(cp.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	src := &ADSSource{Conn: conn, Node: &corev3.Node{Id: nodeID}, Log: slog.New(slog.DiscardHandler), MaxStaleness: 100 * time.Millisecond, Metrics: m}
	cp.publish(t, "x1", bundleJSON(t, "v1", set("one")))
	runADS(t, l, src)
	waitVersion(t, eng, "v1")
	time.Sleep(300 * time.Millisecond)
	if err := src.Fresh(); err != nil || src.Staleness(time.Now()) != 0 {
		t.Fatalf("live stream without TTL: %v", err)
	}
}

// TestADSStaleBeforeTheFirstBundle: a subscription that never gets a
// bundle is stale from the start once past the bound.
func TestADSStaleBeforeTheFirstBundle(t *testing.T) {
	cp := startControlPlane(t) // publishes nothing
	l, _, m, _ := newLoader(t)
	conn, err := grpc.NewClient(cp.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	src := &ADSSource{Conn: conn, Node: &corev3.Node{Id: nodeID}, Log: slog.New(slog.DiscardHandler), MaxStaleness: 100 * time.Millisecond,
		Metrics: m, FirstResponseTimeout: 100 * time.Millisecond, MinBackoff: 10 * time.Millisecond}
	runADS(t, l, src)
	waitFor(t, "stale without a bundle", 2*time.Second, func() bool {
		err := src.Fresh()
		return err != nil && strings.Contains(err.Error(), "no policy bundle")
	})
	waitFor(t, "first-response watchdog", 2*time.Second, func() bool {
		return testutil.ToFloat64(m.ControlPlaneStreams.WithLabelValues("watchdog")) > 0
	})
}

// TestADSRejectedVersionIsNotFresh: when the control plane's current
// version is one this server rejected, its heartbeats confirm nothing: the
// last good bundle serves, and turns stale past the bound.
func TestADSRejectedVersionIsNotFresh(t *testing.T) {
	cp := startTTLControlPlane(t, 30*time.Millisecond)
	l, eng, m, _ := newLoader(t)
	conn, err := grpc.NewClient(cp.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	src := &ADSSource{Conn: conn, Node: &corev3.Node{Id: nodeID}, Log: slog.New(slog.DiscardHandler), MaxStaleness: 300 * time.Millisecond,
		Metrics: m, RepeatNACKDelay: 10 * time.Millisecond}
	cp.publishTTL(t, "x1", bundleJSON(t, "v1", set("one")), 90*time.Millisecond)
	runADS(t, l, src)
	waitVersion(t, eng, "v1")
	cp.publishTTL(t, "x2", invalidBundle(t, "v2"), 90*time.Millisecond)
	cp.waitRequest(t, func(r *discoveryv3.DiscoveryRequest) bool { return r.GetErrorDetail() != nil })
	waitFor(t, "stale with a rejected version", 3*time.Second, func() bool { return src.Fresh() != nil })
	if got := eng.Snapshot().Version(); got != "v1" {
		t.Fatalf("serving %s, want the last good v1", got)
	}
	// The control plane moves on to a good version: fresh again.
	cp.publishTTL(t, "x3", bundleJSON(t, "v3", set("three")), 90*time.Millisecond)
	waitVersion(t, eng, "v3")
	waitFor(t, "fresh again", 3*time.Second, func() bool { return src.Fresh() == nil })
}
