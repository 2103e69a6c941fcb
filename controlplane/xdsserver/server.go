// Package xdsserver serves the control plane's xDS: ADS (state of the world
// and delta) backed by go-control-plane's snapshot cache, one snapshot per
// node. Envoy nodes get the listeners, routes, clusters and wasm filter
// config generated for their workload; proxyless gRPC servers get RBAC
// listeners; every node — in particular authz servers, which are not
// workloads of the mesh — gets the policy bundle resource.
//
// Publish (a policy store subscriber) rebuilds every workload's snapshot for
// a new bundle and hands it to every node that serves the workload; a node
// the cache has not seen gets its snapshot on its first request, and a node
// whose last stream closes is forgotten (its snapshot leaves the cache).
package xdsserver

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	extensionservice "github.com/envoyproxy/go-control-plane/envoy/service/extension/v3"
	listenerservice "github.com/envoyproxy/go-control-plane/envoy/service/listener/v3"
	routeservice "github.com/envoyproxy/go-control-plane/envoy/service/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cache "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/experimental"
	"google.golang.org/grpc/mem"

	"github.com/meshguard/meshguard/controlplane/mesh"
	"github.com/meshguard/meshguard/controlplane/xds"
	"github.com/meshguard/meshguard/policies"
)

// Options configure a Server.
type Options struct {
	// Mesh is the mesh description; nil serves only the bundle.
	Mesh       *mesh.Mesh
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	// Workers build workload snapshots in parallel; default GOMAXPROCS.
	Workers int
	// MaxInFlight bounds how many nodes are being pushed a new snapshot at
	// once (a push ends when the node ACKs or NACKs, or after PushTimeout).
	// Every push carries the bundle, so this bounds the memory of a
	// fleet-wide update. Default 64.
	MaxInFlight int
	// PushTimeout frees a push slot of a node that does not answer.
	// Default 2s.
	PushTimeout time.Duration
	// BundleHeartbeat, when positive, sends nodes that serve only the
	// bundle (authz servers) and declare the client feature
	// envoy.config.supports-resource-ttl the bundle with a TTL of three
	// heartbeats and, every BundleHeartbeat, a heartbeat (the resource
	// without its body), so that an idle but healthy control plane keeps
	// their bundle confirmed and a silent one is noticed within the TTL.
	// Envoy nodes get no TTL: a filter configuration must not expire.
	BundleHeartbeat time.Duration
}

// ClientFeatureTTL is the client feature (Envoy's name) of a node that
// understands resource TTLs and heartbeats.
const ClientFeatureTTL = "envoy.config.supports-resource-ttl"

// keyBundleTTL is the snapshot key of bundle-only nodes that take TTLs; no
// workload key is empty or starts with a NUL.
const keyBundleTTL = "\x00bundle-ttl"

// Server is the xDS server. Create it with New, register it on a gRPC
// server with Register and feed it bundles with Publish.
type Server struct {
	log     *slog.Logger
	gen     *xds.Generator
	cache   cache.SnapshotCache
	workers int
	xds     serverv3.Server

	mu        sync.Mutex
	bundle    *xds.EncodedBundle
	byKey     map[string]*cache.Snapshot // workload key → snapshot
	bundleOn  *cache.Snapshot            // for nodes that are not workloads
	bundleTTL *cache.Snapshot            // the same with a TTL (BundleHeartbeat)
	ttl       time.Duration              // of bundleTTL's resource; 0: no heartbeats
	nodes     map[string]string          // node ID → workload key ("" bundle only)
	// joining are nodes whose first snapshot ensureNode is handing over:
	// their stream waits for a push slot and answers nothing meanwhile,
	// so a Publish's push must not take a slot for them (it would be
	// held until PushTimeout); ensureNode hands them the newest snapshot.
	joining map[string]bool
	// streamNode maps an open stream to its node, and open counts a node's
	// open streams: a node whose last stream closes is forgotten, so that
	// pods that come and go leave nothing behind and take no push slot.
	streamNode map[streamKey]string
	open       map[string]int

	// sent remembers, per SotW stream and type, the nonce and version of
	// the last response, so that a NACK can be turned into "I have seen
	// this version" and the cache does not resend the rejected config in
	// a loop (go-control-plane resends whenever the request's version
	// differs from the snapshot's, and a NACK carries the last good one).
	sentMu sync.Mutex
	sent   map[int64]map[string]sentResponse

	// Paced pushes: pushGen identifies the newest Publish; slots bound the
	// pushes in flight; inflight maps a node to its pending push.
	pushGen     atomic.Uint64
	slots       chan struct{}
	pushTimeout time.Duration
	inflightMu  sync.Mutex
	inflight    map[string]*pushToken
	pushWG      sync.WaitGroup

	m metrics
}

