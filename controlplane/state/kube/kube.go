// Package kube keeps the control plane's state (package state) in
// meshguard's custom resources through the Kubernetes API server, the
// store the cluster already replicates: one QuarantineRecord per identity
// and one LearnedBaseline per destination service, in one namespace.
//
// Every replica watches both kinds (informers) and holds the same view;
// any replica may write. A write sends the record with the resourceVersion
// it was computed from, so the API server refuses it when another replica
// changed the object in between (409 Conflict, or AlreadyExists for two
// creates); the store then reads the object as it is now and runs the
// update function again. Two replicas acting on the same evidence therefore
// serialize on the object: the second sees what the first wrote.
package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/meshguard/meshguard/controlplane/state"
)

// ManagedByLabel marks the objects the control plane writes.
const (
	ManagedByLabel = "app.kubernetes.io/managed-by"
	ManagedBy      = "meshguard-controlplane"
)

// maxAttempts bounds the retries of one write under contention.
const maxAttempts = 16

// Options configure a Store.
type Options struct {
	// Config reaches the API server (required).
	Config *rest.Config
	// Namespace holds the records (required; the control plane's own).
	Namespace string
	// WriteTimeout bounds each API call of a write (default 10s).
	WriteTimeout time.Duration
	Logger       *slog.Logger
	Registerer   prometheus.Registerer
}

// Store is the Kubernetes-backed state store. It is safe for concurrent use.
type Store struct {
	rc      *rest.RESTClient
	ns      string
	timeout time.Duration
	log     *slog.Logger
	metrics *state.Metrics
	subs    state.Subscribers

	quarantines *collection[state.Quarantine, *QuarantineRecord]
	baselines   *collection[state.Baseline, *LearnedBaseline]
}

// New checks the options and builds the client; Start loads the view.
func New(opts Options) (*Store, error) {
	var errs []error
	if opts.Config == nil {
		errs = append(errs, errors.New("a REST config is required"))
	}
	if opts.Namespace == "" {
		errs = append(errs, errors.New("a namespace is required"))
	}
	for _, msg := range validation.IsDNS1123Label(opts.Namespace) {
		errs = append(errs, fmt.Errorf("namespace %q: %s", opts.Namespace, msg))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("kube state: %w", err)
	}
	if opts.WriteTimeout <= 0 {
		opts.WriteTimeout = 10 * time.Second
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m, err := state.NewMetrics(opts.Registerer)
	if err != nil {
		return nil, err
	}
	scheme, err := newScheme()
	if err != nil {
		return nil, err
	}
	cfg := rest.CopyConfig(opts.Config)
	cfg.GroupVersion = &GroupVersion
	cfg.APIPath = "/apis"
	cfg.ContentType = runtime.ContentTypeJSON
	cfg.NegotiatedSerializer = serializer.NewCodecFactory(scheme).WithoutConversion()
	if cfg.UserAgent == "" {
		cfg.UserAgent = "meshguard-controlplane"
	}
	// The initial list is megabytes of JSON between two pods of one
	// cluster: compressing it costs the API server more time than it saves.
	cfg.DisableCompression = true
	if cfg.QPS == 0 {
		// Expiring many quarantines at once is one write each.
		cfg.QPS, cfg.Burst = 50, 100
	}
	rc, err := rest.RESTClientFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("kube state: client: %w", err)
	}
	s := &Store{rc: rc, ns: opts.Namespace, timeout: opts.WriteTimeout, log: log.With(slog.String("component", "state")), metrics: m}
	s.quarantines = &collection[state.Quarantine, *QuarantineRecord]{
		s: s, resource: ResourceQuarantines, kind: state.KindQuarantine,
		name:      state.QuarantineName,
		key:       func(q *state.Quarantine) string { return q.Identity },
		validate:  (*state.Quarantine).Validate,
		clone:     (*state.Quarantine).Clone,
		newObject: func() *QuarantineRecord { return &QuarantineRecord{} },
		spec:      func(o *QuarantineRecord) *state.Quarantine { return &o.Spec },
		view:      map[string]*QuarantineRecord{},
		invalid:   map[string]string{},
	}
	s.baselines = &collection[state.Baseline, *LearnedBaseline]{
		s: s, resource: ResourceBaselines, kind: state.KindBaseline,
		name:      state.BaselineName,
		key:       func(b *state.Baseline) string { return b.Destination },
		validate:  (*state.Baseline).Validate,
		clone:     (*state.Baseline).Clone,
		newObject: func() *LearnedBaseline { return &LearnedBaseline{} },
		spec:      func(o *LearnedBaseline) *state.Baseline { return &o.Spec },
		view:      map[string]*LearnedBaseline{},
		invalid:   map[string]string{},
	}
	return s, nil
}

