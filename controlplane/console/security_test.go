package console

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshguard/meshguard/controlplane/quarantine"
	"github.com/meshguard/meshguard/policies/wire"
)

type call struct {
	method, path, body string
	header             map[string]string
}

func (p *plane) do(client *http.Client, c call) (*http.Response, []byte) {
	p.t.Helper()
	var body io.Reader
	if c.body != "" {
		body = strings.NewReader(c.body)
	}
	req, err := http.NewRequest(c.method, p.url+c.path, body)
	if err != nil {
		p.t.Fatal(err)
	}
	for k, v := range c.header {
		req.Header.Set(k, v)
	}
	resp, err := client.Do(req)
	if err != nil {
		p.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

func bearer(tok string) map[string]string {
	return map[string]string{"Authorization": "Bearer " + tok, "Content-Type": "application/json"}
}

// everyPath is every kind of console resource, and paths that exist nowhere.
var everyPath = []call{
	{method: "GET", path: "/console/"},
	{method: "GET", path: "/console/assets/app.js"},
	{method: "GET", path: "/console/assets/vendor/cytoscape/cytoscape.min.js"},
	{method: "GET", path: "/console/assets/index.html"},
	{method: "GET", path: "/console/api/session"},
	{method: "GET", path: "/console/api/graph"},
	{method: "GET", path: "/console/api/stream"},
	{method: "GET", path: "/console/api/identity?id=spiffe://cluster.local/ns/bookstore/sa/reviews"},
	{method: "GET", path: "/console/no/such/thing"},
	{method: "GET", path: "/console/%3Cscript%3Ealert(1)%3C/script%3E"},
	{method: "POST", path: "/console/api/quarantine", body: `{"identity":"spiffe://cluster.local/ns/bookstore/sa/reviews","reason":"x"}`},
	{method: "POST", path: "/console/api/release", body: `{"identity":"spiffe://cluster.local/ns/bookstore/sa/reviews","reason":"x"}`},
	{method: "POST", path: "/console/api/explain", body: `{"method":"GET","path":"/"}`},
	{method: "POST", path: "/console/api/logout", body: `{}`},
}

// TestWithoutCredentialsNothing: every console path answers a request
// without valid credentials with a bare 401 — no body, nothing about the
// mesh — and still with the security headers. Only the sign-in page is
// public, and it holds no data.
func TestWithoutCredentialsNothing(t *testing.T) {
	p := newPlane(t, planeOptions{})
	p.post(idOf("/ns/bookstore/sa/catalog"), decision(idOf("/ns/bookstore/sa/reviews"), "catalog", "deny", "denied_no_allow_match", 1))
	creds := map[string]map[string]string{
		"none":             {},
		"wrong token":      {"Authorization": "Bearer not-the-token-at-all-0123456789"},
		"token prefix":     {"Authorization": "Bearer " + testOperatorToken[:20]},
		"basic":            {"Authorization": "Basic b3BlcmF0b3I6dG9rZW4="},
		"empty bearer":     {"Authorization": "Bearer "},
		"forged cookie":    {"Cookie": cookieName + "=forged"},
		"token as cookie":  {"Cookie": cookieName + "=" + testOperatorToken},
		"token in a query": {},
	}
	for name, hdr := range creds {
		for _, c := range everyPath {
			c.header = map[string]string{"Content-Type": "application/json"}
			for k, v := range hdr {
				c.header[k] = v
			}
			if name == "token in a query" {
				sep := "?"
				if strings.Contains(c.path, "?") {
					sep = "&"
				}
				c.path += sep + "token=" + testOperatorToken
			}
			resp, body := p.do(p.client(spiffeid.ID{}), c)
			if resp.StatusCode != http.StatusUnauthorized || len(body) != 0 {
				t.Errorf("%s: %s %s: %d with %d bytes, want a bare 401", name, c.method, c.path, resp.StatusCode, len(body))
			}
			if resp.Header.Get("Content-Security-Policy") == "" || resp.Header.Get("X-Content-Type-Options") != "nosniff" {
				t.Errorf("%s: %s %s: 401 without the security headers", name, c.method, c.path)
			}
			if resp.Header.Get("Set-Cookie") != "" {
				t.Errorf("%s: %s %s: a 401 sets a cookie", name, c.method, c.path)
			}
		}
	}
	resp, body := p.do(p.client(spiffeid.ID{}), call{method: "GET", path: "/console/login"})
	if resp.StatusCode != http.StatusOK || bytes.Contains(body, []byte("spiffe://")) || bytes.Contains(body, []byte("reviews")) {
		t.Errorf("sign-in page: %d, or it shows mesh data", resp.StatusCode)
	}
	if q := p.qm.List(); len(q) != 0 {
		t.Fatalf("an unauthenticated call quarantined: %v", q)
	}
}

// TestMTLSRoles: over TLS, a client certificate of an operator or a viewer
// is enough; a mesh member without a console role gets a bare 403; a
// client without a certificate can still connect (the port-forward case)
// and gets 401 without a token — while the events endpoint and the admin
// API keep refusing it.
func TestMTLSRoles(t *testing.T) {
	p := newPlane(t, planeOptions{tls: true})
	for _, c := range []struct {
		id   spiffeid.ID
		code int
		role string
	}{
		{operatorID, 200, "operator"},
		{viewerID, 200, "viewer"},
		{strangerID, 403, ""},
		{spiffeid.ID{}, 401, ""},
	} {
		resp, body := p.do(p.client(c.id), call{method: "GET", path: "/console/api/session"})
		if resp.StatusCode != c.code {
			t.Errorf("%v: %d, want %d", c.id, resp.StatusCode, c.code)
			continue
		}
		if c.code != 200 {
			if len(body) != 0 {
				t.Errorf("%v: %d with a body %q", c.id, resp.StatusCode, body)
			}
			continue
		}
		var s SessionInfo
		if err := json.Unmarshal(body, &s); err != nil || s.Role != c.role || s.Subject != c.id.String() || s.CSRF == "" {
			t.Errorf("%v: session %+v (%v)", c.id, s, err)
		}
	}
	// The token works without a certificate.
	resp, _ := p.do(p.client(spiffeid.ID{}), call{method: "GET", path: "/console/api/session", header: bearer(testViewerToken)})
	if resp.StatusCode != 200 {
		t.Errorf("viewer token over TLS without a certificate: %d", resp.StatusCode)
	}
	// Certificate-less clients still get nothing from the mTLS endpoints.
	for _, c := range []call{
		{method: "GET", path: "/v1/quarantines"},
		{method: "POST", path: wire.EventsPath, body: `{"reporter":"x","events":[]}`, header: map[string]string{"Content-Type": "application/json"}},
	} {
		if resp, _ := p.do(p.client(spiffeid.ID{}), c); resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s %s without a certificate: %d, want 401", c.method, c.path, resp.StatusCode)
		}
	}
}

// csrfFor returns the CSRF token a principal's page gets.
func (p *plane) csrfFor(client *http.Client, hdr map[string]string) string {
	p.t.Helper()
	resp, body := p.do(client, call{method: "GET", path: "/console/api/session", header: hdr})
	var s SessionInfo
	if resp.StatusCode != 200 || json.Unmarshal(body, &s) != nil {
		p.t.Fatalf("session: %d %s", resp.StatusCode, body)
	}
	return s.CSRF
}

// TestViewerIsRefusedOperatorIsAudited: a read-only identity gets 403 on
// quarantine and release, by token and by certificate, and nothing
// changes; an operator's calls go through the quarantine manager and are
// audited with who made them, as the CLI's are.
func TestViewerIsRefusedOperatorIsAudited(t *testing.T) {
	p := newPlane(t, planeOptions{tls: true})
	target := idOf("/ns/bookstore/sa/reviews").String()
	quarantineBody := `{"identity":"` + target + `","reason":"investigating","duration":"30m"}`
	releaseBody := `{"identity":"` + target + `","reason":"all clear"}`

	viewerCert := p.client(viewerID)
	viewerHdr := map[string]string{"Content-Type": "application/json", HeaderCSRF: p.csrfFor(viewerCert, nil)}
	for _, c := range []struct {
		name   string
		client *http.Client
		hdr    map[string]string
	}{
		{"viewer token", p.client(spiffeid.ID{}), bearer(testViewerToken)},
		{"viewer certificate", viewerCert, viewerHdr},
	} {
		for _, path := range []string{"/console/api/quarantine", "/console/api/release"} {
			body := quarantineBody
			if strings.HasSuffix(path, "release") {
				body = releaseBody
			}
			resp, _ := p.do(c.client, call{method: "POST", path: path, body: body, header: c.hdr})
			if resp.StatusCode != http.StatusForbidden {
				t.Errorf("%s: POST %s: %d, want 403", c.name, path, resp.StatusCode)
			}
		}
	}
	if len(p.qm.List()) != 0 || len(p.qm.Audit()) != 0 {
		t.Fatalf("a viewer changed the quarantine list: %v %v", p.qm.List(), p.qm.Audit())
	}

	// An operator by certificate quarantines; an operator by token releases.
	opCert := p.client(operatorID)
	opHdr := map[string]string{"Content-Type": "application/json", HeaderCSRF: p.csrfFor(opCert, nil)}
	if resp, body := p.do(opCert, call{method: "POST", path: "/console/api/quarantine", body: quarantineBody, header: opHdr}); resp.StatusCode != 200 {
		t.Fatalf("operator quarantine: %d %s", resp.StatusCode, body)
	}
	if resp, body := p.do(p.client(spiffeid.ID{}), call{method: "POST", path: "/console/api/release", body: releaseBody, header: bearer(testOperatorToken)}); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("operator release: %d %s", resp.StatusCode, body)
	}
	audit := p.qm.Audit()
	if len(audit) != 2 || audit[0].Action != "add" || audit[0].By != operatorID.String() || audit[0].Reason != "investigating" ||
		audit[1].Action != "release" || audit[1].By != "console-token:operator" || audit[1].Reason != "all clear" {
		t.Fatalf("audit trail: %+v", audit)
	}
	if d := audit[0].Expires.Sub(audit[0].Time); d < 29*time.Minute || d > 31*time.Minute {
		t.Errorf("the 30m quarantine expires after %v", d)
	}
}

