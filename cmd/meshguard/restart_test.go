package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshguard/meshguard/controlplane/quarantine"
	"github.com/meshguard/meshguard/internal/testbed/ca"
	"github.com/meshguard/meshguard/policies/wire"
)

const detectionProfile = `apiVersion: meshguard.dev/v1alpha1
kind: AnomalyProfile
metadata: {name: strict, namespace: istio-system}
spec:
  responses: {lateral: quarantine}
  quarantineFor: 1h
  correlation: {window: 1m, maxDestinations: 2}
`

// TestControlPlaneRestartKeepsState runs `meshguard controlplane` with its
// embedded store, an authz server (the real ADS subscription, compile and
// engine) and a sidecar (the Envoy emulator configured over ADS, running
// the compiled wasm filter it gets over ECDS) fed by it; adds quarantines (two through the
// CLI, one from a detection report), kills the process with SIGKILL, and
// checks that
//
//   - while it is down, the authz server and the filter keep enforcing
//     what they last received, and the short quarantine lifts at its expiry
//     all the same;
//   - restarted on the same --state-dir, it serves the two that are still
//     due, and the one that expired while it was down is lifted and
//     audited as expired.
func TestControlPlaneRestartKeepsState(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the meshguard binary")
	}
	bin := meshguardBinary(t)
	module := filterWasm(t)
	dir := t.TempDir()
	policyDir := filepath.Join(dir, "policies")
	if err := os.MkdirAll(policyDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(policyDir, "profile.yaml"), []byte(detectionProfile), 0o600); err != nil {
		t.Fatal(err)
	}
	xdsAddr, httpAddr, metricsAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	meshFile := filepath.Join(dir, "mesh.yaml")
	if err := os.WriteFile(meshFile, []byte(meshWithSidecar(t, module, httpAddr)), 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"controlplane", "--insecure-plaintext", "--xds-addr", xdsAddr, "--http-addr", httpAddr, "--metrics-addr", metricsAddr,
		"--policy", policyDir, "--mesh", meshFile, "--state-dir", filepath.Join(dir, "state"), "--log-level", "info"}
	cp := startProcess(t, bin, dir, "controlplane-1", nil, args...)
	waitProcessReady(t, cp, metricsAddr, 30*time.Second)
	authz := startAuthzServer(t, xdsAddr, "authz-restart")
	authority, err := ca.New(spiffeid.RequireTrustDomainFromString("example.org"))
	if err != nil {
		t.Fatal(err)
	}
	filter := startSidecar(t, authority, xdsAddr)

	ctx := context.Background()
	admin := []string{"--server", "http://" + httpAddr, "--insecure-plaintext", "--by", "oncall"}
	const (
		held    = "spiffe://example.org/ns/shop/sa/web"
		short   = "spiffe://example.org/ns/shop/sa/batch"
		flagged = "spiffe://example.org/ns/shop/sa/scanner"
	)
	if out, err := runCmd(t, ctx, append([]string{"quarantine", "add", held, "--reason", "incident 7", "--for", "1h"}, admin...)...); err != nil {
		t.Fatalf("add: %v\n%s", err, out)
	}
	if out, err := runCmd(t, ctx, append([]string{"quarantine", "add", short, "--reason", "brief hold", "--for", "4s"}, admin...)...); err != nil {
		t.Fatalf("add: %v\n%s", err, out)
	}
	batch, _ := json.Marshal(wire.EventBatch{Reporter: "spiffe://example.org/ns/shop/sa/orders", Events: []wire.Event{{
		Kind: wire.EventAnomaly, Detector: "lateral", Profile: "strict", Source: flagged, Destination: "orders",
		UnixMillis: time.Now().UnixMilli(), Detail: "4 new edges"}}})
	resp, err := http.Post("http://"+httpAddr+wire.EventsPath, "application/json", bytes.NewReader(batch))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("events: %s", resp.Status)
	}
	for _, id := range []string{held, short, flagged} {
		authz.waitEnforced(t, id, true, time.Second)
		filter.waitEnforced(t, id, true, time.Second)
	}
	var entries []quarantine.Entry
	listJSON(t, admin, &entries)
	var shortExpiry time.Time
	for _, e := range entries {
		if e.Identity == short {
			shortExpiry = e.ExpiresAt
		}
	}
	before := authz.version()

	// SIGKILL: no shutdown, no flush.
	cp.kill(t)
	killedAt := time.Now()
	if !killedAt.Before(shortExpiry) {
		t.Fatalf("killed at %s, after %s expired at %s: the test is too slow to show an expiry while down", killedAt, short, shortExpiry)
	}
	// Down: the authz server and the filter keep enforcing what they have.
	for _, id := range []string{held, flagged} {
		if !authz.quarantined(id) || !filter.quarantined(t, id) {
			t.Fatalf("control plane down: %s no longer denied (authz %v, filter %v)", id, authz.quarantined(id), filter.quarantined(t, id))
		}
	}
	// The short one lifts at its expiry even with nobody to sweep it.
	authz.waitEnforced(t, short, false, time.Until(shortExpiry)+2*time.Second)
	filter.waitEnforced(t, short, false, time.Second)
	for _, id := range []string{held, flagged} {
		if !authz.quarantined(id) || !filter.quarantined(t, id) {
			t.Fatalf("control plane down for %s: %s no longer denied", time.Since(killedAt), id)
		}
	}
	if authz.version() != before {
		t.Fatal("the authz server's bundle changed while the control plane was down")
	}
	time.Sleep(time.Until(shortExpiry.Add(500 * time.Millisecond)))

	cp = startProcess(t, bin, dir, "controlplane-2", nil, args...)
	took := waitProcessReady(t, cp, metricsAddr, 30*time.Second)
	t.Logf("restarted and ready in %s", took)
	deadline := time.Now().Add(10 * time.Second)
	for authz.version() == before {
		if time.Now().After(deadline) {
			t.Fatal("the authz server got no bundle from the restarted control plane")
		}
		time.Sleep(10 * time.Millisecond)
	}
	for id, want := range map[string]bool{held: true, flagged: true, short: false} {
		if authz.quarantined(id) != want {
			t.Errorf("after restart: %s quarantined=%v, want %v", id, !want, want)
		}
	}
	for id, want := range map[string]bool{held: true, flagged: true, short: false} {
		if filter.quarantined(t, id) != want {
			t.Errorf("after restart, wasm filter: %s quarantined=%v, want %v", id, !want, want)
		}
	}
	// The sidecar follows the restarted control plane: a new quarantine
	// reaches its filter.
	const later = "spiffe://example.org/ns/shop/sa/later"
	if out, err := runCmd(t, ctx, append([]string{"quarantine", "add", later, "--reason", "after the restart"}, admin...)...); err != nil {
		t.Fatalf("add: %v\n%s", err, out)
	}
	authz.waitEnforced(t, later, true, time.Second)
	filter.waitEnforced(t, later, true, 5*time.Second)
	entries = nil
	listJSON(t, admin, &entries)
	if len(entries) != 3 || entries[0].Identity != later || entries[1].Identity != flagged || entries[2].Identity != held ||
		len(entries[1].Evidence) != 1 || entries[1].Evidence[0].Detector != "lateral" || entries[2].By != "unauthenticated:oncall" {
		t.Fatalf("after restart: %+v", entries)
	}
	out, err := runCmdStdout(t, ctx, append([]string{"quarantine", "audit", "--json"}, admin...)...)
	if err != nil {
		t.Fatalf("audit: %v\n%s", err, out)
	}
	var audit []quarantine.AuditRecord
	if err := json.Unmarshal([]byte(out), &audit); err != nil {
		t.Fatalf("audit: %v\n%s", err, out)
	}
	var actions []string
	for _, r := range audit {
		actions = append(actions, r.Action+" "+r.Identity)
	}
	want := []string{"add " + held, "add " + short, "add " + flagged, "expire " + short, "add " + later}
	if strings.Join(actions, "\n") != strings.Join(want, "\n") {
		t.Fatalf("audit:\n%s\nwant:\n%s", strings.Join(actions, "\n"), strings.Join(want, "\n"))
	}
	if last := audit[3]; !strings.Contains(last.Reason, "no control plane was running") || last.Time.Before(killedAt) {
		t.Fatalf("expiry audit: %+v", last)
	}
	if len(cp.grep(`"msg":"quarantine expired"`)) != 1 {
		t.Error("the restarted control plane did not log the expiry")
	}
}

func listJSON(t *testing.T, admin []string, v any) {
	t.Helper()
	out, err := runCmdStdout(t, context.Background(), append([]string{"quarantine", "list", "--json"}, admin...)...)
	if err != nil {
		t.Fatalf("list: %v\n%s", err, out)
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("list: %v\n%s", err, out)
	}
}
