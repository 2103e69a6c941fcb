package demo

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/meshguard/meshguard/examples"
	"github.com/meshguard/meshguard/internal/testbed/browser"
	"github.com/meshguard/meshguard/wasm/wasmtest"
)

var screenshots = flag.Bool("console-screenshots", false, "write the console's screenshots to docs/console/ (they are taken either way)")

// TestConsoleOnTheDemoMesh runs the demo mesh with its console, drives
// traffic through the sidecars (the real wasm filter and authz server) and
// checks in headless Chromium what an operator and a viewer see:
//   - the graph shows the demo's workloads and the edges of its traffic;
//   - a denied request is in the feed, with its reason, within 2 s;
//   - a quarantine made in the console (with its confirmation) marks the
//     node within 2 s and is enforced by the filters;
//   - a viewer cannot release it (the button is disabled and the API says
//     403); the operator can, through the same dialog;
//   - neither page asks any host but the console's own.
//
// It saves screenshots of the graph and of an identity page.
func TestConsoleOnTheDemoMesh(t *testing.T) {
	if testing.Short() {
		t.Skip("console on the demo mesh: starts the whole mesh and Chromium")
	}
	b := browser.Start(t)
	wasm := filterModule(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out bytes.Buffer
	o := Options{Duration: time.Minute, Policies: examples.FS(), PolicyPaths: []string{"policies"}, Wasm: wasm,
		Out: &syncWriter{w: &out}, Console: true, Log: slog.New(slog.DiscardHandler)}
	m, err := start(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	defer m.stop()
	if !strings.Contains(out.String(), m.console.LoginURL()) {
		t.Fatalf("the demo does not print the console's link: %s", out.String())
	}
	p := &player{m: m, clients: map[string]*http.Client{}, jwts: map[string]string{}}
	defer func() {
		for _, c := range p.clients {
			c.CloseIdleConnections()
		}
	}()

	// Legitimate traffic in the background, as the demo plays it.
	var wg sync.WaitGroup
	legitCtx, stopLegit := context.WithCancel(ctx)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; legitCtx.Err() == nil; i++ {
			p.do(legitCtx, legitimate[i%len(legitimate)])
			sleep(legitCtx, 40*time.Millisecond)
		}
	}()
	defer func() { stopLegit(); wg.Wait() }()
	// A little lateral movement, so that the graph has denied and new edges.
	for _, c := range []call{
		{from: attacker, to: "ledger", method: "GET", path: "/v1/entries"},
		{from: attacker, to: "payments-api", method: "POST", path: "/v1/refunds"},
		{from: "support", to: "orders", method: "GET", path: "/api/orders/1"},
	} {
		if status := p.do(ctx, c); status != http.StatusForbidden {
			t.Fatalf("%s → %s: %d, want 403", c.from, c.to, status)
		}
	}

	id := func(name string) string { return m.nodes[name].id.String() }
	op := signIn(t, b, m.console.LoginURL())
	origin := strings.TrimSuffix(m.console.url, "/console/")

	// The graph: every workload of the demo mesh, and an edge for every
	// pair the legitimate traffic connects.
	for _, w := range demoWorkloads {
		waitJS(t, op, 15*time.Second, `window.__mg.nodeLabel(`+q(id(w.Name))+`) === `+q(w.Name))
	}
	pairs := map[[2]string]bool{}
	for _, c := range legitimate {
		pairs[[2]string{c.from, c.to}] = true
	}
	for pair := range pairs {
		// Allowed, or dry-run for support's refunds without a ticket.
		waitJS(t, op, 15*time.Second, `/^(allow|dry)\b/.test(window.__mg.edgeClass(`+q(id(pair[0]))+`, `+q(id(pair[1]))+`))`)
	}
	waitJS(t, op, 10*time.Second, `window.__mg.edgeClass(`+q(id(attacker))+`, `+q(id("ledger"))+`).indexOf("deny") >= 0`)
	t.Logf("graph: %d workloads, %d edges of legitimate traffic drawn", len(demoWorkloads), len(pairs))
	// A click on an edge shows its details.
	mid, err := browser.Eval[[]float64](op, 5*time.Second, `(() => { const cy = window.__mg.cy;
		const a = cy.getElementById(`+q(id("payments-api"))+`).renderedPosition(), b = cy.getElementById(`+q(id("ledger"))+`).renderedPosition();
		const r = document.getElementById("cy").getBoundingClientRect();
		return [r.left + (a.x + b.x) / 2, r.top + (a.y + b.y) / 2]; })()`)
	if err != nil {
		t.Fatal(err)
	}
	if err := op.Do(5*time.Second, chromedp.MouseClickXY(mid[0], mid[1])); err != nil {
		t.Fatal(err)
	}
	waitJS(t, op, 5*time.Second, `!document.getElementById("edge-info").hidden && document.getElementById("edge-dl").textContent.indexOf(`+q(id("ledger"))+`) >= 0`)

	// A denial reaches the feed within 2 s, with its reason and rule.
	deny := call{from: "support", to: "ledger", method: "POST", path: "/v1/entries"}
	feedHas := `Array.from(document.querySelectorAll("#feed li.fe-deny")).some(li => li.querySelector('a[title="` + id(deny.from) + `"]') && li.querySelector('a[title="` + id(deny.to) + `"]') && li.textContent.indexOf("denied_") >= 0)`
	latency := within(t, op, feedHas, func() {
		if status := p.do(ctx, deny); status != http.StatusForbidden {
			t.Fatalf("%s → %s: %d, want 403", deny.from, deny.to, status)
		}
	})
	t.Logf("denial in the feed %v after the request", latency.Round(time.Millisecond))
	if latency > 2*time.Second {
		t.Errorf("the denial took %v to reach the feed, want at most 2s", latency)
	}

	// Quarantine from the identity page, with its confirmation: the node is
	// marked within 2 s of the confirmation, and the filters enforce it.
	target := id(attacker)
	goIdentity(t, op, target)
	clickIn(t, op, "#btn-quarantine")
	waitJS(t, op, 5*time.Second, `document.getElementById("confirm").open`)
	if err := op.Do(5*time.Second, chromedp.SetValue(chromedp.CSS("#confirm-reason"), "lateral movement seen in the console")); err != nil {
		t.Fatal(err)
	}
	latency = within(t, op, `window.__mg.nodeClass(`+q(target)+`).split(" ").indexOf("q") >= 0`, func() {
		clickIn(t, op, "#confirm-ok")
	})
	t.Logf("quarantine marked on the graph %v after the confirmation", latency.Round(time.Millisecond))
	if latency > 2*time.Second {
		t.Errorf("the quarantine took %v to mark the node, want at most 2s", latency)
	}
	waitJS(t, op, 5*time.Second, `document.getElementById("id-status").textContent.indexOf("QUARANTINED") >= 0`)
	waitJS(t, op, 5*time.Second, `document.getElementById("id-history").textContent.indexOf("console-token:operator") >= 0`)
	audit := m.qm.Audit()
	if len(audit) == 0 || audit[len(audit)-1].Action != "add" || audit[len(audit)-1].By != "console-token:operator" {
		t.Fatalf("audit trail %+v", audit)
	}
	enforced := time.Now().Add(5 * time.Second)
	for p.do(ctx, call{from: attacker, to: "catalog", method: "GET", path: "/api/books/7"}) != http.StatusForbidden {
		if time.Now().After(enforced) {
			t.Fatal("the quarantined identity is still allowed by the filters after 5s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The explain view decides a request to this workload with the
	// engine `meshguard policy explain` uses.
	if err := op.Do(5*time.Second,
		chromedp.SetValue(chromedp.CSS(`#explain-form input[name=source]`), id("support")),
		chromedp.SetValue(chromedp.CSS(`#explain-form input[name=path]`), "/api/reviews/42"),
		chromedp.Click(chromedp.CSS(`#explain-form button`)),
	); err != nil {
		t.Fatal(err)
	}
	waitJS(t, op, 5*time.Second, `document.querySelector("#explain-out .verdict-deny") && document.getElementById("explain-out").textContent.indexOf("denied_no_allow_match") >= 0`)
	shot(t, op, "identity.png")
	// The graph with the quarantined workload, for the screenshot.
	if err := op.Do(5*time.Second, chromedp.Evaluate[chromedp.Void](`location.hash = "#/"`)); err != nil {
		t.Fatal(err)
	}
	waitJS(t, op, 5*time.Second, `!document.getElementById("view-graph").hidden`)
	shot(t, op, "graph.png")

	// A viewer sees it, cannot release it.
	viewer := signIn(t, b, m.console.url+"login#token="+m.console.viewer)
	goIdentity(t, viewer, target)
	waitJS(t, viewer, 5*time.Second, `!document.getElementById("btn-release").hidden && document.getElementById("btn-release").disabled && !document.getElementById("readonly-note").hidden`)
	status, err := browser.Eval[int](viewer, 10*time.Second, `fetch("api/release", {method: "POST", credentials: "same-origin",
		headers: {"Content-Type": "application/json", "X-Meshguard-Csrf": window.__mg.csrf()},
		body: JSON.stringify({identity: `+q(target)+`, reason: "viewer tries"})}).then(r => r.status)`)
	if err != nil || status != http.StatusForbidden {
		t.Fatalf("release by the viewer: %d (%v), want 403", status, err)
	}
	if len(m.qm.List()) != 1 {
		t.Fatal("the viewer's release went through")
	}

	// The operator releases it.
	goIdentity(t, op, target)
	waitJS(t, op, 5*time.Second, `!document.getElementById("btn-release").hidden && !document.getElementById("btn-release").disabled`)
	clickIn(t, op, "#btn-release")
	waitJS(t, op, 5*time.Second, `document.getElementById("confirm").open`)
	if err := op.Do(5*time.Second, chromedp.SetValue(chromedp.CSS("#confirm-reason"), "contained and rotated")); err != nil {
		t.Fatal(err)
	}
	latency = within(t, op, `window.__mg.nodeClass(`+q(target)+`).split(" ").indexOf("q") < 0`, func() {
		clickIn(t, op, "#confirm-ok")
	})
	t.Logf("release shown on the graph %v after the confirmation", latency.Round(time.Millisecond))
	if len(m.qm.List()) != 0 {
		t.Fatal("still quarantined after the operator's release")
	}
	if a := m.qm.Audit(); a[len(a)-1].Action != "release" || a[len(a)-1].By != "console-token:operator" || a[len(a)-1].Reason != "contained and rotated" {
		t.Fatalf("audit trail %+v", a)
	}
	waitJS(t, viewer, 5*time.Second, `document.getElementById("id-status").textContent.indexOf("not quarantined") >= 0`)

	for name, tab := range map[string]*browser.Tab{"operator": op, "viewer": viewer} {
		if f := tab.ForeignRequests(origin); len(f) > 0 {
			t.Errorf("%s page: requests to other origins: %v", name, f)
		}
		if len(tab.Requests()) < 5 {
			t.Errorf("%s page: only %d requests seen: the check checks nothing", name, len(tab.Requests()))
		}
		for _, p := range tab.Problems() {
			if !strings.Contains(p, "status of 403") { // the viewer's refused release
				t.Errorf("%s page: %s", name, p)
			}
		}
	}
}

func q(s string) string { return fmt.Sprintf("%q", s) }

func signIn(t *testing.T, b *browser.Browser, link string) *browser.Tab {
	t.Helper()
	tab := b.NewTab(t)
	if err := tab.Do(30*time.Second, chromedp.Navigate(link)); err != nil {
		t.Fatal(err)
	}
	waitJS(t, tab, 30*time.Second, `window.__mg && window.__mg.firstPaintMs !== null && location.pathname === "/console/"`)
	return tab
}

func waitJS(t *testing.T, tab *browser.Tab, d time.Duration, cond string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ok, err := browser.Eval[bool](tab, 5*time.Second, "!!("+cond+")")
		if err == nil && ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not true after %v: %s (%v); page problems %v", d, cond, err, tab.Problems())
		}
		time.Sleep(30 * time.Millisecond)
	}
}

// within installs a waiter for cond in the page, runs act, and returns the
// time from the start of act to the first frame drawn with cond true.
func within(t *testing.T, tab *browser.Tab, cond string, act func()) time.Duration {
	t.Helper()
	res := make(chan float64, 1)
	go func() {
		v, err := browser.Eval[float64](tab, 15*time.Second, `window.__mg.when(() => `+cond+`)`)
		if err != nil {
			v = -1
		}
		res <- v
	}()
	time.Sleep(100 * time.Millisecond) // the waiter is in place
	start := time.Now()
	act()
	v := <-res
	if v < 0 {
		t.Fatalf("never true: %s", cond)
	}
	return time.Duration((v - float64(start.UnixNano())/1e6) * float64(time.Millisecond))
}

func goIdentity(t *testing.T, tab *browser.Tab, id string) {
	t.Helper()
	if err := tab.Do(5*time.Second, chromedp.Evaluate[chromedp.Void](`location.hash = "#/identity/" + encodeURIComponent(`+q(id)+`)`)); err != nil {
		t.Fatal(err)
	}
	waitJS(t, tab, 10*time.Second, `document.querySelector("#id-sub code") && document.querySelector("#id-sub code").textContent === `+q(id))
}

func clickIn(t *testing.T, tab *browser.Tab, sel string) {
	t.Helper()
	if err := tab.Do(5*time.Second, chromedp.Click(chromedp.CSS(sel))); err != nil {
		t.Fatalf("click %s: %v", sel, err)
	}
}

// shot saves a screenshot: into docs/console/ with -console-screenshots,
// else into the test's temporary directory.
func shot(t *testing.T, tab *browser.Tab, name string) {
	t.Helper()
	time.Sleep(300 * time.Millisecond) // let the last update draw
	png, err := tab.Screenshot()
	if err != nil || len(png) < 1000 || !bytes.HasPrefix(png, []byte("\x89PNG")) {
		t.Fatalf("screenshot %s: %d bytes, %v", name, len(png), err)
	}
	dir := t.TempDir()
	if *screenshots {
		root, err := wasmtest.ModuleRoot(".")
		if err != nil {
			t.Fatal(err)
		}
		dir = filepath.Join(root, "docs", "console")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, name), png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot %s (%d KiB)", filepath.Join(dir, name), len(png)/1024)
}
