package envoyemu

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Route is one entry of the inbound route table, matched by path prefix in
// order (first match wins), like Envoy's prefix routes.
type Route struct {
	Name   string
	Prefix string
	// ContextExtensions are sent to ext_authz (ExtAuthzPerRoute).
	ContextExtensions map[string]string
	// DisableExtAuthz skips the ext_authz call on this route.
	DisableExtAuthz bool
}

// Config configures an inbound sidecar.
type Config struct {
	// Name labels the workload in outcomes and logs.
	Name string
	// SVIDs and Bundles provide the listener's certificate and the trust
	// bundle that callers' certificates must chain to.
	SVIDs   x509svid.Source
	Bundles x509bundle.Source
	// Routes is the route table; a request matching none gets 404 (NR).
	Routes []Route
	// Filter, if set, runs before ext_authz.
	Filter Filter
	// Authz, if set, is called for every request on routes that do not
	// disable it. A nil Authz means no ext_authz filter in the chain.
	Authz authv3.AuthorizationClient
	// AuthzTimeout is ext_authz's grpc_service timeout (Envoy's default is
	// 200ms).
	AuthzTimeout time.Duration
	// IncludePeerCertificate sets attributes.source.certificate.
	IncludePeerCertificate bool
	// StatusOnError is the status sent when the authorization server cannot
	// be reached (Envoy's status_on_error, default 403).
	StatusOnError int
	// Upstream is the application's base URL (plain HTTP on loopback).
	Upstream *url.URL
	// OnOutcome, if set, is called once per request after the response.
	OnOutcome func(Outcome)
	Logger    *slog.Logger
}

// Outcome reports how the sidecar handled one request.
type Outcome struct {
	Time     time.Time
	Workload string
	Source   string // the caller's URI SAN
	Method   string
	Path     string
	Route    string
	// RequestID is the x-request-id the sidecar generated (the authz
	// decision log carries it).
	RequestID string
	Status    int
	// DeniedBy is empty when the request reached the upstream, otherwise
	// one of DeniedByFilter, DeniedByAuthz, DeniedAuthzError, DeniedNoRoute.
	DeniedBy string
	// Reason is x-meshguard-reason of a local reply, or the error.
	Reason  string
	Latency time.Duration
}

// Values of Outcome.DeniedBy.
const (
	DeniedByFilter   = "filter"
	DeniedByAuthz    = "authz"
	DeniedAuthzError = "authz-error"
	DeniedNoRoute    = "no-route"
	DeniedFilterErr  = "filter-error"
)

// Sidecar is an Envoy-emulating inbound listener for one workload.
type Sidecar struct {
	cfg      Config
	upstream *http.Client
	srv      *http.Server
	ln       net.Listener
	log      *slog.Logger
}