type pushToken struct{ once sync.Once }

// streamKey names a stream: state-of-the-world and delta streams are
// numbered apart.
type streamKey struct {
	delta bool
	id    int64
}

type sentResponse struct{ nonce, version string }

type metrics struct {
	published   prometheus.Counter
	failures    prometheus.Counter
	buildTime   prometheus.Histogram
	nodes       prometheus.Gauge
	streams     prometheus.Gauge
	nacks       *prometheus.CounterVec
	acks        *prometheus.CounterVec
	bundleBytes prometheus.Gauge
}

// typeLabels bounds the type label of the ACK/NACK counters.
var typeLabels = map[string]string{
	resource.ListenerType:        "listener",
	resource.RouteType:           "route",
	resource.ClusterType:         "cluster",
	resource.ExtensionConfigType: "extension_config",
	resource.SecretType:          "secret",
	resource.EndpointType:        "endpoint",
}

func typeLabel(url string) string {
	if l, ok := typeLabels[url]; ok {
		return l
	}
	return "other"
}

// New returns a server with an empty cache: nodes get nothing until the
// first Publish.
func New(ctx context.Context, opts Options) (*Server, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		log:        log,
		workers:    opts.Workers,
		byKey:      map[string]*cache.Snapshot{},
		nodes:      map[string]string{},
		joining:    map[string]bool{},
		streamNode: map[streamKey]string{},
		open:       map[string]int{},
		sent:       map[int64]map[string]sentResponse{},
		m: metrics{
			published: prometheus.NewCounter(prometheus.CounterOpts{
				Name: "meshguard_controlplane_snapshots_published_total",
				Help: "Node snapshots handed to the xDS cache.",
			}),
			failures: prometheus.NewCounter(prometheus.CounterOpts{
				Name: "meshguard_controlplane_snapshot_failures_total",
				Help: "Workload snapshots that failed validation or consistency checks and were not published.",
			}),
			buildTime: prometheus.NewHistogram(prometheus.HistogramOpts{
				Name:    "meshguard_controlplane_snapshot_build_seconds",
				Help:    "Time to build every snapshot for one bundle.",
				Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
			}),
			nodes: prometheus.NewGauge(prometheus.GaugeOpts{
				Name: "meshguard_controlplane_xds_nodes",
				Help: "Nodes the xDS cache holds a snapshot for.",
			}),
			streams: prometheus.NewGauge(prometheus.GaugeOpts{
				Name: "meshguard_controlplane_xds_streams",
				Help: "Open xDS streams.",
			}),
			nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
				Name: "meshguard_controlplane_xds_nacks_total",
				Help: "Responses rejected by a node, by resource type.",
			}, []string{"type"}),
			acks: prometheus.NewCounterVec(prometheus.CounterOpts{
				Name: "meshguard_controlplane_xds_acks_total",
				Help: "Responses accepted by a node, by resource type.",
			}, []string{"type"}),
			bundleBytes: prometheus.NewGauge(prometheus.GaugeOpts{
				Name: "meshguard_controlplane_bundle_bytes",
				Help: "Size of the bundle being served, JSON encoded.",
			}),
		},
	}
	if s.workers <= 0 {
		s.workers = runtime.GOMAXPROCS(0)
	}
	if opts.MaxInFlight <= 0 {
		opts.MaxInFlight = 64
	}
	if opts.PushTimeout <= 0 {
		opts.PushTimeout = 2 * time.Second
	}
	s.slots = make(chan struct{}, opts.MaxInFlight)
	s.pushTimeout = opts.PushTimeout
	s.inflight = map[string]*pushToken{}
	if opts.Mesh != nil {
		s.gen = xds.NewGenerator(opts.Mesh)
	}
	if opts.Registerer != nil {
		for _, c := range []prometheus.Collector{s.m.published, s.m.failures, s.m.buildTime, s.m.nodes, s.m.streams, s.m.nacks, s.m.acks, s.m.bundleBytes} {
			if err := opts.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("xdsserver: register metrics: %w", err)
			}
		}
	}
	// Not the cache's "ADS mode": in it a request naming some resources of
	// a type is never answered unless it names every resource of that type
	// in the snapshot, and Envoy asks for the filter config alone while
	// authz servers ask for the bundle alone. Snapshots are consistent
	// (checked before publication), which is what ADS ordering protects.
	if opts.BundleHeartbeat > 0 {
		s.ttl = 3 * opts.BundleHeartbeat
		s.cache = cache.NewSnapshotCacheWithHeartbeating(ctx, false, cache.IDHash{}, cacheLogger{log}, opts.BundleHeartbeat)
	} else {
		s.cache = cache.NewSnapshotCache(false, cache.IDHash{}, cacheLogger{log})
	}
	s.xds = serverv3.NewServer(ctx, s.cache, s.callbacks())
	return s, nil
}

