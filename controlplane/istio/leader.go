package istio

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

func isNotFound(err error) bool { return apierrors.IsNotFound(err) }

// LeaderOptions configure leader election over a coordination.k8s.io Lease.
type LeaderOptions struct {
	// Namespace and Name of the Lease (required).
	Namespace, Name string
	// Identity of this replica (required; normally the pod name).
	Identity string
	// Durations; zero takes 15s, 10s and 2s, client-go's defaults.
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	// OnChange is called with true when this replica becomes leader and with
	// false when it stops being leader.
	OnChange func(leading bool)
	Logger   *slog.Logger
}

// RunLeaderElection campaigns for the Lease until ctx is done, calling
// OnChange as leadership comes and goes. Losing the lease does not stop the
// process: the replica goes back to campaigning and keeps serving xDS. The
// lease is released when ctx is cancelled.
func RunLeaderElection(ctx context.Context, kube kubernetes.Interface, opts LeaderOptions) error {
	if opts.Namespace == "" || opts.Name == "" || opts.Identity == "" {
		return errors.New("istio: leader election needs a lease namespace, name and identity")
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: opts.Namespace, Name: opts.Name},
		Client:     kube.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: opts.Identity},
	}
	onChange := opts.OnChange
	if onChange == nil {
		onChange = func(bool) {}
	}
	cfg := leaderelection.LeaderElectionConfig{
		Lock:            lock,
		LeaseDuration:   cmpOr(opts.LeaseDuration, 15*time.Second),
		RenewDeadline:   cmpOr(opts.RenewDeadline, 10*time.Second),
		RetryPeriod:     cmpOr(opts.RetryPeriod, 2*time.Second),
		ReleaseOnCancel: true,
		Name:            opts.Name,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(context.Context) {
				log.Info("became leader", slog.String("lease", opts.Namespace+"/"+opts.Name), slog.String("identity", opts.Identity))
				onChange(true)
			},
			OnStoppedLeading: func() {
				log.Info("stopped leading", slog.String("lease", opts.Namespace+"/"+opts.Name), slog.String("identity", opts.Identity))
				onChange(false)
			},
		},
	}
	// Run returns when the lease is lost; campaign again, with a fresh
	// elector, until ctx ends.
	for ctx.Err() == nil {
		le, err := leaderelection.NewLeaderElector(cfg)
		if err != nil {
			return fmt.Errorf("istio: leader election: %w", err)
		}
		le.Run(ctx)
	}
	return nil
}

func cmpOr(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// EventReporter writes a Warning event on every object that could not be
// converted, once per object version, while Leading reports true. It is the
// only thing the watcher writes to the cluster.
type EventReporter struct {
	kube      kubernetes.Interface
	component string
	host      string
	log       *slog.Logger
	leading   atomic.Bool

	mu       sync.Mutex
	reported map[types.UID]string // resource version last reported
}

// NewEventReporter returns a reporter that writes nothing until SetLeading(true).
func NewEventReporter(kube kubernetes.Interface, host string, log *slog.Logger) *EventReporter {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &EventReporter{kube: kube, component: "meshguard-controlplane", host: host, log: log, reported: map[types.UID]string{}}
}

// SetLeading switches writing on or off. Becoming leader forgets what was
// reported so that the new leader reports the current problems again.
func (r *EventReporter) SetLeading(leading bool) {
	r.leading.Store(leading)
	if leading {
		r.mu.Lock()
		clear(r.reported)
		r.mu.Unlock()
	}
}

// Leading reports whether the reporter writes.
func (r *EventReporter) Leading() bool { return r.leading.Load() }

// Event reasons written by EventReporter.
const (
	EventReasonConversionFailed = "ConversionFailed" // object skipped
	EventReasonFailedClosed     = "FailedClosed"     // replaced by a deny-everything stand-in
)

// maxEventMessage bounds event messages (the API server limits them too).
const maxEventMessage = 1024

// Report implements Reporter.
func (r *EventReporter) Report(ctx context.Context, problems []Problem) {
	if !r.leading.Load() {
		return
	}
	// problems is the full current list: forget objects no longer in it so
	// that the map stays as small as the problem list.
	current := make(map[types.UID]bool, len(problems))
	for _, p := range problems {
		current[p.UID] = true
	}
	r.mu.Lock()
	for uid := range r.reported {
		if !current[uid] {
			delete(r.reported, uid)
		}
	}
	r.mu.Unlock()
	for _, p := range problems {
		if p.UID == "" {
			continue
		}
		r.mu.Lock()
		done := r.reported[p.UID] == p.ResourceVersion
		r.mu.Unlock()
		if done {
			continue
		}
		reason := EventReasonConversionFailed
		msg := "not converted into the meshguard policy set; skipped: " + p.Err.Error()
		if p.FailClosed {
			reason = EventReasonFailedClosed
			msg = "not converted into the meshguard policy set; denying every request in its scope until fixed: " + p.Err.Error()
		}
		if len(msg) > maxEventMessage {
			msg = truncate(msg, maxEventMessage)
		}
		now := metav1.NewTime(time.Now())
		ev := &corev1.Event{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s.%x", p.Name, now.UnixNano()), Namespace: p.Namespace},
			InvolvedObject: corev1.ObjectReference{
				APIVersion:      p.GVR.GroupVersion().String(),
				Kind:            p.Kind,
				Namespace:       p.Namespace,
				Name:            p.Name,
				UID:             p.UID,
				ResourceVersion: p.ResourceVersion,
			},
			Reason:              reason,
			Message:             msg,
			Type:                corev1.EventTypeWarning,
			Source:              corev1.EventSource{Component: r.component, Host: r.host},
			FirstTimestamp:      now,
			LastTimestamp:       now,
			Count:               1,
			ReportingController: "meshguard.dev/controlplane",
			ReportingInstance:   r.host,
		}
		if _, err := r.kube.CoreV1().Events(p.Namespace).Create(ctx, ev, metav1.CreateOptions{}); err != nil {
			r.log.Warn("event not written", slog.String("namespace", p.Namespace), slog.String("name", p.Name), slog.Any("error", err))
			continue
		}
		r.mu.Lock()
		r.reported[p.UID] = p.ResourceVersion
		r.mu.Unlock()
	}
}

func truncate(s string, n int) string {
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
