package main

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	securityv1beta1api "istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/meshguard/meshguard/authz/loader"
	"github.com/meshguard/meshguard/policies"
)

// TestKubeFlagsValidate checks the Kubernetes flags without a cluster.
func TestKubeFlagsValidate(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantErr []string // substrings; none: valid
	}{
		{name: "off", args: nil},
		{name: "on, in-cluster", args: []string{"--kubernetes"}},
		{name: "on, kubeconfig", args: []string{"--kubernetes", "--kubeconfig", "/tmp/kc"}},
		{name: "leader election", args: []string{"--kubernetes", "--leader-election", "--leader-election-namespace", "meshguard", "--leader-election-id", "mg.lease"}},
		{name: "kubeconfig without kubernetes", args: []string{"--kubeconfig", "/tmp/kc"}, wantErr: []string{"--kubeconfig needs --kubernetes"}},
		{name: "leader election without kubernetes", args: []string{"--leader-election", "--leader-election-id", "x"},
			wantErr: []string{"--leader-election needs --kubernetes", "--leader-election-id needs --kubernetes"}},
		{name: "lease flags without leader election", args: []string{"--kubernetes", "--leader-election-namespace", "meshguard"},
			wantErr: []string{"--leader-election-namespace needs --leader-election"}},
		{name: "bad lease namespace and id", args: []string{"--kubernetes", "--leader-election", "--leader-election-namespace", "Mesh_Guard", "--leader-election-id", "Bad/Name"},
			wantErr: []string{`--leader-election-namespace "Mesh_Guard"`, `--leader-election-id "Bad/Name"`}},
		{name: "empty lease id", args: []string{"--kubernetes", "--leader-election", "--leader-election-id", ""},
			wantErr: []string{"--leader-election-id must not be empty"}},
		{name: "state namespace and lease duration", args: []string{"--kubernetes", "--state-namespace", "meshguard", "--leader-election", "--leader-election-lease-duration", "5s"}},
		{name: "state flags without kubernetes", args: []string{"--state-namespace", "meshguard", "--leader-election-lease-duration", "5s"},
			wantErr: []string{"--state-namespace needs --kubernetes", "--leader-election-lease-duration needs --kubernetes"}},
		{name: "bad state namespace, lease duration without election", args: []string{"--kubernetes", "--state-namespace", "Mesh_Guard", "--leader-election-lease-duration", "5s"},
			wantErr: []string{`--state-namespace "Mesh_Guard"`, "--leader-election-lease-duration needs --leader-election"}},
		{name: "lease too short", args: []string{"--kubernetes", "--leader-election", "--leader-election-lease-duration", "100ms"},
			wantErr: []string{"--leader-election-lease-duration 100ms: at least 1s"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var f kubeFlags
			cmd := &cobra.Command{}
			f.register(cmd)
			if err := cmd.Flags().Parse(tt.args); err != nil {
				t.Fatal(err)
			}
			err := f.validate(cmd)
			if len(tt.wantErr) == 0 {
				if err != nil {
					t.Fatalf("validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("validate accepted %v", tt.args)
			}
			for _, want := range tt.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not contain %q", err, want)
				}
			}
		})
	}
}

// TestControlPlaneKubernetesConfigErrors: --kubernetes without a loadable
// configuration stops the command at start, before it listens.
func TestControlPlaneKubernetesConfigErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(bad, []byte("this: [is not a kubeconfig"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A kubeconfig that loads but points at a port nothing listens on.
	unreachable := filepath.Join(dir, "unreachable")
	if err := os.WriteFile(unreachable, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "http://`+freeAddr(t)+`"}}]
