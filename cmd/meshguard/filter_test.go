package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/tetratelabs/wazero"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/meshguard/meshguard/internal/testbed/ca"
	"github.com/meshguard/meshguard/internal/testbed/envoyemu"
	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/wire"
	"github.com/meshguard/meshguard/wasm/wasmtest"
)

var filterModule struct {
	once sync.Once
	dir  string
	path string
	err  error
}

// filterWasm builds meshguard's wasm filter once per test binary, as `make
// wasm` does (the go build cache makes it cheap after the first time).
func filterWasm(t *testing.T) string {
	t.Helper()
	filterModule.once.Do(func() {
		root, err := wasmtest.ModuleRoot(".")
		if err != nil {
			filterModule.err = err
			return
		}
		if filterModule.dir, filterModule.err = os.MkdirTemp("", "meshguard-cmd-test-wasm-"); filterModule.err != nil {
			return
		}
		filterModule.path = filepath.Join(filterModule.dir, "meshguard-filter.wasm")
		start := time.Now()
		filterModule.err = wasmtest.Build(root, wasmtest.FilterPackage, filterModule.path)
		t.Logf("built the wasm filter in %s", time.Since(start).Round(time.Millisecond))
	})
	if filterModule.err != nil {
		t.Fatal(filterModule.err)
	}
	return filterModule.path
}

// sidecar is an orders.shop sidecar: the Envoy emulator configured by the
// control plane over ADS (listener, routes, clusters, the compiled wasm
// filter over ECDS), which keeps serving the configuration it has when the
// control plane goes away, as Envoy does. Callers reach it over mTLS with
// SVIDs of the test CA.
type sidecar struct {
	authority *ca.CA
	proxy     *envoyemu.Proxy
	inbound   string
	td        spiffeid.TrustDomain
}

const ordersID = "spiffe://example.org/ns/shop/sa/orders"

func startSidecar(t *testing.T, authority *ca.CA, xdsAddr string) *sidecar {
	t.Helper()
	conn, err := grpc.NewClient(xdsAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{BaseDelay: 20 * time.Millisecond, Multiplier: 1.5, MaxDelay: 200 * time.Millisecond}, MinConnectTimeout: time.Second}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	svid, err := authority.IssueX509SVID(spiffeid.RequireFromString(ordersID), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	var cache wazero.CompilationCache = wazero.NewCompilationCache()
	if ucd, err := os.UserCacheDir(); err == nil {
		if c, err := wazero.NewCompilationCacheWithDir(filepath.Join(ucd, "meshguard", "wazero")); err == nil {
			cache = c
		}
	}
	t.Cleanup(func() { _ = cache.Close(context.Background()) })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	p, err := envoyemu.Start(ctx, envoyemu.Config{Node: &corev3.Node{Id: "orders-0", Cluster: "orders.shop"}, XDS: conn,
		SVIDs: svid, Bundles: authority.X509Bundle(), BindHost: "127.0.0.1", Wasm: envoyemu.WasmOptions{CompilationCache: cache}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close(context.Background()) })
	// Compiling the module under -race on a loaded machine takes tens of
	// seconds when wazero's cache is cold.
	rctx, rcancel := context.WithTimeout(ctx, 4*time.Minute)
	defer rcancel()
	if err := p.Ready(rctx); err != nil {
		t.Fatal(err)
	}
	addr, ok := p.Listener("inbound_http")
	if !ok {
		t.Fatalf("no inbound_http listener: %v", p.Listeners())
	}
	return &sidecar{authority: authority, proxy: p, inbound: addr, td: authority.TrustDomain()}
}

// quarantined calls the sidecar as id and reports whether the wasm filter
// denied the call as quarantined.
func (s *sidecar) quarantined(t *testing.T, id string) bool {
	t.Helper()
	svid, err := s.authority.IssueX509SVID(spiffeid.RequireFromString(id), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c := envoyemu.OutboundClient(svid, s.authority.X509Bundle(), spiffeid.RequireFromString(ordersID), 5*time.Second)
	defer c.CloseIdleConnections()
	resp, err := c.Get("https://" + s.inbound + "/api/orders")
	if err != nil {
		t.Fatalf("call the sidecar as %s: %v", id, err)
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusForbidden && resp.Header.Get(wire.HeaderReason) == string(policies.ReasonDeniedQuarantine)
}

// waitEnforced waits until the sidecar's filter decides id as want.
func (s *sidecar) waitEnforced(t *testing.T, id string, want bool, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for s.quarantined(t, id) != want {
		if time.Now().After(deadline) {
			t.Fatalf("wasm filter: %s quarantined=%v after %s, want %v", id, !want, within, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// meshWithSidecar describes the orders.shop workload with the filter
// module; its route skips ext_authz, so that the filter decides alone, and
// forwards to a local app answering 200.
func meshWithSidecar(t *testing.T, module, eventsAddr string) string {
	t.Helper()
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) }), ReadHeaderTimeout: time.Second}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = app.Serve(ln) }()
	t.Cleanup(func() { _ = app.Close() })
	_, eventsPort, _ := net.SplitHostPort(eventsAddr)
	_, appPort, _ := net.SplitHostPort(ln.Addr().String())
	_, inPort, _ := net.SplitHostPort(freeAddr(t))
	return fmt.Sprintf(`apiVersion: meshguard.dev/v1alpha1
kind: Mesh
metadata: {name: restart}
spec:
  trustDomain: example.org
  authz: {address: 127.0.0.1, port: 9191, spiffeID: spiffe://example.org/ns/meshguard/sa/authz}
  controlPlane: {address: 127.0.0.1, port: %s, spiffeID: spiffe://example.org/ns/meshguard/sa/controlplane}
  wasm: {file: %s, requireMtls: true}
  workloads:
  - name: orders
    namespace: shop
    spiffeID: %s
    labels: {app: orders}
    inbound:
    - name: http
      port: %s
      appPort: %s
      routes:
      - {name: orders-api, prefix: /, disableExtAuthz: true}
`, eventsPort, module, ordersID, inPort, appPort)
}
