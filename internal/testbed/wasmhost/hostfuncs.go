package wasmhost

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
)

// instantiateABI defines the proxy-wasm ABI v0.2.1 host functions in module
// "env". Every function finds its Worker in the call's context.Context and
// runs with the Worker's lock held (the guest call that led to it holds it).
func instantiateABI(ctx context.Context, rt wazero.Runtime) error {
	b := rt.NewHostModuleBuilder("env")
	i32, i64 := api.ValueTypeI32, api.ValueTypeI64
	def := func(name string, f func(*Worker, []uint64) status, params ...api.ValueType) {
		b.NewFunctionBuilder().
			WithGoModuleFunction(api.GoModuleFunc(func(ctx context.Context, _ api.Module, stack []uint64) {
				stack[0] = uint64(f(workerFrom(ctx), stack))
			}), params, []api.ValueType{i32}).
			Export(name)
	}
	def("proxy_log", (*Worker).hostLog, i32, i32, i32)
	def("proxy_get_log_level", (*Worker).hostGetLogLevel, i32)
	def("proxy_get_current_time_nanoseconds", (*Worker).hostGetCurrentTime, i32)
	def("proxy_set_tick_period_milliseconds", (*Worker).hostSetTickPeriod, i32)
	def("proxy_set_effective_context", (*Worker).hostSetEffectiveContext, i32)
	def("proxy_done", (*Worker).hostDone)
	def("proxy_call_foreign_function", (*Worker).hostCallForeignFunction, i32, i32, i32, i32, i32, i32)

	def("proxy_get_property", (*Worker).hostGetProperty, i32, i32, i32, i32)
	def("proxy_set_property", (*Worker).hostSetProperty, i32, i32, i32, i32)

	def("proxy_get_header_map_value", (*Worker).hostGetHeaderMapValue, i32, i32, i32, i32, i32)
	def("proxy_add_header_map_value", (*Worker).hostAddHeaderMapValue, i32, i32, i32, i32, i32)
	def("proxy_replace_header_map_value", (*Worker).hostReplaceHeaderMapValue, i32, i32, i32, i32, i32)
	def("proxy_remove_header_map_value", (*Worker).hostRemoveHeaderMapValue, i32, i32, i32)
	def("proxy_get_header_map_pairs", (*Worker).hostGetHeaderMapPairs, i32, i32, i32)
	def("proxy_set_header_map_pairs", (*Worker).hostSetHeaderMapPairs, i32, i32, i32)
	def("proxy_get_header_map_size", (*Worker).hostGetHeaderMapSize, i32, i32)

	def("proxy_get_buffer_bytes", (*Worker).hostGetBufferBytes, i32, i32, i32, i32, i32)
	def("proxy_set_buffer_bytes", (*Worker).hostSetBufferBytes, i32, i32, i32, i32, i32)
	def("proxy_get_buffer_status", (*Worker).hostGetBufferStatus, i32, i32, i32)

	def("proxy_send_local_response", (*Worker).hostSendLocalResponse, i32, i32, i32, i32, i32, i32, i32, i32)
	def("proxy_continue_stream", (*Worker).hostContinueStream, i32)
	def("proxy_close_stream", (*Worker).hostCloseStream, i32)
	def("proxy_http_call", (*Worker).hostHTTPCall, i32, i32, i32, i32, i32, i32, i32, i32, i32, i32)

	def("proxy_get_shared_data", (*Worker).hostGetSharedData, i32, i32, i32, i32, i32)
	def("proxy_set_shared_data", (*Worker).hostSetSharedData, i32, i32, i32, i32, i32)
	def("proxy_register_shared_queue", (*Worker).hostRegisterSharedQueue, i32, i32, i32)
	def("proxy_resolve_shared_queue", (*Worker).hostResolveSharedQueue, i32, i32, i32, i32, i32)
	def("proxy_enqueue_shared_queue", (*Worker).hostEnqueueSharedQueue, i32, i32, i32)
	def("proxy_dequeue_shared_queue", (*Worker).hostDequeueSharedQueue, i32, i32, i32)

	def("proxy_define_metric", (*Worker).hostDefineMetric, i32, i32, i32, i32)
	def("proxy_increment_metric", (*Worker).hostIncrementMetric, i32, i64)
	def("proxy_record_metric", (*Worker).hostRecordMetric, i32, i64)
	def("proxy_get_metric", (*Worker).hostGetMetric, i32, i32)

	_, err := b.Instantiate(ctx)
	return err
}

