package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	"github.com/meshguard/meshguard/controlplane/api"
	"github.com/meshguard/meshguard/controlplane/bundlefeed"
	"github.com/meshguard/meshguard/controlplane/console"
	"github.com/meshguard/meshguard/controlplane/learn"
	"github.com/meshguard/meshguard/controlplane/mesh"
	"github.com/meshguard/meshguard/controlplane/quarantine"
	"github.com/meshguard/meshguard/controlplane/state/disk"
	statekube "github.com/meshguard/meshguard/controlplane/state/kube"
	"github.com/meshguard/meshguard/controlplane/store"
	"github.com/meshguard/meshguard/controlplane/xdsserver"
	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/policyfile"
	"github.com/meshguard/meshguard/policies/source"
	"github.com/meshguard/meshguard/policies/wire"
)

// spiffeFlags select where an SVID and trust bundle come from: the SPIFFE
// Workload API, files, or nothing (plaintext, local use only).
type spiffeFlags struct {
	socket      string
	certFile    string
	keyFile     string
	bundleFile  string
	trustDomain string
	insecure    bool
}

func (f *spiffeFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.socket, "spiffe-socket", "", "SPIFFE Workload API socket (unix:///run/spire/sockets/agent.sock); default $SPIFFE_ENDPOINT_SOCKET")
	fl.StringVar(&f.certFile, "svid-cert", "", "X509-SVID certificate chain (PEM) instead of the Workload API")
	fl.StringVar(&f.keyFile, "svid-key", "", "X509-SVID private key (PEM), with --svid-cert")
	fl.StringVar(&f.bundleFile, "trust-bundle", "", "trust bundle (PEM), with --svid-cert")
	fl.StringVar(&f.trustDomain, "trust-domain", "", "trust domain of the mesh (default: the SVID's)")
	fl.BoolVar(&f.insecure, "insecure-plaintext", false, "serve and call without TLS or authentication (LOCAL TESTING ONLY)")
}

// sources returns the SVID and bundle sources and the trust domain; close
// releases a Workload API client.
func (f *spiffeFlags) sources(ctx context.Context) (x509svid.Source, x509bundle.Source, spiffeid.TrustDomain, func(), error) {
	noop := func() {}
	var svidSrc x509svid.Source
	var bundleSrc x509bundle.Source
	var td spiffeid.TrustDomain
	closeFn := noop
	switch {
	case f.certFile != "" || f.keyFile != "" || f.bundleFile != "":
		if f.certFile == "" || f.keyFile == "" || f.bundleFile == "" {
			return nil, nil, td, noop, errors.New("--svid-cert, --svid-key and --trust-bundle go together")
		}
		svid, err := x509svid.Load(f.certFile, f.keyFile)
		if err != nil {
			return nil, nil, td, noop, fmt.Errorf("load SVID: %w", err)
		}
		td = svid.ID.TrustDomain()
		if f.trustDomain != "" {
			if td, err = spiffeid.TrustDomainFromString(f.trustDomain); err != nil {
				return nil, nil, td, noop, fmt.Errorf("--trust-domain: %w", err)
			}
		}
		b, err := x509bundle.Load(td, f.bundleFile)
		if err != nil {
			return nil, nil, td, noop, fmt.Errorf("load trust bundle: %w", err)
		}
		svidSrc, bundleSrc = svid, b
	default:
		var opts []workloadapi.X509SourceOption
		if f.socket != "" {
			opts = append(opts, workloadapi.WithClientOptions(workloadapi.WithAddr(f.socket)))
		}
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		src, err := workloadapi.NewX509Source(wctx, opts...)
		if err != nil {
			return nil, nil, td, noop, fmt.Errorf("SPIFFE Workload API (use --spiffe-socket, --svid-cert or --insecure-plaintext): %w", err)
		}
		svid, err := src.GetX509SVID()
		if err != nil {
			_ = src.Close()
			return nil, nil, td, noop, fmt.Errorf("SPIFFE Workload API: %w", err)
		}
		td = svid.ID.TrustDomain()
		if f.trustDomain != "" {
			if td, err = spiffeid.TrustDomainFromString(f.trustDomain); err != nil {
				_ = src.Close()
				return nil, nil, td, noop, fmt.Errorf("--trust-domain: %w", err)
			}
		}
		svidSrc, bundleSrc = src, src
		closeFn = func() { _ = src.Close() }
	}
	return svidSrc, bundleSrc, td, closeFn, nil
}

