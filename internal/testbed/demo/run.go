package demo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffegrpc/grpccredentials"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/tetratelabs/wazero"
	"google.golang.org/grpc"

	"github.com/meshguard/meshguard/authz/decisionlog"
	"github.com/meshguard/meshguard/authz/identity"
	"github.com/meshguard/meshguard/authz/loader"
	"github.com/meshguard/meshguard/authz/metrics"
	"github.com/meshguard/meshguard/authz/server"
	"github.com/meshguard/meshguard/controlplane/api"
	"github.com/meshguard/meshguard/controlplane/learn"
	"github.com/meshguard/meshguard/controlplane/quarantine"
	"github.com/meshguard/meshguard/controlplane/state/disk"
	"github.com/meshguard/meshguard/controlplane/store"
	"github.com/meshguard/meshguard/controlplane/xdsserver"
	"github.com/meshguard/meshguard/internal/testbed/envoyemu"
	"github.com/meshguard/meshguard/internal/testbed/freeport"
	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/source"
	"github.com/meshguard/meshguard/policies/wire"
)

// authzID is the authz server's identity in the demo mesh.
var authzID = spiffeid.RequireFromPath(trustDomain, "/ns/meshguard/sa/authz")

// jwtAudience is the audience the example payments policy requires.
const jwtAudience = "payments"

// mesh is the running demo.
type mesh struct {
	o   Options
	ui  *UI
	ids identities

	engine *policies.Engine
	loader *loader.Loader
	grpc   *grpc.Server
	authz  string // address

	dlog      *decisionMemo
	decisions *decisionlog.Logger // writes into dlog
	rec       *records

	store      *store.Store
	state      *disk.Store
	stateDir   string
	qm         *quarantine.Manager
	console    *demoConsole
	unsub      func()
	events     *http.Server
	eventsAddr string

	// The control plane's xDS server, serving what it generates from the
	// demo's mesh description.
	xds      *xdsserver.Server
	xdsGRPC  *grpc.Server
	xdsAddr  string
	xdsStop  context.CancelFunc
	wasmFile string

	// wasmCache shares the compiled filter between the sidecars' hosts
	// (and, on disk, between runs).
	wasmCache wazero.CompilationCache

	mu       sync.Mutex
	bundle   *policies.Bundle
	set      policies.Set
	nodes    map[string]*node
	byID     map[spiffeid.ID]string
	sum      Summary
	detected map[string]bool // unknown edges already shown
}

func start(ctx context.Context, o Options) (_ *mesh, err error) {
	m := &mesh{o: o, nodes: map[string]*node{}, byID: map[spiffeid.ID]string{}, detected: map[string]bool{},
		sum: Summary{ByReason: map[string]int{}, LegitDeniedCalls: map[string]int{}, AfterRelease: map[string]int{}}}
	m.ui = NewUI(o.Out, o.TTY, o.Color, o.Duration)
	defer func() {
		if err != nil {
			m.stop()
		}
	}()

	// Identities.
	if o.SpireSocket != "" {
		m.ids, err = newSPIREIdentities(ctx, o.SpireSocket)
	} else {
		m.ids, err = newCAIdentities(trustDomain)
	}
	if err != nil {
		return nil, fmt.Errorf("demo: identities: %w", err)
	}
	m.ui.Info("identities: %s", m.ids.Describe())

	// Policies.
	set, diags, err := source.LoadFS(o.Policies, o.PolicyPaths...)
	if err != nil {
		return nil, fmt.Errorf("demo: policies: %w\n%s", err, diags)
	}
	m.set = set
	if err := m.startControlPlane(); err != nil {
		return nil, err
	}
	m.ui.Info("policies: %d documents, bundle %s", countDocs(&set), m.bundle.Version)

	if err := m.startAuthz(ctx); err != nil {
		return nil, err
	}
	if err := m.startNodes(ctx); err != nil {
		return nil, err
	}
	// Every bundle the store publishes reaches the authz server and every
	// filter (the control plane's ADS and ECDS, in process).
	m.unsub = m.store.Subscribe(func(b *policies.Bundle) {
		if err := m.publish(b); err != nil {
			m.ui.Info("publishing bundle %s: %v", b.Version, err)
		}
	})
	return m, nil
}

