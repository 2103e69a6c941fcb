package envoyemu

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/meshguard/meshguard/internal/testbed/wasmhost"
)

// maxBody bounds the request and upstream response bodies the emulator
// buffers (Envoy buffers for filters that ask for the body).
const maxBody = 1 << 20

// listenerHandler serves one listener with the proxy's current dataplane.
type listenerHandler struct {
	p    *Proxy
	name string
}

// stream is one request on its way through a listener.
type stream struct {
	p        *Proxy
	dp       *dataplane
	l        *listenerCfg
	info     StreamInfo
	peer     *x509.Certificate
	reqID    string
	route    *routeCfg
	authz    *authzPerRoute // the route's ext_authz settings, merged
	proto    string
	scheme   string
	deniedBy string
	reason   string
}

// ServeHTTP runs a request through the connection manager, the route
// table and the HTTP filter chain, as Envoy does.
func (h *listenerHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p := h.p
	dp := p.state.Load()
	l := dp.listeners[h.name]
	start := time.Now()
	out := Outcome{Time: start, Workload: p.cfg.Name, Listener: h.name, Method: r.Method, Path: r.RequestURI}
	defer func() {
		out.Latency = time.Since(start)
		if p.cfg.OnOutcome != nil {
			p.cfg.OnOutcome(out)
		}
	}()
	if l == nil {
		// The listener is draining: Envoy closes the connection.
		out.Status, out.DeniedBy = http.StatusServiceUnavailable, DeniedByProxy
		w.WriteHeader(out.Status)
		return
	}
	s := &stream{p: p, dp: dp, l: l, scheme: "http", proto: "HTTP/1.1"}
	if r.ProtoMajor == 2 {
		s.proto = "HTTP/2"
	}
	s.info = StreamInfo{SourceAddress: r.RemoteAddr, Direction: int64(l.direction)}
	if la, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		s.info.DestinationAddress = la.String()
	}
	if r.TLS != nil {
		s.scheme = "https"
		if len(r.TLS.PeerCertificates) > 0 {
			s.peer = r.TLS.PeerCertificates[0]
			s.info.MTLS = true
			s.info.PeerURISAN = firstURISAN(s.peer)
		}
		s.info.SNI = r.TLS.ServerName
		if own, err := p.cfg.SVIDs.GetX509SVID(); err == nil {
			s.info.LocalURISAN = own.ID.String()
		}
	}
	out.Source = s.info.PeerURISAN

	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil || len(body) > maxBody {
		out.Status, out.DeniedBy, out.Reason = http.StatusRequestEntityTooLarge, DeniedByProxy, "request body unreadable or too large"
		w.WriteHeader(out.Status)
		return
	}
	headers, reply := s.connectionManager(r)
	out.RequestID = s.reqID
	if reply != nil {
		out.Status, out.DeniedBy, out.Reason = reply.Status, DeniedByProxy, "path"
		writeReply(w, reply.Status, reply.Headers, reply.Body)
		return
	}
	path, _ := pseudo(headers, ":path")
	host, _ := pseudo(headers, ":authority")
	if !s.matchRoute(host, path) {
		out.Status, out.DeniedBy = http.StatusNotFound, DeniedNoRoute
		w.WriteHeader(http.StatusNotFound)
		return
	}
	s.info.RouteName, out.Route = s.route.name, s.route.name
	s.info.ClusterName = s.route.cluster

	res := s.next(0)(r.Context(), headers, body)
	out.Status, out.DeniedBy, out.Reason = res.Status, s.deniedBy, s.reason
	writeReply(w, res.Status, res.Headers, res.Body)
}

