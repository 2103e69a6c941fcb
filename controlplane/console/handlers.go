package console

import (
	"bytes"
	"context"
	"embed"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/policytest"
)

//go:embed assets
var assetFS embed.FS

// contentSecurityPolicy allows the page its own scripts, styles and
// connections only: no inline script, no eval, no other origin, no framing.
const contentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; " +
	"connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

// public are the only paths served without credentials: the sign-in page
// and what it loads. They hold no data.
var public = map[string]bool{"login": true, "assets/login.js": true, "assets/app.css": true, "assets/favicon.svg": true}

const (
	maxRequestBytes = 64 << 10
	// maxReasonText bounds the reason of a quarantine or release (the
	// quarantine document keeps 256 bytes of it).
	maxReasonText = 256
)

func (c *Console) routes() {
	c.mux.HandleFunc("POST "+Path+"api/login", c.login)
	c.mux.HandleFunc("POST "+Path+"api/logout", c.authed(RoleViewer, true, c.logout))
	c.mux.HandleFunc("GET "+Path+"api/session", c.authed(RoleViewer, false, c.whoami))
	c.mux.HandleFunc("GET "+Path+"api/stream", c.authed(RoleViewer, false, c.stream))
	c.mux.HandleFunc("GET "+Path+"api/graph", c.authed(RoleViewer, false, c.graph))
	c.mux.HandleFunc("GET "+Path+"api/identity", c.authed(RoleViewer, false, c.identity))
	c.mux.HandleFunc("POST "+Path+"api/explain", c.authed(RoleViewer, true, c.explain))
	c.mux.HandleFunc("POST "+Path+"api/quarantine", c.authed(RoleOperator, true, c.quarantine))
	c.mux.HandleFunc("POST "+Path+"api/release", c.authed(RoleOperator, true, c.release))
	c.mux.HandleFunc("GET "+Path, c.static)
}

// ServeHTTP serves everything under Path. Every response carries the
// security headers; anything but the sign-in page needs credentials, and a
// request without them gets a bare 401 whatever it asked for.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", contentSecurityPolicy)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	h.Set("Cross-Origin-Resource-Policy", "same-origin")
	h.Set("Permissions-Policy", "camera=(), microphone=(), geolocation=(), payment=(), usb=()")
	h.Set("Cache-Control", "no-store")
	if r.TLS != nil {
		h.Set("Strict-Transport-Security", "max-age=31536000")
	}
	rest := strings.TrimPrefix(r.URL.Path, Path)
	if public[rest] || (r.Method == http.MethodPost && rest == "api/login") {
		c.mux.ServeHTTP(w, r)
		return
	}
	p, err := c.auth.authenticate(r)
	switch {
	case errors.Is(err, errNoCredentials):
		c.authFailures.WithLabelValues("unauthenticated").Inc()
		w.WriteHeader(http.StatusUnauthorized)
		return
	case err != nil:
		c.authFailures.WithLabelValues("forbidden").Inc()
		c.log.Warn("console call refused: no console role", "caller", p.subject, "path", r.URL.Path)
		w.WriteHeader(http.StatusForbidden)
		return
	}
	c.mux.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), principalKey{}, p)))
}

type principalKey struct{}

// authed wraps a handler: the caller needs at least role, and state
// changes need the CSRF checks.
func (c *Console) authed(role Role, changes bool, next func(http.ResponseWriter, *http.Request, principal)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		p, ok := r.Context().Value(principalKey{}).(principal)
		switch {
		case !ok:
			w.WriteHeader(http.StatusUnauthorized)
			return
		case p.role < role:
			c.authFailures.WithLabelValues("forbidden").Inc()
			c.log.Warn("console call refused", "caller", p.subject, "role", p.role.String(), "path", r.URL.Path)
			httpError(w, http.StatusForbidden, "forbidden: this needs the "+role.String()+" role")
			return
		}
		if changes && !csrfOK(r, p) {
			c.authFailures.WithLabelValues("csrf").Inc()
			c.log.Warn("console call refused: cross-site request checks failed", "caller", p.subject, "path", r.URL.Path)
			httpError(w, http.StatusForbidden, "forbidden: cross-site request checks failed")
			return
		}
		next(w, r, p)
	}
}

