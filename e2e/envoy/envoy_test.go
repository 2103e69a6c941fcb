//go:build e2e

// Package envoy runs meshguard against a REAL Envoy where one exists
// (ENVOY_BIN, or envoy on PATH): SPIRE, `meshguard controlplane` and
// `meshguard authz` as separate processes, and two Envoys bootstrapped from
// deploy/envoy/bootstrap.yaml — their certificates over SDS from the SPIRE
// agent, everything else over ADS from the control plane — carrying real
// requests. Without an Envoy binary (as on meshguard's build machines) it is
// skipped with a message; the emulated data plane in e2e/ covers the request
// path there. docs/e2e.md says what has been run against a real Envoy.
package envoy

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	// The bootstrap's protocol options, for protojson.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"
	"sigs.k8s.io/yaml"

	"github.com/meshguard/meshguard/e2e/internal/proc"
	"github.com/meshguard/meshguard/e2e/internal/spire"
	"github.com/meshguard/meshguard/examples"
	"github.com/meshguard/meshguard/internal/testbed/freeport"
)

func envoyBinary(t *testing.T) string {
	if p := os.Getenv("ENVOY_BIN"); p != "" {
		return p
	}
	p, err := exec.LookPath("envoy")
	if err != nil {
		t.Skip("real-Envoy e2e skipped: no Envoy binary (set ENVOY_BIN or put envoy on PATH); the emulated data plane in e2e/ ran instead")
	}
	return p
}

func freePort(t *testing.T) int {
	t.Helper()
	return freeport.MustPort(t)
}

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(filepath.Dir(file)))
}

func binDir() string {
	if d := os.Getenv("MESHGUARD_BIN"); d != "" {
		return d
	}
	return filepath.Join(repoRoot(), "bin")
}

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

func sa(ns, name string) spiffeid.ID { return spiffeid.RequireFromPath(td, "/ns/"+ns+"/sa/"+name) }

// link gives a process its own binary path, for SPIRE's unix:path selector.
func link(t *testing.T, src, dir, name string) string {
	t.Helper()
	dst := filepath.Join(dir, name)
	if err := os.Link(src, dst); err == nil {
		return dst
	}
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return dst
}