// Register registers ADS (and the per-type discovery services, for clients
// that do not aggregate) on g.
func (s *Server) Register(g *grpc.Server) {
	discovery.RegisterAggregatedDiscoveryServiceServer(g, s.xds)
	listenerservice.RegisterListenerDiscoveryServiceServer(g, s.xds)
	routeservice.RegisterRouteDiscoveryServiceServer(g, s.xds)
	clusterservice.RegisterClusterDiscoveryServiceServer(g, s.xds)
	extensionservice.RegisterExtensionConfigDiscoveryServiceServer(g, s.xds)
}

// Cache exposes the snapshot cache (read-only use: status, tests).
func (s *Server) Cache() cache.SnapshotCache { return s.cache }

// Publish builds every snapshot for b and hands them to every known node.
// A workload whose snapshot fails is logged and counted, and its nodes keep
// their previous snapshot; the error reports how many failed.
func (s *Server) Publish(b *policies.Bundle) error {
	start := time.Now()
	encode := xds.EncodeBundle
	if s.gen != nil {
		encode = s.gen.Encode
	}
	eb, err := encode(b)
	if err != nil {
		s.m.failures.Inc()
		s.log.Error("bundle not published", "version", b.Version, "error", err)
		return err
	}
	bundleOnly, err := xds.BundleOnly(eb)
	if err != nil {
		s.m.failures.Inc()
		s.log.Error("bundle not published", "version", b.Version, "error", err)
		return err
	}
	var bundleTTL *cache.Snapshot
	if s.ttl > 0 {
		if bundleTTL, err = withTTL(bundleOnly, s.ttl); err != nil {
			s.m.failures.Inc()
			s.log.Error("bundle not published", "version", b.Version, "error", err)
			return err
		}
	}
	built, failed := s.buildAll(eb)

	s.mu.Lock()
	s.bundle = eb
	s.bundleOn = bundleOnly
	s.bundleTTL = bundleTTL
	for k, snap := range built {
		s.byKey[k] = snap
	}
	s.m.bundleBytes.Set(float64(len(eb.JSON)))
	nodes := make([]string, 0, len(s.nodes))
	for node := range s.nodes {
		nodes = append(nodes, node)
	}
	s.mu.Unlock()
	sort.Strings(nodes)
	gen := s.pushGen.Add(1)
	s.pushWG.Add(1)
	go func() {
		defer s.pushWG.Done()
		s.push(gen, nodes)
	}()
	s.m.buildTime.Observe(time.Since(start).Seconds())
	s.log.Info("xds snapshots built", "version", b.Version, "workloads", len(built),
		"failed", failed, "nodes", len(nodes), "duration", time.Since(start))
	if failed > 0 {
		return fmt.Errorf("xdsserver: bundle %s: %d workload snapshot(s) failed and were not published", b.Version, failed)
	}
	return nil
}

// push hands the newest snapshots to nodes, at most MaxInFlight at a time.
// A newer Publish takes over: the nodes this one has not reached yet get
// the newer snapshots from it.
func (s *Server) push(gen uint64, nodes []string) {
	ctx := context.Background()
	for _, node := range nodes {
		if s.pushGen.Load() != gen {
			return
		}
		if !s.pushable(node) {
			continue // gone since the Publish, or joining
		}
		s.hand(ctx, node, false)
	}
}

