package envoyemu

import (
	"context"
	"encoding/json"
	"net"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/meshguard/meshguard/controlplane/mesh"
	"github.com/meshguard/meshguard/controlplane/xdsserver"
	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/source"
	"github.com/meshguard/meshguard/policies/wire"
)

const testMesh = `apiVersion: meshguard.dev/v1alpha1
kind: Mesh
metadata: {name: t}
spec:
  trustDomain: cluster.local
  authz: {address: 127.0.0.1, port: 9191, spiffeID: spiffe://cluster.local/ns/meshguard/sa/authz}
  controlPlane: {address: 127.0.0.1, port: 8443, spiffeID: spiffe://cluster.local/ns/meshguard/sa/controlplane}
  wasm: {file: /tmp/meshguard-filter.wasm, requireMtls: true}
  workloads:
  - name: catalog
    namespace: bookstore
    spiffeID: spiffe://cluster.local/ns/bookstore/sa/catalog
    labels: {app: catalog}
    inbound:
    - name: http
      port: 15006
      appPort: 8080
      routes:
      - {name: catalog, prefix: /}
`

const testPolicy = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: catalog, namespace: bookstore}
spec:
  selector: {matchLabels: {app: catalog}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/bookstore/sa/frontend"]}}]
`

// TestECDSClientAgainstControlPlane subscribes the emulated sidecar's ECDS
// client to the real control plane xDS server (plaintext gRPC on loopback:
// transport security is not what this test is about), asking as Envoy does
// for the filter's config by name alone, and checks that it receives the
// wasm filter configuration with its workload, ACKs it, and gets the next
// version after a policy change.
func TestECDSClientAgainstControlPlane(t *testing.T) {
	m, err := mesh.Parse([]byte(testMesh))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	xs, err := xdsserver.New(ctx, xdsserver.Options{Mesh: m})
	if err != nil {
		t.Fatal(err)
	}
	publish := func(version, extra string) {
		set, diags := source.Parse("p.yaml", []byte(testPolicy+extra))
		if err := diags.Err(); err != nil {
			t.Fatalf("%v", err)
		}
		b, _, err := policies.NewBundle(version, set)
		if err != nil {
			t.Fatal(err)
		}
		if err := xs.Publish(b); err != nil {
			t.Fatal(err)
		}
	}
	publish("v1", "")
	gs := grpc.NewServer()
	xs.Register(gs)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(l) }()
	t.Cleanup(gs.Stop)
	cc, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })

	got := make(chan wire.FilterConfig, 4)
	c := &ECDSClient{Conn: cc, Node: &corev3.Node{Id: "catalog-1", Cluster: "catalog.bookstore"},
		Apply: func(cfg []byte) error {
			var fc wire.FilterConfig
			if err := json.Unmarshal(cfg, &fc); err != nil {
				return err
			}
			got <- fc
			return nil
		}}
	done := make(chan struct{})
	go func() { defer close(done); _ = c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	next := func() (wire.FilterConfig, *policies.Bundle) {
		t.Helper()
		select {
		case fc := <-got:
			b, err := policies.DecodeBundle(fc.Bundle)
			if err != nil {
				t.Fatal(err)
			}
			return fc, b
		case <-time.After(10 * time.Second):
			t.Fatal("no ECDS update")
		}
		return wire.FilterConfig{}, nil
	}
	fc, b := next()
	if w := fc.Workloads[c.Node.Cluster]; w.ID != "spiffe://cluster.local/ns/bookstore/sa/catalog" || w.Labels["app"] != "catalog" || !fc.RequireMTLS {
		t.Errorf("filter config does not describe the node's workload: %+v", fc.Workloads)
	}
	if b.Version != "v1" {
		t.Errorf("bundle version %q", b.Version)
	}
	publish("v2", "---\n"+`apiVersion: meshguard.dev/v1alpha1
kind: DefaultDeny
metadata: {name: dd, namespace: bookstore}
spec: {}
`)
	if _, b := next(); b.Version != "v2" || len(b.Set.DefaultDenies) != 1 {
		t.Errorf("second update: version %q, %d default denies", b.Version, len(b.Set.DefaultDenies))
	}
}