// --- guest memory -----------------------------------------------------------

func (w *Worker) read(ptr, size uint64) ([]byte, bool) {
	return w.mem.Read(uint32(ptr), uint32(size))
}

func (w *Worker) readString(ptr, size uint64) (string, bool) {
	b, ok := w.read(ptr, size)
	if !ok {
		return "", false
	}
	return string(b), true
}

// readKey reads a header name and lower-cases it, as Envoy's LowerCaseString.
func (w *Worker) readKey(ptr, size uint64) (string, bool) {
	b, ok := w.read(ptr, size)
	if !ok {
		return "", false
	}
	for _, c := range b {
		if 'A' <= c && c <= 'Z' {
			return strings.ToLower(string(b)), true
		}
	}
	return string(b), true
}

// alloc allocates n bytes in the guest with proxy_on_memory_allocate. A
// failure traps the calling guest: the panic becomes the guest call's error.
func (w *Worker) alloc(n int) uint32 {
	w.allocStack[0] = uint64(n)
	if err := w.fn.alloc.CallWithStack(w.ctx, w.allocStack); err != nil {
		panic(fmt.Errorf("proxy_on_memory_allocate(%d): %w", n, err))
	}
	return uint32(w.allocStack[0])
}

func (w *Worker) writeU32(ptr uint64, v uint32) status {
	if !w.mem.WriteUint32Le(uint32(ptr), v) {
		return statusBadArgument
	}
	return statusOK
}

func (w *Worker) writeU64(ptr uint64, v uint64) status {
	if !w.mem.WriteUint64Le(uint32(ptr), v) {
		return statusBadArgument
	}
	return statusOK
}

// returnPtrSize writes ptr and size to the guest's out-parameters.
func (w *Worker) returnPtrSize(ptr uint32, size int, ptrPtr, sizePtr uint64) status {
	if st := w.writeU32(ptrPtr, ptr); st != statusOK {
		return st
	}
	return w.writeU32(sizePtr, uint32(size))
}

// returnBytes copies data into guest memory allocated by the guest and
// returns it through (ptrPtr, sizePtr). Empty data returns a null pointer.
func (w *Worker) returnBytes(data []byte, ptrPtr, sizePtr uint64) status {
	if len(data) == 0 {
		return w.returnPtrSize(0, 0, ptrPtr, sizePtr)
	}
	p := w.alloc(len(data))
	if !w.mem.Write(p, data) {
		return statusInternalFailure
	}
	return w.returnPtrSize(p, len(data), ptrPtr, sizePtr)
}

func (w *Worker) returnString(data string, ptrPtr, sizePtr uint64) status {
	if len(data) == 0 {
		return w.returnPtrSize(0, 0, ptrPtr, sizePtr)
	}
	p := w.alloc(len(data))
	if !w.mem.WriteString(p, data) {
		return statusInternalFailure
	}
	return w.returnPtrSize(p, len(data), ptrPtr, sizePtr)
}

func (w *Worker) returnPairs(pairs []pair, ptrPtr, sizePtr uint64) status {
	n := pairsSize(pairs)
	p := w.alloc(n)
	dst, ok := w.mem.Read(p, uint32(n))
	if !ok {
		return statusInternalFailure
	}
	encodePairs(dst, pairs)
	return w.returnPtrSize(p, n, ptrPtr, sizePtr)
}

func (w *Worker) effectiveStream() *stream { return w.streams[w.effective] }

// --- logging, time, contexts ------------------------------------------------

func (w *Worker) hostLog(stack []uint64) status {
	level := uint32(stack[0])
	if level < proxyLevel(w.h.cfg.LogLevel) {
		return statusOK
	}
	lvl := guestLevel(level)
	if !w.h.log.Enabled(context.Background(), lvl) {
		return statusOK
	}
	msg, ok := w.readString(stack[1], stack[2])
	if !ok {
		return statusBadArgument
	}
	w.h.log.LogAttrs(context.Background(), lvl, msg,
		slog.String("plugin", w.h.cfg.PluginName),
		slog.Int("worker", w.idx),
		slog.Uint64("context_id", uint64(w.effective)))
	return statusOK
}

func (w *Worker) hostGetLogLevel(stack []uint64) status {
	return w.writeU32(stack[0], proxyLevel(w.h.cfg.LogLevel))
}