// Namespace returns the namespace of the records.
func (s *Store) Namespace() string { return s.ns }

// Start checks that the API server serves the state kinds in the namespace
// and that this process may read them, starts the informers and returns
// once the view holds every record, or with an error. The informers run
// until ctx ends.
func (s *Store) Start(ctx context.Context) error {
	for _, res := range []string{ResourceQuarantines, ResourceBaselines} {
		lctx, cancel := context.WithTimeout(ctx, s.timeout)
		err := s.rc.Get().Namespace(s.ns).Resource(res).VersionedParams(&metav1.ListOptions{Limit: 1}, metav1.ParameterCodec).Do(lctx).Error()
		cancel()
		switch {
		case err == nil:
		case apierrors.IsNotFound(err):
			return fmt.Errorf("kube state: the API server does not serve %s.%s: install meshguard's CRDs (deploy/crds)", res, GroupVersion.Group)
		case apierrors.IsForbidden(err):
			return fmt.Errorf("kube state: not allowed to list %s in namespace %s (RBAC): %w", res, s.ns, err)
		default:
			return fmt.Errorf("kube state: list %s in namespace %s: %w", res, s.ns, err)
		}
	}
	synced := []cache.InformerSynced{s.quarantines.start(ctx), s.baselines.start(ctx)}
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return fmt.Errorf("kube state: informers did not sync: %w", ctx.Err())
	}
	s.gauges()
	s.subs.Notify()
	return nil
}

func (s *Store) gauges() {
	s.metrics.Records.WithLabelValues(state.KindQuarantine).Set(float64(s.quarantines.len()))
	s.metrics.Records.WithLabelValues(state.KindBaseline).Set(float64(s.baselines.len()))
}

// Subscribe implements state.Store.
func (s *Store) Subscribe(fn func()) func() { return s.subs.Subscribe(fn) }

// Quarantines implements state.Store.
func (s *Store) Quarantines() []*state.Quarantine {
	out := s.quarantines.list()
	sort.Slice(out, func(i, j int) bool { return out[i].Identity < out[j].Identity })
	return out
}

// Baselines implements state.Store.
func (s *Store) Baselines() []*state.Baseline {
	out := s.baselines.list()
	sort.Slice(out, func(i, j int) bool { return out[i].Destination < out[j].Destination })
	return out
}

// UpdateQuarantine implements state.Store.
func (s *Store) UpdateQuarantine(ctx context.Context, identity string, fn state.QuarantineUpdate) (*state.Quarantine, error) {
	return s.quarantines.update(ctx, identity, fn)
}

// UpdateBaseline implements state.Store.
func (s *Store) UpdateBaseline(ctx context.Context, destination string, fn state.BaselineUpdate) (*state.Baseline, error) {
	return s.baselines.update(ctx, destination, fn)
}

// object is a state custom resource.
type object interface {
	runtime.Object
	metav1.Object
}

// collection is the view of one kind, keyed by object name, and its writes.
type collection[R any, O object] struct {
	s         *Store
	resource  string
	kind      string // metrics label
	name      func(key string) string
	key       func(*R) string
	validate  func(*R) error
	clone     func(*R) *R
	newObject func() O
	spec      func(O) *R

	mu      sync.RWMutex
	view    map[string]O      // valid objects by name
	invalid map[string]string // name → resourceVersion reported invalid
}

func (c *collection[R, O]) len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.view)
}

func (c *collection[R, O]) list() []*R {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make([]*R, 0, len(c.view))
	for _, o := range c.view {
		out = append(out, c.spec(o))
	}
	return out
}

