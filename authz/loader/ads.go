package loader

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshguard/meshguard/authz/metrics"
	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/wire"
)

// ADSSource subscribes to the policy bundle the control plane publishes
// over the Aggregated Discovery Service (state of the world): one
// envoy.config.core.v3.TypedExtensionConfig named wire.BundleResourceName
// whose typed_config is a google.protobuf.StringValue with the bundle JSON.
// A version that applies is ACKed; one that does not is NACKed with the
// error in error_detail while the last good version keeps serving. A broken
// stream is reopened with jittered exponential backoff.
//
// Freshness. The source tells whether the serving bundle is still the
// control plane's (Staleness): it is confirmed by every response (an
// update, or the same version again on a new stream: each stream asks
// afresh, with no version) and by every heartbeat. The source declares the
// client feature envoy.config.supports-resource-ttl; a control plane that
// honours it sends the bundle with a TTL and a heartbeat (the resource
// without its body) well within it, so that an idle but healthy control
// plane keeps the bundle confirmed. Without a TTL the open stream itself
// confirms the bundle: give Conn gRPC keepalive, so that a peer that is
// gone without a reset (a partition) ends the stream.
//
// A watchdog ends a stream that stays silent longer than the resource's
// TTL, or that gets no first answer within FirstResponseTimeout.
type ADSSource struct {
	Conn grpc.ClientConnInterface
	// Node identifies this server to the control plane (its id selects the
	// snapshot in go-control-plane's cache).
	Node *corev3.Node
	Log  *slog.Logger
	// MinBackoff and MaxBackoff bound reconnect delays (defaults 250ms, 30s).
	MinBackoff, MaxBackoff time.Duration
	// RepeatNACKDelay paces NACKs of a version that was already rejected
	// (default 1s): a snapshot cache answers every NACK that carries the
	// last good version by sending the bad version again.
	RepeatNACKDelay time.Duration
	// FirstResponseTimeout ends a stream that gets no answer to its
	// subscription in time (default 30s).
	FirstResponseTimeout time.Duration
	// MaxStaleness is the bound Fresh checks; zero turns the check off.
	MaxStaleness time.Duration
	// Metrics, when set, receives the connection state, the staleness and
	// the streams that end.
	Metrics *metrics.Metrics

	acked string // last ACKed version
	// rejected remembers the last NACKed version and why.
	rejectedVersion string
	rejectedErr     error

	fresh freshness
}

// ClientFeatureTTL is the client feature (as Envoy names it) that tells the
// control plane this subscriber understands resource TTLs and heartbeats.
const ClientFeatureTTL = "envoy.config.supports-resource-ttl"

// freshness is the state Staleness reads, shared with the readiness check.
type freshness struct {
	mu          sync.Mutex
	started     time.Time // when the source started: staleness before any confirmation
	confirmed   time.Time // the bundle was last confirmed
	live        bool      // a stream is answered and not past its TTL
	ttl         time.Duration
	stale       bool // past MaxStaleness (for the transition count)
	initialized bool
}

// Name implements Source.
func (*ADSSource) Name() string { return "ads" }

// Staleness is how long the serving bundle has gone unconfirmed: zero while
// a live stream without TTLs holds it, the time since the last response or
// heartbeat otherwise (since the source started, before the first one).
func (a *ADSSource) Staleness(now time.Time) time.Duration {
	f := &a.fresh
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case !f.initialized:
		return 0
	case f.live && f.ttl == 0:
		return 0
	case f.confirmed.IsZero():
		return now.Sub(f.started)
	}
	return now.Sub(f.confirmed)
}

// Fresh is the readiness check: nil while the staleness is within
// MaxStaleness (or no bound is set).
func (a *ADSSource) Fresh() error {
	if a.MaxStaleness <= 0 {
		return nil
	}
	if d := a.Staleness(time.Now()); d > a.MaxStaleness {
		a.fresh.mu.Lock()
		never := a.fresh.confirmed.IsZero()
		a.fresh.mu.Unlock()
		if never {
			return fmt.Errorf("no policy bundle from the control plane for %s (bound %s)", d.Round(time.Second), a.MaxStaleness)
		}
		return fmt.Errorf("policy bundle unconfirmed by the control plane for %s (bound %s)", d.Round(time.Second), a.MaxStaleness)
	}
	return nil
}

func (a *ADSSource) setLive(live bool) {
	a.fresh.mu.Lock()
	a.fresh.live = live
	a.fresh.mu.Unlock()
	if a.Metrics != nil {
		v := 0.0
		if live {
			v = 1
		}
		a.Metrics.ControlPlaneConnected.Set(v)
	}
}

func (a *ADSSource) confirm(ttl time.Duration) {
	a.fresh.mu.Lock()
	a.fresh.confirmed, a.fresh.ttl, a.fresh.live = time.Now(), ttl, true
	a.fresh.mu.Unlock()
	if a.Metrics != nil {
		a.Metrics.ControlPlaneConnected.Set(1)
	}
}

