package browser

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// TestTheHarnessSeesWhatTestsCheck: a page that asks another origin, runs
// an inline script its CSP forbids and opens a dialog shows all three —
// so that a test finding none of them is evidence.
func TestTheHarnessSeesWhatTestsCheck(t *testing.T) {
	b := Start(t)
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) }))
	defer other.Close()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/":
			w.Header().Set("Content-Security-Policy", "script-src 'self'")
			w.Header().Set("Content-Type", "text/html")
			_, _ = w.Write([]byte(`<!doctype html><title>t</title><img src="http://` + other.Listener.Addr().String() + `/x.png">` +
				`<script>window.inline = 1</script><script src="/s.js"></script>`))
		case "/s.js":
			w.Header().Set("Content-Type", "text/javascript")
			_, _ = w.Write([]byte(`window.external = 1; setTimeout(() => alert("hi"), 10);`))
		}
	}))
	defer srv.Close()
	tab := b.NewTab(t)
	if err := tab.Do(20*time.Second, chromedp.Navigate(srv.URL)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(tab.Dialogs()) == 0 || len(tab.ForeignRequests(srv.URL)) == 0 || len(tab.Problems()) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("dialogs %v, foreign %v, problems %v", tab.Dialogs(), tab.ForeignRequests(srv.URL), tab.Problems())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if f := tab.ForeignRequests(srv.URL); !strings.Contains(f[0], other.Listener.Addr().String()) {
		t.Errorf("foreign requests %v", f)
	}
	csp := false
	for _, p := range tab.Problems() {
		csp = csp || strings.Contains(p, "Content Security Policy")
	}
	if !csp {
		t.Errorf("no CSP violation among %v", tab.Problems())
	}
	ran, err := Eval[bool](tab, 5*time.Second, `window.external === 1 && window.inline === undefined`)
	if err != nil || !ran {
		t.Errorf("the page's own script did not run, or the inline one did (%v)", err)
	}
}

// TestStartSkipsWithoutChromium: without a browser the test skips (and
// says why) rather than fails.
func TestStartSkipsWithoutChromium(t *testing.T) {
	t.Setenv("CHROMIUM", "")
	t.Setenv("PATH", t.TempDir())
	skipped := false
	t.Run("start", func(t *testing.T) {
		defer func() { skipped = t.Skipped() }()
		Start(t)
	})
	if !skipped {
		t.Fatal("Start did not skip without a browser")
	}
}