// hand gives node the newest snapshot of its workload (or the bundle-only
// one). It takes a push slot first, which the node's answer or the push
// timeout gives back, so that pushes go at the paced rate. join is set by
// ensureNode, which serves a joining node; a Publish's push skips it.
func (s *Server) hand(ctx context.Context, node string, join bool) {
	s.acquire(node)
	// Under s.mu so that a node forgotten meanwhile gets no snapshot back
	// (forget clears it under the same lock), and a node that rejoined
	// meanwhile holds no slot it cannot give back.
	s.mu.Lock()
	key, ok := s.nodes[node]
	if join {
		delete(s.joining, node)
	} else {
		ok = ok && !s.joining[node]
	}
	snap := s.snapshotFor(key) // the newest: a Publish meanwhile skipped a joining node
	if ok && snap != nil && !join {
		// A node that joined during this Publish already holds the
		// newest snapshot: setting it again sends nothing, and the slot
		// would wait for an answer that never comes.
		if cur, err := s.cache.GetSnapshot(node); err == nil && cur == cache.ResourceSnapshot(snap) {
			ok = false
		}
	}
	var err error
	if ok && snap != nil {
		err = s.cache.SetSnapshot(ctx, node, snap)
	}
	s.mu.Unlock()
	switch {
	case !ok || snap == nil:
		s.release(node)
	case err != nil:
		s.release(node)
		s.m.failures.Inc()
		s.log.Error("set snapshot", "node", node, "error", err)
	default:
		s.m.published.Inc()
	}
}

// acquire takes a push slot for node; it is given back when the node
// answers (release) or after the push timeout.
func (s *Server) acquire(node string) {
	s.slots <- struct{}{}
	tok := &pushToken{}
	s.inflightMu.Lock()
	prev := s.inflight[node]
	s.inflight[node] = tok
	s.inflightMu.Unlock()
	if prev != nil {
		prev.once.Do(func() { <-s.slots })
	}
	time.AfterFunc(s.pushTimeout, func() { s.releaseToken(node, tok) })
}

// release frees node's push slot, if it holds one.
func (s *Server) release(node string) {
	s.inflightMu.Lock()
	tok := s.inflight[node]
	s.inflightMu.Unlock()
	if tok != nil {
		s.releaseToken(node, tok)
	}
}

func (s *Server) releaseToken(node string, tok *pushToken) {
	tok.once.Do(func() { <-s.slots })
	s.inflightMu.Lock()
	if s.inflight[node] == tok {
		delete(s.inflight, node)
	}
	s.inflightMu.Unlock()
}

// endsPush reports whether an answer of node on typeURL ends its push: the
// answer to the largest resource, the filter config or bundle
// (ExtensionConfig), or the listener for proxyless gRPC nodes, which take
// no extension config.
func (s *Server) endsPush(node *core.Node, typeURL string) bool {
	if typeURL == resource.ExtensionConfigType {
		return true
	}
	if typeURL != resource.ListenerType || s.gen == nil {
		return false
	}
	w, ok := s.gen.Mesh().Lookup(node.GetCluster(), node.GetId())
	return ok && w.Proxyless
}

// Wait returns when every push started by Publish has been handed to the
// cache (tests and benchmarks; the server does not need it).
func (s *Server) Wait() { s.pushWG.Wait() }

// buildAll builds every workload's snapshot with s.workers goroutines.
func (s *Server) buildAll(eb *xds.EncodedBundle) (map[string]*cache.Snapshot, int) {
	out := map[string]*cache.Snapshot{}
	if s.gen == nil {
		return out, 0
	}
	ws := s.gen.Mesh().Workloads
	snaps := make([]*cache.Snapshot, len(ws))
	var wg sync.WaitGroup
	next := make(chan int)
	for range min(s.workers, len(ws)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				snap, err := s.gen.Snapshot(ws[i], eb)
				if err != nil {
					s.m.failures.Inc()
					s.log.Error("snapshot not published", "workload", ws[i].Key, "version", eb.Bundle.Version, "error", err)
					continue
				}
				snaps[i] = snap
			}
		}()
	}
	for i := range ws {
		next <- i
	}
	close(next)
	wg.Wait()
	failed := 0
	for i, w := range ws {
		if snaps[i] == nil {
			failed++
			continue
		}
		out[w.Key] = snaps[i]
	}
	return out, failed
}