func countDocs(s *policies.Set) int {
	return len(s.AuthorizationPolicies) + len(s.IdentityPolicies) + len(s.DefaultDenies) + len(s.RouteOverrides) +
		len(s.TrafficBaselines) + len(s.AnomalyProfiles) + len(s.Quarantines)
}

// startAuthz runs the authz server in process on a loopback gRPC mTLS
// listener, as `meshguard authz` runs it.
func (m *mesh) startAuthz(ctx context.Context) error {
	svid, err := m.ids.X509(authzID)
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	met := metrics.New(reg)
	m.engine = &policies.Engine{}
	m.loader = loader.New(m.engine, m.o.Log, met)
	if err := m.loader.Apply("demo", loader.Update{Bundle: m.bundle, Origin: "demo"}); err != nil {
		return fmt.Errorf("demo: authz: %w", err)
	}
	res, err := identity.New(identity.Config{Bundles: m.ids.Bundles(), JWTAudiences: []string{jwtAudience}})
	if err != nil {
		return fmt.Errorf("demo: authz identity: %w", err)
	}
	m.dlog = newDecisionMemo(4096)
	// The support tool's refunds carry a ticket header a payments rule
	// reads: recorded, so that policy replay can decide them again.
	dl, err := decisionlog.New(decisionlog.Config{W: io.MultiWriter(m.dlog, &m.rec.log), AllowSampleRate: 1, Headers: []string{"x-ticket-id"}})
	if err != nil {
		return fmt.Errorf("demo: decision log: %w", err)
	}
	m.decisions = dl
	if err := m.startShipper(svid); err != nil {
		return fmt.Errorf("demo: decision shipping: %w", err)
	}
	srv, err := server.New(server.Config{Engine: m.engine, Identity: res, Log: m.o.Log, Metrics: met, DecisionLog: dl, Ship: m.rec.ship})
	if err != nil {
		return fmt.Errorf("demo: authz: %w", err)
	}
	auth, err := server.Callers{TrustDomains: []spiffeid.TrustDomain{trustDomain}}.Authorizer()
	if err != nil {
		return err
	}
	opts := append(srv.GRPCServerOptions(), grpc.Creds(grpccredentials.MTLSServerCredentials(svid, m.ids.Bundles(), auth)))
	m.grpc = grpc.NewServer(opts...)
	srv.Register(m.grpc)
	srv.MarkReady()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("demo: authz listen: %w", err)
	}
	m.authz = l.Addr().String()
	go func() { _ = m.grpc.Serve(l) }()
	m.ui.Info("authz server: gRPC ext_authz with mTLS on %s as %s", m.authz, authzID)
	return nil
}

// controlPlaneID and operatorID are the control plane's identity and the
// operator who releases the quarantine in the demo.
var (
	controlPlaneID = spiffeid.RequireFromPath(trustDomain, "/ns/meshguard/sa/controlplane")
	operatorID     = spiffeid.RequireFromPath(trustDomain, "/ns/secops/sa/oncall")
)

