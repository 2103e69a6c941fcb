package main

import (
	"runtime"
	"strconv"

	"github.com/meshguard/meshguard/internal/hostcall"
	"github.com/meshguard/meshguard/wasm/internal/filtercore"
	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm"
	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm/types"
)

// vmContext is one proxy-wasm VM (one Envoy worker thread).
type vmContext struct {
	types.DefaultVMContext
	now func() int64
	vm  *filtercore.VM
	// streams counts finished streams, to check the heap now and then.
	streams       uint32
	heap, heapSys filtercore.Gauge
	headers       [][2]string // scratch for every request's headers
}

func newVMContext(now func() int64) *vmContext { return &vmContext{now: now} }

func (v *vmContext) NewPluginContext(uint32) types.PluginContext {
	if v.vm == nil {
		v.vm = filtercore.NewVM(sdkHost{now: v.now})
	}
	return &pluginContext{vmc: v, core: v.vm.NewPlugin()}
}

type pluginContext struct {
	types.DefaultPluginContext
	vmc  *vmContext
	core *filtercore.Plugin
}

func (p *pluginContext) OnPluginStart(int) types.OnPluginStartStatus {
	data, err := proxywasm.GetPluginConfiguration()
	if err != nil && err != types.ErrorStatusNotFound {
		proxywasm.LogCriticalf("meshguard: read plugin configuration: %v", err)
		return types.OnPluginStartStatusFailed
	}
	if err := p.core.Configure(data); err != nil {
		return types.OnPluginStartStatusFailed // Configure logged why
	}
	if err := proxywasm.SetTickPeriodMilliSeconds(p.core.TickMillis()); err != nil {
		proxywasm.LogWarnf("meshguard: set tick period: %v", err)
	}
	return types.OnPluginStartStatusOK
}

// OnPluginDone hands over the counters batched since the last tick.
func (p *pluginContext) OnPluginDone() bool {
	p.core.Done()
	return true
}

// OnTick runs the filter's periodic work and reports the Go heap inside
// the module, which the linear memory size alone does not show.
func (p *pluginContext) OnTick() {
	p.core.OnTick()
	v := p.vmc
	if v.heap == nil {
		v.heap = sdkHost{}.DefineGauge("meshguard_wasm_go_heap_bytes")
		v.heapSys = sdkHost{}.DefineGauge("meshguard_wasm_go_sys_bytes")
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	v.heap.Set(int64(ms.HeapAlloc))
	v.heapSys.Set(int64(ms.Sys))
}

func (p *pluginContext) NewHttpContext(uint32) types.HttpContext {
	return &httpContext{p: p}
}

type httpContext struct {
	types.DefaultHttpContext
	p  *pluginContext
	st filtercore.StreamState
}

func (h *httpContext) OnHttpRequestHeaders(int, bool) types.Action {
	if h.p.core.OnRequestHeaders(sdkStream{&h.p.vmc.headers}, &h.st) {
		return types.ActionContinue
	}
	return types.ActionPause
}

func (h *httpContext) OnHttpResponseHeaders(int, bool) types.Action {
	h.p.core.OnResponseHeaders(sdkStream{&h.p.vmc.headers}, &h.st)
	return types.ActionContinue
}

// gcEvery and gcHeap: Go's GC in a wasm reactor only runs inside calls;
// collecting between streams when the heap has grown keeps the linear
// memory flat and keeps GC pauses off the request path.
const (
	gcEvery = 4096
	gcHeap  = 16 << 20
)

func (h *httpContext) OnHttpStreamDone() {
	v := h.p.vmc
	v.streams++
	if v.streams%gcEvery != 0 {
		return
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	if ms.HeapAlloc >= gcHeap {
		runtime.GC()
	}
}

// sdkHost adapts the SDK's host calls to filtercore.Host.
type sdkHost struct{ now func() int64 }

func (sdkHost) Log(l filtercore.Level, msg string) {
	switch l {
	case filtercore.LevelDebug:
		proxywasm.LogDebug(msg)
	case filtercore.LevelInfo:
		proxywasm.LogInfo(msg)
	case filtercore.LevelWarn:
		proxywasm.LogWarn(msg)
	case filtercore.LevelError:
		proxywasm.LogError(msg)
	default:
		proxywasm.LogCritical(msg)
	}
}

func (h sdkHost) Now() int64 { return h.now() }

type counter struct{ m proxywasm.MetricCounter }

// Add increments the counter. The SDK panics when the host refuses a
// metric update; a metric is never worth failing a request for.
func (c counter) Add(n uint64) {
	defer func() { _ = recover() }()
	c.m.Increment(n)
}

type gauge struct{ m proxywasm.MetricGauge }

func (g gauge) Set(v int64) {
	defer func() { _ = recover() }()
	g.m.Add(v - g.m.Value())
}

func (sdkHost) DefineCounter(name string) filtercore.Counter {
	return counter{proxywasm.DefineCounterMetric(name)}
}

func (sdkHost) DefineGauge(name string) filtercore.Gauge {
	return gauge{proxywasm.DefineGaugeMetric(name)}
}

func (sdkHost) HTTPCall(cluster string, headers [][2]string, body []byte, timeout uint32, maxBody int, done func(filtercore.CallResponse)) error {
	_, err := proxywasm.DispatchHttpCall(cluster, headers, body, nil, timeout, func(_, bodySize, _ int) {
		// A failed call (reset, timeout, no healthy host) arrives with no
		// headers: status 0.
		var r filtercore.CallResponse
		if hs, err := proxywasm.GetHttpCallResponseHeaders(); err == nil {
			r.Headers = hs
			for _, kv := range hs {
				if kv[0] == ":status" {
					r.Status, _ = strconv.Atoi(kv[1])
				}
			}
		}
		if r.Status != 0 && bodySize > 0 && maxBody > 0 {
			if bodySize > maxBody {
				r.BodyTooLarge = true
			} else if b, err := proxywasm.GetHttpCallResponseBody(0, bodySize); err == nil {
				r.Body = b
			} else {
				r.Status = 0 // a body that cannot be read is a failed call
			}
		}
		done(r)
	})
	return err
}

func (sdkHost) SharedData(key string) ([]byte, uint32, error) { return proxywasm.GetSharedData(key) }

func (sdkHost) SetSharedData(key string, value []byte, cas uint32) error {
	return proxywasm.SetSharedData(key, value, cas)
}

// Property reads a proxy-wide property (the node's), at configuration time.
func (sdkHost) Property(p filtercore.Prop) ([]byte, bool) {
	v, err := proxywasm.GetProperty(p.Path)
	return v, err == nil
}

// sdkStream adapts the current HTTP stream's host calls. scratch is the
// VM's header slice, reused by every request.
type sdkStream struct{ scratch *[][2]string }

func (s sdkStream) RequestHeaders() ([][2]string, error) {
	h, err := hostcall.RequestHeaders(*s.scratch)
	*s.scratch = h[:0]
	return h, err
}

func (sdkStream) AddRequestHeader(name, value string) error {
	return proxywasm.AddHttpRequestHeader(name, value)
}

func (sdkStream) ReplaceRequestHeaders(h [][2]string) error {
	return proxywasm.ReplaceHttpRequestHeaders(h)
}

func (sdkStream) ResponseHeader(name string) (string, bool) { return hostcall.ResponseHeader(name) }

func (sdkStream) Property(p filtercore.Prop) ([]byte, bool) { return hostcall.Property(p.Path, p.Wire) }

func (sdkStream) SendLocalResponse(status uint32, headers [][2]string, body []byte) error {
	return proxywasm.SendHttpResponse(status, headers, body, -1)
}