// New validates cfg and returns a sidecar; Serve starts it.
func New(cfg Config) (*Sidecar, error) {
	var errs []error
	if cfg.SVIDs == nil || cfg.Bundles == nil {
		errs = append(errs, errors.New("the SVID and bundle sources are required"))
	}
	if cfg.Upstream == nil {
		errs = append(errs, errors.New("an upstream is required"))
	}
	for i, r := range cfg.Routes {
		if r.Name == "" || !strings.HasPrefix(r.Prefix, "/") {
			errs = append(errs, fmt.Errorf("route %d: name and a prefix starting with / are required", i))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("envoyemu: %s: %w", cfg.Name, err)
	}
	if cfg.AuthzTimeout == 0 {
		cfg.AuthzTimeout = 200 * time.Millisecond
	}
	if cfg.StatusOnError == 0 {
		cfg.StatusOnError = http.StatusForbidden
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Sidecar{cfg: cfg, log: cfg.Logger.With("workload", cfg.Name)}
	s.upstream = &http.Client{
		Transport:     &http.Transport{MaxIdleConnsPerHost: 64, IdleConnTimeout: 30 * time.Second},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return s, nil
}

// Listen listens on addr (e.g. 127.0.0.1:0) and serves in the background.
func (s *Sidecar) Listen(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("envoyemu: %s: listen: %w", s.cfg.Name, err)
	}
	// Envoy's DownstreamTlsContext with require_client_certificate and a
	// validation context from SDS: any peer of the trust bundle is
	// accepted; authorization is the filters' job.
	tlsCfg := tlsconfig.MTLSServerConfig(s.cfg.SVIDs, s.cfg.Bundles, tlsconfig.AuthorizeAny())
	s.ln = tls.NewListener(ln, tlsCfg)
	s.srv = &http.Server{Handler: s, ReadHeaderTimeout: 5 * time.Second,
		ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelDebug)}
	go func() { _ = s.srv.Serve(s.ln) }()
	return nil
}

// Addr is the listener's address.
func (s *Sidecar) Addr() string { return s.ln.Addr().String() }

// Close stops the listener and in-flight requests after ctx ends.
func (s *Sidecar) Close(ctx context.Context) error {
	if s.srv == nil {
		return nil
	}
	return s.srv.Shutdown(ctx)
}

func (s *Sidecar) route(path string) (Route, bool) {
	p := path
	if i := strings.IndexAny(p, "?#"); i >= 0 {
		p = p[:i]
	}
	for _, r := range s.cfg.Routes {
		if strings.HasPrefix(p, r.Prefix) {
			return r, true
		}
	}
	return Route{}, false
}

// maxBody bounds the request and upstream response bodies the emulator
// buffers (Envoy buffers for filters that ask for the body).
const maxBody = 1 << 20

// ServeHTTP handles one request on the inbound listener.
func (s *Sidecar) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	out := Outcome{Time: start, Workload: s.cfg.Name, Method: r.Method, Path: r.RequestURI}
	defer func() {
		out.Latency = time.Since(start)
		if s.cfg.OnOutcome != nil {
			s.cfg.OnOutcome(out)
		}
	}()
	info := StreamInfo{SourceAddress: r.RemoteAddr, MTLS: r.TLS != nil && len(r.TLS.PeerCertificates) > 0}
	if la, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		info.DestinationAddress = la.String()
	}
	var peer *x509.Certificate
	if info.MTLS {
		peer = r.TLS.PeerCertificates[0]
		info.PeerURISAN = firstURISAN(peer)
		info.SNI = r.TLS.ServerName
	}
	if own, err := s.cfg.SVIDs.GetX509SVID(); err == nil {
		info.LocalURISAN = own.ID.String()
	}
	out.Source = info.PeerURISAN

	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil || len(body) > maxBody {
		out.Status, out.Reason = http.StatusRequestEntityTooLarge, "request body unreadable or too large"
		w.WriteHeader(out.Status)
		return
	}
	// The connection manager: Envoy generates x-request-id and sets
	// x-forwarded-proto.
	reqID := newRequestID()
	out.RequestID = reqID
	headers := requestHeaders(r, reqID)
	rt, ok := s.route(r.RequestURI)
	if !ok {
		out.Status, out.DeniedBy = http.StatusNotFound, DeniedNoRoute
		w.WriteHeader(http.StatusNotFound)
		return
	}
	info.RouteName, out.Route = rt.Name, rt.Name

	// The rest of the chain after the filter: ext_authz, then the router.
	var deniedBy, reason string
	next := func(ctx context.Context, hs [][2]string, body []byte) Reply {
		if s.cfg.Authz != nil && !rt.DisableExtAuthz {
			req := s.checkRequest(r, info, peer, hs, rt, reqID, len(body))
			actx, cancel := context.WithTimeout(ctx, s.cfg.AuthzTimeout)
			resp, err := s.cfg.Authz.Check(actx, req)
			cancel()
			if err != nil {
				// failure_mode_allow: false.
				deniedBy, reason = DeniedAuthzError, err.Error()
				return Reply{Status: s.cfg.StatusOnError}
			}
			if codes.Code(resp.GetStatus().GetCode()) != codes.OK {
				status, dh, dbody := deniedReply(resp)
				deniedBy, reason = DeniedByAuthz, headerValue(dh, "x-meshguard-reason")
				return Reply{Status: status, Headers: dh, Body: []byte(dbody)}
			}
			hs = applyOK(hs, resp.GetOkResponse())
		}
		return s.forward(ctx, info, peer, hs, body)
	}

	var reply Reply
	if s.cfg.Filter != nil {
		var local bool
		reply, local, err = s.cfg.Filter.Handle(r.Context(), info, headers, body, next)
		switch {
		case err != nil:
			// A filter that fails fails the request closed (Envoy's wasm
			// fail_open=false).
			s.log.Error("filter", "error", err)
			reply = Reply{Status: http.StatusServiceUnavailable}
			deniedBy, reason = DeniedFilterErr, err.Error()
		case local && deniedBy == "":
			deniedBy, reason = DeniedByFilter, headerValue(reply.Headers, "x-meshguard-reason")
		}
	} else {
		reply = next(r.Context(), headers, body)
	}
	out.Status, out.DeniedBy, out.Reason = reply.Status, deniedBy, reason
	writeReply(w, reply.Status, reply.Headers, reply.Body)
}

