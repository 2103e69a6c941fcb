package console

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/meshguard/meshguard/controlplane/quarantine"
	"github.com/meshguard/meshguard/internal/testbed/browser"
	"github.com/meshguard/meshguard/policies/wire"
)

// signIn opens the console in a fresh browser context with a token, the
// way `meshguard demo` prints the link, and waits for the graph's first
// paint.
func signIn(t *testing.T, b *browser.Browser, url, token string) *browser.Tab {
	t.Helper()
	tab := b.NewTab(t)
	if err := tab.Do(30*time.Second, chromedp.Navigate(url+Path+"login#token="+token)); err != nil {
		t.Fatal(err)
	}
	waitJS(t, tab, 30*time.Second, `window.__mg && window.__mg.firstPaintMs !== null && location.pathname === "/console/"`)
	return tab
}

// waitJS polls a JavaScript condition until it holds (errors while the page
// navigates count as false).
func waitJS(t *testing.T, tab *browser.Tab, within time.Duration, cond string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		ok, err := browser.Eval[bool](tab, 5*time.Second, "!!("+cond+")")
		if err == nil && ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("still not true after %v: %s (last error %v); page problems: %v", within, cond, err, tab.Problems())
		}
		time.Sleep(30 * time.Millisecond)
	}
}

// jsString quotes s as a JavaScript string literal.
func jsString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < 0x20 || r == '<' || r == '>' || r == 0x2028 || r == 0x2029:
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// pageClean checks what must hold on every console page: no script ran
// that the page did not ship (the payloads set window.__xss or open a
// dialog), no CSP violation or uncaught error, and no request left the
// console's origin.
func pageClean(t *testing.T, tab *browser.Tab, origin string) {
	t.Helper()
	xss, err := browser.Eval[bool](tab, 5*time.Second, `window.__xss !== undefined`)
	if err != nil || xss {
		t.Errorf("an injected script ran (window.__xss set: %v, %v)", xss, err)
	}
	if d := tab.Dialogs(); len(d) > 0 {
		t.Errorf("the page opened dialogs: %v", d)
	}
	for _, p := range tab.Problems() {
		// A 4xx the test provoked on purpose is logged by the browser as a
		// failed resource; anything else is a defect.
		if strings.Contains(p, "the server responded with a status of 400") {
			continue
		}
		t.Errorf("page problem: %s", p)
	}
	if f := tab.ForeignRequests(origin); len(f) > 0 {
		t.Errorf("the page made requests to other origins: %v", f)
	}
}

// Hostile strings: what a compromised workload or a careless operator can
// put into identities, routes, rule names, reasons and paths.
const (
	hostileName   = `<img src=x onerror="window.__xss='name'">`
	hostileNS     = `"><script>window.__xss='ns'</script>`
	hostileRoute  = `"><img src=x onerror=window.__xss='route'>`
	hostileRule   = `<svg onload=window.__xss='rule'>`
	hostileReason = `</td><script>alert('reason')</script>`
	hostilePath   = `/<script>window.__xss='path'</script>?q="><img src=x onerror=alert(1)>`
	hostileID     = `spiffe://cluster.local/ns/<script>alert(1)</script>`
)

