//go:build e2e

// Package envoy runs meshguard against a REAL Envoy where one exists
// (ENVOY_BIN, or envoy on PATH): Envoy connects to `meshguard controlplane`
// over ADS and must accept the listeners, clusters, routes and the wasm
// filter's ECDS configuration the control plane generates. Without an Envoy
// binary (as on meshguard's build machines) it is skipped with a message;
// the emulated data plane in e2e/ covers the request path there.
package envoy

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/meshguard/meshguard/e2e/internal/proc"
)

func envoyBinary(t *testing.T) string {
	if p := os.Getenv("ENVOY_BIN"); p != "" {
		return p
	}
	p, err := exec.LookPath("envoy")
	if err != nil {
		t.Skip("real-Envoy e2e skipped: no Envoy binary (set ENVOY_BIN or put envoy on PATH); the emulated data plane in e2e/ ran instead")
	}
	return p
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func binDir() string {
	if d := os.Getenv("MESHGUARD_BIN"); d != "" {
		return d
	}
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(filepath.Dir(filepath.Dir(file))), "bin")
}

// TestEnvoyAcceptsControlPlaneConfig starts the control plane (plaintext on
// loopback: certificates are not what this test checks) and an Envoy whose
// bootstrap points at it, then reads Envoy's config dump: the generated
// inbound listener, its ext_authz and wasm filters and the ECDS filter
// configuration must have been accepted (a NACK keeps them out of the dump).
func TestEnvoyAcceptsControlPlaneConfig(t *testing.T) {
	envoy := envoyBinary(t)
	bins := binDir()
	dir := t.TempDir()
	xdsAddr, httpAddr, admin := freeAddr(t), freeAddr(t), freeAddr(t)
	wasm := filepath.Join(bins, "meshguard-filter.wasm")
	meshFile := filepath.Join(dir, "mesh.yaml")
	mesh := fmt.Sprintf(`apiVersion: meshguard.dev/v1alpha1
kind: Mesh
metadata: {name: envoy-e2e}
spec:
  trustDomain: cluster.local
  authz: {address: 127.0.0.1, port: 9191, spiffeID: spiffe://cluster.local/ns/meshguard/sa/authz}
  controlPlane: {address: 127.0.0.1, port: %s, spiffeID: spiffe://cluster.local/ns/meshguard/sa/controlplane}
  wasm: {file: %s, requireMtls: true}
  workloads:
  - name: catalog
    namespace: bookstore
    spiffeID: spiffe://cluster.local/ns/bookstore/sa/catalog
    labels: {app: catalog}
    inbound:
    - name: http
      port: %s
      appPort: 18080
      routes:
      - {name: catalog, prefix: /}
`, port(httpAddr), wasm, port(freeAddr(t)))
	if err := os.WriteFile(meshFile, []byte(mesh), 0o600); err != nil {
		t.Fatal(err)
	}
	cp, err := proc.Start(proc.Spec{Name: "controlplane", Path: filepath.Join(bins, "meshguard"), LogDir: dir, Args: []string{
		"controlplane", "--insecure-plaintext", "--xds-addr", xdsAddr, "--http-addr", httpAddr,
		"--metrics-addr", freeAddr(t), "--mesh", meshFile, "--policy", filepath.Join(bins, "..", "examples", "policies"),
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cp.Stop(5 * time.Second) })

	bootstrap := fmt.Sprintf(`node: {id: catalog-envoy-e2e, cluster: catalog.bookstore}
admin: {address: {socket_address: {address: 127.0.0.1, port_value: %s}}}
dynamic_resources:
  ads_config: {api_type: GRPC, transport_api_version: V3, grpc_services: [{envoy_grpc: {cluster_name: xds}}]}
  lds_config: {ads: {}, resource_api_version: V3}
  cds_config: {ads: {}, resource_api_version: V3}
static_resources:
  clusters:
  - name: xds
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
    load_assignment:
      cluster_name: xds
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: %s}}}}]}]
`, port(admin), port(xdsAddr))
	bpath := filepath.Join(dir, "bootstrap.yaml")
	if err := os.WriteFile(bpath, []byte(bootstrap), 0o600); err != nil {
		t.Fatal(err)
	}
	ev, err := proc.Start(proc.Spec{Name: "envoy", Path: envoy, LogDir: dir,
		Args: []string{"-c", bpath, "--log-level", "info", "--base-id", fmt.Sprint(os.Getpid() % 10000)}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ev.Stop(5 * time.Second) })

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var dump string
	for ctx.Err() == nil {
		resp, err := http.Get("http://" + admin + "/config_dump?include_eds")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			dump = string(b)
			// The listener is active (not warming: its ECDS filter config
			// arrived) and the ECDS dump holds the wasm filter config.
			_, ecds, _ := strings.Cut(dump, "EcdsConfigDump")
			if strings.Contains(dump, "dynamic_active_listeners") && strings.Contains(dump, "inbound_http") &&
				strings.Contains(dump, "envoy.filters.http.ext_authz") && strings.Contains(ecds, "meshguard-wasm") {
				return
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatalf("Envoy did not accept the control plane's configuration within 60s; envoy log %s, control plane log %s\nlast dump (truncated): %.2000s",
		ev.LogPath(), cp.LogPath(), dump)
}

func port(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}
