package console

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Role is what a console user may do.
type Role int

// Roles. An operator may also do everything a viewer may.
const (
	RoleNone Role = iota
	RoleViewer
	RoleOperator
)

func (r Role) String() string {
	switch r {
	case RoleViewer:
		return "viewer"
	case RoleOperator:
		return "operator"
	}
	return "none"
}

// Auth says who may use the console.
type Auth struct {
	// Operators may quarantine and release (the admin API's --admin-id).
	Operators []spiffeid.ID
	// Viewers may look. An ID without a path (spiffe://example.org)
	// grants every member of that trust domain.
	Viewers []spiffeid.ID
	// OperatorToken and ViewerToken are bearer tokens for port-forward
	// use; empty disables one. Compared in constant time, never logged.
	OperatorToken, ViewerToken string
	// SessionTTL bounds a browser session from a token (default 12h).
	SessionTTL time.Duration
	// MaxSessions bounds the sessions held (default 1000); the oldest
	// goes first.
	MaxSessions int
}

// cookieName is the session cookie. It is scoped to the console's path,
// HttpOnly and SameSite=Strict (and Secure over TLS).
const cookieName = "meshguard_console"

// Headers of the console's own protocol.
const (
	// HeaderCSRF carries the session's CSRF token on every state-changing
	// call authenticated by credentials a browser sends by itself (the
	// session cookie or a client certificate).
	HeaderCSRF = "X-Meshguard-Csrf"
)

// principal is an authenticated caller.
type principal struct {
	subject string // SPIFFE ID, or "console-token:<role>"
	role    Role
	via     string // mtls, bearer, session
	// ambient: the browser sends these credentials by itself (cookie,
	// client certificate), so state changes must prove same-origin intent
	// with the CSRF token.
	ambient bool
	csrf    string
	session string
}

type session struct {
	role    Role
	subject string
	csrf    string
	expires time.Time
	created time.Time
}

// authenticator checks credentials and holds the browser sessions.
type authenticator struct {
	opts     Auth
	now      func() time.Time
	opToken  [32]byte // sha256 of the tokens; zero when disabled
	viewTok  [32]byte
	hasOp    bool
	hasView  bool
	csrfKey  [32]byte
	mu       sync.Mutex
	sessions map[string]*session
}

func newAuthenticator(a Auth, now func() time.Time) (*authenticator, error) {
	if a.SessionTTL <= 0 {
		a.SessionTTL = 12 * time.Hour
	}
	if a.MaxSessions <= 0 {
		a.MaxSessions = 1000
	}
	au := &authenticator{opts: a, now: now, sessions: map[string]*session{}}
	if a.OperatorToken != "" {
		if len(a.OperatorToken) < 16 {
			return nil, errors.New("console: the operator token must have at least 16 characters")
		}
		au.opToken, au.hasOp = sha256.Sum256([]byte(a.OperatorToken)), true
	}
	if a.ViewerToken != "" {
		if len(a.ViewerToken) < 16 {
			return nil, errors.New("console: the viewer token must have at least 16 characters")
		}
		au.viewTok, au.hasView = sha256.Sum256([]byte(a.ViewerToken)), true
	}
	if au.hasOp && au.hasView && au.opToken == au.viewTok {
		return nil, errors.New("console: the operator and viewer tokens must differ")
	}
	if _, err := rand.Read(au.csrfKey[:]); err != nil {
		return nil, err
	}
	au.opts = a
	// The tokens themselves are not kept.
	au.opts.OperatorToken, au.opts.ViewerToken = "", ""
	return au, nil
}

// tokenRole returns the role a token grants. Both comparisons always run,
// in constant time over fixed-length digests.
func (a *authenticator) tokenRole(tok string) Role {
	sum := sha256.Sum256([]byte(tok))
	op := subtle.ConstantTimeCompare(sum[:], a.opToken[:]) & boolInt(a.hasOp)
	view := subtle.ConstantTimeCompare(sum[:], a.viewTok[:]) & boolInt(a.hasView)
	switch {
	case op == 1:
		return RoleOperator
	case view == 1:
		return RoleViewer
	}
	return RoleNone
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// idRole returns the role of an mTLS caller.
func (a *authenticator) idRole(id spiffeid.ID) Role {
	for _, o := range a.opts.Operators {
		if o == id {
			return RoleOperator
		}
	}
	for _, v := range a.opts.Viewers {
		if v == id || (v.Path() == "" && v.TrustDomain() == id.TrustDomain()) {
			return RoleViewer
		}
	}
	return RoleNone
}

// errNoCredentials and errForbidden are authenticate's failures: 401 and
// 403.
var (
	errNoCredentials = errors.New("no valid credentials")
	errForbidden     = errors.New("no console role")
)

// authenticate returns the caller. An Authorization header is decisive
// when present; then the session cookie; then the client certificate
// (which the listener has verified against the trust bundle).
func (a *authenticator) authenticate(r *http.Request) (principal, error) {
	if h := r.Header.Get("Authorization"); h != "" {
		tok, ok := strings.CutPrefix(h, "Bearer ")
		if !ok {
			return principal{}, errNoCredentials
		}
		role := a.tokenRole(strings.TrimSpace(tok))
		if role == RoleNone {
			return principal{}, errNoCredentials
		}
		return principal{subject: "console-token:" + role.String(), role: role, via: "bearer"}, nil
	}
	if c, err := r.Cookie(cookieName); err == nil && c.Value != "" {
		if p, ok := a.session(c.Value); ok {
			return p, nil
		}
		// A stale cookie next to a client certificate: the certificate
		// still counts.
	}
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		id, err := x509svid.IDFromCert(r.TLS.PeerCertificates[0])
		if err != nil {
			return principal{}, errNoCredentials
		}
		role := a.idRole(id)
		if role == RoleNone {
			return principal{subject: id.String()}, errForbidden
		}
		return principal{subject: id.String(), role: role, via: "mtls", ambient: true, csrf: a.certCSRF(id)}, nil
	}
	return principal{}, errNoCredentials
}

