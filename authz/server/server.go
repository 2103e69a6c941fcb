// Package server is meshguard's Envoy external authorization server: the
// gRPC envoy.service.auth.v3.Authorization service, Envoy's HTTP ext_authz
// mode, gRPC health and reflection, and the admin endpoints /healthz,
// /readyz and /metrics.
//
// Every request goes the same way: map it (package request), establish the
// caller's SPIFFE identity (package identity), decide with the policy engine,
// answer, log (package decisionlog) and count (package metrics). Every error
// on that path, a panic included, ends in a deny with a reason code.
package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/health"

	"github.com/meshguard/meshguard/authz/decisionlog"
	"github.com/meshguard/meshguard/authz/identity"
	"github.com/meshguard/meshguard/authz/metrics"
	"github.com/meshguard/meshguard/authz/request"
	"github.com/meshguard/meshguard/authz/requestauth"
	"github.com/meshguard/meshguard/authz/tracing"
	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/wire"
)

// Response header names set by the server besides the policies/wire ones.
// HeaderRule and HeaderMode exist for Envoy's HTTP mode, whose
// dynamic_metadata_from_headers turns them into dynamic metadata.
const (
	HeaderRule         = "x-meshguard-rule"
	HeaderMode         = "x-meshguard-mode"
	HeaderAuthRemove   = "x-envoy-auth-headers-to-remove"
	MetadataNamespaceK = "meshguard"
)

// Engine is what the server needs of the policy engine: a decision, and
// the snapshot being served (for readiness). *policies.Engine is one.
type Engine interface {
	Decide(*policies.Attributes) policies.Decision
	Snapshot() *policies.Snapshot
}

// ReadinessCheck is one condition of readiness besides a loaded policy
// (for example the policy subscription's freshness): Check returns nil
// when it holds, or why not.
type ReadinessCheck struct {
	Name  string
	Check func() error
}

// Config configures a Server.
type Config struct {
	Engine   Engine
	Identity *identity.Resolver
	// RequestAuth validates the end-user JWTs of the RequestAuthentications
	// in the policy; nil: one with the defaults (requestauth.Config{}).
	RequestAuth *requestauth.Authenticator
	Log         *slog.Logger
	Metrics     *metrics.Metrics
	// DecisionLog may be nil (no decision log). Its health shows in
	// /readyz; a stalled log makes the server not ready only with the
	// block overflow policy, under which checks wait for it.
	DecisionLog *decisionlog.Logger
	// Readiness are further conditions of readiness.
	Readiness []ReadinessCheck
	// Tracer, when set, records a span per check in the trace Envoy
	// propagates; nil: no tracing, at no cost.
	Tracer *tracing.Tracer
	// Ship, when set, also receives decisions (sampled on its own): the
	// shipper to the control plane's store. It must never block.
	Ship DecisionSink
	// RecordClaims are the JWT claims (top-level names) that recorded
	// decisions (the decision log, shipped decisions) copy when the
	// request's validated JWT carries them, so that policy replay can
	// decide request.auth.claims conditions. None by default: claims may
	// hold personal data.
	RecordClaims []string
	Request      request.Options
	// CheckTimeout bounds one check (default 1s); past it the answer is a
	// deny with denied_timeout. Envoy's own ext_authz timeout should be set
	// longer than this.
	CheckTimeout time.Duration
	// HTTPPathPrefix is the HTTP service's path_prefix, removed from paths.
	HTTPPathPrefix string
	// AllowUnscoped evaluates requests that name no target workload (no
	// destination.principal, no workload or namespace context extension)
	// against mesh-wide policies only. By default they are denied with
	// denied_invalid_request: a misconfigured filter must not skip every
	// namespace's policies.
	AllowUnscoped bool
}

// DecisionSink records decided requests, with the shape of the decision
// log (*decisionlog.Logger): Log gets an entry filled by the server and the
// request's headers (to copy the configured ones), and reports whether it
// took the entry (one it did not take it counts); the entry is the
// caller's again when Log returns. With a zero deadline Log must not wait.
type DecisionSink interface {
	Sampled(allowed, wouldDeny bool) bool
	Log(e *decisionlog.Entry, h policies.HeaderGetter, deadline time.Time) bool
}

