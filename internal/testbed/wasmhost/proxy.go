package wasmhost

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
)

// ProxyConfig configures Host.Handler.
type ProxyConfig struct {
	// Upstream is where allowed requests go: its scheme and host replace the
	// request's, the request's path and query are kept. Required unless
	// UpstreamFunc is set.
	Upstream *url.URL
	// UpstreamFunc answers allowed requests instead of Upstream.
	UpstreamFunc Upstream
	// Transport sends requests to Upstream. Default http.DefaultTransport.
	Transport http.RoundTripper
	// Properties adds attributes to each request's (xds.route_name,
	// xds.cluster_name, ...); they override the ones derived from the
	// connection.
	Properties func(*http.Request) Properties
	// MaxBodyBytes caps request and upstream response bodies. Default 1 MiB;
	// a larger request body is answered 413.
	MaxBodyBytes int64
}

// Handler returns an http.Handler that stands in for an Envoy sidecar: it
// runs each request through the filter on the next VM, forwards what the
// filter lets through to the upstream, runs the response back through the
// filter and writes what the filter left. Attributes come from the
// connection as Envoy computes them (see ConnectionProperties). A failed VM
// or a stalled stream is answered 503 (fail closed); a stream the filter
// closes is aborted.
func (h *Host) Handler(cfg ProxyConfig) http.Handler {
	if cfg.Transport == nil {
		cfg.Transport = http.DefaultTransport
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = 1 << 20
	}
	return &proxy{h: h, cfg: cfg}
}

type proxy struct {
	h   *Host
	cfg ProxyConfig
}

func (p *proxy) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, p.cfg.MaxBodyBytes+1))
	if err != nil {
		http.Error(rw, "read request body", http.StatusBadRequest)
		return
	}
	if int64(len(body)) > p.cfg.MaxBodyBytes {
		http.Error(rw, "request body too large", http.StatusRequestEntityTooLarge)
		return
	}
	req := Request{Headers: RequestHeaders(r), Body: body, Properties: ConnectionProperties(r)}
	for _, k := range slices.Sorted(maps.Keys(r.Trailer)) {
		for _, v := range r.Trailer[k] {
			req.Trailers = append(req.Trailers, [2]string{strings.ToLower(k), v})
		}
	}
	if p.cfg.Properties != nil {
		for k, v := range p.cfg.Properties(r) {
			req.Properties[k] = v
		}
	}
	upstream := p.cfg.UpstreamFunc
	if upstream == nil {
		upstream = p.forward
	}
	res, err := p.h.HandleRequest(r.Context(), req, upstream)
	if err != nil {
		p.h.log.Error("wasm filter failed; request refused", "error", err)
		http.Error(rw, "wasm filter failed", http.StatusServiceUnavailable)
		return
	}
	if res.Reset {
		panic(http.ErrAbortHandler) // resets the client's stream
	}
	out := res.Response
	hdr := rw.Header()
	for _, kv := range out.Headers {
		if strings.HasPrefix(kv[0], ":") || kv[0] == "content-length" || kv[0] == "transfer-encoding" {
			continue
		}
		hdr.Add(kv[0], kv[1])
	}
	for _, kv := range out.Trailers {
		hdr.Add(http.TrailerPrefix+kv[0], kv[1])
	}
	hdr.Set("Content-Length", strconv.Itoa(len(out.Body)))
	rw.WriteHeader(out.Status)
	_, _ = rw.Write(out.Body)
}

