package envoyemu

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/anypb"
)

// The xDS types the emulator subscribes to, in the order it first asks for
// them: clusters and listeners by wildcard, then the route configurations
// and filter configurations (ECDS) that the listeners name.
var adsTypes = []string{resource.ClusterType, resource.ListenerType, resource.RouteType, resource.ExtensionConfigType}

// subscription is the state of one type on the ADS stream.
type subscription struct {
	wildcard bool
	names    []string
	// version is the last accepted version; nonce the last response's.
	version, nonce string
	// subscribed: a request for the type went out on this stream.
	subscribed bool
}

// adsClient is one aggregated (ADS) state-of-the-world stream, as Envoy
// keeps it: it asks for clusters and listeners by wildcard and for route
// and filter configurations by the names the listeners use, ACKs what
// handle accepts and NACKs (with the error, keeping the last accepted
// version) what it refuses.
type adsClient struct {
	conn *grpc.ClientConn
	node *corev3.Node
	log  *slog.Logger
	// handle applies one response; an error NACKs it.
	handle func(typeURL string, resources []*anypb.Any) error
	// names are the resources of typeURL (RDS, ECDS) that the current
	// configuration needs.
	names func(typeURL string) []string

	subs map[string]*subscription
}

func newADSClient(conn *grpc.ClientConn, node *corev3.Node, log *slog.Logger,
	handle func(string, []*anypb.Any) error, names func(string) []string) *adsClient {
	c := &adsClient{conn: conn, node: node, log: log, handle: handle, names: names, subs: map[string]*subscription{}}
	for _, t := range adsTypes {
		c.subs[t] = &subscription{wildcard: t == resource.ClusterType || t == resource.ListenerType}
	}
	return c
}

// run keeps a stream open until ctx ends, reconnecting after errors as
// Envoy does (with the versions it last accepted).
func (c *adsClient) run(ctx context.Context) {
	for {
		err := c.stream(ctx)
		if ctx.Err() != nil {
			return
		}
		c.log.Warn("ADS stream ended; reconnecting", "error", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func (c *adsClient) request(typeURL string, nack error) *discoveryv3.DiscoveryRequest {
	s := c.subs[typeURL]
	r := &discoveryv3.DiscoveryRequest{Node: c.node, TypeUrl: typeURL, ResourceNames: s.names,
		VersionInfo: s.version, ResponseNonce: s.nonce}
	if nack != nil {
		r.ErrorDetail = &status.Status{Code: int32(codes.InvalidArgument), Message: nack.Error()}
	}
	return r
}

func (c *adsClient) stream(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(c.conn).StreamAggregatedResources(ctx)
	if err != nil {
		return fmt.Errorf("envoyemu: ADS stream: %w", err)
	}
	for _, s := range c.subs {
		s.nonce, s.subscribed = "", false
	}
	if err := c.subscribe(st); err != nil {
		return err
	}
	for {
		resp, err := st.Recv()
		if err != nil {
			return fmt.Errorf("envoyemu: ADS receive: %w", err)
		}
		s, ok := c.subs[resp.GetTypeUrl()]
		if !ok {
			c.log.Warn("ADS response of a type not asked for", "type", resp.GetTypeUrl())
			continue
		}
		s.nonce = resp.GetNonce()
		herr := c.handle(resp.GetTypeUrl(), resp.GetResources())
		if herr != nil {
			c.log.Warn("xDS NACK", "type", resp.GetTypeUrl(), "version", resp.GetVersionInfo(), "error", herr)
		} else {
			s.version = resp.GetVersionInfo()
		}
		if err := st.Send(c.request(resp.GetTypeUrl(), herr)); err != nil {
			return fmt.Errorf("envoyemu: ADS send: %w", err)
		}
		if herr == nil {
			if err := c.subscribe(st); err != nil {
				return err
			}
		}
	}
}

// subscribe sends a request for every type whose wanted names changed, or
// that was not asked for yet on this stream.
func (c *adsClient) subscribe(st discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient) error {
	for _, t := range adsTypes {
		s := c.subs[t]
		if !s.wildcard {
			names := c.names(t)
			slices.Sort(names)
			// No names: nothing to ask for. (An empty list would ask for
			// every resource of the type, so a subscription that drops to
			// none is left as it was.)
			if len(names) == 0 || (s.subscribed && slices.Equal(names, s.names)) {
				continue
			}
			s.names = names
		} else if s.subscribed {
			continue
		}
		s.subscribed = true
		if err := st.Send(c.request(t, nil)); err != nil {
			return fmt.Errorf("envoyemu: ADS send: %w", err)
		}
	}
	return nil
}
