//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshguard/meshguard/e2e/internal/proc"
	"github.com/meshguard/meshguard/e2e/internal/spire"
	"github.com/meshguard/meshguard/internal/testbed/ca"
	"github.com/meshguard/meshguard/internal/testbed/freeport"
)

// trustDomain is the example policies' trust domain (examples/policies).
var trustDomain = spiffeid.RequireTrustDomainFromString("cluster.local")

func sa(ns, name string) spiffeid.ID {
	return spiffeid.RequireFromPath(trustDomain, "/ns/"+ns+"/sa/"+name)
}

var (
	authzID = sa("meshguard", "authz")
	cpID    = sa("meshguard", "controlplane")
	adminID = sa("secops", "oncall")
)

// workloadDef is one workload of the example mesh: what its mesh
// description says. Its proxy gets everything else from the control plane.
type workloadDef struct {
	name, ns string
	sa       string            // service account (SPIFFE ID /ns/<ns>/sa/<sa>); default name
	labels   map[string]string // default app: <name>
	service  string            // default name
	noWasm   bool              // disableWasm: ext_authz alone enforces
	routes   []routeDef
	x509TTL  time.Duration
	// upstreams are the workloads it calls through its sidecar (outbound
	// listeners named outbound_<workload>).
	upstreams []string
}

type routeDef struct{ name, prefix string }

// catalogLabels are the labels of the two Deployments of the catalog's
// service account that differ only in version.
func catalogLabels(version string) map[string]string {
	return map[string]string{"app": "catalog", "version": version}
}

var workloads = []workloadDef{
	{name: "frontend", ns: "bookstore", routes: []routeDef{{"frontend", "/"}}, x509TTL: 30 * time.Second},
	{name: "catalog", ns: "bookstore", routes: []routeDef{{"catalog", "/"}}, x509TTL: 30 * time.Second},
	{name: "catalog-v1", ns: "bookstore", sa: "catalog", service: "catalog", labels: catalogLabels("v1"), noWasm: true, routes: []routeDef{{"catalog", "/"}}},
	{name: "catalog-v2", ns: "bookstore", sa: "catalog", service: "catalog", labels: catalogLabels("v2"), noWasm: true, routes: []routeDef{{"catalog", "/"}}},
	{name: "reviews", ns: "bookstore", routes: []routeDef{{"reviews", "/"}}},
	{name: "orders", ns: "bookstore", routes: []routeDef{{"orders", "/"}}},
	{name: "payments-api", ns: "payments", noWasm: true, routes: []routeDef{{"payments-charges", "/v1/charges"}, {"payments-refunds", "/v1/refunds"}, {"payments-api", "/"}}},
	{name: "ledger", ns: "payments", noWasm: true, routes: []routeDef{{"ledger", "/"}}},
	{name: "support", ns: "backoffice", noWasm: true, routes: []routeDef{{"support", "/"}}},
	// ratings calls the rest of the mesh through its sidecar (the
	// outbound scenario compromises it).
	{name: "ratings", ns: "bookstore", routes: []routeDef{{"ratings", "/"}},
		upstreams: []string{"catalog", "orders", "frontend", "reviews", "payments-api", "ledger"}},
}

// workloadByName returns a workload of the suite's mesh.
func workloadByName(name string) workloadDef {
	for _, w := range workloads {
		if w.name == name {
			return w
		}
	}
	panic("no workload " + name)
}

func (w workloadDef) id() spiffeid.ID {
	if w.sa != "" {
		return sa(w.ns, w.sa)
	}
	return sa(w.ns, w.name)
}

// ports are a workload's inbound (proxy) and application ports, and the
// loopback port of each of its outbound listeners.
type ports struct {
	inbound, app int
	out          map[string]int
}

