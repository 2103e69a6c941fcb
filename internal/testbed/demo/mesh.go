package demo

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	meshdesc "github.com/meshguard/meshguard/controlplane/mesh"
	"github.com/meshguard/meshguard/internal/testbed/envoyemu"
	"github.com/meshguard/meshguard/policies/wire"
)

// workloadSpec is one workload of the demo mesh: the bookstore and payments
// mesh of the example policies (examples/policies).
type workloadSpec struct {
	Name      string
	Namespace string
	SA        string
	// Routes of the inbound listener; nil for a client-only workload (the
	// ingress gateway, the support tool, Prometheus), which has no sidecar.
	Routes []routeSpec
	// Upstreams are the workloads it calls through its sidecar (an
	// outbound listener each): the attacker's lateral movement goes there.
	Upstreams []string
}

type routeSpec struct{ Name, Prefix string }

func (w workloadSpec) id(td spiffeid.TrustDomain) spiffeid.ID {
	return spiffeid.RequireFromPath(td, "/ns/"+w.Namespace+"/sa/"+w.SA)
}

// Service is the host callers address, as Kubernetes names it.
func (w workloadSpec) Service() string { return w.Name + "." + w.Namespace + ".svc.cluster.local" }

var demoWorkloads = []workloadSpec{
	{Name: "istio-ingressgateway", Namespace: "istio-system", SA: "istio-ingressgateway-service-account"},
	{Name: "support", Namespace: "backoffice", SA: "support"},
	{Name: "prometheus", Namespace: "monitoring", SA: "prometheus"},
	{Name: "frontend", Namespace: "bookstore", SA: "frontend", Routes: []routeSpec{{"frontend", "/"}}},
	{Name: "catalog", Namespace: "bookstore", SA: "catalog", Routes: []routeSpec{{"catalog", "/"}}},
	{Name: "reviews", Namespace: "bookstore", SA: "reviews", Routes: []routeSpec{{"reviews", "/"}},
		Upstreams: []string{"orders", "payments-api", "ledger", "frontend"}},
	{Name: "orders", Namespace: "bookstore", SA: "orders", Routes: []routeSpec{{"orders", "/"}}},
	{Name: "payments-api", Namespace: "payments", SA: "payments-api", Routes: []routeSpec{
		{"payments-charges", "/v1/charges"}, {"payments-refunds", "/v1/refunds"}, {"payments-api", "/"},
	}},
	{Name: "ledger", Namespace: "payments", SA: "ledger", Routes: []routeSpec{{"ledger", "/"}}},
}

// meshDescription is the demo mesh as a user describes it to the control
// plane (controlplane/mesh): each workload with a sidecar, its labels, its
// inbound port, its application's port and its routes. Everything the
// sidecars run — listeners, routes with their ext_authz context
// extensions, clusters, the filters — is what the control plane generates
// from it.
func meshDescription(authzAddr, eventsAddr, wasmFile string, nodes map[string]*node) (*meshdesc.Mesh, error) {
	host := func(addr string) (string, uint32) {
		h, p, _ := net.SplitHostPort(addr)
		n, _ := strconv.ParseUint(p, 10, 16)
		return h, uint32(n)
	}
	ah, ap := host(authzAddr)
	eh, ep := host(eventsAddr)
	f := meshdesc.File{APIVersion: meshdesc.APIVersion, Kind: meshdesc.Kind, Metadata: meshdesc.Metadata{Name: "demo"},
		Spec: meshdesc.Spec{
			TrustDomain:  trustDomain.Name(),
			Authz:        meshdesc.Endpoint{Address: ah, Port: ap, SPIFFEID: authzID.String(), Timeout: "1s"},
			ControlPlane: meshdesc.Endpoint{Address: eh, Port: ep, SPIFFEID: controlPlaneID.String()},
			Wasm:         meshdesc.Wasm{File: wasmFile, RequireMTLS: true},
		}}
	for _, w := range demoWorkloads {
		n := nodes[w.Name]
		if n == nil || len(w.Routes) == 0 {
			continue
		}
		wl := meshdesc.Workload{Name: w.Name, Namespace: w.Namespace, SPIFFEID: n.id.String(),
			Labels: map[string]string{"app": w.Name}, Service: w.Name,
			Inbound: []meshdesc.Inbound{{Name: "http", Port: n.inboundPort, AppPort: n.appPort}}}
		for _, r := range w.Routes {
			wl.Inbound[0].Routes = append(wl.Inbound[0].Routes, meshdesc.Route{Name: r.Name, Prefix: r.Prefix})
		}
		for _, u := range w.Upstreams {
			to := nodes[u]
			wl.Upstreams = append(wl.Upstreams, meshdesc.Upstream{Name: u, Address: "127.0.0.1", Port: to.inboundPort,
				SPIFFEID: to.id.String(), ListenPort: n.outPorts[u]})
		}
		f.Spec.Workloads = append(f.Spec.Workloads, wl)
	}
	return f.Validate()
}

// node is one running workload: its app, its proxy and its outbound
// clients.
type node struct {
	spec    workloadSpec
	id      spiffeid.ID
	svids   x509svid.Source
	app     *http.Server
	proxy   *envoyemu.Proxy
	inbound string // the proxy's inbound listener address
	// inboundPort and appPort are the ports the mesh description gives,
	// outPorts the outbound listeners' (by upstream).
	inboundPort, appPort uint32
	outPorts             map[string]uint32
	// outbound are the proxy's outbound listener addresses, by upstream.
	outbound map[string]string
	closers  []func()
}

// startApp starts the workload's application on loopback. It answers like a
// small REST service: known paths 200 (201 for POST), /login 401 without a
// valid session, everything else 404 — so that scanning shows up as 404s
// and credential probing as 401s.
func startApp(name string) (*http.Server, *url.URL, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, fmt.Errorf("app %s: %w", name, err)
	}
	known := []string{"/", "/books/", "/cart", "/checkout", "/static/", "/api/", "/v1/", "/metrics", "/stats/prometheus"}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("content-type", "application/json")
		switch {
		case r.URL.Path == "/login" || strings.HasSuffix(r.URL.Path, "/login"):
			w.WriteHeader(http.StatusUnauthorized)
			_ = json.NewEncoder(w).Encode(map[string]string{"error": "invalid credentials"})
			return
		}
		for _, k := range known {
			if r.URL.Path == k || (strings.HasSuffix(k, "/") && strings.HasPrefix(r.URL.Path, k) && !strings.Contains(r.URL.Path, ".")) {
				status := http.StatusOK
				if r.Method == http.MethodPost {
					status = http.StatusCreated
				}
				w.WriteHeader(status)
				_ = json.NewEncoder(w).Encode(map[string]string{"service": name, "path": r.URL.Path,
					"caller": r.Header.Get(wire.HeaderSourceID)})
				return
			}
		}
		w.WriteHeader(http.StatusNotFound)
		_ = json.NewEncoder(w).Encode(map[string]string{"error": "not found"})
	})
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(l) }()
	return srv, &url.URL{Scheme: "http", Host: l.Addr().String()}, nil
}

func (n *node) close(ctx context.Context) {
	if n.proxy != nil {
		_ = n.proxy.Close(ctx)
	}
	if n.app != nil {
		_ = n.app.Close()
	}
	for i := len(n.closers) - 1; i >= 0; i-- {
		n.closers[i]()
	}
}