// forward is the router: it sends the request to the upstream application
// with x-forwarded-client-cert set and buffers the response.
func (s *Sidecar) forward(ctx context.Context, info StreamInfo, peer *x509.Certificate, hs [][2]string, body []byte) Reply {
	method, _ := pseudo(hs, ":method")
	path, _ := pseudo(hs, ":path")
	host, _ := pseudo(hs, ":authority")
	u := *s.cfg.Upstream
	ref, err := url.ParseRequestURI(path)
	if err != nil {
		return Reply{Status: http.StatusBadRequest}
	}
	u.Path, u.RawPath, u.RawQuery = ref.Path, ref.RawPath, ref.RawQuery
	req, err := http.NewRequestWithContext(ctx, method, u.String(), bytes.NewReader(body))
	if err != nil {
		return Reply{Status: http.StatusBadRequest}
	}
	req.Host = host
	for _, kv := range hs {
		if strings.HasPrefix(kv[0], ":") || kv[0] == "host" {
			continue
		}
		req.Header.Add(kv[0], kv[1])
	}
	if peer != nil {
		// Istio's forward_client_cert_details SANITIZE_SET.
		sum := sha256.Sum256(peer.Raw)
		req.Header.Set("x-forwarded-client-cert", fmt.Sprintf("By=%s;Hash=%s;URI=%s", info.LocalURISAN, hex.EncodeToString(sum[:]), info.PeerURISAN))
	}
	resp, err := s.upstream.Do(req)
	if err != nil {
		s.log.Warn("upstream error", "error", err)
		return Reply{Status: http.StatusServiceUnavailable}
	}
	defer resp.Body.Close()
	rbody, _ := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	var rh [][2]string
	for k, vs := range resp.Header {
		for _, v := range vs {
			rh = append(rh, [2]string{strings.ToLower(k), v})
		}
	}
	sort.SliceStable(rh, func(i, j int) bool { return rh[i][0] < rh[j][0] })
	return Reply{Status: resp.StatusCode, Headers: rh, Body: rbody}
}

func (s *Sidecar) checkRequest(r *http.Request, info StreamInfo, peer *x509.Certificate, headers [][2]string, rt Route, reqID string, bodyLen int) *authv3.CheckRequest {
	hm := make(map[string]string, len(headers))
	for _, kv := range headers {
		if v, ok := hm[kv[0]]; ok {
			hm[kv[0]] = v + "," + kv[1]
		} else {
			hm[kv[0]] = kv[1]
		}
	}
	src := &authv3.AttributeContext_Peer{Address: socketAddress(info.SourceAddress), Principal: principal(peer)}
	if peer != nil && s.cfg.IncludePeerCertificate {
		src.Certificate = pemURLEncoder.Replace(string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: peer.Raw})))
	}
	proto := "HTTP/1.1"
	if r.ProtoMajor == 2 {
		proto = "HTTP/2"
	}
	size := int64(bodyLen)
	var ext map[string]string
	if len(rt.ContextExtensions) > 0 {
		ext = make(map[string]string, len(rt.ContextExtensions))
		for k, v := range rt.ContextExtensions {
			ext[k] = v
		}
	}
	method, _ := pseudo(headers, ":method")
	path, _ := pseudo(headers, ":path")
	host, _ := pseudo(headers, ":authority")
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source:      src,
		Destination: &authv3.AttributeContext_Peer{Address: socketAddress(info.DestinationAddress), Principal: info.LocalURISAN},
		Request: &authv3.AttributeContext_Request{
			Time: timestamppb.Now(),
			Http: &authv3.AttributeContext_HttpRequest{
				Id: reqID, Method: method, Headers: hm, Path: path, Host: host,
				Scheme: "https", Size: size, Protocol: proto,
			},
		},
		ContextExtensions: ext,
	}}
}

// pemURLEncoder is how Envoy URL-encodes the PEM peer certificate for
// source.certificate and XFCC Cert=: it percent-encodes exactly newline,
// space, '+', '/' and '=' (so both path and query unescaping read it back).
var pemURLEncoder = strings.NewReplacer("\n", "%0A", " ", "%20", "+", "%2B", "/", "%2F", "=", "%3D")

// principal is what Envoy puts into source.principal: the first URI SAN,
// else the first DNS SAN, else the subject.
func principal(c *x509.Certificate) string {
	if c == nil {
		return ""
	}
	if u := firstURISAN(c); u != "" {
		return u
	}
	if len(c.DNSNames) > 0 {
		return c.DNSNames[0]
	}
	return c.Subject.String()
}

