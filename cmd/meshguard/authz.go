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
	"net/netip"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.37.0"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"

	"github.com/meshguard/meshguard/authz/decisionlog"
	"github.com/meshguard/meshguard/authz/identity"
	"github.com/meshguard/meshguard/authz/loader"
	"github.com/meshguard/meshguard/authz/metrics"
	"github.com/meshguard/meshguard/authz/request"
	"github.com/meshguard/meshguard/authz/requestauth"
	"github.com/meshguard/meshguard/authz/server"
	"github.com/meshguard/meshguard/authz/shipper"
	"github.com/meshguard/meshguard/authz/tracing"
	"github.com/meshguard/meshguard/internal/buildinfo"
	"github.com/meshguard/meshguard/internal/spool"
	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/source"
)

type authzFlags struct {
	grpcAddr, httpAddr, adminAddr string
	insecurePlaintext             bool

	spiffeSocket          string
	svidCert, svidKey     string
	bundles               []string
	trustDomain           string
	allowedCallers        []string
	allowedCallerDomains  []string
	trustedHops           []string
	jwtAudiences          []string
	noJWT                 bool
	jwtHeader             string
	jwtMaxLifetime        time.Duration
	clockSkew             time.Duration
	peerCertGrace         time.Duration
	policyPath            string
	policyPoll            time.Duration
	policySettle          time.Duration
	policyAllowEmpty      bool
	policyMaxStaleness    time.Duration
	controlPlane          string
	controlPlaneID        string
	nodeID                string
	cpKeepalive           time.Duration
	cpKeepaliveTimeout    time.Duration
	decisionLog           string
	decisionLogSample     float64
	decisionLogHeaders    []string
	decisionLogRedact     []string
	decisionLogClaims     []string
	decisionLogBuffer     int
	decisionLogOverflow   string
	shutdownDelay         time.Duration
	flushTimeout          time.Duration
	trustRouteHeader      bool
	httpTrustCtxHeaders   bool
	httpPathPrefix        string
	checkTimeout          time.Duration
	shutdownGrace         time.Duration
	logLevel              string
	workloadAPIWait       time.Duration
	grpcMaxConcurrentStrm uint32
	gcPercent             int
	allowUnscoped         bool
	jwksRefresh           time.Duration
	jwksMinRefetch        time.Duration
	jwksMaxBytes          int64
	jwksBlocked           []string
	ship                  shipFlags
	traceEndpoint         string
	traceInsecure         bool
	traceSampleRatio      float64
}

// shipFlags configure decision shipping to the control plane's store.
type shipFlags struct {
	url         string
	allowSample float64
	buffer      int
	batch       int
	interval    time.Duration
}

func newAuthzCmd() *cobra.Command { return newAuthzCmdFor(&authzFlags{}) }