func (c *collection[R, O]) start(ctx context.Context) cache.InformerSynced {
	changed := func() {
		c.s.gauges()
		c.s.subs.Notify()
	}
	_, ctrl := cache.NewInformerWithOptions(cache.InformerOptions{
		ListerWatcher: listWatch{cache.NewListWatchFromClient(c.s.rc, c.resource, c.s.ns, fields.Everything())},
		ObjectType:    c.newObject(),
		Transform: func(obj any) (any, error) {
			if o, ok := obj.(metav1.Object); ok {
				o.SetManagedFields(nil) // not read; saves memory
			}
			return obj, nil
		},
		Handler: cache.ResourceEventHandlerFuncs{
			AddFunc: func(obj any) {
				if o, ok := obj.(O); ok && c.observe(o) {
					changed()
				}
			},
			UpdateFunc: func(_, obj any) {
				if o, ok := obj.(O); ok && c.observe(o) {
					changed()
				}
			},
			DeleteFunc: func(obj any) {
				if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
					obj = d.Obj
				}
				if o, ok := obj.(O); ok && c.forget(o.GetName(), o.GetResourceVersion()) {
					changed()
				}
			},
		},
	})
	go ctrl.RunWithContext(ctx)
	return ctrl.HasSynced
}

// listWatch reads the initial state with one LIST rather than client-go's
// streaming watch-list: with thousands of records, one response decoded
// once is faster than one watch event per object, each decoded twice (the
// event, then the object in it).
type listWatch struct{ *cache.ListWatch }

// IsWatchListSemanticsUnSupported tells the reflector to LIST.
func (listWatch) IsWatchListSemanticsUnSupported() bool { return true }

// newer reports whether resource version a is newer than b. Resource
// versions are compared as the integers the API server issues (etcd
// revisions); an unparsable one is never newer, so the watch's wins.
func newer(a, b string) bool {
	x, err1 := strconv.ParseUint(a, 10, 64)
	y, err2 := strconv.ParseUint(b, 10, 64)
	return err1 == nil && err2 == nil && x > y
}

// check validates an object: its record and that its name is the one its
// key gives, so that one key never has two objects.
func (c *collection[R, O]) check(o O) error {
	rec := c.spec(o)
	if err := c.validate(rec); err != nil {
		return err
	}
	if want := c.name(c.key(rec)); o.GetName() != want {
		return fmt.Errorf("object name %q, want %q for %q", o.GetName(), want, c.key(rec))
	}
	return nil
}

// observe puts an object into the view unless the view holds a newer
// version of it; it reports whether the view changed.
func (c *collection[R, O]) observe(o O) bool {
	name, rv := o.GetName(), o.GetResourceVersion()
	if err := c.check(o); err != nil {
		c.mu.Lock()
		first := c.invalid[name] != rv
		c.invalid[name] = rv
		_, had := c.view[name]
		delete(c.view, name)
		c.mu.Unlock()
		if first {
			c.s.metrics.Invalid.WithLabelValues(c.kind).Inc()
			c.s.log.Error("state object ignored: it does not validate", slog.String("resource", c.resource),
				slog.String("namespace", o.GetNamespace()), slog.String("name", name), slog.Any("error", err))
		}
		return had
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.invalid, name)
	if old, ok := c.view[name]; ok && newer(old.GetResourceVersion(), rv) {
		return false
	}
	c.view[name] = o
	return true
}

// forget drops name from the view unless the view holds a version newer
// than the one deleted (this replica wrote it again since).
func (c *collection[R, O]) forget(name, rv string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.invalid, name)
	old, ok := c.view[name]
	if !ok || newer(old.GetResourceVersion(), rv) {
		return false
	}
	delete(c.view, name)
	return true
}

// get reads name from the API server: the object (exists false when there
// is none) and its record (nil when it does not validate, so that the next
// write replaces it).
func (c *collection[R, O]) get(ctx context.Context, name string) (obj O, rec *R, exists bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, c.s.timeout)
	defer cancel()
	out := c.newObject()
	err = c.s.rc.Get().Namespace(c.s.ns).Resource(c.resource).Name(name).Do(ctx).Into(out)
	if apierrors.IsNotFound(err) {
		return obj, nil, false, nil
	}
	if err != nil {
		return obj, nil, false, err
	}
	if c.check(out) != nil {
		return out, nil, true, nil
	}
	if c.observe(out) {
		c.s.gauges()
		c.s.subs.Notify()
	}
	return out, c.spec(out), true, nil
}