// TestEnvoyRunsTheGeneratedConfig: the generated configuration is accepted
// by Envoy (the v3 config dump shows the listener active, its routes, the
// clusters, the SDS secrets from SPIRE and the wasm filter's ECDS config)
// and carries requests: allowed, denied by the wasm filter, denied by
// policy at the authz server, and denied after a quarantine.
func TestEnvoyRunsTheGeneratedConfig(t *testing.T) {
	envoy := envoyBinary(t)
	bins := binDir()
	wasm := filepath.Join(bins, "meshguard-filter.wasm")
	for _, p := range []string{filepath.Join(bins, "meshguard"), wasm} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%v (run `make build wasm`)", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	logs := t.TempDir()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("process logs in %s", logs)
		}
	})
	work, err := os.MkdirTemp("", "mg-envoy-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(work) })

	env, err := spire.Start(ctx, spire.Config{BinDir: bins, TrustDomain: td, LogDir: logs})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(env.Stop)
	agentSock := strings.TrimPrefix(env.SocketAddr(), "unix://")
	spiffeEnv := []string{"SPIFFE_ENDPOINT_SOCKET=" + env.SocketAddr()}

	cpID, authzID, adminID := sa("meshguard", "controlplane"), sa("meshguard", "authz"), sa("secops", "oncall")
	catalogID, ledgerID, frontendID := sa("bookstore", "catalog"), sa("payments", "ledger"), sa("bookstore", "frontend")
	mg := filepath.Join(bins, "meshguard")
	cpBin, authzBin, adminBin := link(t, mg, work, "meshguard-controlplane"), link(t, mg, work, "meshguard-authz"), link(t, mg, work, "meshguard-admin")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range []spire.Entry{
		{ID: cpID, Selectors: spire.WorkloadSelectors(cpBin)},
		{ID: authzID, Selectors: spire.WorkloadSelectors(authzBin)},
		{ID: adminID, Selectors: spire.WorkloadSelectors(adminBin)},
		// Both Envoys run one binary: each asks SDS for its own SVID by
		// name, as the generated configuration names it.
		{ID: catalogID, Selectors: spire.WorkloadSelectors(envoy)},
		{ID: ledgerID, Selectors: spire.WorkloadSelectors(envoy)},
		// This test calls the Envoys as the frontend.
		{ID: frontendID, Selectors: spire.WorkloadSelectors(self)},
	} {
		if err := env.Register(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	if err := env.WaitForX509(ctx, frontendID); err != nil {
		t.Fatal(err)
	}
	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr(env.SocketAddr())))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })

	// The applications behind the Envoys.
	appPort := map[string]int{}
	for _, name := range []string{"catalog", "ledger"} {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "%s %s %s", name, r.URL.Path, r.Header.Get("x-meshguard-source-id"))
		})}
		go func() { _ = srv.Serve(l) }()
		t.Cleanup(func() { _ = srv.Close() })
		appPort[name] = l.Addr().(*net.TCPAddr).Port
	}

	policyDir := filepath.Join(work, "policies")
	if err := os.CopyFS(policyDir, examples.FS()); err != nil {
		t.Fatal(err)
	}
	policyDir = filepath.Join(policyDir, "policies")
	xdsPort, httpPort, authzPort := freePort(t), freePort(t), freePort(t)
	inPort := map[string]int{"catalog": freePort(t), "ledger": freePort(t)}
	meshFile := filepath.Join(work, "mesh.yaml")
	mesh := fmt.Sprintf(`apiVersion: meshguard.dev/v1alpha1
kind: Mesh
metadata: {name: envoy-e2e}
spec:
  trustDomain: cluster.local
  authz: {address: 127.0.0.1, port: %d, spiffeID: %s, timeout: 1s}
  controlPlane: {address: 127.0.0.1, port: %d, spiffeID: %s}
  spire: {socketPath: %s}
  wasm: {file: %s, requireMtls: true}
  workloads:
  - name: catalog
    namespace: bookstore
    spiffeID: %s
    labels: {app: catalog}
    inbound: [{name: http, port: %d, appPort: %d, routes: [{name: catalog, prefix: /}]}]
  - name: ledger
    namespace: payments
    spiffeID: %s
    labels: {app: ledger}
    disableWasm: true
    inbound: [{name: http, port: %d, appPort: %d, routes: [{name: ledger, prefix: /}]}]
`, authzPort, authzID, httpPort, cpID, agentSock, wasm, catalogID, inPort["catalog"], appPort["catalog"],
		ledgerID, inPort["ledger"], appPort["ledger"])
	if err := os.WriteFile(meshFile, []byte(mesh), 0o600); err != nil {
		t.Fatal(err)
	}
	xdsAddr, httpAddr := "127.0.0.1:"+strconv.Itoa(xdsPort), "127.0.0.1:"+strconv.Itoa(httpPort)
	cp, err := proc.Start(proc.Spec{Name: "controlplane", Path: cpBin, Env: spiffeEnv, LogDir: logs, Args: []string{
		"controlplane", "--xds-addr", xdsAddr, "--http-addr", httpAddr, "--metrics-addr", "127.0.0.1:" + strconv.Itoa(freePort(t)),
		"--mesh", meshFile, "--policy", policyDir, "--reload", "200ms", "--admin-id", adminID.String(),
		"--state-dir", filepath.Join(work, "controlplane-state"),
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cp.Stop(5 * time.Second) })
	decisions := filepath.Join(logs, "decisions.jsonl")
	az, err := proc.Start(proc.Spec{Name: "authz", Path: authzBin, Env: spiffeEnv, LogDir: logs, Args: []string{
		"authz", "--grpc-addr", "127.0.0.1:" + strconv.Itoa(authzPort), "--admin-addr", "127.0.0.1:" + strconv.Itoa(freePort(t)),
		"--allowed-caller-trust-domain", "cluster.local", "--no-jwt-svid", "--decision-log", decisions,
		"--control-plane", xdsAddr, "--control-plane-id", cpID.String(), "--node-id", "authz-envoy-e2e",
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = az.Stop(5 * time.Second) })

	admins := map[string]string{}
	for i, w := range []struct{ name, cluster string }{{"catalog", "catalog.bookstore"}, {"ledger", "ledger.payments"}} {
		admin := "127.0.0.1:" + strconv.Itoa(freePort(t))
		admins[w.name] = admin
		bpath := filepath.Join(work, w.name+"-bootstrap.json")
		if err := os.WriteFile(bpath, bootstrap(t, w.name+"-envoy-e2e", w.cluster, admin, xdsPort, cpID, agentSock), 0o600); err != nil {
			t.Fatal(err)
		}
		ev, err := proc.Start(proc.Spec{Name: "envoy-" + w.name, Path: envoy, LogDir: logs,
			Args: []string{"-c", bpath, "--log-level", "info", "--base-id", strconv.Itoa(os.Getpid()%10000*10 + i)}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = ev.Stop(5 * time.Second) })
	}

	t.Run("Envoy accepts the generated configuration", func(t *testing.T) {
		for name, admin := range admins {
			wantID := catalogID
			if name == "ledger" {
				wantID = ledgerID
			}
			waitDump(t, ctx, admin, func(d *configDump) error { return d.check(name == "catalog", wantID.String()) })
		}
	})

	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{}}
	call := func(t *testing.T, name, method, path string) (int, string) {
		t.Helper()
		dest := catalogID
		if name == "ledger" {
			dest = ledgerID
		}
		client.Transport.(*http.Transport).TLSClientConfig = tlsconfig.MTLSClientConfig(src, src, tlsconfig.AuthorizeID(dest))
		req, err := http.NewRequestWithContext(ctx, method, "https://127.0.0.1:"+strconv.Itoa(inPort[name])+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
		client.CloseIdleConnections()
		return resp.StatusCode, resp.Header.Get("x-meshguard-reason")
	}
	decisionLines := func(t *testing.T) int {
		b, _ := os.ReadFile(decisions)
		return strings.Count(string(b), "\n")
	}

	t.Run("allowed", func(t *testing.T) {
		if st, reason := call(t, "catalog", "GET", "/api/books"); st != 200 {
			t.Fatalf("GET catalog /api/books: %d %q", st, reason)
		}
	})
	t.Run("denied by the wasm filter", func(t *testing.T) {
		n := decisionLines(t)
		if st, reason := call(t, "catalog", "POST", "/api/books"); st != 403 || reason != "denied_no_allow_match" {
			t.Fatalf("POST catalog /api/books: %d %q", st, reason)
		}
		time.Sleep(200 * time.Millisecond)
		if decisionLines(t) != n {
			t.Error("the authz server decided a request the filter had denied")
		}
	})
	t.Run("denied by policy at the authz server", func(t *testing.T) {
		n := decisionLines(t)
		st, reason := call(t, "ledger", "GET", "/v1/entries")
		if st != 403 || (reason != "denied_no_allow_match" && reason != "denied_default_deny") {
			t.Fatalf("GET ledger /v1/entries: %d %q", st, reason)
		}
		time.Sleep(200 * time.Millisecond)
		if decisionLines(t) == n {
			t.Error("no authz decision logged for the denial")
		}
	})
	t.Run("quarantined", func(t *testing.T) {
		cmd := exec.CommandContext(ctx, adminBin, "quarantine", "add", frontendID.String(), "--reason", "envoy e2e", "--for", "5m",
			"--server", "https://"+httpAddr, "--server-id", cpID.String())
		cmd.Env = append(os.Environ(), spiffeEnv...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("quarantine add: %v: %s", err, out)
		}
		for _, w := range []struct{ name, method, path string }{{"catalog", "GET", "/api/books"}, {"ledger", "GET", "/v1/entries"}} {
			deadline := time.Now().Add(10 * time.Second)
			for {
				st, reason := call(t, w.name, w.method, w.path)
				if st == 403 && reason == "denied_quarantined" {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%s: %d %q, want 403 denied_quarantined", w.name, st, reason)
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
	})
}

// bootstrap is deploy/envoy/bootstrap.yaml for this node: its id and
// cluster, admin address, the control plane's address and SPIFFE ID, the
// SPIRE agent's socket.
func bootstrap(t *testing.T, id, cluster, admin string, xdsPort int, cpID spiffeid.ID, agentSock string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot(), "deploy", "envoy", "bootstrap.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		t.Fatal(err)
	}
	var b bootstrapv3.Bootstrap
	if err := protojson.Unmarshal(js, &b); err != nil {
		t.Fatal(err)
	}
	b.Node.Id, b.Node.Cluster = id, cluster
	host, port, _ := net.SplitHostPort(admin)
	p, _ := strconv.Atoi(port)
	b.Admin.Address = socket(host, p)
	for _, c := range b.StaticResources.Clusters {
		ep := c.LoadAssignment.Endpoints[0].LbEndpoints[0].GetEndpoint()
		switch {
		case ep.Address.GetPipe() != nil:
			ep.Address.GetPipe().Path = agentSock
		default:
			ep.Address = socket("127.0.0.1", xdsPort)
			var u tlsv3.UpstreamTlsContext
			if err := c.TransportSocket.GetTypedConfig().UnmarshalTo(&u); err != nil {
				t.Fatal(err)
			}
			u.Sni = ""
			u.CommonTlsContext.GetCombinedValidationContext().GetDefaultValidationContext().GetMatchTypedSubjectAltNames()[0].GetMatcher().MatchPattern =
				&matcherv3.StringMatcher_Exact{Exact: cpID.String()}
			a, err := anypb.New(&u)
			if err != nil {
				t.Fatal(err)
			}
			c.TransportSocket.ConfigType = &corev3.TransportSocket_TypedConfig{TypedConfig: a}
		}
	}
	out, err := protojson.Marshal(&b)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func socket(host string, port int) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(port)}}}}
}

