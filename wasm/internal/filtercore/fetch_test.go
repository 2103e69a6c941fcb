package filtercore

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/source"
	"github.com/meshguard/meshguard/policies/wire"
	"github.com/meshguard/meshguard/wasm/internal/scenario"
)

const fetchCluster = "outbound|8443||meshguard-controlplane.meshguard.svc.cluster.local"

// fetchTestBundle builds a bundle from policy YAML and encodes it as the
// control plane serves it.
func fetchTestBundle(t *testing.T, version, yaml string) (*policies.Bundle, []byte) {
	t.Helper()
	set, diags := source.Parse("p.yaml", []byte(yaml))
	if err := diags.Err(); err != nil {
		t.Fatal(err)
	}
	b, _, err := policies.NewBundle(version, set)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := b.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return b, raw
}

const readPolicy = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: read, namespace: shop}
spec:
  rules: [{to: [{operation: {methods: [GET]}}]}]
`

func fetchingConfig(t *testing.T, bf wire.BundleFetch) []byte {
	t.Helper()
	data, err := json.Marshal(wire.FilterConfig{
		BundleFetch: &bf,
		Workload: wire.Workload{ID: scenario.Workload, Namespace: "shop", Service: "orders",
			Labels: map[string]string{"app": "orders", "version": "v2"}, LabelsFrom: wire.LabelsFromConfig},
		ControlPlane: wire.ControlPlane{Cluster: fetchCluster, Authority: "meshguard-controlplane.meshguard.svc.cluster.local"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// decide sends one request and returns the reason of a local reply, or ""
// when the request went through.
func decide(p *Plugin, path string) string {
	s := streamFor(scenario.Request{Source: scenario.Web, SourceAddr: "10.0.0.7:1", DestAddr: "10.0.0.9:8080",
		Route: "orders-api", Method: "GET", Path: path, Authority: "orders"})
	var st StreamState
	if p.OnRequestHeaders(s, &st) {
		return ""
	}
	for _, kv := range s.local.Headers {
		if kv[0] == wire.HeaderReason {
			return kv[1]
		}
	}
	return "?"
}

// pending answers the event reports in flight (the filter reports its
// denials on tick) and returns how many bundle requests are.
func pending(h *fakeHost) int {
	calls := h.calls[:0]
	for _, c := range h.calls {
		if strings.HasPrefix(c.header(":path"), wire.EventsPath) {
			c.answer(202, nil)
			continue
		}
		calls = append(calls, c)
	}
	h.calls = calls
	return len(h.calls)
}

// takeCall returns the one bundle request in flight.
func takeCall(t *testing.T, h *fakeHost) fakeCall {
	t.Helper()
	if pending(h) != 1 {
		t.Fatalf("%d callouts in flight, want 1", len(h.calls))
	}
	c := h.calls[0]
	h.calls = nil
	return c
}

// TestBundleFetchFollowsTheControlPlane: a filter configured to fetch its
// bundle denies every request until the first one arrives, then enforces
// each bundle the control plane sends, long-polling with the hash of the
// one it holds; a 304 at the end of a wait sends the next request at once.
func TestBundleFetchFollowsTheControlPlane(t *testing.T) {
	h := newFakeHost()
	p := NewVM(h).NewPlugin()
	if err := p.Configure(fetchingConfig(t, wire.BundleFetch{})); err != nil {
		t.Fatal(err)
	}
	if got := decide(p, "/export"); got != string(policies.ReasonDeniedNoPolicy) {
		t.Fatalf("before any bundle: %q, want %s", got, policies.ReasonDeniedNoPolicy)
	}
	c := takeCall(t, h)
	if c.cluster != fetchCluster || c.header(":method") != "GET" || c.header(":path") != "/v1/bundle?wait=20000" ||
		c.header(":authority") != "meshguard-controlplane.meshguard.svc.cluster.local" || c.header("if-none-match") != "" {
		t.Fatalf("first fetch: %s %v", c.cluster, c.headers)
	}
	if c.timeout != wire.DefaultBundleWaitMillis+DefaultTimeoutMillis || c.maxBody != wire.DefaultBundleMaxBytes {
		t.Fatalf("first fetch: timeout %d, maxBody %d", c.timeout, c.maxBody)
	}

	b1, raw1 := fetchTestBundle(t, "1-a", readPolicy)
	c.answer(200, raw1, [2]string{"etag", `"` + b1.Hash + `"`})
	if got := decide(p, "/export"); got != "" {
		t.Fatalf("with bundle 1: %q, want allowed", got)
	}
	c = takeCall(t, h)
	if c.header("if-none-match") != `"`+b1.Hash+`"` {
		t.Fatalf("second fetch: if-none-match %q, want the hash of bundle 1", c.header("if-none-match"))
	}
	h.now += int64(20 * time.Second) // the control plane held it
	c.answer(304, nil, [2]string{"etag", `"` + b1.Hash + `"`})
	c = takeCall(t, h) // the next wait starts at once
	if c.header("if-none-match") != `"`+b1.Hash+`"` {
		t.Fatalf("after 304: if-none-match %q", c.header("if-none-match"))
	}

	b2, raw2 := fetchTestBundle(t, "2-b", readPolicy+`---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: v2-no-export, namespace: shop}