// meshYAML describes the mesh to the control plane (controlplane/mesh): the
// input a user writes. Routes, context extensions, labels on the wire,
// clusters and filters are what the control plane makes of it.
func meshYAML(authzAddr, cpAddr, wasmPath string, p map[string]ports) string {
	host, port, _ := net.SplitHostPort(authzAddr)
	cpHost, cpPort, _ := net.SplitHostPort(cpAddr)
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: meshguard.dev/v1alpha1\nkind: Mesh\nmetadata: {name: e2e}\nspec:\n  trustDomain: cluster.local\n")
	fmt.Fprintf(&b, "  authz: {address: %s, port: %s, spiffeID: %s, timeout: 1s}\n", host, port, authzID)
	fmt.Fprintf(&b, "  controlPlane: {address: %s, port: %s, spiffeID: %s}\n", cpHost, cpPort, cpID)
	fmt.Fprintf(&b, "  wasm: {file: %s, requireMtls: true}\n  workloads:\n", wasmPath)
	for _, w := range workloads {
		labels := w.labels
		if labels == nil {
			labels = map[string]string{"app": w.name}
		}
		lj, _ := json.Marshal(labels)
		fmt.Fprintf(&b, "  - name: %s\n    namespace: %s\n    spiffeID: %s\n    labels: %s\n", w.name, w.ns, w.id(), lj)
		if w.service != "" {
			fmt.Fprintf(&b, "    service: %s\n", w.service)
		}
		if w.noWasm {
			fmt.Fprintf(&b, "    disableWasm: true\n")
		}
		fmt.Fprintf(&b, "    inbound:\n    - name: http\n      port: %d\n      appPort: %d\n      routes:\n", p[w.name].inbound, p[w.name].app)
		for _, r := range w.routes {
			fmt.Fprintf(&b, "      - {name: %s, prefix: %s}\n", r.name, r.prefix)
		}
		if len(w.upstreams) > 0 {
			fmt.Fprintf(&b, "    upstreams:\n")
		}
		for _, u := range w.upstreams {
			fmt.Fprintf(&b, "    - {name: %s, address: 127.0.0.1, port: %d, spiffeID: %s, listenPort: %d}\n",
				u, p[u].inbound, workloadByName(u).id(), p[w.name].out[u])
		}
	}
	return b.String()
}

// freePort is a loopback port free now, below the ephemeral range.
func freePort(t *testing.T) int {
	t.Helper()
	return freeport.MustPort(t)
}

func freeAddr(t *testing.T) string {
	t.Helper()
	return freeport.MustAddr(t)
}

// decisionLog reads the authz server's decision log file.
type decisionEntry struct {
	RequestID string `json:"request_id"`
	Source    string `json:"source"`
	Path      string `json:"path"`
	Route     string `json:"route"`
	Allowed   bool   `json:"allowed"`
	Reason    string `json:"reason"`
	Mode      string `json:"mode"`
	Policy    string `json:"policy"`
	Rule      string `json:"rule"`
	WouldDeny bool   `json:"would_deny"`
}

func readDecisions(t *testing.T, path string) []decisionEntry {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []decisionEntry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var e decisionEntry
		if json.Unmarshal(sc.Bytes(), &e) == nil {
			out = append(out, e)
		}
	}
	return out
}

// ratingsProfile watches the workload the outbound scenario compromises:
// its own sidecar blocks more than three distinct destinations a minute
// (on its outbound side the destinations are the services its routes'
// clusters lead to); the control plane quarantines it when more than two
// destinations report it within a minute.
const ratingsProfile = `apiVersion: meshguard.dev/v1alpha1
kind: AnomalyProfile
metadata: {name: ratings, namespace: bookstore}
spec:
  workloads: ["spiffe://cluster.local/ns/bookstore/sa/ratings"]
  enumeration: {window: 1m, maxPaths: 500, maxDestinations: 3}
  responses: {enumeration: block}
  quarantineFor: 10m
  correlation: {window: 1m, maxDestinations: 2, response: quarantine}
`

