package bundlefeed_test

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshguard/meshguard/controlplane/bundlefeed"
	"github.com/meshguard/meshguard/internal/testbed/ca"
	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/source"
	"github.com/meshguard/meshguard/policies/wire"
)

func bundle(t *testing.T, version, principal string) *policies.Bundle {
	t.Helper()
	set, diags := source.Parse("p.yaml", []byte(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: read, namespace: shop}
spec:
  rules: [{from: [{source: {principals: [`+principal+`]}}]}]
`))
	if err := diags.Err(); err != nil {
		t.Fatal(err)
	}
	b, _, err := policies.NewBundle(version, set)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

type answer struct {
	status  int
	etag    string
	version string
	body    []byte
	took    time.Duration
}

func get(t *testing.T, c *http.Client, base, query, inm string) answer {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, base+wire.BundlePath+query, nil)
	if err != nil {
		t.Fatal(err)
	}
	if inm != "" {
		req.Header.Set("If-None-Match", inm)
	}
	start := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return answer{status: resp.StatusCode, etag: resp.Header.Get("ETag"), version: resp.Header.Get(wire.HeaderBundleVersion),
		body: body, took: time.Since(start)}
}

func newFeed(t *testing.T, opts bundlefeed.Options) (*bundlefeed.Feed, *httptest.Server, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	opts.Insecure = true
	opts.Registerer = reg
	f, err := bundlefeed.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(f)
	t.Cleanup(ts.Close)
	t.Cleanup(f.Close)
	return f, ts, reg
}

// TestFeedLongPoll: a request that holds the served bundle is held until
// another is published, then answered with it at once; one whose wait ends
// gets 304; one without a bundle yet gets the first one published.
func TestFeedLongPoll(t *testing.T) {
	f, ts, reg := newFeed(t, bundlefeed.Options{})
	c := ts.Client()
	if a := get(t, c, ts.URL, "", ""); a.status != http.StatusServiceUnavailable {
		t.Fatalf("no bundle, no wait: %d", a.status)
	}
	// A filter that starts before the first bundle waits for it.
	b1 := bundle(t, "1-a", "cluster.local/ns/web/sa/web")
	first := make(chan answer, 1)
	go func() { first <- get(t, c, ts.URL, "?wait=10000", "") }()
	time.Sleep(50 * time.Millisecond)
	f.Publish(b1)
	a := <-first
	if a.status != http.StatusOK || a.etag != `"`+b1.Hash+`"` || a.version != "1-a" {
		t.Fatalf("first bundle: %d %s %s", a.status, a.etag, a.version)
	}
	got, err := policies.DecodeBundle(a.body)
	if err != nil || got.Hash != b1.Hash {
		t.Fatalf("body: %v", err)
	}

	// Holding the served bundle: 304 at once without wait, after the wait
	// with one.
	if a := get(t, c, ts.URL, "?wait=0", `"`+b1.Hash+`"`); a.status != http.StatusNotModified || a.etag != `"`+b1.Hash+`"` {
		t.Fatalf("unchanged, no wait: %d %s", a.status, a.etag)
	}
	if a := get(t, c, ts.URL, "?wait=150", `W/"`+b1.Hash+`"`); a.status != http.StatusNotModified || a.took < 150*time.Millisecond {
		t.Fatalf("unchanged, wait 150ms: %d after %s", a.status, a.took)
	}
	// Holding another: the served one at once.
	if a := get(t, c, ts.URL, "?wait=10000", `"sha256:old"`); a.status != http.StatusOK || a.took > 5*time.Second {
		t.Fatalf("stale holder: %d after %s", a.status, a.took)
	}

	// Many held requests all get the next bundle.
	const n = 50
	var wg sync.WaitGroup
	answers := make(chan answer, n)
	for range n {
		wg.Add(1)
		go func() { defer wg.Done(); answers <- get(t, c, ts.URL, "?wait=20000", `"`+b1.Hash+`"`) }()
	}
	deadline := time.Now().Add(10 * time.Second)
	for waiting(t, reg) < n && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	b2 := bundle(t, "2-b", "cluster.local/ns/web/sa/other")
	published := time.Now()
	f.Publish(b2)
	wg.Wait()
	close(answers)
	for a := range answers {
		if a.status != http.StatusOK || a.etag != `"`+b2.Hash+`"` {
			t.Fatalf("held request: %d %s", a.status, a.etag)
		}
	}
	t.Logf("%d held requests answered %s after the publication", n, time.Since(published).Round(time.Millisecond))
}

// waiting reads the feed's gauge of held requests.
func waiting(t *testing.T, reg *prometheus.Registry) int {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "meshguard_controlplane_bundle_feed_waiting_requests" {
			return int(mf.GetMetric()[0].GetGauge().GetValue())
		}
	}
	return 0
}

// TestFeedBounds: the wait is capped, requests beyond MaxWaiting are
// answered 503, and Close releases held requests.
func TestFeedBounds(t *testing.T) {
	f, ts, _ := newFeed(t, bundlefeed.Options{MaxWait: 100 * time.Millisecond, MaxWaiting: 1})
	b := bundle(t, "1", "cluster.local/ns/web/sa/web")
	f.Publish(b)
	c := ts.Client()
	if a := get(t, c, ts.URL, "?wait=60000", `"`+b.Hash+`"`); a.status != http.StatusNotModified || a.took > 5*time.Second {
		t.Fatalf("capped wait: %d after %s", a.status, a.took)
	}

	f2, ts2, reg2 := newFeed(t, bundlefeed.Options{MaxWaiting: 1})
	f2.Publish(b)
	held := make(chan answer, 1)
	go func() { held <- get(t, ts2.Client(), ts2.URL, "?wait=20000", `"`+b.Hash+`"`) }()
	for deadline := time.Now().Add(10 * time.Second); waiting(t, reg2) < 1 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if a := get(t, ts2.Client(), ts2.URL, "?wait=20000", `"`+b.Hash+`"`); a.status != http.StatusServiceUnavailable {
		t.Fatalf("second held request: %d, want 503", a.status)
	}
	start := time.Now()
	f2.Close()
	if a := <-held; a.status != http.StatusNotModified || time.Since(start) > 5*time.Second {
		t.Fatalf("after Close: %d", a.status)
	}
	if a := get(t, ts2.Client(), ts2.URL, "?wait=20000", `"`+b.Hash+`"`); a.status != http.StatusNotModified || a.took > 5*time.Second {
		t.Fatalf("after Close, new request: %d after %s", a.status, a.took)
	}
}

// TestFeedRefusesBadRequests: malformed waits and entity tags, other
// methods.
func TestFeedRefusesBadRequests(t *testing.T) {
	f, ts, _ := newFeed(t, bundlefeed.Options{})
	f.Publish(bundle(t, "1", "cluster.local/ns/web/sa/web"))
	for _, tt := range []struct{ query, inm string }{
		{"?wait=-1", ""}, {"?wait=abc", ""}, {"?wait=60001", ""}, {"?wait=1&wait=2", ""}, {"?watch=1", ""},
		{"", "sha256:x"}, {"", `"a"b"`}, {"", `"` + strings.Repeat("a", 200) + `"`}, {"", `"a", "b"`}, {"", `""x`},
	} {
		if a := get(t, ts.Client(), ts.URL, tt.query, tt.inm); a.status != http.StatusBadRequest {
			t.Errorf("%q %q: %d, want 400", tt.query, tt.inm, a.status)
		}
	}
	resp, err := ts.Client().Post(ts.URL+wire.BundlePath, "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST: %d", resp.StatusCode)
	}
}