func (w *Worker) hostGetCurrentTime(stack []uint64) status {
	return w.writeU64(stack[0], uint64(w.h.now().UnixNano()))
}

func (w *Worker) hostSetTickPeriod(stack []uint64) status {
	r := w.rootOf(w.effective)
	if r == nil {
		return statusBadArgument
	}
	w.setTick(r, time.Duration(uint32(stack[0]))*time.Millisecond)
	return statusOK
}

func (w *Worker) hostSetEffectiveContext(stack []uint64) status {
	id := uint32(stack[0])
	if w.rootOf(id) == nil {
		return statusBadArgument
	}
	w.effective = id
	return statusOK
}

// hostDone is proxy_done: a root context whose proxy_on_done returned false
// reports that it has finished; it is deleted after the current call.
func (w *Worker) hostDone([]uint64) status {
	r, ok := w.roots[w.effective]
	if !ok || !r.awaiting {
		return statusNotFound
	}
	r.awaiting = false
	w.h.wg.Add(1)
	go func() {
		defer w.h.wg.Done()
		w.mu.Lock()
		defer w.mu.Unlock()
		if w.usable() == nil {
			w.deleteRoot(r)
		}
	}()
	return statusOK
}

func (w *Worker) hostCallForeignFunction([]uint64) status {
	return statusNotFound // no foreign functions are registered
}

// --- properties -------------------------------------------------------------

// propertyKey turns a NUL-separated property path into the dotted key of
// Properties.
func (w *Worker) propertyKey(ptr, size uint64) ([]byte, bool) {
	b, ok := w.read(ptr, size)
	if !ok || len(b) == 0 {
		return nil, false
	}
	w.keyBuf = append(w.keyBuf[:0], b...)
	for i, c := range w.keyBuf {
		if c == 0 {
			w.keyBuf[i] = '.'
		}
	}
	return w.keyBuf, true
}

func (w *Worker) property(key []byte) ([]byte, bool) {
	if s := w.effectiveStream(); s != nil {
		if v, ok := s.setP[string(key)]; ok {
			return v, true
		}
		if v, ok := s.props[string(key)]; ok {
			return v, true
		}
		if v, ok := s.derivedProperty(string(key)); ok {
			return v, true
		}
	}
	if v, ok := w.h.cfg.Properties[string(key)]; ok {
		return v, true
	}
	switch string(key) {
	case "plugin_name":
		return []byte(w.h.cfg.PluginName), true
	case "plugin_root_id":
		return []byte(w.h.cfg.RootID), true
	case "plugin_vm_id":
		return []byte(w.h.cfg.VMID), true
	}
	return nil, false
}

func (w *Worker) hostGetProperty(stack []uint64) status {
	key, ok := w.propertyKey(stack[0], stack[1])
	if !ok {
		return statusBadArgument
	}
	v, ok := w.property(key)
	if !ok {
		return statusNotFound
	}
	return w.returnBytes(v, stack[2], stack[3])
}

// hostSetProperty stores a stream attribute (Envoy's filter state), visible
// to later proxy_get_property calls of the same stream.
func (w *Worker) hostSetProperty(stack []uint64) status {
	s := w.effectiveStream()
	if s == nil {
		return statusNotFound
	}
	key, ok := w.propertyKey(stack[0], stack[1])
	if !ok {
		return statusBadArgument
	}
	v, ok := w.read(stack[2], stack[3])
	if !ok {
		return statusBadArgument
	}
	if s.setP == nil {
		s.setP = make(Properties)
	}
	s.setP[string(key)] = append([]byte(nil), v...)
	return statusOK
}

// --- header maps ------------------------------------------------------------