// TestCSRF: state changes authenticated by credentials a browser sends by
// itself (the session cookie, a client certificate) need the page's CSRF
// token, JSON, and the console's own origin; a cross-site page can send
// none of these. Login is checked for its origin too.
func TestCSRF(t *testing.T) {
	p := newPlane(t, planeOptions{tls: true})
	target := idOf("/ns/bookstore/sa/reviews").String()
	body := `{"identity":"` + target + `","reason":"csrf test"}`
	anon := p.client(spiffeid.ID{})

	// A session from the operator token.
	resp, b := p.do(anon, call{method: "POST", path: "/console/api/login", body: `{"token":"` + testOperatorToken + `","name":"alice"}`,
		header: map[string]string{"Content-Type": "application/json", "Origin": p.url, "Sec-Fetch-Site": "same-origin"}})
	if resp.StatusCode != 200 {
		t.Fatalf("login: %d %s", resp.StatusCode, b)
	}
	var s SessionInfo
	if err := json.Unmarshal(b, &s); err != nil || s.CSRF == "" || s.Subject != "console-token:operator/alice" {
		t.Fatalf("login answer %+v (%v)", s, err)
	}
	var cookie *http.Cookie
	for _, c := range resp.Cookies() {
		if c.Name == cookieName {
			cookie = c
		}
	}
	if cookie == nil || !cookie.HttpOnly || !cookie.Secure || cookie.SameSite != http.SameSiteStrictMode || cookie.Path != Path {
		t.Fatalf("session cookie %+v: want HttpOnly, Secure, SameSite=Strict, Path=%s", cookie, Path)
	}
	if strings.Contains(string(b), testOperatorToken) || strings.Contains(cookie.Value, testOperatorToken) {
		t.Fatal("the token comes back in the answer or the cookie")
	}
	sess := func(extra map[string]string) map[string]string {
		h := map[string]string{"Content-Type": "application/json", "Cookie": cookieName + "=" + cookie.Value}
		for k, v := range extra {
			h[k] = v
		}
		return h
	}
	opCert := p.client(operatorID)
	certToken := p.csrfFor(opCert, nil)
	cases := []struct {
		name   string
		client *http.Client
		hdr    map[string]string
	}{
		{"cookie without the token", anon, sess(nil)},
		{"cookie with a wrong token", anon, sess(map[string]string{HeaderCSRF: "x" + s.CSRF[1:]})},
		{"cookie with the certificate's token", anon, sess(map[string]string{HeaderCSRF: certToken})},
		{"cookie, token, another origin", anon, sess(map[string]string{HeaderCSRF: s.CSRF, "Origin": "https://evil.example"})},
		{"cookie, token, cross-site fetch", anon, sess(map[string]string{HeaderCSRF: s.CSRF, "Sec-Fetch-Site": "cross-site"})},
		{"cookie, token, a form's content type", anon, sess(map[string]string{HeaderCSRF: s.CSRF, "Content-Type": "text/plain"})},
		{"certificate without the token", opCert, map[string]string{"Content-Type": "application/json"}},
		{"certificate with the session's token", opCert, map[string]string{"Content-Type": "application/json", HeaderCSRF: s.CSRF}},
		{"certificate, token, another origin", opCert, map[string]string{"Content-Type": "application/json", HeaderCSRF: certToken, "Origin": "null"}},
		{"bearer, a form's content type", anon, map[string]string{"Authorization": "Bearer " + testOperatorToken, "Content-Type": "application/x-www-form-urlencoded"}},
	}
	for _, c := range cases {
		for _, path := range []string{"/console/api/quarantine", "/console/api/explain", "/console/api/logout"} {
			resp, _ := p.do(c.client, call{method: "POST", path: path, body: body, header: c.hdr})
			if resp.StatusCode != http.StatusForbidden {
				t.Errorf("%s: POST %s: %d, want 403", c.name, path, resp.StatusCode)
			}
		}
	}
	if len(p.qm.List()) != 0 {
		t.Fatal("a request that failed the CSRF checks quarantined")
	}
	for _, c := range []struct {
		name   string
		client *http.Client
		hdr    map[string]string
	}{
		{"session with its token", anon, sess(map[string]string{HeaderCSRF: s.CSRF, "Origin": p.url, "Sec-Fetch-Site": "same-origin"})},
		{"certificate with its token", opCert, map[string]string{"Content-Type": "application/json", HeaderCSRF: certToken}},
		{"bearer token (not ambient)", anon, bearer(testOperatorToken)},
	} {
		resp, b := p.do(c.client, call{method: "POST", path: "/console/api/quarantine", body: body, header: c.hdr})
		if resp.StatusCode != 200 {
			t.Errorf("%s: %d %s, want 200", c.name, resp.StatusCode, b)
		}
	}
	// Login itself: not from another origin, not as a form.
	for _, hdr := range []map[string]string{
		{"Content-Type": "application/json", "Origin": "https://evil.example"},
		{"Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"},
		{"Content-Type": "text/plain"},
	} {
		resp, _ := p.do(anon, call{method: "POST", path: "/console/api/login", body: `{"token":"` + testOperatorToken + `"}`, header: hdr})
		if resp.StatusCode != http.StatusForbidden || resp.Header.Get("Set-Cookie") != "" {
			t.Errorf("login with %v: %d, want 403 and no cookie", hdr, resp.StatusCode)
		}
	}
	// Logout ends the session.
	if resp, _ := p.do(anon, call{method: "POST", path: "/console/api/logout", body: `{}`, header: sess(map[string]string{HeaderCSRF: s.CSRF})}); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("logout: %d", resp.StatusCode)
	}
	if resp, _ := p.do(anon, call{method: "GET", path: "/console/api/session", header: sess(nil)}); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("the session still works after logout: %d", resp.StatusCode)
	}
}

