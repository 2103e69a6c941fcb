package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"

	"github.com/meshguard/meshguard/internal/testbed/ca"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

const policyV1 = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: api
  namespace: shop
spec:
  rules:
  - from:
    - source:
        principals: ["prod.example/ns/web/sa/frontend"]
`

// TestAuthzCommand runs `meshguard authz` with file-based identity and a
// YAML policy directory, checks over mTLS, hot-reloads the policy, and
// shuts down cleanly.
func TestAuthzCommand(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("prod.example")
	c, err := ca.New(td)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	files, err := c.WriteFiles(dir, spiffeid.RequireFromString("spiffe://prod.example/ns/meshguard/sa/authz"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	polDir := filepath.Join(dir, "policies")
	if err := os.Mkdir(polDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(polDir, "api.yaml"), []byte(policyV1), 0o644); err != nil {
		t.Fatal(err)
	}
	envoyID := spiffeid.RequireFromString("spiffe://prod.example/ns/shop/sa/api")
	var stderr, stdout syncBuffer
	f := authzFlagsFor(t, "--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0",
		"--svid-cert", files.Cert, "--svid-key", files.Key, "--bundle", files.SPIFFEBundle,
		"--allowed-caller", envoyID.String(), "--jwt-audience", "meshguard",
		"--policy", polDir, "--policy-poll-interval", "20ms", "--spiffe-socket", "")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- runAuthz(ctx, f, &stderr, &stdout) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			t.Error("authz did not stop")
		}
	})

	var grpcAddr, adminAddr string
	deadline := time.Now().Add(10 * time.Second)
	for grpcAddr == "" && time.Now().Before(deadline) {
		for _, line := range strings.Split(stderr.String(), "\n") {
			var rec map[string]any
			if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == "authz server listening" {
				grpcAddr, _ = rec["grpc"].(string)
				adminAddr, _ = rec["admin"].(string)
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	if grpcAddr == "" {
		t.Fatalf("server did not start:\n%s", stderr.String())
	}
	waitReady := func() {
		for time.Now().Before(deadline) {
			if resp, err := http.Get("http://" + adminAddr + "/readyz"); err == nil {
				resp.Body.Close()
				if resp.StatusCode == 200 {
					return
				}
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Fatalf("never ready:\n%s", stderr.String())
	}
	waitReady()

	svid, err := c.IssueX509SVID(envoyID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	bundles := spiffebundle.NewSet(c.Bundle())
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(credentials.NewTLS(
		tlsconfig.MTLSClientConfig(svid, bundles, tlsconfig.AuthorizeID(spiffeid.RequireFromString("spiffe://prod.example/ns/meshguard/sa/authz"))))))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := authv3.NewAuthorizationClient(conn)
	check := func(principal string) codes.Code {
		t.Helper()
		resp, err := client.Check(context.Background(), &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
			Source:      &authv3.AttributeContext_Peer{Principal: principal},
			Destination: &authv3.AttributeContext_Peer{Principal: "spiffe://prod.example/ns/shop/sa/api", Address: &corev3.Address{}},
			Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
				Method: "GET", Path: "/x", Host: "api", Headers: map[string]string{":method": "GET", ":path": "/x", ":authority": "api"}}},
		}})
		if err != nil {
			t.Fatalf("Check: %v", err)
		}
		return codes.Code(resp.GetStatus().GetCode())
	}
	if got := check("spiffe://prod.example/ns/web/sa/frontend"); got != codes.OK {
		t.Fatalf("frontend: %v", got)
	}
	if got := check("spiffe://prod.example/ns/web/sa/other"); got != codes.PermissionDenied {
		t.Fatalf("other: %v", got)
	}
	// Hot reload: allow "other" instead.
	if err := os.WriteFile(filepath.Join(polDir, "api.yaml"), []byte(strings.Replace(policyV1, "sa/frontend", "sa/other", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	for time.Now().Before(deadline) && check("spiffe://prod.example/ns/web/sa/other") != codes.OK {
		time.Sleep(10 * time.Millisecond)
	}
	if got := check("spiffe://prod.example/ns/web/sa/frontend"); got != codes.PermissionDenied {
		t.Fatalf("after reload, frontend: %v", got)
	}
	// A broken file is rejected; the last good version keeps serving.
	if err := os.WriteFile(filepath.Join(polDir, "api.yaml"), []byte(policyV1+"  bogusField: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for time.Now().Before(deadline) && !strings.Contains(stderr.String(), "policy update rejected") {
		time.Sleep(10 * time.Millisecond)
	}
	if got := check("spiffe://prod.example/ns/web/sa/other"); got != codes.OK {
		t.Fatalf("after a broken update, other: %v", got)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("authz exited with %v", err)
	}
	done <- nil
	// Batched decision log lines are flushed at shutdown.
	if !strings.Contains(stdout.String(), `"reason":"allowed_by_policy"`) || !strings.Contains(stdout.String(), `"reason":"denied_no_allow_match"`) {
		t.Errorf("decision log on stdout lacks the decisions:\n%s", stdout.String())
	}
}

func TestAuthzCommandRefusesUnsafeConfig(t *testing.T) {
	c, _ := ca.New(spiffeid.RequireTrustDomainFromString("prod.example"))
	dir := t.TempDir()
	files, err := c.WriteFiles(dir, spiffeid.RequireFromString("spiffe://prod.example/authz"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	base := []string{"--grpc-addr", "127.0.0.1:0", "--admin-addr", "", "--svid-cert", files.Cert, "--svid-key", files.Key,
		"--bundle", files.SPIFFEBundle, "--policy", dir, "--spiffe-socket", ""}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no audience", append(base, "--allowed-caller", "spiffe://prod.example/envoy"), "audience"},
		{"no allowed caller", append(base, "--jwt-audience", "a"), "allowed caller"},
		{"no policy source", []string{"--spiffe-socket", "", "--jwt-audience", "a"}, "no policy source"},
		{"no bundle", []string{"--spiffe-socket", "", "--jwt-audience", "a", "--policy", dir}, "no trust bundle"},
		{"collector target out of range", append(base, "--jwt-audience", "a", "--gc-percent", "10"), "--gc-percent 10"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out syncBuffer
			err := runAuthz(context.Background(), authzFlagsFor(t, tt.args...), &out, &out)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want containing %q", err, tt.want)
			}
		})
	}
}

func authzFlagsFor(t *testing.T, args ...string) *authzFlags {
	t.Helper()
	f := &authzFlags{}
	if err := newAuthzCmdFor(f).ParseFlags(args); err != nil {
		t.Fatal(err)
	}
	return f
}
