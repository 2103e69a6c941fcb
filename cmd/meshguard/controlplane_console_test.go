package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/meshguard/meshguard/internal/testbed/ca"
	"github.com/meshguard/meshguard/policies/wire"
)

// lockedBuffer collects the command's logs while it runs.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}
func (l *lockedBuffer) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

// TestControlPlaneConsole runs `meshguard controlplane` with mTLS and the
// console: the operator token file is created (0600) when missing; the
// token works from a client without a certificate (a port-forward); the
// admin's SVID makes an operator and the trust domain named by
// --console-viewer-id makes viewers; the console draws what workloads
// report; the token is never logged.
func TestControlPlaneConsole(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	authority, err := ca.New(td)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cpCert, cpKey, bundle := writeSVID(t, authority, dir, "cp", spiffeid.RequireFromPath(td, "/ns/meshguard/sa/controlplane"))
	tokenFile := filepath.Join(dir, "secret", "console-token")
	xdsAddr, httpAddr, metricsAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	var logs lockedBuffer
	done := make(chan error, 1)
	go func() {
		root := newRootCmd()
		root.SetOut(&logs)
		root.SetErr(&logs)
		root.SetArgs([]string{"controlplane", "--xds-addr", xdsAddr, "--http-addr", httpAddr, "--metrics-addr", metricsAddr,
			"--svid-cert", cpCert, "--svid-key", cpKey, "--trust-bundle", bundle, "--log-level", "debug",
			"--admin-id", "spiffe://example.org/ns/ops/sa/admin", "--console-token-file", tokenFile,
			"--console-viewer-id", "spiffe://example.org", "--reporter-id", "spiffe://example.org/ns/shop/sa/*",
			"--state-dir", filepath.Join(dir, "state")})
		done <- root.ExecuteContext(ctx)
	}()
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			cancel()
			<-done
		}
	})
	client := func(id spiffeid.ID) *http.Client {
		cfg := &tls.Config{InsecureSkipVerify: true} //nolint:gosec // a browser through a port-forward: no client certificate
		if !id.IsZero() {
			svid, err := authority.IssueX509SVID(id, time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			cfg = tlsconfig.MTLSClientConfig(svid, authority.X509Bundle(), tlsconfig.AuthorizeMemberOf(td))
		}
		return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
	}
	get := func(c *http.Client, path, token string) (int, string) {
		req, _ := http.NewRequest("GET", "https://"+httpAddr+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := c.Do(req)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	var token string
	deadline := time.Now().Add(15 * time.Second)
	for {
		b, err := os.ReadFile(tokenFile)
		if err == nil && len(b) > 0 {
			if code, _ := get(client(spiffeid.ID{}), "/console/api/session", strings.TrimSpace(string(b))); code == 200 {
				token = strings.TrimSpace(string(b))
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("console not up: %v\n%s", err, logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if fi, err := os.Stat(tokenFile); err != nil || fi.Mode().Perm() != 0o600 || len(token) < 40 {
		t.Fatalf("token file: %v %v, token of %d characters", fi.Mode(), err, len(token))
	}
	for _, c := range []struct {
		name   string
		client *http.Client
		token  string
		code   int
		role   string
	}{
		{"token, no certificate", client(spiffeid.ID{}), token, 200, "operator"},
		{"no credentials", client(spiffeid.ID{}), "", 401, ""},
		{"admin certificate", client(spiffeid.RequireFromPath(td, "/ns/ops/sa/admin")), "", 200, "operator"},
		{"member of the viewer trust domain", client(spiffeid.RequireFromPath(td, "/ns/shop/sa/web")), "", 200, "viewer"},
	} {
		code, body := get(c.client, "/console/api/session", c.token)
		if code != c.code || (c.role != "" && !strings.Contains(body, `"role":"`+c.role+`"`)) {
			t.Errorf("%s: %d %s, want %d %s", c.name, code, body, c.code, c.role)
		}
	}
	// A workload's report reaches the graph.
	orders := client(spiffeid.RequireFromPath(td, "/ns/shop/sa/orders"))
	batch, _ := json.Marshal(wire.EventBatch{Events: []wire.Event{{Kind: wire.EventDecision, Source: "spiffe://example.org/ns/shop/sa/web",
		Route: "orders", Response: "deny", Count: 2, Detail: "denied_no_allow_match", UnixMillis: 1}}})
	resp, err := orders.Post("https://"+httpAddr+wire.EventsPath, "application/json", bytes.NewReader(batch))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	code, body := get(client(spiffeid.ID{}), "/console/api/graph", token)
	if code != 200 || !strings.Contains(body, `"s":"spiffe://example.org/ns/shop/sa/web","t":"spiffe://example.org/ns/shop/sa/orders"`) {
		t.Fatalf("graph: %d %s", code, body)
	}
	// The events endpoint still wants a certificate.
	resp, err = client(spiffeid.ID{}).Post("https://"+httpAddr+wire.EventsPath, "application/json", bytes.NewReader(batch))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("events without a certificate: %d", resp.StatusCode)
	}
	// A page's open stream does not hold up the shutdown.
	req, _ := http.NewRequest("GET", "https://"+httpAddr+"/console/api/stream", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	stream, err := (&http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}).Do(req) //nolint:gosec // as a browser through a port-forward
	if err != nil || stream.StatusCode != 200 {
		t.Fatalf("stream: %v", err)
	}
	defer stream.Body.Close()
	if _, err := stream.Body.Read(make([]byte, 64)); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	cancel()
	if err := <-done; err != nil {
		t.Errorf("controlplane: %v", err)
	}
	stopped = true
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("shutdown took %v with a console stream open", d)
	}
	if !strings.Contains(logs.String(), "console serving") || strings.Contains(logs.String(), token[:16]) {
		t.Fatalf("logs lack the console line or hold the token:\n%s", logs.String())
	}
}