// snapshotFor must be called with s.mu held.
func (s *Server) snapshotFor(key string) *cache.Snapshot {
	switch key {
	case "":
		return s.bundleOn
	case keyBundleTTL:
		return s.bundleTTL
	}
	return s.byKey[key]
}

// withTTL is snap with a TTL on every resource (heartbeats keep them).
func withTTL(snap *cache.Snapshot, ttl time.Duration) (*cache.Snapshot, error) {
	res := map[resource.Type][]types.ResourceWithTTL{}
	version := ""
	for _, typ := range []resource.Type{resource.ExtensionConfigType} {
		for _, r := range snap.GetResourcesAndTTL(typ) {
			res[typ] = append(res[typ], types.ResourceWithTTL{Resource: r.Resource, TTL: &ttl})
		}
		version = snap.GetVersion(typ)
	}
	out, err := cache.NewSnapshotWithTTLs(version, res)
	if err != nil {
		return nil, fmt.Errorf("xdsserver: bundle snapshot with a TTL: %w", err)
	}
	return out, nil
}

// ensureNode gives a node it has not seen its snapshot. It takes a push
// slot first, so that a fleet connecting at once (a control plane restart)
// is served at the paced rate; the node's stream waits meanwhile.
func (s *Server) ensureNode(node *core.Node) {
	if node == nil || node.GetId() == "" {
		return
	}
	id := node.GetId()
	s.mu.Lock()
	if _, ok := s.nodes[id]; ok {
		s.mu.Unlock()
		return
	}
	key := ""
	if s.gen != nil {
		if w, ok := s.gen.Mesh().Lookup(node.GetCluster(), id); ok {
			key = w.Key
		}
	}
	if key == "" && s.ttl > 0 && slices.Contains(node.GetClientFeatures(), ClientFeatureTTL) {
		key = keyBundleTTL
	}
	s.nodes[id] = key
	s.joining[id] = true
	s.m.nodes.Set(float64(len(s.nodes)))
	s.mu.Unlock()
	s.log.Info("xds node connected", "node", id, "workload", key)
	s.hand(context.Background(), id, true)
}

// pushable reports whether a Publish's push should take node: known, and
// not joining (ensureNode serves it).
func (s *Server) pushable(node string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.nodes[node]
	return ok && !s.joining[node]
}