func (c *collection[R, O]) update(ctx context.Context, key string, fn func(*R) (*R, error)) (*R, error) {
	name := c.name(key)
	c.mu.RLock()
	obj, exists := c.view[name]
	c.mu.RUnlock()
	var cur *R
	if exists {
		cur = c.spec(obj)
	}
	for attempt := 1; ; attempt++ {
		next, err := fn(c.clone(cur))
		if errors.Is(err, state.ErrUnchanged) {
			return cur, nil
		}
		if err != nil {
			return nil, err
		}
		if next != nil {
			if k := c.key(next); k != key {
				return nil, fmt.Errorf("kube state: update of %s %q returned one of %q", c.kind, key, k)
			}
			if err := c.validate(next); err != nil {
				return nil, fmt.Errorf("kube state: %s %q: %w", c.kind, key, err)
			}
		}
		if next == nil && !exists {
			return nil, nil
		}
		start := time.Now()
		out, err := c.write(ctx, name, obj, exists, next)
		if err == nil {
			c.s.metrics.Writes.WithLabelValues(c.kind, "ok").Inc()
			c.s.metrics.WriteSeconds.Observe(time.Since(start).Seconds())
			if next == nil {
				c.forget(name, obj.GetResourceVersion())
			} else {
				c.observe(out)
				next = c.spec(out)
			}
			c.s.gauges()
			c.s.subs.Notify()
			return next, nil
		}
		conflict := apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err) || (exists && apierrors.IsNotFound(err))
		if !conflict || attempt >= maxAttempts {
			c.s.metrics.Writes.WithLabelValues(c.kind, "error").Inc()
			c.s.log.Error("state write failed", slog.String("resource", c.resource), slog.String("name", name),
				slog.Int("attempt", attempt), slog.Any("error", err))
			return nil, fmt.Errorf("kube state: write %s %s/%s: %w", c.resource, c.s.ns, name, err)
		}
		// Another writer changed the object since it was read: read it
		// as it is now and decide again.
		c.s.metrics.Writes.WithLabelValues(c.kind, "conflict").Inc()
		c.s.log.Debug("state write conflict; retrying on the current object", slog.String("resource", c.resource),
			slog.String("name", name), slog.Int("attempt", attempt))
		if obj, cur, exists, err = c.get(ctx, name); err != nil {
			c.s.metrics.Writes.WithLabelValues(c.kind, "error").Inc()
			return nil, fmt.Errorf("kube state: read %s %s/%s after a conflict: %w", c.resource, c.s.ns, name, err)
		}
	}
}

// write creates, replaces (guarded by the resource version of cur) or
// deletes (next nil; guarded too) the object.
func (c *collection[R, O]) write(ctx context.Context, name string, cur O, exists bool, next *R) (O, error) {
	ctx, cancel := context.WithTimeout(ctx, c.s.timeout)
	defer cancel()
	out := c.newObject()
	switch {
	case next == nil:
		rv := cur.GetResourceVersion()
		err := c.s.rc.Delete().Namespace(c.s.ns).Resource(c.resource).Name(name).
			Body(&metav1.DeleteOptions{Preconditions: &metav1.Preconditions{ResourceVersion: &rv}}).Do(ctx).Error()
		return out, err
	case !exists:
		obj := c.newObject()
		obj.SetName(name)
		obj.SetNamespace(c.s.ns)
		obj.SetLabels(map[string]string{ManagedByLabel: ManagedBy})
		*c.spec(obj) = *next
		err := c.s.rc.Post().Namespace(c.s.ns).Resource(c.resource).Body(obj).Do(ctx).Into(out)
		return out, err
	default:
		// The object as read (its resourceVersion is the precondition)
		// with the new record.
		obj := cur.DeepCopyObject().(O)
		*c.spec(obj) = *next
		err := c.s.rc.Put().Namespace(c.s.ns).Resource(c.resource).Name(name).Body(obj).Do(ctx).Into(out)
		return out, err
	}
}