// connectionManager builds Envoy's request header map and applies what the
// connection manager does before routing: x-request-id, x-forwarded-proto,
// x-forwarded-for (use_remote_address), x-forwarded-client-cert
// (forward_client_cert_details) and the path settings. A non-nil reply
// answers the request (a redirect or a rejection of the path).
func (s *stream) connectionManager(r *http.Request) ([][2]string, *Reply) {
	cm := s.l.hcm
	s.reqID = newRequestID()
	path, action := adjustPath(cm, r.RequestURI)
	switch action {
	case pathRedirect:
		return nil, &Reply{Status: http.StatusTemporaryRedirect, Headers: [][2]string{{"location", path}}}
	case pathReject:
		return nil, &Reply{Status: http.StatusBadRequest}
	}
	hs := [][2]string{
		{":authority", r.Host},
		{":path", path},
		{":method", r.Method},
		{":scheme", s.scheme},
	}
	names := make([]string, 0, len(r.Header))
	for k := range r.Header {
		names = append(names, k)
	}
	sort.Strings(names)
	var xff string
	var xfcc []string
	for _, k := range names {
		lk := strings.ToLower(k)
		switch lk {
		case "x-request-id", "x-forwarded-proto":
			continue // set below (an edge proxy)
		case "x-forwarded-for":
			xff = strings.Join(r.Header[k], ",")
			continue
		case "x-forwarded-client-cert":
			xfcc = r.Header[k]
			continue
		}
		for _, v := range r.Header[k] {
			hs = append(hs, [2]string{lk, v})
		}
	}
	hs = append(hs, [2]string{"x-forwarded-proto", s.scheme}, [2]string{"x-request-id", s.reqID})
	if cm.useRemoteAddress {
		if ip, _, err := net.SplitHostPort(s.info.SourceAddress); err == nil {
			if xff != "" {
				xff += ","
			}
			xff += ip
		}
	}
	if xff != "" {
		hs = append(hs, [2]string{"x-forwarded-for", xff})
	}
	for _, v := range s.forwardClientCert(xfcc) {
		hs = append(hs, [2]string{"x-forwarded-client-cert", v})
	}
	return hs, nil
}

// forwardClientCert is forward_client_cert_details with
// set_current_client_cert_details: the XFCC values the request continues
// with.
func (s *stream) forwardClientCert(client []string) []string {
	cm := s.l.hcm
	var own string
	if s.peer != nil {
		sum := sha256.Sum256(s.peer.Raw)
		parts := []string{"By=" + s.info.LocalURISAN, "Hash=" + hex.EncodeToString(sum[:])}
		d := cm.xfccDetails
		if d.GetCert() {
			parts = append(parts, "Cert=\""+pemURLEncoder.Replace(string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.peer.Raw})))+"\"")
		}
		if d.GetSubject().GetValue() {
			parts = append(parts, "Subject=\""+s.peer.Subject.String()+"\"")
		}
		if d.GetUri() && s.info.PeerURISAN != "" {
			parts = append(parts, "URI="+s.info.PeerURISAN)
		}
		if d.GetDns() {
			for _, n := range s.peer.DNSNames {
				parts = append(parts, "DNS="+n)
			}
		}
		own = strings.Join(parts, ";")
	}
	switch cm.xfcc {
	case hcmv3.HttpConnectionManager_FORWARD_ONLY, hcmv3.HttpConnectionManager_ALWAYS_FORWARD_ONLY:
		if s.peer == nil && cm.xfcc == hcmv3.HttpConnectionManager_FORWARD_ONLY {
			return nil
		}
		return client
	case hcmv3.HttpConnectionManager_APPEND_FORWARD:
		if s.peer == nil {
			return nil
		}
		return append(append([]string(nil), client...), own)
	case hcmv3.HttpConnectionManager_SANITIZE_SET:
		if s.peer == nil {
			return nil
		}
		return []string{own}
	}
	return nil // SANITIZE (the default)
}

