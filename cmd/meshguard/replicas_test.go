package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/meshguard/meshguard/controlplane/quarantine"
	"github.com/meshguard/meshguard/controlplane/state"
	statekube "github.com/meshguard/meshguard/controlplane/state/kube"
	"github.com/meshguard/meshguard/policies/wire"
)

// startAPIServer starts a kube-apiserver (envtest) with Istio's and
// meshguard's CRDs and writes a kubeconfig for the control plane (a
// system:masters user) in dir. It skips without KUBEBUILDER_ASSETS.
func startAPIServer(t testing.TB, dir string) (*rest.Config, string) {
	t.Helper()
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		t.Skip("KUBEBUILDER_ASSETS is not set: run `make kube-assets` and export KUBEBUILDER_ASSETS=$PWD/bin to run the control plane against a real kube-apiserver")
	}
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "istio.io/api").Output()
	if err != nil {
		t.Fatal(err)
	}
	env := &envtest.Environment{
		BinaryAssetsDirectory: assets,
		CRDDirectoryPaths: []string{filepath.Join(strings.TrimSpace(string(out)), "kubernetes", "customresourcedefinitions.gen.yaml"),
			filepath.Join("..", "..", "deploy", "crds")},
		ErrorIfCRDPathMissing: true,
	}
	env.ControlPlane.GetAPIServer().Configure().Set("advertise-address", "127.0.0.1").Set("endpoint-reconciler-type", "none")
	start := time.Now()
	cfg, err := env.Start()
	if err != nil {
		t.Fatalf("start the API server: %v", err)
	}
	t.Logf("kube-apiserver and etcd started in %s", time.Since(start).Round(time.Millisecond))
	t.Cleanup(func() {
		if err := env.Stop(); err != nil {
			t.Error(err)
		}
	})
	user, err := env.AddUser(envtest.User{Name: "meshguard-controlplane", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	kc, err := user.KubeConfig()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(path, kc, 0o600); err != nil {
		t.Fatal(err)
	}
	return cfg, path
}

// createNamespaces creates namespaces through the API server at cfg.
func createNamespaces(t testing.TB, cfg *rest.Config, namespaces ...string) {
	t.Helper()
	kube := kubernetes.NewForConfigOrDie(cfg)
	for _, ns := range namespaces {
		if _, err := kube.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
}

// replica is one `meshguard controlplane` process of a replicated
// deployment.
type replica struct {
	name               string
	proc               *process
	xds, http, metrics string
	args               []string
	authz              *authzServer // subscribed to this replica
	admin              []string
	bin, dir           string
	env                []string
	readyIn            time.Duration
}

func startReplica(t *testing.T, bin, dir, name, kubeconfig, policyDir string) *replica {
	t.Helper()
	r := &replica{name: name, xds: freeAddr(t), http: freeAddr(t), metrics: freeAddr(t), bin: bin, dir: dir}
	r.args = []string{"controlplane", "--insecure-plaintext", "--xds-addr", r.xds, "--http-addr", r.http, "--metrics-addr", r.metrics,
		"--policy", policyDir, "--log-level", "info",
		"--kubernetes", "--kubeconfig", kubeconfig, "--state-namespace", "meshguard",
		"--leader-election", "--leader-election-namespace", "meshguard", "--leader-election-id", "mg-replicas",
		"--leader-election-lease-duration", "3s"}
	r.env = []string{"POD_NAME=" + name}
	r.admin = []string{"--server", "http://" + r.http, "--insecure-plaintext", "--by", "oncall"}
	r.start(t)
	return r
}

func (r *replica) start(t *testing.T) {
	t.Helper()
	r.proc = startProcess(t, r.bin, r.dir, r.name+"-"+strconv.FormatInt(time.Now().UnixNano(), 36), r.env, r.args...)
	r.readyIn = waitProcessReady(t, r.proc, r.metrics, 60*time.Second)
}

// post sends an event batch to the replica's events endpoint.
func (r *replica) post(t *testing.T, body []byte) {
	t.Helper()
	resp, err := http.Post("http://"+r.http+wire.EventsPath, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Error(err)
		return
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Errorf("%s: events: %s", r.name, resp.Status)
	}
}

// release posts a release and returns the status code.
func (r *replica) release(t *testing.T, id string) int {
	t.Helper()
	resp, err := http.Post("http://"+r.http+"/v1/quarantines/release", "application/json",
		strings.NewReader(fmt.Sprintf(`{"identity":%q,"reason":"cleared","by":"oncall"}`, id)))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func (r *replica) audit(t *testing.T) []quarantine.AuditRecord {
	t.Helper()
	out, err := runCmdStdout(t, context.Background(), append([]string{"quarantine", "audit", "--json"}, r.admin...)...)
	if err != nil {
		t.Fatalf("%s audit: %v\n%s", r.name, err, out)
	}
	var recs []quarantine.AuditRecord
	if err := json.Unmarshal([]byte(out), &recs); err != nil {
		t.Fatal(err)
	}
	return recs
}

// metric reads one sample of the replica's /metrics.
func (r *replica) metric(t *testing.T, series string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + r.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	return 0
}

func anomaly(source, detail string, at int64) []byte {
	b, _ := json.Marshal(wire.EventBatch{Reporter: "spiffe://example.org/ns/shop/sa/orders", Events: []wire.Event{{
		Kind: wire.EventAnomaly, Detector: "lateral", Profile: "strict", Source: source, Destination: "orders",
		UnixMillis: at, Detail: detail}}})
	return b
}

// unknownEdge is what destination dest's sidecar reports about a call from
// source on an edge the shadow baseline does not list.
func unknownEdge(source, dest string, at int64) []byte {
	b, _ := json.Marshal(wire.EventBatch{Reporter: "spiffe://example.org/ns/shop/sa/" + strings.Split(dest, ".")[0], Events: []wire.Event{{
		Kind: wire.EventEdge, Detector: "lateral", Source: source, Destination: dest, UnixMillis: at, Detail: "unknown baseline=shadow"}}})
	return b
}

func actions(recs []quarantine.AuditRecord, id string) []string {
	var out []string
	for _, r := range recs {
		if r.Identity == id {
			out = append(out, r.Action)
		}
	}
	return out
}

// TestControlPlaneReplicas runs two `meshguard controlplane --kubernetes
// --leader-election` processes against a real kube-apiserver (envtest),
// each followed by an authz server (the real ADS subscription, compile and
// engine), and checks that
//
//   - a quarantine added through replica A's API (CLI) is enforced by the
//     authz server fed by replica B within 1s, and one triggered by a
//     detection report reaching B by the one fed by A;
//   - the same report reaching both replicas at once quarantines once;
//     distinct reports racing on both replicas all land, the stale writes
//     refused by resourceVersion (conflicts counted) and retried;
//   - a release through A racing a repeat of the old report on B stays
//     released, and two releases racing on A and B release once;
//   - the leader killed with SIGKILL, the other takes the Lease, keeps
//     serving everything, and expires what falls due (audited once); the
//     killed one restarted loads the same state.
func TestControlPlaneReplicas(t *testing.T) {
	if testing.Short() {
		t.Skip("builds meshguard and runs a kube-apiserver")
	}
	dir := t.TempDir()
	cfg, kubeconfig := startAPIServer(t, dir)
	bin := meshguardBinary(t)
	kube := kubernetes.NewForConfigOrDie(cfg)
	ctx := context.Background()
	if _, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "meshguard"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	policyDir := filepath.Join(dir, "policies")
	if err := os.MkdirAll(policyDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(policyDir, "profile.yaml"), []byte(detectionProfile), 0o600); err != nil {
		t.Fatal(err)
	}
	a := startReplica(t, bin, dir, "cp-a", kubeconfig, policyDir)
	b := startReplica(t, bin, dir, "cp-b", kubeconfig, policyDir)
	t.Logf("replicas ready in %s and %s", a.readyIn, b.readyIn)
	a.authz = startAuthzServer(t, a.xds, "authz-a")
	b.authz = startAuthzServer(t, b.xds, "authz-b")

	const (
		web     = "spiffe://example.org/ns/shop/sa/web"
		scanner = "spiffe://example.org/ns/shop/sa/scanner"
		twice   = "spiffe://example.org/ns/shop/sa/twice"
		racing  = "spiffe://example.org/ns/shop/sa/racing"
		brief   = "spiffe://example.org/ns/shop/sa/brief"
	)

	t.Run("added through A, enforced by B's authz server within 1s", func(t *testing.T) {
		start := time.Now()
		out, err := runCmd(t, ctx, append([]string{"quarantine", "add", web, "--reason", "incident 7", "--for", "1h"}, a.admin...)...)
		if err != nil {
			t.Fatalf("add: %v\n%s", err, out)
		}
		cli := time.Since(start)
		b.authz.waitEnforced(t, web, true, time.Second)
		t.Logf("CLI add on A (returned in %s) → denied by B's authz server %s after the CLI started", cli, time.Since(start))
		a.authz.waitEnforced(t, web, true, time.Second)
	})

	scannerReport := anomaly(scanner, "4 new edges", time.Now().UnixMilli())
	t.Run("detection reaching B, enforced by A's authz server within 1s", func(t *testing.T) {
		start := time.Now()
		b.post(t, scannerReport)
		a.authz.waitEnforced(t, scanner, true, time.Second)
		t.Logf("report posted to B → denied by A's authz server in %s", time.Since(start))
	})

	t.Run("the same report on both replicas quarantines once", func(t *testing.T) {
		body := anomaly(twice, "fan-out to 5 services", time.Now().UnixMilli())
		var wg sync.WaitGroup
		for _, r := range []*replica{a, b} {
			wg.Add(1)
			go func() { defer wg.Done(); r.post(t, body) }()
		}
		wg.Wait()
		for _, r := range []*replica{a, b} {
			r.authz.waitEnforced(t, twice, true, time.Second)
		}
		if got := actions(b.audit(t), twice); strings.Join(got, ",") != "add" {
			t.Fatalf("history of %s: %v, want one add", twice, got)
		}
	})

	t.Run("three destinations' reports on two replicas add up to one fan-out", func(t *testing.T) {
		const prober = "spiffe://example.org/ns/shop/sa/prober"
		now := time.Now().UnixMilli()
		a.post(t, unknownEdge(prober, "catalog", now))
		b.post(t, unknownEdge(prober, "orders", now+1))
		if rec, err := getRecord(ctx, cfg, prober); err != nil || rec.Phase != state.PhaseObserved || len(rec.Observations) != 2 {
			t.Fatalf("record after two destinations on two replicas: %+v %v", rec, err)
		}
		start := time.Now()
		third := unknownEdge(prober, "ledger.pay", now+2)
		var wg sync.WaitGroup
		for _, r := range []*replica{a, b} {
			wg.Add(1)
			go func() { defer wg.Done(); r.post(t, third) }()
		}
		wg.Wait()
		for _, r := range []*replica{a, b} {
			r.authz.waitEnforced(t, prober, true, time.Second)
		}
		t.Logf("the third destination's report on both replicas → denied by both authz servers in %s", time.Since(start))
		if got := actions(a.audit(t), prober); strings.Join(got, ",") != "add" {
			t.Fatalf("history of %s: %v, want one add", prober, got)
		}
	})

	t.Run("racing reports settle by resourceVersion, none lost", func(t *testing.T) {
		conflictsBefore := a.metric(t, `meshguard_controlplane_state_writes_total{kind="quarantine",result="conflict"}`) +
			b.metric(t, `meshguard_controlplane_state_writes_total{kind="quarantine",result="conflict"}`)
		const n = 6
		now := time.Now().UnixMilli()
		var wg sync.WaitGroup
		for i := range n {
			for _, r := range []*replica{a, b} {
				wg.Add(1)
				go func() {
					defer wg.Done()
					r.post(t, anomaly(racing, fmt.Sprintf("%s report %d", r.name, i), now+int64(i)))
				}()
			}
		}
		wg.Wait()
		var rec *state.Quarantine
		deadline := time.Now().Add(5 * time.Second)
		for {
			if got, err := getRecord(ctx, cfg, racing); err == nil && len(got.Evidence) == 2*n {
				rec = got
				break
			}
			if time.Now().After(deadline) {
				got, err := getRecord(ctx, cfg, racing)
				t.Fatalf("record of %s: %+v %v, want %d pieces of evidence", racing, got, err, 2*n)
			}
			time.Sleep(20 * time.Millisecond)
		}
		adds := 0
		for _, c := range rec.History {
			if c.Action == state.ActionAdd {
				adds++
			}
		}
		conflicts := a.metric(t, `meshguard_controlplane_state_writes_total{kind="quarantine",result="conflict"}`) +
			b.metric(t, `meshguard_controlplane_state_writes_total{kind="quarantine",result="conflict"}`) - conflictsBefore
		t.Logf("%d reports on two replicas: %d evidence, %d add, %d history entries, %v resourceVersion conflicts retried", 2*n, len(rec.Evidence), adds, len(rec.History), conflicts)
		if adds != 1 {
			t.Fatalf("%d adds, want 1: %+v", adds, rec.History)
		}
		if conflicts < 1 {
			t.Fatal("no write was refused for a stale resourceVersion: the race did not happen")
		}
	})

	t.Run("no lost release", func(t *testing.T) {
		// The report that quarantined scanner reaches B again (a retry)
		// while A releases: the release stands.
		old := scannerReport
		var wg sync.WaitGroup
		wg.Add(2)
		var code int
		go func() { defer wg.Done(); code = a.release(t, scanner) }()
		go func() { defer wg.Done(); b.post(t, old) }()
		wg.Wait()
		if code != http.StatusNoContent {
			t.Fatalf("release: %d", code)
		}
		for _, r := range []*replica{a, b} {
			r.authz.waitEnforced(t, scanner, false, time.Second)
		}
		// Two releases racing on A and B: one releases, the other is told
		// there is nothing to release.
		codes := make(chan int, 2)
		for _, r := range []*replica{a, b} {
			wg.Add(1)
			go func() { defer wg.Done(); codes <- r.release(t, twice) }()
		}
		wg.Wait()
		close(codes)
		got := map[int]int{}
		for c := range codes {
			got[c]++
		}
		if got[http.StatusNoContent] != 1 || got[http.StatusNotFound] != 1 {
			t.Fatalf("racing releases: %v", got)
		}
		audit := b.audit(t)
		if h := actions(audit, twice); strings.Join(h, ",") != "add,release" {
			t.Fatalf("history of %s: %v", twice, h)
		}
		if h := actions(audit, scanner); strings.Join(h, ",") != "add,release" {
			t.Fatalf("history of %s: %v", scanner, h)
		}
		time.Sleep(300 * time.Millisecond)
		for _, r := range []*replica{a, b} {
			if r.authz.quarantined(scanner) || r.authz.quarantined(twice) {
				t.Fatalf("%s's authz server still denies a released identity", r.name)
			}
		}
	})

	t.Run("the leader dies, the other takes over with nothing lost", func(t *testing.T) {
		leader, survivor := a, b
		lease, err := kube.CoordinationV1().Leases("meshguard").Get(ctx, "mg-replicas", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if lease.Spec.HolderIdentity != nil && *lease.Spec.HolderIdentity == b.name {
			leader, survivor = b, a
		}
		t.Logf("leader %s", leader.name)
		out, err := runCmd(t, ctx, append([]string{"quarantine", "add", brief, "--reason", "short hold", "--for", "3s"}, leader.admin...)...)
		if err != nil {
			t.Fatalf("add: %v\n%s", err, out)
		}
		survivor.authz.waitEnforced(t, brief, true, time.Second)
		before := listed(t, survivor)

		leader.proc.kill(t)
		killed := time.Now()
		// The survivor serves everything the leader wrote.
		for _, id := range []string{web, racing} {
			if !survivor.authz.quarantined(id) {
				t.Fatalf("after the leader died, %s is not denied by %s's authz server", id, survivor.name)
			}
		}
		// It takes the Lease once the dead leader's expires (3s).
		deadline := time.Now().Add(15 * time.Second)
		for {
			l, err := kube.CoordinationV1().Leases("meshguard").Get(ctx, "mg-replicas", metav1.GetOptions{})
			if err == nil && l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity == survivor.name {
				t.Logf("%s took the Lease %s after the leader was killed", survivor.name, time.Since(killed).Round(time.Millisecond))
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s did not take the Lease", survivor.name)
			}
			time.Sleep(50 * time.Millisecond)
		}
		// What falls due is expired by the new leader, once.
		deadline = time.Now().Add(10 * time.Second)
		for {
			if h := actions(survivor.audit(t), brief); strings.Join(h, ",") == "add,expire" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("history of %s: %v", brief, actions(survivor.audit(t), brief))
			}
			time.Sleep(100 * time.Millisecond)
		}
		for _, r := range survivor.audit(t) {
			if r.Identity == brief && r.Action == state.ActionExpire && r.Replica != survivor.name {
				t.Fatalf("expired by %q, want the new leader %s", r.Replica, survivor.name)
			}
		}
		survivor.authz.waitEnforced(t, brief, false, time.Second)
		// A write through the survivor still works.
		if out, err := runCmd(t, ctx, append([]string{"quarantine", "add", scanner, "--reason", "again"}, survivor.admin...)...); err != nil {
			t.Fatalf("add on the survivor: %v\n%s", err, out)
		}
		// The killed replica restarted loads the same state.
		leader.start(t)
		after := listed(t, leader)
		want := append(slices.DeleteFunc(before, func(s string) bool { return s == brief }), scanner)
		slices.Sort(want)
		if !slices.Equal(after, want) {
			t.Fatalf("restarted %s lists %v, want %v", leader.name, after, want)
		}
	})
}

func listed(t *testing.T, r *replica) []string {
	t.Helper()
	var entries []quarantine.Entry
	listJSON(t, r.admin, &entries)
	var out []string
	for _, e := range entries {
		out = append(out, e.Identity)
	}
	slices.Sort(out)
	return out
}

// getRecord reads identity's QuarantineRecord from the API server.
func getRecord(ctx context.Context, cfg *rest.Config, identity string) (*state.Quarantine, error) {
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	u, err := dyn.Resource(statekube.GroupVersion.WithResource(statekube.ResourceQuarantines)).Namespace("meshguard").
		Get(ctx, state.QuarantineName(identity), metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	data, err := json.Marshal(u.Object["spec"])
	if err != nil {
		return nil, err
	}
	var q state.Quarantine
	return &q, json.Unmarshal(data, &q)
}