// configDump holds the parts of Envoy's v3 /config_dump this test reads.
type configDump struct {
	Configs []json.RawMessage `json:"configs"`
}

type typed struct {
	Type string `json:"@type"`
}

const adminV3 = "type.googleapis.com/envoy.admin.v3."

// check reports what is missing: the inbound listener active (not warming,
// no error), its routes, the clusters, the SDS secrets, and with wasm the
// filter's ECDS config.
func (d *configDump) check(wasm bool, svid string) error {
	var listenerActive, routes, authzCluster, cpCluster, appCluster, cert, bundle, ecds bool
	var problems []string
	for _, raw := range d.Configs {
		var ty typed
		_ = json.Unmarshal(raw, &ty)
		switch ty.Type {
		case adminV3 + "ListenersConfigDump":
			var l struct {
				DynamicListeners []struct {
					Name         string          `json:"name"`
					ActiveState  json.RawMessage `json:"active_state"`
					WarmingState json.RawMessage `json:"warming_state"`
					ErrorState   json.RawMessage `json:"error_state"`
				} `json:"dynamic_listeners"`
			}
			_ = json.Unmarshal(raw, &l)
			for _, dl := range l.DynamicListeners {
				if dl.Name != "inbound_http" {
					continue
				}
				if len(dl.ErrorState) > 0 {
					problems = append(problems, "listener error: "+string(dl.ErrorState))
				}
				listenerActive = len(dl.ActiveState) > 0 && len(dl.WarmingState) == 0
			}
		case adminV3 + "RoutesConfigDump":
			var r struct {
				DynamicRouteConfigs []struct {
					RouteConfig struct {
						Name string `json:"name"`
					} `json:"route_config"`
				} `json:"dynamic_route_configs"`
			}
			_ = json.Unmarshal(raw, &r)
			for _, rc := range r.DynamicRouteConfigs {
				routes = routes || rc.RouteConfig.Name == "inbound_http"
			}
		case adminV3 + "ClustersConfigDump":
			var c struct {
				DynamicActiveClusters []struct {
					Cluster struct {
						Name string `json:"name"`
					} `json:"cluster"`
				} `json:"dynamic_active_clusters"`
			}
			_ = json.Unmarshal(raw, &c)
			for _, dc := range c.DynamicActiveClusters {
				switch dc.Cluster.Name {
				case "meshguard_authz":
					authzCluster = true
				case "meshguard_controlplane":
					cpCluster = true
				case "inbound_app_http":
					appCluster = true
				}
			}
		case adminV3 + "SecretsConfigDump":
			var s struct {
				DynamicActiveSecrets []struct {
					Name string `json:"name"`
				} `json:"dynamic_active_secrets"`
			}
			_ = json.Unmarshal(raw, &s)
			for _, sec := range s.DynamicActiveSecrets {
				cert = cert || sec.Name == svid
				bundle = bundle || sec.Name == td.IDString()
			}
		case adminV3 + "EcdsConfigDump":
			var e struct {
				EcdsFilters []struct {
					EcdsFilter struct {
						Name string `json:"name"`
					} `json:"ecds_filter"`
				} `json:"ecds_filters"`
			}
			_ = json.Unmarshal(raw, &e)
			for _, f := range e.EcdsFilters {
				ecds = ecds || f.EcdsFilter.Name == "meshguard-wasm"
			}
		}
	}
	for what, ok := range map[string]bool{"inbound_http active": listenerActive, "route configuration inbound_http": routes,
		"cluster meshguard_authz": authzCluster, "cluster meshguard_controlplane": cpCluster, "cluster inbound_app_http": appCluster,
		"SDS secret " + svid: cert, "SDS secret " + td.IDString(): bundle, "ECDS meshguard-wasm": ecds || !wasm} {
		if !ok {
			problems = append(problems, "no "+what)
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("%s", strings.Join(problems, "; "))
	}
	return nil
}

// waitDump polls Envoy's admin /config_dump (with secrets' names) until
// check passes.
func waitDump(t *testing.T, ctx context.Context, admin string, check func(*configDump) error) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	var last error
	for time.Now().Before(deadline) && ctx.Err() == nil {
		resp, err := http.Get("http://" + admin + "/config_dump?include_eds")
		if err == nil {
			var d configDump
			err = json.NewDecoder(resp.Body).Decode(&d)
			resp.Body.Close()
			if err == nil {
				if last = check(&d); last == nil {
					return
				}
			}
		}
		if err != nil {
			last = err
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatalf("Envoy at %s did not accept the configuration within 60s: %v", admin, last)
}
