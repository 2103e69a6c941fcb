package wasmhost

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"
	"github.com/tetratelabs/wazero/sys"
)

// Config configures a Host.
type Config struct {
	// PluginConfig is the plugin configuration (Envoy's
	// plugin_config.configuration, Istio's WasmPlugin pluginConfig).
	PluginConfig []byte
	// VMConfig is the VM configuration (vm_config.configuration).
	VMConfig []byte
	// VMs is the number of VMs, one per simulated Envoy worker. Default 1.
	VMs int
	// PluginName, RootID and VMID are returned by the plugin_name,
	// plugin_root_id and plugin_vm_id properties. PluginName defaults to
	// "meshguard".
	PluginName, RootID, VMID string
	// Properties are attributes every stream sees (node.id, xds.cluster_name,
	// ...); Request.Properties override them.
	Properties Properties
	// Clusters maps an Envoy cluster name used in proxy_http_call to a base
	// URL ("http://127.0.0.1:8080"); the host performs the call with net/http.
	Clusters map[string]string
	// HTTPCall handles proxy_http_call for clusters not in Clusters. Without
	// it, a call to an unknown cluster fails with BadArgument as in Envoy.
	HTTPCall HTTPCallFunc
	// Clock, if set, is the time the guest sees (WASI wall and monotonic
	// clocks, proxy_get_current_time_nanoseconds) instead of time.Now: tests
	// use it to step through detector windows without sleeping. It must not
	// go backwards. Timers (ticks, callout timeouts) and the guest's sleeps
	// stay on real time. Prefer a clock that also advances with real time
	// (an offset): a clock that stands still starves the Go runtime's GC
	// pacing inside the guest, as proxytest's fake clocks do.
	Clock func() time.Time
	// ManualTicks disables real tick timers; Host.Tick then drives
	// proxy_on_tick deterministically.
	ManualTicks bool
	// Logger receives the guest's proxy_log messages and its stdout/stderr.
	// Default: discard.
	Logger *slog.Logger
	// LogLevel is the level proxy_get_log_level reports and below which
	// proxy_log messages are dropped. Default slog.LevelInfo.
	LogLevel slog.Level
	// CompilationCache lets several Hosts (e.g. in one test binary) share
	// compiled code. Optional.
	CompilationCache wazero.CompilationCache
	// MemoryLimitPages caps each VM's linear memory (64 KiB pages).
	// Default 0: wazero's default (4 GiB).
	MemoryLimitPages uint32
	// MaxCalloutBodyBytes caps an HTTP callout's response body. Default 1 MiB.
	MaxCalloutBodyBytes int64
	// MaxQueueItems caps each shared queue. Default 65536.
	MaxQueueItems int
	// HTTPTransport performs Clusters callouts. Default: a clone of
	// http.DefaultTransport owned (and closed) by the Host.
	HTTPTransport http.RoundTripper
}

// HTTPCallFunc answers a proxy_http_call. An error is delivered to the guest
// as Envoy delivers a failed call: a response with no headers and no body.
type HTTPCallFunc func(ctx context.Context, req CalloutRequest) (CalloutResponse, error)

// CalloutRequest is an HTTP call the guest dispatched.
type CalloutRequest struct {
	Cluster  string
	Headers  [][2]string // including :method, :path, :authority
	Body     []byte
	Trailers [][2]string
	Timeout  time.Duration
}

// CalloutResponse is the answer delivered with proxy_on_http_call_response.
type CalloutResponse struct {
	Status   int
	Headers  [][2]string // without :status; the host adds it
	Body     []byte
	Trailers [][2]string
}

// now is the guest's clock.
func (h *Host) now() time.Time {
	if h.cfg.Clock != nil {
		return h.cfg.Clock()
	}
	return time.Now()
}

// Host runs one proxy-wasm module in Config.VMs VMs. It is safe for
// concurrent use.
type Host struct {
	cfg     Config
	log     *slog.Logger
	rt      wazero.Runtime
	module  wazero.CompiledModule
	workers []*Worker

	shared  *SharedData
	metrics *Metrics
	queues  *sharedQueues
	client  *http.Client
	ownTr   *http.Transport

	ctx    context.Context // canceled by Close; parent of callouts
	cancel context.CancelFunc
	wg     sync.WaitGroup // callouts, tickers, queue notifications
	closed atomic.Bool
	rr     atomic.Uint64
	cfgMu  sync.Mutex // serializes Reconfigure and Close
}

