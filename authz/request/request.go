// Package request turns what Envoy sends an ext_authz server (a gRPC
// CheckRequest, or the original request forwarded in HTTP mode) into the
// policy engine's Attributes and the credentials the identity package
// reads. It trusts nothing the client could have written: client-sent
// x-meshguard-* headers are hidden from the engine and listed for removal.
package request

import (
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshguard/meshguard/authz/identity"
	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/wire"
)

// MaxHeaderBytes bounds the total size of the request headers accepted
// (Envoy's own default limit is 60 KiB): every name and value, and one byte
// per header besides, so that many empty headers count too. It is checked
// before any header is joined or copied.
const MaxHeaderBytes = 256 << 10

// Options says what the mapping may believe.
type Options struct {
	// TrustRouteHeader: the x-meshguard-route header is stamped by
	// meshguard's wasm filter in front of ext_authz (which strips any
	// client-sent value), so it names the route when no context extension does.
	TrustRouteHeader bool
	// TrustContextHeaders (HTTP mode only): the HTTP service's
	// authorization_request.headers_to_add sets ContextHeaderPrefix+key for
	// the context extension keys (Envoy overrides client-sent values of
	// those names), since the HTTP mode has no context_extensions.
	TrustContextHeaders bool
}

// ContextHeaderPrefix prefixes the headers that carry context extensions in
// HTTP mode: "x-meshguard-ctx-meshguard.workload" and so on.
const ContextHeaderPrefix = wire.HeaderPrefix + "ctx-"

// Mapped is one request, ready for identity and decision.
type Mapped struct {
	Attrs    policies.Attributes
	Identity identity.Request
	// Headers is what Attrs.Headers points to; call HideXFCC when the
	// identity resolver ignored the header.
	Headers *Headers
	// Remove lists client-sent headers to strip before the request goes
	// upstream (x-meshguard-*); the server adds XFCC when it was untrusted.
	Remove []string
	// Scope is the meshguard.scope context extension (for logs).
	Scope string
	// RequestID is Envoy's x-request-id, if any.
	RequestID string
}

// Headers is the engine's view of the request headers: lowercase names,
// duplicates comma-joined, x-meshguard-* hidden.
type Headers struct {
	m        map[string]string
	hideXFCC bool
}

// Get implements policies.HeaderGetter.
func (h *Headers) Get(name string) (string, bool) {
	if strings.HasPrefix(name, wire.HeaderPrefix) || (h.hideXFCC && name == identity.HeaderXFCC) {
		return "", false
	}
	v, ok := h.m[name]
	return v, ok
}

// Raw returns a header including hidden ones (for the identity resolver).
func (h *Headers) Raw(name string) (string, bool) {
	v, ok := h.m[name]
	return v, ok
}

// HideXFCC hides x-forwarded-client-cert from the engine.
func (h *Headers) HideXFCC() { h.hideXFCC = true }

type rawHeaders struct{ h *Headers }

func (r rawHeaders) Get(name string) (string, bool) { return r.h.Raw(name) }

// ErrInvalid marks a request that cannot be evaluated (denied with
// policies.ReasonDeniedInvalidReq).
var ErrInvalid = errors.New("invalid request")