func warnInsecure(w io.Writer, what string) {
	fmt.Fprintf(w, `
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
!! WARNING: --insecure-plaintext: %s without TLS and without
!! authentication. Anyone who can reach it can read the policy bundle, post
!! events that quarantine identities and release quarantines. Local testing
!! only; never in a real mesh.
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!

`, what)
}

type controlPlaneFlags struct {
	xdsAddr, httpAddr, metricsAddr string
	meshFile                       string
	policyPaths                    []string
	reload                         time.Duration
	policySettle                   time.Duration
	policyAllowEmpty               bool
	bundleHeartbeat                time.Duration
	admins                         []string
	protected                      []string
	auditLog                       string
	stateDir                       string
	stateRetention                 time.Duration
	baselineFlush                  time.Duration
	reporters                      []string
	rootNamespace                  string
	quarantineFor                  time.Duration
	thresholdEvents                int
	thresholdWindow                time.Duration
	logLevel                       string
	memoryLimitMiB                 int64
	spiffe                         spiffeFlags
	kube                           kubeFlags
	console                        consoleFlags
	records                        recordFlags
}

// recordFlags configure the record store and the OTLP log export.
type recordFlags struct {
	path         string
	maxAge       time.Duration
	maxMiB       int64
	otlpEndpoint string
	otlpInsecure bool
	// filterAllowSample is the fraction of filters' reports of allowed
	// requests kept as records.
	filterAllowSample float64
}

// defaultRecordsPath is where the record store lives unless --records says:
// $STATE_DIRECTORY (systemd), else $XDG_STATE_HOME/meshguard, else
// ~/.local/state/meshguard.
func defaultRecordsPath() string {
	if d := os.Getenv("STATE_DIRECTORY"); d != "" {
		return filepath.Join(strings.Split(d, ":")[0], "records.db")
	}
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "meshguard", "records.db")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".local", "state", "meshguard", "records.db")
	}
	return "meshguard-records.db"
}

