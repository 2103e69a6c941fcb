package istio

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
	securityv1beta1api "istio.io/api/security/v1beta1"
	typev1beta1 "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	securityv1beta1 "istio.io/client-go/pkg/apis/security/v1beta1"
	istiofake "istio.io/client-go/pkg/clientset/versioned/fake"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	ktypes "k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	k8sfake "k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/meshguard/meshguard/policies"
)

// recordingSink is a Sink that keeps every set it is given.
type recordingSink struct {
	mu   sync.Mutex
	sets []policies.Set
	ch   chan policies.Set
	err  error
}

func newRecordingSink() *recordingSink { return &recordingSink{ch: make(chan policies.Set, 100)} }

func (s *recordingSink) SetSource(name string, set policies.Set) error {
	if name != DefaultSourceName {
		return errors.New("unexpected source " + name)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sets = append(s.sets, set)
	select {
	case s.ch <- set:
	default:
	}
	return s.err
}

// next waits for a set that satisfies ok.
func (s *recordingSink) next(t *testing.T, what string, ok func(policies.Set) bool) policies.Set {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case set := <-s.ch:
			if ok(set) {
				return set
			}
		case <-deadline:
			t.Fatalf("no set with %s within 5s", what)
		}
	}
}

type recordingReporter struct {
	mu       sync.Mutex
	problems [][]Problem
}

func (r *recordingReporter) Report(_ context.Context, p []Problem) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.problems = append(r.problems, p)
}

func (r *recordingReporter) last() []Problem {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.problems) == 0 {
		return nil
	}
	return r.problems[len(r.problems)-1]
}

func fakeDynamic(objs ...runtime.Object) *dynamicfake.FakeDynamicClient {
	kinds := map[schema.GroupVersionResource]string{}
	for kind, res := range MeshguardResources {
		kinds[MeshguardGroupVersion.WithResource(res)] = kind + "List"
	}
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), kinds)
	// Added with their resource named explicitly: the fake would guess
	// "meshsettingses" for MeshSettings.
	for _, o := range objs {
		u := o.(*unstructured.Unstructured)
		gvr := MeshguardGroupVersion.WithResource(MeshguardResources[u.GetKind()])
		if err := dyn.Tracker().Create(gvr, u, u.GetNamespace()); err != nil {
			panic(err)
		}
	}
	return dyn
}

// watchesStarted counts the watches a fake client has opened, so that a test
// changes objects only once the informers can see the change.
type watchesStarted struct {
	mu sync.Mutex
	n  map[string]int
}

func (w *watchesStarted) reactor(action k8stesting.Action) (bool, watch.Interface, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.n == nil {
		w.n = map[string]int{}
	}
	w.n[action.GetResource().GroupVersion().String()+"/"+action.GetResource().Resource]++
	return false, nil, nil
}

func (w *watchesStarted) wait(t *testing.T, keys ...string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		w.mu.Lock()
		all := true
		for _, k := range keys {
			all = all && w.n[k] > 0
		}
		w.mu.Unlock()
		if all {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("watches %v not started", keys)
}

func apV1(ns, name, uid string, spec *securityv1beta1api.AuthorizationPolicy) *securityv1.AuthorizationPolicy {
	ap := &securityv1.AuthorizationPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: ktypes.UID("uid-" + uid), ResourceVersion: "1"}}
	if spec != nil {
		ap.Spec = *spec.DeepCopy()
	}
	return ap
}

// noLeaks checks, after every other cleanup of the test, that the test
// left no goroutine behind (informers, the push loop).
func noLeaks(t *testing.T) {
	t.Helper()
	current := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, current) })
}

func runWatcher(t *testing.T, opts Options) *Watcher {
	t.Helper()
	w, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return w
}

func names(aps []policies.AuthorizationPolicy) string {
	var out []string
	for _, ap := range aps {
		out = append(out, ap.APIVersion+":"+ap.Metadata.Namespace+"/"+ap.Metadata.Name)
	}
	return strings.Join(out, ",")
}

