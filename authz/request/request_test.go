package request

import (
	"errors"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshguard/meshguard/authz/identity"
	"github.com/meshguard/meshguard/internal/testbed/ca"
	"github.com/meshguard/meshguard/policies/wire"
)

func checkRequest(method, path string, headers map[string]string, principal, cert string, ext map[string]string) *authv3.CheckRequest {
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source:            &authv3.AttributeContext_Peer{Principal: principal, Certificate: cert},
		Destination:       &authv3.AttributeContext_Peer{Principal: "spiffe://prod.example/ns/shop/sa/api"},
		ContextExtensions: ext,
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method: method, Path: path, Headers: headers,
		}},
	}}
}

func TestFromCheck(t *testing.T) {
	r := checkRequest("", "", map[string]string{
		":method": "GET", ":path": "/a?b=c", ":authority": "api:8080",
		"x-meshguard-source-id": "spiffe://prod.example/ns/ops/sa/admin", "x-meshguard-route": "r2",
		"x-forwarded-client-cert": "URI=spiffe://prod.example/x",
	}, "", "", map[string]string{wire.ContextNamespace: "shop", ContextLabelPrefix + "app": "api", wire.ContextService: "api"})
	m, err := FromCheck(r, Options{})
	if err != nil {
		t.Fatal(err)
	}
	a := m.Attrs
	if a.Method != "GET" || a.Path != "/a?b=c" || a.Host != "api:8080" || a.Route != "" {
		t.Errorf("attrs = %+v", a)
	}
	if a.Target.ID.String() != "spiffe://prod.example/ns/shop/sa/api" || a.Target.Namespace != "shop" || a.Target.Labels["app"] != "api" || a.Target.Service != "api" {
		t.Errorf("target = %+v", a.Target)
	}
	if _, ok := a.Headers.Get("x-meshguard-source-id"); ok {
		t.Error("engine sees a client-sent x-meshguard header")
	}
	if len(m.Remove) != 2 {
		t.Errorf("remove = %v", m.Remove)
	}
	if _, ok := a.Headers.Get("x-forwarded-client-cert"); !ok {
		t.Error("XFCC hidden before the resolver decided")
	}
	m.Headers.HideXFCC()
	if _, ok := a.Headers.Get("x-forwarded-client-cert"); ok {
		t.Error("HideXFCC did not hide XFCC")
	}
	m, _ = FromCheck(r, Options{TrustRouteHeader: true})
	if m.Attrs.Route != "r2" {
		t.Errorf("trusted route header not read: %q", m.Attrs.Route)
	}
	if _, err := FromCheck(checkRequest("GET", "/", nil, "", "", map[string]string{wire.ContextWorkload: "not an id"}), Options{}); err == nil {
		t.Error("invalid workload context extension accepted")
	}
}

