// Package istio connects the control plane to a Kubernetes cluster running
// Istio: a Watcher follows Istio's AuthorizationPolicies and
// RequestAuthentications (security.istio.io v1 and v1beta1) and meshguard's
// own kinds (meshguard.dev/v1alpha1) in every
// namespace, converts them into the policy model and hands the whole set to
// the policy store on every change. Leader election decides which replica
// writes to the cluster (events about objects that could not be converted);
// every replica keeps its own store up to date and may serve xDS.
package istio

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	securityv1beta1api "istio.io/api/security/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	securityv1beta1 "istio.io/client-go/pkg/apis/security/v1beta1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	istioinformers "istio.io/client-go/pkg/informers/externalversions"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/meshguard/meshguard/internal/crdgen"
	"github.com/meshguard/meshguard/policies"
)

// Sink receives the full policy set of a named source; the control plane's
// policy store implements it. An error means the set was rejected and the
// last good bundle keeps serving.
type Sink interface {
	SetSource(name string, set policies.Set) error
}

// SinkFunc adapts a function to Sink.
type SinkFunc func(name string, set policies.Set) error

// SetSource calls f.
func (f SinkFunc) SetSource(name string, set policies.Set) error { return f(name, set) }

// DefaultSourceName is the store source the watcher writes.
const DefaultSourceName = "kubernetes"

// Default debounce: changes closer together than Debounce are pushed as one
// set, and no change waits longer than MaxDelay.
const (
	DefaultDebounce = 75 * time.Millisecond
	DefaultMaxDelay = 500 * time.Millisecond
)

// MeshguardGroupVersion is the API group and version of meshguard's kinds.
var MeshguardGroupVersion = schema.GroupVersion{Group: crdgen.Group, Version: crdgen.Version}

// MeshguardResources maps each meshguard kind to its resource (plural) name.
var MeshguardResources = crdgen.Plurals()

var (
	gvIstioV1      = schema.GroupVersion{Group: "security.istio.io", Version: "v1"}
	gvIstioV1beta1 = schema.GroupVersion{Group: "security.istio.io", Version: "v1beta1"}
)

// Resources of security.istio.io the watcher reads.
const (
	resAuthorizationPolicies  = "authorizationpolicies"
	resRequestAuthentications = "requestauthentications"
)

// Options configure a Watcher.
type Options struct {
	// Istio is the typed Istio clientset (required).
	Istio istioclient.Interface
	// Dynamic reads meshguard's kinds (required).
	Dynamic dynamic.Interface
	// Discovery, when set, is asked which of the watched group versions the
	// cluster serves; those it does not serve are not watched (an Istio
	// without v1, or a cluster without meshguard's CRDs). Nil watches all.
	Discovery discovery.DiscoveryInterface
	// Sink receives every set (required).
	Sink Sink
	// Reporter, when set, is told about every object that could not be
	// converted; the control plane passes one that writes Kubernetes events
	// while it holds the leader lease.
	Reporter Reporter
	// SourceName is the store source name; default DefaultSourceName.
	SourceName string
	// Namespace restricts the watch to one namespace; empty is all.
	Namespace string
	// Debounce and MaxDelay: see DefaultDebounce.
	Debounce, MaxDelay time.Duration
	// Logger receives conversion and push results; nil discards.
	Logger *slog.Logger
	// Registerer receives the watcher's metrics; nil registers nothing.
	Registerer prometheus.Registerer
	// Kube, when set, reads Istio's MeshConfig: the ConfigMap
	// MeshConfigNamespace/MeshConfigName (default istio-system/istio). Its
	// trust domain and aliases, root namespace, path normalization and
	// extension providers join the MeshSettings object's (meshconfig.go).
	Kube                                kubernetes.Interface
	MeshConfigNamespace, MeshConfigName string
}

