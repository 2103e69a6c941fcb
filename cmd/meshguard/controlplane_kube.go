package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/spf13/cobra"

	"github.com/meshguard/meshguard/controlplane/istio"
	"github.com/meshguard/meshguard/policies"
)

// kubeFlags enable the Kubernetes watch (Istio AuthorizationPolicies,
// RequestAuthentications and
// meshguard's kinds) and, optionally, leader election.
type kubeFlags struct {
	enabled        bool
	kubeconfig     string
	leaderElection bool
	leaseNamespace string
	leaseName      string
	leaseDuration  time.Duration
	stateNamespace string
	meshConfig     string // namespace/name of Istio's MeshConfig ConfigMap; "" not read
}

const defaultLeaseName = "meshguard-controlplane"

// serviceAccountNamespaceFile holds the pod's namespace in a cluster.
const serviceAccountNamespaceFile = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

func (f *kubeFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.BoolVar(&f.enabled, "kubernetes", false, "watch Istio AuthorizationPolicies, RequestAuthentications and meshguard's kinds in the cluster (store source \"kubernetes\")")
	fl.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig file, with --kubernetes (default: the in-cluster service account)")
	fl.BoolVar(&f.leaderElection, "leader-election", false, "with --kubernetes: campaign for a Lease; only the leader writes Kubernetes events")
	fl.StringVar(&f.leaseNamespace, "leader-election-namespace", "", "namespace of the Lease (default: $POD_NAMESPACE, else the service account's namespace)")
	fl.StringVar(&f.leaseName, "leader-election-id", defaultLeaseName, "name of the Lease")
	fl.DurationVar(&f.leaseDuration, "leader-election-lease-duration", 15*time.Second, "how long a Lease holds without renewal: a dead leader is replaced after at most this (renewed every 2/3 of it)")
	fl.StringVar(&f.stateNamespace, "state-namespace", "", "with --kubernetes: namespace of the QuarantineRecords and LearnedBaselines (default: $POD_NAMESPACE, else the service account's namespace)")
	fl.StringVar(&f.meshConfig, "istio-mesh-config", istio.DefaultMeshConfigNamespace+"/"+istio.DefaultMeshConfigName,
		"with --kubernetes: NAMESPACE/NAME of Istio's MeshConfig ConfigMap, whose trust domain and aliases, root namespace, path normalization and extension providers join MeshSettings (\"\": not read)")
}

// meshConfigRef splits --istio-mesh-config.
func (f *kubeFlags) meshConfigRef() (ns, name string, err error) {
	if f.meshConfig == "" {
		return "", "", nil
	}
	ns, name, ok := strings.Cut(f.meshConfig, "/")
	if !ok {
		return "", "", fmt.Errorf("--istio-mesh-config %q: want NAMESPACE/NAME", f.meshConfig)
	}
	var msgs []string
	msgs = append(msgs, validation.IsDNS1123Label(ns)...)
	msgs = append(msgs, validation.IsDNS1123Subdomain(name)...)
	if len(msgs) > 0 {
		return "", "", fmt.Errorf("--istio-mesh-config %q: %s", f.meshConfig, strings.Join(msgs, "; "))
	}
	return ns, name, nil
}

// validate checks the flags without touching a cluster; every problem is
// reported at once.
func (f *kubeFlags) validate(cmd *cobra.Command) error {
	var errs []error
	changed := func(name string) bool { return cmd != nil && cmd.Flags().Changed(name) }
	if !f.enabled {
		for _, name := range []string{"kubeconfig", "leader-election", "leader-election-namespace", "leader-election-id", "leader-election-lease-duration", "state-namespace", "istio-mesh-config"} {
			if changed(name) {
				errs = append(errs, fmt.Errorf("--%s needs --kubernetes", name))
			}
		}
		if f.kubeconfig != "" && !changed("kubeconfig") {
			errs = append(errs, errors.New("--kubeconfig needs --kubernetes"))
		}
		return errors.Join(errs...)
	}
	if f.stateNamespace != "" {
		for _, msg := range validation.IsDNS1123Label(f.stateNamespace) {
			errs = append(errs, fmt.Errorf("--state-namespace %q: %s", f.stateNamespace, msg))
		}
	}
	if _, _, err := f.meshConfigRef(); err != nil {
		errs = append(errs, err)
	}
	if !f.leaderElection {
		for _, name := range []string{"leader-election-namespace", "leader-election-id", "leader-election-lease-duration"} {
			if changed(name) {
				errs = append(errs, fmt.Errorf("--%s needs --leader-election", name))
			}
		}
		return errors.Join(errs...)
	}
	if f.leaseDuration < time.Second {
		errs = append(errs, fmt.Errorf("--leader-election-lease-duration %s: at least 1s", f.leaseDuration))
	}
	if f.leaseNamespace != "" {
		for _, msg := range validation.IsDNS1123Label(f.leaseNamespace) {
			errs = append(errs, fmt.Errorf("--leader-election-namespace %q: %s", f.leaseNamespace, msg))
		}
	}
	if f.leaseName == "" {
		errs = append(errs, errors.New("--leader-election-id must not be empty"))
	}
	for _, msg := range validation.IsDNS1123Subdomain(f.leaseName) {
		errs = append(errs, fmt.Errorf("--leader-election-id %q: %s", f.leaseName, msg))
	}
	return errors.Join(errs...)
}

// restConfig loads --kubeconfig, or the in-cluster configuration when it is
// empty.
func (f *kubeFlags) restConfig() (*rest.Config, error) {
	if f.kubeconfig == "" {
		cfg, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("--kubernetes: no in-cluster configuration (pass --kubeconfig outside a pod): %w", err)
		}
		return cfg, nil
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", f.kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("--kubeconfig %s: %w", f.kubeconfig, err)
	}
	return cfg, nil
}