// static serves the embedded page and assets.
func (c *Console) static(w http.ResponseWriter, r *http.Request) {
	rest := strings.TrimPrefix(r.URL.Path, Path)
	var name string
	switch {
	case rest == "":
		name = "assets/index.html"
	case rest == "login":
		name = "assets/login.html"
	case strings.HasPrefix(rest, "assets/") && rest != "assets/index.html" && rest != "assets/login.html":
		name = rest
	default:
		w.WriteHeader(http.StatusNotFound)
		return
	}
	data, err := fs.ReadFile(assetFS, name)
	if err != nil || strings.Contains(rest, "..") {
		w.WriteHeader(http.StatusNotFound)
		return
	}
	ct := mime.TypeByExtension(path.Ext(name))
	if ct == "" {
		ct = "application/octet-stream"
	}
	w.Header().Set("Content-Type", ct)
	if strings.HasPrefix(name, "assets/vendor/") {
		w.Header().Set("Cache-Control", "private, max-age=3600")
	}
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(data))
}

// loginName is what a token user may call themselves for the audit trail.
var loginName = regexp.MustCompile(`^[A-Za-z0-9._@-]{1,64}$`)

// LoginRequest is the body of POST /console/api/login.
type LoginRequest struct {
	Token string `json:"token"`
	// Name is who signs in, recorded with the token's role in the audit
	// trail (self-declared: the token is what authenticates).
	Name string `json:"name,omitempty"`
}

// SessionInfo is the answer to login and GET /console/api/session.
type SessionInfo struct {
	Subject string `json:"subject"`
	Role    string `json:"role"`
	Via     string `json:"via"`
	CSRF    string `json:"csrf,omitempty"`
}

func (c *Console) login(w http.ResponseWriter, r *http.Request) {
	ct := r.Header.Get("Content-Type")
	if (ct != "application/json" && !strings.HasPrefix(ct, "application/json;")) || !sameOrigin(r) {
		c.loginsTotal.WithLabelValues("refused").Inc()
		c.authFailures.WithLabelValues("csrf").Inc()
		httpError(w, http.StatusForbidden, "forbidden: cross-site request checks failed")
		return
	}
	var req LoginRequest
	if err := decodeStrict(w, r, &req); err != nil {
		c.loginsTotal.WithLabelValues("refused").Inc()
		httpError(w, http.StatusBadRequest, "invalid request")
		return
	}
	if req.Name != "" && !loginName.MatchString(req.Name) {
		c.loginsTotal.WithLabelValues("refused").Inc()
		httpError(w, http.StatusBadRequest, "name: letters, digits and . _ @ - only, at most 64")
		return
	}
	cookie, p, err := c.auth.login(req.Token, req.Name)
	if err != nil {
		if !c.logins.Allow() {
			c.loginsTotal.WithLabelValues("limited").Inc()
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		c.loginsTotal.WithLabelValues("bad_token").Inc()
		c.authFailures.WithLabelValues("unauthenticated").Inc()
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	c.loginsTotal.WithLabelValues("ok").Inc()
	c.log.Info("console session started", "subject", p.subject, "role", p.role.String())
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: cookie, Path: Path, HttpOnly: true, Secure: r.TLS != nil,
		SameSite: http.SameSiteStrictMode, MaxAge: int(c.auth.opts.SessionTTL / time.Second)})
	writeJSON(w, http.StatusOK, SessionInfo{Subject: p.subject, Role: p.role.String(), Via: p.via, CSRF: p.csrf})
}

func (c *Console) logout(w http.ResponseWriter, _ *http.Request, p principal) {
	if p.session != "" {
		c.auth.logout(p.session)
	}
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: "", Path: Path, HttpOnly: true, MaxAge: -1, SameSite: http.SameSiteStrictMode})
	w.WriteHeader(http.StatusNoContent)
}

