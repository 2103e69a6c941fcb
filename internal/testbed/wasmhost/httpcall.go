package wasmhost

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"
)

// calloutResult is what proxy_on_http_call_response exposes through the
// call response header, body and trailer accessors.
type calloutResult struct {
	headers, trailers headerMap
	body              []byte
}

type pendingCall struct {
	id     uint32
	root   *rootContext
	stream *stream // nil for a call dispatched by a root context
}

// hostHTTPCall is proxy_http_call: the call runs on its own goroutine and its
// answer is delivered later with proxy_on_http_call_response, as Envoy's
// async client does.
func (w *Worker) hostHTTPCall(stack []uint64) status {
	cluster, ok := w.readString(stack[0], stack[1])
	if !ok {
		return statusBadArgument
	}
	hb, ok1 := w.read(stack[2], stack[3])
	body, ok2 := w.read(stack[4], stack[5])
	tb, ok3 := w.read(stack[6], stack[7])
	if !ok1 || !ok2 || !ok3 {
		return statusBadArgument
	}
	headers, err := decodePairs(hb)
	if err != nil {
		return statusBadArgument
	}
	trailers, err := decodePairs(tb)
	if err != nil {
		return statusBadArgument
	}
	// Envoy refuses a call without these, and a call to an unknown cluster.
	hm := headerMap(headers)
	for _, k := range [...]string{":method", ":path", ":authority"} {
		if v, ok := hm.get(k); !ok || v == "" {
			return statusBadArgument
		}
	}
	if int32(uint32(stack[8])) < 0 {
		return statusBadArgument
	}
	base, known := w.h.cfg.Clusters[cluster]
	if !known && w.h.cfg.HTTPCall == nil {
		return statusBadArgument
	}
	r := w.rootOf(w.effective)
	if r == nil {
		return statusBadArgument
	}
	w.nextCall++
	call := &pendingCall{id: w.nextCall, root: r, stream: w.streams[w.effective]}
	if st := w.writeU32(stack[9], call.id); st != statusOK {
		return st
	}
	req := CalloutRequest{
		Cluster:  cluster,
		Headers:  hm.export(),
		Body:     append([]byte(nil), body...),
		Trailers: headerMap(trailers).export(),
		Timeout:  time.Duration(uint32(stack[8])) * time.Millisecond,
	}
	r.refs++
	if call.stream != nil {
		call.stream.pending++
	}
	w.h.wg.Add(1)
	go func() {
		defer w.h.wg.Done()
		ctx, cancel := w.h.ctx, context.CancelFunc(func() {})
		if req.Timeout > 0 {
			ctx, cancel = context.WithTimeout(ctx, req.Timeout)
		}
		var (
			resp CalloutResponse
			err  error
		)
		if known {
			resp, err = w.h.forward(ctx, base, req)
		} else {
			resp, err = w.h.cfg.HTTPCall(ctx, req)
		}
		cancel()
		w.deliverCallout(call, resp, err)
	}()
	return statusOK
}

// deliverCallout calls proxy_on_http_call_response on the root context that
// dispatched the call. A failed call is delivered, as in Envoy, with no
// headers and no body.
func (w *Worker) deliverCallout(call *pendingCall, resp CalloutResponse, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	call.root.refs--
	defer func() {
		if s := call.stream; s != nil {
			s.pending--
			s.poke()
		}
		if w.usable() == nil {
			w.maybeDeleteRoot(call.root)
		}
	}()
	if w.usable() != nil || call.root.deleted {
		return
	}
	res := &calloutResult{}
	if err != nil {
		w.h.log.Debug("wasm http call failed", "worker", w.idx, "callout_id", call.id, "error", err)
	} else {
		res.headers = make(headerMap, 0, len(resp.Headers)+1)
		res.headers = append(res.headers, pair{k: ":status", v: strconv.Itoa(resp.Status)})
		res.headers = appendHeaders(res.headers, resp.Headers)
		res.body = resp.Body
		res.trailers = newHeaderMap(resp.Trailers)
	}
	w.callout = res
	w.stack[0], w.stack[1] = uint64(call.root.id), uint64(call.id)
	w.stack[2], w.stack[3], w.stack[4] = uint64(len(res.headers)), uint64(len(res.body)), uint64(len(res.trailers))
	_, _ = w.invoke(w.fn.httpCallResponse, "proxy_on_http_call_response", call.root.id, 0)
	w.callout = nil
}

// forward performs a callout with net/http against the cluster's base URL.
func (h *Host) forward(ctx context.Context, base string, req CalloutRequest) (CalloutResponse, error) {
	hm := headerMap(newHeaderMap(req.Headers))
	method, _ := hm.get(":method")
	path, _ := hm.get(":path")
	authority, _ := hm.get(":authority")
	var body io.Reader
	if len(req.Body) > 0 {
		body = bytes.NewReader(req.Body)
	}
	hreq, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(base, "/")+path, body)
	if err != nil {
		return CalloutResponse{}, fmt.Errorf("callout to %s: %w", req.Cluster, err)
	}
	hreq.Host = authority
	for _, p := range hm {
		if !strings.HasPrefix(p.k, ":") {
			hreq.Header.Add(p.k, p.v)
		}
	}
	for _, t := range req.Trailers {
		if hreq.Trailer == nil {
			hreq.Trailer = http.Header{}
		}
		hreq.Trailer.Add(t[0], t[1])
	}
	resp, err := h.client.Do(hreq)
	if err != nil {
		return CalloutResponse{}, fmt.Errorf("callout to %s: %w", req.Cluster, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, h.cfg.MaxCalloutBodyBytes+1))
	if err != nil {
		return CalloutResponse{}, fmt.Errorf("callout to %s: read body: %w", req.Cluster, err)
	}
	if int64(len(b)) > h.cfg.MaxCalloutBodyBytes {
		return CalloutResponse{}, fmt.Errorf("callout to %s: response body larger than %d bytes", req.Cluster, h.cfg.MaxCalloutBodyBytes)
	}
	return CalloutResponse{
		Status:   resp.StatusCode,
		Headers:  flatten(resp.Header),
		Body:     b,
		Trailers: flatten(resp.Trailer),
	}, nil
}

// flatten turns an http.Header into lower-cased pairs in a stable order.
func flatten(h http.Header) [][2]string {
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var out [][2]string
	for _, k := range keys {
		lk := strings.ToLower(k)
		for _, v := range h[k] {
			out = append(out, [2]string{lk, v})
		}
	}
	return out
}