// matchRoute picks the virtual host by :authority and the first route of
// it whose match the path satisfies.
func (s *stream) matchRoute(host, path string) bool {
	rt := s.dp.routes[s.l.hcm.routeConfig]
	if rt == nil {
		return false
	}
	vh := matchVirtualHost(rt.vhosts, host)
	if vh == nil {
		return false
	}
	p, _, _ := strings.Cut(path, "?")
	for i := range vh.routes {
		r := &vh.routes[i]
		cand, want := p, r.prefix
		if r.path != "" {
			want = r.path
		}
		if r.caseFold {
			cand, want = strings.ToLower(cand), strings.ToLower(want)
		}
		if (r.path != "" && cand == want) || (r.path == "" && strings.HasPrefix(cand, want)) {
			s.route = r
			s.authz = mergePerRoute(vh.authz, r.authz)
			return true
		}
	}
	return false
}

// matchVirtualHost is Envoy's domain match: exact, then the longest
// suffix wildcard ("*.example.com"), then the longest prefix wildcard
// ("foo.*"), then "*". The port is ignored unless a domain names it.
func matchVirtualHost(vhs []vhost, host string) *vhost {
	host = strings.ToLower(host)
	bare := host
	if h, _, err := net.SplitHostPort(host); err == nil {
		bare = h
	}
	var best *vhost
	bestRank, bestLen := -1, -1
	for i := range vhs {
		for _, d := range vhs[i].domains {
			d = strings.ToLower(d)
			rank, n := -1, len(d)
			switch {
			case d == host || d == bare:
				rank = 3
			case strings.HasPrefix(d, "*") && d != "*" && (strings.HasSuffix(host, d[1:]) || strings.HasSuffix(bare, d[1:])):
				rank = 2
			case strings.HasSuffix(d, "*") && d != "*" && strings.HasPrefix(host, d[:len(d)-1]):
				rank = 1
			case d == "*":
				rank = 0
			}
			if rank > bestRank || (rank == bestRank && n > bestLen) {
				best, bestRank, bestLen = &vhs[i], rank, n
			}
		}
	}
	if bestRank < 0 {
		return nil
	}
	return best
}

// mergePerRoute merges per-filter configs from the virtual host and the
// route: the more specific wins, and context extensions are merged.
func mergePerRoute(vh, r *authzPerRoute) *authzPerRoute {
	switch {
	case r == nil:
		return vh
	case vh == nil || r.disabled:
		return r
	}
	out := &authzPerRoute{ext: map[string]string{}}
	for k, v := range vh.ext {
		out.ext[k] = v
	}
	for k, v := range r.ext {
		out.ext[k] = v
	}
	return out
}

// next is the filter chain from filter i on.
func (s *stream) next(i int) Next {
	return func(ctx context.Context, hs [][2]string, body []byte) Reply {
		f := s.l.hcm.filters[i]
		switch f.kind {
		case kindWasm:
			return s.wasm(ctx, f, i, hs, body)
		case kindExtAuthz:
			return s.extAuthz(ctx, f.extAuthz, i, hs, body)
		default:
			return s.router(ctx, hs, body)
		}
	}
}

// wasm runs a wasm filter (its ECDS configuration) with Envoy's stream
// properties.
func (s *stream) wasm(ctx context.Context, f httpFilter, i int, hs [][2]string, body []byte) Reply {
	w := s.dp.filters[f.ecds]
	reply, local, err := w.filter.Handle(ctx, s.info, hs, body, s.next(i+1))
	switch {
	case err != nil && w.cfg.failOpen:
		s.p.log.Error("wasm filter failed open", "filter", f.name, "error", err)
		return s.next(i+1)(ctx, hs, body)
	case err != nil:
		// failure_policy FAIL_CLOSED.
		s.p.log.Error("wasm filter", "filter", f.name, "error", err)
		s.deniedBy, s.reason = DeniedFilterErr, err.Error()
		return Reply{Status: http.StatusServiceUnavailable}
	case local && s.deniedBy == "":
		s.deniedBy, s.reason = DeniedByFilter, headerValue(reply.Headers, "x-meshguard-reason")
	}
	return reply
}