// TestE2E brings up the whole system once and runs the scenarios in order;
// each scenario logs a SCENARIO line with its outcome and duration.
func TestE2E(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e: not in -short mode")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	logs := logDir(t)
	bins := binDir(t)
	meshguardBin := filepath.Join(bins, "meshguard")
	wasmModule := filepath.Join(bins, "meshguard-filter.wasm")
	for _, p := range []string{meshguardBin, wasmModule} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%v (run `make build wasm`, or `make e2e`)", err)
		}
	}
	suiteStart := time.Now()

	env, err := spire.Start(ctx, spire.Config{BinDir: bins, TrustDomain: trustDomain, LogDir: logs})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(env.Stop)
	t.Logf("SPIRE server and agent healthy in %v", time.Since(suiteStart).Round(time.Millisecond))

	wdir, err := os.MkdirTemp("", "mg-e2e-bin-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(wdir) })
	workloadBin := buildWorkload(t, wdir)
	spiffeEnv := []string{"SPIFFE_ENDPOINT_SOCKET=" + env.SocketAddr()}
	workloadEnv := append([]string{"MG_E2E_WAZERO_CACHE=" + filepath.Join(wdir, "wazero-cache")}, spiffeEnv...)

	// meshguard's own processes get their identities like any workload: by
	// the path of their binary.
	authzBin := linkBinary(t, meshguardBin, wdir, "meshguard-authz")
	cpBin := linkBinary(t, meshguardBin, wdir, "meshguard-controlplane")
	adminBin := linkBinary(t, meshguardBin, wdir, "meshguard-admin")
	for id, path := range map[spiffeid.ID]string{authzID: authzBin, cpID: cpBin, adminID: adminBin} {
		if err := env.Register(ctx, spire.Entry{ID: id, Selectors: spire.WorkloadSelectors(path)}); err != nil {
			t.Fatal(err)
		}
	}
	ws := map[string]*workload{}
	for _, d := range workloads {
		wl := &workload{name: d.name, id: d.id(), path: linkBinary(t, workloadBin, wdir, d.name)}
		if err := env.Register(ctx, spire.Entry{ID: wl.id, Selectors: spire.WorkloadSelectors(wl.path), X509TTL: d.x509TTL}); err != nil {
			t.Fatal(err)
		}
		ws[d.name] = wl
	}

	// Policies: the examples, in a directory the control plane re-reads.
	policyDir := filepath.Join(wdir, "policies")
	if err := os.CopyFS(policyDir, examplesPolicies()); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(policyDir, "zz-e2e-ratings-profile.yaml"), []byte(ratingsProfile), 0o600); err != nil {
		t.Fatal(err)
	}

	authzAddr, cpXDS, cpHTTP := freeAddr(t), freeAddr(t), freeAddr(t)
	wports := map[string]ports{}
	for _, d := range workloads {
		wports[d.name] = ports{inbound: freePort(t), app: freePort(t), out: map[string]int{}}
		for _, u := range d.upstreams {
			wports[d.name].out[u] = freePort(t)
		}
	}
	meshFile := filepath.Join(wdir, "mesh.yaml")
	if err := os.WriteFile(meshFile, []byte(meshYAML(authzAddr, cpHTTP, wasmModule, wports)), 0o600); err != nil {
		t.Fatal(err)
	}
	cp, err := proc.Start(proc.Spec{Name: "controlplane", Path: cpBin, Env: spiffeEnv, LogDir: logs, Args: []string{
		"controlplane", "--xds-addr", cpXDS, "--http-addr", cpHTTP, "--metrics-addr", freeAddr(t),
		"--state-dir", filepath.Join(wdir, "controlplane-state"),
		"--mesh", meshFile, "--policy", policyDir, "--reload", "200ms",
		"--admin-id", adminID.String(), "--protected-id", authzID.String(),
		"--quarantine-threshold", "2", "--quarantine-window", "1m",
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cp.Stop(5 * time.Second) })

	decisions := filepath.Join(logs, "decisions.jsonl")
	authzArgs := []string{
		"authz", "--grpc-addr", authzAddr, "--admin-addr", freeAddr(t),
		"--allowed-caller-trust-domain", "cluster.local", "--jwt-audience", "payments",
		"--control-plane", cpXDS, "--control-plane-id", cpID.String(), "--node-id", "authz-e2e",
		"--decision-log", decisions,
	}
	startAuthz := func(t *testing.T) *proc.Process {
		p, err := proc.Start(proc.Spec{Name: "authz", Path: authzBin, Env: spiffeEnv, LogDir: logs, Args: authzArgs})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	authz := startAuthz(t)
	t.Cleanup(func() { _ = authz.Stop(5 * time.Second) })

	for _, d := range workloads {
		// The workload's proxy knows only its control plane and its node:
		// listeners, routes, clusters and filters come over ADS.
		args := []string{"--xds", cpXDS, "--node-cluster", d.name + "." + d.ns, "--controlplane-id", cpID.String(),
			"--app-addr", fmt.Sprintf("127.0.0.1:%d", wports[d.name].app)}
		startWorkload(ctx, t, ws[d.name], workloadEnv, args, logs)
	}
	t.Logf("setup done in %v", time.Since(suiteStart).Round(time.Millisecond))

	call := func(t *testing.T, from, to, path string, o callOpts) callResult {
		t.Helper()
		return ws[from].call(t, ws[to], path, o)
	}
	expect := func(t *testing.T, r callResult, status int, reason string) {
		t.Helper()
		if r.Status != status || (reason != "" && r.Reason != reason) {
			t.Errorf("got %d %q (%s), want %d %q", r.Status, r.Reason, r.Error, status, reason)
		}
	}

	timed(t, "spire identities and mTLS", func(t *testing.T) {
		// startWorkload checked each process got its own SVID.
		// The app learns the caller from the authz server's
		// x-meshguard-source-id, and from the XFCC its sidecar's
		// connection manager sets (SANITIZE_SET) for the peer it verified,
		// which the authz server leaves to the app, as in Istio.
		r := call(t, "frontend", "catalog", "/api/books", callOpts{})
		var seen struct{ Source, XFCC string }
		if err := json.Unmarshal([]byte(r.Body), &seen); err != nil || seen.Source != ws["frontend"].id.String() {
			t.Errorf("upstream did not see the caller's SPIFFE ID: %s (%v)", r.Body, err)
		}
		if !strings.Contains(seen.XFCC, "By="+ws["catalog"].id.String()+";") || !strings.HasSuffix(seen.XFCC, ";URI="+ws["frontend"].id.String()) {
			t.Errorf("upstream did not get its sidecar's XFCC for the caller: %q", seen.XFCC)
		}
		// A client cannot pass an identity off as its own.
		r = call(t, "frontend", "catalog", "/api/books", callOpts{Headers: map[string][]string{
			"x-forwarded-client-cert": {"URI=" + adminID.String()}, "x-meshguard-source-id": {adminID.String()}}})
		if err := json.Unmarshal([]byte(r.Body), &seen); err != nil || seen.Source != ws["frontend"].id.String() || strings.Contains(seen.XFCC, adminID.String()) {
			t.Errorf("a client-sent identity reached the app: %s (%v)", r.Body, err)
		}
	})

	timed(t, "legitimate calls allowed", func(t *testing.T) {
		expect(t, call(t, "frontend", "catalog", "/api/books", callOpts{}), 200, "")
		expect(t, call(t, "frontend", "orders", "/api/orders", callOpts{Method: "POST"}), 200, "")
		expect(t, call(t, "reviews", "catalog", "/api/books/1", callOpts{}), 200, "")
		expect(t, call(t, "payments-api", "ledger", "/v1/entries", callOpts{Method: "POST"}), 200, "")
	})

	// writePolicy adds a policy file to the control plane's directory (read
	// every 200ms) and returns a function that removes it.
	writePolicy := func(t *testing.T, name, doc string) func() {
		t.Helper()
		path := filepath.Join(policyDir, name)
		if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
		return func() {
			if err := os.Remove(path); err != nil {
				t.Error(err)
			}
		}
	}
	// eventually calls until the answer is status and reason, or 5s pass;
	// it returns the last answer.
	eventually := func(t *testing.T, from, to, path string, status int, reason string) callResult {
		t.Helper()
		var r callResult
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			if r = call(t, from, to, path, callOpts{}); r.Status == status && (reason == "" || r.Reason == reason) {
				break
			}
		}
		return r
	}

	// catalog-v1 and catalog-v2 are one service account in two Deployments
	// that differ only in their version label, behind ext_authz alone: what
	// the authz server decides comes from the labels on the routes the
	// control plane generated for each.
	timed(t, "selector-scoped ALLOW admits only the selected version", func(t *testing.T) {
		// The examples' catalog ALLOW selects app: catalog, so both
		// versions take the frontend's reads.
		expect(t, call(t, "frontend", "catalog-v1", "/api/books", callOpts{}), 200, "")
		expect(t, call(t, "frontend", "catalog-v2", "/api/books", callOpts{}), 200, "")
		remove := writePolicy(t, "zz-e2e-v2-stock.yaml", `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: e2e-v2-stock, namespace: bookstore}
spec:
  selector: {matchLabels: {app: catalog, version: v2}}
  rules:
  - from: [{source: {principals: [cluster.local/ns/bookstore/sa/orders]}}]
    to: [{operation: {methods: [GET], paths: [/api/stock]}}]
`)
		expect(t, eventually(t, "orders", "catalog-v2", "/api/stock", 200, ""), 200, "")
		expect(t, call(t, "orders", "catalog-v1", "/api/stock", callOpts{}), 403, "denied_no_allow_match")
		remove()
		expect(t, eventually(t, "orders", "catalog-v2", "/api/stock", 403, ""), 403, "denied_no_allow_match")
	})

	timed(t, "selector-scoped DENY applies only to the selected version", func(t *testing.T) {
		remove := writePolicy(t, "zz-e2e-v2-no-export.yaml", `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: e2e-read-catalog, namespace: bookstore}
spec:
  rules:
  - from: [{source: {principals: [cluster.local/ns/bookstore/sa/frontend]}}]
    to: [{operation: {methods: [GET], paths: ["/api/*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: e2e-v2-no-export, namespace: bookstore}
spec:
  selector: {matchLabels: {app: catalog, version: v2}}
  action: DENY
  rules:
  - to: [{operation: {paths: [/api/export]}}]
`)
		// The namespace-wide ALLOW admits the export on v1 once the bundle
		// is in force; on v2 the DENY must hold all the same.
		expect(t, eventually(t, "frontend", "catalog-v1", "/api/export", 200, ""), 200, "")
		expect(t, call(t, "frontend", "catalog-v2", "/api/export", callOpts{}), 403, "denied_by_policy")
		var outs []struct{ DeniedBy, Reason string }
		ws["catalog-v2"].get(t, "/outcomes", &outs)
		if len(outs) == 0 || outs[len(outs)-1].DeniedBy != "authz" {
			t.Errorf("catalog-v2's last outcome: %+v, want denied by authz", outs[len(outs)-1:])
		}
		remove()
		expect(t, eventually(t, "frontend", "catalog-v1", "/api/export", 403, ""), 403, "denied_no_allow_match")
	})

	timed(t, "caller without permission denied by the wasm filter and by authz", func(t *testing.T) {
		// orders runs the wasm filter: it denies before ext_authz.
		expect(t, call(t, "reviews", "orders", "/api/orders", callOpts{Method: "POST"}), 403, "denied_no_allow_match")
		var outs []struct{ DeniedBy, Reason, Source string }
		ws["orders"].get(t, "/outcomes", &outs)
		if len(outs) == 0 || outs[len(outs)-1].DeniedBy != "filter" {
			t.Errorf("orders' last outcome: %+v, want denied by the filter", outs[len(outs)-1:])
		}
		// ledger runs ext_authz only: the authz server denies.
		expect(t, call(t, "reviews", "ledger", "/v1/entries", callOpts{}), 403, "denied_no_allow_match")
		ws["ledger"].get(t, "/outcomes", &outs)
		if len(outs) == 0 || outs[len(outs)-1].DeniedBy != "authz" {
			t.Errorf("ledger's last outcome: %+v, want denied by authz", outs[len(outs)-1:])
		}
	})

	timed(t, "per-route override in dry-run", func(t *testing.T) {
		// RouteOverride refunds-require-ticket: DENY without a ticket, rule
		// no-ticket in dry-run: allowed, recorded as a would-deny.
		expect(t, call(t, "support", "payments-api", "/v1/refunds", callOpts{Method: "POST"}), 200, "")
		expect(t, call(t, "support", "payments-api", "/v1/refunds", callOpts{Method: "POST", Headers: map[string][]string{"x-ticket-id": {"SUP-1"}}}), 200, "")
		// Another route of the same workload is not affected by the override.
		expect(t, call(t, "support", "payments-api", "/v1/charges/1", callOpts{}), 403, "denied_no_allow_match")
		time.Sleep(200 * time.Millisecond)
		var would int
		for _, e := range readDecisions(t, decisions) {
			if e.Route == "payments-refunds" && e.WouldDeny && strings.Contains(e.Policy, "refunds-require-ticket") && e.Rule == "no-ticket" {
				would++
			}
		}
		if would != 1 {
			t.Errorf("decision log has %d would-deny entries for the refund without a ticket, want 1", would)
		}
	})

	timed(t, "JWT-SVID from the Workload API accepted, forged one denied", func(t *testing.T) {
		expect(t, call(t, "orders", "payments-api", "/v1/charges", callOpts{Method: "POST", JWTAud: "payments"}), 200, "")
		expect(t, call(t, "orders", "payments-api", "/v1/charges", callOpts{Method: "POST"}), 403, "denied_no_allow_match")
		forger, err := ca.New(trustDomain)
		if err != nil {
			t.Fatal(err)
		}
		forged, err := forger.IssueJWTSVID(ws["orders"].id, []string{"payments"}, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		expect(t, call(t, "orders", "payments-api", "/v1/charges", callOpts{Method: "POST", Bearer: forged}), 403, "denied_invalid_jwt")
	})

	timed(t, "policy change enforced everywhere within 1s", func(t *testing.T) {
		deny := `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: e2e-freeze, namespace: istio-system}
spec:
  action: DENY
  rules:
  - to:
    - operation: {paths: ["/api/books", "/v1/entries"]}
`
		path := filepath.Join(policyDir, "zz-e2e-freeze.yaml")
		start := time.Now()
		if err := os.WriteFile(path, []byte(deny), 0o600); err != nil {
			t.Fatal(err)
		}
		waitDenied := func(from, to, p, method string) time.Duration {
			for time.Since(start) < 10*time.Second {
				if r := call(t, from, to, p, callOpts{Method: method}); r.Status == 403 && r.Reason == "denied_by_policy" {
					return time.Since(start)
				}
				time.Sleep(20 * time.Millisecond)
			}
			return -1
		}
		// catalog: wasm filter (ECDS) and authz; ledger: authz (ADS) only.
		dw := waitDenied("frontend", "catalog", "/api/books", "GET")
		da := waitDenied("payments-api", "ledger", "/v1/entries", "POST")
		t.Logf("deny in force: wasm filter path %v, authz path %v (control plane polls the directory every 200ms)", dw, da)
		if dw < 0 || da < 0 || dw > time.Second+200*time.Millisecond || da > time.Second+200*time.Millisecond {
			t.Errorf("policy change not enforced everywhere within 1s (+200ms file poll): wasm %v, authz %v", dw, da)
		}
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			if call(t, "frontend", "catalog", "/api/books", callOpts{}).Status == 200 &&
				call(t, "payments-api", "ledger", "/v1/entries", callOpts{Method: "POST"}).Status == 200 {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Error("removing the policy did not restore access")
	})

	timed(t, "SVID rotation under traffic without failed requests", func(t *testing.T) {
		var before, after struct{ Serial string }
		ws["frontend"].get(t, "/svid", &before)
		var catBefore, catAfter struct{ Serial string }
		ws["catalog"].get(t, "/svid", &catBefore)
		deadline := time.Now().Add(45 * time.Second)
		var total, failed int
		for time.Now().Before(deadline) {
			r := call(t, "frontend", "catalog", "/api/books", callOpts{Count: 5})
			total += 5
			failed += 5 - r.Statuses["200"]
			ws["frontend"].get(t, "/svid", &after)
			ws["catalog"].get(t, "/svid", &catAfter)
			if after.Serial != before.Serial && catAfter.Serial != catBefore.Serial {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Logf("%d requests while both X509-SVIDs (TTL 30s) rotated, %d failed", total, failed)
		if after.Serial == before.Serial || catAfter.Serial == catBefore.Serial {
			t.Error("the SVIDs did not rotate within 45s")
		}
		if failed != 0 {
			t.Errorf("%d of %d requests failed during rotation", failed, total)
		}
	})

	timed(t, "compromised workload: scan and lateral movement, detected, quarantined, denied, released", func(t *testing.T) {
		start := time.Now()
		// Checked on ledger (ext_authz only): catalog's filter may answer
		// with its own enumeration block (denied_anomaly) first.
		quarantined := func() bool {
			r := call(t, "reviews", "ledger", "/v1/entries", callOpts{})
			return r.Status == 403 && r.Reason == "denied_quarantined"
		}
		for round := 0; time.Since(start) < 60*time.Second; round++ {
			var sw sync.WaitGroup
			for w := 0; w < 6; w++ {
				sw.Add(1)
				go func() {
					defer sw.Done()
					// Distinct files, not records: the enumeration detector
					// folds all-digit and UUID-like segments (/scan/1/2 and
					// /scan/1/3 are one collection read twice).
					for i := w; i < 90; i += 6 {
						call(t, "reviews", "catalog", fmt.Sprintf("/scan-r%d/file-%d.bak", round, i), callOpts{})
					}
				}()
			}
			sw.Wait()
			for _, to := range []string{"orders", "payments-api", "ledger", "frontend"} {
				call(t, "reviews", to, "/", callOpts{Count: 3})
			}
			if quarantined() {
				break
			}
		}
		detected := time.Since(start)
		if !quarantined() {
			t.Fatalf("reviews was not quarantined within 60s; control plane log: %s", cp.LogPath())
		}
		t.Logf("quarantined %v after the attack started", detected.Round(time.Millisecond))
		// Denied everywhere: through the wasm filter and through authz.
		expect(t, call(t, "reviews", "ledger", "/v1/entries", callOpts{}), 403, "denied_quarantined")
		expect(t, call(t, "reviews", "payments-api", "/v1/charges/1", callOpts{}), 403, "denied_quarantined")
		// Other workloads are unaffected.
		expect(t, call(t, "frontend", "catalog", "/api/books", callOpts{}), 200, "")

		// The admin CLI is its own SPIRE identity (the oncall operator).
		cmd := exec.CommandContext(ctx, adminBin, "quarantine", "release", ws["reviews"].id.String(),
			"--server", "https://"+cpHTTP, "--server-id", cpID.String(), "--reason", "e2e")
		cmd.Env = append(os.Environ(), spiffeEnv...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("quarantine release: %v: %s", err, out)
		}
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			if r := call(t, "reviews", "ledger", "/v1/entries", callOpts{}); r.Reason != "denied_quarantined" {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Error("release did not lift the quarantine within 5s")
	})

	// admin runs the operator CLI (its own SPIRE identity) against the
	// control plane's admin API.
	admin := func(t *testing.T, args ...string) []byte {
		t.Helper()
		cmd := exec.CommandContext(ctx, adminBin, append(args, "--server", "https://"+cpHTTP, "--server-id", cpID.String())...)
		cmd.Env = append(os.Environ(), spiffeEnv...)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%v: %v: %s", args, err, out)
		}
		return out
	}
	type quarantineEntry struct {
		Identity, Reason, By string
		Evidence             []struct{ Key, Reporter, Kind, Detector, Destination string }
	}
	quarantineOf := func(t *testing.T, id spiffeid.ID) (quarantineEntry, bool) {
		t.Helper()
		var entries []quarantineEntry
		if err := json.Unmarshal(admin(t, "quarantine", "list", "--json"), &entries); err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if e.Identity == id.String() {
				return e, true
			}
		}
		return quarantineEntry{}, false
	}
	// seenBy counts the requests from a caller that reached a workload's
	// sidecar.
	seenBy := func(t *testing.T, to string, from spiffeid.ID) int {
		t.Helper()
		var outs []struct{ Source string }
		ws[to].get(t, "/outcomes", &outs)
		n := 0
		for _, o := range outs {
			if o.Source == from.String() {
				n++
			}
		}
		return n
	}
	type outcome struct{ Listener, DeniedBy, Reason string }
	lastOutcome := func(t *testing.T, w string) outcome {
		t.Helper()
		var outs []outcome
		ws[w].get(t, "/outcomes", &outs)
		if len(outs) == 0 {
			t.Fatalf("%s's sidecar has no outcome", w)
		}
		return outs[len(outs)-1]
	}

	timed(t, "outbound: correlated across destinations, fan-out blocked at its source", func(t *testing.T) {
		// Every line the scenario prints starts with OUTBOUND.
		say := func(format string, args ...any) { t.Logf("OUTBOUND "+format, args...) }
		ratings := ws["ratings"].id
		quarantinedAt := func(to string) bool {
			r := call(t, "ratings", to, "/v1/entries", callOpts{})
			return r.Status == 403 && r.Reason == "denied_quarantined"
		}
		waitFor := func(what string, within time.Duration, ok func() bool) time.Duration {
			t.Helper()
			start := time.Now()
			for !ok() {
				if time.Since(start) > within {
					t.Fatalf("%s: not within %s; control plane log: %s", what, within, cp.LogPath())
				}
				time.Sleep(100 * time.Millisecond)
			}
			return time.Since(start)
		}

		// 1. Around its own sidecar, a few probes at each of three
		// destinations: too few for any detector of theirs, each a new
		// edge of the shadow baseline to its sidecar. The control plane
		// puts the three destinations' reports together: a fan-out.
		say("--- ratings probes three destinations directly (around its own sidecar), two requests each")
		start := time.Now()
		for _, to := range []string{"catalog", "orders", "frontend"} {
			r := call(t, "ratings", to, "/api/items", callOpts{Count: 2})
			say("ratings → %-8s GET /api/items ×2 → %d %s (seen by %s's inbound sidecar only)", to, r.Status, r.Reason, to)
		}
		waitFor("ratings quarantined by correlation", 20*time.Second, func() bool { return quarantinedAt("ledger") })
		q, ok := quarantineOf(t, ratings)
		if !ok {
			t.Fatal("ratings is denied but not listed as quarantined")
		}
		reporters, first := map[string]bool{}, map[string]bool{}
		for _, e := range q.Evidence {
			reporters[e.Reporter] = true
			first[e.Key] = true
		}
		say("quarantined mesh-wide %v after the first probe, by %s: %s", time.Since(start).Round(time.Millisecond), q.By, q.Reason)
		for _, e := range q.Evidence {
			say("  evidence: %s reported %s %s, destination %q", e.Reporter, e.Kind, e.Detector, e.Destination)
		}
		if q.By != "meshguard/correlation" || !strings.Contains(q.Reason, "fan-out over 3 destinations") ||
			!reporters[ws["catalog"].id.String()] || !reporters[ws["orders"].id.String()] || !reporters[ws["frontend"].id.String()] || reporters[ratings.String()] {
			t.Errorf("quarantine %+v: want a fan-out correlated from the three destinations' sidecars", q)
		}
		expect(t, call(t, "ratings", "payments-api", "/v1/charges/1", callOpts{}), 403, "denied_quarantined")
		admin(t, "quarantine", "release", ratings.String(), "--reason", "e2e: correlation shown")
		waitFor("the release in force at the authz server", 10*time.Second, func() bool { return !quarantinedAt("ledger") })
		// ...and at its own sidecar (same destination again: no new one).
		waitFor("the release in force at ratings' sidecar", 10*time.Second, func() bool {
			return call(t, "ratings", "catalog", "/api/items", callOpts{Sidecar: true}).Reason != "denied_quarantined"
		})
		say("released; the filters' bundles no longer quarantine ratings")

		// 2. Through its own sidecar: its profile allows three distinct
		// destinations a minute; the fourth and later never leave the pod.
		say("--- ratings fans out through its own sidecar (its profile: at most 3 destinations a minute)")
		for i, to := range []string{"catalog", "orders", "frontend", "reviews", "payments-api", "ledger"} {
			before := seenBy(t, to, ratings)
			r := call(t, "ratings", to, "/api/items", callOpts{Sidecar: true})
			o := lastOutcome(t, "ratings")
			left := seenBy(t, to, ratings) > before
			where := fmt.Sprintf("left the pod, answered on %s's side", to)
			if o.DeniedBy == "filter" {
				var body struct{ Policy, Rule string }
				_ = json.Unmarshal([]byte(r.Body), &body)
				where = fmt.Sprintf("stopped by ratings' own sidecar (%s, %s#%s), never left the pod; %s saw nothing", o.Listener, body.Policy, body.Rule, to)
			}
			say("ratings → %-12s GET /api/items → %d %s — %s", to, r.Status, r.Reason, where)
			if i < 3 && (!left || o.DeniedBy == "filter") {
				t.Errorf("destination %d (%s) blocked at the source: %+v", i+1, to, o)
			}
			if i >= 3 && (left || o.DeniedBy != "filter" || o.Listener != "outbound_"+to || r.Status != 403 || r.Reason != "denied_anomaly") {
				t.Errorf("destination %d (%s): %d %q %+v, left=%v; want 403 denied_anomaly by ratings' own sidecar", i+1, to, r.Status, r.Reason, o, left)
			}
		}
		// Its sidecar's reports (every destination it tried) and the
		// destinations' add up to a quarantine again; then nothing it
		// sends leaves.
		waitFor("ratings quarantined again", 20*time.Second, func() bool { _, ok := quarantineOf(t, ratings); return ok })
		q, _ = quarantineOf(t, ratings)
		say("quarantined again by %s: %s", q.By, q.Reason)
		for _, e := range q.Evidence {
			if !first[e.Key] { // the record keeps the first quarantine's evidence too
				say("  evidence: %s reported %s %s, destination %q", e.Reporter, e.Kind, e.Detector, e.Destination)
			}
		}
		before := seenBy(t, "catalog", ratings)
		var r callResult
		waitFor("ratings' own sidecar enforcing the quarantine", 10*time.Second, func() bool {
			r = call(t, "ratings", "catalog", "/api/items", callOpts{Sidecar: true})
			return r.Reason == "denied_quarantined"
		})
		o := lastOutcome(t, "ratings")
		say("ratings → catalog      GET /api/items → %d %s — stopped by ratings' own sidecar (%s); catalog saw nothing", r.Status, r.Reason, o.Listener)
		if o.DeniedBy != "filter" || seenBy(t, "catalog", ratings) != before {
			t.Errorf("a quarantined workload's request left its pod: %+v", o)
		}
		// Leave the mesh as it was.
		admin(t, "quarantine", "release", ratings.String(), "--reason", "e2e: done")
	})

	timed(t, "authz killed under load: fail closed, recovered after restart", func(t *testing.T) {
		var allowedDenied atomic.Int64 // reviews → ledger answered 2xx: must stay 0
		var okBefore, okAfter, deniedWhileDown atomic.Int64
		var down, restarted atomic.Bool
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for _, c := range []struct{ from, path, method string }{
			{"payments-api", "/v1/entries", "POST"}, {"reviews", "/v1/entries", "GET"},
		} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					r := ws[c.from].call(t, ws["ledger"], c.path, callOpts{Method: c.method, Count: 5})
					for st, n := range r.Statuses {
						ok := strings.HasPrefix(st, "2")
						switch {
						case c.from == "reviews" && ok:
							allowedDenied.Add(int64(n))
						case c.from == "payments-api" && ok && !down.Load():
							okBefore.Add(int64(n))
						case c.from == "payments-api" && ok && restarted.Load():
							okAfter.Add(int64(n))
						case c.from == "payments-api" && !ok && down.Load() && !restarted.Load():
							deniedWhileDown.Add(int64(n))
						}
					}
				}
			}()
		}
		time.Sleep(time.Second)
		down.Store(true)
		authz.Kill()
		time.Sleep(2 * time.Second)
		authz = startAuthz(t)
		restartAt := time.Now()
		if _, err := authz.WaitForLine(ctx, "policy applied"); err != nil {
			t.Error(err)
		}
		restarted.Store(true)
		// The sidecars' gRPC channels reconnect with backoff (as Envoy's
		// do): wait until allowed traffic flows again.
		for deadline := time.Now().Add(20 * time.Second); okAfter.Load() == 0 && time.Now().Before(deadline); {
			time.Sleep(100 * time.Millisecond)
		}
		recovered := time.Since(restartAt)
		time.Sleep(time.Second)
		close(stop)
		wg.Wait()
		t.Logf("allowed before %d, denied while down %d, allowed after restart %d (restart to traffic allowed again: %v); denied-by-policy requests that got through: %d",
			okBefore.Load(), deniedWhileDown.Load(), okAfter.Load(), recovered.Round(time.Millisecond), allowedDenied.Load())
		if allowedDenied.Load() != 0 {
			t.Errorf("%d requests that policy denies were allowed", allowedDenied.Load())
		}
		if okBefore.Load() == 0 || deniedWhileDown.Load() == 0 || okAfter.Load() == 0 {
			t.Error("expected allowed → denied (fail closed) → allowed")
		}
	})
	t.Logf("suite done in %v", time.Since(suiteStart).Round(time.Millisecond))
}