func firstURISAN(c *x509.Certificate) string {
	if len(c.URIs) == 0 {
		return ""
	}
	return c.URIs[0].String()
}

func socketAddress(hostport string) *corev3.Address {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return nil
	}
	p, _ := strconv.ParseUint(port, 10, 32)
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(p)},
	}}}
}

// requestHeaders lists the request headers as Envoy's header map: the
// pseudo-headers first, then every header lowercase, one entry per value.
func requestHeaders(r *http.Request, reqID string) [][2]string {
	hs := [][2]string{
		{":authority", r.Host},
		{":path", r.RequestURI},
		{":method", r.Method},
		{":scheme", "https"},
	}
	names := make([]string, 0, len(r.Header))
	for k := range r.Header {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		lk := strings.ToLower(k)
		if lk == "x-request-id" || lk == "x-forwarded-proto" || lk == "x-forwarded-client-cert" {
			continue // set by the connection manager below (edge sidecar)
		}
		for _, v := range r.Header[k] {
			hs = append(hs, [2]string{lk, v})
		}
	}
	hs = append(hs, [2]string{"x-forwarded-proto", "https"}, [2]string{"x-request-id", reqID})
	return hs
}

func pseudo(hs [][2]string, name string) (string, bool) {
	for _, kv := range hs {
		if kv[0] == name {
			return kv[1], true
		}
	}
	return "", false
}

func headerValue(hs [][2]string, name string) string {
	v, _ := pseudo(hs, name)
	return v
}

// deniedReply turns a non-OK CheckResponse into the local reply Envoy sends.
func deniedReply(resp *authv3.CheckResponse) (int, [][2]string, string) {
	status := http.StatusForbidden
	d := resp.GetDeniedResponse()
	if c := d.GetStatus().GetCode(); c != 0 {
		status = int(c)
	}
	var hs [][2]string
	for _, h := range d.GetHeaders() {
		hs = append(hs, [2]string{strings.ToLower(h.GetHeader().GetKey()), headerOptionValue(h)})
	}
	return status, hs, d.GetBody()
}

func headerOptionValue(h *corev3.HeaderValueOption) string {
	if v := h.GetHeader().GetValue(); v != "" {
		return v
	}
	return string(h.GetHeader().GetRawValue())
}

// applyOK applies an OkHttpResponse's header mutations: headers_to_remove
// (pseudo-headers and Host cannot be removed), then each header by its
// append rule (the deprecated append flag when set, otherwise append_action;
// an unset flag in this message means overwrite).
func applyOK(hs [][2]string, ok *authv3.OkHttpResponse) [][2]string {
	if ok == nil {
		return hs
	}
	for _, name := range ok.GetHeadersToRemove() {
		name = strings.ToLower(name)
		if strings.HasPrefix(name, ":") || name == "host" {
			continue
		}
		hs = removeHeader(hs, name)
	}
	for _, h := range ok.GetHeaders() {
		name, val := strings.ToLower(h.GetHeader().GetKey()), headerOptionValue(h)
		if name == "" {
			continue
		}
		_, exists := pseudo(hs, name)
		action := h.GetAppendAction()
		//lint:ignore SA1019 Envoy still honours the deprecated append field; so does this emulation
		if appendField := h.GetAppend(); appendField != nil {
			if appendField.GetValue() {
				action = corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD
			} else {
				action = corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD
			}
		}
		switch action {
		case corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD:
			hs = append(hs, [2]string{name, val})
		case corev3.HeaderValueOption_ADD_IF_ABSENT:
			if !exists {
				hs = append(hs, [2]string{name, val})
			}
		case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD:
			hs = append(removeHeader(hs, name), [2]string{name, val})
		case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS:
			if exists {
				hs = append(removeHeader(hs, name), [2]string{name, val})
			}
		}
	}
	return hs
}

func removeHeader(hs [][2]string, name string) [][2]string {
	out := hs[:0]
	for _, kv := range hs {
		if kv[0] != name {
			out = append(out, kv)
		}
	}
	return out
}

func writeReply(w http.ResponseWriter, status int, hs [][2]string, body []byte) {
	for _, kv := range hs {
		if strings.HasPrefix(kv[0], ":") {
			continue
		}
		w.Header().Add(kv[0], kv[1])
	}
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

func newRequestID() string {
	var b [16]byte
	_, _ = io.ReadFull(rand.Reader, b[:])
	b[6] = (b[6] & 0x0f) | 0x40
	b[8] = (b[8] & 0x3f) | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}