// ErrClosed is returned by calls on a closed Host.
var ErrClosed = errors.New("wasm host: closed")

// New compiles wasm, starts cfg.VMs VMs and configures the plugin in each.
// A configuration the plugin refuses (proxy_on_configure returning false)
// is an error, as Envoy refuses to start such a plugin.
func New(ctx context.Context, wasm []byte, cfg Config) (*Host, error) {
	if cfg.VMs <= 0 {
		cfg.VMs = 1
	}
	if cfg.PluginName == "" {
		cfg.PluginName = "meshguard"
	}
	if cfg.MaxCalloutBodyBytes <= 0 {
		cfg.MaxCalloutBodyBytes = 1 << 20
	}
	if cfg.MaxQueueItems <= 0 {
		cfg.MaxQueueItems = 1 << 16
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h := &Host{
		cfg:     cfg,
		log:     log,
		shared:  newSharedData(),
		metrics: newMetrics(),
		queues:  newSharedQueues(cfg.MaxQueueItems),
	}
	tr := cfg.HTTPTransport
	if tr == nil {
		h.ownTr = http.DefaultTransport.(*http.Transport).Clone()
		tr = h.ownTr
	}
	h.client = &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse // Envoy's async client does not follow redirects
	}}
	h.ctx, h.cancel = context.WithCancel(context.Background())

	rc := wazero.NewRuntimeConfig()
	if cfg.CompilationCache != nil {
		rc = rc.WithCompilationCache(cfg.CompilationCache)
	}
	if cfg.MemoryLimitPages > 0 {
		rc = rc.WithMemoryLimitPages(cfg.MemoryLimitPages)
	}
	h.rt = wazero.NewRuntimeWithConfig(ctx, rc)
	fail := func(err error) (*Host, error) {
		h.cancel()
		_ = h.rt.Close(ctx)
		return nil, err
	}
	if _, err := wasi_snapshot_preview1.Instantiate(ctx, h.rt); err != nil {
		return fail(fmt.Errorf("wasm host: instantiate wasi: %w", err))
	}
	if err := instantiateABI(ctx, h.rt); err != nil {
		return fail(fmt.Errorf("wasm host: instantiate proxy-wasm abi: %w", err))
	}
	mod, err := h.rt.CompileModule(ctx, wasm)
	if err != nil {
		return fail(fmt.Errorf("wasm host: compile module: %w", err))
	}
	exports := mod.ExportedFunctions()
	if _, ok := exports["proxy_abi_version_0_2_1"]; !ok {
		if _, ok := exports["proxy_abi_version_0_2_0"]; !ok {
			return fail(errors.New("wasm host: module exports no proxy_abi_version_0_2_x: not a proxy-wasm 0.2 module"))
		}
	}
	h.module = mod
	for i := range cfg.VMs {
		w, err := h.startWorker(ctx, i)
		if err != nil {
			h.Close()
			return nil, err
		}
		h.workers = append(h.workers, w)
	}
	return h, nil
}

func (h *Host) startWorker(ctx context.Context, i int) (*Worker, error) {
	w := newWorker(h, i)
	out := &lineLogger{log: h.log, worker: i, stream: "stdout"}
	errOut := &lineLogger{log: h.log, worker: i, stream: "stderr"}
	mc := wazero.NewModuleConfig().
		WithName(fmt.Sprintf("vm-%d", i)).
		WithStartFunctions(). // a c-shared reactor: _initialize is called below
		WithSysNanosleep().
		WithRandSource(rand.Reader).
		WithStdout(out).
		WithStderr(errOut)
	if clock := h.cfg.Clock; clock != nil {
		epoch := clock()
		mc = mc.WithWalltime(func() (int64, int32) {
			t := clock()
			return t.Unix(), int32(t.Nanosecond())
		}, sys.ClockResolution(1)).WithNanotime(func() int64 {
			return int64(clock().Sub(epoch))
		}, sys.ClockResolution(1))
	} else {
		mc = mc.WithSysWalltime().WithSysNanotime()
	}
	mod, err := h.rt.InstantiateModule(w.ctx, h.module, mc)
	if err != nil {
		return nil, fmt.Errorf("wasm host: vm %d: instantiate: %w", i, err)
	}
	if err := w.bind(mod); err != nil {
		return nil, fmt.Errorf("wasm host: vm %d: %w", i, err)
	}
	if err := w.start(h.cfg.VMConfig, h.cfg.PluginConfig); err != nil {
		return nil, fmt.Errorf("wasm host: vm %d: %w", i, err)
	}
	return w, nil
}

