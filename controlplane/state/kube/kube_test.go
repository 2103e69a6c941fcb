package kube_test

// Tests against a real Kubernetes API server (kube-apiserver and etcd from
// `make kube-assets`, started by controller-runtime's envtest) with
// meshguard's CRDs from deploy/crds. They skip when KUBEBUILDER_ASSETS is
// not set.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/meshguard/meshguard/controlplane/quarantine"
	"github.com/meshguard/meshguard/controlplane/state"
	"github.com/meshguard/meshguard/controlplane/state/kube"
	"github.com/meshguard/meshguard/controlplane/state/statetest"
	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/wire"
)

var cluster struct {
	once sync.Once
	env  *envtest.Environment
	cfg  *rest.Config
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if cluster.env != nil {
		if err := cluster.env.Stop(); err != nil {
			code = 1
		}
	}
	os.Exit(code)
}

func apiServer(t *testing.T) *rest.Config {
	t.Helper()
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		t.Skip("KUBEBUILDER_ASSETS is not set: run `make kube-assets` and export KUBEBUILDER_ASSETS=$PWD/bin to run the state store against a real kube-apiserver")
	}
	cluster.once.Do(func() {
		env := &envtest.Environment{
			BinaryAssetsDirectory: assets,
			CRDDirectoryPaths:     []string{filepath.Join("..", "..", "..", "deploy", "crds")},
			ErrorIfCRDPathMissing: true,
		}
		env.ControlPlane.GetAPIServer().Configure().Set("advertise-address", "127.0.0.1").Set("endpoint-reconciler-type", "none")
		start := time.Now()
		cluster.cfg, cluster.err = env.Start()
		cluster.env = env
		t.Logf("kube-apiserver and etcd started in %s", time.Since(start).Round(time.Millisecond))
	})
	if cluster.err != nil {
		t.Fatalf("start the API server: %v", cluster.err)
	}
	return rest.CopyConfig(cluster.cfg)
}

var nsSeq atomic.Int64

func newNamespace(t *testing.T, cfg *rest.Config) string {
	t.Helper()
	name := fmt.Sprintf("state-%d", nsSeq.Add(1))
	kc := kubernetes.NewForConfigOrDie(cfg)
	if _, err := kc.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return name
}