// forward sends the request as the filter left it to cfg.Upstream.
func (p *proxy) forward(ctx context.Context, up UpstreamRequest) Response {
	hm := headerMap(newHeaderMap(up.Headers))
	method, _ := hm.get(":method")
	path, _ := hm.get(":path")
	authority, _ := hm.get(":authority")
	if p.cfg.Upstream == nil {
		return Response{Status: http.StatusServiceUnavailable, Body: []byte("no upstream")}
	}
	u := *p.cfg.Upstream
	target := strings.TrimRight(u.String(), "/") + path
	req, err := http.NewRequestWithContext(ctx, method, target, bytes.NewReader(up.Body))
	if err != nil {
		return Response{Status: http.StatusBadGateway, Body: []byte("bad upstream request")}
	}
	req.Host = authority
	for _, kv := range hm {
		if !strings.HasPrefix(kv.k, ":") && kv.k != "content-length" && kv.k != "host" {
			req.Header.Add(kv.k, kv.v)
		}
	}
	resp, err := p.cfg.Transport.RoundTrip(req)
	if err != nil {
		p.h.log.Debug("upstream request failed", slog.String("error", err.Error()))
		return Response{Status: http.StatusServiceUnavailable, Body: []byte("upstream connect error")}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, p.cfg.MaxBodyBytes+1))
	if err != nil || int64(len(b)) > p.cfg.MaxBodyBytes {
		return Response{Status: http.StatusBadGateway, Body: []byte("upstream response unreadable or too large")}
	}
	out := Response{Status: resp.StatusCode, Body: b}
	for _, k := range slices.Sorted(maps.Keys(resp.Header)) {
		if strings.EqualFold(k, "Content-Length") {
			continue
		}
		for _, v := range resp.Header[k] {
			out.Headers = append(out.Headers, [2]string{strings.ToLower(k), v})
		}
	}
	out.Trailers = flatten(resp.Trailer)
	return out
}

// RequestHeaders turns r into the header map Envoy hands a filter:
// :method, :path, :authority, :scheme, then the request's headers
// lower-cased.
func RequestHeaders(r *http.Request) [][2]string {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	path := r.RequestURI
	if path == "" || r.Method == http.MethodConnect {
		path = r.URL.RequestURI()
	}
	out := [][2]string{{":method", r.Method}, {":path", path}, {":authority", r.Host}, {":scheme", scheme}}
	for _, k := range slices.Sorted(maps.Keys(r.Header)) {
		lk := strings.ToLower(k)
		for _, v := range r.Header[k] {
			out = append(out, [2]string{lk, v})
		}
	}
	return out
}

// ConnectionProperties derives the connection attributes Envoy exposes from
// r: source.address, destination.address, request.protocol and, over TLS,
// connection.tls_version, connection.requested_server_name,
// connection.mtls (a verified client certificate was presented) and
// connection.uri_san_peer_certificate / connection.dns_san_peer_certificate
// / connection.subject_peer_certificate from the client's leaf certificate.
func ConnectionProperties(r *http.Request) Properties {
	p := Properties{}
	p.SetString("source.address", r.RemoteAddr)
	if a, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		p.SetString("destination.address", a.String())
		if tcp, ok := a.(*net.TCPAddr); ok {
			p.SetInt("destination.port", int64(tcp.Port))
		}
	}
	if _, port, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		if n, err := strconv.Atoi(port); err == nil {
			p.SetInt("source.port", int64(n))
		}
	}
	p.SetString("request.protocol", r.Proto)
	cs := r.TLS
	if cs == nil {
		p.SetBool("connection.mtls", false)
		return p
	}
	p.SetString("connection.tls_version", tlsVersion(cs.Version))
	p.SetString("connection.requested_server_name", cs.ServerName)
	verified := len(cs.VerifiedChains) > 0 && len(cs.PeerCertificates) > 0
	p.SetBool("connection.mtls", verified)
	if verified {
		leaf := cs.PeerCertificates[0]
		if len(leaf.URIs) > 0 {
			p.SetString("connection.uri_san_peer_certificate", leaf.URIs[0].String())
		}
		if len(leaf.DNSNames) > 0 {
			p.SetString("connection.dns_san_peer_certificate", leaf.DNSNames[0])
		}
		p.SetString("connection.subject_peer_certificate", leaf.Subject.String())
	}
	return p
}

func tlsVersion(v uint16) string {
	switch v {
	case tls.VersionTLS10:
		return "TLSv1"
	case tls.VersionTLS11:
		return "TLSv1.1"
	case tls.VersionTLS12:
		return "TLSv1.2"
	case tls.VersionTLS13:
		return "TLSv1.3"
	}
	return ""
}