// headerMap returns the map mt of the effective context as Envoy exposes
// it: a stream's map only during its callback (or while the filter holds the
// stream paused there), request and response headers and response trailers
// read-only during proxy_on_log, call response maps only during
// proxy_on_http_call_response. Otherwise the map is not available:
// BadArgument (NotFound during proxy_on_log), as in Envoy.
func (w *Worker) headerMap(mt mapType, write bool) (*headerMap, status) {
	switch mt {
	case mapHTTPCallResponseHdrs, mapHTTPCallResponseTrls:
		if w.callout == nil || write {
			return nil, statusBadArgument
		}
		if mt == mapHTTPCallResponseHdrs {
			return &w.callout.headers, statusOK
		}
		return &w.callout.trailers, statusOK
	case mapRequestHeaders, mapRequestTrailers, mapResponseHeaders, mapResponseTrailers:
	default:
		return nil, statusBadArgument
	}
	s := w.effectiveStream()
	if s == nil {
		return nil, statusBadArgument
	}
	if s.logPhase {
		if write {
			return nil, statusBadArgument
		}
		switch {
		case mt == mapRequestHeaders:
			return &s.reqHeaders, statusOK
		case mt == mapResponseHeaders && s.respHeaders != nil:
			return &s.respHeaders, statusOK
		case mt == mapResponseTrailers && s.respHeaders != nil:
			return &s.respTrailers, statusOK
		}
		return nil, statusNotFound
	}
	switch mt {
	case mapRequestHeaders:
		if s.live[cbRequestHeaders] {
			return &s.reqHeaders, statusOK
		}
	case mapRequestTrailers:
		// Trailers can also be added in the last body callback.
		if s.live[cbRequestTrailers] || s.live[cbRequestBody] {
			return &s.reqTrailers, statusOK
		}
	case mapResponseHeaders:
		if s.live[cbResponseHeaders] {
			return &s.respHeaders, statusOK
		}
	case mapResponseTrailers:
		if s.live[cbResponseTrailers] || s.live[cbResponseBody] {
			return &s.respTrailers, statusOK
		}
	}
	return nil, statusBadArgument
}

func (w *Worker) hostGetHeaderMapValue(stack []uint64) status {
	m, st := w.headerMap(mapType(stack[0]), false)
	if st != statusOK {
		return st
	}
	key, ok := w.readKey(stack[1], stack[2])
	if !ok {
		return statusBadArgument
	}
	v, ok := m.get(key)
	if !ok {
		return statusNotFound
	}
	return w.returnString(v, stack[3], stack[4])
}

func (w *Worker) keyValue(stack []uint64) (string, string, bool) {
	key, ok := w.readKey(stack[1], stack[2])
	if !ok {
		return "", "", false
	}
	v, ok := w.readString(stack[3], stack[4])
	return key, v, ok
}

func (w *Worker) hostAddHeaderMapValue(stack []uint64) status {
	m, st := w.headerMap(mapType(stack[0]), true)
	if st != statusOK {
		return st
	}
	k, v, ok := w.keyValue(stack)
	if !ok {
		return statusBadArgument
	}
	m.add(k, v)
	return statusOK
}

func (w *Worker) hostReplaceHeaderMapValue(stack []uint64) status {
	m, st := w.headerMap(mapType(stack[0]), true)
	if st != statusOK {
		return st
	}
	k, v, ok := w.keyValue(stack)
	if !ok {
		return statusBadArgument
	}
	m.replace(k, v)
	return statusOK
}

func (w *Worker) hostRemoveHeaderMapValue(stack []uint64) status {
	m, st := w.headerMap(mapType(stack[0]), true)
	if st != statusOK {
		return st
	}
	key, ok := w.readKey(stack[1], stack[2])
	if !ok {
		return statusBadArgument
	}
	m.remove(key)
	return statusOK
}

// hostGetHeaderMapPairs returns an unavailable or empty map as a null
// pointer and OK, as Envoy does (the SDK reports it as NotFound).
func (w *Worker) hostGetHeaderMapPairs(stack []uint64) status {
	m, st := w.headerMap(mapType(stack[0]), false)
	if st != statusOK || len(*m) == 0 {
		return w.returnPtrSize(0, 0, stack[1], stack[2])
	}
	return w.returnPairs(*m, stack[1], stack[2])
}

func (w *Worker) hostSetHeaderMapPairs(stack []uint64) status {
	m, st := w.headerMap(mapType(stack[0]), true)
	if st != statusOK {
		return st
	}
	b, ok := w.read(stack[1], stack[2])
	if !ok {
		return statusBadArgument
	}
	pairs, err := decodePairs(b)
	if err != nil {
		return statusBadArgument
	}
	for i := range pairs {
		pairs[i].k = strings.ToLower(pairs[i].k)
	}
	*m = pairs
	return statusOK
}

func (w *Worker) hostGetHeaderMapSize(stack []uint64) status {
	m, st := w.headerMap(mapType(stack[0]), false)
	if st != statusOK {
		return st
	}
	return w.writeU32(stack[1], uint32(pairsSize(*m)))
}

// --- buffers ----------------------------------------------------------------