// replica starts a store as one control plane replica would.
func replica(t *testing.T, cfg *rest.Config, ns string, reg prometheus.Registerer) *kube.Store {
	t.Helper()
	st, err := kube.New(kube.Options{Config: cfg, Namespace: ns, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := st.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return st
}

func TestContract(t *testing.T) {
	cfg := apiServer(t)
	statetest.Run(t, func(t *testing.T, replicas int) []state.Store {
		ns := newNamespace(t, cfg)
		out := make([]state.Store, replicas)
		for i := range out {
			out[i] = replica(t, cfg, ns, nil)
		}
		return out
	})
}

// TestConflictsSettledByResourceVersion: two replicas write the same record
// at once, each from a view the other has just made stale; the API server
// refuses the stale writes (409) and every writer's change lands.
func TestConflictsSettledByResourceVersion(t *testing.T) {
	cfg := apiServer(t)
	ns := newNamespace(t, cfg)
	regA, regB := prometheus.NewRegistry(), prometheus.NewRegistry()
	a, b := replica(t, cfg, ns, regA), replica(t, cfg, ns, regB)
	ctx := context.Background()
	id := "spiffe://example.org/ns/shop/sa/contended"
	if _, err := a.UpdateQuarantine(ctx, id, func(*state.Quarantine) (*state.Quarantine, error) { return statetest.Record(id), nil }); err != nil {
		t.Fatal(err)
	}
	statetest.Eventually(t, "B sees the record", func() bool { return len(b.Quarantines()) == 1 })
	// Both replicas read the same version, then write: the one that
	// writes second is refused and runs its update again on the newer
	// record.
	var runs [2]atomic.Int64
	gate := make(chan struct{})
	var wg sync.WaitGroup
	for i, r := range []*kube.Store{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := r.UpdateQuarantine(ctx, id, func(cur *state.Quarantine) (*state.Quarantine, error) {
				if runs[i].Add(1) == 1 {
					<-gate // both have read the same version
				}
				cur.AddEvidence(state.Evidence{Key: fmt.Sprintf("replica-%d", i), Reporter: "spiffe://example.org/ns/shop/sa/orders", Received: time.Now()})
				return cur, nil
			})
			if err != nil {
				t.Error(err)
			}
		}()
	}
	statetest.Eventually(t, "both replicas computed their update", func() bool { return runs[0].Load() == 1 && runs[1].Load() == 1 })
	close(gate)
	wg.Wait()
	conflicts := testutil.ToFloat64(mustCounter(t, regA, "meshguard_controlplane_state_writes_total", "quarantine", "conflict")) +
		testutil.ToFloat64(mustCounter(t, regB, "meshguard_controlplane_state_writes_total", "quarantine", "conflict"))
	if conflicts < 1 || runs[0].Load()+runs[1].Load() < 3 {
		t.Fatalf("conflicts %v, update runs %d+%d: the stale write was not refused", conflicts, runs[0].Load(), runs[1].Load())
	}
	for _, r := range []*kube.Store{a, b} {
		statetest.Eventually(t, "both writers' evidence in the record", func() bool {
			qs := r.Quarantines()
			return len(qs) == 1 && qs[0].HasEvidence("replica-0") && qs[0].HasEvidence("replica-1")
		})
	}
}

func mustCounter(t *testing.T, g prometheus.Gatherer, name string, labels ...string) prometheus.Collector {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			ok := true
			for i, lp := range m.GetLabel() {
				if i >= len(labels) || lp.GetValue() != labels[i] {
					ok = false
				}
			}
			if ok {
				c := prometheus.NewGauge(prometheus.GaugeOpts{Name: name})
				c.Set(m.GetCounter().GetValue() + m.GetGauge().GetValue())
				return c
			}
		}
	}
	t.Fatalf("no %s%v", name, labels)
	return nil
}

