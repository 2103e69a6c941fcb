package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
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

	"github.com/meshguard/meshguard/controlplane/record"
	"github.com/meshguard/meshguard/internal/testbed/ca"
	"github.com/meshguard/meshguard/policies/wire"
)

// TestIncidentCommands runs `meshguard controlplane` with its record store
// and `meshguard authz` shipping decisions to it (both with mTLS), sends
// checks as an Envoy would, reports a detection as a filter, quarantines
// and releases as an operator, and then asks `meshguard events`,
// `meshguard incident` (with --export) and `meshguard policy replay` (from
// the decision log and from the store) what happened.
func TestIncidentCommands(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	authority, err := ca.New(td)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cpID := spiffeid.RequireFromPath(td, "/ns/meshguard/sa/controlplane")
	authzID := spiffeid.RequireFromPath(td, "/ns/meshguard/sa/authz")
	const (
		frontend = "spiffe://cluster.local/ns/bookstore/sa/frontend"
		reviews  = "spiffe://cluster.local/ns/bookstore/sa/reviews"
		catalog  = "spiffe://cluster.local/ns/bookstore/sa/catalog"
		operator = "spiffe://cluster.local/ns/secops/sa/oncall"
	)
	cpCert, cpKey, bundle := writeSVID(t, authority, dir, "cp", cpID)
	adCert, adKey, _ := writeSVID(t, authority, dir, "admin", spiffeid.RequireFromString(operator))
	files, err := authority.WriteFiles(t.TempDir(), authzID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	policies := filepath.Join("..", "..", "examples", "policies")
	records := filepath.Join(dir, "records.db")
	decisionLog := filepath.Join(dir, "decisions.jsonl")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	xdsAddr, httpAddr, metricsAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	cpDone := make(chan error, 1)
	go func() {
		_, err := runCmd(t, ctx, "controlplane", "--xds-addr", xdsAddr, "--http-addr", httpAddr, "--metrics-addr", metricsAddr,
			"--policy", policies, "--svid-cert", cpCert, "--svid-key", cpKey, "--trust-bundle", bundle,
			"--admin-id", operator, "--records", records, "--reporter-id", "spiffe://cluster.local/ns/*/sa/*", "--state-dir", filepath.Join(dir, "state"), "--log-level", "warn")
		cpDone <- err
	}()
	waitHTTP(t, "http://"+metricsAddr+"/readyz")

	var stderr, stdout syncBuffer
	f := authzFlagsFor(t, "--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0",
		"--svid-cert", files.Cert, "--svid-key", files.Key, "--bundle", files.SPIFFEBundle,
		"--allowed-caller-trust-domain", "cluster.local", "--no-jwt-svid", "--control-plane", xdsAddr, "--spiffe-socket", "",
		"--decision-log", decisionLog, "--ship-decisions", "https://"+httpAddr, "--control-plane-id", cpID.String(), "--ship-interval", "20ms")
	authzCtx, stopAuthz := context.WithCancel(ctx)
	authzDone := make(chan error, 1)
	go func() { authzDone <- runAuthz(authzCtx, f, &stderr, &stdout) }()
	grpcAddr, adminAddr := listening(t, &stderr)
	waitHTTP(t, "http://"+adminAddr+"/readyz")

	// The catalog sidecar calls the authz server.
	svid, err := authority.IssueX509SVID(spiffeid.RequireFromString(catalog), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(credentials.NewTLS(
		tlsconfig.MTLSClientConfig(svid, spiffebundle.NewSet(authority.Bundle()), tlsconfig.AuthorizeID(authzID)))))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := authv3.NewAuthorizationClient(conn)
	check := func(src, path string) codes.Code {
		t.Helper()
		resp, err := client.Check(ctx, &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
			Source: &authv3.AttributeContext_Peer{Principal: src, Address: sockAddr("10.0.0.7", 41000)},
			Destination: &authv3.AttributeContext_Peer{Principal: catalog, Address: sockAddr("10.0.1.2", 9080),
				Labels: map[string]string{"app": "catalog"}},
			Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
				Method: "GET", Path: path, Host: "catalog.bookstore:9080",
				Headers: map[string]string{":method": "GET", ":path": path, ":authority": "catalog.bookstore:9080"}}},
		}})
		if err != nil {
			t.Fatalf("Check: %v", err)
		}
		return codes.Code(resp.GetStatus().GetCode())
	}
	for i := range 20 {
		if c := check(frontend, fmt.Sprintf("/api/books/%d", i)); c != codes.OK {
			t.Fatalf("frontend: %v", c)
		}
	}
	for range 10 {
		if c := check(reviews, "/api/books"); c != codes.OK {
			t.Fatalf("reviews: %v", c)
		}
	}
	for i := range 5 {
		if c := check(reviews, fmt.Sprintf("/admin/%d?token=secret", i)); c != codes.PermissionDenied {
			t.Fatalf("reviews scanning: %v", c)
		}
	}

	// The catalog filter reports the scan; the operator quarantines and
	// releases.
	postEvents(t, authority, catalog, "https://"+httpAddr, wire.EventBatch{Events: []wire.Event{{Kind: wire.EventAnomaly,
		Detector: "enumeration", Source: reviews, Route: "catalog-api", Method: "GET", Response: "block",
		Profile: "istio-system/default", Detail: "distinct_paths", UnixMillis: time.Now().UnixMilli()}}})
	admin := []string{"--server", "https://" + httpAddr, "--svid-cert", adCert, "--svid-key", adKey, "--trust-bundle", bundle, "--server-id", cpID.String()}
	if out, err := runCmd(t, ctx, append([]string{"quarantine", "add", reviews, "--reason", "scanning catalog"}, admin...)...); err != nil {
		t.Fatalf("quarantine add: %v\n%s", err, out)
	}
	// The quarantine reaches the authz server over ADS as a new bundle.
	waitMetric(t, "http://"+adminAddr+"/metrics", `meshguard_authz_policy_reloads_total{result="applied",source="ads"} 2`)
	if c := check(reviews, "/api/books"); c != codes.PermissionDenied {
		t.Errorf("quarantined reviews: %v", c)
	}
	if out, err := runCmd(t, ctx, append([]string{"quarantine", "release", reviews, "--reason", "reimaged"}, admin...)...); err != nil {
		t.Fatalf("quarantine release: %v\n%s", err, out)
	}

	// Every decision reaches the store.
	events := func(args ...string) []record.Record {
		t.Helper()
		out, err := runCmd(t, ctx, append(append([]string{"events", "-o", "jsonl", "--limit", "1000"}, args...), admin...)...)
		if err != nil {
			t.Fatalf("events %v: %v\n%s", args, err, out)
		}
		var recs []record.Record
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			if line == "" || !strings.HasPrefix(line, "{") {
				continue
			}
			var r record.Record
			if err := json.Unmarshal([]byte(line), &r); err != nil {
				t.Fatalf("events output %q: %v", line, err)
			}
			recs = append(recs, r)
		}
		return recs
	}
	deadline := time.Now().Add(20 * time.Second)
	for len(events("--kind", "decision")) != 36 {
		if time.Now().After(deadline) {
			t.Fatalf("%d decisions stored, want 36", len(events("--kind", "decision")))
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, tc := range []struct {
		args []string
		want int
	}{
		{[]string{"--identity", reviews, "--decision", "deny"}, 6},
		{[]string{"--source", frontend}, 20},
		{[]string{"--identity", "spiffe://cluster.local/ns/bookstore/**"}, 39}, // 36 decisions, the detection, the quarantine, the release
		{[]string{"--policy", "AuthorizationPolicy/bookstore/catalog", "--rule", "0"}, 30},
		{[]string{"--reason", "denied_quarantined"}, 1},
		{[]string{"--kind", "detection"}, 1},
		{[]string{"--kind", "quarantine", "--kind", "release"}, 2},
		{[]string{"--source", reviews, "--destination", catalog, "--decision", "allow"}, 10},
	} {
		if got := len(events(tc.args...)); got != tc.want {
			t.Errorf("events %v: %d records, want %d", tc.args, got, tc.want)
		}
	}
	// The recorded request: query stripped, attributes for replay kept.
	scan := events("--source", reviews, "--decision", "deny", "--route", "", "--oldest-first")
	if len(scan) != 6 {
		t.Fatalf("%d denies of reviews", len(scan))
	}
	if d := scan[0].Decision; d == nil || !strings.HasPrefix(d.Path, "/admin/") || strings.Contains(d.Path, "secret") ||
		d.TargetLabels["app"] != "catalog" || d.SourceIP != "10.0.0.7" || d.DestinationPort != 9080 || scan[0].Reporter != authzID.String() {
		t.Errorf("stored decision %+v", d)
	}

	// The incident timeline, exported.
	bundlePath := filepath.Join(dir, "reviews.tar.gz")
	out, err := runCmd(t, ctx, append([]string{"incident", reviews, "--export", bundlePath}, admin...)...)
	if err != nil {
		t.Fatalf("incident: %v\n%s", err, out)
	}
	for _, want := range []string{"incident timeline of " + reviews, "quarantined", "released", "by " + operator,
		"DECISION", scan[0].Reason, "DETECTION", "enumeration", "QUARANTINE", "RELEASE", "scanning catalog"} {
		if !strings.Contains(out, want) {
			t.Errorf("incident output lacks %q:\n%s", want, out)
		}
	}
	if strings.Index(out, "DETECTION") > strings.Index(out, "QUARANTINE") || strings.Index(out, "QUARANTINE") > strings.Index(out, "RELEASE") {
		t.Errorf("timeline out of order:\n%s", out)
	}
	t.Logf("meshguard incident:\n%s", out)
	contents := untar(t, bundlePath)
	if n := strings.Count(contents["timeline.jsonl"], "\n"); n < 17 || !strings.Contains(contents["summary.json"], `"identity": "`+reviews) ||
		!strings.Contains(contents["summary.txt"], "incident timeline") {
		t.Errorf("bundle: %d timeline lines, summary %s", n, contents["summary.json"])
	}

	// Replay: a candidate where catalog no longer admits reviews turns its
	// ten allowed reads into denies; exit status 1 gates CI.
	stopAuthz()
	if err := <-authzDone; err != nil {
		t.Fatalf("authz: %v", err)
	}
	candidate := filepath.Join(dir, "candidate")
	copyPolicies(t, policies, candidate, func(name, s string) string {
		if name == "bookstore.yaml" {
			return strings.Replace(s, "        - cluster.local/ns/bookstore/sa/reviews\n", "", 1)
		}
		return s
	})
	for _, src := range [][]string{{"--log", decisionLog}, {"--store", records}} {
		out, err := runCmd(t, ctx, append([]string{"policy", "replay", "--policy", candidate}, src...)...)
		t.Logf("meshguard policy replay %v:\n%s", src, out)
		var ec exitCoder
		if !errors.As(err, &ec) || ec.ExitCode() != 1 {
			t.Fatalf("replay %v: %v, want exit 1\n%s", src, err, out)
		}
		for _, want := range []string{"replayed 35 of 36 recorded requests", "allow->deny   10", "deny->allow   0",
			"runtime_state            1", reviews + " → " + catalog} {
			if !strings.Contains(out, want) {
				t.Errorf("replay %v output lacks %q:\n%s", src, want, out)
			}
		}
		out, err = runCmd(t, ctx, append([]string{"policy", "replay", "--policy", policies, "--fail-on", "any"}, src...)...)
		if err != nil || !strings.Contains(out, "no recorded request changes its outcome") {
			t.Errorf("replay %v under the recorded policies: %v\n%s", src, err, out)
		}
	}
	cancel()
	if err := <-cpDone; err != nil {
		t.Errorf("controlplane: %v", err)
	}
}

func waitMetric(t *testing.T, url, line string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(url)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if strings.Contains(string(body), line) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s never showed %q:\n%s", url, line, body)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func sockAddr(ip string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: ip, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}}
}

func waitHTTP(t *testing.T, url string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready: %v", url, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// listening waits for the authz server's "listening" log line.
func listening(t *testing.T, stderr *syncBuffer) (grpcAddr, adminAddr string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for grpcAddr == "" {
		if time.Now().After(deadline) {
			t.Fatalf("authz did not start:\n%s", stderr.String())
		}
		for _, line := range strings.Split(stderr.String(), "\n") {
			var rec map[string]any
			if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == "authz server listening" {
				grpcAddr, _ = rec["grpc"].(string)
				adminAddr, _ = rec["admin"].(string)
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	return grpcAddr, adminAddr
}

func postEvents(t *testing.T, authority *ca.CA, as, server string, b wire.EventBatch) {
	t.Helper()
	svid, err := authority.IssueX509SVID(spiffeid.RequireFromString(as), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{TLSClientConfig: tlsconfig.MTLSClientConfig(svid, authority.X509Bundle(), tlsconfig.AuthorizeMemberOf(authority.TrustDomain()))}
	defer tr.CloseIdleConnections()
	body, _ := json.Marshal(b)
	resp, err := (&http.Client{Transport: tr}).Post(server+wire.EventsPath, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("events: %s", resp.Status)
	}
}

func copyPolicies(t *testing.T, from, to string, edit func(name, s string) string) {
	t.Helper()
	if err := os.MkdirAll(to, 0o755); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		s := edit(e.Name(), string(data))
		if s == string(data) && e.Name() == "bookstore.yaml" {
			t.Fatal("the candidate edit did not apply")
		}
		if err := os.WriteFile(filepath.Join(to, e.Name()), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func untar(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	out := map[string]string{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		out[h.Name] = string(data)
	}
}