func (w *Worker) buffer(bt bufferType) (*[]byte, bool, status) {
	switch bt {
	case bufferVMConfiguration:
		return &w.h.cfg.VMConfig, false, statusOK
	case bufferPluginConfiguration:
		// Envoy exposes it only while proxy_on_configure runs.
		r := w.configuring
		if r == nil {
			return nil, false, statusNotFound
		}
		return &r.config, false, statusOK
	case bufferHTTPCallResponse:
		if w.callout == nil {
			return nil, false, statusNotFound
		}
		return &w.callout.body, false, statusOK
	case bufferRequestBody, bufferResponseBody:
		// Like maps, a body is exposed during its callback or while the
		// filter buffers it (paused there).
		s := w.effectiveStream()
		if s == nil {
			return nil, false, statusNotFound
		}
		if bt == bufferRequestBody && s.live[cbRequestBody] {
			return &s.reqBody, true, statusOK
		}
		if bt == bufferResponseBody && s.live[cbResponseBody] {
			return &s.respBody, true, statusOK
		}
		return nil, false, statusNotFound
	}
	return nil, false, statusNotFound
}

func (w *Worker) hostGetBufferBytes(stack []uint64) status {
	buf, _, st := w.buffer(bufferType(stack[0]))
	if st != statusOK {
		return st
	}
	start, max := int64(int32(stack[1])), int64(int32(stack[2]))
	b := *buf
	if start < 0 || max < 0 || start > int64(len(b)) {
		return statusBadArgument
	}
	end := min(start+max, int64(len(b)))
	return w.returnBytes(b[start:end], stack[3], stack[4])
}

// hostSetBufferBytes replaces bytes [start, start+size) of a body with the
// given data: (0, 0) prepends, (start ≥ length, _) appends, (0, ≥ length)
// replaces, as the SDK's Prepend/Append/Replace*Body use it.
func (w *Worker) hostSetBufferBytes(stack []uint64) status {
	buf, writable, st := w.buffer(bufferType(stack[0]))
	if st != statusOK {
		return st
	}
	if !writable {
		return statusBadArgument
	}
	start, size := int64(uint32(stack[1])), int64(uint32(stack[2]))
	data, ok := w.read(stack[3], stack[4])
	if !ok {
		return statusBadArgument
	}
	b := *buf
	start = min(start, int64(len(b)))
	end := min(start+size, int64(len(b)))
	out := make([]byte, 0, int64(len(b))-(end-start)+int64(len(data)))
	out = append(out, b[:start]...)
	out = append(out, data...)
	out = append(out, b[end:]...)
	*buf = out
	return statusOK
}

func (w *Worker) hostGetBufferStatus(stack []uint64) status {
	buf, _, st := w.buffer(bufferType(stack[0]))
	if st != statusOK {
		return st
	}
	if st := w.writeU32(stack[1], uint32(len(*buf))); st != statusOK {
		return st
	}
	return w.writeU32(stack[2], 0)
}

// --- streams ----------------------------------------------------------------

func (w *Worker) hostSendLocalResponse(stack []uint64) status {
	s := w.effectiveStream()
	if s == nil {
		return statusBadArgument
	}
	code := uint32(stack[0])
	if code < 100 || code > 599 {
		return statusBadArgument
	}
	details, ok1 := w.readString(stack[1], stack[2])
	body, ok2 := w.read(stack[3], stack[4])
	hdr, ok3 := w.read(stack[5], stack[6])
	if !ok1 || !ok2 || !ok3 {
		return statusBadArgument
	}
	pairs, err := decodePairs(hdr)
	if err != nil {
		return statusBadArgument
	}
	if s.local != nil {
		return statusOK // Envoy sends one local reply per stream
	}
	lr := &LocalResponse{
		Status:     int(code),
		Details:    details,
		Body:       append([]byte(nil), body...),
		GRPCStatus: int32(uint32(stack[7])),
	}
	for _, p := range pairs {
		lr.Headers = append(lr.Headers, [2]string{strings.ToLower(p.k), p.v})
	}
	s.local = lr
	s.lateLocal = s.respHeaders != nil
	s.poke()
	return statusOK
}

func (w *Worker) hostContinueStream(stack []uint64) status {
	s := w.effectiveStream()
	if s == nil {
		return statusBadArgument
	}
	switch streamType(stack[0]) {
	case streamRequest:
		s.reqPaused = false
	case streamResponse:
		s.respPaused = false
	case streamDownstream:
		return statusOK // an HTTP stream has no network filter callbacks: no-op, as in Envoy
	case streamUpstream:
		return statusUnimplemented
	default:
		return statusBadArgument
	}
	// Envoy forgets the request's maps once the stream is continued.
	s.live[cbRequestHeaders], s.live[cbRequestBody], s.live[cbRequestTrailers] = false, false, false
	s.poke()
	return statusOK
}

