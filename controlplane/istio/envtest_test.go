package istio

// Tests against a real Kubernetes API server (kube-apiserver and etcd built
// by `make kube-assets`, started through controller-runtime's envtest) with
// Istio's CRDs from the istio.io/api module and meshguard's CRDs from
// deploy/crds. They skip when KUBEBUILDER_ASSETS is not set.

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	securityv1beta1api "istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
	extensionsv1alpha1 "istio.io/client-go/pkg/apis/extensions/v1alpha1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	securityv1beta1 "istio.io/client-go/pkg/apis/security/v1beta1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	"github.com/meshguard/meshguard/controlplane/istiogen"
	"github.com/meshguard/meshguard/controlplane/store"
	"github.com/meshguard/meshguard/internal/testbed/kubestrict"
	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/wire"
)

// cluster is one API server shared by the tests of this package.
var cluster struct {
	once sync.Once
	env  *envtest.Environment
	cfg  *rest.Config
	err  error
}

func TestMain(m *testing.M) {
	// Istio's generated fake clientset does not answer client-go's
	// streaming list (watch-list) requests, which client-go uses by
	// default; informers on it would never sync. Use list+watch.
	os.Setenv("KUBE_FEATURE_WatchListClient", "false")
	code := m.Run()
	if cluster.env != nil {
		if err := cluster.env.Stop(); err != nil {
			code = 1
		}
	}
	os.Exit(code)
}

type clients struct {
	cfg     *rest.Config
	kube    kubernetes.Interface
	istio   istioclient.Interface
	dynamic dynamic.Interface
}

// apiServer starts (once) and returns clients for the shared API server.
func apiServer(t *testing.T) clients {
	t.Helper()
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		t.Skip("KUBEBUILDER_ASSETS is not set: run `make kube-assets` and export KUBEBUILDER_ASSETS=$PWD/bin to run the tests against a real kube-apiserver")
	}
	cluster.once.Do(func() {
		out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "istio.io/api").Output()
		if err != nil {
			cluster.err = err
			return
		}
		istioCRDs := filepath.Join(strings.TrimSpace(string(out)), "kubernetes", "customresourcedefinitions.gen.yaml")
		env := &envtest.Environment{
			BinaryAssetsDirectory: assets,
			CRDDirectoryPaths:     []string{istioCRDs, filepath.Join("..", "..", "deploy", "crds")},
			ErrorIfCRDPathMissing: true,
		}
		api := env.ControlPlane.GetAPIServer()
		api.Configure().Set("advertise-address", "127.0.0.1").Set("endpoint-reconciler-type", "none")
		start := time.Now()
		cluster.cfg, cluster.err = env.Start()
		cluster.env = env
		t.Logf("kube-apiserver and etcd started in %s", time.Since(start).Round(time.Millisecond))
	})
	if cluster.err != nil {
		t.Fatalf("start the API server: %v", cluster.err)
	}
	cfg := rest.CopyConfig(cluster.cfg)
	cfg.QPS, cfg.Burst = 200, 400
	c := clients{cfg: cfg}
	var err error
	if c.kube, err = kubernetes.NewForConfig(cfg); err != nil {
		t.Fatal(err)
	}
	if c.istio, err = istioclient.NewForConfig(cfg); err != nil {
		t.Fatal(err)
	}
	if c.dynamic, err = dynamic.NewForConfig(cfg); err != nil {
		t.Fatal(err)
	}
	return c
}

func namespace(t *testing.T, c clients, name string) {
	t.Helper()
	_, err := c.kube.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
}

// waitAll waits until every subscriber has received a bundle satisfying ok
// and returns the time the last one did.
func waitAll(t *testing.T, subs []<-chan *policies.Bundle, what string, ok func(*policies.Bundle) bool) time.Time {
	t.Helper()
	deadline := time.After(10 * time.Second)
	var last time.Time
	for i, ch := range subs {
	wait:
		for {
			select {
			case b := <-ch:
				if ok(b) {
					last = time.Now()
					break wait
				}
			case <-deadline:
				t.Fatalf("subscriber %d: no bundle with %s within 10s", i, what)
			}
		}
	}
	return last
}