// newAuthzCmdFor binds the command's flags to f.
func newAuthzCmdFor(f *authzFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "authz",
		Short: "Run the Envoy external authorization server (gRPC and HTTP ext_authz)",
		Long: `Run meshguard's external authorization server for Envoy's ext_authz filter
and Istio's CUSTOM action.

It serves envoy.service.auth.v3.Authorization on --grpc-addr (plus gRPC health
and reflection), optionally Envoy's HTTP ext_authz mode on --http-addr, and
/healthz, /readyz and /metrics on --admin-addr (plain HTTP: keep it off the
mesh). Both check listeners serve mTLS with the server's X509-SVID and accept
only the Envoy identities given by --allowed-caller and
--allowed-caller-trust-domain; --insecure-plaintext turns TLS off for local
development only.

The server's SVID and the trust bundles come from the SPIFFE Workload API
(--spiffe-socket, default $SPIFFE_ENDPOINT_SOCKET) or from files (--svid-cert,
--svid-key, --bundle). Policies come from --policy (a bundle JSON file, a YAML
policy file or a directory of them, polled for changes) and/or from the
control plane over ADS (--control-plane). Until a policy is loaded every check
is denied (denied_no_policy_loaded) and /readyz answers 503. Policy files are
read once per poll and applied only once settled and complete: an emptied or
cut-off file is refused and the last good policy keeps serving. A bundle the
control plane has not confirmed for --policy-max-staleness turns the server
not ready.

On SIGTERM the server turns not ready, keeps answering for --shutdown-delay,
drains in-flight checks (--shutdown-grace), then writes the rest of the
decision log and exits.

Caller identity precedence: source.principal (SPIFFE IDs only), then
source.certificate, then x-forwarded-client-cert from --trusted-hop peers only,
then a JWT-SVID (validated against --jwt-audience, which is mandatory unless
--no-jwt-svid). End-user JWTs are validated as the policy's Istio
RequestAuthentications say (key sets inline, or fetched from their jwksUri or
by OpenID discovery: --jwks-*); a request with an invalid token is answered
401. See docs/authz.md.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runAuthz(cmd.Context(), f, cmd.ErrOrStderr(), cmd.OutOrStdout())
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.grpcAddr, "grpc-addr", ":9191", "address of the gRPC ext_authz listener")
	fl.StringVar(&f.httpAddr, "http-addr", "", "address of the HTTP ext_authz listener (empty: off)")
	fl.StringVar(&f.adminAddr, "admin-addr", ":9192", "address of the plain-HTTP /healthz, /readyz and /metrics listener (empty: off)")
	fl.BoolVar(&f.insecurePlaintext, "insecure-plaintext", false, "serve checks and talk to the control plane WITHOUT TLS (local development only; callers are then not authenticated)")
	fl.StringVar(&f.spiffeSocket, "spiffe-socket", os.Getenv("SPIFFE_ENDPOINT_SOCKET"), "SPIFFE Workload API address (unix:///path); default $SPIFFE_ENDPOINT_SOCKET")
	fl.StringVar(&f.svidCert, "svid-cert", "", "PEM file with the server's X509-SVID chain (instead of the Workload API)")
	fl.StringVar(&f.svidKey, "svid-key", "", "PEM file with the server's X509-SVID private key")
	fl.StringArrayVar(&f.bundles, "bundle", nil, "trust bundle file, [trust-domain=]path: PEM (X.509 authorities) or SPIFFE bundle JSON (X.509 and JWT authorities); repeatable")
	fl.StringVar(&f.trustDomain, "trust-domain", "", "trust domain of --bundle files given without one")
	fl.StringArrayVar(&f.allowedCallers, "allowed-caller", nil, "SPIFFE ID allowed to call the server (the Envoys); repeatable")
	fl.StringArrayVar(&f.allowedCallerDomains, "allowed-caller-trust-domain", nil, "trust domain whose every workload may call the server; repeatable")
	fl.StringArrayVar(&f.trustedHops, "trusted-hop", nil, "SPIFFE ID of a peer (gateway, or the calling Envoy in HTTP mode) whose x-forwarded-client-cert is believed; repeatable")
	fl.StringArrayVar(&f.jwtAudiences, "jwt-audience", nil, "audience a JWT-SVID must carry; repeatable; required unless --no-jwt-svid")
	fl.BoolVar(&f.noJWT, "no-jwt-svid", false, "do not read JWT-SVIDs at all")
	fl.StringVar(&f.jwtHeader, "jwt-header", "authorization", "header carrying the JWT-SVID (authorization requires the Bearer scheme; others carry the bare token)")
	fl.DurationVar(&f.jwtMaxLifetime, "jwt-max-lifetime", time.Hour, "longest accepted JWT-SVID lifetime (exp - iat)")
	fl.DurationVar(&f.clockSkew, "clock-skew", 30*time.Second, "clock skew allowed on JWT-SVID exp, nbf and iat")
	fl.DurationVar(&f.peerCertGrace, "peer-certificate-grace", time.Hour, "how long past its expiry the peer certificate Envoy reports for a connection is still accepted (Envoy verifies it only at the handshake and keeps the connection after the SVID rotates); 0: never")
	fl.StringVar(&f.policyPath, "policy", "", "policy bundle JSON, YAML policy file or directory, polled for changes")
	fl.DurationVar(&f.policyPoll, "policy-poll-interval", 2*time.Second, "how often --policy is checked for changes")
	fl.DurationVar(&f.policySettle, "policy-settle", 300*time.Millisecond, "a change to --policy applies once the files have stayed unchanged this long (a file being written is not read half-way)")
	fl.BoolVar(&f.policyAllowEmpty, "policy-allow-empty", false, "accept --policy files without documents, and sets that leave a namespace without any document where the serving set had some (refused by default: an emptied or cut-off file would allow everything)")
	fl.DurationVar(&f.policyMaxStaleness, "policy-max-staleness", time.Minute, "with --control-plane: turn not ready when the control plane has not confirmed the serving bundle for this long (no live subscription, no heartbeat); 0: never")
	fl.StringVar(&f.controlPlane, "control-plane", "", "address of the meshguard control plane's ADS server to subscribe to the policy bundle")
	fl.StringVar(&f.controlPlaneID, "control-plane-id", "", "SPIFFE ID the control plane must present (default: any ID of the server's trust domain)")
	fl.StringVar(&f.nodeID, "node-id", "", "xDS node id sent to the control plane (default: the host name)")
	fl.DurationVar(&f.cpKeepalive, "control-plane-keepalive", 10*time.Second, "ping the control plane after this long without traffic (gRPC keepalive; at least 10s)")
	fl.DurationVar(&f.cpKeepaliveTimeout, "control-plane-keepalive-timeout", 5*time.Second, "close the control-plane connection when a keepalive ping is not answered within this long")
	fl.StringVar(&f.decisionLog, "decision-log", "stdout", "where decision log lines go: stdout, a file path, or off")
	fl.Float64Var(&f.decisionLogSample, "decision-log-allow-sample", 1, "fraction of allowed decisions logged, 0 to 1 (denies are always logged)")
	fl.StringArrayVar(&f.decisionLogHeaders, "decision-log-header", nil, "request header copied into decision log lines; repeatable (credential headers are refused)")
	fl.StringArrayVar(&f.decisionLogRedact, "decision-log-redact-header", nil, "header never written to the decision log, in addition to authorization, cookie and the like; repeatable")
	fl.StringArrayVar(&f.decisionLogClaims, "decision-log-jwt-claim", nil, "top-level claim of the request's validated JWT copied (when present) into decision log lines and shipped decisions, so that policy replay can decide request.auth.claims conditions; repeatable (none by default: claims may hold personal data)")
	fl.IntVar(&f.decisionLogBuffer, "decision-log-buffer", 8192, "decisions held for the decision log writer at most")
	fl.StringVar(&f.decisionLogOverflow, "decision-log-overflow", "drop", "when the decision log buffer is full: drop (the decision is counted in meshguard_authz_decision_log_dropped_total, the check is not delayed) or block (the check waits for room until its deadline, then the decision is dropped and counted; a stalled log makes the server not ready)")
	fl.BoolVar(&f.trustRouteHeader, "trust-route-header", false, "believe x-meshguard-route when no context extension names the route (only when meshguard's wasm filter runs before ext_authz and strips client-sent values)")
	fl.BoolVar(&f.httpTrustCtxHeaders, "http-trust-context-headers", false, "HTTP mode: read context extensions from x-meshguard-ctx-<key> headers set by the HTTP service's headers_to_add")
	fl.StringVar(&f.httpPathPrefix, "http-path-prefix", "", "HTTP mode: the HTTP service's path_prefix, removed from paths")
	fl.DurationVar(&f.checkTimeout, "check-timeout", time.Second, "longest time one check may take before it is denied with denied_timeout")
	fl.DurationVar(&f.shutdownDelay, "shutdown-delay", 3*time.Second, "on SIGTERM, how long to stay not ready while still answering checks before the listeners close (lets load balancers and health-checking Envoys move away)")
	fl.DurationVar(&f.shutdownGrace, "shutdown-grace", 10*time.Second, "how long in-flight checks may drain on shutdown")
	fl.DurationVar(&f.flushTimeout, "decision-log-flush-timeout", 5*time.Second, "on shutdown, after the drain, how long writing the rest of the decision log may take")
	fl.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	fl.DurationVar(&f.workloadAPIWait, "workload-api-timeout", 30*time.Second, "how long to wait for the first SVID and bundles from the Workload API")
	fl.BoolVar(&f.allowUnscoped, "allow-unscoped-requests", false, "evaluate requests that name no target workload (no destination.principal, no meshguard.workload/namespace context extension) against mesh-wide policies only, instead of denying them with denied_invalid_request")
	fl.DurationVar(&f.jwksRefresh, "jwks-refresh", requestauth.DefaultRefresh, "RequestAuthentication: how often a key set fetched from a jwksUri (or by OpenID discovery) is fetched again; a failed refresh keeps the last keys")
	fl.DurationVar(&f.jwksMinRefetch, "jwks-min-refetch", requestauth.DefaultMinRefetch, "RequestAuthentication: least time between two fetches of one key set (a token with an unknown kid fetches it at once, no more often than this)")
	fl.Int64Var(&f.jwksMaxBytes, "jwks-max-bytes", requestauth.DefaultMaxKeySetBytes, "RequestAuthentication: largest key set (or OpenID discovery document) read")
	fl.StringArrayVar(&f.jwksBlocked, "jwks-blocked-cidr", nil, "RequestAuthentication: address range key sets are never fetched from, besides link-local and cloud metadata addresses (always refused); repeatable")
	fl.StringVar(&f.ship.url, "ship-decisions", "", "control plane API URL (https://controlplane:8443) to ship decisions to for its record store (forensic queries, incident timelines, policy replay); empty: off. mTLS with the server's SVID; the control plane must present --control-plane-id (default: any ID of the trust domain)")
	fl.Float64Var(&f.ship.allowSample, "ship-allow-sample", 1, "fraction of allowed decisions shipped, 0 to 1 (denies and dry-run would-denies are always shipped)")
	fl.IntVar(&f.ship.buffer, "ship-buffer", shipper.DefaultBuffer, "decisions held while waiting to be shipped; beyond it they are dropped and counted (meshguard_authz_decisions_ship_dropped_total), never delaying a check")
	fl.IntVar(&f.ship.batch, "ship-batch", shipper.DefaultBatch, "most decisions per request to the control plane")
	fl.DurationVar(&f.ship.interval, "ship-interval", shipper.DefaultInterval, "longest a decision waits before its batch is sent")
	fl.StringVar(&f.traceEndpoint, "trace-otlp-endpoint", "", "export a span per check over OTLP/gRPC to this collector (host:port), in the trace Envoy propagates (W3C traceparent or B3); empty: no tracing, at no cost")
	fl.BoolVar(&f.traceInsecure, "trace-otlp-insecure", false, "OTLP trace export without TLS (a collector on localhost or in the same pod)")
	fl.Float64Var(&f.traceSampleRatio, "trace-sample-ratio", 0, "fraction of checks that arrive without a trace to trace as new roots, 0 to 1 (a trace Envoy sampled is always joined)")
	fl.Uint32Var(&f.grpcMaxConcurrentStrm, "grpc-max-concurrent-streams", 0, "limit of concurrent gRPC streams per connection (0: grpc-go default)")
	fl.IntVar(&f.gcPercent, "gc-percent", 400, "Go garbage collector target (as GOGC): the heap may grow this many percent over live data between collections; fewer collections shorten latency tails at the cost of memory. Bound memory with GOMEMLIMIT (the Helm chart sets it to the container limit). Ignored when GOGC is set; 0 keeps the runtime's default")
	return cmd
}

// identityMaterial is the server's SVID and the trust bundles.
type identityMaterial struct {
	svid    x509svid.Source // nil in plaintext mode without an SVID
	bundles identity.Bundles
	td      spiffeid.TrustDomain
	close   func()
}

func loadIdentity(ctx context.Context, f *authzFlags, log *slog.Logger) (*identityMaterial, error) {
	if f.spiffeSocket != "" && (f.svidCert != "" || len(f.bundles) > 0) {
		return nil, errors.New("use either the Workload API (--spiffe-socket / SPIFFE_ENDPOINT_SOCKET) or files (--svid-cert, --svid-key, --bundle), not both")
	}
	if f.spiffeSocket != "" {
		wctx, cancel := context.WithTimeout(ctx, f.workloadAPIWait)
		defer cancel()
		opt := workloadapi.WithClientOptions(workloadapi.WithAddr(f.spiffeSocket))
		x509src, err := workloadapi.NewX509Source(wctx, opt)
		if err != nil {
			return nil, fmt.Errorf("workload API X509-SVID from %s: %w", f.spiffeSocket, err)
		}
		bsrc, err := workloadapi.NewBundleSource(wctx, opt)
		if err != nil {
			_ = x509src.Close()
			return nil, fmt.Errorf("workload API bundles from %s: %w", f.spiffeSocket, err)
		}
		svid, err := x509src.GetX509SVID()
		if err != nil {
			_ = x509src.Close()
			_ = bsrc.Close()
			return nil, fmt.Errorf("workload API X509-SVID: %w", err)
		}
		log.Info("identity from the SPIFFE Workload API", slog.String("spiffe_id", svid.ID.String()))
		return &identityMaterial{svid: x509src, bundles: bsrc, td: svid.ID.TrustDomain(), close: func() { _ = x509src.Close(); _ = bsrc.Close() }}, nil
	}
	m := &identityMaterial{close: func() {}}
	if f.trustDomain != "" {
		td, err := spiffeid.TrustDomainFromString(f.trustDomain)
		if err != nil {
			return nil, fmt.Errorf("--trust-domain: %w", err)
		}
		m.td = td
	}
	if (f.svidCert == "") != (f.svidKey == "") {
		return nil, errors.New("--svid-cert and --svid-key go together")
	}
	if f.svidCert != "" {
		svid, err := x509svid.Load(f.svidCert, f.svidKey)
		if err != nil {
			return nil, fmt.Errorf("load SVID: %w", err)
		}
		m.svid = svid
		if m.td.IsZero() {
			m.td = svid.ID.TrustDomain()
		}
		log.Info("identity from files", slog.String("spiffe_id", svid.ID.String()))
	}
	set := spiffebundle.NewSet()
	for _, spec := range f.bundles {
		b, err := loadBundle(spec, m.td)
		if err != nil {
			return nil, err
		}
		if existing, ok := set.Get(b.TrustDomain()); ok {
			for _, c := range b.X509Authorities() {
				existing.AddX509Authority(c)
			}
			for kid, k := range b.JWTAuthorities() {
				if err := existing.AddJWTAuthority(kid, k); err != nil {
					return nil, fmt.Errorf("bundle %s: %w", spec, err)
				}
			}
			continue
		}
		set.Add(b)
	}
	if set.Len() == 0 {
		return nil, errors.New("no trust bundle: give --bundle files or a Workload API socket")
	}
	m.bundles = set
	return m, nil
}

func loadBundle(spec string, defTD spiffeid.TrustDomain) (*spiffebundle.Bundle, error) {
	td, path := defTD, spec
	if name, p, ok := strings.Cut(spec, "="); ok {
		t, err := spiffeid.TrustDomainFromString(name)
		if err != nil {
			return nil, fmt.Errorf("--bundle %s: %w", spec, err)
		}
		td, path = t, p
	}
	if td.IsZero() {
		return nil, fmt.Errorf("--bundle %s: no trust domain (write td=path or give --trust-domain or an SVID)", spec)
	}
	if strings.EqualFold(filepath.Ext(path), ".json") {
		b, err := spiffebundle.Load(td, path)
		if err != nil {
			return nil, fmt.Errorf("--bundle %s: %w", spec, err)
		}
		return b, nil
	}
	xb, err := x509bundle.Load(td, path)
	if err != nil {
		return nil, fmt.Errorf("--bundle %s: %w", spec, err)
	}
	return spiffebundle.FromX509Bundle(xb), nil
}

func parseIDs(flag string, ss []string) ([]spiffeid.ID, error) {
	var out []spiffeid.ID
	for _, s := range ss {
		id, err := spiffeid.FromString(s)
		if err != nil {
			return nil, fmt.Errorf("--%s %q: %w", flag, s, err)
		}
		out = append(out, id)
	}
	return out, nil
}

func newLogger(w io.Writer, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l})), nil
}

func runAuthz(ctx context.Context, f *authzFlags, stderr, stdout io.Writer) error {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	logOut, err := asyncStderr(stderr, reg, "authz")
	if err != nil {
		return err
	}
	defer closeWithin(logOut, 2*time.Second)
	log, err := newLogger(logOut, f.logLevel)
	if err != nil {
		return err
	}
	if f.policyPath == "" && f.controlPlane == "" {
		return errors.New("no policy source: give --policy and/or --control-plane")
	}
	if err := applyGCPercent(f.gcPercent, log); err != nil {
		return err
	}
	if f.insecurePlaintext {
		log.Warn("!!! --insecure-plaintext: checks are served WITHOUT TLS and callers are NOT authenticated; anyone who can reach the port can ask for decisions and read identities. Never use this in production. !!!")
	}

	idm, err := loadIdentity(ctx, f, log)
	if err != nil {
		return err
	}
	defer idm.close()
	hops, err := parseIDs("trusted-hop", f.trustedHops)
	if err != nil {
		return err
	}
	resolver, err := identity.New(identity.Config{
		Bundles:              idm.bundles,
		TrustedHops:          hops,
		JWTDisabled:          f.noJWT,
		JWTAudiences:         f.jwtAudiences,
		JWTHeader:            f.jwtHeader,
		JWTMaxLifetime:       f.jwtMaxLifetime,
		ClockSkew:            f.clockSkew,
		PeerCertificateGrace: f.peerCertGrace,
	})
	if err != nil {
		return fmt.Errorf("%w (set --jwt-audience, or --no-jwt-svid to turn JWT-SVIDs off)", err)
	}

	// Callers of the check listeners.
	var creds credentials.TransportCredentials
	var serverTLS *tls.Config
	if !f.insecurePlaintext {
		if idm.svid == nil {
			return errors.New("no server SVID: give --svid-cert/--svid-key or a Workload API socket (or --insecure-plaintext for local development)")
		}
		ids, err := parseIDs("allowed-caller", f.allowedCallers)
		if err != nil {
			return err
		}
		var tds []spiffeid.TrustDomain
		for _, s := range f.allowedCallerDomains {
			td, err := spiffeid.TrustDomainFromString(s)
			if err != nil {
				return fmt.Errorf("--allowed-caller-trust-domain %q: %w", s, err)
			}
			tds = append(tds, td)
		}
		auth, err := server.Callers{IDs: ids, TrustDomains: tds}.Authorizer()
		if err != nil {
			return fmt.Errorf("%w: give --allowed-caller or --allowed-caller-trust-domain", err)
		}
		serverTLS = tlsconfig.MTLSServerConfig(idm.svid, idm.bundles, auth)
		creds = credentials.NewTLS(serverTLS)
	} else {
		creds = insecure.NewCredentials()
	}

	m := metrics.New(reg)

	var dlog *decisionlog.Logger
	overflow, err := spool.ParseOverflow(f.decisionLogOverflow)
	if err != nil {
		return fmt.Errorf("--decision-log-overflow: %w", err)
	}
	if f.decisionLogBuffer <= 0 {
		return fmt.Errorf("--decision-log-buffer %d: want a positive number", f.decisionLogBuffer)
	}
	if f.decisionLog != "off" {
		w := stdout
		if f.decisionLog != "stdout" && f.decisionLog != "-" {
			file, err := os.OpenFile(f.decisionLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
			if err != nil {
				return fmt.Errorf("--decision-log: %w", err)
			}
			defer file.Close()
			w = file
		}
		redact := append([]string{f.jwtHeader}, f.decisionLogRedact...)
		sm, err := spool.NewMetrics(reg, "authz", "decision_log")
		if err != nil {
			return err
		}
		if dlog, err = decisionlog.New(decisionlog.Config{
			W: w, AllowSampleRate: f.decisionLogSample, Headers: f.decisionLogHeaders, Redact: redact,
			Buffer: f.decisionLogBuffer, Overflow: overflow, Metrics: sm,
		}); err != nil {
			return err
		}
	}

	var ship *shipper.Shipper
	if f.ship.url != "" {
		if ship, err = newShipper(f, idm, log, reg); err != nil {
			return err
		}
	}

	var tracer *tracing.Tracer
	if f.traceEndpoint != "" {
		opts := []otlptracegrpc.Option{otlptracegrpc.WithEndpoint(f.traceEndpoint)}
		if f.traceInsecure {
			opts = append(opts, otlptracegrpc.WithInsecure())
		}
		exp, err := otlptracegrpc.New(ctx, opts...)
		if err != nil {
			return fmt.Errorf("--trace-otlp-endpoint: %w", err)
		}
		res := resource.NewWithAttributes(semconv.SchemaURL, semconv.ServiceName("meshguard-authz"), semconv.ServiceVersion(buildinfo.Version))
		if tracer, err = tracing.New(tracing.Config{Exporter: exp, SampleRatio: f.traceSampleRatio, Options: []sdktrace.TracerProviderOption{sdktrace.WithResource(res)}}); err != nil {
			return fmt.Errorf("--trace-sample-ratio: %w", err)
		}
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = tracer.Shutdown(sctx)
		}()
		log.Info("tracing checks", slog.String("otlp_endpoint", f.traceEndpoint), slog.Float64("root_sample_ratio", f.traceSampleRatio))
	}

	engine := &policies.Engine{}
	ld := loader.New(engine, log, m)
	var sources []loader.Source
	var readiness []server.ReadinessCheck
	if f.policyPath != "" {
		sources = append(sources, &loader.FileSource{Path: f.policyPath, Interval: f.policyPoll, Settle: f.policySettle,
			AllowEmpty: f.policyAllowEmpty, Parse: parsePolicyFiles})
	}
	if f.controlPlane != "" {
		ccreds := insecure.NewCredentials()
		if !f.insecurePlaintext {
			authCP := tlsconfig.AuthorizeMemberOf(idm.td)
			if f.controlPlaneID != "" {
				id, err := spiffeid.FromString(f.controlPlaneID)
				if err != nil {
					return fmt.Errorf("--control-plane-id: %w", err)
				}
				authCP = tlsconfig.AuthorizeID(id)
			}
			ccreds = credentials.NewTLS(tlsconfig.MTLSClientConfig(idm.svid, idm.bundles, authCP))
		}
		if f.cpKeepalive < 10*time.Second || f.cpKeepaliveTimeout <= 0 {
			return errors.New("--control-plane-keepalive must be at least 10s (gRPC's floor) and --control-plane-keepalive-timeout positive")
		}
		// Keepalive pings prove the peer while the subscription is idle:
		// a control plane gone without a reset (a partition) ends the
		// stream within keepalive + timeout instead of the OS's hours.
		conn, err := grpc.NewClient(f.controlPlane, grpc.WithTransportCredentials(ccreds),
			grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: f.cpKeepalive, Timeout: f.cpKeepaliveTimeout, PermitWithoutStream: true}))
		if err != nil {
			return fmt.Errorf("--control-plane: %w", err)
		}
		defer conn.Close()
		node := f.nodeID
		if node == "" {
			node, _ = os.Hostname()
		}
		ads := &loader.ADSSource{Conn: conn, Node: &corev3.Node{Id: node, Cluster: "meshguard-authz"}, Log: log,
			MaxStaleness: f.policyMaxStaleness, Metrics: m}
		sources = append(sources, ads)
		readiness = append(readiness, server.ReadinessCheck{Name: "control plane", Check: ads.Fresh})
	}

	var blocked []netip.Prefix
	for _, c := range f.jwksBlocked {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			return fmt.Errorf("--jwks-blocked-cidr %q: %w", c, err)
		}
		blocked = append(blocked, p.Masked())
	}
	authn, err := requestauth.New(requestauth.Config{
		Client: requestauth.NewHTTPClient(blocked), Refresh: f.jwksRefresh, MinRefetch: f.jwksMinRefetch,
		MaxKeySetBytes: f.jwksMaxBytes, Log: log, Registerer: reg,
	})
	if err != nil {
		return fmt.Errorf("--jwks-*: %w", err)
	}
	defer authn.Close()
	srv, err := server.New(server.Config{
		Engine: engine, Identity: resolver, RequestAuth: authn, Log: log, Metrics: m, DecisionLog: dlog, Ship: shipSink(ship), Tracer: tracer,
		RecordClaims:   f.decisionLogClaims,
		Request:        request.Options{TrustRouteHeader: f.trustRouteHeader, TrustContextHeaders: f.httpTrustCtxHeaders},
		CheckTimeout:   f.checkTimeout,
		HTTPPathPrefix: f.httpPathPrefix,
		AllowUnscoped:  f.allowUnscoped,
		Readiness:      readiness,
	})
	if err != nil {
		return err
	}
	opts := append(srv.GRPCServerOptions(), grpc.Creds(creds))
	if f.grpcMaxConcurrentStrm > 0 {
		opts = append(opts, grpc.MaxConcurrentStreams(f.grpcMaxConcurrentStrm))
	}
	g := grpc.NewServer(opts...)
	srv.Register(g)

	lis, err := net.Listen("tcp", f.grpcAddr)
	if err != nil {
		return fmt.Errorf("--grpc-addr: %w", err)
	}
	var httpSrv, adminSrv *http.Server
	var httpLis, adminLis net.Listener
	if f.httpAddr != "" {
		if httpLis, err = net.Listen("tcp", f.httpAddr); err != nil {
			return fmt.Errorf("--http-addr: %w", err)
		}
		httpSrv = &http.Server{Handler: srv.HTTPHandler(), TLSConfig: serverTLS, ReadHeaderTimeout: 10 * time.Second}
	}
	if f.adminAddr != "" {
		if adminLis, err = net.Listen("tcp", f.adminAddr); err != nil {
			return fmt.Errorf("--admin-addr: %w", err)
		}
		adminSrv = &http.Server{Handler: srv.AdminHandler(reg), ReadHeaderTimeout: 10 * time.Second}
	}

	runCtx, stop := context.WithCancel(context.WithoutCancel(ctx))
	defer stop()
	errc := make(chan error, 3)
	loaded := make(chan struct{})
	go func() { defer close(loaded); ld.Run(runCtx, sources...) }()
	go authn.Run(runCtx, engine.Snapshot)
	go func() {
		select {
		case <-ld.Ready():
			srv.MarkReady()
			log.Info("policy loaded")
		case <-runCtx.Done():
		}
	}()
	go srv.WatchReadiness(runCtx, 500*time.Millisecond)
	go func() { errc <- g.Serve(lis) }()
	if httpSrv != nil {
		go func() {
			var err error
			if serverTLS != nil {
				err = httpSrv.ServeTLS(httpLis, "", "")
			} else {
				err = httpSrv.Serve(httpLis)
			}
			if !errors.Is(err, http.ErrServerClosed) {
				errc <- err
			}
		}()
	}
	if adminSrv != nil {
		go func() {
			if err := adminSrv.Serve(adminLis); !errors.Is(err, http.ErrServerClosed) {
				errc <- err
			}
		}()
	}
	log.Info("authz server listening",
		slog.String("grpc", lis.Addr().String()), slog.String("http", addrOf(httpLis)), slog.String("admin", addrOf(adminLis)),
		slog.Bool("mtls", !f.insecurePlaintext))

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
		log.Error("listener failed", slog.Any("error", runErr))
	}
	shutdownAuthz(log, f, srv, g, httpSrv, adminSrv, dlog, ship, runErr != nil)
	stop()
	<-loaded
	return runErr
}

// shutdownAuthz stops the server in the order that loses nothing: not
// ready first (/readyz 503, gRPC health NOT_SERVING) while checks are still
// answered for --shutdown-delay; then the check listeners close and
// in-flight checks drain (--shutdown-grace); then the decision log writes
// what the drained checks logged; the admin listener, which answers 503
// all along, closes last.
func shutdownAuthz(log *slog.Logger, f *authzFlags, srv *server.Server, g *grpc.Server, httpSrv, adminSrv *http.Server, dlog *decisionlog.Logger, ship *shipper.Shipper, failed bool) {
	srv.Drain()
	if !failed && f.shutdownDelay > 0 {
		log.Info("shutting down: not ready, still answering checks", slog.Duration("delay", f.shutdownDelay))
		time.Sleep(f.shutdownDelay)
	}
	log.Info("shutting down: draining in-flight checks", slog.Duration("grace", f.shutdownGrace))
	drainCtx, cancel := context.WithTimeout(context.Background(), f.shutdownGrace)
	defer cancel()
	drained := make(chan struct{})
	go func() { g.GracefulStop(); close(drained) }()
	if httpSrv != nil {
		_ = httpSrv.Shutdown(drainCtx)
	}
	select {
	case <-drained:
	case <-drainCtx.Done():
		log.Warn("drain grace expired; closing remaining connections")
		g.Stop()
	}
	if dlog != nil {
		flushCtx, cancel := context.WithTimeout(context.Background(), f.flushTimeout)
		defer cancel()
		if err := dlog.Close(flushCtx); err != nil {
			log.Error("decision log not fully written at shutdown", slog.String("error", err.Error()))
		} else {
			h := dlog.Health()
			log.Info("decision log written", slog.Uint64("written", h.Written), slog.Uint64("dropped", h.Dropped))
		}
	}
	if ship != nil {
		// The drained checks' decisions go to the control plane too.
		shipCtx, cancel := context.WithTimeout(context.Background(), f.flushTimeout)
		defer cancel()
		if err := ship.Close(shipCtx); err != nil {
			log.Error("decisions not all shipped at shutdown", slog.String("error", err.Error()))
		} else {
			h := ship.Health()
			log.Info("decisions shipped", slog.Uint64("shipped", h.Written), slog.Uint64("dropped", h.Dropped))
		}
	}
	if adminSrv != nil {
		closeCtx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = adminSrv.Shutdown(closeCtx)
	}
}

// parsePolicyFiles parses YAML policy documents, as read, into a bundle;
// every diagnostic error rejects the update.
func parsePolicyFiles(files []source.File) (*policies.Bundle, error) {
	set, diags := source.ParseFiles(files...)
	if err := diags.Err(); err != nil {
		return nil, err
	}
	b, _, err := policies.NewBundle("", set)
	return b, err
}

// asyncStderr puts the process log behind a spool: a request path that logs
// (a check denied on an error path, an xDS node that connects) never waits
// for stderr; lines that find the buffer full are dropped and counted in
// meshguard_<component>_log_dropped_total.
func asyncStderr(stderr io.Writer, reg prometheus.Registerer, component string) (*spool.Writer, error) {
	m, err := spool.NewMetrics(reg, component, "log")
	if err != nil {
		return nil, err
	}
	return spool.NewWriter(stderr, spool.Options{Capacity: 4096, Metrics: m}), nil
}

// closeWithin writes what w holds, for at most d.
func closeWithin(w *spool.Writer, d time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	_ = w.Close(ctx)
}

func addrOf(l net.Listener) string {
	if l == nil {
		return ""
	}
	return l.Addr().String()
}

// applyGCPercent sets the collector's target unless GOGC does.
func applyGCPercent(pct int, log *slog.Logger) error {
	switch {
	case pct == 0:
		return nil
	case pct < 50 || pct > 10000:
		return fmt.Errorf("--gc-percent %d: want 50 to 10000, or 0 for the runtime's default", pct)
	case os.Getenv("GOGC") != "":
		log.Info("GOGC is set; --gc-percent ignored", slog.String("GOGC", os.Getenv("GOGC")))
		return nil
	}
	debug.SetGCPercent(pct)
	return nil
}

// newShipper builds the decision shipper: mTLS with the server's SVID to
// the control plane's API (plain HTTP only with --insecure-plaintext).
func newShipper(f *authzFlags, idm *identityMaterial, log *slog.Logger, reg prometheus.Registerer) (*shipper.Shipper, error) {
	hs, err := decisionlog.SelectHeaders(f.decisionLogHeaders, append([]string{f.jwtHeader}, f.decisionLogRedact...))
	if err != nil {
		return nil, err
	}
	tr := &http.Transport{MaxIdleConnsPerHost: 2, IdleConnTimeout: time.Minute, ResponseHeaderTimeout: 30 * time.Second}
	switch {
	case strings.HasPrefix(f.ship.url, "https://"):
		if idm.svid == nil {
			return nil, errors.New("--ship-decisions https://: no SVID to authenticate with")
		}
		auth := tlsconfig.AuthorizeMemberOf(idm.td)
		if f.controlPlaneID != "" {
			id, err := spiffeid.FromString(f.controlPlaneID)
			if err != nil {
				return nil, fmt.Errorf("--control-plane-id: %w", err)
			}
			auth = tlsconfig.AuthorizeID(id)
		}
		tr.TLSClientConfig = tlsconfig.MTLSClientConfig(idm.svid, idm.bundles, auth)
	case strings.HasPrefix(f.ship.url, "http://") && f.insecurePlaintext:
	default:
		return nil, fmt.Errorf("--ship-decisions %q: want https://host:port (http:// only with --insecure-plaintext)", f.ship.url)
	}
	return shipper.New(shipper.Config{
		URL: f.ship.url, Client: &http.Client{Transport: tr, Timeout: time.Minute},
		AllowSampleRate: f.ship.allowSample, Headers: hs,
		Buffer: f.ship.buffer, Batch: f.ship.batch, Interval: f.ship.interval,
		Logger: log, Registerer: reg,
	})
}

// shipSink keeps a nil *Shipper from becoming a non-nil interface.
func shipSink(s *shipper.Shipper) server.DecisionSink {
	if s == nil {
		return nil
	}
	return s
}
