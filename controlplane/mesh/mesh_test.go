package mesh

import (
	"strings"
	"testing"
)

const valid = `
apiVersion: meshguard.dev/v1alpha1
kind: Mesh
metadata: {name: shop}
spec:
  trustDomain: example.org
  authz: {address: authz.meshguard.svc, port: 9191, spiffeID: spiffe://example.org/ns/meshguard/sa/authz}
  controlPlane: {address: 127.0.0.1, port: 8443, spiffeID: spiffe://example.org/ns/meshguard/sa/cp}
  wasm: {file: /etc/meshguard/meshguard.wasm}
  workloads:
  - name: web
    namespace: shop
    spiffeID: spiffe://example.org/ns/shop/sa/web
    inbound:
    - name: http
      port: 15006
      appPort: 8080
      routes: [{name: web-root, prefix: /}]
    upstreams:
    - {name: orders, address: orders.shop.svc, port: 15006, spiffeID: spiffe://example.org/ns/shop/sa/orders, listenPort: 9001}
  - name: greeter
    namespace: demo
    spiffeID: spiffe://example.org/ns/demo/sa/greeter
    proxyless: true
    inbound: [{name: grpc, port: 50051}]
`

func TestParseValid(t *testing.T) {
	m, err := Parse([]byte(valid))
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Workloads) != 2 || m.Workloads[0].Key != "greeter.demo" {
		t.Fatalf("workloads = %+v", m.Workloads)
	}
	if m.SPIRESocket != DefaultSPIRESocket || m.BundleSecret != "spiffe://example.org" {
		t.Fatalf("SPIRE defaults: %q %q", m.SPIRESocket, m.BundleSecret)
	}
	if m.Authz.Timeout.String() != "250ms" {
		t.Fatalf("authz timeout = %s", m.Authz.Timeout)
	}
	for _, tc := range []struct{ cluster, id, want string }{
		{"web.shop", "whatever", "web.shop"},
		{"", "greeter.demo", "greeter.demo"},
		{"unknown", "web.shop", "web.shop"},
	} {
		w, ok := m.Lookup(tc.cluster, tc.id)
		if !ok || w.Key != tc.want {
			t.Errorf("Lookup(%q, %q) = %v, %v; want %s", tc.cluster, tc.id, w, ok, tc.want)
		}
	}
	if _, ok := m.Lookup("", "nobody"); ok {
		t.Error("Lookup found a node that is not in the mesh")
	}
}

// TestSharedIdentityInOneNamespace: two Deployments of one service account
// (one SPIFFE ID) that differ in labels are two workloads of the mesh.
func TestSharedIdentityInOneNamespace(t *testing.T) {
	two := strings.Replace(valid, "  - name: greeter", `  - name: web-v2
    namespace: shop
    spiffeID: spiffe://example.org/ns/shop/sa/web
    labels: {app: web, version: v2}
    disableWasm: true
    inbound: [{name: http, port: 15006, appPort: 8080, routes: [{name: web-root, prefix: /}]}]
  - name: greeter`, 1)
	m, err := Parse([]byte(two))
	if err != nil {
		t.Fatal(err)
	}
	v1, _ := m.Lookup("web.shop", "")
	v2, _ := m.Lookup("web-v2.shop", "")
	if v1 == nil || v2 == nil || v1.ID != v2.ID || v2.Labels["version"] != "v2" || !v2.DisableWasm || v1.DisableWasm {
		t.Fatalf("workloads: %+v %+v", v1, v2)
	}
}

func TestParseReportsEveryError(t *testing.T) {
	tests := []struct {
		name  string
		edit  func(string) string
		wants []string
	}{
		{"unknown field", func(s string) string { return strings.Replace(s, "trustDomain:", "trustDomian:", 1) }, []string{"unknown field"}},
		{"several problems at once", func(s string) string {
			s = strings.Replace(s, "spiffe://example.org/ns/shop/sa/web", "spiffe://other.org/ns/shop/sa/web", 1)
			s = strings.Replace(s, "appPort: 8080", "appPort: 15006", 1)
			s = strings.Replace(s, "prefix: /}", "prefix: /, path: /x}", 1)
			return strings.Replace(s, "port: 9191", "port: 0", 1)
		}, []string{"not in trust domain", "port 15006 is also used", "exactly one of prefix and path", "spec.authz.port"}},
		{"SPIFFE ID shared across namespaces", func(s string) string {
			return strings.Replace(s, "spiffe://example.org/ns/demo/sa/greeter", "spiffe://example.org/ns/shop/sa/web", 1)
		}, []string{"also the ID of workload web.shop in another namespace"}},
		{"proxyless without wasm", func(s string) string {
			return strings.Replace(s, "proxyless: true", "proxyless: true\n    disableWasm: true", 1)
		}, []string{"disableWasm"}},
		{"unknown upstream on a route", func(s string) string {
			return strings.Replace(s, "prefix: /}", "prefix: /, upstream: nope}", 1)
		}, []string{`no upstream named "nope"`}},
		{"remote wasm without sha", func(s string) string {
			return strings.Replace(s, "file: /etc/meshguard/meshguard.wasm", "url: https://x.example/m.wasm", 1)
		}, []string{"sha256"}},
		{"route name with control characters", func(s string) string {
			return strings.Replace(s, "name: web-root", `name: "web\nroot"`, 1)
		}, []string{"not a route name"}},
		{"path with a query", func(s string) string { return strings.Replace(s, "prefix: /}", "prefix: \"/a?b\"}", 1) }, []string{"must start with /"}},
		{"upstream service that is no DNS label", func(s string) string {
			return strings.Replace(s, "listenPort: 9001}", "listenPort: 9001, service: Orders.Shop, namespace: shop}", 1)
		}, []string{"upstreams[0].service"}},
		{"wrong kind", func(s string) string { return strings.Replace(s, "kind: Mesh", "kind: Mess", 1) }, []string{"kind"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.edit(valid)))
			if err == nil {
				t.Fatal("invalid mesh accepted")
			}
			for _, w := range tt.wants {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(valid))
	f.Add([]byte("apiVersion: meshguard.dev/v1alpha1\nkind: Mesh\nspec: {workloads: [{name: a}]}"))
	f.Add([]byte("{}"))
	f.Add([]byte("spec: {trustDomain: \"spiffe://x/../y\"}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := Parse(data)
		if err != nil {
			return
		}
		// Anything accepted satisfies the invariants the generator relies on.
		for _, w := range m.Workloads {
			if w.ID.IsZero() || w.ID.TrustDomain() != m.TrustDomain || len(w.Inbound) == 0 {
				t.Fatalf("accepted an invalid workload: %+v", w)
			}
			for _, in := range w.Inbound {
				for _, r := range in.Routes {
					if !routeName.MatchString(r.Name) {
						t.Fatalf("accepted route name %q", r.Name)
					}
				}
			}
		}
	})
}