// TestSecurityHeaders: a Content-Security-Policy that allows the page's
// own scripts only (no inline script, no eval) and the usual hardening
// headers; the HTML itself has no inline script, handler or style.
func TestSecurityHeaders(t *testing.T) {
	p := newPlane(t, planeOptions{})
	for _, path := range []string{"/console/", "/console/login", "/console/api/graph", "/console/assets/app.js"} {
		resp, body := p.do(p.client(spiffeid.ID{}), call{method: "GET", path: path, header: bearer(testViewerToken)})
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %d", path, resp.StatusCode)
		}
		csp := parseCSP(resp.Header.Get("Content-Security-Policy"))
		for dir, want := range map[string]string{
			"default-src": "'none'", "script-src": "'self'", "style-src": "'self'", "connect-src": "'self'",
			"object-src": "", "frame-ancestors": "'none'", "base-uri": "'none'", "form-action": "'self'",
		} {
			if want == "" {
				continue // falls back to default-src 'none'
			}
			if got := strings.Join(csp[dir], " "); got != want {
				t.Errorf("%s: CSP %s %q, want %q", path, dir, got, want)
			}
		}
		for dir, srcs := range csp {
			for _, s := range srcs {
				if s == "'unsafe-inline'" || s == "'unsafe-eval'" || s == "'unsafe-hashes'" || s == "data:" || s == "*" || strings.HasPrefix(s, "http") {
					t.Errorf("%s: CSP %s allows %s", path, dir, s)
				}
			}
		}
		for h, want := range map[string]string{
			"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
			"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Resource-Policy": "same-origin",
		} {
			if got := resp.Header.Get(h); got != want {
				t.Errorf("%s: %s %q, want %q", path, h, got, want)
			}
		}
		if strings.HasSuffix(path, "/") || strings.HasSuffix(path, "login") {
			scripts := regexp.MustCompile(`(?is)<script([^>]*)>(.*?)</script>`).FindAllSubmatch(body, -1)
			if len(scripts) == 0 {
				t.Errorf("%s: no script tags found: the check checks nothing", path)
			}
			for _, m := range scripts {
				if !bytes.Contains(m[1], []byte("src=")) || len(bytes.TrimSpace(m[2])) > 0 {
					t.Errorf("%s: inline script %q", path, m[0])
				}
			}
			if m := regexp.MustCompile(`(?i)\son[a-z]+\s*=|\sstyle\s*=|javascript:|<style`).Find(body); m != nil {
				t.Errorf("%s: inline handler or style in the HTML: %q", path, m)
			}
		}
	}
	resp, _ := p.do(p.client(spiffeid.ID{}), call{method: "GET", path: "/console/api/graph", header: bearer(testViewerToken)})
	if resp.Header.Get("Cache-Control") != "no-store" {
		t.Errorf("API answers are cacheable: %q", resp.Header.Get("Cache-Control"))
	}
}