// Server answers checks. Safe for concurrent use.
type Server struct {
	engine  Engine
	ident   *identity.Resolver
	authn   *requestauth.Authenticator
	log     *slog.Logger
	metrics *metrics.Metrics
	dlog    *decisionlog.Logger
	ship    DecisionSink
	claims  []string
	tracer  *tracing.Tracer
	reqOpts request.Options
	timeout time.Duration
	prefix  string
	unscope bool

	idPrefix  string
	seq       atomic.Uint64
	loaded    atomic.Bool // MarkReady was called
	draining  atomic.Bool // Drain was called
	readiness []ReadinessCheck
	health    atomic.Pointer[health.Server]
	healthMu  sync.Mutex // orders health updates
	serving   bool       // last status given to health, under healthMu
	// decisions caches the counter of each (result, reason, mode): the set
	// is bounded by the reason codes, and a cached counter spares hashing
	// three label values on every check.
	decisions sync.Map               // decisionKey -> prometheus.Counter
	durations [2]prometheus.Observer // grpc, http
	values    valueCache
}

// New validates cfg and returns a Server.
func New(cfg Config) (*Server, error) {
	var errs []error
	if cfg.Engine == nil {
		errs = append(errs, errors.New("no engine"))
	}
	if cfg.Identity == nil {
		errs = append(errs, errors.New("no identity resolver"))
	}
	if cfg.Log == nil {
		errs = append(errs, errors.New("no logger"))
	}
	if cfg.Metrics == nil {
		errs = append(errs, errors.New("no metrics"))
	}
	seen := map[string]bool{}
	for _, c := range cfg.RecordClaims {
		if c == "" || strings.TrimSpace(c) != c || seen[c] {
			errs = append(errs, fmt.Errorf("recorded JWT claim %q: want distinct, non-empty names", c))
		}
		seen[c] = true
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	var p [6]byte
	if _, err := rand.Read(p[:]); err != nil {
		return nil, fmt.Errorf("server: decision id prefix: %w", err)
	}
	timeout := cfg.CheckTimeout
	if timeout <= 0 {
		timeout = time.Second
	}
	authn := cfg.RequestAuth
	if authn == nil {
		var err error
		if authn, err = requestauth.New(requestauth.Config{Log: cfg.Log}); err != nil {
			return nil, fmt.Errorf("server: %w", err)
		}
	}
	s := &Server{
		engine: cfg.Engine, ident: cfg.Identity, authn: authn, log: cfg.Log, metrics: cfg.Metrics,
		dlog: cfg.DecisionLog, ship: cfg.Ship, claims: cfg.RecordClaims, tracer: cfg.Tracer, reqOpts: cfg.Request, timeout: timeout, prefix: cfg.HTTPPathPrefix,
		unscope: cfg.AllowUnscoped, idPrefix: hex.EncodeToString(p[:]) + "-",
		readiness: cfg.Readiness,
	}
	s.durations[0] = cfg.Metrics.CheckDuration.WithLabelValues("grpc")
	s.durations[1] = cfg.Metrics.CheckDuration.WithLabelValues("http")
	return s, nil
}

type decisionKey struct{ result, reason, mode string }

func (s *Server) countDecision(d policies.Decision) {
	k := decisionKey{result(d), string(d.Reason), mode(d)}
	c, ok := s.decisions.Load(k)
	if !ok {
		c, _ = s.decisions.LoadOrStore(k, s.metrics.Decisions.WithLabelValues(k.result, k.reason, k.mode))
	}
	c.(prometheus.Counter).Inc()
}

// outcome is one decided request.
type outcome struct {
	decisionID string
	dec        policies.Decision
	id         identity.Identity
	mapped     *request.Mapped
	remove     []string
	set        [][2]string // headers set on the upstream request (RequestAuthentication outputs)
	authFail   *requestauth.Failure
	err        error // why a deny was forced, for logs
	traceID    string
}

func (s *Server) newDecisionID() string {
	return s.idPrefix + strconv.FormatUint(s.seq.Add(1), 36)
}

// expired reports whether the check ran past its deadline: the caller's
// (Envoy's gRPC deadline, a closed connection) or the server's own.
func expired(ctx context.Context, deadline time.Time) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if time.Now().After(deadline) {
		return context.DeadlineExceeded
	}
	return nil
}