spec:
  selector: {matchLabels: {app: orders, version: v2}}
  action: DENY
  rules: [{to: [{operation: {paths: [/export]}}]}]
`)
	c.answer(200, raw2, [2]string{"etag", `"` + b2.Hash + `"`})
	if got := decide(p, "/export"); got != string(policies.ReasonDeniedByPolicy) {
		t.Fatalf("with bundle 2: %q, want %s", got, policies.ReasonDeniedByPolicy)
	}
	if got := decide(p, "/items"); got != "" {
		t.Fatalf("with bundle 2, /items: %q, want allowed", got)
	}
	if c = takeCall(t, h); c.header("if-none-match") != `"`+b2.Hash+`"` {
		t.Fatalf("third fetch: if-none-match %q", c.header("if-none-match"))
	}
	// A 304 that did not wait (a server or proxy ignoring the long poll)
	// paces the next request instead of looping.
	c.answer(304, nil)
	if pending(h) != 0 {
		t.Fatal("an unheld 304 was followed by a request at once")
	}
	h.now += int64(time.Second)
	p.OnTick()
	c = takeCall(t, h)
	// The same content from another replica (another version, same hash)
	// is not loaded again.
	h.now += int64(5 * time.Second)
	c.answer(200, raw2, [2]string{"etag", `"` + b2.Hash + `"`})
	takeCall(t, h)
	if h.counters[mBundleFetches+".result.updated"] != 2 || h.counters[mBundleFetches+".result.unchanged"] != 3 {
		t.Fatalf("fetch counters: %v", h.counters)
	}
}

// TestBundleFetchKeepsTheLastGoodBundle: when the control plane cannot be
// reached, answers an error or sends a bundle the filter refuses, the
// bundle in force keeps serving; failures are retried after a delay that
// doubles, a refused bundle is not fetched again until the control plane
// serves another.
func TestBundleFetchKeepsTheLastGoodBundle(t *testing.T) {
	h := newFakeHost()
	p := NewVM(h).NewPlugin()
	if err := p.Configure(fetchingConfig(t, wire.BundleFetch{RetryMillis: 1000, MaxRetryMillis: 4000, MaxBytes: 64 << 10})); err != nil {
		t.Fatal(err)
	}
	// Failures before the first bundle: still denying.
	takeCall(t, h).answer(0, nil)
	if got := decide(p, "/x"); got != string(policies.ReasonDeniedNoPolicy) {
		t.Fatalf("after a failed first fetch: %q", got)
	}
	if pending(h) != 0 {
		t.Fatal("a failed fetch was retried at once")
	}
	p.OnTick()
	if pending(h) != 0 {
		t.Fatal("retried before the delay")
	}
	h.now += int64(time.Second)
	p.OnTick()
	b1, raw1 := fetchTestBundle(t, "1-a", readPolicy)
	takeCall(t, h).answer(200, raw1, [2]string{"etag", `"` + b1.Hash + `"`})
	takeCall(t, h)

	// The bundle in force keeps serving through errors; delays double.
	h.calls = nil
	p.fetch.inflight = false
	for i, want := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 4 * time.Second} {
		p.fetchBundle()
		takeCall(t, h).answer(503, []byte("no policy bundle yet"))
		if got := decide(p, "/x"); got != "" {
			t.Fatalf("failure %d: the last good bundle stopped serving: %q", i, got)
		}
		// The delay is between half of it and all of it (jitter).
		h.now += int64(want)/2 - 1
		p.OnTick()
		if pending(h) != 0 {
			t.Fatalf("failure %d: retried before %s", i, want/2)
		}
		h.now += int64(want) / 2
		p.OnTick()
		if pending(h) != 1 {
			t.Fatalf("failure %d: not retried after %s", i, want)
		}
		h.calls = nil
		p.fetch.inflight = false
	}

	// Refused bundles: corrupt (hash mismatch), not a bundle, too large.
	tampered := strings.Replace(string(raw1), `"GET"`, `"POST"`, 1)
	for name, body := range map[string][]byte{
		"hash mismatch": []byte(tampered),
		"not JSON":      []byte("<html>"),
		"too large":     []byte(strings.Repeat(" ", 64<<10+1)),
	} {
		p.fetchBundle()
		takeCall(t, h).answer(200, body, [2]string{"etag", `"sha256:refused"`})
		if got := decide(p, "/x"); got != "" {
			t.Fatalf("%s: the last good bundle stopped serving: %q", name, got)
		}
		// The next request waits for another bundle than the refused one.
		c := takeCall(t, h)
		if c.header("if-none-match") != `"sha256:refused"` {
			t.Fatalf("%s: next fetch if-none-match %q", name, c.header("if-none-match"))
		}
		p.fetch.inflight = false
	}
	if n := h.counters[mBundleFetches+".result.refused"]; n != 3 {
		t.Fatalf("refused %d, want 3", n)
	}
	// The control plane goes back to the bundle in force: recognized, not
	// loaded again, and the next request names it.
	p.fetchBundle()
	takeCall(t, h).answer(200, raw1, [2]string{"etag", `"` + b1.Hash + `"`})
	h.now += int64(time.Second)
	p.OnTick()
	if c := takeCall(t, h); c.header("if-none-match") != `"`+b1.Hash+`"` {
		t.Fatalf("back to the bundle in force: next if-none-match %q", c.header("if-none-match"))
	}
	p.fetch.inflight = false
	// Without an ETag a refused bundle waits for the retry delay.
	p.fetch.backoff = 0
	p.fetchBundle()
	takeCall(t, h).answer(200, []byte("{}"))
	if pending(h) != 0 {
		t.Fatal("a refused bundle without ETag was fetched again at once")
	}
}

// TestBundleFetchAcrossConfigurations: a plugin configured anew in the same
// VM (Istio changed the WasmPlugin) starts with the bundle the VM fetched
// last instead of denying until its own first fetch; a plugin that is done
// stops fetching.
func TestBundleFetchAcrossConfigurations(t *testing.T) {
	h := newFakeHost()
	vm := NewVM(h)
	p := vm.NewPlugin()
	if err := p.Configure(fetchingConfig(t, wire.BundleFetch{})); err != nil {
		t.Fatal(err)
	}
	b1, raw1 := fetchTestBundle(t, "1-a", readPolicy)
	takeCall(t, h).answer(200, raw1, [2]string{"etag", `"` + b1.Hash + `"`})
	old := takeCall(t, h)

	p2 := vm.NewPlugin()
	if err := p2.Configure(fetchingConfig(t, wire.BundleFetch{WaitMillis: 5000})); err != nil {
		t.Fatal(err)
	}
	if got := decide(p2, "/x"); got != "" {
		t.Fatalf("new configuration: %q, want the VM's bundle in force", got)
	}
	if c := takeCall(t, h); c.header("if-none-match") != `"`+b1.Hash+`"` || c.header(":path") != "/v1/bundle?wait=5000" {
		t.Fatalf("new configuration's fetch: %v", c.headers)
	}
	p.Done()
	old.answer(304, nil)
	if pending(h) != 0 {
		t.Fatal("a plugin that is done fetched again")
	}

	// Another control plane (cluster) does not inherit the bundle.
	other := fetchingConfig(t, wire.BundleFetch{})
	other = []byte(strings.Replace(string(other), fetchCluster, "outbound|8443||other", 1))
	p3 := vm.NewPlugin()
	if err := p3.Configure(other); err != nil {
		t.Fatal(err)
	}
	if got := decide(p3, "/x"); got != string(policies.ReasonDeniedNoPolicy) {
		t.Fatalf("configuration with another control plane: %q, want %s", got, policies.ReasonDeniedNoPolicy)
	}
}

// TestBundleFetchConfigErrors: every problem of bundleFetch is reported.
func TestBundleFetchConfigErrors(t *testing.T) {
	_, raw := fetchTestBundle(t, "1", readPolicy)
	tests := []struct {
		name string
		fc   wire.FilterConfig
		want []string
	}{
		{name: "bundle and bundleFetch", fc: wire.FilterConfig{Bundle: raw, BundleFetch: &wire.BundleFetch{}, ControlPlane: wire.ControlPlane{Cluster: "c"}},
			want: []string{"bundle and bundleFetch exclude each other"}},
		{name: "neither", fc: wire.FilterConfig{}, want: []string{"bundle (or bundleFetch) is required"}},
		{name: "bounds", fc: wire.FilterConfig{BundleFetch: &wire.BundleFetch{Path: "/b?x=1", WaitMillis: 60001, RetryMillis: 10, MaxRetryMillis: 5, MaxBytes: -1}},
			want: []string{"controlPlane.cluster is required", `bundleFetch.path "/b?x=1"`, "bundleFetch.waitMillis 60001", "bundleFetch.maxRetryMillis 5", "bundleFetch.maxBytes -1"}},
		{name: "relative path", fc: wire.FilterConfig{BundleFetch: &wire.BundleFetch{Path: "v1/bundle"}, ControlPlane: wire.ControlPlane{Cluster: "c"}},
			want: []string{`bundleFetch.path "v1/bundle": must start with /`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data, err := json.Marshal(tt.fc)
			if err != nil {
				t.Fatal(err)
			}
			_, err = ParseConfig(data, Node{})
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}