// certCSRF is the CSRF token of an mTLS caller: a MAC of its identity
// under a key made at start, so that it needs no state.
func (a *authenticator) certCSRF(id spiffeid.ID) string {
	m := hmac.New(sha256.New, a.csrfKey[:])
	m.Write([]byte("mtls\x00" + id.String()))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

func (a *authenticator) session(id string) (principal, bool) {
	key := sessionKey(id)
	now := a.now()
	a.mu.Lock()
	defer a.mu.Unlock()
	s, ok := a.sessions[key]
	if !ok {
		return principal{}, false
	}
	if !now.Before(s.expires) {
		delete(a.sessions, key)
		return principal{}, false
	}
	return principal{subject: s.subject, role: s.role, via: "session", ambient: true, csrf: s.csrf, session: key}, true
}

// sessionKey is how sessions are indexed: a digest of the cookie value, so
// that the map holds no usable credential.
func sessionKey(cookie string) string {
	sum := sha256.Sum256([]byte(cookie))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// login starts a session for a token; it returns the cookie value. name,
// when given, is recorded with the role as the session's subject.
func (a *authenticator) login(tok, name string) (cookie string, p principal, err error) {
	role := a.tokenRole(tok)
	if role == RoleNone {
		return "", principal{}, errNoCredentials
	}
	cookie, err = randomToken()
	if err != nil {
		return "", principal{}, err
	}
	csrf, err := randomToken()
	if err != nil {
		return "", principal{}, err
	}
	now := a.now()
	subject := "console-token:" + role.String()
	if name != "" {
		subject += "/" + name
	}
	s := &session{role: role, subject: subject, csrf: csrf, created: now, expires: now.Add(a.opts.SessionTTL)}
	key := sessionKey(cookie)
	a.mu.Lock()
	defer a.mu.Unlock()
	for k, old := range a.sessions {
		if !now.Before(old.expires) {
			delete(a.sessions, k)
		}
	}
	for len(a.sessions) >= a.opts.MaxSessions {
		var oldest string
		for k, old := range a.sessions {
			if oldest == "" || old.created.Before(a.sessions[oldest].created) {
				oldest = k
			}
		}
		delete(a.sessions, oldest)
	}
	a.sessions[key] = s
	return cookie, principal{subject: s.subject, role: role, via: "session", ambient: true, csrf: csrf, session: key}, nil
}

func (a *authenticator) logout(key string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.sessions, key)
}

// valid reports whether the principal's session (if any) still exists.
func (a *authenticator) valid(p principal) bool {
	if p.session == "" {
		return true
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	s, ok := a.sessions[p.session]
	return ok && a.now().Before(s.expires)
}

func randomToken() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// NewToken returns a random bearer token (256 bits, base64url).
func NewToken() (string, error) { return randomToken() }

// sameOrigin reports whether a request that changes state comes from the
// console's own pages: the Fetch Metadata and Origin headers, when the
// browser sends them, must say so. Clients that send neither (curl with a
// bearer token) pass; browsers always send Origin on a POST.
func sameOrigin(r *http.Request) bool {
	if s := r.Header.Get("Sec-Fetch-Site"); s != "" && s != "same-origin" {
		return false
	}
	if o := r.Header.Get("Origin"); o != "" {
		scheme := "http://"
		if r.TLS != nil {
			scheme = "https://"
		}
		if o != scheme+r.Host {
			return false
		}
	}
	return true
}

// csrfOK checks a state-changing call: JSON only (a cross-site form cannot
// send it without a CORS preflight, which the console never grants), from
// the console's origin, and with the CSRF token when the credentials are
// ambient.
func csrfOK(r *http.Request, p principal) bool {
	ct := r.Header.Get("Content-Type")
	if ct != "application/json" && !strings.HasPrefix(ct, "application/json;") {
		return false
	}
	if !sameOrigin(r) {
		return false
	}
	if p.ambient {
		got := r.Header.Get(HeaderCSRF)
		if got == "" || subtle.ConstantTimeCompare([]byte(got), []byte(p.csrf)) != 1 {
			return false
		}
	}
	return true
}