// TestTargetLabelSources: the target's labels come from the proxy's
// configuration only (the control plane's context extensions, or Envoy's own
// node metadata in destination.labels), and the target is resolved only
// when that configuration says its labels are complete.
func TestTargetLabelSources(t *testing.T) {
	cp := map[string]string{wire.ContextNamespace: "shop", wire.ContextService: "api", wire.ContextResolved: "true",
		ContextLabelPrefix + "app": "api", ContextLabelPrefix + "version": "v2"}
	tests := []struct {
		name         string
		ext, dest    map[string]string
		headers      map[string]string
		wantLabels   map[string]string
		wantResolved bool
		wantGateway  string
	}{
		{name: "control plane route", ext: cp, wantLabels: map[string]string{"app": "api", "version": "v2"}, wantResolved: true},
		{name: "control plane route of a workload without labels",
			ext: map[string]string{wire.ContextNamespace: "shop", wire.ContextResolved: "true"}, wantResolved: true},
		{name: "labels without the resolved mark are taken as given",
			ext: map[string]string{ContextLabelPrefix + "app": "api"}, wantLabels: map[string]string{"app": "api"}},
		{name: "Istio sidecar: node metadata labels", dest: map[string]string{"app": "api", "version": "v1"},
			wantLabels: map[string]string{"app": "api", "version": "v1"}, wantResolved: true},
		{name: "Istio gateway: targetRefs by the gateway-name label",
			dest:       map[string]string{"app": "gw", GatewayNameLabel: "public"},
			wantLabels: map[string]string{"app": "gw", GatewayNameLabel: "public"}, wantResolved: true, wantGateway: "public"},
		{name: "route labels override node labels", ext: map[string]string{ContextLabelPrefix + "version": "v3"},
			dest: map[string]string{"app": "api", "version": "v1"}, wantLabels: map[string]string{"app": "api", "version": "v3"}, wantResolved: true},
		{name: "nothing: unknown"},
		{name: "client headers are not labels", headers: map[string]string{
			ContextHeaderPrefix + wire.ContextLabelPrefix + "app": "api", ContextHeaderPrefix + wire.ContextResolved: "true",
			wire.ContextLabelPrefix + "app": "api", "x-meshguard-label-app": "api",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := map[string]string{":method": "GET", ":path": "/"}
			for k, v := range tt.headers {
				h[k] = v
			}
			r := checkRequest("", "", h, "", "", tt.ext)
			r.Attributes.Destination.Labels = tt.dest
			m, err := FromCheck(r, Options{TrustRouteHeader: true})
			if err != nil {
				t.Fatal(err)
			}
			got := m.Attrs.Target
			if len(got.Labels) != len(tt.wantLabels) || got.Resolved != tt.wantResolved || got.Gateway != tt.wantGateway {
				t.Fatalf("target %+v, want labels %v resolved %v gateway %q", got, tt.wantLabels, tt.wantResolved, tt.wantGateway)
			}
			for k, v := range tt.wantLabels {
				if got.Labels[k] != v {
					t.Errorf("label %s = %q, want %q", k, got.Labels[k], v)
				}
			}
		})
	}
	// HTTP mode: only with --http-trust-context-headers (Envoy's
	// headers_to_add overrides client values of those names).
	req := httptest.NewRequest("GET", "/x", nil)
	req.Header.Set(ContextHeaderPrefix+wire.ContextLabelPrefix+"app", "api")
	req.Header.Set(ContextHeaderPrefix+wire.ContextResolved, "true")
	m, _ := FromHTTP(req, "", spiffeid.ID{}, Options{})
	if m.Attrs.Target.Resolved || len(m.Attrs.Target.Labels) != 0 {
		t.Errorf("untrusted context headers made the target %+v", m.Attrs.Target)
	}
	m, _ = FromHTTP(req, "", spiffeid.ID{}, Options{TrustContextHeaders: true})
	if !m.Attrs.Target.Resolved || m.Attrs.Target.Labels["app"] != "api" {
		t.Errorf("trusted context headers: target %+v", m.Attrs.Target)
	}
}