users: [{name: u, user: {}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
`), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{name: "unreachable API server", args: []string{"--kubeconfig", unreachable}, want: "kubernetes: no policy set accepted: kubernetes watch"},
		{name: "missing kubeconfig", args: []string{"--kubeconfig", filepath.Join(dir, "absent")}, want: "--kubeconfig " + filepath.Join(dir, "absent")},
		{name: "unparsable kubeconfig", args: []string{"--kubeconfig", bad}, want: "--kubeconfig " + bad},
	}
	if os.Getenv("KUBERNETES_SERVICE_HOST") == "" {
		tests = append(tests, struct {
			name string
			args []string
			want string
		}{name: "no in-cluster config", args: nil, want: "no in-cluster configuration"})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			args := append([]string{"controlplane", "--insecure-plaintext", "--xds-addr", freeAddr(t), "--http-addr", freeAddr(t),
				"--metrics-addr", freeAddr(t), "--log-level", "error", "--kubernetes"}, tt.args...)
			_, err := runCmd(t, ctx, args...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

// TestKubeControlPlaneAgainstAPIServer runs `meshguard controlplane
// --kubernetes --leader-election` against a real kube-apiserver (envtest)
// and follows the bundle over ADS as an authz server would: an Istio
// AuthorizationPolicy created, changed and deleted in the cluster reaches
// the bundle next to a policy file's, the replica takes the Lease and
// writes a FailedClosed event, and on cancel it stops and releases the
// Lease.
func TestKubeControlPlaneAgainstAPIServer(t *testing.T) {
	dir := t.TempDir()
	cfg, kubeconfig := startAPIServer(t, dir)
	createNamespaces(t, cfg, "shop", "meshguard")
	kube := kubernetes.NewForConfigOrDie(cfg)
	ic := istioclient.NewForConfigOrDie(cfg)
	ctx := context.Background()
	aps := ic.SecurityV1().AuthorizationPolicies("shop")
	allow := &securityv1.AuthorizationPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "allow-web", Namespace: "shop"},
		Spec: securityv1beta1api.AuthorizationPolicy{
			Selector: &typev1beta1.WorkloadSelector{MatchLabels: map[string]string{"app": "api"}},
			Rules: []*securityv1beta1api.Rule{{
				From: []*securityv1beta1api.Rule_From{{Source: &securityv1beta1api.Source{Principals: []string{"cluster.local/ns/web/sa/web"}}}},
				To:   []*securityv1beta1api.Rule_To{{Operation: &securityv1beta1api.Operation{Methods: []string{"GET"}}}},
			}},
		},
	}
	// One policy exists before the control plane starts: it must be in the
	// first bundle served.
	if _, err := aps.Create(ctx, allow, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	policyDir := filepath.Join(dir, "policies")
	if err := os.MkdirAll(policyDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(policyDir, "file.yaml"), []byte(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: from-file, namespace: shop}
spec:
  selector: {matchLabels: {app: db}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/shop/sa/api"]}}]
`), 0o600); err != nil {
		t.Fatal(err)
	}

	t.Setenv("POD_NAME", "cp-test-0")
	xdsAddr, metricsAddr := freeAddr(t), freeAddr(t)
	cpCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		_, err := runCmd(t, cpCtx, "controlplane", "--insecure-plaintext", "--xds-addr", xdsAddr, "--http-addr", freeAddr(t),
			"--metrics-addr", metricsAddr, "--policy", policyDir, "--log-level", "warn",
			"--kubernetes", "--kubeconfig", kubeconfig,
			"--leader-election", "--leader-election-namespace", "meshguard", "--leader-election-id", "mg-test",
			"--state-namespace", "meshguard")
		done <- err
	}()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("controlplane: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Error("controlplane did not stop within 20s of cancel")
		}
	}
	t.Cleanup(stop)

	// Follow the bundle over ADS.
	// Short reconnect backoff: the subscriber connects as soon as the
	// server listens, so that it would see a bundle served before the
	// cluster's policies arrived.
	conn, err := grpc.NewClient(xdsAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{BaseDelay: 10 * time.Millisecond, Multiplier: 1.2, MaxDelay: 50 * time.Millisecond}, MinConnectTimeout: time.Second}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	var mu sync.Mutex
	var latest, first *policies.Bundle
	src := &loader.ADSSource{Conn: conn, Node: &corev3.Node{Id: "authz-test", Cluster: "meshguard-authz"},
		Log: slog.New(slog.DiscardHandler), MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond}
	adsCtx, adsCancel := context.WithCancel(ctx)
	adsDone := make(chan struct{})
	go func() {
		defer close(adsDone)
		_ = src.Run(adsCtx, func(u loader.Update) error {
			if u.Bundle != nil {
				mu.Lock()
				latest = u.Bundle
				if first == nil {
					first = u.Bundle
				}
				mu.Unlock()
			}
			return nil
		})
	}()
	t.Cleanup(func() { adsCancel(); <-adsDone })
	waitBundle := func(what string, ok func(*policies.Bundle) bool) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			mu.Lock()
			b := latest
			mu.Unlock()
			if b != nil && ok(b) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: not in the bundle served over ADS within 30s (last: %v)", what, b != nil)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	hasAP := func(b *policies.Bundle, name string) *policies.AuthorizationPolicy {
		for i := range b.Set.AuthorizationPolicies {
			ap := &b.Set.AuthorizationPolicies[i]
			if ap.Metadata.Namespace == "shop" && ap.Metadata.Name == name {
				return ap
			}
		}
		return nil
	}
	// The very first bundle served already holds the cluster's policy.
	waitBundle("first bundle", func(b *policies.Bundle) bool { return b != nil })
	mu.Lock()
	firstBundle := first
	mu.Unlock()
	if hasAP(firstBundle, "allow-web") == nil || hasAP(firstBundle, "from-file") == nil {
		t.Fatalf("first bundle served lacks the cluster's or the file's policy: %d policies", len(firstBundle.Set.AuthorizationPolicies))
	}

	cur, err := aps.Get(ctx, "allow-web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cur.Spec.Action = securityv1beta1api.AuthorizationPolicy_DENY
	if _, err := aps.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitBundle("change to DENY", func(b *policies.Bundle) bool {
		ap := hasAP(b, "allow-web")
		return ap != nil && strings.EqualFold(string(ap.Spec.Action), "DENY")
	})
	// A DENY meshguard cannot express (a wildcard service account, which
	// Istio refuses too): fails closed, and the leader writes
	// an event on it.
	bad := &securityv1.AuthorizationPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "deny-sa", Namespace: "shop"},
		Spec: securityv1beta1api.AuthorizationPolicy{
			Action: securityv1beta1api.AuthorizationPolicy_DENY,
			Rules:  []*securityv1beta1api.Rule{{From: []*securityv1beta1api.Rule_From{{Source: &securityv1beta1api.Source{ServiceAccounts: []string{"shop/*"}}}}}},
		},
	}
	if _, err := aps.Create(ctx, bad, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitBundle("fail-closed stand-in", func(b *policies.Bundle) bool { return hasAP(b, "deny-sa") != nil })
	deadline := time.Now().Add(30 * time.Second)
	for {
		evs, err := kube.CoreV1().Events("shop").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=deny-sa"})
		if err != nil {
			t.Fatal(err)
		}
		if len(evs.Items) > 0 && evs.Items[0].Reason == "FailedClosed" && evs.Items[0].Source.Host == "cp-test-0" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no FailedClosed event from the leader on deny-sa: %+v", evs.Items)
		}
		time.Sleep(50 * time.Millisecond)
	}
	lease, err := kube.CoordinationV1().Leases("meshguard").Get(ctx, "mg-test", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if lease.Spec.HolderIdentity == nil || *lease.Spec.HolderIdentity != "cp-test-0" {
		t.Fatalf("lease holder = %v, want cp-test-0", lease.Spec.HolderIdentity)
	}
	if err := aps.Delete(ctx, "allow-web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitBundle("delete", func(b *policies.Bundle) bool { return hasAP(b, "allow-web") == nil && hasAP(b, "from-file") != nil })

	// Cancel: the command returns nil and releases the Lease.
	stop()
	lease, err = kube.CoordinationV1().Leases("meshguard").Get(ctx, "mg-test", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if lease.Spec.HolderIdentity != nil && *lease.Spec.HolderIdentity != "" {
		t.Errorf("lease still held by %q after stop", *lease.Spec.HolderIdentity)
	}
}
