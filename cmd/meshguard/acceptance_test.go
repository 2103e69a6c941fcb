package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extauthz "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/spiffe/go-spiffe/v2/spiffegrpc/grpccredentials"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/meshguard/meshguard/controlplane/istiogen"
	"github.com/meshguard/meshguard/controlplane/mesh"
	"github.com/meshguard/meshguard/controlplane/xds"
	"github.com/meshguard/meshguard/internal/testbed/ca"
	"github.com/meshguard/meshguard/internal/testbed/envoyemu"
	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/source"
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
		"--trust-bundle", cpFiles.Bundle, "--log-level", "warn", "--state-dir", filepath.Join(t.TempDir(), "state"))
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

// TestAcceptanceIstioCustomProvider is the Istio CUSTOM ext_authz provider
// mode: the catalog sidecars' ext_authz filter is the one Istio generates
// for the meshguard provider (istio/istio
// pilot/pkg/security/authz/builder/extauthz.go, generateGRPCConfig: no
// context extensions, no labels of its own), merged with the EnvoyFilter
// `meshguard istio generate` writes, as Istio merges an EnvoyFilter MERGE
// patch; each sidecar's node metadata carries its pod's LABELS as Istio's
// injector writes them. The authz server must reach Istio's decisions; a
// sidecar without the EnvoyFilter sends no labels, and the server must then
// deny where a selector-scoped policy may apply (denied_unresolved_target),
// never skip the DENY.
//
// Not emulated: Istio's RBAC shadow filter and the ext_authz
// filter_enabled_metadata that limits the check to what the CUSTOM policy
// selects (the generated CUSTOM policy selects every request).
func TestAcceptanceIstioCustomProvider(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	id := func(ns, name string) spiffeid.ID { return spiffeid.RequireFromPath(td, "/ns/"+ns+"/sa/"+name) }
	authority, err := ca.New(td)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	authzID := id("meshguard", "authz")
	azFiles, err := authority.WriteFiles(dir, authzID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	policyFile := filepath.Join(dir, "versions.yaml")
	if err := os.WriteFile(policyFile, []byte(versionPolicies), 0o644); err != nil {
		t.Fatal(err)
	}
	authzAddr, authzAdmin := freeAddr(t), freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		out, err := runCmd(t, ctx, "authz", "--grpc-addr", authzAddr, "--admin-addr", authzAdmin,
			"--svid-cert", azFiles.Cert, "--svid-key", azFiles.Key, "--bundle", azFiles.SPIFFEBundle,
			"--allowed-caller-trust-domain", "cluster.local", "--no-jwt-svid", "--decision-log", "off",
			"--policy", policyFile, "--log-level", "warn")
		if err != nil {
			err = fmt.Errorf("authz: %w\n%s", err, out)
		}
		done <- err
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	waitReady(t, "http://"+authzAdmin+"/readyz")

	// The EnvoyFilter's patch, as `meshguard istio generate` writes it.
	set, diags := source.Parse("p.yaml", []byte(versionPolicies))
	if err := diags.Err(); err != nil {
		t.Fatal(err)
	}
	b, _, err := policies.NewBundle("v1", set)
	if err != nil {
		t.Fatal(err)
	}
	gen, err := istiogen.Generate(istiogen.Config{Bundle: b,
		Provider: istiogen.Provider{Service: "meshguard-authz.meshguard.svc.cluster.local"},
		Wasm:     istiogen.Wasm{URL: "oci://example/filter:v1", ControlPlane: wire.ControlPlane{Cluster: "outbound|8443||meshguard-controlplane.meshguard.svc.cluster.local"}}})
	if err != nil {
		t.Fatal(err)
	}
	patchJSON, err := protojson.Marshal(gen.EnvoyFilters[0].Spec.ConfigPatches[0].Patch.Value)
	if err != nil {
		t.Fatal(err)
	}
	var patchFilter hcm.HttpFilter
	if err := protojson.Unmarshal(patchJSON, &patchFilter); err != nil {
		t.Fatal(err)
	}
	var patch extauthz.ExtAuthz
	if err := patchFilter.GetTypedConfig().UnmarshalTo(&patch); err != nil {
		t.Fatal(err)
	}

	// The sidecars' listeners, routes and clusters (mTLS, the authz
	// cluster), with Istio's ext_authz filter in place of meshguard's.
	_, authzPort, _ := net.SplitHostPort(authzAddr)
	m, err := mesh.Parse([]byte(fmt.Sprintf(`apiVersion: meshguard.dev/v1alpha1
kind: Mesh
metadata: {name: istio}
spec:
  trustDomain: cluster.local
  authz: {address: 127.0.0.1, port: %s, spiffeID: %s}
  controlPlane: {address: 127.0.0.1, port: 1, spiffeID: spiffe://cluster.local/ns/meshguard/sa/controlplane}
  wasm: {file: /nonexistent.wasm}
  workloads:
  - {name: catalog-v1, namespace: bookstore, spiffeID: %[3]s, disableWasm: true, inbound: [{name: http, port: %[4]s, appPort: %[5]s, routes: [{name: default, prefix: /}]}]}
  - {name: catalog-v2, namespace: bookstore, spiffeID: %[3]s, disableWasm: true, inbound: [{name: http, port: %[6]s, appPort: %[7]s, routes: [{name: default, prefix: /}]}]}
`, authzPort, authzID, id("bookstore", "catalog"), portOf(freeAddr(t)), portOf(startEcho(t)), portOf(freeAddr(t)), portOf(startEcho(t)))))
	if err != nil {
		t.Fatal(err)
	}
	g := xds.NewGenerator(m)
	eb, err := g.Encode(b)
	if err != nil {
		t.Fatal(err)
	}
	withPatch := cachev3.NewSnapshotCache(false, cachev3.IDHash{}, nil)
	withoutPatch := cachev3.NewSnapshotCache(false, cachev3.IDHash{}, nil)
	inbound := map[string]string{}
	for _, w := range m.Workloads {
		inbound[w.Name] = net.JoinHostPort("127.0.0.1", strconv.Itoa(int(w.Inbound[0].Port)))
		for c, merge := range map[cachev3.SnapshotCache]bool{withPatch: true, withoutPatch: false} {
			snap, err := g.Snapshot(w, eb)
			if err != nil {
				t.Fatal(err)
			}
			istioExtAuthz := &extauthz.ExtAuthz{
				StatusOnError:    &typev3.HttpStatus{Code: typev3.StatusCode_Forbidden},
				FailureModeAllow: false,
				Services: &extauthz.ExtAuthz_GrpcService{GrpcService: &corev3.GrpcService{
					TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{
						ClusterName: xds.ClusterAuthz, Authority: "meshguard-authz.meshguard.svc.cluster.local"}},
					Timeout: durationpb.New(600 * time.Second),
				}},
				TransportApiVersion: corev3.ApiVersion_V3,
			}
			if merge {
				proto.Merge(istioExtAuthz, &patch) // what Istio's MergeAnyWithAny does with the patch
			}
			if err := c.SetSnapshot(context.Background(), w.Name, istioSnapshot(t, snap, istioExtAuthz)); err != nil {
				t.Fatal(err)
			}
		}
	}

	catalogSVID, err := authority.IssueX509SVID(id("bookstore", "catalog"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	bundle := authority.X509Bundle()
	startSidecar := func(c cachev3.SnapshotCache, name, version string) {
		labels, _ := structpb.NewStruct(map[string]any{"app": "catalog", "version": version,
			"security.istio.io/tlsMode": "istio", "service.istio.io/canonical-name": "catalog"})
		node := &corev3.Node{Id: name, Cluster: "catalog.bookstore",
			Metadata: &structpb.Struct{Fields: map[string]*structpb.Value{istiogen.NodeLabelsKey: structpb.NewStructValue(labels)}}}
		p, err := envoyemu.Start(ctx, envoyemu.Config{Node: node, XDS: serveSnapshots(t, c), SVIDs: catalogSVID, Bundles: bundle, BindHost: "127.0.0.1"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = p.Close(context.Background()) })
		rctx, rcancel := context.WithTimeout(ctx, 20*time.Second)
		defer rcancel()
		if err := p.Ready(rctx); err != nil {
			t.Fatal(err)
		}
	}
	startSidecar(withPatch, "catalog-v1", "v1")
	startSidecar(withPatch, "catalog-v2", "v2")

	client := func(name string) *http.Client {
		svid, err := authority.IssueX509SVID(id("bookstore", name), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		c := envoyemu.OutboundClient(svid, bundle, id("bookstore", "catalog"), 5*time.Second)
		t.Cleanup(c.CloseIdleConnections)
		return c
	}
	callers := map[string]*http.Client{"frontend": client("frontend"), "orders": client("orders")}
	check := func(t *testing.T, from, addr, path string, status int, reason string) {
		t.Helper()
		resp, err := callers[from].Get("https://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != status || resp.Header.Get(wire.HeaderReason) != reason {
			t.Errorf("%s → %s %s: %d %q, want %d %q", from, addr, path, resp.StatusCode, resp.Header.Get(wire.HeaderReason), status, reason)
		}
	}
	t.Run("with the EnvoyFilter: Istio's decisions", func(t *testing.T) {
		check(t, "frontend", inbound["catalog-v1"], "/api/export", 200, "")
		check(t, "frontend", inbound["catalog-v2"], "/api/export", 403, "denied_by_policy")
		check(t, "orders", inbound["catalog-v2"], "/api/stock", 200, "")
		check(t, "orders", inbound["catalog-v1"], "/api/stock", 403, "denied_no_allow_match")
	})
	t.Run("without it: no labels, fail closed", func(t *testing.T) {
		// The same nodes, configured without the patch: new listener ports
		// would clash, so these sidecars replace the others' config.
		for _, w := range m.Workloads {
			snap, _ := withoutPatch.GetSnapshot(w.Name)
			if err := withPatch.SetSnapshot(context.Background(), w.Name, withVersion(t, snap, "2")); err != nil {
				t.Fatal(err)
			}
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			resp, err := callers["frontend"].Get("https://" + inbound["catalog-v2"] + "/api/export")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.Header.Get(wire.HeaderReason) == "denied_unresolved_target" {
				break
			}
			if resp.StatusCode == 200 {
				t.Fatal("the selector-scoped DENY was skipped: v2's export allowed without labels")
			}
			if time.Now().After(deadline) {
				t.Fatalf("still %d %q", resp.StatusCode, resp.Header.Get(wire.HeaderReason))
			}
			time.Sleep(50 * time.Millisecond)
		}
		check(t, "frontend", inbound["catalog-v1"], "/api/export", 403, "denied_unresolved_target")
		check(t, "orders", inbound["catalog-v2"], "/api/stock", 403, "denied_unresolved_target")
	})
}

// startEcho runs an application that answers 200 and returns its address.
func startEcho(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return l.Addr().String()
}

func portOf(addr string) string { _, p, _ := net.SplitHostPort(addr); return p }

// istioSnapshot is snap with Istio's shape of the inbound chain: the given
// ext_authz filter then the router, and routes without per-route ext_authz
// settings (Istio sets none).
func istioSnapshot(t *testing.T, snap *cachev3.Snapshot, ea *extauthz.ExtAuthz) *cachev3.Snapshot {
	t.Helper()
	eaAny, err := anypb.New(ea)
	if err != nil {
		t.Fatal(err)
	}
	res := map[resource.Type][]types.Resource{}
	for _, r := range snap.GetResources(resource.ClusterType) {
		res[resource.ClusterType] = append(res[resource.ClusterType], r)
	}
	for _, r := range snap.GetResources(resource.RouteType) {
		rc := proto.Clone(r.(*routev3.RouteConfiguration)).(*routev3.RouteConfiguration)
		for _, vh := range rc.VirtualHosts {
			for _, rt := range vh.Routes {
				rt.TypedPerFilterConfig = nil
			}
		}
		res[resource.RouteType] = append(res[resource.RouteType], rc)
	}
	for _, r := range snap.GetResources(resource.ListenerType) {
		l := proto.Clone(r.(*listenerv3.Listener)).(*listenerv3.Listener)
		var mgr hcm.HttpConnectionManager
		if err := l.FilterChains[0].Filters[0].GetTypedConfig().UnmarshalTo(&mgr); err != nil {
			t.Fatal(err)
		}
		if mgr.GetRds() != nil {
			var kept []*hcm.HttpFilter
			for _, f := range mgr.HttpFilters {
				if f.Name == "envoy.filters.http.ext_authz" {
					f = &hcm.HttpFilter{Name: f.Name, ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: eaAny}}
				}
				kept = append(kept, f)
			}
			mgr.HttpFilters = kept
		}
		a, err := anypb.New(&mgr)
		if err != nil {
			t.Fatal(err)
		}
		l.FilterChains[0].Filters[0].ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: a}
		res[resource.ListenerType] = append(res[resource.ListenerType], l)
	}
	s, err := cachev3.NewSnapshot("1", res)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// withVersion is a snapshot with the same resources under another version.
func withVersion(t *testing.T, snap cachev3.ResourceSnapshot, version string) *cachev3.Snapshot {
	t.Helper()
	res := map[resource.Type][]types.Resource{}
	for _, typ := range []resource.Type{resource.ListenerType, resource.RouteType, resource.ClusterType} {
		for _, r := range snap.GetResources(typ) {
			res[typ] = append(res[typ], r)
		}
	}
	s, err := cachev3.NewSnapshot(version, res)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// serveSnapshots serves a snapshot cache over ADS on loopback.
func serveSnapshots(t *testing.T, c cachev3.SnapshotCache) *grpc.ClientConn {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	gs := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(gs, serverv3.NewServer(ctx, c, nil))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(l) }()
	t.Cleanup(gs.Stop)
	cc, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}