// FromCheck maps a gRPC CheckRequest.
func FromCheck(req *authv3.CheckRequest, opts Options) (*Mapped, error) {
	ac := req.GetAttributes()
	hr := ac.GetRequest().GetHttp()
	if hr == nil {
		return nil, fmt.Errorf("%w: no attributes.request.http", ErrInvalid)
	}
	hdrs := hr.GetHeaders()
	if hm := hr.GetHeaderMap(); hm != nil && len(hm.GetHeaders()) > 0 {
		var err error
		if hdrs, err = joinHeaderMap(hm); err != nil {
			return nil, err
		}
	}
	m := &Mapped{}
	// Envoy sends lowercase names; the map is used as is unless a name is
	// not lowercase (then a lowercase copy is made, case variants joined).
	size, lower := 0, true
	for k, v := range hdrs {
		size += len(k) + len(v) + 1
		upper, ok := scanName(k)
		if !ok {
			return nil, fmt.Errorf("%w: header name %q is not an HTTP token", ErrInvalid, k)
		}
		if upper {
			lower = false
		}
		if strings.HasPrefix(k, wire.HeaderPrefix) {
			m.Remove = append(m.Remove, k)
		}
	}
	if size > MaxHeaderBytes {
		return nil, fmt.Errorf("%w: %d bytes of headers exceed %d", ErrInvalid, size, MaxHeaderBytes)
	}
	names := hdrs
	if !lower {
		var j joiner
		for k, v := range hdrs {
			j.count(strings.ToLower(k), v)
		}
		for k, v := range hdrs {
			j.add(strings.ToLower(k), v)
		}
		names = j.result()
		m.Remove = m.Remove[:0]
		for k := range names {
			if strings.HasPrefix(k, wire.HeaderPrefix) {
				m.Remove = append(m.Remove, k)
			}
		}
	}
	if names == nil {
		names = map[string]string{}
	}
	h := &Headers{m: names}
	m.Headers = h
	a := &m.Attrs
	a.Headers = h
	a.Method = orHeader(hr.GetMethod(), names, ":method")
	a.Path = orHeader(hr.GetPath(), names, ":path")
	if a.Host = orHeader(hr.GetHost(), names, ":authority"); a.Host == "" {
		a.Host = names["host"]
	}
	if a.Method == "" || a.Path == "" {
		return nil, fmt.Errorf("%w: method or path missing", ErrInvalid)
	}
	m.RequestID = orHeader(hr.GetId(), names, "x-request-id")
	a.SourceIP, _ = socketAddr(ac.GetSource().GetAddress())
	a.RemoteIP = a.SourceIP
	a.DestinationIP, a.DestinationPort = socketAddr(ac.GetDestination().GetAddress())
	a.SNI = ac.GetTlsSession().GetSni()

	var local spiffeid.ID
	if p := ac.GetDestination().GetPrincipal(); strings.HasPrefix(p, "spiffe://") {
		// Envoy's own certificate: trusted, but only if it is a workload's
		// SPIFFE ID (a trust domain's own ID, without a path, is none).
		if id, err := spiffeid.FromString(p); err == nil && id.Path() != "" {
			a.Target.ID, local = id, id
		}
	}
	if err := m.applyContext(ac.GetContextExtensions(), ac.GetDestination().GetLabels()); err != nil {
		return nil, err
	}
	if a.Route == "" && opts.TrustRouteHeader {
		a.Route = names[wire.HeaderRoute]
	}
	m.Identity = identity.Request{
		Principal:   ac.GetSource().GetPrincipal(),
		Certificate: ac.GetSource().GetCertificate(),
		Local:       local,
		Headers:     rawHeaders{h},
	}
	return m, nil
}

// FromHTTP maps a request forwarded by Envoy's HTTP ext_authz service. The
// path has pathPrefix (the service's path_prefix) removed. peer is the
// authenticated identity of the Envoy that called (zero over plaintext).
func FromHTTP(r *http.Request, pathPrefix string, peer spiffeid.ID, opts Options) (*Mapped, error) {
	size := 0
	for k, vs := range r.Header {
		for _, v := range vs {
			size += len(k) + len(v) + 1
		}
	}
	if size > MaxHeaderBytes {
		return nil, fmt.Errorf("%w: %d bytes of headers exceed %d", ErrInvalid, size, MaxHeaderBytes)
	}
	names := make(map[string]string, len(r.Header))
	for k, vs := range r.Header {
		names[strings.ToLower(k)] = strings.Join(vs, ",")
	}
	path := r.URL.RequestURI()
	if r.RequestURI != "" {
		path = r.RequestURI
	}
	if pathPrefix != "" {
		rest, ok := strings.CutPrefix(path, pathPrefix)
		if !ok {
			return nil, fmt.Errorf("%w: path does not start with the prefix %q", ErrInvalid, pathPrefix)
		}
		path = rest
	}
	if path == "" || r.Method == "" {
		return nil, fmt.Errorf("%w: method or path missing", ErrInvalid)
	}
	names[":authority"] = r.Host
	names[":method"] = r.Method
	names[":path"] = path
	h := &Headers{m: names}
	m := &Mapped{Headers: h, RequestID: names["x-request-id"]}
	a := &m.Attrs
	a.Headers, a.Method, a.Path, a.Host = h, r.Method, path, r.Host
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		a.SourceIP = ap.Addr().Unmap()
		a.RemoteIP = a.SourceIP
	}
	if opts.TrustContextHeaders {
		ext := map[string]string{}
		for k, v := range names {
			if key, ok := strings.CutPrefix(k, ContextHeaderPrefix); ok {
				ext[key] = v
			}
		}
		if err := m.applyContext(ext, nil); err != nil {
			return nil, err
		}
	}
	if a.Route == "" && opts.TrustRouteHeader {
		a.Route = names[wire.HeaderRoute]
	}
	for k := range names {
		if strings.HasPrefix(k, wire.HeaderPrefix) {
			m.Remove = append(m.Remove, k)
		}
	}
	m.Identity = identity.Request{Conn: peer, Headers: rawHeaders{h}}
	return m, nil
}