func (w *Worker) hostCloseStream(stack []uint64) status {
	s := w.effectiveStream()
	if s == nil {
		return statusBadArgument
	}
	switch streamType(stack[0]) {
	case streamRequest, streamResponse:
		s.reset = true
	case streamDownstream, streamUpstream:
		return statusOK // no network connection behind an HTTP context here: no-op
	default:
		return statusBadArgument
	}
	s.poke()
	return statusOK
}

// --- shared data and queues -------------------------------------------------

func (w *Worker) hostGetSharedData(stack []uint64) status {
	key, ok := w.read(stack[0], stack[1])
	if !ok {
		return statusBadArgument
	}
	var cas uint32
	found := w.h.shared.withValue(string(key), func(v []byte, c uint32) {
		w.valBuf = append(w.valBuf[:0], v...)
		cas = c
	})
	if !found {
		return statusNotFound
	}
	if st := w.returnBytes(w.valBuf, stack[2], stack[3]); st != statusOK {
		return st
	}
	return w.writeU32(stack[4], cas)
}

func (w *Worker) hostSetSharedData(stack []uint64) status {
	key, ok1 := w.readString(stack[0], stack[1])
	v, ok2 := w.read(stack[2], stack[3])
	if !ok1 || !ok2 {
		return statusBadArgument
	}
	return w.h.shared.set(key, append([]byte(nil), v...), uint32(stack[4]))
}

func (w *Worker) hostRegisterSharedQueue(stack []uint64) status {
	r := w.rootOf(w.effective)
	if r == nil {
		return statusBadArgument
	}
	name, ok := w.readString(stack[0], stack[1])
	if !ok {
		return statusBadArgument
	}
	return w.writeU32(stack[2], w.h.queues.register(name, w, r.id))
}

func (w *Worker) hostResolveSharedQueue(stack []uint64) status {
	vmID, ok1 := w.readString(stack[0], stack[1])
	name, ok2 := w.readString(stack[2], stack[3])
	if !ok1 || !ok2 {
		return statusBadArgument
	}
	if vmID != w.h.cfg.VMID {
		return statusNotFound
	}
	id, ok := w.h.queues.resolve(name)
	if !ok {
		return statusNotFound
	}
	return w.writeU32(stack[4], id)
}

func (w *Worker) hostEnqueueSharedQueue(stack []uint64) status {
	v, ok := w.read(stack[1], stack[2])
	if !ok {
		return statusBadArgument
	}
	id := uint32(stack[0])
	owner, rootID, st := w.h.queues.enqueue(id, append([]byte(nil), v...))
	if st != statusOK || owner == nil {
		return st
	}
	// The owner is woken asynchronously, as Envoy posts to its dispatcher;
	// the owner may be this very VM, whose lock is held now.
	w.h.wg.Add(1)
	go func() {
		defer w.h.wg.Done()
		owner.queueReady(rootID, id)
	}()
	return statusOK
}

func (w *Worker) hostDequeueSharedQueue(stack []uint64) status {
	v, st := w.h.queues.dequeue(uint32(stack[0]))
	if st != statusOK {
		return st
	}
	return w.returnBytes(v, stack[1], stack[2])
}

// --- metrics ----------------------------------------------------------------

func (w *Worker) hostDefineMetric(stack []uint64) status {
	name, ok := w.readString(stack[1], stack[2])
	if !ok || name == "" {
		return statusBadArgument
	}
	id, st := w.h.metrics.define(MetricType(uint32(stack[0])), name)
	if st != statusOK {
		return st
	}
	return w.writeU32(stack[3], id)
}

func (w *Worker) hostIncrementMetric(stack []uint64) status {
	return w.h.metrics.increment(uint32(stack[0]), int64(stack[1]))
}

func (w *Worker) hostRecordMetric(stack []uint64) status {
	return w.h.metrics.record(uint32(stack[0]), stack[1])
}

func (w *Worker) hostGetMetric(stack []uint64) status {
	v, st := w.h.metrics.get(uint32(stack[0]))
	if st != statusOK {
		return st
	}
	return w.writeU64(stack[1], v)
}
