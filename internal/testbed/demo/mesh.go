package demo

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

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
	{Name: "reviews", Namespace: "bookstore", SA: "reviews", Routes: []routeSpec{{"reviews", "/"}}},
	{Name: "orders", Namespace: "bookstore", SA: "orders", Routes: []routeSpec{{"orders", "/"}}},
	{Name: "payments-api", Namespace: "payments", SA: "payments-api", Routes: []routeSpec{
		{"payments-charges", "/v1/charges"}, {"payments-refunds", "/v1/refunds"}, {"payments-api", "/"},
	}},
	{Name: "ledger", Namespace: "payments", SA: "ledger", Routes: []routeSpec{{"ledger", "/"}}},
}

// routes builds the sidecar's route table with the context extensions the
// control plane sets on each route's ExtAuthzPerRoute.
func (w workloadSpec) routes(id spiffeid.ID) []envoyemu.Route {
	out := make([]envoyemu.Route, 0, len(w.Routes))
	for _, r := range w.Routes {
		out = append(out, envoyemu.Route{Name: r.Name, Prefix: r.Prefix, ContextExtensions: map[string]string{
			wire.ContextRoute:     r.Name,
			wire.ContextNamespace: w.Namespace,
			wire.ContextService:   w.Service(),
			wire.ContextWorkload:  id.String(),
			"meshguard.label.app": w.Name,
		}})
	}
	return out
}

// node is one running workload: its app, its sidecar and its outbound
// clients.
type node struct {
	spec    workloadSpec
	id      spiffeid.ID
	svids   x509svid.Source
	app     *http.Server
	sidecar *envoyemu.Sidecar
	filter  *envoyemu.WasmFilter
	closers []func()
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
	if n.sidecar != nil {
		_ = n.sidecar.Close(ctx)
	}
	if n.app != nil {
		_ = n.app.Close()
	}
	for i := len(n.closers) - 1; i >= 0; i-- {
		n.closers[i]()
	}
}