// TestInvalidObjectsIgnored: an object written by hand that does not
// validate (or sits under another name than its identity gives) is not in
// the view, and a write for its identity replaces it.
func TestInvalidObjectsIgnored(t *testing.T) {
	cfg := apiServer(t)
	ns := newNamespace(t, cfg)
	reg := prometheus.NewRegistry()
	st := replica(t, cfg, ns, reg)
	dyn := dynamic.NewForConfigOrDie(cfg)
	gvr := kube.GroupVersion.WithResource(kube.ResourceQuarantines)
	id := "spiffe://example.org/ns/shop/sa/web"
	for _, o := range []map[string]any{
		{"metadata": map[string]any{"name": "by-hand"}, "spec": map[string]any{"identity": id, "phase": "Active", "by": "kubectl", "createdAt": "2026-01-01T00:00:00Z"}},
		{"metadata": map[string]any{"name": state.QuarantineName(id)}, "spec": map[string]any{"identity": "not-an-id", "phase": "Active", "by": "kubectl", "createdAt": "2026-01-01T00:00:00Z"}},
	} {
		o["apiVersion"], o["kind"] = kube.GroupVersion.String(), "QuarantineRecord"
		if _, err := dyn.Resource(gvr).Namespace(ns).Create(context.Background(), &unstructured.Unstructured{Object: o}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	statetest.Eventually(t, "both objects reported invalid", func() bool {
		return testutil.ToFloat64(mustCounter(t, reg, "meshguard_controlplane_state_invalid_records_total", "quarantine")) == 2
	})
	if qs := st.Quarantines(); len(qs) != 0 {
		t.Fatalf("invalid objects in the view: %+v", qs)
	}
	// The API server refuses a malformed time outright (CRD schema).
	bad := &unstructured.Unstructured{Object: map[string]any{"apiVersion": kube.GroupVersion.String(), "kind": "QuarantineRecord",
		"metadata": map[string]any{"name": "bad-time"}, "spec": map[string]any{"identity": id, "phase": "Active", "by": "x", "createdAt": "yesterday"}}}
	if _, err := dyn.Resource(gvr).Namespace(ns).Create(context.Background(), bad, metav1.CreateOptions{}); err == nil || !strings.Contains(err.Error(), "createdAt") {
		t.Fatalf("malformed createdAt: %v", err)
	}
	got, err := st.UpdateQuarantine(context.Background(), id, func(cur *state.Quarantine) (*state.Quarantine, error) {
		if cur != nil {
			return nil, fmt.Errorf("the invalid object was handed to the update: %+v", cur)
		}
		return statetest.Record(id), nil
	})
	if err != nil || got == nil || got.Identity != id {
		t.Fatalf("write over the invalid object: %+v, %v", got, err)
	}
	statetest.Eventually(t, "the replaced record is in the view", func() bool { return len(st.Quarantines()) == 1 })
}

func TestStartErrors(t *testing.T) {
	cfg := apiServer(t)
	if _, err := kube.New(kube.Options{Config: cfg, Namespace: "Not_A_Label"}); err == nil {
		t.Error("invalid namespace accepted")
	}
	// A user the API server knows but RBAC lets read nothing.
	user, err := cluster.env.AddUser(envtest.User{Name: "nobody"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	st, err := kube.New(kube.Options{Config: user.Config(), Namespace: "default"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := st.Start(ctx); err == nil || !strings.Contains(err.Error(), "RBAC") {
		t.Fatalf("start without permission: %v", err)
	}
}

// TestWriteRefused: a write the API server refuses (here RBAC lets the
// replica read but not write) is an error to the caller, counted, and
// changes nothing in the view.
func TestWriteRefused(t *testing.T) {
	cfg := apiServer(t)
	ns := newNamespace(t, cfg)
	kc := kubernetes.NewForConfigOrDie(cfg)
	ctx := context.Background()
	if _, err := kc.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "read-state"},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{kube.GroupVersion.Group}, Resources: []string{kube.ResourceQuarantines, kube.ResourceBaselines},
			Verbs: []string{"get", "list", "watch"}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := kc.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "read-state"},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "read-state"},
		Subjects: []rbacv1.Subject{{Kind: "User", Name: "reader"}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	user, err := cluster.env.AddUser(envtest.User{Name: "reader"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	st := replica(t, user.Config(), ns, reg)
	id := "spiffe://example.org/ns/shop/sa/web"
	_, err = st.UpdateQuarantine(ctx, id, func(*state.Quarantine) (*state.Quarantine, error) { return statetest.Record(id), nil })
	if err == nil || !strings.Contains(err.Error(), "forbidden") {
		t.Fatalf("write without permission: %v", err)
	}
	if got := testutil.ToFloat64(mustCounter(t, reg, "meshguard_controlplane_state_writes_total", "quarantine", "error")); got != 1 {
		t.Fatalf("write errors counted %v, want 1", got)
	}
	if len(st.Quarantines()) != 0 {
		t.Fatal("a refused write is in the view")
	}
}

// proxy forwards TCP to the API server until cut, as a network partition
// between a control plane and the API server would.
type proxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  []net.Conn
	down   bool
}

func startProxy(t *testing.T, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			down := p.down
			p.mu.Unlock()
			if down {
				c.Close()
				continue
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, u)
			p.mu.Unlock()
			go func() { _, _ = io.Copy(u, c); u.Close() }()
			go func() { _, _ = io.Copy(c, u); c.Close() }()
		}
	}()
	t.Cleanup(func() { ln.Close(); p.cut(true) })
	return p
}

// cut drops every connection; with down, new ones are refused until up.
func (p *proxy) cut(down bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = down
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// TestAPIServerUnreachable: the quarantine manager on the Kubernetes store,
// with the API server cut off: the view keeps every quarantine (nothing is
// released), an add and a release are errors, a detection is enforced by
// the replica and pending, the failures are counted; once the API server
// is back the pending quarantine is stored.
func TestAPIServerUnreachable(t *testing.T) {
	cfg := apiServer(t)
	ns := newNamespace(t, cfg)
	u, err := url.Parse(cfg.Host)
	if err != nil {
		t.Fatal(err)
	}
	px := startProxy(t, u.Host)
	pcfg := rest.CopyConfig(cfg)
	pcfg.Host = "https://" + px.ln.Addr().String()
	reg := prometheus.NewRegistry()
	st, err := kube.New(kube.Options{Config: pcfg, Namespace: ns, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := st.Start(ctx); err != nil {
		t.Fatal(err)
	}
	sink := &sink{}
	qm, err := quarantine.New(quarantine.Options{Store: st, Sink: sink, Registerer: reg, Replica: "cp-0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(qm.Close)
	if err := qm.Load(ctx); err != nil {
		t.Fatal(err)
	}
	held := "spiffe://example.org/ns/shop/sa/held"
	if _, err := qm.Add(ctx, quarantine.AddRequest{Identity: held, Reason: "incident", By: "ops", For: time.Hour}); err != nil {
		t.Fatal(err)
	}

	px.cut(true)
	if _, err := qm.Add(ctx, quarantine.AddRequest{Identity: "spiffe://example.org/ns/shop/sa/new", Reason: "r", By: "ops"}); !errors.Is(err, quarantine.ErrStore) {
		t.Fatalf("add with the API server unreachable: %v", err)
	}
	if err := qm.Release(ctx, held, "ops", "cleared"); !errors.Is(err, quarantine.ErrStore) {
		t.Fatalf("release with the API server unreachable: %v", err)
	}
	attacker := spiffeid.RequireFromString("spiffe://example.org/ns/shop/sa/attacker")
	ev := state.Evidence{Key: "report-1", Reporter: "spiffe://example.org/ns/shop/sa/orders", Received: time.Now()}
	if _, err := qm.Quarantine(ctx, quarantine.Finding{Source: attacker, By: ev.Reporter, Reason: "lateral", Evidence: []state.Evidence{ev}}); !errors.Is(err, quarantine.ErrStore) {
		t.Fatalf("detection with the API server unreachable: %v", err)
	}
	if got := sink.identities(); strings.Join(got, ",") != attacker.String()+","+held {
		t.Fatalf("served with the API server unreachable: %v", got)
	}
	if got := testutil.ToFloat64(mustCounter(t, reg, "meshguard_controlplane_quarantine_pending")); got != 1 {
		t.Fatalf("pending %v", got)
	}
	if got := testutil.ToFloat64(mustCounter(t, reg, "meshguard_controlplane_state_writes_total", "quarantine", "error")); got < 3 {
		t.Fatalf("write errors counted %v, want at least 3", got)
	}

	px.cut(false)
	statetest.Eventually(t, "the pending quarantine stored", func() bool {
		_ = qm.Sweep(ctx)
		for _, q := range st.Quarantines() {
			if q.Identity == attacker.String() && q.HasEvidence("report-1") {
				return true
			}
		}
		return false
	})
	if got := testutil.ToFloat64(mustCounter(t, reg, "meshguard_controlplane_quarantine_pending")); got != 0 {
		t.Fatalf("pending after recovery %v", got)
	}
	if got := sink.identities(); strings.Join(got, ",") != attacker.String()+","+held {
		t.Fatalf("served after recovery: %v", got)
	}
}

// sink records the quarantine sets published.
type sink struct {
	mu   sync.Mutex
	last policies.Set
}

func (s *sink) SetSource(_ string, set policies.Set) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.last = set
	return nil
}

func (s *sink) identities() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, q := range s.last.Quarantines {
		out = append(out, q.Spec.Identity)
	}
	return out
}

// TestCorrelationAcrossReplicas: two control plane replicas on the
// Kubernetes store each receive some of the reports about one source; the
// reports add up on the source's QuarantineRecord, which both write, and
// the report that completes the fan-out, received by both at once,
// quarantines it once (the write that loses the race is refused by
// resourceVersion and decided again on the record the other wrote).
func TestCorrelationAcrossReplicas(t *testing.T) {
	cfg := apiServer(t)
	ns := newNamespace(t, cfg)
	regA, regB := prometheus.NewRegistry(), prometheus.NewRegistry()
	stA, stB := replica(t, cfg, ns, regA), replica(t, cfg, ns, regB)
	profiles := func() []policies.AnomalyProfile {
		return []policies.AnomalyProfile{{Metadata: policies.ObjectMeta{Name: "mesh", Namespace: "istio-system"},
			Spec: policies.AnomalyProfileSpec{Correlation: &policies.Correlation{Window: "1m", MaxDestinations: 2}}}}
	}
	manager := func(st *kube.Store, reg prometheus.Registerer, name string) *quarantine.Manager {
		qm, err := quarantine.New(quarantine.Options{Store: st, Sink: &sink{}, Profiles: profiles, Registerer: reg, Replica: name})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(qm.Close)
		if err := qm.Load(context.Background()); err != nil {
			t.Fatal(err)
		}
		return qm
	}
	a, b := manager(stA, regA, "cp-a"), manager(stB, regB, "cp-b")
	ctx := context.Background()
	attacker := "spiffe://example.org/ns/shop/sa/reviews"
	probe := func(dest string, ms int64) []wire.Event {
		return []wire.Event{{Kind: wire.EventEdge, Detector: "lateral", Source: attacker, Destination: dest, UnixMillis: ms, Detail: "unknown baseline=shadow"}}
	}
	a.HandleEvents(ctx, "spiffe://example.org/ns/shop/sa/catalog", probe("catalog", 1))
	statetest.Eventually(t, "B sees A's observation", func() bool {
		qs := stB.Quarantines()
		return len(qs) == 1 && qs[0].Phase == state.PhaseObserved && len(qs[0].Observations) == 1
	})
	b.HandleEvents(ctx, "spiffe://example.org/ns/shop/sa/orders", probe("orders", 2))
	if len(a.List()) != 0 || len(b.List()) != 0 {
		t.Fatal("quarantined after two destinations")
	}
	last := probe("ledger", 3)
	var wg sync.WaitGroup
	for _, qm := range []*quarantine.Manager{a, b} {
		wg.Add(1)
		go func() { defer wg.Done(); qm.HandleEvents(ctx, "spiffe://example.org/ns/pay/sa/ledger", last) }()
	}
	wg.Wait()
	for _, st := range []*kube.Store{stA, stB} {
		statetest.Eventually(t, "both replicas serve one quarantine added once", func() bool {
			qs := st.Quarantines()
			if len(qs) != 1 || qs[0].Phase != state.PhaseActive {
				return false
			}
			adds := 0
			for _, c := range qs[0].History {
				if c.Action == state.ActionAdd {
					adds++
				}
			}
			return adds == 1 && qs[0].By == quarantine.ByCorrelation && len(qs[0].Evidence) == 3
		})
	}
	adds := testutil.ToFloat64(mustCounter(t, regA, "meshguard_controlplane_quarantine_changes_total", "add")) +
		testutil.ToFloat64(mustCounter(t, regB, "meshguard_controlplane_quarantine_changes_total", "add"))
	if adds != 1 {
		t.Fatalf("%v adds across the replicas, want 1", adds)
	}
	for _, qm := range []*quarantine.Manager{a, b} {
		statetest.Eventually(t, "each replica lists the quarantine", func() bool {
			got := qm.List()
			return len(got) == 1 && got[0].Identity == attacker
		})
	}
}