// decideTraced is decide in a check span when tracing is on.
func (s *Server) decideTraced(ctx context.Context, deadline time.Time, m *request.Mapped, mapErr error) outcome {
	if s.tracer == nil {
		return s.decide(ctx, deadline, m, mapErr)
	}
	var h tracing.Headers
	if m != nil && m.Headers != nil {
		h = m.Headers
	}
	ctx, span := s.tracer.Start(ctx, h)
	o := s.decide(ctx, deadline, m, mapErr)
	t := tracing.Outcome{Decision: result(o.dec), Reason: string(o.dec.Reason), Policy: o.dec.Ref.Policy, Rule: o.dec.Ref.Rule,
		Mode: mode(o.dec), IdentitySource: string(o.id.Method), Source: idString(o.id.ID), DecisionID: o.decisionID,
		BundleVersion: o.dec.Version, Err: o.err}
	if t.IdentitySource == "" {
		t.IdentitySource = string(identity.MethodNone)
	}
	if m != nil {
		t.Destination = idString(m.Attrs.Target.ID)
	}
	o.traceID = s.tracer.End(span, t)
	return o
}

// decide runs identity and the engine for a mapped request. It never
// returns an allow on an error path.
func (s *Server) decide(ctx context.Context, deadline time.Time, m *request.Mapped, mapErr error) (out outcome) {
	out.decisionID = s.newDecisionID()
	out.mapped = m
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("panic while deciding; denying", slog.String("decision_id", out.decisionID), slog.Any("panic", r))
			out.dec = policies.Deny(policies.ReasonDeniedInternal)
			out.err = fmt.Errorf("panic: %v", r)
		}
	}()
	if mapErr != nil {
		out.dec = policies.Deny(policies.ReasonDeniedInvalidReq)
		out.err = mapErr
		return out
	}
	out.remove = m.Remove
	if !s.unscope && m.Attrs.Target.ID.IsZero() && m.Attrs.Target.Namespace == "" {
		out.dec = policies.Deny(policies.ReasonDeniedInvalidReq)
		out.err = errors.New("request names no target workload (no destination.principal, no meshguard.workload or meshguard.namespace context extension)")
		return out
	}
	snap := s.engine.Snapshot()
	var ra requestauth.Result
	if snap != nil && snap.HasRequestAuthentication() {
		ps, why := snap.JWTProviders(&m.Attrs.Target)
		if why != "" {
			out.dec = policies.Deny(policies.ReasonDeniedUnresolved)
			out.err = errors.New("the RequestAuthentications that apply to the target cannot be known: " + why)
			return out
		}
		svid, _ := s.ident.Token(m.Identity.Headers)
		var fail *requestauth.Failure
		ra, fail = s.authn.Authenticate(ctx, snap, ps, requestauth.Request{Headers: m.Identity.Headers, Path: m.Attrs.Path, SVIDToken: svid})
		if fail != nil {
			out.dec = policies.Deny(fail.Reason)
			out.dec.Version = snap.Version()
			out.authFail, out.err = fail, fail
			return out
		}
		if ra.SVIDTokenClaimed {
			m.Identity.SkipToken = svid
		}
		out.set = ra.Set
		for _, h := range ra.Remove {
			if !slices.Contains(out.remove, h) {
				out.remove = append(out.remove, h)
			}
		}
	}
	id, err := s.ident.Resolve(m.Identity)
	out.id = id
	for _, f := range id.Ignored {
		s.metrics.IdentityFailures.WithLabelValues(string(f)).Inc()
	}
	switch {
	case id.IgnoredXFCC():
		m.Headers.HideXFCC()
		out.remove = append(out.remove, identity.HeaderXFCC)
	case id.LocalXFCC:
		m.Headers.HideXFCC() // the application's, not the engine's
	}
	if err != nil {
		var ie *identity.Error
		reason := policies.ReasonDeniedIdentity
		if errors.As(err, &ie) {
			reason = ie.Reason()
			s.metrics.IdentityFailures.WithLabelValues(string(ie.Kind)).Inc()
		}
		out.dec = policies.Deny(reason)
		out.err = err
		if ie != nil && ie.Kind == identity.FailJWT && ra.SVIDTokenDeferred {
			// A token where a RequestAuthentication rule reads tokens, of an
			// issuer none names, and no JWT-SVID either: Envoy's 401.
			out.authFail = requestauth.UnknownIssuer(err)
			out.dec = policies.Deny(out.authFail.Reason)
			out.err = out.authFail
		}
		return out
	}
	if err := expired(ctx, deadline); err != nil {
		out.dec = policies.Deny(policies.ReasonDeniedTimeout)
		out.err = err
		return out
	}
	a := &m.Attrs
	id.Attributes(a)
	if ra.Token != nil {
		// The end-user token is the request principal; a JWT-SVID beside
		// it is meshguard's.
		a.JWTSVID, a.JWT = a.JWT, ra.Token
	}
	out.dec = s.engine.Decide(a)
	if out.dec.Reason == "" {
		// An answer without a reason is not an answer.
		out.dec = policies.Deny(policies.ReasonDeniedInternal)
		out.err = errors.New("engine returned a decision without a reason")
	}
	if out.dec.Allowed && out.dec.Reason.Denies() && !out.dec.WouldDeny {
		out.dec = policies.Deny(policies.ReasonDeniedInternal)
		out.err = errors.New("engine returned an allow with a deny reason")
	}
	if err := expired(ctx, deadline); err != nil {
		out.dec = policies.Deny(policies.ReasonDeniedTimeout)
		out.err = err
	}
	return out
}

