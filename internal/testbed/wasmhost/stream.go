package wasmhost

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/tetratelabs/wazero/api"
)

// Request is one HTTP request as Envoy's HTTP connection manager hands it to
// the filter chain.
type Request struct {
	// Headers, including the pseudo-headers :method, :path, :authority,
	// :scheme. Keys are lower-cased by the host.
	Headers  [][2]string
	Body     []byte
	Trailers [][2]string
	// Properties are this stream's attributes (source.address,
	// connection.mtls, connection.uri_san_peer_certificate, xds.route_name,
	// ...); they override Config.Properties. request.path, request.method,
	// request.headers and the like are derived from Headers unless set here.
	Properties Properties
}

// UpstreamRequest is what the next filter (ext_authz, the router) receives
// after the filter ran: the headers, body and trailers as the filter left
// them.
type UpstreamRequest struct {
	Headers  [][2]string
	Body     []byte
	Trailers [][2]string
}

// Response is an HTTP response.
type Response struct {
	Status   int
	Headers  [][2]string // without :status
	Body     []byte
	Trailers [][2]string
}

// LocalResponse is a response the filter sent itself
// (proxy_send_local_response).
type LocalResponse struct {
	Status     int
	Details    string
	Headers    [][2]string
	Body       []byte
	GRPCStatus int32 // -1 when not gRPC
}

// Upstream answers a request that the filter let through. A nil Upstream
// answers 200 with no body.
type Upstream func(ctx context.Context, req UpstreamRequest) Response

// Result is what happened to a request.
type Result struct {
	// Local is the filter's own response, if it sent one; the upstream was
	// then not called (in the request phase) or its response was replaced
	// (in the response phase).
	Local *LocalResponse
	// Forwarded reports whether the request reached the upstream, and
	// Upstream what it received.
	Forwarded bool
	Upstream  UpstreamRequest
	// Response is what the client received: the upstream's (or the local)
	// response after the filter's response callbacks.
	Response Response
	// Reset reports that the filter closed the stream (proxy_close_stream);
	// Response is then empty.
	Reset bool
}

// ErrStreamStalled is returned when the filter paused a stream and nothing
// pending (no HTTP callout of the stream) can resume it. Envoy would hold
// the stream until its timeout.
var ErrStreamStalled = errors.New("wasm host: stream paused with nothing to resume it")

// stream is one HTTP stream context.
type stream struct {
	id     uint32
	root   *rootContext
	start  time.Time
	props  Properties // the request's; read only
	setP   Properties // set by the guest with proxy_set_property
	closed bool       // on_delete done

	reqHeaders, reqTrailers, respHeaders, respTrailers headerMap
	reqBody, respBody                                  []byte

	reqPaused, respPaused bool
	// Envoy exposes each map and body to the filter only during its own
	// callback and, if the filter paused there, until it continues the
	// stream; proxy_on_log sees the headers read-only.
	live      [6]bool // indexed by callback
	logPhase  bool
	local     *LocalResponse
	lateLocal bool // local was sent in the response phase
	reset     bool
	pending   int // callouts in flight dispatched by this stream
	wake      chan struct{}
}