func (c *Console) whoami(w http.ResponseWriter, _ *http.Request, p principal) {
	writeJSON(w, http.StatusOK, SessionInfo{Subject: p.subject, Role: p.role.String(), Via: p.via, CSRF: p.csrf})
}

func (c *Console) graph(w http.ResponseWriter, _ *http.Request, _ principal) {
	writeJSON(w, http.StatusOK, c.model.snapshot())
}

// stream sends the snapshot, then every update, as server-sent events.
func (c *Console) stream(w http.ResponseWriter, r *http.Request, p principal) {
	sub, ok := c.hub.join()
	if !ok {
		httpError(w, http.StatusServiceUnavailable, "too many live streams")
		return
	}
	defer c.hub.leave(sub)
	rc := http.NewResponseController(w)
	// The listener's timeouts are for requests; this one lasts. Writes
	// get their own deadline below.
	_ = rc.SetReadDeadline(time.Time{})
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	write := func(b []byte) bool {
		_ = rc.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if _, err := w.Write(b); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	snap, err := sseMessage("snapshot", c.model.snapshot())
	if err != nil || !write(append([]byte("retry: 1000\n\n"), snap...)) {
		return
	}
	heartbeat := time.NewTicker(15 * time.Second)
	defer heartbeat.Stop()
	for {
		select {
		case msg := <-sub.ch:
			if !write(msg) {
				c.hub.slow(sub)
				return
			}
		case <-heartbeat.C:
			if !c.auth.valid(p) || !write([]byte(": keep-alive\n\n")) {
				return
			}
		case <-sub.gone:
			return
		case <-c.stopped:
			return
		case <-r.Context().Done():
			return
		}
	}
}

// IdentityPage is the answer to GET /console/api/identity.
type IdentityPage struct {
	Identity   string             `json:"identity"`
	Seen       bool               `json:"seen"`
	View       *IdentityView      `json:"view,omitempty"`
	Quarantine *Quarantine        `json:"quarantine"`
	History    []QuarantineChange `json:"history"`
	Policies   *PolicyView        `json:"policies,omitempty"`
	Timeline   TimelineView       `json:"timeline"`
}

// PolicyView is what applies to a workload.
type PolicyView struct {
	Version        string                       `json:"version"`
	Target         policytest.Target            `json:"target"`
	Applied        policies.Applied             `json:"applied"`
	RouteOverrides []policies.RouteOverrideSpec `json:"routeOverrides,omitempty"`
	Quarantined    string                       `json:"quarantined,omitempty"` // the bundle's reason
}

// timelineLimit is the most timeline lines an identity page shows.
const timelineLimit = 200

// TimelineView is the incident timeline, when an event store is wired.
type TimelineView struct {
	Available bool            `json:"available"`
	Entries   []TimelineEntry `json:"entries,omitempty"`
	Error     string          `json:"error,omitempty"`
}

// parseIdentity accepts a SPIFFE ID or the unauthenticated node.
func parseIdentity(s string) (string, bool) {
	if s == Unauthenticated {
		return s, true
	}
	id, err := spiffeid.FromString(s)
	if err != nil {
		return "", false
	}
	return id.String(), true
}

func (c *Console) identity(w http.ResponseWriter, r *http.Request, _ principal) {
	id, ok := parseIdentity(r.URL.Query().Get("id"))
	if !ok {
		httpError(w, http.StatusBadRequest, "id: not a SPIFFE ID")
		return
	}
	page := IdentityPage{Identity: id, History: []QuarantineChange{}}
	if v, ok := c.model.identityView(id); ok {
		page.Seen, page.View = true, &v
	}
	for _, q := range c.opts.Quarantines.Quarantines() {
		if q.Identity == id {
			q := q
			page.Quarantine = &q
		}
	}
	for _, h := range c.opts.Quarantines.History() {
		if h.Identity == id {
			page.History = append(page.History, h)
		}
	}
	sort.SliceStable(page.History, func(i, j int) bool { return page.History[i].Time.After(page.History[j].Time) })
	if id != Unauthenticated {
		page.Policies = c.policyView(id)
	}
	if c.opts.Timeline != nil {
		page.Timeline.Available = true
		recs, err := c.opts.Timeline.IdentityTimeline(r.Context(), id, timelineLimit)
		if err != nil {
			page.Timeline.Error = "the event store did not answer"
			c.log.Warn("console: incident timeline", "identity", id, "error", err)
		}
		page.Timeline.Entries = timelineEntries(recs)
	}
	writeJSON(w, http.StatusOK, page)
}

// policyView lists what applies to a workload under the bundle being
// served.
func (c *Console) policyView(id string) *PolicyView {
	b := c.currentBundle()
	if b == nil {
		return nil
	}
	snap := c.snapshotOf(b)
	if snap == nil {
		return nil
	}
	sid := spiffeid.RequireFromString(id)
	labels, ns, svc, known := c.model.target(id)
	t := policies.Target{ID: sid, Namespace: ns, Labels: labels, Service: svc, Resolved: known}
	v := &PolicyView{Version: b.Version, Applied: snap.Applicable(&t),
		Target: policytest.Target{ID: id, Namespace: ns, Labels: labels, Service: svc, Unresolved: !known}}
	for _, ro := range b.Set.RouteOverrides {
		if ro.Metadata.Namespace == ns {
			v.RouteOverrides = append(v.RouteOverrides, ro.Spec)
		}
	}
	if reason, ok := snap.Quarantined(sid, c.opts.Now()); ok {
		v.Quarantined = reason
	}
	return v
}

// ExplainResult is the answer to POST /console/api/explain: what `meshguard
// policy explain --format json` prints for the same request.
type ExplainResult struct {
	Decision ExplainDecision    `json:"decision"`
	Request  policytest.Request `json:"request"`
	Trace    policies.Trace     `json:"trace"`
}

// ExplainDecision is the decision part of ExplainResult.
type ExplainDecision struct {
	Allowed   bool   `json:"allowed"`
	Reason    string `json:"reason"`
	Mode      string `json:"mode,omitempty"`
	WouldDeny bool   `json:"wouldDeny,omitempty"`
	Policy    string `json:"policy,omitempty"`
	Rule      string `json:"rule,omitempty"`
	Audit     bool   `json:"audit,omitempty"`
	Custom    string `json:"custom,omitempty"`
	Version   string `json:"version,omitempty"`
}

func (c *Console) explain(w http.ResponseWriter, r *http.Request, _ principal) {
	var req policytest.Request
	if err := decodeStrict(w, r, &req); err != nil {
		httpError(w, http.StatusBadRequest, err.Error())
		return
	}
	b := c.currentBundle()
	if b == nil {
		httpError(w, http.StatusServiceUnavailable, "no policy bundle yet")
		return
	}
	snap := c.snapshotOf(b)
	if snap == nil {
		httpError(w, http.StatusServiceUnavailable, "the bundle being served does not compile")
		return
	}
	cs := policytest.Case{Name: "console", Request: req}
	attrs, err := cs.Attributes()
	if err != nil {
		httpError(w, http.StatusBadRequest, "request: "+err.Error())
		return
	}
	d, tr := snap.Explain(attrs)
	writeJSON(w, http.StatusOK, ExplainResult{Request: req, Trace: tr, Decision: ExplainDecision{
		Allowed: d.Allowed, Reason: string(d.Reason), Mode: string(d.Mode), WouldDeny: d.WouldDeny,
		Policy: d.Ref.Policy, Rule: d.Ref.Rule, Audit: d.Audit, Custom: d.Custom, Version: d.Version,
	}})
}

// QuarantineRequest is the body of POST /console/api/quarantine.
type QuarantineRequest struct {
	Identity string `json:"identity"`
	Reason   string `json:"reason"`
	// Duration is a Go duration; empty: the control plane's default.
	Duration string `json:"duration,omitempty"`
}

// ReleaseRequest is the body of POST /console/api/release.
type ReleaseRequest struct {
	Identity string `json:"identity"`
	Reason   string `json:"reason"`
}

func (c *Console) quarantine(w http.ResponseWriter, r *http.Request, p principal) {
	var req QuarantineRequest
	if err := decodeStrict(w, r, &req); err != nil {
		c.actions.WithLabelValues("quarantine", "invalid").Inc()
		httpError(w, http.StatusBadRequest, err.Error())
		return
	}
	var d time.Duration
	if req.Duration != "" {
		var err error
		if d, err = time.ParseDuration(req.Duration); err != nil || d <= 0 {
			c.actions.WithLabelValues("quarantine", "invalid").Inc()
			httpError(w, http.StatusBadRequest, "duration: want a positive Go duration such as 30m or 2h")
			return
		}
	}
	if _, err := spiffeid.FromString(req.Identity); err != nil {
		c.actions.WithLabelValues("quarantine", "invalid").Inc()
		httpError(w, http.StatusBadRequest, "identity: not a SPIFFE ID")
		return
	}
	if strings.TrimSpace(req.Reason) == "" || len(req.Reason) > maxReasonText {
		c.actions.WithLabelValues("quarantine", "invalid").Inc()
		httpError(w, http.StatusBadRequest, "a reason is required, at most 256 bytes")
		return
	}
	q, err := c.opts.Quarantines.Quarantine(r.Context(), req.Identity, req.Reason, p.subject, d)
	if err != nil {
		c.actions.WithLabelValues("quarantine", "error").Inc()
		c.log.Error("console: quarantine failed", "identity", req.Identity, "by", p.subject, "error", err)
		httpError(w, statusOf(err), err.Error())
		return
	}
	c.actions.WithLabelValues("quarantine", "ok").Inc()
	c.log.Warn("console: identity quarantined", "identity", q.Identity, "by", p.subject)
	c.resync()
	writeJSON(w, http.StatusOK, q)
}

func (c *Console) release(w http.ResponseWriter, r *http.Request, p principal) {
	var req ReleaseRequest
	if err := decodeStrict(w, r, &req); err != nil {
		c.actions.WithLabelValues("release", "invalid").Inc()
		httpError(w, http.StatusBadRequest, err.Error())
		return
	}
	if strings.TrimSpace(req.Reason) == "" || len(req.Reason) > maxReasonText {
		c.actions.WithLabelValues("release", "invalid").Inc()
		httpError(w, http.StatusBadRequest, "a reason is required, at most 256 bytes")
		return
	}
	if err := c.opts.Quarantines.Release(r.Context(), req.Identity, req.Reason, p.subject); err != nil {
		c.actions.WithLabelValues("release", "error").Inc()
		if !errors.Is(err, ErrNotQuarantined) {
			c.log.Error("console: release failed", "identity", req.Identity, "by", p.subject, "error", err)
		}
		httpError(w, statusOf(err), err.Error())
		return
	}
	c.actions.WithLabelValues("release", "ok").Inc()
	c.log.Warn("console: quarantine released", "identity", req.Identity, "by", p.subject)
	c.resync()
	w.WriteHeader(http.StatusNoContent)
}

// statusOf answers a Quarantiner's error: a change the store did not take
// is an error to retry (503), never a success.
func statusOf(err error) int {
	switch {
	case errors.Is(err, ErrInvalid):
		return http.StatusBadRequest
	case errors.Is(err, ErrNotQuarantined):
		return http.StatusNotFound
	case errors.Is(err, ErrLimit):
		return http.StatusConflict
	case errors.Is(err, ErrUnavailable):
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

func decodeStrict(w http.ResponseWriter, r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxRequestBytes))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return errors.New("decode request: invalid JSON or unknown field")
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("decode request: trailing data")
	}
	return nil
}

// ErrorBody is the JSON of an error answer.
type ErrorBody struct {
	Error string `json:"error"`
}

func httpError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, ErrorBody{Error: msg})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