func result(d policies.Decision) string {
	switch {
	case !d.Allowed:
		return "deny"
	case d.WouldDeny:
		return "would_deny"
	}
	return "allow"
}

func mode(d policies.Decision) string {
	if d.Mode == "" {
		return string(policies.ModeEnforce)
	}
	return string(d.Mode)
}

// record counts and logs an outcome. The decision log entry is queued
// (never written here); with the block overflow policy the queueing waits
// at most until the check's deadline.
func (s *Server) record(proto string, o *outcome, start time.Time) {
	elapsed := time.Since(start)
	s.countDecision(o.dec)
	if proto == "http" {
		s.durations[1].Observe(elapsed.Seconds())
	} else {
		s.durations[0].Observe(elapsed.Seconds())
	}
	if o.err != nil && o.dec.Reason != policies.ReasonDeniedIdentity && o.dec.Reason != policies.ReasonDeniedJWT &&
		o.dec.Reason != policies.ReasonDeniedToken && o.dec.Reason != policies.ReasonDeniedTokenAudience {
		s.log.Warn("check denied on an error path", slog.String("decision_id", o.decisionID),
			slog.String("reason", string(o.dec.Reason)), slog.String("error", o.err.Error()))
	}
	logIt := s.dlog != nil && s.dlog.Sampled(o.dec.Allowed, o.dec.WouldDeny)
	shipIt := s.ship != nil && s.ship.Sampled(o.dec.Allowed, o.dec.WouldDeny)
	if !logIt && !shipIt {
		return
	}
	e := decisionlog.Entry{
		Time:          start.UTC(),
		DecisionID:    o.decisionID,
		Protocol:      proto,
		SourceMethod:  string(o.id.Method),
		Allowed:       o.dec.Allowed,
		Reason:        string(o.dec.Reason),
		Mode:          mode(o.dec),
		Policy:        o.dec.Ref.Policy,
		Rule:          o.dec.Ref.Rule,
		WouldDeny:     o.dec.WouldDeny,
		Audit:         o.dec.Audit,
		AuditPolicy:   o.dec.AuditRef.Policy,
		BundleVersion: o.dec.Version,
		LatencyMicros: elapsed.Microseconds(),
	}
	if e.SourceMethod == "" {
		e.SourceMethod = string(identity.MethodNone)
	}
	// The caller, and the identities it was chosen from as the policy
	// model keeps them apart (the JWT follows with the attributes).
	e.Source, e.Peer, e.ForwardedClient = idString(o.id.ID), idString(o.id.Peer), idString(o.id.ForwardedClient)
	e.MTLS = o.id.MTLS
	if o.err != nil {
		e.Error = o.err.Error()
	}
	var hdrs policies.HeaderGetter
	if m := o.mapped; m != nil {
		e.RequestID = m.RequestID
		recordAttributes(&e, &m.Attrs, s.claims)
		e.Scope = m.Scope
		hdrs = m.Headers
	}
	e.TraceID = o.traceID
	if logIt {
		s.dlog.Log(&e, hdrs, start.Add(s.timeout))
	}
	if shipIt {
		// Never waits: the shipper drops (and counts) what it has no room for.
		s.ship.Log(&e, hdrs, time.Time{})
	}
}