// Workers returns the number of VMs.
func (h *Host) Workers() int { return len(h.workers) }

// Worker returns VM i (0 ≤ i < Workers()).
func (h *Host) Worker(i int) *Worker { return h.workers[i] }

// Next returns the VMs in turn, as a listener spreads connections over
// Envoy workers.
func (h *Host) Next() *Worker {
	return h.workers[int(h.rr.Add(1)-1)%len(h.workers)]
}

// HandleRequest runs one request on the next VM (see Worker.HandleRequest).
func (h *Host) HandleRequest(ctx context.Context, req Request, upstream Upstream) (Result, error) {
	return h.Next().HandleRequest(ctx, req, upstream)
}

// SharedData returns the store behind proxy_get/set_shared_data.
func (h *Host) SharedData() *SharedData { return h.shared }

// Metrics returns the metrics the guest defined.
func (h *Host) Metrics() *Metrics { return h.metrics }

// MemoryStats reports each VM's linear memory size in bytes: the guest's
// heap, stacks and data, as Envoy would account it.
func (h *Host) MemoryStats() []uint64 {
	out := make([]uint64, len(h.workers))
	for i, w := range h.workers {
		out[i] = w.MemoryBytes()
	}
	return out
}

// Tick calls proxy_on_tick once on every root context, in every VM, that has
// set a tick period. Use it with Config.ManualTicks for deterministic tests.
func (h *Host) Tick() error {
	var errs []error
	for _, w := range h.workers {
		errs = append(errs, w.tickAll())
	}
	return errors.Join(errs...)
}

// Reconfigure applies a new plugin configuration the way Envoy applies a new
// ECDS filter config: a new root context is created and configured in every
// VM; only if every VM accepts it are new streams switched to it, and the old
// root context is retired when its streams and callouts are finished. If any
// VM refuses it, the new root contexts are discarded and the old
// configuration keeps serving.
func (h *Host) Reconfigure(pluginConfig []byte) error {
	h.cfgMu.Lock()
	defer h.cfgMu.Unlock()
	if h.closed.Load() {
		return ErrClosed
	}
	cfg := append([]byte(nil), pluginConfig...)
	created := make([]*rootContext, len(h.workers))
	var err error
	for i, w := range h.workers {
		created[i], err = w.prepareRoot(cfg)
		if err != nil {
			err = fmt.Errorf("wasm host: reconfigure vm %d: %w", i, err)
			break
		}
	}
	if err != nil {
		for i, r := range created {
			if r != nil {
				h.workers[i].discardRoot(r)
			}
		}
		return err
	}
	for i, w := range h.workers {
		w.activateRoot(created[i])
	}
	return nil
}

// Close ends the plugin (proxy_on_done and proxy_on_delete on every root
// context), stops timers, cancels callouts in flight, waits for the host's
// goroutines and releases the VMs. It is idempotent.
func (h *Host) Close() error {
	h.cfgMu.Lock()
	defer h.cfgMu.Unlock()
	if h.closed.Swap(true) {
		return nil
	}
	h.cancel()
	for _, w := range h.workers {
		w.shutdown()
	}
	h.wg.Wait()
	if h.ownTr != nil {
		h.ownTr.CloseIdleConnections()
	}
	return h.rt.Close(context.Background())
}

// lineLogger turns the guest's stdout/stderr (Go runtime panics, fmt.Print)
// into log records, one per line.
type lineLogger struct {
	log    *slog.Logger
	worker int
	stream string
	mu     sync.Mutex
	buf    []byte
}

var _ io.Writer = (*lineLogger)(nil)

func (l *lineLogger) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, p...)
	for {
		i := indexByte(l.buf, '\n')
		if i < 0 {
			break
		}
		l.log.Warn("wasm guest output", "worker", l.worker, "stream", l.stream, "line", string(l.buf[:i]))
		l.buf = l.buf[i+1:]
	}
	if len(l.buf) > 64<<10 { // a runaway line: flush it
		l.log.Warn("wasm guest output", "worker", l.worker, "stream", l.stream, "line", string(l.buf))
		l.buf = nil
	}
	return len(p), nil
}

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}