// observe updates the staleness gauge and counts a crossing of the bound.
func (a *ADSSource) observe() {
	d := a.Staleness(time.Now())
	f := &a.fresh
	f.mu.Lock()
	crossed := a.MaxStaleness > 0 && d > a.MaxStaleness && !f.stale
	f.stale = a.MaxStaleness > 0 && d > a.MaxStaleness
	f.mu.Unlock()
	if a.Metrics != nil {
		a.Metrics.PolicyStaleness.Set(d.Seconds())
		if crossed {
			a.Metrics.PolicyStale.Inc()
		}
	}
	if crossed {
		a.Log.Error("policy bundle stale: not confirmed by the control plane within the bound; not ready",
			slog.Duration("staleness", d), slog.Duration("bound", a.MaxStaleness))
	}
}

// Run implements Source.
func (a *ADSSource) Run(ctx context.Context, apply ApplyFunc) error {
	minB, maxB := a.MinBackoff, a.MaxBackoff
	if minB <= 0 {
		minB = 250 * time.Millisecond
	}
	if maxB < minB {
		maxB = max(30*time.Second, minB)
	}
	a.fresh.mu.Lock()
	if !a.fresh.initialized {
		a.fresh.initialized, a.fresh.started = true, time.Now()
	}
	a.fresh.mu.Unlock()
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			a.observe()
			select {
			case <-watchCtx.Done():
				return
			case <-t.C:
			}
		}
	}()
	backoff := minB
	for {
		progressed, reason, err := a.stream(ctx, apply)
		a.setLive(false)
		if ctx.Err() != nil {
			return nil
		}
		if a.Metrics != nil {
			a.Metrics.ControlPlaneStreams.WithLabelValues(reason).Inc()
		}
		if progressed {
			backoff = minB
		}
		delay := backoff/2 + rand.N(backoff/2+1)
		a.Log.Warn("policy subscription interrupted; reconnecting",
			slog.String("error", err.Error()), slog.String("reason", reason), slog.Duration("backoff", delay))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay):
		}
		backoff = min(backoff*2, maxB)
	}
}

func (a *ADSSource) request(version, nonce string, detail error) *discoveryv3.DiscoveryRequest {
	req := &discoveryv3.DiscoveryRequest{
		Node:          a.node(),
		TypeUrl:       wire.BundleTypeURL,
		ResourceNames: []string{wire.BundleResourceName},
		VersionInfo:   version,
		ResponseNonce: nonce,
	}
	if detail != nil {
		req.ErrorDetail = &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: detail.Error()}
	}
	return req
}

// node is Node with the TTL client feature added.
func (a *ADSSource) node() *corev3.Node {
	n := &corev3.Node{}
	if a.Node != nil {
		n = proto.Clone(a.Node).(*corev3.Node)
	}
	if !slices.Contains(n.ClientFeatures, ClientFeatureTTL) {
		n.ClientFeatures = append(n.ClientFeatures, ClientFeatureTTL)
	}
	return n
}

// watchdog ends a stream that stays silent too long.
type watchdog struct {
	timer *time.Timer
	fired atomic.Bool
}

func newWatchdog(d time.Duration, cancel func()) *watchdog {
	w := &watchdog{}
	w.timer = time.AfterFunc(d, func() { w.fired.Store(true); cancel() })
	return w
}

// reset re-arms the watchdog for d, or disarms it for d <= 0.
func (w *watchdog) reset(d time.Duration) {
	w.timer.Stop()
	if d > 0 && !w.fired.Load() {
		w.timer.Reset(d)
	}
}