// TestBrowserEscapesHostileText puts hostile text everywhere the mesh can
// reach the page — a workload's name and namespace (the graph library's
// labels), routes, rule references, quarantine reasons, an identity in the
// URL, a path in the explain form — and checks that the page shows it as
// text and runs none of it.
func TestBrowserEscapesHostileText(t *testing.T) {
	b := browser.Start(t)
	evil := idOf("/ns/bookstore/sa/evil")
	catalog := idOf("/ns/bookstore/sa/catalog")
	p := newPlane(t, planeOptions{workloads: []Workload{
		{ID: evil, Name: hostileName, Namespace: hostileNS},
		{ID: catalog, Name: "catalog", Namespace: "bookstore", Service: "catalog", Labels: map[string]string{"app": "catalog"}},
	}})
	p.post(catalog,
		decision(evil, hostileRoute, "deny", "denied_by_policy AuthorizationPolicy/bookstore/x#"+hostileRule, 2),
		wire.Event{Kind: wire.EventDecision, Source: hostileID, Response: "deny", Detail: "denied_no_allow_match", UnixMillis: 1},
		wire.Event{Kind: wire.EventAnomaly, Source: evil.String(), Detector: "enumeration", Response: "block",
			Profile: hostileRule, Detail: hostileReason, Route: hostileRoute, UnixMillis: 1},
	)
	if _, err := p.qm.Add(context.Background(), quarantine.AddRequest{Identity: evil.String(), Reason: hostileReason, By: "spiffe://cluster.local/ns/secops/sa/oncall"}); err != nil {
		t.Fatal(err)
	}
	tab := signIn(t, b, p.url, p.opToken)
	waitJS(t, tab, 10*time.Second, `document.getElementById('feed').textContent.indexOf(`+jsString(hostileReason)+`) >= 0`)

	// The graph library's label is the name, as text.
	label, err := browser.Eval[string](tab, 5*time.Second, `window.__mg.nodeLabel(`+jsString(evil.String())+`)`)
	if err != nil || label != hostileName {
		t.Errorf("node label %q (%v), want the name verbatim", label, err)
	}
	ns, err := browser.Eval[string](tab, 5*time.Second, `window.__mg.nodeLabel("ns:" + `+jsString(hostileNS)+`)`)
	if err != nil || ns != hostileNS {
		t.Errorf("namespace label %q (%v), want it verbatim", ns, err)
	}
	// The invalid identity never became a node.
	if c, _ := browser.Eval[string](tab, 5*time.Second, `window.__mg.nodeClass(`+jsString(hostileID)+`)`); c != "" {
		t.Errorf("an event whose source is not a SPIFFE ID made a node (%q)", c)
	}
	feed, err := browser.Eval[string](tab, 5*time.Second, `document.getElementById('feed').textContent`)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{hostileRoute, hostileRule, hostileReason} {
		if !strings.Contains(feed, s) {
			t.Errorf("the feed does not show %q as text", s)
		}
	}

	// The identity page of the hostile workload, then an identity that is
	// not a SPIFFE ID at all, straight from the URL.
	if err := tab.Do(10*time.Second, chromedp.Navigate(p.url+Path+"#/identity/"+strings.ReplaceAll(evil.String(), "/", "%2F"))); err != nil {
		t.Fatal(err)
	}
	waitJS(t, tab, 10*time.Second, `document.getElementById('id-status').textContent.indexOf(`+jsString(hostileReason)+`) >= 0`)
	waitJS(t, tab, 10*time.Second, `document.getElementById('id-title').textContent === `+jsString(hostileName))
	if err := tab.Do(10*time.Second, chromedp.Evaluate[chromedp.Void](`location.hash = "#/identity/" + encodeURIComponent(`+jsString(hostileID)+`)`)); err != nil {
		t.Fatal(err)
	}
	waitJS(t, tab, 10*time.Second, `document.getElementById('id-error').textContent.indexOf(`+jsString(hostileID)+`) >= 0`)

	// A hostile path through the explain view.
	if err := tab.Do(10*time.Second, chromedp.Evaluate[chromedp.Void](`location.hash = "#/identity/" + encodeURIComponent(`+jsString(catalog.String())+`)`)); err != nil {
		t.Fatal(err)
	}
	waitJS(t, tab, 10*time.Second, `document.getElementById('id-policies').childElementCount > 0`)
	if err := tab.Do(10*time.Second,
		chromedp.SetValue(chromedp.CSS(`#explain-form input[name=path]`), hostilePath),
		chromedp.SetValue(chromedp.CSS(`#explain-form input[name=source]`), evil.String()),
		chromedp.Click(chromedp.CSS(`#explain-form button`)),
	); err != nil {
		t.Fatal(err)
	}
	waitJS(t, tab, 10*time.Second, `document.getElementById('explain-out').textContent.indexOf(`+jsString(hostilePath)+`) >= 0`)

	// Only the page's own elements: no element the payloads would add.
	extra, err := browser.Eval[int](tab, 5*time.Second,
		`document.querySelectorAll('img, svg, iframe, object, embed, script:not([src])').length`)
	if err != nil || extra != 0 {
		t.Errorf("%d injected elements (%v)", extra, err)
	}
	pageClean(t, tab, p.url)
}