// extAuthz calls the authorization server with the route's settings.
func (s *stream) extAuthz(ctx context.Context, cfg *extAuthzCfg, i int, hs [][2]string, body []byte) Reply {
	if s.authz != nil && s.authz.disabled {
		return s.next(i+1)(ctx, hs, body)
	}
	fail := func(err error) Reply {
		if cfg.failureModeAllow {
			s.p.log.Warn("ext_authz failed open", "error", err)
			return s.next(i+1)(ctx, hs, body)
		}
		s.deniedBy, s.reason = DeniedAuthzError, err.Error()
		return Reply{Status: cfg.statusOnError}
	}
	c, ok := s.dp.clusters[cfg.cluster]
	if !ok {
		return fail(fmt.Errorf("unknown cluster %s", cfg.cluster))
	}
	client, err := s.p.authzClient(c)
	if err != nil {
		return fail(err)
	}
	req := s.checkRequest(cfg, hs, len(body))
	actx, cancel := context.WithTimeout(ctx, cfg.timeout)
	resp, err := client.Check(actx, req)
	cancel()
	if err != nil {
		return fail(err)
	}
	if codes.Code(resp.GetStatus().GetCode()) != codes.OK {
		status, dh, dbody := deniedReply(resp)
		s.deniedBy, s.reason = DeniedByAuthz, headerValue(dh, "x-meshguard-reason")
		return Reply{Status: status, Headers: dh, Body: []byte(dbody)}
	}
	return s.next(i+1)(ctx, applyOK(hs, resp.GetOkResponse()), body)
}

// router sends the request to the route's cluster and buffers the answer.
func (s *stream) router(ctx context.Context, hs [][2]string, body []byte) Reply {
	c, ok := s.dp.clusters[s.route.cluster]
	if !ok {
		s.deniedBy, s.reason = DeniedByProxy, "no cluster "+s.route.cluster
		return Reply{Status: http.StatusServiceUnavailable}
	}
	resp, err := s.p.forward(ctx, c, hs, body)
	if err != nil {
		s.p.log.Warn("upstream error", "cluster", c.name, "error", err)
		s.deniedBy, s.reason = DeniedByProxy, err.Error()
		return Reply{Status: http.StatusServiceUnavailable}
	}
	return resp
}

// forward sends a request, as the header map holds it, to a cluster.
func (p *Proxy) forward(ctx context.Context, c *clusterCfg, hs [][2]string, body []byte) (Reply, error) {
	client, scheme, err := p.httpClient(c)
	if err != nil {
		return Reply{}, err
	}
	method, _ := pseudo(hs, ":method")
	path, _ := pseudo(hs, ":path")
	host, _ := pseudo(hs, ":authority")
	ref, err := url.ParseRequestURI(path)
	if err != nil {
		return Reply{Status: http.StatusBadRequest}, nil
	}
	u := url.URL{Scheme: scheme, Host: c.addr, Path: ref.Path, RawPath: ref.RawPath, RawQuery: ref.RawQuery}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), bytes.NewReader(body))
	if err != nil {
		return Reply{Status: http.StatusBadRequest}, nil
	}
	req.Host = host
	for _, kv := range hs {
		if strings.HasPrefix(kv[0], ":") || kv[0] == "host" {
			continue
		}
		req.Header.Add(kv[0], kv[1])
	}
	resp, err := client.Do(req)
	if err != nil {
		return Reply{}, err
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
	return Reply{Status: resp.StatusCode, Headers: rh, Body: rbody}, nil
}

// callout is proxy_http_call: the wasm filter names a cluster of the
// proxy's configuration.
func (p *Proxy) callout(ctx context.Context, req wasmhost.CalloutRequest) (wasmhost.CalloutResponse, error) {
	dp := p.state.Load()
	var c *clusterCfg
	if dp != nil {
		c = dp.clusters[req.Cluster]
	}
	if c == nil {
		p.mu.Lock()
		c = p.clusters[req.Cluster]
		p.mu.Unlock()
	}
	if c == nil {
		return wasmhost.CalloutResponse{}, fmt.Errorf("unknown cluster %s", req.Cluster)
	}
	resp, err := p.forward(ctx, c, req.Headers, req.Body)
	if err != nil {
		return wasmhost.CalloutResponse{}, err
	}
	return wasmhost.CalloutResponse{Status: resp.Status, Headers: resp.Headers, Body: resp.Body}, nil
}