// streamOpened records that stream serves node (once per stream), before
// the node is looked at, so that a stream closing meanwhile cannot forget a
// node another stream still uses.
func (s *Server) streamOpened(stream streamKey, node *core.Node) {
	id := node.GetId()
	if id == "" {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.streamNode[stream]; ok {
		return
	}
	s.streamNode[stream] = id
	s.open[id]++
}

// streamClosed forgets the stream's node when it was the node's last open
// stream: its snapshot leaves the cache, its push slot is freed, and later
// pushes skip it. A node that comes back is served again on its first
// request.
func (s *Server) streamClosed(stream streamKey) {
	s.mu.Lock()
	id, ok := s.streamNode[stream]
	if !ok {
		s.mu.Unlock()
		return
	}
	delete(s.streamNode, stream)
	s.open[id]--
	gone := s.open[id] <= 0
	if gone {
		delete(s.open, id)
		delete(s.nodes, id)
		delete(s.joining, id)
		s.cache.ClearSnapshot(id)
		s.m.nodes.Set(float64(len(s.nodes)))
	}
	s.mu.Unlock()
	if gone {
		s.release(id)
		s.log.Info("xds node disconnected", "node", id)
	}
}

func (s *Server) observe(node *core.Node, typeURL string, errDetail interface{ GetMessage() string }, nack bool, version string) {
	if nack {
		s.m.nacks.WithLabelValues(typeLabel(typeURL)).Inc()
		s.log.Warn("xds NACK", "node", node.GetId(), "type", typeURL, "error", errDetail.GetMessage())
		return
	}
	if version != "" {
		s.m.acks.WithLabelValues(typeLabel(typeURL)).Inc()
	}
}

func (s *Server) callbacks() serverv3.Callbacks {
	return serverv3.CallbackFuncs{
		StreamOpenFunc: func(context.Context, int64, string) error {
			s.m.streams.Inc()
			return nil
		},
		StreamClosedFunc: func(id int64, _ *core.Node) {
			s.m.streams.Dec()
			s.sentMu.Lock()
			delete(s.sent, id)
			s.sentMu.Unlock()
			s.streamClosed(streamKey{id: id})
		},
		StreamResponseFunc: func(_ context.Context, id int64, _ *discovery.DiscoveryRequest, r *discovery.DiscoveryResponse) {
			s.sentMu.Lock()
			defer s.sentMu.Unlock()
			m := s.sent[id]
			if m == nil {
				m = map[string]sentResponse{}
				s.sent[id] = m
			}
			m[r.GetTypeUrl()] = sentResponse{nonce: r.GetNonce(), version: r.GetVersionInfo()}
		},
		DeltaStreamOpenFunc: func(context.Context, int64, string) error {
			s.m.streams.Inc()
			return nil
		},
		DeltaStreamClosedFunc: func(id int64, _ *core.Node) {
			s.m.streams.Dec()
			s.streamClosed(streamKey{delta: true, id: id})
		},
		StreamRequestFunc: func(id int64, r *discovery.DiscoveryRequest) error {
			s.streamOpened(streamKey{id: id}, r.GetNode())
			s.ensureNode(r.GetNode())
			s.observe(r.GetNode(), r.GetTypeUrl(), r.GetErrorDetail(), r.GetErrorDetail() != nil, r.GetVersionInfo())
			if r.GetResponseNonce() != "" && s.endsPush(r.GetNode(), r.GetTypeUrl()) {
				s.release(r.GetNode().GetId())
			}
			if r.GetErrorDetail() != nil {
				s.sentMu.Lock()
				last, ok := s.sent[id][r.GetTypeUrl()]
				s.sentMu.Unlock()
				if ok && last.nonce == r.GetResponseNonce() {
					// The node keeps its last good config; wait for the
					// next version instead of resending the rejected one.
					r.VersionInfo = last.version
				}
			}
			return nil
		},
		StreamDeltaRequestFunc: func(id int64, r *discovery.DeltaDiscoveryRequest) error {
			s.streamOpened(streamKey{delta: true, id: id}, r.GetNode())
			s.ensureNode(r.GetNode())
			s.observe(r.GetNode(), r.GetTypeUrl(), r.GetErrorDetail(), r.GetErrorDetail() != nil, r.GetResponseNonce())
			if r.GetResponseNonce() != "" && s.endsPush(r.GetNode(), r.GetTypeUrl()) {
				s.release(r.GetNode().GetId())
			}
			return nil
		},
		FetchRequestFunc: func(_ context.Context, r *discovery.DiscoveryRequest) error {
			s.ensureNode(r.GetNode())
			return nil
		},
	}
}

// cacheLogger adapts slog to go-control-plane's logger.
type cacheLogger struct{ l *slog.Logger }

func (c cacheLogger) Debugf(format string, args ...any) {
	if c.l.Enabled(context.Background(), slog.LevelDebug) {
		c.l.Debug("xds cache", "detail", fmt.Sprintf(format, args...))
	}
}

func (c cacheLogger) Infof(format string, args ...any) { c.Debugf(format, args...) }

func (c cacheLogger) Warnf(format string, args ...any) {
	c.l.Warn("xds cache", "detail", fmt.Sprintf(format, args...))
}
func (c cacheLogger) Errorf(format string, args ...any) {
	c.l.Error("xds cache", "detail", fmt.Sprintf(format, args...))
}

// GRPCServerOptions are the gRPC server options the control plane serves
// xDS with. Responses carry the policy bundle for every node, so send
// buffers are large and short-lived: they are left to the garbage collector
// rather than kept in gRPC's buffer pool, which would otherwise hold on to
// hundreds of megabytes after a push to a large fleet.
func GRPCServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.MaxConcurrentStreams(1 << 16),
		experimental.BufferPool(mem.NopBufferPool{}),
	}
}
