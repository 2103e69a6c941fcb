package loader

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/wrapperspb"

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

	acked string // last ACKed version, sent on reconnect
	// rejected remembers the last NACKed version and why.
	rejectedVersion string
	rejectedErr     error
}

// Name implements Source.
func (*ADSSource) Name() string { return "ads" }

// Run implements Source.
func (a *ADSSource) Run(ctx context.Context, apply ApplyFunc) error {
	minB, maxB := a.MinBackoff, a.MaxBackoff
	if minB <= 0 {
		minB = 250 * time.Millisecond
	}
	if maxB < minB {
		maxB = max(30*time.Second, minB)
	}
	backoff := minB
	for {
		progressed, err := a.stream(ctx, apply)
		if ctx.Err() != nil {
			return nil
		}
		if progressed {
			backoff = minB
		}
		delay := backoff/2 + rand.N(backoff/2+1)
		a.Log.Warn("policy subscription interrupted; reconnecting",
			slog.String("error", err.Error()), slog.Duration("backoff", delay))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay):
		}
		backoff = min(backoff*2, maxB)
	}
}

func (a *ADSSource) request(nonce string, detail error) *discoveryv3.DiscoveryRequest {
	req := &discoveryv3.DiscoveryRequest{
		Node:          a.Node,
		TypeUrl:       wire.BundleTypeURL,
		ResourceNames: []string{wire.BundleResourceName},
		VersionInfo:   a.acked,
		ResponseNonce: nonce,
	}
	if detail != nil {
		req.ErrorDetail = &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: detail.Error()}
	}
	return req
}

// stream runs one ADS stream; progressed reports that a response arrived.
func (a *ADSSource) stream(ctx context.Context, apply ApplyFunc) (progressed bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(a.Conn).StreamAggregatedResources(ctx)
	if err != nil {
		return false, fmt.Errorf("open ADS stream: %w", err)
	}
	if err := st.Send(a.request("", nil)); err != nil {
		return false, fmt.Errorf("send ADS request: %w", err)
	}
	for {
		resp, err := st.Recv()
		if err != nil {
			return progressed, fmt.Errorf("receive ADS response: %w", err)
		}
		progressed = true
		if resp.GetTypeUrl() != wire.BundleTypeURL {
			// Not asked for; NACK so the server knows.
			if err := st.Send(a.request(resp.GetNonce(), fmt.Errorf("unexpected type %q", resp.GetTypeUrl()))); err != nil {
				return progressed, fmt.Errorf("send ADS NACK: %w", err)
			}
			continue
		}
		if v := resp.GetVersionInfo(); v != "" && v == a.rejectedVersion {
			delay := a.RepeatNACKDelay
			if delay <= 0 {
				delay = time.Second
			}
			select {
			case <-ctx.Done():
				return progressed, ctx.Err()
			case <-time.After(delay):
			}
			if err := st.Send(a.request(resp.GetNonce(), a.rejectedErr)); err != nil {
				return progressed, fmt.Errorf("send ADS NACK: %w", err)
			}
			continue
		}
		b, derr := decodeResponse(resp)
		origin := "ads version " + resp.GetVersionInfo()
		aerr := apply(Update{Bundle: b, Err: derr, Origin: origin})
		if aerr != nil {
			a.rejectedVersion, a.rejectedErr = resp.GetVersionInfo(), aerr
			a.Log.Warn("NACK policy bundle", slog.String("xds_version", resp.GetVersionInfo()), slog.String("error", aerr.Error()))
			if err := st.Send(a.request(resp.GetNonce(), aerr)); err != nil {
				return progressed, fmt.Errorf("send ADS NACK: %w", err)
			}
			continue
		}
		a.acked = resp.GetVersionInfo()
		if err := st.Send(a.request(resp.GetNonce(), nil)); err != nil {
			return progressed, fmt.Errorf("send ADS ACK: %w", err)
		}
	}
}

func decodeResponse(resp *discoveryv3.DiscoveryResponse) (*policies.Bundle, error) {
	var found *corev3.TypedExtensionConfig
	for _, r := range resp.GetResources() {
		tec := &corev3.TypedExtensionConfig{}
		if err := r.UnmarshalTo(tec); err != nil {
			return nil, fmt.Errorf("resource is not a TypedExtensionConfig: %w", err)
		}
		if tec.GetName() != wire.BundleResourceName {
			continue
		}
		if found != nil {
			return nil, fmt.Errorf("resource %q appears twice", wire.BundleResourceName)
		}
		found = tec
	}
	if found == nil {
		return nil, fmt.Errorf("response has no resource %q", wire.BundleResourceName)
	}
	if found.GetTypedConfig() == nil {
		return nil, errors.New("bundle resource has no typed_config")
	}
	sv := &wrapperspb.StringValue{}
	if err := found.GetTypedConfig().UnmarshalTo(sv); err != nil {
		return nil, fmt.Errorf("bundle typed_config is not a StringValue: %w", err)
	}
	return policies.DecodeBundle([]byte(sv.GetValue()))
}