// fetchRemote fetches a remote wasm module through its cluster and checks
// its sha256.
func (p *Proxy) fetchRemote(ctx context.Context, r *corev3.RemoteDataSource) ([]byte, error) {
	u, err := url.Parse(r.GetHttpUri().GetUri())
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	c := p.clusters[r.GetHttpUri().GetCluster()]
	p.mu.Unlock()
	if c == nil {
		return nil, fmt.Errorf("unknown cluster %s", r.GetHttpUri().GetCluster())
	}
	if t := r.GetHttpUri().GetTimeout(); t != nil {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, t.AsDuration())
		defer cancel()
	}
	resp, err := p.forward(ctx, c, [][2]string{{":method", "GET"}, {":path", u.RequestURI()}, {":authority", u.Host}}, nil)
	if err != nil {
		return nil, err
	}
	if resp.Status != http.StatusOK {
		return nil, fmt.Errorf("fetch %s: status %d", u, resp.Status)
	}
	sum := sha256.Sum256(resp.Body)
	if hex.EncodeToString(sum[:]) != r.GetSha256() {
		return nil, errors.New("module sha256 does not match")
	}
	return resp.Body, nil
}

func (s *stream) checkRequest(cfg *extAuthzCfg, headers [][2]string, bodyLen int) *authv3.CheckRequest {
	hm := make(map[string]string, len(headers))
	for _, kv := range headers {
		if v, ok := hm[kv[0]]; ok {
			hm[kv[0]] = v + "," + kv[1]
		} else {
			hm[kv[0]] = kv[1]
		}
	}
	src := &authv3.AttributeContext_Peer{Address: socketAddress(s.info.SourceAddress), Principal: principal(s.peer)}
	if s.peer != nil && cfg.includePeerCert {
		src.Certificate = pemURLEncoder.Replace(string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.peer.Raw})))
	}
	dst := &authv3.AttributeContext_Peer{Address: socketAddress(s.info.DestinationAddress), Principal: s.info.LocalURISAN}
	if cfg.labelsKey != "" {
		dst.Labels = nodeLabels(s.p.cfg.Node, cfg.labelsKey)
	}
	var ext map[string]string
	if s.authz != nil && len(s.authz.ext) > 0 {
		ext = make(map[string]string, len(s.authz.ext))
		for k, v := range s.authz.ext {
			ext[k] = v
		}
	}
	method, _ := pseudo(headers, ":method")
	path, _ := pseudo(headers, ":path")
	host, _ := pseudo(headers, ":authority")
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source:      src,
		Destination: dst,
		Request: &authv3.AttributeContext_Request{
			Time: timestamppb.Now(),
			Http: &authv3.AttributeContext_HttpRequest{
				Id: s.reqID, Method: method, Headers: hm, Path: path, Host: host,
				Scheme: s.scheme, Size: int64(bodyLen), Protocol: s.proto,
			},
		},
		ContextExtensions: ext,
	}}
}

// nodeLabels is what ext_authz's bootstrap_metadata_labels_key reads: the
// string fields of the struct at key in the node's metadata (others are
// skipped, as Envoy skips them).
func nodeLabels(n *corev3.Node, key string) map[string]string {
	st := n.GetMetadata().GetFields()[key].GetStructValue()
	if st == nil {
		return nil
	}
	out := map[string]string{}
	for k, v := range st.GetFields() {
		if sv, ok := v.GetKind().(*structpb.Value_StringValue); ok {
			out[k] = sv.StringValue
		}
	}
	return out
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