func parseCSP(h string) map[string][]string {
	out := map[string][]string{}
	for _, d := range strings.Split(h, ";") {
		f := strings.Fields(d)
		if len(f) > 0 {
			out[f[0]] = f[1:]
		}
	}
	return out
}

// TestAnswersEscapeHostileText: identities, routes and rule references with
// markup reach the page only JSON-escaped; an identity that is not a SPIFFE
// ID is refused without being echoed; a path that does not exist is not
// reflected.
func TestAnswersEscapeHostileText(t *testing.T) {
	p := newPlane(t, planeOptions{})
	catalog := idOf("/ns/bookstore/sa/catalog")
	p.post(catalog,
		decision(idOf("/ns/bookstore/sa/reviews"), hostileRoute, "deny", "denied_by_policy AuthorizationPolicy/x/y#"+hostileRule, 1),
		wire.Event{Kind: wire.EventDecision, Source: hostileID, Response: "deny", Detail: "denied_no_allow_match", UnixMillis: 1},
		wire.Event{Kind: wire.EventDecision, Source: catalog.String(), Response: "deny", Detail: hostileReason, UnixMillis: 1},
		wire.Event{Kind: wire.EventEdge, Source: catalog.String(), Destination: hostilePath, Detail: "unknown " + hostileReason, UnixMillis: 1},
	)
	if _, err := p.qm.Add(context.Background(), quarantine.AddRequest{Identity: catalog.String(), Reason: hostileReason, By: "test"}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	for _, path := range []string{"/console/api/graph", "/console/api/identity?id=" + catalog.String(), "/console/api/identity?id=" + idOf("/ns/bookstore/sa/reviews").String()} {
		resp, body := p.do(p.client(spiffeid.ID{}), call{method: "GET", path: path, header: bearer(testViewerToken)})
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
			t.Fatalf("%s: %d %q", path, resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		if bytes.ContainsAny(body, "<>") {
			t.Errorf("%s: raw < or > in the answer: %s", path, body)
		}
		if bytes.Contains(body, []byte(`ns/\u003cscript\u003ealert(1)`)) {
			t.Errorf("%s: the event whose source is not a SPIFFE ID was kept", path)
		}
		var v any
		if err := json.Unmarshal(body, &v); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if !strings.Contains(string(mustJSON(v)), hostileRoute) && strings.HasSuffix(path, "graph") {
			t.Errorf("%s: the route is not in the answer", path)
		}
	}
	resp, body := p.do(p.client(spiffeid.ID{}), call{method: "GET", path: "/console/api/identity?id=" + strings.ReplaceAll(hostileID, "<", "%3C"), header: bearer(testViewerToken)})
	if resp.StatusCode != http.StatusBadRequest || bytes.Contains(body, []byte("script")) {
		t.Errorf("hostile identity: %d %s", resp.StatusCode, body)
	}
	resp, body = p.do(p.client(spiffeid.ID{}), call{method: "GET", path: "/console/%3Cscript%3Ealert(1)%3C/script%3E", header: bearer(testViewerToken)})
	if resp.StatusCode != http.StatusNotFound || len(body) != 0 {
		t.Errorf("unknown path: %d %q", resp.StatusCode, body)
	}
	if got := p.console.model.droppedEvents(); got != 2 {
		t.Errorf("%d events ignored, want 2 (the identity that is not a SPIFFE ID, the detail that is not a reason code)", got)
	}
}

// mustJSON re-encodes v without HTML escaping, to search decoded text.
func mustJSON(v any) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
	return b.Bytes()
}

// TestTokensAreNeverLogged: the console logs sign-ins and refusals, never
// a token.
func TestTokensAreNeverLogged(t *testing.T) {
	var logs bytes.Buffer
	qm, st := newManager(t)
	c, err := New(Options{Quarantines: Manager(qm), Bundle: st.Bundle, Logger: slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Auth: Auth{OperatorToken: testOperatorToken, ViewerToken: testViewerToken}})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []*http.Request{
		jsonRequest("POST", "/console/api/login", `{"token":"`+testOperatorToken+`"}`, nil),
		jsonRequest("POST", "/console/api/login", `{"token":"`+testViewerToken+`x"}`, nil),
		jsonRequest("POST", "/console/api/quarantine", `{"identity":"spiffe://cluster.local/ns/a/sa/b","reason":"r"}`, map[string]string{"Authorization": "Bearer " + testViewerToken}),
		jsonRequest("POST", "/console/api/quarantine", `{"identity":"spiffe://cluster.local/ns/a/sa/b","reason":"r"}`, map[string]string{"Authorization": "Bearer " + testOperatorToken}),
	} {
		c.ServeHTTP(discard{}, r)
	}
	if logs.Len() == 0 {
		t.Fatal("nothing logged: the test checks nothing")
	}
	if strings.Contains(logs.String(), testOperatorToken[:12]) || strings.Contains(logs.String(), testViewerToken[:12]) {
		t.Fatalf("a token is in the logs:\n%s", logs.String())
	}
}

// TestStreamSendsSnapshotThenUpdates reads the live stream as the page
// does: the snapshot first, then a denial within a tick or two — also
// after the listener's read and write timeouts have passed (a stream
// outlives the request timeouts of the listener it shares).
func TestStreamSendsSnapshotThenUpdates(t *testing.T) {
	p := newPlane(t, planeOptions{timeout: 500 * time.Millisecond})
	req, _ := http.NewRequest("GET", p.url+"/console/api/stream", nil)
	req.Header.Set("Authorization", "Bearer "+testViewerToken)
	resp, err := (&http.Client{}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	events := make(chan [2]string, 16)
	go func() {
		defer close(events)
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(nil, 1<<24)
		var ev string
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "event: "):
				ev = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "data: "):
				events <- [2]string{ev, strings.TrimPrefix(line, "data: ")}
			}
		}
	}()
	first := <-events
	var snap Snapshot
	if first[0] != "snapshot" || json.Unmarshal([]byte(first[1]), &snap) != nil {
		t.Fatalf("first message %q", first[0])
	}
	time.Sleep(1200 * time.Millisecond) // past both timeouts
	start := time.Now()
	p.post(idOf("/ns/bookstore/sa/catalog"), decision(idOf("/ns/bookstore/sa/reviews"), "catalog", "deny", "denied_no_allow_match AuthorizationPolicy/bookstore/catalog", 3))
	timeout := time.After(5 * time.Second)
	for {
		select {
		case m, ok := <-events:
			if !ok {
				t.Fatal("stream ended")
			}
			var d Delta
			if m[0] != "delta" || json.Unmarshal([]byte(m[1]), &d) != nil {
				t.Fatalf("message %q", m[0])
			}
			for _, f := range d.Feed {
				if f.Kind == KindDeny && f.Count == 3 && f.Policy == "AuthorizationPolicy/bookstore/catalog" && f.Reason == "denied_no_allow_match" {
					if d.Seq <= snap.Seq {
						t.Errorf("delta seq %d not after the snapshot's %d", d.Seq, snap.Seq)
					}
					t.Logf("denial on the stream %v after it was posted", time.Since(start).Round(time.Millisecond))
					return
				}
			}
		case <-timeout:
			t.Fatal("no denial on the stream within 5s")
		}
	}
}