func TestFromHTTPIgnoresContextHeadersUnlessTrusted(t *testing.T) {
	req := httptest.NewRequest("GET", "/p/x", nil)
	req.Header.Set(ContextHeaderPrefix+wire.ContextRoute, "legacy")
	m, err := FromHTTP(req, "/p", spiffeid.ID{}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if m.Attrs.Route != "" || m.Attrs.Path != "/x" {
		t.Errorf("untrusted context header used: %+v", m.Attrs)
	}
	m, _ = FromHTTP(req, "/p", spiffeid.ID{}, Options{TrustContextHeaders: true})
	if m.Attrs.Route != "legacy" {
		t.Errorf("trusted context header not used: %+v", m.Attrs)
	}
}

// Header names that are not HTTP tokens never come from Envoy; a request
// carrying one is refused, so that no case folding of invalid bytes can move
// a name out of the x-meshguard- prefix check.
func TestFromCheckRejectsInvalidHeaderNames(t *testing.T) {
	for _, name := range []string{"x-meshguard-\xff", "x-meshguard-source-id\x00", "x meshguard", "", ":", "x-meshguard-\u0130d"} {
		r := checkRequest("GET", "/", map[string]string{name: "v", ":authority": "h"}, "", "", nil)
		if _, err := FromCheck(r, Options{}); !errors.Is(err, ErrInvalid) {
			t.Errorf("header name %q: err = %v, want ErrInvalid", name, err)
		}
	}
	r := checkRequest("GET", "/", map[string]string{"X-Custom_Name.v2~": "v", ":authority": "h"}, "", "", nil)
	if _, err := FromCheck(r, Options{}); err != nil {
		t.Errorf("valid token refused: %v", err)
	}
}

// FuzzFromCheck maps arbitrary CheckRequests and resolves their identity:
// never a panic, never a client-sent x-meshguard header visible to the
// engine or left in place, and never an identity outside the trusted
// trust domain.
func FuzzFromCheck(f *testing.F) {
	f.Add("GET", "/api?x=1", "x-meshguard-source-id", "spiffe://prod.example/a", "spiffe://prod.example/ns/web/sa/frontend", "", "r1", "")
	f.Add("POST", "/", "x-forwarded-client-cert", "By=spiffe://prod.example/gw;URI=spiffe://prod.example/a", "spiffe://prod.example/gw", "", "", "spiffe://prod.example/ns/x/sa/y")
	f.Add("GET", "/", "authorization", "Bearer eyJhbGciOiJub25lIn0.e30.", "", "", "", "")
	f.Add("", "", "X-MeshGuard-Route", "\xff", "spiffe://evil.example/a", "-----BEGIN%20CERTIFICATE-----%0A", "", "spiffe://")
	f.Add("GET", "/x", "x-big", strings.Repeat("a", 1000), "frontend.example.com", "%zz", "", "")
	f.Add("GET", "/", "x-meshguard-\xff", "v", "", "", "", "")
	c, err := ca.New(spiffeid.RequireTrustDomainFromString("prod.example"))
	if err != nil {
		f.Fatal(err)
	}
	res, err := identity.New(identity.Config{
		Bundles:      spiffebundle.NewSet(c.Bundle()),
		TrustedHops:  []spiffeid.ID{spiffeid.RequireFromString("spiffe://prod.example/gw")},
		JWTAudiences: []string{"a"},
		Now:          func() time.Time { return time.Unix(1_800_000_000, 0) },
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, method, path, hk, hv, principal, cert, route, workload string) {
		r := checkRequest(method, path, map[string]string{hk: hv, ":authority": "h"}, principal, cert,
			map[string]string{wire.ContextRoute: route, wire.ContextWorkload: workload})
		m, err := FromCheck(r, Options{TrustRouteHeader: true})
		if err != nil {
			return
		}
		if m.Attrs.Method == "" || m.Attrs.Path == "" {
			t.Fatal("mapped a request without method or path")
		}
		lk := strings.ToLower(hk)
		if strings.HasPrefix(lk, wire.HeaderPrefix) {
			if _, ok := m.Attrs.Headers.Get(lk); ok {
				t.Fatalf("engine sees %q", lk)
			}
			found := false
			for _, h := range m.Remove {
				found = found || h == lk
			}
			if !found {
				t.Fatalf("%q not removed (remove=%v)", lk, m.Remove)
			}
		}
		id, err := res.Resolve(m.Identity)
		if err != nil {
			return
		}
		if !id.ID.IsZero() && id.ID.TrustDomain().Name() != "prod.example" {
			t.Fatalf("identity %s from an untrusted trust domain", id.ID)
		}
		if id.Method == identity.MethodXFCC && id.Peer.String() != "spiffe://prod.example/gw" {
			t.Fatalf("XFCC believed from %s", id.Peer)
		}
		for _, x := range []spiffeid.ID{id.Peer, id.ForwardedClient, id.ID} {
			if !x.IsZero() && x.Path() == "" {
				t.Fatalf("trust domain ID %s taken for a workload", x)
			}
		}
		if !id.ForwardedClient.IsZero() && id.Peer.String() != "spiffe://prod.example/gw" {
			t.Fatalf("forwarded client %s from peer %s, not the trusted hop", id.ForwardedClient, id.Peer)
		}
	})
}

func headerMapRequest(entries [][2]string) *authv3.CheckRequest {
	hm := &corev3.HeaderMap{}
	for _, e := range entries {
		hm.Headers = append(hm.Headers, &corev3.HeaderValue{Key: e[0], Value: e[1]})
	}
	r := checkRequest("GET", "/", nil, "", "", nil)
	r.Attributes.Request.Http.HeaderMap = hm
	return r
}

// referenceJoin is Envoy's join, written the obvious way.
func referenceJoin(entries [][2]string) map[string]string {
	out := map[string]string{}
	for _, e := range entries {
		k := strings.ToLower(e[0])
		if prev, ok := out[k]; ok {
			out[k] = prev + "," + e[1]
		} else {
			out[k] = e[1]
		}
	}
	return out
}

// A header repeated 150,000 times is refused by its size before anything
// is joined, and joining many duplicates under the limit costs their size,
// not its square (measured as bytes allocated, which quadratic joining
// multiplies by thousands).
func TestHeaderMapDuplicatesAreBounded(t *testing.T) {
	many := make([][2]string, 150_000)
	for i := range many {
		many[i] = [2]string{"x-a", "b"}
	}
	if _, err := FromCheck(headerMapRequest(many), Options{}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("150,000 duplicates: err = %v, want ErrInvalid", err)
	}
	empty := make([][2]string, 150_000)
	for i := range empty {
		empty[i] = [2]string{"x-a", ""}
	}
	if _, err := FromCheck(headerMapRequest(empty), Options{}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("150,000 empty duplicates: err = %v, want ErrInvalid", err)
	}

	const n = 40_000 // 40,000 × len("x-a"+"bb"+1) = 240,000 bytes: under the limit
	dups := make([][2]string, n)
	for i := range dups {
		dups[i] = [2]string{"X-A", "bb"}
	}
	r := headerMapRequest(dups)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	m, err := FromCheck(r, Options{})
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := m.Headers.Get("x-a"); len(v) != 3*n-1 || !strings.HasPrefix(v, "bb,bb,") {
		t.Fatalf("joined value of %d bytes, want %d", len(v), 3*n-1)
	}
	if got, limit := after.TotalAlloc-before.TotalAlloc, uint64(64*3*n); got > limit {
		t.Errorf("joining %d duplicates allocated %d bytes, more than %d: not linear", n, got, limit)
	}
}

// FuzzJoinHeaderMap holds the linear join to Envoy's order-preserving
// comma join, and to the size limit.
func FuzzJoinHeaderMap(f *testing.F) {
	f.Add("x-a", "1", "X-A", "2", "x-b", "", uint8(3))
	f.Add("authorization", "Bearer a", "Authorization", "Bearer b", "host", "h", uint8(1))
	f.Add("x", strings.Repeat("v", 4096), "y", "", "X", "w", uint8(200))
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2, k3, v3 string, rep uint8) {
		var entries [][2]string
		for i := 0; i < int(rep)%64+1; i++ {
			entries = append(entries, [2]string{k1, v1}, [2]string{k2, v2}, [2]string{k3, v3})
		}
		size := 0
		valid := true
		for _, e := range entries {
			size += len(e[0]) + len(e[1]) + 1
			if _, ok := scanName(e[0]); !ok {
				valid = false
			}
		}
		got, err := joinHeaderMap(&corev3.HeaderMap{Headers: func() []*corev3.HeaderValue {
			var hs []*corev3.HeaderValue
			for _, e := range entries {
				hs = append(hs, &corev3.HeaderValue{Key: e[0], Value: e[1]})
			}
			return hs
		}()})
		if !valid || size > MaxHeaderBytes {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("invalid or oversized (%d bytes) header map accepted", size)
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		want := referenceJoin(entries)
		if len(got) != len(want) {
			t.Fatalf("%d names, want %d", len(got), len(want))
		}
		for k, v := range want {
			if got[k] != v {
				t.Fatalf("%q = %q, want %q", k, got[k], v)
			}
		}
	})
}
