package filtercore

import (
	"strings"
	"testing"
	"time"

	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/source"
	"github.com/meshguard/meshguard/policies/wire"
	"github.com/meshguard/meshguard/wasm/internal/scenario"
)

// FuzzParseConfig: any plugin configuration either fails cleanly or yields
// a usable configuration; nothing panics.
func FuzzParseConfig(f *testing.F) {
	good := scenario.Config(f, scenario.Options{})
	f.Add(good)
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"bundle":null}`))
	f.Add([]byte(`{"bundle":{"format":"meshguard.dev/bundle/v1","version":"x","hash":"","set":{}}}`))
	f.Add([]byte(`{"bundle":{},"detection":{"capacity":-1,"maxEvents":99999999}}`))
	f.Add([]byte(strings.Replace(string(good), `"tickMillis":200`, `"tickMillis":0,"path":"events"`, 1)))
	f.Add([]byte(`{"bundleFetch":{"path":"/v1/bundle","waitMillis":20000},"controlPlane":{"cluster":"cp"}}`))
	f.Add([]byte(`{"bundleFetch":{"path":"/b?x","maxBytes":-1,"retryMillis":5,"maxRetryMillis":1},"controlPlane":{"cluster":""}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := ParseConfig(data, Node{})
		if err != nil {
			if cfg != nil {
				t.Fatal("config returned with an error")
			}
			return
		}
		if cfg.path == "" || cfg.path[0] != '/' || cfg.maxEvents <= 0 || cfg.maxBatch <= 0 {
			t.Fatalf("accepted an unusable configuration: %+v", cfg)
		}
		if fc := cfg.fetch; fc == nil {
			if cfg.snap == nil || cfg.detect == nil {
				t.Fatalf("accepted a configuration without a bundle: %+v", cfg)
			}
		} else if cfg.snap != nil || cfg.cluster == "" || fc.path == "" || fc.path[0] != '/' || strings.ContainsAny(fc.path, "?# ") ||
			fc.waitMillis == 0 || fc.waitMillis > wire.MaxBundleWaitMillis || fc.maxBytes <= 0 || fc.maxBytes > wire.MaxBundleMaxBytes ||
			fc.retryMillis == 0 || fc.maxRetryMillis < fc.retryMillis {
			t.Fatalf("accepted an unusable bundleFetch: %+v %+v", cfg, fc)
		}
	})
}

// FuzzBundleResponse: whatever the control plane's bundle endpoint answers,
// a filter that fetches its bundle keeps one request at most in flight,
// and either keeps the bundle in force or enforces one that decoded,
// matched its hash and compiled.
func FuzzBundleResponse(f *testing.F) {
	set, diags := source.Parse("p.yaml", []byte(readPolicy))
	if err := diags.Err(); err != nil {
		f.Fatal(err)
	}
	b, _, err := policies.NewBundle("1", set)
	if err != nil {
		f.Fatal(err)
	}
	raw, err := b.Encode()
	if err != nil {
		f.Fatal(err)
	}
	cfg := []byte(`{"bundleFetch":{"maxBytes":65536},"controlPlane":{"cluster":"cp"},"workload":{"namespace":"shop"}}`)
	f.Add(200, raw, `"`+b.Hash+`"`)
	f.Add(304, []byte(nil), `"`+b.Hash+`"`)
	f.Add(200, []byte(`{"format":"meshguard.dev/bundle/v1","version":"2","hash":"sha256:00","set":{}}`), `W/"x"`)
	f.Add(0, []byte("x"), "")
	f.Add(503, []byte("no policy bundle yet"), "")
	f.Fuzz(func(t *testing.T, status int, body []byte, etag string) {
		h := newFakeHost()
		p := NewVM(h).NewPlugin()
		if err := p.Configure(cfg); err != nil {
			t.Fatal(err)
		}
		for round := 0; round < 3; round++ {
			if n := pending(h); n > 1 {
				t.Fatalf("%d requests in flight", n)
			}
			if len(h.calls) == 0 {
				h.now += int64(time.Minute)
				p.OnTick()
				continue
			}
			c := h.calls[0]
			h.calls = nil
			var hdrs [][2]string
			if etag != "" {
				hdrs = append(hdrs, [2]string{"etag", etag})
			}
			before := p.cfg.snap
			c.answer(status, body, hdrs...)
			if after := p.cfg.snap; after != before {
				if after == nil {
					t.Fatal("a response took the bundle away")
				}
				if _, err := policies.DecodeBundle(body); err != nil {
					t.Fatalf("installed a bundle that does not decode: %v", err)
				}
			}
		}
	})
}