// Problem is one object that could not be converted.
type Problem struct {
	GVR       schema.GroupVersionResource
	Kind      string
	Namespace string
	Name      string
	UID       types.UID
	// ResourceVersion identifies the version of the object reported.
	ResourceVersion string
	// Err is why; FailClosed reports that a deny-everything stand-in with
	// the object's scope was pushed in its place.
	Err        error
	FailClosed bool
}

// Reporter is told about objects that could not be converted after each
// push. It is called from the watcher's single push goroutine.
type Reporter interface {
	Report(ctx context.Context, problems []Problem)
}

// Watcher follows the cluster's policy objects and pushes them to a Sink.
type Watcher struct {
	opts    Options
	log     *slog.Logger
	kick    chan struct{}
	running atomic.Bool

	mu       sync.Mutex
	pushes   uint64
	lastErr  error
	lastSync time.Time

	metrics watcherMetrics
}

type watcherMetrics struct {
	pushes      *prometheus.CounterVec
	objects     *prometheus.GaugeVec
	conversions *prometheus.CounterVec
	latency     prometheus.Histogram
}

// New checks opts and returns a Watcher; Run starts it.
func New(opts Options) (*Watcher, error) {
	var errs []error
	if opts.Istio == nil {
		errs = append(errs, errors.New("an Istio clientset is required"))
	}
	if opts.Dynamic == nil {
		errs = append(errs, errors.New("dynamic client is required"))
	}
	if opts.Sink == nil {
		errs = append(errs, errors.New("sink is required"))
	}
	if opts.Debounce < 0 || opts.MaxDelay < 0 {
		errs = append(errs, errors.New("debounce and max delay must not be negative"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("istio: %w", err)
	}
	if opts.MeshConfigNamespace == "" {
		opts.MeshConfigNamespace = DefaultMeshConfigNamespace
	}
	if opts.MeshConfigName == "" {
		opts.MeshConfigName = DefaultMeshConfigName
	}
	if opts.SourceName == "" {
		opts.SourceName = DefaultSourceName
	}
	if opts.Debounce == 0 {
		opts.Debounce = DefaultDebounce
	}
	if opts.MaxDelay == 0 {
		opts.MaxDelay = DefaultMaxDelay
	}
	if opts.MaxDelay < opts.Debounce {
		opts.MaxDelay = opts.Debounce
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	w := &Watcher{
		opts: opts,
		log:  log.With(slog.String("component", "istio-watcher")),
		kick: make(chan struct{}, 1),
		metrics: watcherMetrics{
			pushes: prometheus.NewCounterVec(prometheus.CounterOpts{
				Name: "meshguard_controlplane_kube_pushes_total",
				Help: "Policy sets pushed from the Kubernetes watch to the store, by result (accepted, rejected).",
			}, []string{"result"}),
			objects: prometheus.NewGaugeVec(prometheus.GaugeOpts{
				Name: "meshguard_controlplane_kube_objects",
				Help: "Policy objects in the last set pushed from the Kubernetes watch, by kind.",
			}, []string{"kind"}),
			conversions: prometheus.NewCounterVec(prometheus.CounterOpts{
				Name: "meshguard_controlplane_kube_conversion_errors_total",
				Help: "Kubernetes objects that could not be converted into the policy model, by kind.",
			}, []string{"kind"}),
			latency: prometheus.NewHistogram(prometheus.HistogramOpts{
				Name:    "meshguard_controlplane_kube_sync_latency_seconds",
				Help:    "Time from the first Kubernetes change of a batch to the store accepting or rejecting the set.",
				Buckets: []float64{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5},
			}),
		},
	}
	if opts.Registerer != nil {
		m := w.metrics
		for _, c := range []prometheus.Collector{m.pushes, m.objects, m.conversions, m.latency} {
			if err := opts.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("istio: register metrics: %w", err)
			}
		}
	}
	return w, nil
}

// Status is what the watcher last did, for readiness.
type Status struct {
	Pushes   uint64
	LastErr  error
	LastPush time.Time
}

// Status returns the watcher's state.
func (w *Watcher) Status() Status {
	w.mu.Lock()
	defer w.mu.Unlock()
	return Status{Pushes: w.pushes, LastErr: w.lastErr, LastPush: w.lastSync}
}

// Resync asks for a push of the current set, for example after the process
// became leader and should report the problems again.
func (w *Watcher) Resync() { w.trigger() }

func (w *Watcher) trigger() {
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// sources are the listers of everything watched.
type sources struct {
	apV1       cache.Indexer
	apV1beta1  cache.Indexer
	raV1       cache.Indexer
	raV1beta1  cache.Indexer
	meshguard  map[string]cache.Indexer // by kind
	meshConfig cache.Indexer            // Istio's MeshConfig ConfigMap, when read
}

// Run watches until ctx is done. It pushes the first set once every
// informer has synced, then after every change. It returns an error only
// when the watch cannot start.
func (w *Watcher) Run(ctx context.Context) error {
	if !w.running.CompareAndSwap(false, true) {
		return errors.New("istio: watcher already running")
	}
	defer w.running.Store(false)

	served, err := w.servedVersions()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { w.trigger() },
		UpdateFunc: func(any, any) { w.trigger() },
		DeleteFunc: func(any) { w.trigger() },
	}
	var src sources
	var synced []cache.InformerSynced

	istioFactory := istioinformers.NewSharedInformerFactoryWithOptions(w.opts.Istio, 0, istioinformers.WithNamespace(w.opts.Namespace))
	sec := istioFactory.Security()
	for _, x := range []struct {
		gvr schema.GroupVersionResource
		inf func() cache.SharedIndexInformer
		dst *cache.Indexer
	}{
		{gvIstioV1.WithResource(resAuthorizationPolicies), func() cache.SharedIndexInformer { return sec.V1().AuthorizationPolicies().Informer() }, &src.apV1},
		{gvIstioV1beta1.WithResource(resAuthorizationPolicies), func() cache.SharedIndexInformer { return sec.V1beta1().AuthorizationPolicies().Informer() }, &src.apV1beta1},
		{gvIstioV1.WithResource(resRequestAuthentications), func() cache.SharedIndexInformer { return sec.V1().RequestAuthentications().Informer() }, &src.raV1},
		{gvIstioV1beta1.WithResource(resRequestAuthentications), func() cache.SharedIndexInformer { return sec.V1beta1().RequestAuthentications().Informer() }, &src.raV1beta1},
	} {
		if !served[x.gvr] {
			continue
		}
		inf := x.inf()
		if _, err := inf.AddEventHandler(handler); err != nil {
			return fmt.Errorf("istio: watch %s: %w", x.gvr, err)
		}
		*x.dst = inf.GetIndexer()
		synced = append(synced, inf.HasSynced)
	}
	dynFactory := dynamicinformer.NewFilteredDynamicSharedInformerFactory(w.opts.Dynamic, 0, w.opts.Namespace, nil)
	src.meshguard = map[string]cache.Indexer{}
	if served[MeshguardGroupVersion.WithResource("")] {
		for kind, res := range MeshguardResources {
			inf := dynFactory.ForResource(MeshguardGroupVersion.WithResource(res)).Informer()
			if _, err := inf.AddEventHandler(handler); err != nil {
				return fmt.Errorf("istio: watch %s: %w", res, err)
			}
			src.meshguard[kind] = inf.GetIndexer()
			synced = append(synced, inf.HasSynced)
		}
	}
	var kubeFactory informers.SharedInformerFactory
	if w.opts.Kube != nil {
		name := w.opts.MeshConfigName
		kubeFactory = informers.NewSharedInformerFactoryWithOptions(w.opts.Kube, 0,
			informers.WithNamespace(w.opts.MeshConfigNamespace),
			informers.WithTweakListOptions(func(o *metav1.ListOptions) {
				o.FieldSelector = fields.OneTermEqualSelector("metadata.name", name).String()
			}))
		inf := kubeFactory.Core().V1().ConfigMaps().Informer()
		if _, err := inf.AddEventHandler(handler); err != nil {
			return fmt.Errorf("istio: watch MeshConfig: %w", err)
		}
		src.meshConfig = inf.GetIndexer()
		synced = append(synced, inf.HasSynced)
		kubeFactory.Start(ctx.Done())
	}
	istioFactory.Start(ctx.Done())
	dynFactory.Start(ctx.Done())
	defer func() {
		cancel()
		istioFactory.Shutdown()
		dynFactory.Shutdown()
		if kubeFactory != nil {
			kubeFactory.Shutdown()
		}
	}()
	w.log.Info("watching",
		slog.Bool("authorizationpolicies_v1", served[gvIstioV1.WithResource(resAuthorizationPolicies)]),
		slog.Bool("authorizationpolicies_v1beta1", served[gvIstioV1beta1.WithResource(resAuthorizationPolicies)]),
		slog.Bool("requestauthentications_v1", served[gvIstioV1.WithResource(resRequestAuthentications)]),
		slog.Bool("requestauthentications_v1beta1", served[gvIstioV1beta1.WithResource(resRequestAuthentications)]),
		slog.Bool("meshguard", served[MeshguardGroupVersion.WithResource("")]), slog.String("namespace", w.opts.Namespace))
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return ctx.Err()
	}
	w.loop(ctx, &src)
	return nil
}

// servedVersions asks discovery which of the watched resources exist:
// each Istio resource at each version, and meshguard's group version as a
// whole (its resource "").
func (w *Watcher) servedVersions() (map[schema.GroupVersionResource]bool, error) {
	served := map[schema.GroupVersionResource]bool{}
	istioRes := []string{resAuthorizationPolicies, resRequestAuthentications}
	if w.opts.Discovery == nil {
		for _, gv := range []schema.GroupVersion{gvIstioV1, gvIstioV1beta1} {
			for _, r := range istioRes {
				served[gv.WithResource(r)] = true
			}
		}
		served[MeshguardGroupVersion.WithResource("")] = true
		return served, nil
	}
	for _, gv := range []schema.GroupVersion{gvIstioV1, gvIstioV1beta1, MeshguardGroupVersion} {
		list, err := w.opts.Discovery.ServerResourcesForGroupVersion(gv.String())
		switch {
		case err == nil:
			if gv == MeshguardGroupVersion {
				served[gv.WithResource("")] = len(list.APIResources) > 0
				continue
			}
			for _, r := range list.APIResources {
				if slices.Contains(istioRes, r.Name) {
					served[gv.WithResource(r.Name)] = true
				}
			}
			for _, r := range istioRes {
				if !served[gv.WithResource(r)] {
					w.log.Warn("resource not served; not watching it", slog.String("group_version", gv.String()), slog.String("resource", r))
				}
			}
		case isNotFound(err):
			w.log.Warn("group version not served; not watching it", slog.String("group_version", gv.String()))
		default:
			return nil, fmt.Errorf("istio: discover %s: %w", gv, err)
		}
	}
	if !slices.Contains(slices.Collect(maps.Values(served)), true) {
		return nil, errors.New("istio: the cluster serves neither security.istio.io nor meshguard.dev; install Istio's or meshguard's CRDs")
	}
	return served, nil
}

// loop debounces changes and pushes. The initial sync counts as a change.
func (w *Watcher) loop(ctx context.Context, src *sources) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	var first time.Time // first change of the pending batch; zero: none
	pending := true
	first = time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.kick:
			now := time.Now()
			if !pending {
				pending, first = true, now
			}
			wait := min(w.opts.Debounce, w.opts.MaxDelay-now.Sub(first))
			if !timer.Stop() {
				select {
				case <-timer.C:
				default:
				}
			}
			timer.Reset(max(wait, 0))
		case <-timer.C:
			if !pending {
				continue
			}
			pending = false
			w.push(ctx, src, first)
		}
	}
}