func newControlPlaneCmd() *cobra.Command {
	var f controlPlaneFlags
	cmd := &cobra.Command{
		Use:   "controlplane",
		Short: "Run the xDS control plane, policy distribution and the quarantine loop",
		Long: `controlplane serves Envoy configuration and the policy bundle over ADS
(state of the world and delta), serves the bundle over HTTPS to wasm
filters that fetch it (Istio WasmPlugins, ` + wire.BundlePath + `, long poll),
accepts detection and edge events from wasm filters and authz servers, and
quarantines identities mesh-wide according to the anomaly profiles.

Quarantines (with their evidence and the history of every change) and the
learned traffic baselines are kept in a store every replica shares and
that survives restarts: with --kubernetes, meshguard's QuarantineRecord
and LearnedBaseline resources in --state-namespace; otherwise a bbolt
database in --state-dir. Nothing is served before the store is read.

Policies come from --policy files and directories (re-read every --reload);
a set that does not validate or compile is rejected and the last good bundle
keeps serving. Files are read once per poll and applied once settled and
complete: an emptied or cut-off file, or a set that leaves a namespace
without documents, is refused (unless --policy-allow-empty). With --kubernetes the control plane also watches Istio
AuthorizationPolicies and RequestAuthentications and meshguard's kinds in
the cluster (store source "kubernetes"; an object that fails validation is
reported and, where leaving it out could open access, replaced by a DENY of
its scope) and serves nothing until the first set from the cluster is
accepted. The mesh description (--mesh) lists the plain-Envoy workloads
and proxyless gRPC servers to generate configuration for; without it only
the bundle is served (authz servers).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := f.kube.validate(cmd); err != nil {
				return err
			}
			if f.kube.enabled && cmd.Flags().Changed("state-dir") {
				return errors.New("--state-dir is the embedded store's; with --kubernetes the state lives in the cluster (--state-namespace)")
			}
			return runControlPlane(cmd.Context(), cmd.ErrOrStderr(), &f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.xdsAddr, "xds-addr", ":18000", "address of the xDS (ADS) gRPC server")
	fl.StringVar(&f.httpAddr, "http-addr", ":8443", "address of the events endpoint, the bundle endpoint of filters that fetch it (Istio WasmPlugins) and the admin API")
	fl.StringVar(&f.metricsAddr, "metrics-addr", ":9090", "address of /metrics, /healthz and /readyz (plain HTTP)")
	fl.StringVar(&f.meshFile, "mesh", "", "mesh description (YAML) of plain-Envoy and proxyless gRPC workloads")
	fl.StringSliceVar(&f.policyPaths, "policy", nil, "policy file or directory (repeatable)")
	fl.DurationVar(&f.reload, "reload", 5*time.Second, "how often to re-read --policy paths (0: never)")
	fl.DurationVar(&f.policySettle, "policy-settle", 300*time.Millisecond, "a change to --policy applies once the files have stayed unchanged this long (a file being written is not read half-way)")
	fl.BoolVar(&f.policyAllowEmpty, "policy-allow-empty", false, "accept --policy files without documents, and sets that leave a namespace without any document where the served set had some")
	fl.DurationVar(&f.bundleHeartbeat, "bundle-heartbeat", 10*time.Second, "send subscribers that declare envoy.config.supports-resource-ttl (authz servers) the bundle with a TTL of three heartbeats and a heartbeat this often, so that they tell an idle control plane from a lost one (0: off)")
	fl.StringSliceVar(&f.admins, "admin-id", nil, "SPIFFE ID allowed to use the admin API (repeatable)")
	fl.StringSliceVar(&f.protected, "protected-id", nil, "SPIFFE ID never quarantined by events (repeatable)")
	fl.StringVar(&f.auditLog, "audit-log", "", "also append this replica's quarantine changes (JSON lines) to this file")
	fl.StringVar(&f.stateDir, "state-dir", "", "directory of the embedded state store (quarantines, learned baselines) when not --kubernetes (default: $STATE_DIRECTORY, else $XDG_STATE_HOME/meshguard, else ~/.local/state/meshguard)")
	fl.DurationVar(&f.stateRetention, "state-retention", 30*24*time.Hour, "how long released and expired quarantine records, with their history, are kept")
	fl.DurationVar(&f.baselineFlush, "baseline-flush", 10*time.Second, "how often learned edges are written to the state store")
	fl.StringSliceVar(&f.reporters, "reporter-id", nil, "SPIFFE ID pattern of data-plane components that may post events besides the --mesh workloads, e.g. spiffe://cluster.local/ns/*/sa/* for Istio sidecars (repeatable)")
	fl.StringVar(&f.rootNamespace, "root-namespace", policies.DefaultRootNamespace, "namespace of mesh-wide documents (quarantines)")
	fl.DurationVar(&f.quarantineFor, "quarantine-for", 15*time.Minute, "quarantine duration when the anomaly profile sets none")
	fl.IntVar(&f.thresholdEvents, "quarantine-threshold", 5, "quarantine after this many block-level reports about one identity within --quarantine-window, from any sidecar to any replica (0: off)")
	fl.DurationVar(&f.thresholdWindow, "quarantine-window", time.Minute, "window of --quarantine-threshold")
	fl.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fl.Int64Var(&f.memoryLimitMiB, "memory-limit-mib", 0, "Go soft memory limit in MiB (like GOMEMLIMIT; set it ~10% under the container limit; 0: GOMEMLIMIT or none)")
	fl.StringVar(&f.records.path, "records", defaultRecordsPath(), "SQLite record store of decisions, detections, quarantines, releases and policy changes (meshguard events, meshguard incident, policy replay --store); \"off\" keeps none")
	fl.DurationVar(&f.records.maxAge, "records-max-age", 7*24*time.Hour, "records older than this are deleted (0: no limit by age)")
	fl.Int64Var(&f.records.maxMiB, "records-max-mib", 1024, "the record store's size limit in MiB, oldest records deleted first (0: no limit by size)")
	fl.StringVar(&f.records.otlpEndpoint, "otlp-logs-endpoint", "", "also export every record as an OpenTelemetry log over OTLP/gRPC to this collector (host:port); empty: off")
	fl.BoolVar(&f.records.otlpInsecure, "otlp-logs-insecure", false, "OTLP export without TLS (a collector on localhost or in the same pod)")
	fl.Float64Var(&f.records.filterAllowSample, "records-filter-allow-sample", 0, "fraction, 0 to 1, of the wasm filters' reports of allowed requests (each counts one caller's allowed requests on a route over 5 s) kept as records; their denials and dry-run would-denies are always kept")
	f.spiffe.register(cmd)
	f.kube.register(cmd)
	f.console.register(cmd)
	return cmd
}

func runControlPlane(ctx context.Context, stderr io.Writer, f *controlPlaneFlags) error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(f.logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	logOut, err := asyncStderr(stderr, reg, "controlplane")
	if err != nil {
		return err
	}
	defer closeWithin(logOut, 2*time.Second)
	log := slog.New(slog.NewJSONHandler(logOut, &slog.HandlerOptions{Level: level}))
	if f.memoryLimitMiB < 0 {
		return errors.New("--memory-limit-mib must not be negative")
	}
	if f.memoryLimitMiB > 0 {
		debug.SetMemoryLimit(f.memoryLimitMiB << 20)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	rec, err := startRecords(ctx, &f.records, log, reg)
	if err != nil {
		return err
	}
	defer rec.stop()

	var m *mesh.Mesh
	if f.meshFile != "" {
		var err error
		if m, err = mesh.Load(f.meshFile); err != nil {
			return err
		}
	}
	st, err := store.New(store.Options{
		Logger: log, Registerer: reg,
		Check:    func(b *policies.Bundle) error { _, err := policies.Compile(b); return err },
		Observer: rec.policyChanged,
	})
	if err != nil {
		return err
	}
	xs, err := xdsserver.New(ctx, xdsserver.Options{Mesh: m, Logger: log, Registerer: reg, BundleHeartbeat: f.bundleHeartbeat})
	if err != nil {
		return err
	}
	defer st.Subscribe(func(b *policies.Bundle) { _ = xs.Publish(b) })()

	// Policies first, so that nothing is served before a good bundle exists.
	files := newCPPolicyFiles(f.policyPaths, f.policySettle, f.policyAllowEmpty)
	if err := files.first(ctx, st); err != nil {
		return err
	}
	// Then the cluster's: serving a bundle without the cluster's DENY
	// policies would open access, so wait for the first accepted set.
	// The state store is read meanwhile.
	var kw *kubeWatch
	type opened struct {
		st    stateStore
		close func()
		err   error
	}
	stateC := make(chan opened, 1)
	if f.kube.enabled {
		if err := f.kube.validate(nil); err != nil {
			return err
		}
		if kw, err = startKube(ctx, &f.kube, st, log, reg); err != nil {
			return err
		}
		defer kw.stop()
		defer cancel() // runs before kw.stop
		go func() {
			s, c, err := openState(ctx, f, kw, log, reg)
			stateC <- opened{s, c, err}
		}()
		log.Info("waiting for the first policy set from Kubernetes")
		if err := kw.wait(ctx); err != nil {
			cancel()
			if o := <-stateC; o.err == nil {
				o.close()
			}
			return fmt.Errorf("kubernetes: no policy set accepted: %w", err)
		}
	} else {
		s, c, err := openState(ctx, f, kw, log, reg)
		stateC <- opened{s, c, err}
	}
	o := <-stateC
	if o.err != nil {
		return o.err
	}
	stateStore := o.st
	defer o.close()
	replica := replicaName()

	var (
		grpcOpts  []grpc.ServerOption
		httpTLS   *tls.Config
		td        spiffeid.TrustDomain
		adminIDs  []spiffeid.ID
		protected []spiffeid.ID
	)
	for _, s := range f.admins {
		id, err := spiffeid.FromString(s)
		if err != nil {
			return fmt.Errorf("--admin-id %q: %w", s, err)
		}
		adminIDs = append(adminIDs, id)
	}
	for _, s := range f.protected {
		id, err := spiffeid.FromString(s)
		if err != nil {
			return fmt.Errorf("--protected-id %q: %w", s, err)
		}
		protected = append(protected, id)
	}
	if f.spiffe.insecure {
		warnInsecure(stderr, "the xDS server, the events endpoint and the admin API run")
	} else {
		svids, bundles, trust, closeSrc, err := f.spiffe.sources(ctx)
		if err != nil {
			return err
		}
		defer closeSrc()
		td = trust
		// Every node of the mesh may fetch config and post events; the
		// admin API checks its own allow-list on top.
		authorizer := tlsconfig.AuthorizeMemberOf(td)
		grpcOpts = append(grpcOpts, grpc.Creds(credentials.NewTLS(tlsconfig.MTLSServerConfig(svids, bundles, authorizer))))
		httpTLS = tlsconfig.MTLSServerConfig(svids, bundles, authorizer)
		if f.console.enabled {
			// Browsers reach the console through a port-forward with a
			// token and no client certificate; a certificate that is
			// given is still verified, and the events endpoint and the
			// admin API still refuse callers without one.
			httpTLS = console.ServerTLSConfig(svids, bundles, authorizer)
		}
		if len(adminIDs) == 0 {
			log.Warn("no --admin-id: the admin API refuses every caller")
		}
	}
	grpcOpts = append(grpcOpts,
		grpc.MaxConcurrentStreams(1<<16),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		// Subscribers ping every 10s at the most (gRPC's client floor;
		// authz's --control-plane-keepalive): allow that with a margin,
		// or a timer firing a little early would cost them the stream.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
	)

	var audit io.Writer
	if f.auditLog != "" {
		af, err := os.OpenFile(f.auditLog, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
		if err != nil {
			return fmt.Errorf("--audit-log: %w", err)
		}
		defer af.Close()
		audit = af
	}
	var leading func() bool
	if kw != nil && f.kube.leaderElection {
		leading = kw.leading.Load
	}
	qm, err := quarantine.New(quarantine.Options{
		Store: stateStore,
		Sink:  st,
		Profiles: func() []policies.AnomalyProfile {
			if b := st.Bundle(); b != nil {
				return b.Set.AnomalyProfiles
			}
			return nil
		},
		Namespace:       f.rootNamespace,
		DefaultDuration: f.quarantineFor,
		Threshold:       quarantine.Threshold{Events: f.thresholdEvents, Window: f.thresholdWindow},
		Protected:       protected,
		Audit:           audit,
		Logger:          log,
		Registerer:      reg,
		Replica:         replica,
		Leading:         leading,
		Retention:       f.stateRetention,
		Observer:        rec.quarantineChanged,
	})
	if err != nil {
		return err
	}
	defer qm.Close()
	// The quarantines are in the bundle before anything is served.
	if err := qm.Load(ctx); err != nil {
		return err
	}
	learner, err := learn.NewWithOptions(learn.Options{Store: stateStore, Logger: log, Registerer: reg})
	if err != nil {
		return err
	}
	reporters, err := reportersOf(m, f.reporters)
	if err != nil {
		return err
	}
	if reporters.Empty() && !f.spiffe.insecure {
		log.Warn("no data-plane components known (no --mesh workloads, no --reporter-id): every event batch is refused")
	}
	var observers []api.EventObserver
	var decObservers []api.DecisionObserver
	var cons *console.Console
	if f.console.enabled {
		deps := consoleDeps{qm: qm, st: st, mesh: m, operators: adminIDs, log: log, reg: reg, insecure: f.spiffe.insecure}
		if rec.store != nil {
			deps.timeline = rec.store
		}
		if cons, err = f.console.build(deps); err != nil {
			return err
		}
		observers = append(observers, cons)
		decObservers = append(decObservers, cons)
		defer st.Subscribe(cons.BundleChanged)()
	}
	apiHandler, err := api.New(api.Options{
		Quarantine: qm, Learner: learner, TrustDomain: td, Admins: adminIDs, Reporters: reporters,
		Observers: observers, DecisionObservers: decObservers,
		Insecure: f.spiffe.insecure, Logger: log, Registerer: reg,
		Records: rec.sink(), Forensics: rec.forensics(), RecordAllowSample: f.records.filterAllowSample,
	})
	if err != nil {
		return err
	}
	var handler http.Handler = apiHandler
	if cons != nil {
		mux := http.NewServeMux()
		mux.Handle(console.Path, cons)
		mux.Handle("/", apiHandler)
		handler = mux
	}

	// The bundle for filters that fetch it (Istio WasmPlugins), next to
	// the events endpoint and the admin API.
	feed, err := bundlefeed.New(bundlefeed.Options{TrustDomain: td, Insecure: f.spiffe.insecure, Logger: log, Registerer: reg})
	if err != nil {
		return err
	}
	defer st.Subscribe(feed.Publish)()
	apiMux := http.NewServeMux()
	apiMux.Handle(wire.BundlePath, feed)
	apiMux.Handle("/", handler)

	gs := grpc.NewServer(grpcOpts...)
	xs.Register(gs)
	xdsLis, err := net.Listen("tcp", f.xdsAddr)
	if err != nil {
		return fmt.Errorf("--xds-addr: %w", err)
	}
	httpLis, err := net.Listen("tcp", f.httpAddr)
	if err != nil {
		_ = xdsLis.Close()
		return fmt.Errorf("--http-addr: %w", err)
	}
	metricsLis, err := net.Listen("tcp", f.metricsAddr)
	if err != nil {
		_ = xdsLis.Close()
		_ = httpLis.Close()
		return fmt.Errorf("--metrics-addr: %w", err)
	}
	apiSrv := &http.Server{Handler: apiMux, TLSConfig: httpTLS, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second, MaxHeaderBytes: 64 << 10}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if st.Bundle() == nil {
			http.Error(w, "no policy bundle yet", http.StatusServiceUnavailable)
			return
		}

		w.WriteHeader(http.StatusOK)
	})
	apiSrv.RegisterOnShutdown(feed.Close) // held bundle requests must not hold up the shutdown
	metricsSrv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}

	log.Info("control plane listening", "xds", xdsLis.Addr().String(), "http", httpLis.Addr().String(),
		"metrics", metricsLis.Addr().String(), "tls", !f.spiffe.insecure, "workloads", workloadCount(m),
		"replica", replica, "quarantined", len(qm.List()))

	errc := make(chan error, 3)
	go func() { errc <- gs.Serve(xdsLis) }()
	go func() {
		var err error
		if httpTLS != nil {
			err = apiSrv.ServeTLS(httpLis, "", "")
		} else {
			err = apiSrv.Serve(httpLis)
		}
		errc <- err
	}()
	go func() { errc <- metricsSrv.Serve(metricsLis) }()
	sweepDone := make(chan struct{})
	go func() { defer close(sweepDone); qm.Run(ctx, time.Second) }()
	learnDone := make(chan struct{})
	go func() { defer close(learnDone); learner.Run(ctx, f.baselineFlush) }()
	consoleDone := make(chan struct{})
	go func() {
		defer close(consoleDone)
		if cons != nil {
			cons.Run(ctx)
		}
	}()
	reloadDone := make(chan struct{})
	go func() {
		defer close(reloadDone)
		if f.reload <= 0 || len(f.policyPaths) == 0 {
			return
		}
		t := time.NewTicker(f.reload)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if err := files.poll(st); err != nil {
					log.Error("policy reload rejected; the last good bundle keeps serving", "error", err)
				}
			}
		}
	}()

	var kubeErr <-chan error
	if kw != nil {
		kubeErr = kw.errc
	}
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	case runErr = <-kubeErr:
	}
	cancel()
	shutdown, done := context.WithTimeout(context.Background(), 5*time.Second)
	defer done()
	_ = apiSrv.Shutdown(shutdown)
	_ = metricsSrv.Shutdown(shutdown)
	stopped := make(chan struct{})
	go func() { gs.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-shutdown.Done():
		gs.Stop()
	}
	<-sweepDone
	<-learnDone
	<-reloadDone
	<-consoleDone
	if runErr != nil && !errors.Is(runErr, http.ErrServerClosed) && !errors.Is(runErr, grpc.ErrServerStopped) {
		return runErr
	}
	return nil
}

// stateStore is what the quarantine manager and the learner keep their
// state in.
type stateStore interface {
	quarantine.Store
	learn.Store
}

// openState opens the state store: the cluster's with --kubernetes (every
// replica shares it), else the embedded database in --state-dir. It
// returns once the store's view is complete.
func openState(ctx context.Context, f *controlPlaneFlags, kw *kubeWatch, log *slog.Logger, reg prometheus.Registerer) (stateStore, func(), error) {
	if kw != nil {
		ns, err := f.kube.stateNamespaceOrDefault()
		if err != nil {
			return nil, nil, err
		}
		ks, err := statekube.New(statekube.Options{Config: kw.cfg, Namespace: ns, Logger: log, Registerer: reg})
		if err != nil {
			return nil, nil, err
		}
		start := time.Now()
		if err := ks.Start(ctx); err != nil {
			return nil, nil, err
		}
		log.Info("state store: Kubernetes", "namespace", ns, "quarantine_records", len(ks.Quarantines()),
			"baselines", len(ks.Baselines()), "load_seconds", time.Since(start).Seconds())
		return ks, func() {}, nil
	}
	dir := f.stateDir
	if dir == "" {
		var err error
		if dir, err = defaultStateDir(); err != nil {
			return nil, nil, err
		}
	}
	start := time.Now()
	ds, err := disk.Open(dir, disk.Options{Logger: log, Registerer: reg})
	if err != nil {
		return nil, nil, fmt.Errorf("--state-dir: %w", err)
	}
	log.Info("state store: embedded", "dir", dir, "quarantine_records", len(ds.Quarantines()),
		"baselines", len(ds.Baselines()), "load_seconds", time.Since(start).Seconds())
	return ds, func() {
		if err := ds.Close(); err != nil {
			log.Error("close the state store", "error", err)
		}
	}, nil
}

// defaultStateDir is $STATE_DIRECTORY (systemd's StateDirectory=), else
// $XDG_STATE_HOME/meshguard, else ~/.local/state/meshguard.
func defaultStateDir() (string, error) {
	if d := os.Getenv("STATE_DIRECTORY"); d != "" {
		return strings.Split(d, ":")[0], nil
	}
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "meshguard"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("--state-dir: no default (no home directory): %w", err)
	}
	return filepath.Join(home, ".local", "state", "meshguard"), nil
}

// replicaName names this process in the state records: $POD_NAME, else the
// host name.
func replicaName() string {
	if n, err := replicaIdentity(); err == nil {
		return n
	}
	return "controlplane"
}

// reportersOf: the mesh description's Envoy workloads (their filters
// report with the workload's SVID) and the --reporter-id patterns may post
// events.
func reportersOf(m *mesh.Mesh, patterns []string) (*api.Reporters, error) {
	var ws []api.ReportingWorkload
	if m != nil {
		for _, w := range m.Workloads {
			if w.Proxyless {
				continue // no filter: reports nothing
			}
			ws = append(ws, api.ReportingWorkload{ID: w.ID, Namespace: w.Namespace, Service: w.Service})
		}
	}
	r, err := api.NewReporters(ws, patterns)
	if err != nil {
		return nil, fmt.Errorf("--reporter-id: %w", err)
	}
	return r, nil
}

func workloadCount(m *mesh.Mesh) int {
	if m == nil {
		return 0
	}
	return len(m.Workloads)
}

// cpPolicyFiles feeds --policy files into the store's "files" source under
// the reload rules of package policyfile: read once, settled, complete, no
// namespace lost (unless allowed).
type cpPolicyFiles struct {
	paths      []string
	watch      *policyfile.Watcher
	allowEmpty bool
	applied    *policies.Set
}

func newCPPolicyFiles(paths []string, settle time.Duration, allowEmpty bool) *cpPolicyFiles {
	return &cpPolicyFiles{paths: paths, allowEmpty: allowEmpty,
		watch: &policyfile.Watcher{Paths: paths, Exts: []string{".yaml", ".yml"}, Settle: settle}}
}

// first loads the files at start, waiting for them to settle.
func (p *cpPolicyFiles) first(ctx context.Context, st *store.Store) error {
	if len(p.paths) == 0 {
		return st.SetSource("files", policies.Set{})
	}
	deadline := time.Now().Add(p.watch.Settle + 5*time.Second)
	for {
		snap, err := p.watch.Next(time.Now())
		if err != nil {
			return fmt.Errorf("read policies: %w", err)
		}
		if snap != nil {
			return p.apply(st, snap)
		}
		if time.Now().After(deadline) {
			return errors.New("read policies: the files keep changing")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// poll applies the files when they hold new settled content.
func (p *cpPolicyFiles) poll(st *store.Store) error {
	snap, err := p.watch.Next(time.Now())
	if err != nil {
		return fmt.Errorf("read policies: %w", err)
	}
	if snap == nil {
		return nil
	}
	return p.apply(st, snap)
}

func (p *cpPolicyFiles) apply(st *store.Store, snap *policyfile.Snapshot) error {
	if err := snap.Check(p.allowEmpty); err != nil {
		return err
	}
	set, diags := source.ParseFiles(snap.SourceFiles()...)
	if err := diags.Err(); err != nil {
		return err
	}
	if !p.allowEmpty {
		if err := policyfile.CheckCoverage(p.applied, &set); err != nil {
			return err
		}
	}
	if err := st.SetSource("files", set); err != nil {
		return err
	}
	p.applied = &set
	return nil
}