// applyContext maps context extensions (set per route by the control plane)
// and destination.labels (which Envoy fills from its own node metadata, at
// the ext_authz filter's bootstrap_metadata_labels_key) to the target and
// route. Both come from the proxy's configuration, never from the request.
//
// The target is resolved (its labels are all it has) when the route says so
// (meshguard.resolved, the meshguard control plane's routes) or when the
// labels are the node's own: then, as Istio attaches policies to a
// sidecar, it has no Service for targetRefs, and its Gateway is its
// gateway.networking.k8s.io/gateway-name label. Otherwise a target without
// labels has unknown labels, and the engine denies where a selector-scoped
// policy may apply (denied_unresolved_target).
func (m *Mapped) applyContext(ext, destLabels map[string]string) error {
	a := &m.Attrs
	if w := ext[wire.ContextWorkload]; w != "" {
		id, err := spiffeid.FromString(w)
		if err == nil && id.Path() == "" {
			err = errors.New("a SPIFFE ID without a path names a trust domain, not a workload")
		}
		if err != nil {
			return fmt.Errorf("%w: context extension %s: %v", ErrInvalid, wire.ContextWorkload, err)
		}
		a.Target.ID = id
	}
	a.Target.Labels = targetLabels(destLabels, ext)
	a.Target.Namespace = ext[wire.ContextNamespace]
	a.Target.Service = ext[wire.ContextService]
	switch {
	case ext[wire.ContextResolved] == "true":
		a.Target.Resolved = true
	case len(destLabels) > 0:
		a.Target.Resolved = true
		if a.Target.Service == "" {
			a.Target.Gateway = destLabels[GatewayNameLabel]
		}
	}
	a.Route = ext[wire.ContextRoute]
	m.Scope = ext[wire.ContextPolicyScope]
	return nil
}

// ContextLabelPrefix prefixes context extensions that carry a label of the
// destination workload ("meshguard.label.app": "reviews"), for Istio
// selectors; they override destination.labels.
const ContextLabelPrefix = wire.ContextLabelPrefix

// GatewayNameLabel is the label by which Istio attaches targetRefs of kind
// Gateway to a gateway's pods.
const GatewayNameLabel = "gateway.networking.k8s.io/gateway-name"

func targetLabels(dest map[string]string, ext map[string]string) map[string]string {
	extLabels := false
	for k := range ext {
		if strings.HasPrefix(k, ContextLabelPrefix) {
			extLabels = true
			break
		}
	}
	if !extLabels {
		return dest
	}
	out := make(map[string]string, len(dest)+2)
	if len(dest) > 0 {
		for k, v := range dest {
			out[k] = v
		}
	}
	for k, v := range ext {
		if name, ok := strings.CutPrefix(k, ContextLabelPrefix); ok && name != "" {
			out[name] = v
		}
	}
	return out
}