// FuzzRequest: whatever headers and connection properties arrive, the
// filter answers, and a request it lets through carries no client-sent
// x-meshguard-* header, only the three it stamps, once each.
func FuzzRequest(f *testing.F) {
	f.Add(scenario.Web, "GET", "/api/orders/1", "orders", "orders-api", "x-meshguard-route", "forged", "10.0.0.1:1", byte(1))
	f.Add("spiffe://mesh.test/../x", "TRACE", "//..//", "169.254.169.254", "", "X-MESHGUARD-POLICY", "p", "::1", byte(0))
	f.Add("", "", "", "", "orders-admin", "x-meshguard-", "", "garbage", byte(7))
	h := newFakeHost()
	vm := NewVM(h)
	p := vm.NewPlugin()
	if err := p.Configure(scenario.Config(f, scenario.Options{})); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, san, method, path, authority, route, hname, hval, src string, mtls byte) {
		h.now += 1e7
		s := &fakeStream{props: map[string][]byte{
			"connection.uri_san_peer_certificate": []byte(san),
			"connection.mtls":                     {mtls},
			"source.address":                      []byte(src),
			"xds.route_name":                      []byte(route),
		}}
		s.req = [][2]string{{":method", method}, {":path", path}, {":authority", authority}, {strings.ToLower(hname), hval}}
		var st StreamState
		if !p.OnRequestHeaders(s, &st) {
			if s.local == nil || (s.local.Status != 403 && s.local.Status != 429) {
				t.Fatalf("stopped without a 403/429: %+v", s.local)
			}
			return
		}
		counts := map[string]int{}
		for _, kv := range s.req {
			if strings.HasPrefix(strings.ToLower(kv[0]), wire.HeaderPrefix) {
				counts[kv[0]]++
			}
		}
		if len(counts) != 3 || counts[wire.HeaderRoute] != 1 || counts[wire.HeaderPolicyRef] != 1 || counts[wire.HeaderBundleVersion] != 1 {
			t.Fatalf("meshguard headers after the filter: %v", counts)
		}
		s.resp = [][2]string{{":status", "404"}}
		p.OnResponseHeaders(s, &st)
	})
}

// FuzzOutboundRequest: whatever the listener's direction, the route's
// cluster and the headers, the filter answers; a request it lets out of
// the pod carries no x-meshguard-* header at all.
func FuzzOutboundRequest(f *testing.F) {
	f.Add([]byte{2, 0, 0, 0, 0, 0, 0, 0}, "outbound|9080||reviews.default.svc.cluster.local", "GET", "/", "x-meshguard-route", "forged")
	f.Add([]byte{1, 0, 0, 0, 0, 0, 0, 0}, "outbound|payments", "POST", "/v1/charges", "x-request-id", "1")
	f.Add([]byte{2}, "outbound|||", "", "", "X-MESHGUARD-", "")
	f.Add([]byte{2, 0, 0, 0, 0, 0, 0, 0}, "outbound|443||kubernetes.default.svc.", "GET", "/api", "host", "x")
	h := newFakeHost()
	p := NewVM(h).NewPlugin()
	cfg := scenario.Config(f, scenario.Options{Direction: wire.DirectionListener, EnumerationResponse: "block"})
	if err := p.Configure(cfg); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, dir []byte, cluster, method, path, hname, hval string) {
		h.now += 1e7
		s := &fakeStream{props: map[string][]byte{
			"listener_direction": dir,
			"xds.cluster_name":   []byte(cluster),
			"xds.route_name":     []byte("outbound"),
			"source.address":     []byte("127.0.0.1:5000"),
		}}
		s.req = [][2]string{{":method", method}, {":path", path}, {":authority", "x"}, {strings.ToLower(hname), hval}}
		var st StreamState
		if !p.OnRequestHeaders(s, &st) {
			if s.local == nil || (s.local.Status != 403 && s.local.Status != 429) {
				t.Fatalf("stopped without a 403/429: %+v", s.local)
			}
			return
		}
		if !st.outbound {
			return // the inbound side: FuzzRequest covers it
		}
		for _, kv := range s.req {
			if strings.HasPrefix(strings.ToLower(kv[0]), wire.HeaderPrefix) {
				t.Fatalf("%s left the pod", kv[0])
			}
		}
		s.resp = [][2]string{{":status", "403"}}
		p.OnResponseHeaders(s, &st)
	})
}
