package envoyemu

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	wasmfilter "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/wasm/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshguard/meshguard/internal/testbed/wasmhost"
	"github.com/meshguard/meshguard/policies/wire"
)

// ECDSClient subscribes, as Envoy does for an HTTP filter whose config comes
// from the Extension Config Discovery Service, to the meshguard wasm
// filter's TypedExtensionConfig (by its name alone) over ADS (state of the
// world), and hands each new plugin configuration to Apply. A configuration
// Apply refuses is NACKed with its error and the previous one keeps
// serving, as in Envoy.
//
// The control plane's configuration lists every workload of the mesh; the
// filter picks its own by node.cluster and node.id, so the host running it
// must expose Node as Envoy does (NodeProperties).
type ECDSClient struct {
	Conn *grpc.ClientConn
	// Node identifies the sidecar; the control plane maps Node.Cluster
	// ("<name>.<namespace>") to the workload.
	Node *corev3.Node
	// Apply receives the plugin configuration (the filter's JSON).
	Apply func(pluginConfig []byte) error
	Log   *slog.Logger
}

// NodeProperties are the properties Envoy gives a wasm filter about its
// node (node.id, node.cluster), for wasmhost.Config.Properties.
func NodeProperties(n *corev3.Node) wasmhost.Properties {
	return wasmhost.Properties{}.SetString("node.id", n.GetId()).SetString("node.cluster", n.GetCluster())
}

func (c *ECDSClient) log() *slog.Logger {
	if c.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return c.Log
}

// Run subscribes until ctx ends, reconnecting after errors.
func (c *ECDSClient) Run(ctx context.Context) error {
	log := c.log()
	for {
		err := c.stream(ctx)
		if ctx.Err() != nil {
			return nil
		}
		log.Warn("ECDS stream ended; retrying", "error", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func (c *ECDSClient) request(version, nonce string, nack error) *discoveryv3.DiscoveryRequest {
	r := &discoveryv3.DiscoveryRequest{
		Node: c.Node, TypeUrl: wire.BundleTypeURL, ResourceNames: []string{wire.FilterConfigName},
		VersionInfo: version, ResponseNonce: nonce,
	}
	if nack != nil {
		r.ErrorDetail = &status.Status{Code: int32(codes.InvalidArgument), Message: nack.Error()}
	}
	return r
}

func (c *ECDSClient) stream(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(c.Conn).StreamAggregatedResources(ctx)
	if err != nil {
		return fmt.Errorf("envoyemu: ECDS stream: %w", err)
	}
	accepted := ""
	if err := st.Send(c.request("", "", nil)); err != nil {
		return fmt.Errorf("envoyemu: ECDS request: %w", err)
	}
	for {
		resp, err := st.Recv()
		if err != nil {
			return fmt.Errorf("envoyemu: ECDS receive: %w", err)
		}
		cfg, derr := pluginConfig(resp)
		if derr == nil {
			derr = c.Apply(cfg)
		}
		if derr != nil {
			c.log().Warn("ECDS NACK", "version", resp.GetVersionInfo(), "error", derr)
			if err := st.Send(c.request(accepted, resp.GetNonce(), derr)); err != nil {
				return err
			}
			continue
		}
		accepted = resp.GetVersionInfo()
		if err := st.Send(c.request(accepted, resp.GetNonce(), nil)); err != nil {
			return err
		}
	}
}

// pluginConfig extracts the wasm plugin configuration from an ECDS response.
func pluginConfig(resp *discoveryv3.DiscoveryResponse) ([]byte, error) {
	if resp.GetTypeUrl() != wire.BundleTypeURL {
		return nil, fmt.Errorf("unexpected type %q", resp.GetTypeUrl())
	}
	for _, any := range resp.GetResources() {
		var tec corev3.TypedExtensionConfig
		if err := any.UnmarshalTo(&tec); err != nil {
			return nil, fmt.Errorf("decode TypedExtensionConfig: %w", err)
		}
		if tec.GetName() != wire.FilterConfigName {
			continue
		}
		var w wasmfilter.Wasm
		if err := tec.GetTypedConfig().UnmarshalTo(&w); err != nil {
			return nil, fmt.Errorf("decode wasm filter config: %w", err)
		}
		var sv wrapperspb.StringValue
		if err := w.GetConfig().GetConfiguration().UnmarshalTo(&sv); err != nil {
			return nil, fmt.Errorf("decode plugin configuration: %w", err)
		}
		return []byte(sv.GetValue()), nil
	}
	return nil, errors.New("no " + wire.FilterConfigName + " resource in the response")
}
