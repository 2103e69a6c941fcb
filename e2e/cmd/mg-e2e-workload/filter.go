package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/spiffe/go-spiffe/v2/spiffegrpc/grpccredentials"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"github.com/tetratelabs/wazero"
	"google.golang.org/grpc"

	"github.com/meshguard/meshguard/controlplane/xds"
	"github.com/meshguard/meshguard/internal/testbed/envoyemu"
	"github.com/meshguard/meshguard/internal/testbed/wasmhost"
)

// controlPlaneCluster is the cluster name the control plane's generated
// filter configuration uses for event callouts.
const controlPlaneCluster = xds.ClusterControlPlane

// wasmFilter is the wasm filter in the wazero host, configured from a file or
// over ECDS from the control plane.
type wasmFilter struct {
	*envoyemu.WasmFilter
	close func()
}

func (f *wasmFilter) Close() error { f.close(); return nil }

// newFilter loads the module and waits for its first configuration, as
// Envoy keeps a listener warming until its ECDS filter config arrives.
func newFilter(ctx context.Context, o options, src *workloadapi.X509Source, log *slog.Logger) (*wasmFilter, error) {
	module, err := os.ReadFile(o.filter)
	if err != nil {
		return nil, fmt.Errorf("--wasm: %w", err)
	}
	var closers []func()
	closeAll := func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}
	hc := wasmhost.Config{VMs: 1, Logger: log}
	if dir := os.Getenv("MG_E2E_WAZERO_CACHE"); dir != "" {
		// Shared on disk between the workload processes: compile once.
		if c, err := wazero.NewCompilationCacheWithDir(dir); err == nil {
			hc.CompilationCache = c
			closers = append(closers, func() { _ = c.Close(context.Background()) })
		}
	}
	if o.cpURL != "" {
		cpID, err := spiffeid.FromString(o.cpID)
		if err != nil {
			return nil, fmt.Errorf("--controlplane-id: %w", err)
		}
		tr := &http.Transport{TLSClientConfig: tlsconfig.MTLSClientConfig(src, src, tlsconfig.AuthorizeID(cpID))}
		closers = append(closers, tr.CloseIdleConnections)
		hc.Clusters = map[string]string{controlPlaneCluster: o.cpURL}
		hc.HTTPTransport = tr
	}
	start := func(cfg []byte) (*wasmhost.Host, error) {
		c := hc
		c.PluginConfig = cfg
		return wasmhost.New(ctx, module, c)
	}

	if o.filterCfg != "" {
		cfg, err := os.ReadFile(o.filterCfg)
		if err != nil {
			return nil, fmt.Errorf("--wasm-config: %w", err)
		}
		h, err := start(cfg)
		if err != nil {
			closeAll()
			return nil, err
		}
		closers = append(closers, func() { _ = h.Close() })
		return &wasmFilter{WasmFilter: envoyemu.NewWasmFilter(h), close: closeAll}, nil
	}
	if o.xdsAddr == "" {
		return nil, errors.New("--wasm needs --wasm-config or --xds")
	}
	cpID, err := spiffeid.FromString(o.cpID)
	if err != nil {
		return nil, fmt.Errorf("--controlplane-id: %w", err)
	}
	cc, err := grpc.NewClient(o.xdsAddr, grpc.WithTransportCredentials(
		grpccredentials.MTLSClientCredentials(src, src, tlsconfig.AuthorizeID(cpID))))
	if err != nil {
		return nil, err
	}
	closers = append(closers, func() { _ = cc.Close() })
	var (
		mu    sync.Mutex
		h     *wasmhost.Host
		first = make(chan struct{})
	)
	node := &corev3.Node{Id: o.name + "-" + fmt.Sprint(os.Getpid()), Cluster: o.nodeCluster}
	// The configuration lists the mesh's workloads; the filter finds its
	// own by the node, as under Envoy.
	hc.Properties = envoyemu.NodeProperties(node)
	client := &envoyemu.ECDSClient{
		Conn: cc, Log: log, Node: node,
		Apply: func(cfg []byte) error {
			mu.Lock()
			defer mu.Unlock()
			if h == nil {
				nh, err := start(cfg)
				if err != nil {
					return err
				}
				h = nh
				close(first)
				log.Info("wasm filter configured over ECDS")
				return nil
			}
			if err := h.Reconfigure(cfg); err != nil {
				return err
			}
			log.Info("wasm filter reconfigured over ECDS")
			return nil
		},
	}
	xctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = client.Run(xctx) }()
	closers = append(closers, func() {
		stop()
		<-done
		mu.Lock()
		if h != nil {
			_ = h.Close()
		}
		mu.Unlock()
	})
	select {
	case <-first:
	case <-time.After(90 * time.Second):
		closeAll()
		return nil, errors.New("no filter configuration from the control plane within 90s")
	case <-ctx.Done():
		closeAll()
		return nil, ctx.Err()
	}
	mu.Lock()
	f := envoyemu.NewWasmFilter(h)
	mu.Unlock()
	return &wasmFilter{WasmFilter: f, close: closeAll}, nil
}