// recordAttributes copies what the engine read into e, so that the entry
// can be decided again (policy replay): the identities, addresses, target,
// request, and the validated tokens (the request principal's, and a
// JWT-SVID beside an end-user token) with the claims named in claims that
// they carry.
func recordAttributes(e *decisionlog.Entry, a *policies.Attributes, claims []string) {
	e.Peer, e.ForwardedClient, e.MTLS = idString(a.Peer), idString(a.ForwardedClient), a.MTLS
	e.SourceIP = addrString(a.SourceIP)
	if a.RemoteIP != a.SourceIP {
		e.RemoteIP = addrString(a.RemoteIP)
	}
	e.DestinationIP, e.DestinationPort, e.SNI = addrString(a.DestinationIP), a.DestinationPort, a.SNI
	t := &a.Target
	e.Destination = idString(t.ID)
	e.TargetNamespace, e.TargetService, e.TargetGateway, e.TargetLabels = t.Namespace, t.Service, t.Gateway, t.Labels
	e.TargetResolved = t.Resolved
	e.Method, e.Host, e.Path, e.Route = a.Method, a.Host, a.Path, a.Route
	e.JWT, e.JWTSVID = recordJWT(a.JWT, claims), recordJWT(a.JWTSVID, claims)
}

// recordJWT is a validated token as recorded: its fields, and the claims
// named in claims that it carries (nil for no token).
func recordJWT(j *policies.JWT, claims []string) *wire.DecisionJWT {
	if j == nil {
		return nil
	}
	r := &wire.DecisionJWT{Issuer: j.Issuer, Subject: j.Subject, Principal: j.Principal, SVID: !j.SVID.IsZero(),
		Audiences: j.Audiences, Presenter: j.Presenter}
	if len(claims) > 0 {
		r.ClaimNames = claims
		r.Claims = copyClaims(j.Claims, claims)
	}
	return r
}

// copyClaims encodes the named claims that m holds as a JSON object (nil
// for none).
func copyClaims(m map[string]any, names []string) wire.RawJSON {
	var sel map[string]any
	for _, n := range names {
		if v, ok := m[n]; ok {
			if sel == nil {
				sel = make(map[string]any, len(names))
			}
			sel[n] = v
		}
	}
	if sel == nil {
		return nil
	}
	b, err := json.Marshal(sel)
	if err != nil {
		// Claims are decoded from JSON, so they encode; if one does not,
		// none is recorded and replay treats them as unknown.
		return nil
	}
	return b
}

func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

func idString(id spiffeid.ID) string {
	if id.IsZero() {
		return ""
	}
	return id.String()
}

// httpStatus is the status of a denied request.
func httpStatus(r policies.Reason) int {
	switch r {
	case policies.ReasonRateLimited:
		return 429
	case policies.ReasonDeniedInvalidReq:
		return 400
	case policies.ReasonDeniedToken:
		return 401 // as Envoy's jwt_authn filter
	}
	return 403
}

// wwwAuthenticate is the challenge Envoy's jwt_authn filter answers a
// refused token with: the request's URI (without its query, which may hold
// the token) as the realm.
func wwwAuthenticate(m *request.Mapped) string {
	uri := ""
	if m != nil {
		scheme := "http"
		if h := m.Headers; h != nil {
			if v, ok := h.Raw(":scheme"); ok && v != "" {
				scheme = v
			} else if v, ok := h.Raw("x-forwarded-proto"); ok && v != "" {
				scheme = v
			}
		}
		path, _, _ := strings.Cut(m.Attrs.Path, "?")
		uri = scheme + "://" + m.Attrs.Host + path
	}
	return `Bearer realm="` + strings.NewReplacer(`"`, "%22", `\`, "%5C").Replace(uri) + `", error="invalid_token"`
}

// denyBody is the JSON body of a denied request.
type denyBody struct {
	Reason     policies.Reason `json:"reason"`
	DecisionID string          `json:"decision_id"`
	Policy     string          `json:"policy,omitempty"`
	Rule       string          `json:"rule,omitempty"`
}