// stream runs one ADS stream; progressed reports that a response arrived,
// reason why it ended (error, watchdog).
func (a *ADSSource) stream(ctx context.Context, apply ApplyFunc) (progressed bool, reason string, err error) {
	parent := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	first := a.FirstResponseTimeout
	if first <= 0 {
		first = 30 * time.Second
	}
	wd := newWatchdog(first, cancel)
	defer wd.timer.Stop()
	defer func() {
		if wd.fired.Load() && parent.Err() == nil {
			reason = "watchdog"
		}
	}()
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(a.Conn).StreamAggregatedResources(ctx)
	if err != nil {
		return false, "error", fmt.Errorf("open ADS stream: %w", err)
	}
	// No version: the control plane answers with its current one, which
	// confirms (or replaces) the serving bundle.
	if err := st.Send(a.request("", "", nil)); err != nil {
		return false, "error", fmt.Errorf("send ADS request: %w", err)
	}
	for {
		resp, err := st.Recv()
		if err != nil {
			if wd.fired.Load() {
				return progressed, "watchdog", fmt.Errorf("watchdog: the control plane was silent past the deadline: %w", err)
			}
			return progressed, "error", fmt.Errorf("receive ADS response: %w", err)
		}
		progressed = true
		if resp.GetTypeUrl() != wire.BundleTypeURL {
			// Not asked for; NACK so the server knows.
			wd.reset(first)
			if err := st.Send(a.request(a.acked, resp.GetNonce(), fmt.Errorf("unexpected type %q", resp.GetTypeUrl()))); err != nil {
				return progressed, "error", fmt.Errorf("send ADS NACK: %w", err)
			}
			continue
		}
		b, ttl, heartbeat, derr := decodeResponse(resp)
		// Past the TTL without a word, the stream is dead.
		wd.reset(ttl)
		version := resp.GetVersionInfo()
		if heartbeat {
			switch {
			case derr != nil:
			case version != "" && version == a.acked:
				a.confirm(ttl)
			case version != "" && version == a.rejectedVersion:
				// The version this server rejected is still the control
				// plane's: no confirmation, the same NACK.
				derr = a.rejectedErr
			default:
				derr = fmt.Errorf("heartbeat for version %q, which this server does not hold", version)
			}
			if err := st.Send(a.request(a.acked, resp.GetNonce(), derr)); err != nil {
				return progressed, "error", fmt.Errorf("send ADS ACK: %w", err)
			}
			continue
		}
		if version != "" && version == a.rejectedVersion {
			delay := a.RepeatNACKDelay
			if delay <= 0 {
				delay = time.Second
			}
			select {
			case <-ctx.Done():
				return progressed, "error", ctx.Err()
			case <-time.After(delay):
			}
			if err := st.Send(a.request(a.acked, resp.GetNonce(), a.rejectedErr)); err != nil {
				return progressed, "error", fmt.Errorf("send ADS NACK: %w", err)
			}
			continue
		}
		origin := "ads version " + version
		aerr := apply(Update{Bundle: b, Err: derr, Origin: origin})
		if aerr != nil {
			a.rejectedVersion, a.rejectedErr = version, aerr
			a.Log.Warn("NACK policy bundle", slog.String("xds_version", version), slog.String("error", aerr.Error()))
			if err := st.Send(a.request(a.acked, resp.GetNonce(), aerr)); err != nil {
				return progressed, "error", fmt.Errorf("send ADS NACK: %w", err)
			}
			continue
		}
		a.acked = version
		a.rejectedVersion, a.rejectedErr = "", nil
		a.confirm(ttl)
		if err := st.Send(a.request(a.acked, resp.GetNonce(), nil)); err != nil {
			return progressed, "error", fmt.Errorf("send ADS ACK: %w", err)
		}
	}
}

// decodeResponse finds the bundle resource in resp: bare, or wrapped in a
// discovery Resource with a TTL. A wrapper without a body is a heartbeat.
func decodeResponse(resp *discoveryv3.DiscoveryResponse) (b *policies.Bundle, ttl time.Duration, heartbeat bool, err error) {
	var found *corev3.TypedExtensionConfig
	seen := false
	for _, r := range resp.GetResources() {
		inner := r
		if r.GetTypeUrl() == resourceWrapperTypeURL {
			w := &discoveryv3.Resource{}
			if err := r.UnmarshalTo(w); err != nil {
				return nil, 0, false, fmt.Errorf("resource wrapper: %w", err)
			}
			if w.GetName() != wire.BundleResourceName {
				continue
			}
			if d := w.GetTtl(); d != nil && d.AsDuration() > 0 {
				ttl = d.AsDuration()
			}
			if w.GetResource() == nil {
				if seen {
					return nil, 0, false, fmt.Errorf("resource %q appears twice", wire.BundleResourceName)
				}
				seen, heartbeat = true, true
				continue
			}
			inner = w.GetResource()
		}
		tec := &corev3.TypedExtensionConfig{}
		if err := inner.UnmarshalTo(tec); err != nil {
			return nil, 0, false, fmt.Errorf("resource is not a TypedExtensionConfig: %w", err)
		}
		if tec.GetName() != wire.BundleResourceName {
			continue
		}
		if seen {
			return nil, 0, false, fmt.Errorf("resource %q appears twice", wire.BundleResourceName)
		}
		seen, found = true, tec
	}
	if heartbeat {
		return nil, ttl, true, nil
	}
	if found == nil {
		return nil, 0, false, fmt.Errorf("response has no resource %q", wire.BundleResourceName)
	}
	if found.GetTypedConfig() == nil {
		return nil, 0, false, errors.New("bundle resource has no typed_config")
	}
	sv := &wrapperspb.StringValue{}
	if err := found.GetTypedConfig().UnmarshalTo(sv); err != nil {
		return nil, 0, false, fmt.Errorf("bundle typed_config is not a StringValue: %w", err)
	}
	b, err = policies.DecodeBundle([]byte(sv.GetValue()))
	return b, ttl, false, err
}

// resourceWrapperTypeURL is the type of a resource sent with a TTL.
const resourceWrapperTypeURL = "type.googleapis.com/envoy.service.discovery.v3.Resource"