func (s *stream) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// HandleRequest runs req through the filter on this VM, the way Envoy runs an
// HTTP stream through one filter: proxy_on_context_create, request headers,
// body and trailers; if the filter lets the request through (Continue, or
// proxy_continue_stream after a pause), upstream is called with the request as
// the filter left it; then response headers, body and trailers; finally
// proxy_on_log, proxy_on_done and proxy_on_delete. A local response sent in
// the request phase goes through the response callbacks as Envoy's local
// replies go through the encoder filters. The VM is locked only during guest
// calls, so streams on one VM interleave while they wait on callouts.
func (w *Worker) HandleRequest(ctx context.Context, req Request, upstream Upstream) (Result, error) {
	var res Result
	s, err := w.openStream(req)
	if err != nil {
		return res, err
	}
	defer w.closeStream(s)

	if err := w.requestPhase(ctx, s); err != nil {
		return res, err
	}
	w.mu.Lock()
	local, reset := s.local, s.reset
	if local == nil && !reset {
		res.Forwarded = true
		res.Upstream = UpstreamRequest{Headers: s.reqHeaders.export(), Body: s.reqBody, Trailers: s.reqTrailers.export()}
	}
	w.mu.Unlock()
	if reset {
		res.Reset = true
		return res, nil
	}

	var resp Response
	if local == nil {
		if upstream != nil {
			resp = upstream(ctx, res.Upstream)
		} else {
			resp = Response{Status: 200}
		}
		if resp.Status == 0 {
			resp.Status = 200
		}
	} else {
		// Envoy's local reply: content-length, and text/plain for a body,
		// then the filter's headers.
		resp = Response{Status: local.Status, Body: local.Body}
		if len(local.Body) > 0 {
			resp.Headers = append(resp.Headers, [2]string{"content-length", strconv.Itoa(len(local.Body))})
			if !hasHeader(local.Headers, "content-type") {
				resp.Headers = append(resp.Headers, [2]string{"content-type", "text/plain"})
			}
		}
		resp.Headers = append(resp.Headers, local.Headers...)
	}
	if err := w.responsePhase(ctx, s, resp); err != nil {
		return res, err
	}

	w.mu.Lock()
	defer w.mu.Unlock()
	res.Local, res.Reset = s.local, s.reset
	if s.reset {
		return res, nil
	}
	res.Response = Response{Body: s.respBody, Trailers: s.respTrailers.export()}
	for _, p := range s.respHeaders {
		if p.k == ":status" {
			res.Response.Status, _ = strconv.Atoi(p.v)
			continue
		}
		res.Response.Headers = append(res.Response.Headers, [2]string{p.k, p.v})
	}
	if s.local != nil && s.local != local {
		// A local response sent in the response phase replaces the
		// upstream's response; it is not run through the callbacks again.
		res.Response = Response{Status: s.local.Status, Headers: s.local.Headers, Body: s.local.Body}
	}
	return res, nil
}

func hasHeader(h [][2]string, key string) bool {
	for _, kv := range h {
		if kv[0] == key {
			return true
		}
	}
	return false
}

func (w *Worker) openStream(req Request) (*stream, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.usable(); err != nil {
		return nil, err
	}
	s := &stream{
		id:          w.newContextID(),
		root:        w.root,
		start:       w.h.now(),
		props:       req.Properties,
		reqHeaders:  newHeaderMap(req.Headers),
		reqTrailers: newHeaderMap(req.Trailers),
		reqBody:     append([]byte(nil), req.Body...),
		wake:        make(chan struct{}, 1),
	}
	s.root.refs++
	w.streams[s.id] = s
	w.stack[0], w.stack[1] = uint64(s.id), uint64(s.root.id)
	if _, err := w.invoke(w.fn.contextCreate, "proxy_on_context_create", s.id, 0); err != nil {
		delete(w.streams, s.id)
		s.root.refs--
		return nil, err
	}
	return s, nil
}

// closeStream ends the stream as Envoy does when it is destroyed.
func (w *Worker) closeStream(s *stream) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.usable() == nil {
		s.live = [6]bool{}
		s.logPhase = true
		w.stack[0] = uint64(s.id)
		_, _ = w.invoke(w.fn.log, "proxy_on_log", s.id, 0)
		s.logPhase = false
		w.stack[0] = uint64(s.id)
		_, _ = w.invoke(w.fn.done, "proxy_on_done", s.id, 1)
		w.stack[0] = uint64(s.id)
		_, _ = w.invoke(w.fn.delete, "proxy_on_delete", s.id, 0)
	}
	s.closed = true
	delete(w.streams, s.id)
	s.root.refs--
	if w.usable() == nil {
		w.maybeDeleteRoot(s.root)
	}
}

type callback int

const (
	cbRequestHeaders callback = iota
	cbRequestBody
	cbRequestTrailers
	cbResponseHeaders
	cbResponseBody
	cbResponseTrailers
)

func boolArg(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}