// startControlPlane runs the control plane's policy store, quarantine
// manager and event endpoint in process, as `meshguard controlplane` wires
// them: filters POST their events over mTLS; anomalies whose profile
// response is quarantine (or enough block-level ones) quarantine the
// identity, which is a new bundle version for every filter and the authz
// server.
func (m *mesh) startControlPlane() error {
	if err := m.startRecords(); err != nil {
		return fmt.Errorf("demo: record store: %w", err)
	}
	st, err := store.New(store.Options{Logger: m.o.Log, Observer: m.policyChanged,
		Check: func(b *policies.Bundle) error { _, err := policies.Compile(b); return err }})
	if err != nil {
		return fmt.Errorf("demo: control plane: %w", err)
	}
	m.store = st
	if err := st.SetSource("files", m.set); err != nil {
		return fmt.Errorf("demo: policies: %w", err)
	}
	m.bundle = st.Bundle()
	// The quarantines live in a state store like the controlplane
	// command's; the demo's is a database in a temporary directory,
	// removed when the demo ends.
	dir, err := os.MkdirTemp("", "meshguard-demo-state-")
	if err != nil {
		return fmt.Errorf("demo: state directory: %w", err)
	}
	m.stateDir = dir
	if m.state, err = disk.Open(dir, disk.Options{Logger: m.o.Log}); err != nil {
		return fmt.Errorf("demo: state store: %w", err)
	}
	qm, err := quarantine.New(quarantine.Options{
		Store: m.state,
		Sink:  st,
		Profiles: func() []policies.AnomalyProfile {
			if b := st.Bundle(); b != nil {
				return b.Set.AnomalyProfiles
			}
			return nil
		},
		Namespace:       policies.DefaultRootNamespace,
		DefaultDuration: 15 * time.Minute,
		// Quarantine after two block-level detections within a minute (the
		// controlplane command's --quarantine-threshold, default 5), so
		// that the attack is contained within the demo's short run.
		Threshold: quarantine.Threshold{Events: 2, Window: time.Minute},
		Protected: []spiffeid.ID{authzID, controlPlaneID},
		Logger:    m.o.Log,
		Observer:  m.quarantineChanged,
	})
	if err != nil {
		return fmt.Errorf("demo: quarantine manager: %w", err)
	}
	m.qm = qm
	if err := qm.Load(context.Background()); err != nil {
		return fmt.Errorf("demo: quarantine manager: %w", err)
	}
	// The sidecars' filters report; each only about its own traffic.
	var reporting []api.ReportingWorkload
	for _, w := range demoWorkloads {
		if len(w.Routes) > 0 {
			reporting = append(reporting, api.ReportingWorkload{ID: w.id(trustDomain), Namespace: w.Namespace, Service: w.Name})
		}
	}
	reporters, err := api.NewReporters(reporting, nil)
	if err != nil {
		return fmt.Errorf("demo: reporters: %w", err)
	}
	var observers []api.EventObserver
	var decObservers []api.DecisionObserver
	if m.o.Console {
		if m.console, err = m.startConsole(m.o.ConsoleAddr); err != nil {
			return err
		}
		observers = append(observers, m.console.c)
		decObservers = append(decObservers, m.console.c)
	}
	handler, err := api.New(api.Options{Quarantine: qm, Learner: learn.New(0, nil), TrustDomain: trustDomain,
		Reporters: reporters, Admins: []spiffeid.ID{operatorID}, Observers: observers, DecisionObservers: decObservers, Logger: m.o.Log,
		Records: m.rec.store, Forensics: m.rec.store})
	if err != nil {
		return fmt.Errorf("demo: control plane API: %w", err)
	}
	svid, err := m.ids.X509(controlPlaneID)
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("demo: control plane listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/", handler)
	mux.HandleFunc("POST "+wire.EventsPath, func(w http.ResponseWriter, r *http.Request) {
		// Show the batch, then hand it to the control plane's endpoint.
		body, err := io.ReadAll(io.LimitReader(r.Body, api.MaxBatchBytes+1))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if batch, err := api.DecodeBatch(body); err == nil {
			m.onEvents(batch)
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		handler.ServeHTTP(w, r)
	})
	m.events = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second,
		TLSConfig: tlsconfig.MTLSServerConfig(svid, m.ids.Bundles(), tlsconfig.AuthorizeMemberOf(trustDomain))}
	go func() { _ = m.events.ServeTLS(l, "", "") }()
	m.eventsAddr = l.Addr().String()
	m.ui.Info("control plane: policy store, quarantine manager and event endpoint (mTLS) on %s as %s", l.Addr(), controlPlaneID)
	if m.console != nil {
		m.ui.Info("console: open %s (operator); read-only viewer token: %s", m.console.LoginURL(), m.console.viewer)
	}
	return nil
}