func findAP(b *policies.Bundle, ns, name string) *policies.AuthorizationPolicy {
	for i := range b.Set.AuthorizationPolicies {
		ap := &b.Set.AuthorizationPolicies[i]
		if ap.Metadata.Namespace == ns && ap.Metadata.Name == name {
			return ap
		}
	}
	return nil
}

// TestKubeAuthorizationPoliciesReachEverySubscriber creates, changes and
// deletes AuthorizationPolicies through istio.io/client-go against a real
// API server and measures how long each change takes to reach every
// subscriber of the bundle. The target is 1 s.
func TestKubeAuthorizationPoliciesReachEverySubscriber(t *testing.T) {
	c := apiServer(t)
	ctx := context.Background()
	namespace(t, c, "shop")

	// The control plane's policy store, compiling every candidate bundle as
	// the control plane does; three subscribers stand for the xDS server's
	// bundle consumers.
	sink, err := store.New(store.Options{Check: func(b *policies.Bundle) error { _, err := policies.Compile(b); return err }})
	if err != nil {
		t.Fatal(err)
	}
	var subs []<-chan *policies.Bundle
	for range 3 {
		ch := make(chan *policies.Bundle, 256)
		t.Cleanup(sink.Subscribe(func(b *policies.Bundle) { ch <- b }))
		subs = append(subs, ch)
	}
	reporter := NewEventReporter(c.kube, "test-replica", nil)
	reporter.SetLeading(true)
	w, err := New(Options{Istio: c.istio, Dynamic: c.dynamic, Discovery: c.kube.Discovery(), Sink: sink, Reporter: reporter})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(runCtx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	waitAll(t, subs, "the initial set", func(*policies.Bundle) bool { return true })

	var latencies []time.Duration
	// measure times a change in two parts: the API call (the first write of
	// a kind to a fresh API server is slow: it compiles the CRD's validation
	// rules) and the propagation from the API server having the change to
	// every subscriber having a bundle with it, which is what the 1 s
	// target is about.
	measure := func(what string, change func() error, ok func(*policies.Bundle) bool) {
		t.Helper()
		start := time.Now()
		if err := change(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		written := time.Now()
		seen := waitAll(t, subs, what, ok)
		lat := seen.Sub(written)
		latencies = append(latencies, lat)
		t.Logf("%-30s API call %8s, then reached all %d subscribers in %s", what, written.Sub(start).Round(100*time.Microsecond), len(subs), lat.Round(100*time.Microsecond))
		if lat > time.Second {
			t.Errorf("%s took %s to reach every subscriber, want ≤ 1s", what, lat)
		}
	}

	aps := c.istio.SecurityV1().AuthorizationPolicies("shop")
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
	measure("create (v1)", func() error {
		_, err := aps.Create(ctx, allow, metav1.CreateOptions{})
		return err
	}, func(b *policies.Bundle) bool { return findAP(b, "shop", "allow-web") != nil })

	measure("change (v1)", func() error {
		cur, err := aps.Get(ctx, "allow-web", metav1.GetOptions{})
		if err != nil {
			return err
		}
		cur.Spec.Rules[0].To[0].Operation.Methods = []string{"GET", "POST"}
		_, err = aps.Update(ctx, cur, metav1.UpdateOptions{})
		return err
	}, func(b *policies.Bundle) bool {
		ap := findAP(b, "shop", "allow-web")
		return ap != nil && slices.Equal(ap.Spec.Rules[0].To[0].Operation.Methods, []string{"GET", "POST"})
	})

	legacy := &securityv1beta1.AuthorizationPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "deny-admin", Namespace: "shop"},
		Spec: securityv1beta1api.AuthorizationPolicy{
			Action: securityv1beta1api.AuthorizationPolicy_DENY,
			Rules:  []*securityv1beta1api.Rule{{To: []*securityv1beta1api.Rule_To{{Operation: &securityv1beta1api.Operation{Paths: []string{"/admin/*"}}}}}},
		},
	}
	measure("create (v1beta1)", func() error {
		_, err := c.istio.SecurityV1beta1().AuthorizationPolicies("shop").Create(ctx, legacy, metav1.CreateOptions{})
		return err
	}, func(b *policies.Bundle) bool {
		// Served at both versions, kept once.
		n := 0
		for _, ap := range b.Set.AuthorizationPolicies {
			if ap.Metadata.Name == "deny-admin" {
				n++
			}
		}
		return n == 1 && len(b.Set.AuthorizationPolicies) == 2
	})

	measure("delete (v1)", func() error {
		return aps.Delete(ctx, "allow-web", metav1.DeleteOptions{})
	}, func(b *policies.Bundle) bool {
		return findAP(b, "shop", "allow-web") == nil && findAP(b, "shop", "deny-admin") != nil
	})

	quarantines := c.dynamic.Resource(MeshguardGroupVersion.WithResource("quarantines")).Namespace("shop")
	measure("create Quarantine (meshguard)", func() error {
		q := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": policies.APIVersionMeshguard, "kind": policies.KindQuarantine,
			"metadata": map[string]any{"name": "compromised", "namespace": "shop"},
			"spec":     map[string]any{"identity": "spiffe://cluster.local/ns/shop/sa/compromised", "reason": "test"},
		}}
		_, err := quarantines.Create(ctx, q, metav1.CreateOptions{})
		return err
	}, func(b *policies.Bundle) bool { return len(b.Set.Quarantines) == 1 })

	// A DENY policy meshguard cannot express fails closed and the leader
	// writes an event on it.
	measure("create unconvertible DENY", func() error {
		bad := &securityv1.AuthorizationPolicy{
			ObjectMeta: metav1.ObjectMeta{Name: "deny-sa", Namespace: "shop"},
			Spec: securityv1beta1api.AuthorizationPolicy{
				Action: securityv1beta1api.AuthorizationPolicy_DENY,
				Rules:  []*securityv1beta1api.Rule{{From: []*securityv1beta1api.Rule_From{{Source: &securityv1beta1api.Source{ServiceAccounts: []string{"shop/*"}}}}}},
			},
		}
		_, err := aps.Create(ctx, bad, metav1.CreateOptions{})
		return err
	}, func(b *policies.Bundle) bool {
		ap := findAP(b, "shop", "deny-sa")
		return ap != nil && ap.Metadata.Annotations[AnnotationConversionError] != "" && len(ap.Spec.Rules) == 1 && len(ap.Spec.Rules[0].From) == 0
	})
	deadline := time.Now().Add(5 * time.Second)
	for {
		evs, err := c.kube.CoreV1().Events("shop").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=deny-sa"})
		if err != nil {
			t.Fatal(err)
		}
		if len(evs.Items) == 1 && evs.Items[0].Reason == EventReasonFailedClosed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no FailedClosed event on deny-sa: %+v", evs.Items)
		}
		time.Sleep(20 * time.Millisecond)
	}

	slices.Sort(latencies)
	t.Logf("latency over %d changes: min %s, median %s, max %s (debounce %s)", len(latencies),
		latencies[0].Round(100*time.Microsecond), latencies[len(latencies)/2].Round(100*time.Microsecond),
		latencies[len(latencies)-1].Round(100*time.Microsecond), DefaultDebounce)
}

