package main

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"sigs.k8s.io/yaml"

	"github.com/meshguard/meshguard/controlplane/store"
	"github.com/meshguard/meshguard/internal/testbed/ca"
	"github.com/meshguard/meshguard/internal/testbed/freeport"
	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/wire"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	return freeport.MustAddr(t)
}

// writeSVID writes an SVID of id and the CA bundle as PEM files.
func writeSVID(t *testing.T, authority *ca.CA, dir, name string, id spiffeid.ID) (cert, key, bundle string) {
	t.Helper()
	svid, err := authority.IssueX509SVID(id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c, k, err := svid.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	cert, key, bundle = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem"), filepath.Join(dir, "bundle.pem")
	for p, data := range map[string][]byte{
		cert: c, key: k,
		bundle: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: authority.Root().Raw}),
	} {
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return cert, key, bundle
}

func runCmd(t *testing.T, ctx context.Context, args ...string) (string, error) {
	t.Helper()
	root := newRootCmd()
	var out, errb bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errb)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	return out.String() + errb.String(), err
}

// TestControlPlaneCommandWithCLI runs `meshguard controlplane` with mTLS from
// SVID files and drives it with `meshguard quarantine` and `meshguard
// baseline export` as an admin.
func TestControlPlaneCommandWithCLI(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	authority, err := ca.New(td)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cpCert, cpKey, bundle := writeSVID(t, authority, dir, "cp", spiffeid.RequireFromPath(td, "/ns/meshguard/sa/controlplane"))
	adCert, adKey, _ := writeSVID(t, authority, dir, "admin", spiffeid.RequireFromPath(td, "/ns/ops/sa/admin"))
	policyDir := filepath.Join(dir, "policies")
	if err := os.MkdirAll(policyDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(policyDir, "deny.yaml"), []byte(`
apiVersion: meshguard.dev/v1alpha1
kind: DefaultDeny
metadata: {name: all, namespace: shop}
spec: {}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	xdsAddr, httpAddr, metricsAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := runCmd(t, ctx, "controlplane", "--xds-addr", xdsAddr, "--http-addr", httpAddr, "--metrics-addr", metricsAddr,
			"--policy", policyDir, "--svid-cert", cpCert, "--svid-key", cpKey, "--trust-bundle", bundle,
			"--admin-id", "spiffe://example.org/ns/ops/sa/admin", "--audit-log", filepath.Join(dir, "audit.jsonl"), "--log-level", "warn",
			"--state-dir", filepath.Join(dir, "state"), "--reporter-id", "spiffe://example.org/ns/shop/sa/*")
		done <- err
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("controlplane: %v", err)
		}
	})
	// Ready once a bundle exists.
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://" + metricsAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("control plane not ready: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	admin := []string{"--server", "https://" + httpAddr, "--svid-cert", adCert, "--svid-key", adKey, "--trust-bundle", bundle,
		"--server-id", "spiffe://example.org/ns/meshguard/sa/controlplane"}

	out, err := runCmd(t, ctx, append([]string{"quarantine", "add", "spiffe://example.org/ns/shop/sa/web", "--reason", "incident 7", "--for", "1h"}, admin...)...)
	if err != nil || !strings.Contains(out, "quarantined spiffe://example.org/ns/shop/sa/web") {
		t.Fatalf("add: %v\n%s", err, out)
	}
	out, err = runCmd(t, ctx, append([]string{"quarantine", "list"}, admin...)...)
	if err != nil || !strings.Contains(out, "spiffe://example.org/ns/shop/sa/web") || !strings.Contains(out, "incident 7") {
		t.Fatalf("list: %v\n%s", err, out)
	}
	out, err = runCmd(t, ctx, append([]string{"quarantine", "release", "spiffe://example.org/ns/shop/sa/web", "--reason", "cleared"}, admin...)...)
	if err != nil {
		t.Fatalf("release: %v\n%s", err, out)
	}
	if _, err := runCmd(t, ctx, append([]string{"quarantine", "release", "spiffe://example.org/ns/shop/sa/web", "--reason", "again"}, admin...)...); err == nil {
		t.Fatal("releasing an identity that is not quarantined succeeded")
	}

	// A workload posts edges; the admin exports the draft.
	webCert, webKey, _ := writeSVID(t, authority, dir, "web", spiffeid.RequireFromPath(td, "/ns/shop/sa/web"))
	svid, err := authority.IssueX509SVID(spiffeid.RequireFromPath(td, "/ns/shop/sa/orders"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{TLSClientConfig: tlsconfig.MTLSClientConfig(svid, authority.X509Bundle(), tlsconfig.AuthorizeMemberOf(td))}
	defer tr.CloseIdleConnections()
	batch, _ := json.Marshal(wire.EventBatch{Events: []wire.Event{
		{Kind: wire.EventEdge, Source: "spiffe://example.org/ns/shop/sa/web", Destination: "orders.shop", Route: "orders-list", Method: "GET"},
		{Kind: wire.EventEdge, Source: "spiffe://example.org/ns/shop/sa/web", Destination: "orders.shop", Route: "orders-create", Method: "POST"},
		{Kind: wire.EventEdge, Source: "spiffe://example.org/ns/shop/sa/orders", Destination: "payments.pay", Method: "POST"},
	}})
	resp, err := (&http.Client{Transport: tr}).Post("https://"+httpAddr+wire.EventsPath, "application/json", bytes.NewReader(batch))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("events: %s", resp.Status)
	}
	outDir := filepath.Join(dir, "draft")
	out, err = runCmd(t, ctx, append([]string{"baseline", "export", "-o", outDir}, admin...)...)
	if err != nil {
		t.Fatalf("export: %v\n%s", err, out)
	}
	data, err := os.ReadFile(filepath.Join(outDir, "authorizationpolicy-shop-meshguard-learned-orders.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var ap policies.AuthorizationPolicy
	if err := yaml.UnmarshalStrict(data, &ap); err != nil {
		t.Fatal(err)
	}
	if ap.Spec.Selector.MatchLabels["app"] != "orders" || ap.Spec.Rules[0].From[0].Source.Principals[0] != "example.org/ns/shop/sa/web" ||
		strings.Join(ap.Spec.Rules[0].To[0].Operation.Methods, ",") != "GET,POST" {
		t.Fatalf("drafted policy: %+v", ap.Spec)
	}
	data, err = os.ReadFile(filepath.Join(outDir, "trafficbaseline.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var tb policies.TrafficBaseline
	if err := yaml.UnmarshalStrict(data, &tb); err != nil {
		t.Fatal(err)
	}
	if tb.Spec.Mode != policies.BaselineShadow || len(tb.Spec.Edges) != 2 {
		t.Fatalf("baseline: %+v", tb.Spec)
	}

	// Without an admin SVID the admin API refuses.
	other := []string{"--server", "https://" + httpAddr, "--svid-cert", webCert, "--svid-key", webKey, "--trust-bundle", bundle}
	if out, err := runCmd(t, ctx, append([]string{"quarantine", "list"}, other...)...); err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("non-admin list: %v\n%s", err, out)
	}
	audit, err := os.ReadFile(filepath.Join(dir, "audit.jsonl"))
	if err != nil || bytes.Count(audit, []byte("\n")) != 2 {
		t.Fatalf("audit log: %v\n%s", err, audit)
	}
}

// TestControlPlanePolicyFilesRefuseEmptyAndCutFiles: the control plane's
// --policy reload follows the same rules as authz's: an emptied file, a
// file cut off mid-line and a set that loses a namespace are refused and
// the served set stays; a complete change applies.
func TestControlPlanePolicyFilesRefuseEmptyAndCutFiles(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "p.yaml")
	doc := func(ns, name string) string {
		return "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: " + name + ", namespace: " + ns + "}\nspec:\n  action: DENY\n  rules: [{to: [{operation: {paths: [/admin]}}]}]\n"
	}
	whole := doc("shop", "a") + "---\n" + doc("pay", "b")
	if err := os.WriteFile(path, []byte(whole), 0o644); err != nil {
		t.Fatal(err)
	}
	st, err := store.New(store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	files := newCPPolicyFiles([]string{dir}, 0, false)
	if err := files.first(context.Background(), st); err != nil {
		t.Fatal(err)
	}
	served := st.Bundle().Hash
	for name, data := range map[string]string{
		"emptied":          "",
		"cut mid-line":     whole[:len(whole)-9],
		"a namespace lost": doc("shop", "a"),
	} {
		if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := files.poll(st); err == nil {
			t.Errorf("%s: applied", name)
		}
		if st.Bundle().Hash != served {
			t.Fatalf("%s: the served bundle changed", name)
		}
	}
	if err := os.WriteFile(path, []byte(whole+"---\n"+doc("pay", "c")), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := files.poll(st); err != nil || st.Bundle().Hash == served {
		t.Fatalf("a complete change: %v", err)
	}
}

func TestDefaultStateDir(t *testing.T) {
	tests := []struct {
		name, stateDirectory, xdg, home, want string
	}{
		{"systemd StateDirectory=", "/var/lib/meshguard:/var/lib/other", "/x", "/home/u", "/var/lib/meshguard"},
		{"XDG_STATE_HOME", "", "/home/u/.state", "/home/u", "/home/u/.state/meshguard"},
		{"home", "", "", "/home/u", "/home/u/.local/state/meshguard"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("STATE_DIRECTORY", tt.stateDirectory)
			t.Setenv("XDG_STATE_HOME", tt.xdg)
			t.Setenv("HOME", tt.home)
			got, err := defaultStateDir()
			if err != nil || got != tt.want {
				t.Fatalf("defaultStateDir() = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}