// phaseCall runs one stream callback under the lock and records a pause. It
// reports whether the stream goes on: no new local response, no reset.
func (w *Worker) phaseCall(s *stream, cb callback) (bool, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	before := s.local
	var (
		fn   api.Function
		name string
		a, b uint64
	)
	switch cb {
	case cbRequestHeaders:
		fn, name = w.fn.requestHeaders, "proxy_on_request_headers"
		a, b = uint64(len(s.reqHeaders)), boolArg(len(s.reqBody) == 0 && len(s.reqTrailers) == 0)
	case cbRequestBody:
		if len(s.reqBody) == 0 {
			return true, nil
		}
		fn, name = w.fn.requestBody, "proxy_on_request_body"
		a, b = uint64(len(s.reqBody)), boolArg(len(s.reqTrailers) == 0)
	case cbRequestTrailers:
		if len(s.reqTrailers) == 0 {
			return true, nil
		}
		fn, name = w.fn.requestTrailers, "proxy_on_request_trailers"
		a = uint64(len(s.reqTrailers))
	case cbResponseHeaders:
		fn, name = w.fn.responseHeaders, "proxy_on_response_headers"
		a, b = uint64(len(s.respHeaders)), boolArg(len(s.respBody) == 0 && len(s.respTrailers) == 0)
	case cbResponseBody:
		if len(s.respBody) == 0 {
			return true, nil
		}
		fn, name = w.fn.responseBody, "proxy_on_response_body"
		a, b = uint64(len(s.respBody)), boolArg(len(s.respTrailers) == 0)
	case cbResponseTrailers:
		if len(s.respTrailers) == 0 {
			return true, nil
		}
		fn, name = w.fn.responseTrailers, "proxy_on_response_trailers"
		a = uint64(len(s.respTrailers))
	}
	w.stack[0], w.stack[1], w.stack[2] = uint64(s.id), a, b
	s.live[cb] = true
	action, err := w.invoke(fn, name, s.id, actionContinue)
	if err != nil {
		return false, err
	}
	if uint32(action) != actionPause {
		s.live[cb] = false
	}
	if uint32(action) == actionPause {
		if cb >= cbResponseHeaders {
			s.respPaused = true
		} else {
			s.reqPaused = true
		}
	}
	return s.local == before && !s.reset, nil
}

func (w *Worker) requestPhase(ctx context.Context, s *stream) error {
	ok, err := w.phaseCall(s, cbRequestHeaders)
	if err != nil || !ok {
		return err
	}
	// As in Envoy, a filter that paused on headers still sees the body and
	// trailers; the request is held until it resumes.
	if ok, err = w.phaseCall(s, cbRequestBody); err != nil || !ok {
		return err
	}
	if ok, err = w.phaseCall(s, cbRequestTrailers); err != nil || !ok {
		return err
	}
	return w.awaitResume(ctx, s, false)
}

func (w *Worker) responsePhase(ctx context.Context, s *stream, resp Response) error {
	w.mu.Lock()
	s.respHeaders = make(headerMap, 0, len(resp.Headers)+4)
	s.respHeaders = append(s.respHeaders, pair{k: ":status", v: strconv.Itoa(resp.Status)})
	s.respHeaders = appendHeaders(s.respHeaders, resp.Headers)
	s.respBody = append([]byte(nil), resp.Body...)
	s.respTrailers = newHeaderMap(resp.Trailers)
	w.mu.Unlock()

	ok, err := w.phaseCall(s, cbResponseHeaders)
	if err != nil || !ok {
		return err
	}
	if ok, err = w.phaseCall(s, cbResponseBody); err != nil || !ok {
		return err
	}
	if ok, err = w.phaseCall(s, cbResponseTrailers); err != nil || !ok {
		return err
	}
	return w.awaitResume(ctx, s, true)
}

// awaitResume waits while the filter holds the stream paused, until it
// continues it, answers it or resets it.
func (w *Worker) awaitResume(ctx context.Context, s *stream, response bool) error {
	for {
		w.mu.Lock()
		paused := s.reqPaused
		if response {
			paused = s.respPaused
		}
		stop := s.reset || (!response && s.local != nil) || (response && s.lateLocal)
		pending := s.pending
		err := w.usable()
		w.mu.Unlock()
		switch {
		case err != nil:
			return err
		case !paused || stop:
			return nil
		case pending == 0:
			return fmt.Errorf("%w (context %d)", ErrStreamStalled, s.id)
		}
		select {
		case <-s.wake:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