// TestSlowStreamsAreDroppedNotWaitedFor: the producer never waits for a
// stream; one whose queue is full is dropped and counted, the others keep
// getting every update.
func TestSlowStreamsAreDroppedNotWaitedFor(t *testing.T) {
	h := newHub(4, 2)
	slow, _ := h.join()
	fast, _ := h.join()
	start := time.Now()
	for i := 0; i < 100; i++ {
		h.broadcast([]byte("x"))
		select {
		case <-fast.ch: // this one keeps up
		case <-fast.gone:
			t.Fatalf("the stream that keeps up was dropped after %d updates", i)
		}
		if i == 2 {
			select {
			case <-slow.gone:
			default:
				t.Fatal("the slow stream was not dropped with a full queue")
			}
		}
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("broadcasting took %v: the producer waited", d)
	}
	if n := testutilCounter(h.dropped); n != 1 {
		t.Errorf("dropped counter %v, want 1", n)
	}
	if h.size() != 1 {
		t.Errorf("%d streams left, want 1", h.size())
	}
	// The hub refuses streams beyond its maximum.
	for i := 0; i < 3; i++ {
		h.join()
	}
	if _, ok := h.join(); ok {
		t.Error("a stream beyond the maximum was accepted")
	}
}

// failing is a Quarantiner whose store does not take changes.
type failing struct{ err error }