// leaseNamespaceOrDefault resolves the Lease namespace.
func (f *kubeFlags) leaseNamespaceOrDefault() (string, error) {
	if f.leaseNamespace != "" {
		return f.leaseNamespace, nil
	}
	if ns := ownNamespace(); ns != "" {
		return ns, nil
	}
	return "", errors.New("--leader-election: no namespace for the Lease; set --leader-election-namespace or $POD_NAMESPACE")
}

// stateNamespaceOrDefault resolves the namespace of the state records.
func (f *kubeFlags) stateNamespaceOrDefault() (string, error) {
	if f.stateNamespace != "" {
		return f.stateNamespace, nil
	}
	if ns := ownNamespace(); ns != "" {
		return ns, nil
	}
	return "", errors.New("--kubernetes: no namespace for the state records; set --state-namespace or $POD_NAMESPACE")
}

// ownNamespace is the pod's namespace: $POD_NAMESPACE, else the service
// account's; empty outside a pod.
func ownNamespace() string {
	if ns := os.Getenv("POD_NAMESPACE"); ns != "" {
		return ns
	}
	if b, err := os.ReadFile(serviceAccountNamespaceFile); err == nil {
		return strings.TrimSpace(string(b))
	}
	return ""
}

// replicaIdentity names this replica in the Lease: $POD_NAME, else the
// host name (a pod's host name is its name).
func replicaIdentity() (string, error) {
	if n := os.Getenv("POD_NAME"); n != "" {
		return n, nil
	}
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "", fmt.Errorf("--leader-election: no identity (set $POD_NAME): %v", err)
	}
	return h, nil
}

// kubeWatch is a started Kubernetes watch.
type kubeWatch struct {
	cfg     *rest.Config
	watcher *istio.Watcher
	// leading is whether this replica holds the Lease (always false
	// without --leader-election).
	leading atomic.Bool
	first   chan struct{} // closed on the first accepted set
	once    sync.Once
	errc    chan error // the watch could not start
	wg      sync.WaitGroup
}

// wait blocks until the first set from the cluster was accepted, the watch
// failed, or ctx ended.
func (k *kubeWatch) wait(ctx context.Context) error {
	select {
	case <-k.first:
		return nil
	case err := <-k.errc:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// stop waits for the watch and the election to end; cancel their context
// first.
func (k *kubeWatch) stop() {
	if k != nil {
		k.wg.Wait()
	}
}

// startKube loads the configuration, builds the clients and starts the
// watcher (and leader election) feeding sink. Errors of the watch after
// start arrive on errc.
func startKube(ctx context.Context, f *kubeFlags, sink istio.Sink, log *slog.Logger, reg prometheus.Registerer) (*kubeWatch, error) {
	cfg, err := f.restConfig()
	if err != nil {
		return nil, err
	}
	cfg = rest.CopyConfig(cfg)
	cfg.UserAgent = "meshguard-controlplane"
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	ic, err := istioclient.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("istio client: %w", err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes dynamic client: %w", err)
	}
	var (
		namespace, identity string
		reporter            *istio.EventReporter
	)
	if f.leaderElection {
		if namespace, err = f.leaseNamespaceOrDefault(); err != nil {
			return nil, err
		}
		if identity, err = replicaIdentity(); err != nil {
			return nil, err
		}
		reporter = istio.NewEventReporter(kube, identity, log)
	}
	k := &kubeWatch{cfg: cfg, first: make(chan struct{}), errc: make(chan error, 1)}
	opts := istio.Options{
		Istio: ic, Dynamic: dyn, Discovery: kube.Discovery(),
		Sink: istio.SinkFunc(func(name string, set policies.Set) error {
			if err := sink.SetSource(name, set); err != nil {
				return err
			}
			k.once.Do(func() { close(k.first) })
			return nil
		}),
		SourceName: istio.DefaultSourceName,
		Logger:     log, Registerer: reg,
	}
	if reporter != nil {
		opts.Reporter = reporter
	}
	if ns, name, err := f.meshConfigRef(); err != nil {
		return nil, err
	} else if name != "" {
		opts.Kube, opts.MeshConfigNamespace, opts.MeshConfigName = kube, ns, name
	}
	if k.watcher, err = istio.New(opts); err != nil {
		return nil, err
	}
	k.wg.Add(1)
	go func() {
		defer k.wg.Done()
		if err := k.watcher.Run(ctx); err != nil && ctx.Err() == nil {
			select {
			case k.errc <- fmt.Errorf("kubernetes watch: %w", err):
			default:
			}
		}
	}()
	if f.leaderElection {
		k.wg.Add(1)
		go func() {
			defer k.wg.Done()
			err := istio.RunLeaderElection(ctx, kube, istio.LeaderOptions{
				Namespace: namespace, Name: f.leaseName, Identity: identity, Logger: log,
				LeaseDuration: f.leaseDuration, RenewDeadline: f.leaseDuration * 2 / 3, RetryPeriod: max(f.leaseDuration*2/15, 100*time.Millisecond),
				OnChange: func(leading bool) {
					k.leading.Store(leading)
					reporter.SetLeading(leading)
					if leading {
						k.watcher.Resync() // report the current problems
					}
				},
			})
			if err != nil && ctx.Err() == nil {
				select {
				case k.errc <- fmt.Errorf("leader election: %w", err):
				default:
				}
			}
		}()
	}
	lease := ""
	if f.leaderElection {
		lease = namespace + "/" + f.leaseName
	}
	log.Info("watching Kubernetes", "kubeconfig", f.kubeconfig, "leader_election", f.leaderElection,
		"lease", lease, "identity", identity)
	return k, nil
}
