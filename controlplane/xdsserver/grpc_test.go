package xdsserver

import (
	"context"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	xdscreds "google.golang.org/grpc/credentials/xds"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	grpcxds "google.golang.org/grpc/xds"

	"github.com/meshguard/meshguard/controlplane/mesh"
	"github.com/meshguard/meshguard/controlplane/store"
	"github.com/meshguard/meshguard/controlplane/xds"
	"github.com/meshguard/meshguard/internal/testbed/ca"
	"github.com/meshguard/meshguard/policies"
)

// TestProxylessGRPCEnforcesRBAC runs a real grpc-go xDS server (an
// independent xDS consumer that enforces Envoy RBAC filters). It gets its
// listener — mTLS through the bootstrap's file_watcher certificate provider,
// RBAC compiled from meshguard policies — from the control plane over ADS,
// and real RPCs from clients holding different SPIFFE certificates are
// allowed or denied. A quarantine pushed through the policy store then
// denies an identity that was allowed.
func TestProxylessGRPCEnforcesRBAC(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	authority, err := ca.New(td)
	if err != nil {
		t.Fatal(err)
	}
	serverID := spiffeid.RequireFromPath(td, "/ns/demo/sa/greeter")
	allowedID := spiffeid.RequireFromPath(td, "/ns/demo/sa/client")
	otherID := spiffeid.RequireFromPath(td, "/ns/demo/sa/intruder")

	// The gRPC server's listening socket comes first: its address names
	// the listener resource.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := lis.Addr().(*net.TCPAddr).Port
	m, err := mesh.Parse([]byte(fmt.Sprintf(`
apiVersion: meshguard.dev/v1alpha1
kind: Mesh
metadata: {name: grpc}
spec:
  trustDomain: example.org
  authz: {address: 127.0.0.1, port: 9191, spiffeID: spiffe://example.org/ns/meshguard/sa/authz}
  controlPlane: {address: 127.0.0.1, port: 8443, spiffeID: spiffe://example.org/ns/meshguard/sa/cp}
  wasm: {file: /etc/meshguard/meshguard.wasm}
  workloads:
  - name: greeter
    namespace: demo
    spiffeID: %s
    labels: {app: greeter}
    proxyless: true
    inbound: [{name: grpc, port: %d, address: 127.0.0.1}]
`, serverID, port)))
	if err != nil {
		t.Fatal(err)
	}

	// Control plane: store → xDS server on loopback.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv, err := New(ctx, Options{Mesh: m})
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.New(store.Options{Check: func(b *policies.Bundle) error { _, err := policies.Compile(b); return err }})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Subscribe(func(b *policies.Bundle) { _ = srv.Publish(b) })()
	allow := policies.AuthorizationPolicy{
		APIVersion: policies.APIVersionIstioV1, Kind: policies.KindAuthorizationPolicy,
		Metadata: policies.ObjectMeta{Name: "greeter", Namespace: "demo"},
		Spec: policies.AuthorizationPolicySpec{
			Selector: &policies.WorkloadSelector{MatchLabels: map[string]string{"app": "greeter"}},
			Rules: []policies.Rule{{
				From: []policies.RuleFrom{{Source: policies.Source{Principals: []string{"example.org/ns/demo/sa/client"}}}},
				To:   []policies.RuleTo{{Operation: policies.Operation{Paths: []string{"/grpc.health.v1.Health/*"}}}},
			}},
		},
	}
	base := policies.Set{AuthorizationPolicies: []policies.AuthorizationPolicy{allow}}
	if err := st.SetSource("files", base); err != nil {
		t.Fatal(err)
	}
	cpGRPC := grpc.NewServer()
	srv.Register(cpGRPC)
	cpLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cpDone := make(chan struct{})
	go func() { defer close(cpDone); _ = cpGRPC.Serve(cpLis) }()
	defer func() { cpGRPC.Stop(); <-cpDone }()

	// The gRPC server's SVID and bundle, as the SPIFFE helper would write them.
	dir := t.TempDir()
	svid, err := authority.IssueX509SVID(serverID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := svid.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: authority.Root().Raw})
	for name, data := range map[string][]byte{"svid.pem": certPEM, "key.pem": keyPEM, "bundle.pem": caPEM} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	bootstrap := fmt.Sprintf(`{
  "xds_servers": [{"server_uri": %q, "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
  "node": {"id": "greeter-0", "cluster": "greeter.demo"},
  "server_listener_resource_name_template": %q,
  "certificate_providers": {%q: {"plugin_name": "file_watcher", "config": {
    "certificate_file": %q, "private_key_file": %q, "ca_certificate_file": %q, "refresh_interval": "60s"}}}
}`, cpLis.Addr().String(), xds.GRPCListenerTemplate, xds.GRPCCertProvider,
		filepath.Join(dir, "svid.pem"), filepath.Join(dir, "key.pem"), filepath.Join(dir, "bundle.pem"))

	creds, err := xdscreds.NewServerCredentials(xdscreds.ServerOptions{FallbackCreds: insecure.NewCredentials()})
	if err != nil {
		t.Fatal(err)
	}
	serving := make(chan error, 8)
	gs, err := grpcxds.NewGRPCServer(
		grpc.Creds(creds),
		grpcxds.BootstrapContentsForTesting([]byte(bootstrap)),
		grpcxds.ServingModeCallback(func(_ net.Addr, a grpcxds.ServingModeChangeArgs) {
			if a.Mode == connectivity.ServingModeServing {
				serving <- nil
			} else if a.Err != nil {
				serving <- a.Err
			}
		}),
	)
	if err != nil {
		t.Fatal(err)
	}
	healthpb.RegisterHealthServer(gs, health.NewServer())
	gsDone := make(chan struct{})
	go func() { defer close(gsDone); _ = gs.Serve(lis) }()
	defer func() { gs.Stop(); <-gsDone }()
	select {
	case err := <-serving:
		if err != nil {
			t.Fatalf("grpc xDS server not serving: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("grpc xDS server did not start serving")
	}

	call := func(id spiffeid.ID) codes.Code {
		t.Helper()
		clientSVID, err := authority.IssueX509SVID(id, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		tc := tlsconfig.MTLSClientConfig(clientSVID, authority.X509Bundle(), tlsconfig.AuthorizeID(serverID))
		conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(tc)))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		cctx, ccancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer ccancel()
		_, err = healthpb.NewHealthClient(conn).Check(cctx, &healthpb.HealthCheckRequest{})
		return status.Code(err)
	}
	waitCode := func(id spiffeid.ID, want codes.Code, within time.Duration) {
		t.Helper()
		deadline := time.Now().Add(within)
		for {
			got := call(id)
			if got == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: got %s, want %s", id, got, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	if got := call(allowedID); got != codes.OK {
		t.Fatalf("allowed client: %s", got)
	}
	if got := call(otherID); got != codes.PermissionDenied {
		t.Fatalf("client without a matching rule: %s, want PermissionDenied", got)
	}

	// Quarantine the allowed client through the store: the grpc server's
	// RBAC changes over ADS and the client is denied.
	start := time.Now()
	q := policies.Quarantine{
		APIVersion: policies.APIVersionMeshguard, Kind: policies.KindQuarantine,
		Metadata: policies.ObjectMeta{Name: "client", Namespace: "istio-system"},
		Spec:     policies.QuarantineSpec{Identity: allowedID.String(), Reason: "test"},
	}
	if err := st.SetSource("quarantine", policies.Set{Quarantines: []policies.Quarantine{q}}); err != nil {
		t.Fatal(err)
	}
	waitCode(allowedID, codes.PermissionDenied, 2*time.Second)
	t.Logf("quarantine enforced by the grpc server after %s", time.Since(start))

	// Release: allowed again.
	if err := st.RemoveSource("quarantine"); err != nil {
		t.Fatal(err)
	}
	waitCode(allowedID, codes.OK, 2*time.Second)
}