func (failing) Quarantines() []Quarantine                               { return nil }
func (failing) History() []QuarantineChange                             { return nil }
func (f failing) Release(context.Context, string, string, string) error { return f.err }
func (f failing) Quarantine(context.Context, string, string, string, time.Duration) (Quarantine, error) {
	return Quarantine{}, f.err
}

// TestActionErrorsKeepTheirMeaning: releasing what is not quarantined is a
// 404; a change the state store did not take is a 503 (retry), never a
// success; the manager's errors map to the console's.
func TestActionErrorsKeepTheirMeaning(t *testing.T) {
	p := newPlane(t, planeOptions{})
	resp, _ := p.do(p.client(spiffeid.ID{}), call{method: "POST", path: "/console/api/release",
		body: `{"identity":"spiffe://cluster.local/ns/a/sa/b","reason":"r"}`, header: bearer(testOperatorToken)})
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("release of an identity not quarantined: %d, want 404", resp.StatusCode)
	}
	for _, c := range []struct {
		from, to error
	}{{quarantine.ErrInvalid, ErrInvalid}, {quarantine.ErrNotQuarantined, ErrNotQuarantined},
		{quarantine.ErrLimit, ErrLimit}, {quarantine.ErrStore, ErrUnavailable}} {
		if got := kindOf(fmt.Errorf("wrapped: %w", c.from)); !errors.Is(got, c.to) {
			t.Errorf("%v → %v, want %v", c.from, got, c.to)
		}
	}
	c, err := New(Options{Quarantines: failing{fmt.Errorf("%w: bolt is closed", ErrUnavailable)}, Auth: Auth{OperatorToken: testOperatorToken}})
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/console/api/quarantine", "/console/api/release"} {
		rec := httptest.NewRecorder()
		c.ServeHTTP(rec, jsonRequest("POST", path, `{"identity":"spiffe://cluster.local/ns/a/sa/b","reason":"r"}`,
			map[string]string{"Authorization": "Bearer " + testOperatorToken}))
		if rec.Code != http.StatusServiceUnavailable {
			t.Errorf("%s with the store down: %d, want 503", path, rec.Code)
		}
	}
}
