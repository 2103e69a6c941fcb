package wasmhost

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/tetratelabs/wazero/api"
)

// ErrVMFailed wraps the error of a VM that trapped (a guest panic, an
// out-of-bounds access, a failed host call). Envoy stops using such a VM;
// so does the host: every later call on the Worker returns the same error.
var ErrVMFailed = errors.New("wasm host: vm failed")

// ErrConfigRejected is returned when proxy_on_configure (or
// proxy_on_vm_start) returns false: the plugin refused its configuration.
var ErrConfigRejected = errors.New("wasm host: plugin refused its configuration")

// Worker is one VM, standing for one Envoy worker thread. Guest calls on a
// Worker are serialized; different Workers run in parallel.
type Worker struct {
	h   *Host
	idx int
	ctx context.Context // carries the Worker to host functions

	mu          sync.Mutex // guards everything below and every guest call
	mod         api.Module
	mem         api.Memory
	fn          guestFuncs
	stack       []uint64 // params/results of top-level guest calls
	allocStack  []uint64 // params/results of proxy_on_memory_allocate
	nextID      uint32
	root        *rootContext // serves new streams
	roots       map[uint32]*rootContext
	streams     map[uint32]*stream
	effective   uint32
	callout     *calloutResult // set during proxy_on_http_call_response
	configuring *rootContext   // set during proxy_on_configure
	nextCall    uint32
	failed      error
	closed      bool
	keyBuf      []byte // property path scratch
	valBuf      []byte // shared data scratch
}

type guestFuncs struct {
	initialize, alloc, contextCreate, vmStart, configure,
	requestHeaders, requestBody, requestTrailers,
	responseHeaders, responseBody, responseTrailers,
	log, done, delete, httpCallResponse, tick, queueReady api.Function
}

// rootContext is a plugin (root) context: one per plugin configuration.
type rootContext struct {
	id       uint32
	config   []byte
	refs     int // live streams and callouts in flight
	retired  bool
	deleted  bool
	awaiting bool // proxy_on_done returned false: waiting for proxy_done
	tick     time.Duration
	tickStop chan struct{}
}

type workerKey struct{}

func newWorker(h *Host, idx int) *Worker {
	w := &Worker{
		h:          h,
		idx:        idx,
		stack:      make([]uint64, 8),
		allocStack: make([]uint64, 1),
		roots:      make(map[uint32]*rootContext),
		streams:    make(map[uint32]*stream),
	}
	w.ctx = context.WithValue(context.Background(), workerKey{}, w)
	return w
}

func workerFrom(ctx context.Context) *Worker {
	return ctx.Value(workerKey{}).(*Worker)
}

func (w *Worker) bind(mod api.Module) error {
	w.mod, w.mem = mod, mod.Memory()
	if w.mem == nil {
		return errors.New("module exports no memory")
	}
	get := func(name string, required bool, dst *api.Function) error {
		*dst = mod.ExportedFunction(name)
		if *dst == nil && required {
			return fmt.Errorf("module does not export %s", name)
		}
		return nil
	}
	return errors.Join(
		get("_initialize", false, &w.fn.initialize),
		get("proxy_on_memory_allocate", true, &w.fn.alloc),
		get("proxy_on_context_create", true, &w.fn.contextCreate),
		get("proxy_on_vm_start", false, &w.fn.vmStart),
		get("proxy_on_configure", false, &w.fn.configure),
		get("proxy_on_request_headers", false, &w.fn.requestHeaders),
		get("proxy_on_request_body", false, &w.fn.requestBody),
		get("proxy_on_request_trailers", false, &w.fn.requestTrailers),
		get("proxy_on_response_headers", false, &w.fn.responseHeaders),
		get("proxy_on_response_body", false, &w.fn.responseBody),
		get("proxy_on_response_trailers", false, &w.fn.responseTrailers),
		get("proxy_on_log", false, &w.fn.log),
		get("proxy_on_done", false, &w.fn.done),
		get("proxy_on_delete", false, &w.fn.delete),
		get("proxy_on_http_call_response", false, &w.fn.httpCallResponse),
		get("proxy_on_tick", false, &w.fn.tick),
		get("proxy_on_queue_ready", false, &w.fn.queueReady),
	)
}

// Index returns the VM's index in its Host.
func (w *Worker) Index() int { return w.idx }

// MemoryBytes returns the VM's linear memory size.
func (w *Worker) MemoryBytes() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.mem == nil {
		return 0
	}
	return uint64(w.mem.Size())
}