// joinHeaderMap turns Envoy's header_map (one entry per header line) into
// lowercase names with duplicates comma-joined in order, as Envoy joins
// them. The size is checked before anything is joined, and joining is
// linear in the size: a header repeated 150,000 times costs what one header
// of the same total size does.
func joinHeaderMap(hm *corev3.HeaderMap) (map[string]string, error) {
	hs := hm.GetHeaders()
	size := 0
	for _, hv := range hs {
		if _, ok := scanName(hv.GetKey()); !ok {
			return nil, fmt.Errorf("%w: header name %q is not an HTTP token", ErrInvalid, hv.GetKey())
		}
		size += len(hv.GetKey()) + len(headerValue(hv)) + 1
		if size > MaxHeaderBytes {
			return nil, fmt.Errorf("%w: more than %d bytes of headers", ErrInvalid, MaxHeaderBytes)
		}
	}
	var j joiner
	for _, hv := range hs {
		j.count(strings.ToLower(hv.GetKey()), headerValue(hv))
	}
	for _, hv := range hs {
		j.add(strings.ToLower(hv.GetKey()), headerValue(hv))
	}
	return j.result(), nil
}

// headerValue is a header's value: raw_value when Envoy sends it, else value.
func headerValue(hv *corev3.HeaderValue) string {
	if raw := hv.GetRawValue(); len(raw) > 0 {
		return string(raw)
	}
	return hv.GetValue()
}

// joiner comma-joins the values of repeated names in two passes: count
// sizes every value of a name, then add appends each into a buffer of the
// final size, so that joining n values costs their total size, not n².
type joiner struct {
	names map[string]*joined
}

type joined struct {
	n, size int
	first   string
	buf     []byte
}

func (j *joiner) count(name, v string) {
	if j.names == nil {
		j.names = map[string]*joined{}
	}
	e := j.names[name]
	if e == nil {
		j.names[name] = &joined{n: 1, size: len(v), first: v}
		return
	}
	e.n++
	e.size += 1 + len(v)
}

func (j *joiner) add(name, v string) {
	e := j.names[name]
	if e.n == 1 {
		return
	}
	if e.buf == nil {
		e.buf = make([]byte, 0, e.size)
	} else {
		e.buf = append(e.buf, ',')
	}
	e.buf = append(e.buf, v...)
}

func (j *joiner) result() map[string]string {
	out := make(map[string]string, len(j.names))
	for k, e := range j.names {
		if e.n == 1 {
			out[k] = e.first
		} else {
			out[k] = string(e.buf)
		}
	}
	return out
}

func socketAddr(a *corev3.Address) (netip.Addr, uint32) {
	sa := a.GetSocketAddress()
	if sa == nil {
		return netip.Addr{}, 0
	}
	ip, err := netip.ParseAddr(sa.GetAddress())
	if err != nil {
		return netip.Addr{}, 0
	}
	return ip.Unmap(), sa.GetPortValue()
}

// scanName reports whether a header name holds an upper-case letter and
// whether it is a valid name: an RFC 9110 token, or ':' and a token for a
// pseudo-header. Envoy never forwards anything else; a CheckRequest that does
// is refused rather than guessed at (a name with invalid bytes could
// otherwise escape the x-meshguard- prefix check after case folding).
func scanName(s string) (upper, ok bool) {
	s = strings.TrimPrefix(s, ":")
	if s == "" {
		return false, false
	}
	var seen uint8
	for i := 0; i < len(s); i++ {
		c := tokenClass[s[i]]
		if c == 0 {
			return seen&classUpper != 0, false
		}
		seen |= c
	}
	return seen&classUpper != 0, true
}

// tokenClass classifies each byte of a header name: 0 is not a token byte.
var tokenClass = func() (t [256]uint8) {
	for c := range 256 {
		switch {
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9', strings.IndexByte("!#$%&'*+-.^_`|~", byte(c)) >= 0:
			t[c] = classToken
		case 'A' <= c && c <= 'Z':
			t[c] = classToken | classUpper
		}
	}
	return t
}()

const (
	classToken uint8 = 1 << iota
	classUpper
)

// orHeader is v, or when it is empty the header name.
func orHeader(v string, names map[string]string, name string) string {
	if v != "" {
		return v
	}
	return names[name]
}
