package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/spiffe/go-spiffe/v2/spiffegrpc/grpccredentials"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"

	"github.com/meshguard/meshguard/internal/testbed/ca"
	"github.com/meshguard/meshguard/internal/testbed/envoyemu"
	"github.com/meshguard/meshguard/policies/wire"
)

// versionPolicies are Istio AuthorizationPolicies over two Deployments of the
// catalog's service account, catalog-v1 and catalog-v2, that differ only in
// their version label: a namespace-wide ALLOW, an ALLOW and a DENY selected
// by version.
const versionPolicies = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: read-api, namespace: bookstore}
spec:
  rules:
  - from: [{source: {principals: [cluster.local/ns/bookstore/sa/frontend]}}]
    to: [{operation: {methods: [GET], paths: ["/api/*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: v2-stock, namespace: bookstore}
spec:
  selector: {matchLabels: {app: catalog, version: v2}}
  rules:
  - from: [{source: {principals: [cluster.local/ns/bookstore/sa/orders]}}]
    to: [{operation: {methods: [GET], paths: [/api/stock]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: v2-no-export, namespace: bookstore}
spec:
  selector: {matchLabels: {app: catalog, version: v2}}
  action: DENY
  rules:
  - to: [{operation: {paths: [/api/export]}}]
`

// TestAcceptanceSelectorsOnTwoVersions is the acceptance test of target
// labels with the meshguard control plane and plain Envoy: `meshguard
// controlplane` and `meshguard authz` run as a user runs them (mTLS from
// SVID files, the authz server subscribed to the control plane's bundle);
// each catalog sidecar — an Envoy-emulating proxy — takes its listeners,
// routes (with their ext_authz context extensions) and the ext_authz
// filter's settings from the control plane over ADS, exactly as generated,
// and nothing else. The decisions must be Istio's for selector-scoped ALLOW
// and DENY policies over the two versions.
func TestAcceptanceSelectorsOnTwoVersions(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	id := func(ns, name string) spiffeid.ID { return spiffeid.RequireFromPath(td, "/ns/"+ns+"/sa/"+name) }
	authority, err := ca.New(td)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cpID, authzID := id("meshguard", "controlplane"), id("meshguard", "authz")
	for _, d := range []string{"cp", "authz"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cpFiles, err := authority.WriteFiles(filepath.Join(dir, "cp"), cpID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	azFiles, err := authority.WriteFiles(filepath.Join(dir, "authz"), authzID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	policyDir := filepath.Join(dir, "policies")
	if err := os.MkdirAll(policyDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(policyDir, "versions.yaml"), []byte(versionPolicies), 0o644); err != nil {
		t.Fatal(err)
	}

	// The applications, where the mesh description says they listen.
	apps := map[string]string{}
	for _, v := range []string{"v1", "v2"} {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "catalog-%s %s", v, r.URL.Path)
		})}
		go func() { _ = srv.Serve(l) }()
		t.Cleanup(func() { _ = srv.Close() })
		apps[v] = l.Addr().String()
	}
	portOf := func(addr string) string { _, p, _ := net.SplitHostPort(addr); return p }
	inbound := map[string]string{"v1": freeAddr(t), "v2": freeAddr(t)}
	xdsAddr, httpAddr, authzAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	meshFile := filepath.Join(dir, "mesh.yaml")
	meshYAML := fmt.Sprintf(`apiVersion: meshguard.dev/v1alpha1
kind: Mesh
metadata: {name: acceptance}
spec:
  trustDomain: cluster.local
  authz: {address: 127.0.0.1, port: %s, spiffeID: %s, timeout: 2s}
  controlPlane: {address: 127.0.0.1, port: %s, spiffeID: %s}
  wasm: {file: /nonexistent/meshguard-filter.wasm}
  workloads:
`, portOf(authzAddr), authzID, portOf(httpAddr), cpID)
	for _, v := range []string{"v1", "v2"} {
		meshYAML += fmt.Sprintf(`  - name: catalog-%[1]s
    namespace: bookstore
    spiffeID: %[2]s
    service: catalog
    labels: {app: catalog, version: %[1]s}
    disableWasm: true
    inbound:
    - name: http
      port: %[3]s
      appPort: %[4]s
      routes: [{name: catalog-api, prefix: /api/}]
`, v, id("bookstore", "catalog"), portOf(inbound[v]), portOf(apps[v]))
	}
	if err := os.WriteFile(meshFile, []byte(meshYAML), 0o644); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	var done []chan error
	run := func(name string, args ...string) {
		ch := make(chan error, 1)
		done = append(done, ch)
		go func() {
			out, err := runCmd(t, ctx, args...)
			if err != nil {
				err = fmt.Errorf("%s: %w\n%s", name, err, out)
			}
			ch <- err
		}()
	}
	t.Cleanup(func() {
		cancel()
		for _, ch := range done {
			if err := <-ch; err != nil {
				t.Error(err)
			}
		}
	})
	run("controlplane", "controlplane", "--xds-addr", xdsAddr, "--http-addr", httpAddr, "--metrics-addr", freeAddr(t),
		"--mesh", meshFile, "--policy", policyDir, "--svid-cert", cpFiles.Cert, "--svid-key", cpFiles.Key,
		"--trust-bundle", cpFiles.Bundle, "--log-level", "warn")
	authzAdmin := freeAddr(t)
	run("authz", "authz", "--grpc-addr", authzAddr, "--admin-addr", authzAdmin,
		"--svid-cert", azFiles.Cert, "--svid-key", azFiles.Key, "--bundle", azFiles.SPIFFEBundle,
		"--allowed-caller-trust-domain", "cluster.local", "--no-jwt-svid", "--decision-log", "off",
		"--control-plane", xdsAddr, "--control-plane-id", cpID.String(), "--node-id", "authz-acceptance", "--log-level", "warn")
	waitReady(t, "http://"+authzAdmin+"/readyz")

	// The catalog sidecars: a node, a connection to the control plane,
	// their SVID. Everything else comes over ADS.
	catalogSVID, err := authority.IssueX509SVID(id("bookstore", "catalog"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	bundle := authority.X509Bundle()
	for _, v := range []string{"v1", "v2"} {
		cc, err := grpc.NewClient(xdsAddr, grpc.WithTransportCredentials(
			grpccredentials.MTLSClientCredentials(catalogSVID, bundle, tlsconfig.AuthorizeID(cpID))))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		p, err := envoyemu.Start(ctx, envoyemu.Config{Node: &corev3.Node{Id: "catalog-" + v + "-0", Cluster: "catalog-" + v + ".bookstore"},
			XDS: cc, SVIDs: catalogSVID, Bundles: bundle, BindHost: "127.0.0.1"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = p.Close(context.Background()) })
		rctx, rcancel := context.WithTimeout(ctx, 20*time.Second)
		err = p.Ready(rctx)
		rcancel()
		if err != nil {
			t.Fatal(err)
		}
		if addr, ok := p.Listener("inbound_http"); !ok || addr != inbound[v] {
			t.Fatalf("catalog-%s: inbound listener %q, want the generated %s", v, addr, inbound[v])
		}
	}

	caller := func(name string) *http.Client {
		svid, err := authority.IssueX509SVID(id("bookstore", name), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		c := envoyemu.OutboundClient(svid, bundle, id("bookstore", "catalog"), 5*time.Second)
		t.Cleanup(c.CloseIdleConnections)
		return c
	}
	callers := map[string]*http.Client{"frontend": caller("frontend"), "orders": caller("orders")}
	// Istio's decision: CUSTOM → DENY → ALLOW over the policies whose
	// selector matches the workload's labels (no selector: every workload
	// of the namespace).
	for _, tc := range []struct {
		from, version, path string
		status              int
		reason              string
		why                 string
	}{
		{"frontend", "v1", "/api/books", 200, "", "read-api (namespace-wide) allows"},
		{"frontend", "v2", "/api/books", 200, "", "read-api allows; v2-no-export does not match the path"},
		{"frontend", "v1", "/api/export", 200, "", "v2-no-export does not select v1"},
		{"frontend", "v2", "/api/export", 403, "denied_by_policy", "v2-no-export selects v2 and matches: DENY before ALLOW"},
		{"orders", "v2", "/api/stock", 200, "", "v2-stock selects v2 and allows orders"},
		{"orders", "v1", "/api/stock", 403, "denied_no_allow_match", "only read-api applies to v1, and it is frontend's"},
		{"orders", "v2", "/api/books", 403, "denied_no_allow_match", "read-api and v2-stock apply to v2; neither matches"},
	} {
		t.Run(tc.from+" "+tc.version+" "+tc.path, func(t *testing.T) {
			resp, err := callers[tc.from].Get("https://" + inbound[tc.version] + tc.path)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.status || resp.Header.Get(wire.HeaderReason) != tc.reason {
				t.Errorf("%d %q, want %d %q (%s)", resp.StatusCode, resp.Header.Get(wire.HeaderReason), tc.status, tc.reason, tc.why)
			}
		})
	}
}

// waitReady polls a readiness URL until it answers 200.
func waitReady(t *testing.T, url string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready: %v", url, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

