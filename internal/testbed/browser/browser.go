// Package browser runs a real headless Chromium for tests (Debian's
// chromium package) through the DevTools protocol (chromedp), and records
// what a page does that a test should see: every request it makes, console
// errors, uncaught exceptions, CSP violations and JavaScript dialogs.
//
// Tests skip, saying why, when no Chromium is installed; CI installs it.
package browser

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	cdplog "github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
)

// Find returns the Chromium binary: $CHROMIUM, else the first of chromium,
// chromium-browser, google-chrome and headless-shell on PATH.
func Find() (string, bool) {
	if p := os.Getenv("CHROMIUM"); p != "" {
		return p, true
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "headless-shell"} {
		if p, err := exec.LookPath(name); err == nil {
			return p, true
		}
	}
	return "", false
}

// Browser is one headless Chromium process.
type Browser struct {
	ctx context.Context
}

// Start launches Chromium for the test and stops it at cleanup. It skips
// the test when there is no Chromium.
func Start(t testing.TB) *Browser {
	t.Helper()
	path, ok := Find()
	if !ok {
		t.Skip("no Chromium found (install Debian's chromium package: apt-get install -y chromium; or set CHROMIUM): skipping the browser test")
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-default-apps", true),
		chromedp.Flag("disable-features", "Translate,OptimizationHints,MediaRouter"),
		chromedp.Flag("ignore-certificate-errors", true),
		chromedp.WindowSize(1600, 1000),
		chromedp.UserDataDir(t.TempDir()),
	}
	actx, acancel := chromedp.NewExecAllocator(context.Background(), opts...)
	bctx, bcancel := chromedp.NewContext(actx)
	// The first action starts the browser and ties it to the context it
	// gets: the browser's own, not one with a timeout.
	if err := chromedp.Do(bctx); err != nil {
		bcancel()
		acancel()
		t.Fatalf("start %s: %v", path, err)
	}
	t.Cleanup(func() {
		bcancel()
		acancel()
	})
	return &Browser{ctx: bctx}
}

// Tab is a page in its own browser context (its own cookies).
type Tab struct {
	ctx context.Context
	mu  sync.Mutex
	// requests are the URLs the page asked for, in order.
	requests []string
	problems []string
	dialogs  []string
}

// NewTab opens a tab in a fresh browser context.
func (b *Browser) NewTab(t testing.TB) *Tab {
	t.Helper()
	tab := &Tab{}
	ctx, cancel := chromedp.NewContext(b.ctx, chromedp.WithNewBrowserContext(), chromedp.WithListener(tab.listen))
	t.Cleanup(cancel)
	tab.ctx = ctx
	if err := chromedp.Do(ctx); err != nil { // opens the tab, tied to ctx
		t.Fatalf("new tab: %v", err)
	}
	start, stop := context.WithTimeout(ctx, 20*time.Second)
	defer stop()
	if _, err := chromedp.Call(start, network.Enable, network.EnableParams{}); err != nil {
		t.Fatalf("new tab: network domain: %v", err)
	}
	if _, err := chromedp.Call(start, cdplog.Enable, cdp.Empty{}); err != nil {
		t.Fatalf("new tab: log domain: %v", err)
	}
	return tab
}

func (tab *Tab) listen(ev any) {
	tab.mu.Lock()
	defer tab.mu.Unlock()
	switch ev := ev.(type) {
	case *network.EventRequestWillBeSent:
		tab.requests = append(tab.requests, ev.Request.URL)
	case *network.EventWebSocketCreated:
		tab.requests = append(tab.requests, ev.URL)
	case *runtime.EventExceptionThrown:
		d := ev.ExceptionDetails
		msg := d.Text
		if d.Exception != nil {
			msg += " " + d.Exception.Description
		}
		tab.problems = append(tab.problems, "exception: "+msg)
	case *runtime.EventConsoleAPICalled:
		if ev.Type == runtime.ConsoleAPICalledTypeError || ev.Type == runtime.ConsoleAPICalledTypeWarning {
			var parts []string
			for _, a := range ev.Args {
				parts = append(parts, strings.Trim(string(a.Value), `"`)+a.Description)
			}
			tab.problems = append(tab.problems, fmt.Sprintf("console.%s: %s", ev.Type, strings.Join(parts, " ")))
		}
	case *cdplog.EventEntryAdded:
		e := ev.Entry
		if e.Level == cdplog.EntryLevelError || e.Source == cdplog.EntrySourceSecurity || e.Source == cdplog.EntrySourceViolation {
			tab.problems = append(tab.problems, fmt.Sprintf("log %s/%s: %s (%s)", e.Source, e.Level, e.Text, e.URL))
		}
	case *page.EventJavascriptDialogOpening:
		tab.dialogs = append(tab.dialogs, string(ev.Type)+": "+ev.Message)
		ctx := tab.ctx
		go func() {
			_, _ = chromedp.Call(ctx, page.HandleJavaScriptDialog, page.HandleJavaScriptDialogParams{Accept: false})
		}()
	}
}

// Do runs actions with a timeout.
func (tab *Tab) Do(timeout time.Duration, actions ...chromedp.Action[chromedp.Void]) error {
	ctx, cancel := context.WithTimeout(tab.ctx, timeout)
	defer cancel()
	return chromedp.Do(ctx, actions...)
}

// Context is the tab's context, for chromedp calls a test makes itself.
func (tab *Tab) Context() context.Context { return tab.ctx }

// Requests returns the URLs the page requested so far.
func (tab *Tab) Requests() []string {
	tab.mu.Lock()
	defer tab.mu.Unlock()
	return append([]string(nil), tab.requests...)
}

// Problems returns console errors and warnings, uncaught exceptions and
// security log entries (CSP violations among them).
func (tab *Tab) Problems() []string {
	tab.mu.Lock()
	defer tab.mu.Unlock()
	return append([]string(nil), tab.problems...)
}

// Dialogs returns the alert/confirm/prompt dialogs the page opened.
func (tab *Tab) Dialogs() []string {
	tab.mu.Lock()
	defer tab.mu.Unlock()
	return append([]string(nil), tab.dialogs...)
}

// ForeignRequests returns the requests to anything but origin
// (scheme://host:port); data: and blob: URLs count as foreign too, so a
// page that inlines content is caught.
func (tab *Tab) ForeignRequests(origin string) []string {
	var out []string
	for _, r := range tab.Requests() {
		u, err := url.Parse(r)
		if err != nil || u.Scheme+"://"+u.Host != origin {
			out = append(out, r)
		}
	}
	return out
}

// Screenshot returns a PNG of the viewport.
func (tab *Tab) Screenshot() ([]byte, error) {
	ctx, cancel := context.WithTimeout(tab.ctx, 20*time.Second)
	defer cancel()
	return chromedp.Run(ctx, chromedp.CaptureScreenshot())
}

// Eval evaluates a JavaScript expression in the tab and decodes its value;
// a promise is awaited.
func Eval[T any](tab *Tab, timeout time.Duration, expr string) (T, error) {
	ctx, cancel := context.WithTimeout(tab.ctx, timeout)
	defer cancel()
	return chromedp.Run(ctx, chromedp.Evaluate[T](expr, chromedp.EvalAwaitPromise))
}