// Err returns the error that made the VM fail, or nil.
func (w *Worker) Err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.failed
}

// usable reports why no guest call may be made. Call with w.mu held.
func (w *Worker) usable() error {
	switch {
	case w.closed:
		return ErrClosed
	case w.failed != nil:
		return w.failed
	}
	return nil
}

// invoke calls fn with the n parameters in w.stack[:n], with ctxID as the
// effective context, and returns the first result. A nil fn (an optional
// export) returns def. Call with w.mu held.
func (w *Worker) invoke(fn api.Function, name string, ctxID uint32, def uint64) (uint64, error) {
	if err := w.usable(); err != nil {
		return 0, err
	}
	if fn == nil {
		return def, nil
	}
	w.effective = ctxID
	if err := fn.CallWithStack(w.ctx, w.stack); err != nil {
		w.failed = fmt.Errorf("%w: worker %d: %s: %v", ErrVMFailed, w.idx, name, err)
		w.h.log.Error("wasm vm failed", "worker", w.idx, "callback", name, "error", err)
		return 0, w.failed
	}
	return w.stack[0], nil
}

func (w *Worker) newContextID() uint32 {
	w.nextID++
	return w.nextID
}

// start runs the module's initialization and the plugin's start, as Envoy
// does when it loads a plugin: _initialize, proxy_on_context_create for the
// root context, proxy_on_vm_start, proxy_on_configure.
func (w *Worker) start(vmConfig, pluginConfig []byte) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.fn.initialize != nil {
		if _, err := w.invoke(w.fn.initialize, "_initialize", 0, 0); err != nil {
			return err
		}
	}
	r := &rootContext{id: w.newContextID(), config: append([]byte(nil), pluginConfig...)}
	w.roots[r.id] = r
	w.stack[0], w.stack[1] = uint64(r.id), 0
	if _, err := w.invoke(w.fn.contextCreate, "proxy_on_context_create", r.id, 0); err != nil {
		return err
	}
	w.stack[0], w.stack[1] = uint64(r.id), uint64(len(vmConfig))
	ok, err := w.invoke(w.fn.vmStart, "proxy_on_vm_start", r.id, 1)
	if err != nil {
		return err
	}
	if uint32(ok) == 0 {
		return fmt.Errorf("%w: proxy_on_vm_start returned false", ErrConfigRejected)
	}
	if err := w.configure(r); err != nil {
		return err
	}
	w.root = r
	return nil
}

func (w *Worker) configure(r *rootContext) error {
	w.stack[0], w.stack[1] = uint64(r.id), uint64(len(r.config))
	w.configuring = r
	ok, err := w.invoke(w.fn.configure, "proxy_on_configure", r.id, 1)
	w.configuring = nil
	if err != nil {
		return err
	}
	if uint32(ok) == 0 {
		return fmt.Errorf("%w: proxy_on_configure returned false", ErrConfigRejected)
	}
	return nil
}

// prepareRoot creates and configures a root context that does not serve
// streams yet. A refused configuration deletes it again.
func (w *Worker) prepareRoot(config []byte) (*rootContext, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.usable(); err != nil {
		return nil, err
	}
	r := &rootContext{id: w.newContextID(), config: config}
	w.roots[r.id] = r
	w.stack[0], w.stack[1] = uint64(r.id), 0
	if _, err := w.invoke(w.fn.contextCreate, "proxy_on_context_create", r.id, 0); err != nil {
		return nil, err
	}
	if err := w.configure(r); err != nil {
		w.deleteRoot(r)
		return nil, err
	}
	return r, nil
}

func (w *Worker) discardRoot(r *rootContext) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.deleteRoot(r)
}

func (w *Worker) activateRoot(r *rootContext) {
	w.mu.Lock()
	defer w.mu.Unlock()
	old := w.root
	w.root = r
	if old != nil {
		old.retired = true
		w.maybeDeleteRoot(old)
	}
}

// maybeDeleteRoot deletes a retired root context once nothing uses it.
func (w *Worker) maybeDeleteRoot(r *rootContext) {
	if r.retired && r.refs == 0 && !r.deleted && !r.awaiting {
		w.finishRoot(r)
	}
}

