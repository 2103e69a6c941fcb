package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/tetratelabs/wazero"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/meshguard/meshguard/internal/testbed/envoyemu"
	"github.com/meshguard/meshguard/internal/testbed/wasmhost"
	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/wire"
	"github.com/meshguard/meshguard/wasm/wasmtest"
)

var filterModule struct {
	once sync.Once
	path string
	err  error
}

// filterWasm builds meshguard's wasm filter once per test binary, as `make
// wasm` does (the go build cache makes it cheap after the first time).
func filterWasm(t *testing.T) string {
	t.Helper()
	filterModule.once.Do(func() {
		if filterModule.err = os.MkdirAll(filepath.Join(os.TempDir(), "meshguard-cmd-test-wasm"), 0o755); filterModule.err != nil {
			return
		}
		root, err := wasmtest.ModuleRoot(".")
		if err != nil {
			filterModule.err = err
			return
		}
		filterModule.path = filepath.Join(os.TempDir(), "meshguard-cmd-test-wasm", fmt.Sprintf("filter-%d.wasm", os.Getpid()))
		start := time.Now()
		filterModule.err = wasmtest.Build(root, wasmtest.FilterPackage, filterModule.path)
		t.Logf("built the wasm filter in %s", time.Since(start).Round(time.Millisecond))
	})
	if filterModule.err != nil {
		t.Fatal(filterModule.err)
	}
	t.Cleanup(func() { _ = os.Remove(filterModule.path) })
	return filterModule.path
}

// filterSidecar is the compiled wasm filter in the proxy-wasm host, fed
// over ECDS by the control plane as an Envoy sidecar's would be: the
// Envoy-emulating ECDS client keeps the last configuration it accepted when
// the stream breaks, as Envoy does.
type filterSidecar struct {
	mu sync.Mutex
	h  *wasmhost.Host
	f  *envoyemu.WasmFilter
	// applied counts configurations applied.
	applied int
}

func startFilter(t *testing.T, module, xdsAddr, eventsURL, nodeCluster string) *filterSidecar {
	t.Helper()
	code, err := os.ReadFile(module)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(xdsAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{BaseDelay: 20 * time.Millisecond, Multiplier: 1.5, MaxDelay: 200 * time.Millisecond}, MinConnectTimeout: time.Second}))
	if err != nil {
		t.Fatal(err)
	}
	var cache wazero.CompilationCache = wazero.NewCompilationCache()
	if ucd, err := os.UserCacheDir(); err == nil {
		if c, err := wazero.NewCompilationCacheWithDir(filepath.Join(ucd, "meshguard", "wazero")); err == nil {
			cache = c
		}
	}
	node := &corev3.Node{Id: nodeCluster + "-1", Cluster: nodeCluster}
	s := &filterSidecar{}
	ctx, cancel := context.WithCancel(context.Background())
	first := make(chan struct{})
	client := &envoyemu.ECDSClient{Conn: conn, Node: node, Log: slog.New(slog.DiscardHandler),
		Apply: func(cfg []byte) error {
			s.mu.Lock()
			defer s.mu.Unlock()
			if s.h == nil {
				start := time.Now()
				h, err := wasmhost.New(ctx, code, wasmhost.Config{PluginConfig: cfg, Properties: envoyemu.NodeProperties(node),
					Clusters: map[string]string{"meshguard_controlplane": eventsURL}, CompilationCache: cache})
				if err != nil {
					t.Logf("wasm filter: configuration refused: %v", err)
					return err
				}
				t.Logf("wasm filter started in %s", time.Since(start).Round(time.Millisecond))
				s.h, s.f = h, envoyemu.NewWasmFilter(h)
				s.applied++
				close(first)
				return nil
			}
			if err := s.h.Reconfigure(cfg); err != nil {
				t.Logf("wasm filter: configuration refused: %v", err)
				return err
			}
			s.applied++
			return nil
		}}
	done := make(chan struct{})
	go func() { defer close(done); _ = client.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		s.mu.Lock()
		if s.h != nil {
			_ = s.h.Close()
		}
		s.mu.Unlock()
		_ = cache.Close(context.Background())
		_ = conn.Close()
	})
	select {
	case <-first:
	case <-time.After(4 * time.Minute):
		// Compiling the module under -race on a loaded machine takes
		// tens of seconds when wazero's cache is cold.
		t.Fatal("the wasm filter got no configuration over ECDS within 4m")
	}
	return s
}

// quarantined runs a request from id through the filter and reports
// whether the filter denied it as quarantined.
func (s *filterSidecar) quarantined(t *testing.T, id string) bool {
	t.Helper()
	s.mu.Lock()
	f := s.f
	s.mu.Unlock()
	reply, local, err := f.Handle(context.Background(), envoyemu.StreamInfo{PeerURISAN: id, MTLS: true, RouteName: "orders-api"},
		[][2]string{{":method", "GET"}, {":path", "/api/orders"}, {":authority", "orders"}, {":scheme", "https"}}, nil,
		func(context.Context, [][2]string, []byte) envoyemu.Reply { return envoyemu.Reply{Status: 200} })
	if err != nil {
		t.Fatal(err)
	}
	if !local {
		return false
	}
	for _, h := range reply.Headers {
		if h[0] == wire.HeaderReason {
			return reply.Status == 403 && h[1] == string(policies.ReasonDeniedQuarantine)
		}
	}
	return false
}

func (s *filterSidecar) configs() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.applied
}

// waitEnforced waits until the filter decides id as want.
func (s *filterSidecar) waitEnforced(t *testing.T, id string, want bool, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for s.quarantined(t, id) != want {
		if time.Now().After(deadline) {
			t.Fatalf("wasm filter: %s quarantined=%v after %s, want %v", id, !want, within, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// meshWithFilter describes one Envoy workload (orders.shop) running the
// filter module, for the control plane's ECDS.
func meshWithFilter(module, eventsAddr string) string {
	_, port, _ := net.SplitHostPort(eventsAddr)
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
    spiffeID: spiffe://example.org/ns/shop/sa/orders
    labels: {app: orders}
    inbound:
    - name: http
      port: 15006
      appPort: 8080
      routes:
      - {name: orders-api, prefix: /}
`, port, module)
}