// onEvents shows what the filters detected: anomalies, and edges of the
// service graph that the traffic baseline does not list (lateral movement).
func (m *mesh) onEvents(b *wire.EventBatch) {
	for _, e := range b.Events {
		var why string
		switch {
		case e.Kind == wire.EventAnomaly:
			why = fmt.Sprintf("%s anomaly, response %s", e.Detector, orDash(e.Response))
		case e.Kind == wire.EventEdge && strings.Contains(e.Detail, "unknown"):
			// Filters report an unknown edge once per window; show each once.
			key := e.Source + "|" + e.Destination + "|" + e.Route
			m.mu.Lock()
			seen := m.detected[key]
			m.detected[key] = true
			m.mu.Unlock()
			if seen {
				continue
			}
			why = "lateral movement: edge not in the traffic baseline (" + e.Detail + ")"
			if e.Source == b.Reporter {
				why += ", seen by its own sidecar"
			}
		default:
			continue
		}
		if e.Detail != "" && e.Kind == wire.EventAnomaly {
			why += " · " + e.Detail
		}
		if e.Kind == wire.EventAnomaly && e.Source == b.Reporter {
			why += " · seen by its own sidecar (outbound)"
		}
		d := Detection{Detector: e.Detector, Source: e.Source, Destination: e.Destination, Response: e.Response, Detail: e.Detail}
		m.mu.Lock()
		m.sum.Detections = append(m.sum.Detections, d)
		m.mu.Unlock()
		what := e.Method + " route " + e.Route
		dest := e.Destination
		if dest == "" {
			dest = b.Reporter // the filter reports about traffic to its own workload
		}
		m.ui.Line(KindDetect, m.name(e.Source)+" → "+m.nameOrHost(dest), what, why)
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// startNodes starts every workload's application and, for those with
// routes, an Envoy-emulating proxy configured by the control plane over ADS
// (in process, on loopback, with mTLS): the listeners, routes, clusters,
// ext_authz settings and the wasm filter are what the control plane
// generates from the demo's mesh description.
func (m *mesh) startNodes(ctx context.Context) error {
	m.wasmCache = newWasmCache()
	compileStart := time.Now()
	for _, w := range demoWorkloads {
		id := w.id(trustDomain)
		svids, err := m.ids.X509(id)
		if err != nil {
			return err
		}
		n := &node{spec: w, id: id, svids: svids}
		m.nodes[w.Name] = n
		m.byID[id] = w.Name
		if len(w.Routes) == 0 {
			continue
		}
		app, appURL, err := startApp(w.Name)
		if err != nil {
			return err
		}
		n.app = app
		p, _ := strconv.ParseUint(appURL.Port(), 10, 16)
		n.appPort = uint32(p)
		if n.inboundPort, err = freePort(); err != nil {
			return err
		}
		n.outPorts, n.outbound = map[string]uint32{}, map[string]string{}
		for _, u := range w.Upstreams {
			if n.outPorts[u], err = freePort(); err != nil {
				return err
			}
		}
	}
	if err := m.startXDS(); err != nil {
		return err
	}
	for _, w := range demoWorkloads {
		n := m.nodes[w.Name]
		if len(w.Routes) == 0 {
			continue
		}
		cc, err := grpc.NewClient(m.xdsAddr, grpc.WithTransportCredentials(
			grpccredentials.MTLSClientCredentials(n.svids, m.ids.Bundles(), tlsconfig.AuthorizeID(controlPlaneID))))
		if err != nil {
			return fmt.Errorf("demo: %s: %w", w.Name, err)
		}
		n.closers = append(n.closers, func() { _ = cc.Close() })
		px, err := envoyemu.Start(ctx, envoyemu.Config{
			Node: &corev3.Node{Id: w.Name + "-demo", Cluster: w.Name + "." + w.Namespace},
			XDS:  cc, SVIDs: n.svids, Bundles: m.ids.Bundles(), BindHost: "127.0.0.1",
			Wasm: envoyemu.WasmOptions{CompilationCache: m.wasmCache}, Name: w.Name,
			OnOutcome: m.onOutcome, Logger: m.o.Log,
		})
		if err != nil {
			return fmt.Errorf("demo: %s: %w", w.Name, err)
		}
		n.proxy = px
		// One at a time: the first compiles the module, the others find
		// it in the compilation cache. The first compile takes seconds,
		// minutes on a loaded machine under the race detector.
		rctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
		err = n.proxy.Ready(rctx)
		cancel()
		if err != nil {
			return fmt.Errorf("demo: %w", err)
		}
		addr, ok := n.proxy.Listener("inbound_http")
		if !ok {
			return fmt.Errorf("demo: %s: the control plane gave no inbound listener", w.Name)
		}
		n.inbound = addr
		for _, u := range w.Upstreams {
			if n.outbound[u], ok = n.proxy.Listener("outbound_" + u); !ok {
				return fmt.Errorf("demo: %s: the control plane gave no outbound listener to %s", w.Name, u)
			}
		}
	}
	m.ui.Info("wasm filter: %d KiB module compiled and started in %d sidecars in %v", len(m.o.Wasm)/1024, len(m.nodes)-3, time.Since(compileStart).Round(10*time.Millisecond))
	m.ui.Info("workloads: %d sidecars (Envoy emulated, configured by the control plane over ADS: mTLS, wasm filter in wazero via ECDS, ext_authz) + 3 clients", len(m.nodes)-3)
	return nil
}

// startXDS runs the control plane's xDS server in process: the demo mesh's
// description and the current bundle in, every sidecar's configuration out,
// on a loopback gRPC listener with mTLS as `meshguard controlplane` serves
// it. The wasm module is written to a file, which the generated filter
// configuration names and the sidecars load, as Envoy would.
func (m *mesh) startXDS() error {
	f, err := os.CreateTemp("", "meshguard-demo-*.wasm")
	if err != nil {
		return fmt.Errorf("demo: wasm module: %w", err)
	}
	m.wasmFile = f.Name()
	_, err = f.Write(m.o.Wasm)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("demo: wasm module: %w", err)
	}
	desc, err := meshDescription(m.authz, m.eventsAddr, m.wasmFile, m.nodes)
	if err != nil {
		return fmt.Errorf("demo: mesh description: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	m.xdsStop = cancel
	xs, err := xdsserver.New(ctx, xdsserver.Options{Mesh: desc, Logger: m.o.Log, Registerer: prometheus.NewRegistry()})
	if err != nil {
		return fmt.Errorf("demo: xDS server: %w", err)
	}
	m.xds = xs
	if err := xs.Publish(m.bundle); err != nil {
		return fmt.Errorf("demo: xDS: %w", err)
	}
	svid, err := m.ids.X509(controlPlaneID)
	if err != nil {
		return err
	}
	m.xdsGRPC = grpc.NewServer(grpc.Creds(grpccredentials.MTLSServerCredentials(svid, m.ids.Bundles(), tlsconfig.AuthorizeMemberOf(trustDomain))))
	xs.Register(m.xdsGRPC)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("demo: xDS listen: %w", err)
	}
	m.xdsAddr = l.Addr().String()
	go func() { _ = m.xdsGRPC.Serve(l) }()
	m.ui.Info("control plane: xDS (ADS) on %s for %d sidecars, generated from the mesh description", m.xdsAddr, len(desc.Workloads))
	return nil
}

// freePort is a loopback port free now, for a listener the control plane
// will configure.
func freePort() (uint32, error) {
	p, err := freeport.Port()
	return uint32(p), err
}

// publish sends a new bundle to the authz server and, through the xDS
// server, to every sidecar's filter (ECDS).
func (m *mesh) publish(b *policies.Bundle) error {
	var errs []error
	if err := m.loader.Apply("demo", loader.Update{Bundle: b, Origin: "demo"}); err != nil {
		errs = append(errs, err)
	}
	if err := m.xds.Publish(b); err != nil {
		errs = append(errs, err)
	}
	m.mu.Lock()
	prev := m.bundle
	m.bundle = b
	m.mu.Unlock()
	m.showQuarantineChanges(prev, b)
	return errors.Join(errs...)
}

func (m *mesh) name(id string) string {
	if sid, err := spiffeid.FromString(id); err == nil {
		if n, ok := m.byID[sid]; ok {
			return n
		}
	}
	if id == "" {
		return "?"
	}
	return id
}

func (m *mesh) nameOrHost(s string) string {
	for _, w := range demoWorkloads {
		if s == w.Service() || s == w.Name {
			return w.Name
		}
	}
	return m.name(s)
}

func (m *mesh) stop() {
	if m.unsub != nil {
		m.unsub()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	for _, n := range m.nodes {
		n.close(ctx)
	}
	if m.grpc != nil {
		m.grpc.Stop()
	}
	if m.decisions != nil {
		_ = m.decisions.Close(ctx)
	}
	if m.xdsGRPC != nil {
		m.xdsGRPC.Stop()
	}
	if m.xdsStop != nil {
		m.xdsStop()
	}
	if m.wasmFile != "" {
		_ = os.Remove(m.wasmFile)
	}
	if m.events != nil {
		_ = m.events.Close()
	}
	if m.console != nil {
		m.console.close()
	}
	m.stopRecords()
	if m.ids != nil {
		_ = m.ids.Close()
	}
	if m.wasmCache != nil {
		_ = m.wasmCache.Close(context.Background())
	}
	if m.qm != nil {
		m.qm.Close()
	}
	if m.state != nil {
		_ = m.state.Close()
	}
	if m.stateDir != "" {
		_ = os.RemoveAll(m.stateDir)
	}
}

// newWasmCache returns a compilation cache kept in the user's cache
// directory, so that a second run starts in a fraction of the first's time;
// in memory only when that directory is not usable.
func newWasmCache() wazero.CompilationCache {
	if dir, err := os.UserCacheDir(); err == nil {
		if c, err := wazero.NewCompilationCacheWithDir(filepath.Join(dir, "meshguard", "wazero")); err == nil {
			return c
		}
	}
	return wazero.NewCompilationCache()
}

// showQuarantineChanges prints the quarantines a new bundle adds or removes.
func (m *mesh) showQuarantineChanges(prev, cur *policies.Bundle) {
	before := map[string]policies.QuarantineSpec{}
	if prev != nil {
		for _, q := range prev.Set.Quarantines {
			before[q.Spec.Identity] = q.Spec
		}
	}
	after := map[string]policies.QuarantineSpec{}
	for _, q := range cur.Set.Quarantines {
		after[q.Spec.Identity] = q.Spec
	}
	for id, q := range after {
		if _, ok := before[id]; ok {
			continue
		}
		m.mu.Lock()
		m.sum.Quarantined = append(m.sum.Quarantined, id)
		m.mu.Unlock()
		m.ui.Line(KindQuarantine, m.name(id), "mesh-wide, bundle "+cur.Version, truncate(q.Reason, 120))
	}
	for id := range before {
		if _, ok := after[id]; ok {
			continue
		}
		m.mu.Lock()
		m.sum.Released = append(m.sum.Released, id)
		m.mu.Unlock()
		m.ui.Line(KindRelease, m.name(id), "bundle "+cur.Version, "quarantine lifted")
	}
}