// finishRoot asks the plugin to finish (proxy_on_done); a plugin that answers
// false is deleted later, when it calls proxy_done.
func (w *Worker) finishRoot(r *rootContext) {
	w.stopTicker(r)
	w.stack[0] = uint64(r.id)
	done, err := w.invoke(w.fn.done, "proxy_on_done", r.id, 1)
	if err == nil && uint32(done) == 0 && !w.closed {
		r.awaiting = true
		return
	}
	w.deleteRoot(r)
}

func (w *Worker) deleteRoot(r *rootContext) {
	if r.deleted {
		return
	}
	w.stopTicker(r)
	r.deleted = true
	w.stack[0] = uint64(r.id)
	_, _ = w.invoke(w.fn.delete, "proxy_on_delete", r.id, 0)
	delete(w.roots, r.id)
}

// shutdown ends every root context and makes the Worker refuse further
// calls.
func (w *Worker) shutdown() {
	w.mu.Lock()
	defer w.mu.Unlock()
	ids := make([]uint32, 0, len(w.roots))
	for id := range w.roots {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	for _, id := range ids {
		r := w.roots[id]
		w.stopTicker(r)
		if w.failed == nil {
			w.stack[0] = uint64(r.id)
			_, _ = w.invoke(w.fn.done, "proxy_on_done", r.id, 1)
			w.deleteRoot(r)
		}
	}
	w.closed = true
	for _, s := range w.streams {
		s.poke()
	}
}

// setTick implements proxy_set_tick_period_milliseconds for root r.
func (w *Worker) setTick(r *rootContext, d time.Duration) {
	w.stopTicker(r)
	r.tick = d
	if d <= 0 || w.h.cfg.ManualTicks || w.closed {
		return
	}
	stop := make(chan struct{})
	r.tickStop = stop
	w.h.wg.Add(1)
	go func() {
		defer w.h.wg.Done()
		t := time.NewTicker(d)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-w.h.ctx.Done():
				return
			case <-t.C:
				w.tickRoot(r, stop)
			}
		}
	}()
}

func (w *Worker) stopTicker(r *rootContext) {
	if r.tickStop != nil {
		close(r.tickStop)
		r.tickStop = nil
	}
}

func (w *Worker) tickRoot(r *rootContext, stop chan struct{}) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if r.deleted || r.tickStop != stop || w.usable() != nil {
		return
	}
	w.stack[0] = uint64(r.id)
	_, _ = w.invoke(w.fn.tick, "proxy_on_tick", r.id, 0)
}

// tickAll calls proxy_on_tick on every root context with a tick period.
func (w *Worker) tickAll() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.usable(); err != nil {
		return err
	}
	ids := make([]uint32, 0, len(w.roots))
	for id, r := range w.roots {
		if r.tick > 0 && !r.deleted {
			ids = append(ids, id)
		}
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	for _, id := range ids {
		w.stack[0] = uint64(id)
		if _, err := w.invoke(w.fn.tick, "proxy_on_tick", id, 0); err != nil {
			return err
		}
	}
	return nil
}

// rootOf returns the root context of context id (itself for a root).
func (w *Worker) rootOf(id uint32) *rootContext {
	if r, ok := w.roots[id]; ok {
		return r
	}
	if s, ok := w.streams[id]; ok {
		return s.root
	}
	return nil
}

// queueReady delivers proxy_on_queue_ready to root rootID.
func (w *Worker) queueReady(rootID, queueID uint32) {
	w.mu.Lock()
	defer w.mu.Unlock()
	r, ok := w.roots[rootID]
	if !ok || r.deleted || w.usable() != nil {
		return
	}
	w.stack[0], w.stack[1] = uint64(rootID), uint64(queueID)
	_, _ = w.invoke(w.fn.queueReady, "proxy_on_queue_ready", rootID, 0)
}

// guestLevel maps a proxy-wasm log level to slog.
func guestLevel(l uint32) slog.Level {
	switch l {
	case 0:
		return slog.LevelDebug - 4
	case 1:
		return slog.LevelDebug
	case 2:
		return slog.LevelInfo
	case 3:
		return slog.LevelWarn
	case 4:
		return slog.LevelError
	default:
		return slog.LevelError + 4
	}
}

// proxyLevel maps slog to a proxy-wasm log level.
func proxyLevel(l slog.Level) uint32 {
	switch {
	case l < slog.LevelDebug:
		return 0
	case l < slog.LevelInfo:
		return 1
	case l < slog.LevelWarn:
		return 2
	case l < slog.LevelError:
		return 3
	case l < slog.LevelError+4:
		return 4
	default:
		return 5
	}
}