// TestFeedAuthentication: with TLS, only X509-SVIDs of the trust domain
// get the bundle.
func TestFeedAuthentication(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	mesh, err := ca.New(td)
	if err != nil {
		t.Fatal(err)
	}
	other, err := ca.New(spiffeid.RequireTrustDomainFromString("evil.org"))
	if err != nil {
		t.Fatal(err)
	}
	f, err := bundlefeed.New(bundlefeed.Options{TrustDomain: td})
	if err != nil {
		t.Fatal(err)
	}
	f.Publish(bundle(t, "1", "cluster.local/ns/web/sa/web"))
	serverSVID, err := mesh.IssueX509SVID(spiffeid.RequireFromPath(td, "/ns/meshguard/sa/controlplane"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(mesh.Root())
	pool.AddCert(other.Root())
	ts := httptest.NewUnstartedServer(f)
	ts.TLS = &tls.Config{Certificates: []tls.Certificate{cert(t, serverSVID)}, ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: pool}
	ts.StartTLS()
	t.Cleanup(ts.Close)
	client := func(authority *ca.CA, id spiffeid.ID) *http.Client {
		cfg := &tls.Config{RootCAs: x509.NewCertPool(), InsecureSkipVerify: true} //nolint:gosec // the server's identity is not under test
		if authority != nil {
			s, err := authority.IssueX509SVID(id, time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			cfg.Certificates = []tls.Certificate{cert(t, s)}
		}
		return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}
	}
	for _, tt := range []struct {
		name   string
		c      *http.Client
		status int
	}{
		{"mesh member", client(mesh, spiffeid.RequireFromPath(td, "/ns/shop/sa/orders")), http.StatusOK},
		{"no certificate", client(nil, spiffeid.ID{}), http.StatusUnauthorized},
		{"other trust domain", client(other, spiffeid.RequireFromPath(other.TrustDomain(), "/ns/shop/sa/orders")), http.StatusUnauthorized},
	} {
		if a := get(t, tt.c, ts.URL, "", ""); a.status != tt.status {
			t.Errorf("%s: %d, want %d", tt.name, a.status, tt.status)
		}
	}
	if _, err := bundlefeed.New(bundlefeed.Options{}); err == nil {
		t.Error("New without trust domain or Insecure accepted")
	}
}

func cert(t *testing.T, s interface {
	Marshal() ([]byte, []byte, error)
}) tls.Certificate {
	t.Helper()
	certs, key, err := s.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	c, err := tls.X509KeyPair(certs, key)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestParseRequest(t *testing.T) {
	for _, tt := range []struct {
		query string
		inm   []string
		want  bundlefeed.Request
		ok    bool
	}{
		{"", nil, bundlefeed.Request{}, true},
		{"wait=20000", []string{`"sha256:ab"`}, bundlefeed.Request{Holds: "sha256:ab", Wait: 20 * time.Second}, true},
		{"wait=0", []string{` W/"x" `}, bundlefeed.Request{Holds: "x"}, true},
		{"wait=60000", nil, bundlefeed.Request{Wait: time.Minute}, true},
		{"wait=60001", nil, bundlefeed.Request{}, false},
		{"wait=+1", nil, bundlefeed.Request{}, false},
		{"wait=", nil, bundlefeed.Request{}, false},
		{"x=1", nil, bundlefeed.Request{}, false},
		{"", []string{`"a"`, `"b"`}, bundlefeed.Request{}, false},
		{"", []string{`"`}, bundlefeed.Request{}, false},
		{"", []string{"\"a\x00\""}, bundlefeed.Request{}, false},
		{"", []string{`*`}, bundlefeed.Request{}, false},
	} {
		q, err := url.ParseQuery(tt.query)
		if err != nil {
			t.Fatal(err)
		}
		got, err := bundlefeed.ParseRequest(q, tt.inm)
		if (err == nil) != tt.ok || (tt.ok && got != tt.want) {
			t.Errorf("%q %q: %+v, %v; want %+v ok=%v", tt.query, tt.inm, got, err, tt.want, tt.ok)
		}
	}
}

func FuzzParseRequest(f *testing.F) {
	f.Add("wait=20000", `"sha256:ab"`)
	f.Add("wait=1&wait=2", `W/"x"`)
	f.Add("", "")
	f.Fuzz(func(t *testing.T, query, inm string) {
		q, err := url.ParseQuery(query)
		if err != nil {
			return
		}
		var hdr []string
		if inm != "" {
			hdr = []string{inm}
		}
		req, err := bundlefeed.ParseRequest(q, hdr)
		if err != nil {
			return
		}
		if req.Wait < 0 || req.Wait > time.Duration(wire.MaxBundleWaitMillis)*time.Millisecond {
			t.Fatalf("wait %s out of bounds", req.Wait)
		}
		if strings.ContainsAny(req.Holds, "\" \t\r\n") || len(req.Holds) > 128 {
			t.Fatalf("entity tag %q", req.Holds)
		}
	})
}