// push converts everything in the informer caches and hands the set over.
func (w *Watcher) push(ctx context.Context, src *sources, since time.Time) {
	set, problems, counts, err := w.build(src)
	// The gauges are set before the sink has the set, so that whoever
	// sees the set also sees the counts that describe it.
	for _, kind := range watchedKinds {
		w.metrics.objects.WithLabelValues(kind).Set(float64(counts[kind]))
	}
	if err == nil {
		err = w.opts.Sink.SetSource(w.opts.SourceName, set)
	}
	elapsed := time.Since(since)
	w.metrics.latency.Observe(elapsed.Seconds())
	w.mu.Lock()
	w.pushes++
	w.lastErr = err
	w.lastSync = time.Now()
	w.mu.Unlock()
	if err != nil {
		w.metrics.pushes.WithLabelValues("rejected").Inc()
		w.log.Error("policy set rejected; the last good bundle keeps serving", slog.String("source", w.opts.SourceName), slog.Any("error", err))
	} else {
		w.metrics.pushes.WithLabelValues("accepted").Inc()
		w.log.Debug("policy set pushed", slog.String("source", w.opts.SourceName), slog.Duration("latency", elapsed))
	}
	for _, p := range problems {
		w.metrics.conversions.WithLabelValues(p.Kind).Inc()
		w.log.Warn("object not converted", slog.String("kind", p.Kind), slog.String("namespace", p.Namespace),
			slog.String("name", p.Name), slog.Bool("fail_closed", p.FailClosed), slog.Any("error", p.Err))
	}
	if w.opts.Reporter != nil {
		w.opts.Reporter.Report(ctx, problems)
	}
}