// TestKubeMeshguardCRDsAcceptEveryKind creates one object of every
// meshguard kind through the dynamic client (the API server checks it
// against the generated schema) and checks it reaches the set.
func TestKubeMeshguardCRDsAcceptEveryKind(t *testing.T) {
	c := apiServer(t)
	ctx := context.Background()
	namespace(t, c, "kinds")
	docs := []string{
		`{"apiVersion":"meshguard.dev/v1alpha1","kind":"IdentityPolicy","metadata":{"name":"ip"},"spec":{"workloads":["spiffe://cluster.local/ns/kinds/sa/api"],"action":"ALLOW","mode":"dry-run","rules":[{"name":"web","from":[{"ids":["spiffe://cluster.local/ns/*/sa/web"]}],"to":[{"routes":["users"],"methods":["GET"]}],"jwt":{"audiences":["api"],"claims":[{"name":"groups","values":["admin"]}]}}]}}`,
		`{"apiVersion":"meshguard.dev/v1alpha1","kind":"DefaultDeny","metadata":{"name":"dd"},"spec":{"mode":"enforce"}}`,
		`{"apiVersion":"meshguard.dev/v1alpha1","kind":"RouteOverride","metadata":{"name":"ro"},"spec":{"route":"health","mode":"off","disableExtAuthz":true,"anomaly":{"rateZ":6}}}`,
		`{"apiVersion":"meshguard.dev/v1alpha1","kind":"TrafficBaseline","metadata":{"name":"tb"},"spec":{"mode":"shadow","edges":[{"source":"spiffe://cluster.local/ns/kinds/sa/web","destination":"api","routes":["users"]}]}}`,
		`{"apiVersion":"meshguard.dev/v1alpha1","kind":"AnomalyProfile","metadata":{"name":"ap"},"spec":{"rate":{"halfLife":"30s","zScore":4,"minRps":5},"errors":{"minRequests":20},"responses":{"rate":"quarantine"},"quarantineFor":"10m"}}`,
		`{"apiVersion":"meshguard.dev/v1alpha1","kind":"Quarantine","metadata":{"name":"q"},"spec":{"identity":"spiffe://cluster.local/ns/kinds/sa/bad","expiresAt":"2030-01-01T00:00:00Z"}}`,
		`{"apiVersion":"meshguard.dev/v1alpha1","kind":"MeshSettings","metadata":{"name":"mesh"},"spec":{"rootNamespace":"istio-system","trustDomain":"cluster.local","pathNormalization":"MERGE_SLASHES"}}`,
	}
	for _, d := range docs {
		var u unstructured.Unstructured
		if err := u.UnmarshalJSON([]byte(d)); err != nil {
			t.Fatal(err)
		}
		res := MeshguardGroupVersion.WithResource(MeshguardResources[u.GetKind()])
		if _, err := c.dynamic.Resource(res).Namespace("kinds").Create(ctx, &u, metav1.CreateOptions{}); err != nil {
			t.Fatalf("%s: %v", u.GetKind(), err)
		}
	}
	// The schema rejects what the model cannot hold.
	bad := `{"apiVersion":"meshguard.dev/v1alpha1","kind":"DefaultDeny","metadata":{"name":"bad"},"spec":{"mode":"sometimes"}}`
	var u unstructured.Unstructured
	if err := u.UnmarshalJSON([]byte(bad)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.dynamic.Resource(MeshguardGroupVersion.WithResource("defaultdenies")).Namespace("kinds").Create(ctx, &u, metav1.CreateOptions{}); err == nil {
		t.Error("the API server accepted mode: sometimes")
	}

	sink := newRecordingSink()
	runWatcher(t, Options{Istio: c.istio, Dynamic: c.dynamic, Discovery: c.kube.Discovery(), Sink: sink, Namespace: "kinds"})
	set := sink.next(t, "every kind", func(s policies.Set) bool {
		return len(s.IdentityPolicies) == 1 && len(s.DefaultDenies) == 1 && len(s.RouteOverrides) == 1 && len(s.TrafficBaselines) == 1 &&
			len(s.AnomalyProfiles) == 1 && len(s.Quarantines) == 1 && s.Settings.PathNormalization == "MERGE_SLASHES"
	})
	if got := set.IdentityPolicies[0].Spec.Rules[0].JWT.Claims[0].Values; !slices.Equal(got, []string{"admin"}) {
		t.Errorf("identity policy claims = %v", got)
	}
	if z := set.RouteOverrides[0].Spec.Anomaly.RateZ; z == nil || *z != 6 {
		t.Errorf("route override rateZ = %v", z)
	}
}

// TestKubeLeaderElection runs two replicas against one Lease: exactly one
// leads, and when it stops the other takes over.
func TestKubeLeaderElection(t *testing.T) {
	c := apiServer(t)
	ctx := context.Background()
	namespace(t, c, "meshguard")
	type replica struct {
		name    string
		leading chan bool
		cancel  context.CancelFunc
		done    chan struct{}
	}
	start := func(name string) *replica {
		r := &replica{name: name, leading: make(chan bool, 10), done: make(chan struct{})}
		rctx, cancel := context.WithCancel(ctx)
		r.cancel = cancel
		go func() {
			defer close(r.done)
			err := RunLeaderElection(rctx, c.kube, LeaderOptions{
				Namespace: "meshguard", Name: "meshguard-controlplane", Identity: name,
				LeaseDuration: 2 * time.Second, RenewDeadline: 1500 * time.Millisecond, RetryPeriod: 100 * time.Millisecond,
				OnChange: func(l bool) { r.leading <- l },
			})
			if err != nil {
				t.Error(err)
			}
		}()
		t.Cleanup(func() { cancel(); <-r.done })
		return r
	}
	a := start("replica-a")
	if !<-a.leading {
		t.Fatal("first replica did not lead")
	}
	b := start("replica-b")
	select {
	case l := <-b.leading:
		t.Fatalf("second replica reports leading=%v while the first holds the lease", l)
	case <-time.After(2500 * time.Millisecond):
	}
	lease, err := c.kube.CoordinationV1().Leases("meshguard").Get(ctx, "meshguard-controlplane", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if lease.Spec.HolderIdentity == nil || *lease.Spec.HolderIdentity != "replica-a" {
		t.Fatalf("lease holder = %v", lease.Spec.HolderIdentity)
	}
	handover := time.Now()
	a.cancel() // releases the lease on the way out
	<-a.done
	select {
	case l := <-b.leading:
		if !l {
			t.Fatal("second replica reported losing a lease it never had")
		}
		t.Logf("second replica took over %s after the first stopped", time.Since(handover).Round(time.Millisecond))
	case <-time.After(10 * time.Second):
		t.Fatal("second replica did not take over")
	}
}

// TestKubeGeneratedResourcesApplyAndReadBack applies what `meshguard istio
// generate` writes (the YAML, as kubectl would) to the API server, which
// checks it against Istio's CRD schemas, and reads it back through
// istio.io/client-go unchanged.
func TestKubeGeneratedResourcesApplyAndReadBack(t *testing.T) {
	c := apiServer(t)
	ctx := context.Background()
	set := policies.Set{AuthorizationPolicies: []policies.AuthorizationPolicy{{
		APIVersion: policies.APIVersionIstioV1, Kind: policies.KindAuthorizationPolicy,
		Metadata: policies.ObjectMeta{Name: "allow", Namespace: "gen-a"},
		Spec:     policies.AuthorizationPolicySpec{Action: "ALLOW", Rules: []policies.Rule{{}}},
	}}}
	b, _, err := policies.NewBundle("", set)
	if err != nil {
		t.Fatal(err)
	}
	prio := int32(100)
	out, err := istiogen.Generate(istiogen.Config{
		Bundle:   b,
		Provider: istiogen.Provider{Service: "meshguard-authz.meshguard.svc.cluster.local"},
		// The bundle embedded, to read it back intact (cmd/meshguard's
		// TestKubeIstioFiltersFollowTheCluster applies the default, which
		// fetches it).
		Wasm: istiogen.Wasm{URL: "oci://ghcr.io/meshguard/filter:v0.1.0", RequireMTLS: true, Priority: &prio, BundleFrom: istiogen.BundleFromEmbedded,
			ControlPlane: wire.ControlPlane{Cluster: "outbound|8080||meshguard-controlplane.meshguard.svc.cluster.local"}},
		Targets: []istiogen.Target{
			{Namespace: "gen-a"},
			{Namespace: "gen-b", Name: "api", Selector: map[string]string{"app": "api"}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	namespace(t, c, "gen-a")
	namespace(t, c, "gen-b")
	data, err := out.ResourcesYAML()
	if err != nil {
		t.Fatal(err)
	}
	docs, err := kubestrict.Documents(data)
	if err != nil {
		t.Fatal(err)
	}
	for _, doc := range docs {
		var u unstructured.Unstructured
		js, err := yaml.YAMLToJSONStrict(doc)
		if err != nil {
			t.Fatal(err)
		}
		if err := u.UnmarshalJSON(js); err != nil {
			t.Fatal(err)
		}
		gvr := u.GroupVersionKind().GroupVersion().WithResource(strings.ToLower(u.GetKind()) + "s")
		if u.GetKind() == "AuthorizationPolicy" {
			gvr.Resource = "authorizationpolicies"
		}
		if _, err := c.dynamic.Resource(gvr).Namespace(u.GetNamespace()).Create(ctx, &u, metav1.CreateOptions{FieldValidation: "Strict"}); err != nil {
			t.Fatalf("apply %s %s/%s: %v", u.GetKind(), u.GetNamespace(), u.GetName(), err)
		}
	}
	for _, want := range out.AuthorizationPolicies {
		got, err := c.istio.SecurityV1().AuthorizationPolicies(want.Namespace).Get(ctx, want.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(&got.Spec, &want.Spec) {
			t.Errorf("AuthorizationPolicy %s/%s read back changed:\n got %v\nwant %v", want.Namespace, want.Name, &got.Spec, &want.Spec)
		}
	}
	for _, want := range out.EnvoyFilters {
		got, err := c.istio.NetworkingV1alpha3().EnvoyFilters(want.Namespace).Get(ctx, want.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(&got.Spec, &want.Spec) {
			t.Errorf("EnvoyFilter %s/%s read back changed:\n got %v\nwant %v", want.Namespace, want.Name, &got.Spec, &want.Spec)
		}
	}
	for _, want := range out.WasmPlugins {
		got, err := c.istio.ExtensionsV1alpha1().WasmPlugins(want.Namespace).Get(ctx, want.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(&got.Spec, &want.Spec) {
			t.Errorf("WasmPlugin %s/%s read back changed", want.Namespace, want.Name)
		}
		checkReadBackBundle(t, got, b)
	}
	// The watcher reads the generated CUSTOM policies back too.
	sink := newRecordingSink()
	runWatcher(t, Options{Istio: c.istio, Dynamic: c.dynamic, Discovery: c.kube.Discovery(), Sink: sink, Namespace: "gen-b"})
	s := sink.next(t, "the generated CUSTOM policy", func(s policies.Set) bool { return len(s.AuthorizationPolicies) == 1 })
	if ap := s.AuthorizationPolicies[0]; ap.Spec.Action != "CUSTOM" || ap.Spec.Provider == nil || ap.Spec.Provider.Name != "meshguard" {
		t.Errorf("read back %+v", ap.Spec)
	}
}

func checkReadBackBundle(t *testing.T, wp *extensionsv1alpha1.WasmPlugin, want *policies.Bundle) {
	t.Helper()
	js, err := protojson.Marshal(wp.Spec.PluginConfig)
	if err != nil {
		t.Fatal(err)
	}
	var fc wire.FilterConfig
	if err := strictJSON(js, &fc); err != nil {
		t.Fatalf("plugin config: %v", err)
	}
	got, err := policies.DecodeBundle(fc.Bundle)
	if err != nil {
		t.Fatalf("bundle read back from the API server: %v", err)
	}
	if got.Hash != want.Hash {
		t.Errorf("bundle hash %s, want %s", got.Hash, want.Hash)
	}
	if fc.Workload.Namespace != wp.Namespace || !fc.RequireMTLS {
		t.Errorf("filter config %+v", fc)
	}
}

func strictJSON(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

// TestKubeRequestAuthentications: RequestAuthentications written through
// istio.io/client-go at v1 and v1beta1 reach the bundle of the real policy
// store once each; one the API server accepts but Istio's validation (and
// meshguard's) refuses is replaced by a deny-everything stand-in with its
// scope, and the leader writes a FailedClosed event on it; a deletion
// removes it. About 1 s on the shared API server.
func TestKubeRequestAuthentications(t *testing.T) {
	c := apiServer(t)
	ctx := context.Background()
	namespace(t, c, "authn")
	sink, err := store.New(store.Options{Check: func(b *policies.Bundle) error { _, err := policies.Compile(b); return err }})
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan *policies.Bundle, 256)
	t.Cleanup(sink.Subscribe(func(b *policies.Bundle) { ch <- b }))
	reporter := NewEventReporter(c.kube, "test-replica", nil)
	reporter.SetLeading(true)
	runWatcher(t, Options{Istio: c.istio, Dynamic: c.dynamic, Discovery: c.kube.Discovery(), Sink: sink, Reporter: reporter, Namespace: "authn"})
	subs := []<-chan *policies.Bundle{ch}
	waitAll(t, subs, "the initial set", func(*policies.Bundle) bool { return true })

	rule := func(iss string) []*securityv1beta1api.JWTRule {
		return []*securityv1beta1api.JWTRule{{Issuer: iss, JwksUri: iss + "/keys", Audiences: []string{"orders"},
			FromHeaders: []*securityv1beta1api.JWTHeader{{Name: "x-token"}}, OutputClaimToHeaders: []*securityv1beta1api.ClaimToHeader{{Header: "x-user", Claim: "sub"}}}}
	}
	if _, err := c.istio.SecurityV1().RequestAuthentications("authn").Create(ctx, &securityv1.RequestAuthentication{
		ObjectMeta: metav1.ObjectMeta{Name: "idp", Namespace: "authn"},
		Spec: securityv1beta1api.RequestAuthentication{
			Selector: &typev1beta1.WorkloadSelector{MatchLabels: map[string]string{"app": "orders"}},
			JwtRules: rule("https://idp.example"),
		},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.istio.SecurityV1beta1().RequestAuthentications("authn").Create(ctx, &securityv1beta1.RequestAuthentication{
		ObjectMeta: metav1.ObjectMeta{Name: "legacy", Namespace: "authn"},
		Spec:       securityv1beta1api.RequestAuthentication{JwtRules: rule("https://legacy.example")},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Istio's CRD does not look into an inline key set; its validation
	// (and meshguard's) refuses one that is not JSON.
	if _, err := c.istio.SecurityV1().RequestAuthentications("authn").Create(ctx, &securityv1.RequestAuthentication{
		ObjectMeta: metav1.ObjectMeta{Name: "bad", Namespace: "authn"},
		Spec: securityv1beta1api.RequestAuthentication{
			Selector: &typev1beta1.WorkloadSelector{MatchLabels: map[string]string{"app": "payments"}},
			JwtRules: []*securityv1beta1api.JWTRule{{Issuer: "https://idp.example", Jwks: "not a key set"}},
		},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("the API server refused an object only Istio's validation refuses: %v", err)
	}
	findRA := func(b *policies.Bundle, name string) *policies.RequestAuthentication {
		for i := range b.Set.RequestAuthentications {
			if ra := &b.Set.RequestAuthentications[i]; ra.Metadata.Name == name {
				return ra
			}
		}
		return nil
	}
	standIn := StandInName(policies.KindRequestAuthentication, "bad")
	waitAll(t, subs, "both versions and the stand-in", func(b *policies.Bundle) bool {
		idp, legacy, sub := findRA(b, "idp"), findRA(b, "legacy"), findAP(b, "authn", standIn)
		return idp != nil && legacy != nil && findRA(b, "bad") == nil && len(b.Set.RequestAuthentications) == 2 &&
			// Served at both versions, kept once, the v1 copy preferred.
			idp.APIVersion == policies.APIVersionIstioV1 && legacy.APIVersion == policies.APIVersionIstioV1 &&
			idp.Spec.Selector != nil && len(idp.Spec.JWTRules) == 1 && idp.Spec.JWTRules[0].FromHeaders[0].Name == "x-token" &&
			sub != nil && sub.Spec.Action == "DENY" && sub.Spec.Selector != nil && sub.Spec.Selector.MatchLabels["app"] == "payments"
	})
	deadline := time.Now().Add(5 * time.Second)
	for {
		evs, err := c.kube.CoreV1().Events("authn").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=bad"})
		if err != nil {
			t.Fatal(err)
		}
		if len(evs.Items) == 1 && evs.Items[0].Reason == EventReasonFailedClosed && evs.Items[0].InvolvedObject.Kind == policies.KindRequestAuthentication &&
			strings.Contains(evs.Items[0].Message, "invalid_jwks") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no FailedClosed event on the RequestAuthentication bad: %+v", evs.Items)
		}
		time.Sleep(20 * time.Millisecond)
	}

	if err := c.istio.SecurityV1().RequestAuthentications("authn").Delete(ctx, "idp", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := c.istio.SecurityV1beta1().RequestAuthentications("authn").Delete(ctx, "bad", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitAll(t, subs, "the deletions", func(b *policies.Bundle) bool {
		return findRA(b, "idp") == nil && findRA(b, "legacy") != nil && findAP(b, "authn", standIn) == nil
	})
}