func TestWatcherInitialSetAndChanges(t *testing.T) {
	noLeaks(t)
	allowWeb := &securityv1beta1api.AuthorizationPolicy{Rules: []*securityv1beta1api.Rule{{
		From: []*securityv1beta1api.Rule_From{{Source: &securityv1beta1api.Source{Principals: []string{"cluster.local/ns/web/sa/web"}}}},
	}}}
	v1 := apV1("shop", "allow-web", "a", allowWeb)
	// The API server serves the same object at both versions; the v1beta1
	// copy of it must not be counted twice.
	dup := &securityv1beta1.AuthorizationPolicy{ObjectMeta: v1.ObjectMeta, Spec: *allowWeb.DeepCopy()}
	old := &securityv1beta1.AuthorizationPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "legacy", Name: "old", UID: "uid-b"}}
	istio := istiofake.NewSimpleClientset(v1, dup, old)
	var watches watchesStarted
	istio.PrependWatchReactor("*", watches.reactor)
	dyn := fakeDynamic(
		unstructuredObj("IdentityPolicy", "shop", "ip", map[string]any{"workloads": []any{"spiffe://td/ns/shop/sa/api"}}),
		unstructuredObj("MeshSettings", "istio-system", "mesh", map[string]any{"trustDomain": "td"}),
	)
	dyn.PrependWatchReactor("*", watches.reactor)
	sink := newRecordingSink()
	reg := prometheus.NewPedanticRegistry()
	w := runWatcher(t, Options{Istio: istio, Dynamic: dyn, Sink: sink, Registerer: reg})

	first := sink.next(t, "the initial objects", func(s policies.Set) bool { return len(s.AuthorizationPolicies) == 2 })
	if got, want := names(first.AuthorizationPolicies), "security.istio.io/v1beta1:legacy/old,security.istio.io/v1:shop/allow-web"; got != want {
		t.Errorf("policies = %s, want %s", got, want)
	}
	if len(first.IdentityPolicies) != 1 || first.Settings.TrustDomain != "td" {
		t.Errorf("identity policies = %d, settings = %+v", len(first.IdentityPolicies), first.Settings)
	}

	watches.wait(t, "security.istio.io/v1/authorizationpolicies", "security.istio.io/v1beta1/authorizationpolicies", "meshguard.dev/v1alpha1/quarantines")
	ctx := context.Background()
	added := apV1("shop", "deny-admin", "c", &securityv1beta1api.AuthorizationPolicy{
		Action: securityv1beta1api.AuthorizationPolicy_DENY,
		Rules:  []*securityv1beta1api.Rule{{To: []*securityv1beta1api.Rule_To{{Operation: &securityv1beta1api.Operation{Paths: []string{"/admin*"}}}}}},
	})
	if _, err := istio.SecurityV1().AuthorizationPolicies("shop").Create(ctx, added, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	sink.next(t, "the added policy", func(s policies.Set) bool { return len(s.AuthorizationPolicies) == 3 })

	if err := istio.SecurityV1beta1().AuthorizationPolicies("legacy").Delete(ctx, "old", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	got := sink.next(t, "the deletion", func(s policies.Set) bool { return len(s.AuthorizationPolicies) == 2 })
	if n := names(got.AuthorizationPolicies); n != "security.istio.io/v1:shop/allow-web,security.istio.io/v1:shop/deny-admin" {
		t.Errorf("after delete: %s", n)
	}

	q := unstructuredObj("Quarantine", "istio-system", "q1", map[string]any{"identity": "spiffe://td/ns/shop/sa/bad"})
	if _, err := dyn.Resource(MeshguardGroupVersion.WithResource("quarantines")).Namespace("istio-system").Create(ctx, q, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	sink.next(t, "the quarantine", func(s policies.Set) bool {
		return len(s.Quarantines) == 1 && s.Quarantines[0].Spec.Identity == "spiffe://td/ns/shop/sa/bad"
	})
	if v := testutil.ToFloat64(w.metrics.objects.WithLabelValues(policies.KindQuarantine)); v != 1 {
		t.Errorf("objects gauge = %v, want 1", v)
	}
}

func TestWatcherSkipsWhatItCannotConvert(t *testing.T) {
	noLeaks(t)
	// Istio refuses wildcards in serviceAccounts; so does the model.
	sa := []*securityv1beta1api.Rule{{From: []*securityv1beta1api.Rule_From{{Source: &securityv1beta1api.Source{ServiceAccounts: []string{"shop/*"}}}}}}
	istio := istiofake.NewSimpleClientset(
		apV1("shop", "allow-sa", "1", &securityv1beta1api.AuthorizationPolicy{Rules: sa}),
		apV1("shop", "deny-sa", "2", &securityv1beta1api.AuthorizationPolicy{Action: securityv1beta1api.AuthorizationPolicy_DENY, Rules: sa}),
		apV1("shop", "fine", "3", &securityv1beta1api.AuthorizationPolicy{}),
		// A scope Istio refuses too: the stand-in cannot keep it, and
		// denies the whole namespace rather than nobody.
		apV1("shop", "deny-scope", "4", &securityv1beta1api.AuthorizationPolicy{Action: securityv1beta1api.AuthorizationPolicy_DENY, Rules: sa,
			Selector:   &typev1beta1.WorkloadSelector{MatchLabels: map[string]string{"app": "web"}},
			TargetRefs: []*typev1beta1.PolicyTargetReference{{Kind: "Service", Name: "web"}}}),
	)
	dyn := fakeDynamic(
		unstructuredObj("Quarantine", "ns", "typo", map[string]any{"identity": "spiffe://td/x", "expires": "soon"}),
		unstructuredObj("DefaultDeny", "ns", "dd", map[string]any{"workloads": "not-a-list"}),
		unstructuredObj("TrafficBaseline", "ns", "tb", map[string]any{"mode": "learn"}),
	)
	sink := newRecordingSink()
	rep := &recordingReporter{}
	reg := prometheus.NewPedanticRegistry()
	runWatcher(t, Options{Istio: istio, Dynamic: dyn, Sink: sink, Reporter: rep, Registerer: reg})

	set := sink.next(t, "the converted objects", func(policies.Set) bool { return true })
	if got := names(set.AuthorizationPolicies); got != "security.istio.io/v1:shop/deny-sa,security.istio.io/v1:shop/deny-scope,security.istio.io/v1:shop/fine" {
		t.Errorf("policies = %s", got)
	}
	for _, ap := range set.AuthorizationPolicies {
		if ap.Metadata.Name == "deny-sa" && (ap.Spec.Action != "DENY" || len(ap.Spec.Rules) != 1 || len(ap.Spec.Rules[0].From) != 0) {
			t.Errorf("deny-sa stand-in = %+v", ap.Spec)
		}
		if ap.Metadata.Name == "deny-scope" && (ap.Spec.Action != "DENY" || len(ap.Spec.Rules) != 1 || len(ap.Spec.Rules[0].From) != 0 ||
			ap.Spec.Selector != nil || ap.Spec.TargetRef != nil || len(ap.Spec.TargetRefs) != 0) {
			t.Errorf("deny-scope stand-in = %+v, want a DENY of the whole namespace", ap.Spec)
		}
	}
	if len(set.DefaultDenies) != 1 || set.DefaultDenies[0].Metadata.Annotations[AnnotationConversionError] == "" {
		t.Errorf("default deny stand-in missing: %+v", set.DefaultDenies)
	}
	if len(set.Quarantines) != 0 || len(set.TrafficBaselines) != 1 {
		t.Errorf("quarantines = %d, baselines = %d", len(set.Quarantines), len(set.TrafficBaselines))
	}
	// The reporter runs right after the sink has the set.
	var probs []Problem
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if probs = rep.last(); len(probs) > 0 {
			break
		}
	}
	var got []string
	for _, p := range probs {
		got = append(got, p.Kind+"/"+p.Name+":"+map[bool]string{true: "closed", false: "skipped"}[p.FailClosed])
	}
	if want := "AuthorizationPolicy/allow-sa:skipped,AuthorizationPolicy/deny-sa:closed,AuthorizationPolicy/deny-scope:closed,DefaultDeny/dd:closed,Quarantine/typo:skipped"; strings.Join(got, ",") != want {
		t.Errorf("problems = %s, want %s", strings.Join(got, ","), want)
	}
	if n := testutil.CollectAndCount(reg, "meshguard_controlplane_kube_conversion_errors_total"); n != 3 {
		t.Errorf("conversion error series = %d, want 3 kinds", n)
	}
}

func TestWatcherRefusesTwoMeshSettings(t *testing.T) {
	dyn := fakeDynamic(
		unstructuredObj("MeshSettings", "a", "one", map[string]any{"trustDomain": "a"}),
		unstructuredObj("MeshSettings", "b", "two", map[string]any{"trustDomain": "b"}),
	)
	sink := newRecordingSink()
	w := runWatcher(t, Options{Istio: istiofake.NewSimpleClientset(), Dynamic: dyn, Sink: sink})
	deadline := time.Now().Add(5 * time.Second)
	for w.Status().Pushes == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	st := w.Status()
	if st.LastErr == nil || !strings.Contains(st.LastErr.Error(), "at most one") {
		t.Fatalf("last error = %v", st.LastErr)
	}
	sink.mu.Lock()
	defer sink.mu.Unlock()
	if len(sink.sets) != 0 {
		t.Errorf("a set was pushed under ambiguous settings")
	}
}

func TestWatcherReportsSinkRejection(t *testing.T) {
	sink := newRecordingSink()
	sink.err = errors.New("invalid bundle")
	reg := prometheus.NewPedanticRegistry()
	w := runWatcher(t, Options{Istio: istiofake.NewSimpleClientset(), Dynamic: fakeDynamic(), Sink: sink, Registerer: reg})
	sink.next(t, "a push", func(policies.Set) bool { return true })
	deadline := time.Now().Add(5 * time.Second)
	for w.Status().LastErr == nil && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if err := w.Status().LastErr; err == nil || err.Error() != "invalid bundle" {
		t.Errorf("last error = %v", err)
	}
}

func TestWatcherDebounces(t *testing.T) {
	noLeaks(t)
	sink := newRecordingSink()
	w, err := New(Options{Istio: istiofake.NewSimpleClientset(), Dynamic: fakeDynamic(), Sink: sink, Debounce: 30 * time.Millisecond, MaxDelay: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.loop(ctx, &sources{}) }()
	t.Cleanup(func() { cancel(); <-done })
	sink.next(t, "the initial push", func(policies.Set) bool { return true })

	// A burst of changes 5 ms apart for 500 ms: pushes are held back by
	// the debounce but not past MaxDelay.
	start := time.Now()
	for time.Since(start) < 500*time.Millisecond {
		w.trigger()
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	pushes := w.Status().Pushes - 1
	if pushes < 2 || pushes > 5 {
		t.Errorf("%d pushes for a 500 ms burst; want 2..5 (MaxDelay 200ms)", pushes)
	}
	for len(sink.ch) > 0 {
		<-sink.ch
	}
	before := w.Status().Pushes
	w.trigger()
	sink.next(t, "a single change", func(policies.Set) bool { return true })
	time.Sleep(100 * time.Millisecond)
	if w.Status().Pushes != before+1 {
		t.Errorf("pushes = %d, want %d", w.Status().Pushes, before+1)
	}
}

func TestNewRequiresClients(t *testing.T) {
	_, err := New(Options{})
	if err == nil {
		t.Fatal("New accepted no clients")
	}
	for _, want := range []string{"Istio clientset", "dynamic client", "sink"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
}

func TestEventReporter(t *testing.T) {
	kube := k8sfake.NewClientset()
	r := NewEventReporter(kube, "pod-1", nil)
	ctx := context.Background()
	p := Problem{
		GVR: gvIstioV1.WithResource("authorizationpolicies"), Kind: "AuthorizationPolicy",
		Namespace: "shop", Name: "deny-sa", UID: "u1", ResourceVersion: "7",
		Err: errors.New("spec.rules[0]: " + strings.Repeat("x", 2000)), FailClosed: true,
	}
	count := func() int {
		t.Helper()
		l, err := kube.CoreV1().Events("shop").List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return len(l.Items)
	}
	r.Report(ctx, []Problem{p})
	if n := count(); n != 0 {
		t.Fatalf("a follower wrote %d events", n)
	}
	r.SetLeading(true)
	r.Report(ctx, []Problem{p})
	r.Report(ctx, []Problem{p})
	if n := count(); n != 1 {
		t.Fatalf("events = %d, want 1 (once per object version)", n)
	}
	l, _ := kube.CoreV1().Events("shop").List(ctx, metav1.ListOptions{})
	ev := l.Items[0]
	if ev.Reason != EventReasonFailedClosed || ev.Type != "Warning" || ev.InvolvedObject.APIVersion != "security.istio.io/v1" || len(ev.Message) > maxEventMessage {
		t.Errorf("event = %+v", ev)
	}
	p.ResourceVersion = "8"
	r.Report(ctx, []Problem{p})
	if n := count(); n != 2 {
		t.Fatalf("events = %d after a new version, want 2", n)
	}
	r.SetLeading(false)
	p.ResourceVersion = "9"
	r.Report(ctx, []Problem{p})
	if n := count(); n != 2 {
		t.Fatalf("a replica that lost the lease kept writing")
	}
}

func raV1(ns, name, uid string, spec *securityv1beta1api.RequestAuthentication) *securityv1.RequestAuthentication {
	ra := &securityv1.RequestAuthentication{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: ktypes.UID("uid-" + uid), ResourceVersion: "1"}}
	if spec != nil {
		ra.Spec = *spec.DeepCopy()
	}
	return ra
}

// TestWatcherRequestAuthentications: RequestAuthentications at both
// versions reach the set once each; one that fails validation is replaced
// by a deny-everything stand-in with its scope (the whole namespace when
// the scope is what is wrong), reported and counted; a deletion removes it.
func TestWatcherRequestAuthentications(t *testing.T) {
	noLeaks(t)
	rule := []*securityv1beta1api.JWTRule{{Issuer: "https://idp.example", JwksUri: "https://idp.example/keys"}}
	v1 := raV1("shop", "idp", "a", &securityv1beta1api.RequestAuthentication{JwtRules: rule})
	dup := &securityv1beta1.RequestAuthentication{ObjectMeta: v1.ObjectMeta, Spec: *v1.Spec.DeepCopy()}
	old := &securityv1beta1.RequestAuthentication{ObjectMeta: metav1.ObjectMeta{Namespace: "legacy", Name: "old", UID: "uid-b"},
		Spec: securityv1beta1api.RequestAuthentication{JwtRules: rule}}
	badKeys := raV1("shop", "bad-keys", "c", &securityv1beta1api.RequestAuthentication{
		Selector: &typev1beta1.WorkloadSelector{MatchLabels: map[string]string{"app": "payments"}},
		JwtRules: []*securityv1beta1api.JWTRule{{Issuer: "x", Jwks: "not a key set"}},
	})
	badScope := raV1("shop", "bad-scope", "d", &securityv1beta1api.RequestAuthentication{
		TargetRefs: []*typev1beta1.PolicyTargetReference{{Kind: "Deployment", Name: "api"}},
		JwtRules:   rule,
	})
	istio := istiofake.NewSimpleClientset(v1, dup, old, badKeys, badScope)
	var watches watchesStarted
	istio.PrependWatchReactor("*", watches.reactor)
	sink := newRecordingSink()
	rep := &recordingReporter{}
	reg := prometheus.NewPedanticRegistry()
	w := runWatcher(t, Options{Istio: istio, Dynamic: fakeDynamic(), Sink: sink, Reporter: rep, Registerer: reg})

	set := sink.next(t, "the RequestAuthentications", func(s policies.Set) bool { return len(s.RequestAuthentications) == 2 })
	var got []string
	for _, ra := range set.RequestAuthentications {
		got = append(got, ra.APIVersion+":"+ra.Metadata.Namespace+"/"+ra.Metadata.Name)
	}
	if want := "security.istio.io/v1beta1:legacy/old,security.istio.io/v1:shop/idp"; strings.Join(got, ",") != want {
		t.Errorf("request authentications = %s, want %s", strings.Join(got, ","), want)
	}
	if got, want := names(set.AuthorizationPolicies), "security.istio.io/v1:shop/RequestAuthentication.bad-keys,security.istio.io/v1:shop/RequestAuthentication.bad-scope"; got != want {
		t.Fatalf("stand-ins = %s, want %s", got, want)
	}
	keys, scope := set.AuthorizationPolicies[0], set.AuthorizationPolicies[1]
	for _, ap := range []policies.AuthorizationPolicy{keys, scope} {
		if ap.Spec.Action != "DENY" || len(ap.Spec.Rules) != 1 || !strings.Contains(ap.Metadata.Annotations[AnnotationConversionError], "spec.") {
			t.Errorf("%s: stand-in %+v %v", ap.Metadata.Name, ap.Spec, ap.Metadata.Annotations)
		}
	}
	if keys.Spec.Selector == nil || keys.Spec.Selector.MatchLabels["app"] != "payments" {
		t.Errorf("bad-keys stand-in lost its scope: %+v", keys.Spec)
	}
	if scope.Spec.Selector != nil || len(scope.Spec.TargetRefs) != 0 {
		t.Errorf("bad-scope stand-in keeps the invalid scope: %+v", scope.Spec)
	}
	// The whole set compiles, as the store requires.
	if _, _, err := policies.NewBundle("", set); err != nil {
		t.Fatalf("the set does not compile: %v", err)
	}
	var probs []Problem
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if probs = rep.last(); len(probs) > 0 {
			break
		}
	}
	got = nil
	for _, p := range probs {
		got = append(got, fmt.Sprintf("%s/%s:%v:%s", p.Kind, p.Name, p.FailClosed, p.GVR.Resource))
	}
	if want := "RequestAuthentication/bad-keys:true:requestauthentications,RequestAuthentication/bad-scope:true:requestauthentications"; strings.Join(got, ",") != want {
		t.Errorf("problems = %s, want %s", strings.Join(got, ","), want)
	}
	if v := testutil.ToFloat64(w.metrics.conversions.WithLabelValues(policies.KindRequestAuthentication)); v < 2 {
		t.Errorf("conversion errors counted = %v, want ≥ 2", v)
	}
	if v := testutil.ToFloat64(w.metrics.objects.WithLabelValues(policies.KindRequestAuthentication)); v != 2 {
		t.Errorf("objects gauge = %v, want 2", v)
	}

	watches.wait(t, "security.istio.io/v1/requestauthentications", "security.istio.io/v1beta1/requestauthentications")
	ctx := context.Background()
	if err := istio.SecurityV1beta1().RequestAuthentications("legacy").Delete(ctx, "old", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := istio.SecurityV1().RequestAuthentications("shop").Delete(ctx, "bad-keys", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	sink.next(t, "the deletions", func(s policies.Set) bool {
		return len(s.RequestAuthentications) == 1 && s.RequestAuthentications[0].Metadata.Name == "idp" &&
			names(s.AuthorizationPolicies) == "security.istio.io/v1:shop/RequestAuthentication.bad-scope"
	})
}

// TestWatcherKeepsCrossObjectReferences: each object is checked on its own,
// so a RouteOverride naming an AnomalyProfile that lives in another object
// is accepted, and the set pushed holds both and compiles.
func TestWatcherKeepsCrossObjectReferences(t *testing.T) {
	noLeaks(t)
	dyn := fakeDynamic(
		unstructuredObj("AnomalyProfile", "istio-system", "strict", map[string]any{"lateral": map[string]any{"maxNewEdges": int64(1)}}),
		unstructuredObj("RouteOverride", "shop", "admin", map[string]any{"route": "admin-api", "anomaly": map[string]any{"profile": "strict"}}),
	)
	sink := newRecordingSink()
	reporter := &recordingReporter{}
	runWatcher(t, Options{Istio: istiofake.NewSimpleClientset(), Dynamic: dyn, Sink: sink, Reporter: reporter})
	set := sink.next(t, "the profile and the route override", func(s policies.Set) bool {
		return len(s.AnomalyProfiles) == 1 && len(s.RouteOverrides) == 1
	})
	if p := reporter.last(); len(p) != 0 {
		t.Fatalf("problems reported: %+v", p)
	}
	if _, _, err := policies.NewBundle("v", set); err != nil {
		t.Fatalf("the pushed set does not compile: %v", err)
	}
}