var watchedKinds = []string{
	policies.KindAuthorizationPolicy, policies.KindRequestAuthentication, policies.KindIdentityPolicy, policies.KindDefaultDeny,
	policies.KindRouteOverride, policies.KindTrafficBaseline, policies.KindAnomalyProfile,
	policies.KindQuarantine, policies.KindMeshSettings,
}

// build converts the cached objects into one set, sorted so that an
// unchanged cluster gives an unchanged bundle hash.
func (w *Watcher) build(src *sources) (policies.Set, []Problem, map[string]int, error) {
	var set policies.Set
	var problems []Problem
	counts := map[string]int{}

	// MeshSettings first: the other objects are validated under them.
	var settings []*unstructured.Unstructured
	if idx := src.meshguard[policies.KindMeshSettings]; idx != nil {
		for _, o := range idx.List() {
			if u, ok := o.(*unstructured.Unstructured); ok {
				settings = append(settings, u)
			}
		}
	}
	slices.SortFunc(settings, func(a, b *unstructured.Unstructured) int {
		return cmp.Or(cmp.Compare(a.GetNamespace(), b.GetNamespace()), cmp.Compare(a.GetName(), b.GetName()))
	})
	if len(settings) > 1 {
		names := make([]string, len(settings))
		for i, u := range settings {
			names[i] = u.GetNamespace() + "/" + u.GetName()
		}
		return set, nil, counts, fmt.Errorf("istio: %d MeshSettings objects (%v); a mesh has at most one", len(settings), names)
	}
	for _, u := range settings {
		var tmp policies.Set
		spec, err := addMeshguard(&tmp, u)
		if err == nil {
			tmp.Settings = *spec
			err = policies.Validate(&tmp).Err()
		}
		if err != nil {
			// Settings change how every policy reads; pushing policies under
			// the wrong settings could open what they close.
			return set, nil, counts, fmt.Errorf("istio: MeshSettings %s/%s: %w", u.GetNamespace(), u.GetName(), err)
		}
		set.Settings = *spec
		counts[policies.KindMeshSettings]++
	}
	if src.meshConfig != nil {
		for _, o := range src.meshConfig.List() {
			cm, ok := o.(*corev1.ConfigMap)
			if !ok || cm.Name != w.opts.MeshConfigName {
				continue
			}
			fromIstio, err := meshSettingsFromConfigMap(cm)
			if err == nil {
				set.Settings, err = mergeMeshSettings(fromIstio, set.Settings)
			}
			if err == nil {
				err = policies.Validate(&policies.Set{Settings: set.Settings}).Err()
			}
			if err != nil {
				return set, nil, counts, fmt.Errorf("istio: %w", err)
			}
		}
	}

	// AuthorizationPolicies: the API server serves each one at both
	// versions; keep one copy per object, preferring v1.
	seen := map[types.UID]bool{}
	addAP := func(gv schema.GroupVersion, objs []any) {
		for _, o := range objs {
			var (
				meta    = (*metaAccess)(nil)
				problem Problem
			)
			switch ap := o.(type) {
			case *securityv1.AuthorizationPolicy:
				meta = &metaAccess{ns: ap.Namespace, name: ap.Name, uid: ap.UID, rv: ap.ResourceVersion}
				if seen[ap.UID] {
					continue
				}
				seen[ap.UID] = true
				converted, err := convertAuthorizationPolicy(gv.String(), &ap.ObjectMeta, &ap.Spec)
				problem = w.acceptAP(&set, converted, err, func(cause error) (policies.AuthorizationPolicy, bool) {
					return failClosedAuthorizationPolicy(gv.String(), &ap.ObjectMeta, &ap.Spec, cause)
				})
			case *securityv1beta1.AuthorizationPolicy:
				meta = &metaAccess{ns: ap.Namespace, name: ap.Name, uid: ap.UID, rv: ap.ResourceVersion}
				if seen[ap.UID] {
					continue
				}
				seen[ap.UID] = true
				converted, err := convertAuthorizationPolicy(gv.String(), &ap.ObjectMeta, &ap.Spec)
				problem = w.acceptAP(&set, converted, err, func(cause error) (policies.AuthorizationPolicy, bool) {
					return failClosedAuthorizationPolicy(gv.String(), &ap.ObjectMeta, &ap.Spec, cause)
				})
			default:
				continue
			}
			if problem.Err != nil {
				problem.GVR = gv.WithResource(resAuthorizationPolicies)
				problem.Kind = policies.KindAuthorizationPolicy
				problem.Namespace, problem.Name, problem.UID, problem.ResourceVersion = meta.ns, meta.name, meta.uid, meta.rv
				problems = append(problems, problem)
			}
		}
	}
	if src.apV1 != nil {
		addAP(gvIstioV1, src.apV1.List())
	}
	if src.apV1beta1 != nil {
		addAP(gvIstioV1beta1, src.apV1beta1.List())
	}

	// RequestAuthentications: served at both versions too; one copy each.
	addRA := func(gv schema.GroupVersion, objs []any) {
		for _, o := range objs {
			var (
				meta *metav1.ObjectMeta
				spec *securityv1beta1api.RequestAuthentication
			)
			switch ra := o.(type) {
			case *securityv1.RequestAuthentication:
				meta, spec = &ra.ObjectMeta, &ra.Spec
			case *securityv1beta1.RequestAuthentication:
				meta, spec = &ra.ObjectMeta, &ra.Spec
			default:
				continue
			}
			if seen[meta.UID] {
				continue
			}
			seen[meta.UID] = true
			if p := w.acceptRA(&set, gv, meta, spec); p.Err != nil {
				p.GVR = gv.WithResource(resRequestAuthentications)
				p.Kind = policies.KindRequestAuthentication
				p.Namespace, p.Name, p.UID, p.ResourceVersion = meta.Namespace, meta.Name, meta.UID, meta.ResourceVersion
				problems = append(problems, p)
			}
		}
	}
	if src.raV1 != nil {
		addRA(gvIstioV1, src.raV1.List())
	}
	if src.raV1beta1 != nil {
		addRA(gvIstioV1beta1, src.raV1beta1.List())
	}

	for _, kind := range watchedKinds {
		idx := src.meshguard[kind]
		if idx == nil || kind == policies.KindMeshSettings {
			continue
		}
		for _, o := range idx.List() {
			u, ok := o.(*unstructured.Unstructured)
			if !ok {
				continue
			}
			if p := w.acceptMeshguard(&set, u); p.Err != nil {
				p.GVR = MeshguardGroupVersion.WithResource(MeshguardResources[kind])
				p.Kind = kind
				p.Namespace, p.Name, p.UID, p.ResourceVersion = u.GetNamespace(), u.GetName(), u.GetUID(), u.GetResourceVersion()
				problems = append(problems, p)
			}
		}
	}
	sortSet(&set)
	counts[policies.KindAuthorizationPolicy] = len(set.AuthorizationPolicies)
	counts[policies.KindRequestAuthentication] = len(set.RequestAuthentications)
	counts[policies.KindIdentityPolicy] = len(set.IdentityPolicies)
	counts[policies.KindDefaultDeny] = len(set.DefaultDenies)
	counts[policies.KindRouteOverride] = len(set.RouteOverrides)
	counts[policies.KindTrafficBaseline] = len(set.TrafficBaselines)
	counts[policies.KindAnomalyProfile] = len(set.AnomalyProfiles)
	counts[policies.KindQuarantine] = len(set.Quarantines)
	slices.SortFunc(problems, func(a, b Problem) int {
		return cmp.Or(cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	return set, problems, counts, nil
}

type metaAccess struct {
	ns, name string
	uid      types.UID
	rv       string
}

// acceptAP adds a converted AuthorizationPolicy to set when it converts and
// validates on its own; otherwise it adds the fail-closed stand-in, if the
// policy has one, and returns the problem.
func (w *Watcher) acceptAP(set *policies.Set, ap policies.AuthorizationPolicy, err error, standIn func(error) (policies.AuthorizationPolicy, bool)) Problem {
	if err == nil {
		one := policies.Set{Settings: set.Settings, AuthorizationPolicies: []policies.AuthorizationPolicy{ap}}
		err = policies.Validate(&one).Err()
	}
	if err == nil {
		set.AuthorizationPolicies = append(set.AuthorizationPolicies, ap)
		return Problem{}
	}
	p := Problem{Err: err}
	sub, ok := standIn(err)
	if !ok {
		return p
	}
	one := policies.Set{Settings: set.Settings, AuthorizationPolicies: []policies.AuthorizationPolicy{sub}}
	if policies.Validate(&one).Err() != nil {
		// The scope itself is what is wrong (a selector and targetRefs
		// together, say): a DENY that cannot say whom it selects denies
		// the whole namespace (the mesh, in the root namespace) rather
		// than nobody.
		one.AuthorizationPolicies[0].Spec.Selector = nil
		one.AuthorizationPolicies[0].Spec.TargetRef = nil
		one.AuthorizationPolicies[0].Spec.TargetRefs = nil
	}
	if policies.Validate(&one).Err() == nil {
		set.AuthorizationPolicies = append(set.AuthorizationPolicies, one.AuthorizationPolicies[0])
		p.FailClosed = true
	}
	return p
}

// acceptRA adds a converted RequestAuthentication to set when it converts
// and validates on its own, as a policy file's would; otherwise it adds the
// fail-closed stand-in (failClosedRequestAuthentication) with its scope, or
// for the whole namespace when its scope is what is invalid, and returns
// the problem.
func (w *Watcher) acceptRA(set *policies.Set, gv schema.GroupVersion, meta *metav1.ObjectMeta, spec *securityv1beta1api.RequestAuthentication) Problem {
	ra, err := convertRequestAuthentication(gv.String(), meta, spec)
	if err == nil {
		one := policies.Set{Settings: set.Settings, RequestAuthentications: []policies.RequestAuthentication{ra}}
		err = policies.Validate(&one).Err()
	}
	if err == nil {
		set.RequestAuthentications = append(set.RequestAuthentications, ra)
		return Problem{}
	}
	p := Problem{Err: err}
	for _, widen := range []bool{false, true} {
		sub := failClosedRequestAuthentication(meta, spec, err, widen)
		one := policies.Set{Settings: set.Settings, AuthorizationPolicies: []policies.AuthorizationPolicy{sub}}
		if policies.Validate(&one).Err() == nil {
			set.AuthorizationPolicies = append(set.AuthorizationPolicies, sub)
			p.FailClosed = true
			break
		}
	}
	return p
}

// acceptMeshguard is acceptAP for meshguard kinds.
func (w *Watcher) acceptMeshguard(set *policies.Set, u *unstructured.Unstructured) Problem {
	one := policies.Set{Settings: set.Settings}
	_, err := addMeshguard(&one, u)
	if err == nil {
		err = policies.Validate(&one).Err()
	}
	if err == nil {
		mergeSet(set, &one)
		return Problem{}
	}
	p := Problem{Err: err}
	sub := policies.Set{Settings: set.Settings}
	if failClosedMeshguard(&sub, u, err) {
		if policies.Validate(&sub).Err() != nil {
			// The scope itself is what is wrong: widen to the namespace.
			for i := range sub.IdentityPolicies {
				sub.IdentityPolicies[i].Spec.Workloads = nil
			}
		}
		if policies.Validate(&sub).Err() == nil {
			mergeSet(set, &sub)
			p.FailClosed = true
		}
	}
	return p
}

func mergeSet(dst, src *policies.Set) {
	dst.AuthorizationPolicies = append(dst.AuthorizationPolicies, src.AuthorizationPolicies...)
	dst.RequestAuthentications = append(dst.RequestAuthentications, src.RequestAuthentications...)
	dst.IdentityPolicies = append(dst.IdentityPolicies, src.IdentityPolicies...)
	dst.DefaultDenies = append(dst.DefaultDenies, src.DefaultDenies...)
	dst.RouteOverrides = append(dst.RouteOverrides, src.RouteOverrides...)
	dst.TrafficBaselines = append(dst.TrafficBaselines, src.TrafficBaselines...)
	dst.AnomalyProfiles = append(dst.AnomalyProfiles, src.AnomalyProfiles...)
	dst.Quarantines = append(dst.Quarantines, src.Quarantines...)
}

func byMeta(a, b policies.ObjectMeta) int {
	return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
}

func sortSet(s *policies.Set) {
	slices.SortFunc(s.AuthorizationPolicies, func(a, b policies.AuthorizationPolicy) int { return byMeta(a.Metadata, b.Metadata) })
	slices.SortFunc(s.RequestAuthentications, func(a, b policies.RequestAuthentication) int { return byMeta(a.Metadata, b.Metadata) })
	slices.SortFunc(s.IdentityPolicies, func(a, b policies.IdentityPolicy) int { return byMeta(a.Metadata, b.Metadata) })
	slices.SortFunc(s.DefaultDenies, func(a, b policies.DefaultDeny) int { return byMeta(a.Metadata, b.Metadata) })
	slices.SortFunc(s.RouteOverrides, func(a, b policies.RouteOverride) int { return byMeta(a.Metadata, b.Metadata) })
	slices.SortFunc(s.TrafficBaselines, func(a, b policies.TrafficBaseline) int { return byMeta(a.Metadata, b.Metadata) })
	slices.SortFunc(s.AnomalyProfiles, func(a, b policies.AnomalyProfile) int { return byMeta(a.Metadata, b.Metadata) })
	slices.SortFunc(s.Quarantines, func(a, b policies.Quarantine) int { return byMeta(a.Metadata, b.Metadata) })
}
