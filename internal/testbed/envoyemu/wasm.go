package envoyemu

import (
	"context"
	"errors"
	"fmt"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/meshguard/meshguard/internal/testbed/wasmhost"
)

// NodeProperties are the properties Envoy gives a wasm filter about its
// node: node.id, node.cluster, and node.metadata.<key> for each metadata
// field that is a string (raw) or a struct of strings (a string map, as
// Envoy serializes a map-valued attribute: Istio's LABELS).
func NodeProperties(n *corev3.Node) wasmhost.Properties {
	props := wasmhost.Properties{}.SetString("node.id", n.GetId()).SetString("node.cluster", n.GetCluster())
	for k, v := range n.GetMetadata().GetFields() {
		switch kind := v.GetKind().(type) {
		case *structpb.Value_StringValue:
			props.SetString("node.metadata."+k, kind.StringValue)
		case *structpb.Value_StructValue:
			var m [][2]string
			for mk, mv := range kind.StructValue.GetFields() {
				if s, ok := mv.GetKind().(*structpb.Value_StringValue); ok {
					m = append(m, [2]string{mk, s.StringValue})
				}
			}
			props.SetMap("node.metadata."+k, m)
		}
	}
	return props
}

// WasmFilter runs a proxy-wasm module — meshguard's compiled filter — in the
// wazero proxy-wasm host (internal/testbed/wasmhost) as the HTTP filter before ext_authz,
// giving it the connection properties Envoy gives a wasm filter.
type WasmFilter struct {
	h *wasmhost.Host
}

// NewWasmFilter wraps a started host. The caller keeps ownership of h.
func NewWasmFilter(h *wasmhost.Host) *WasmFilter { return &WasmFilter{h: h} }

// Host returns the wrapped host (for Reconfigure, metrics and ticks).
func (f *WasmFilter) Host() *wasmhost.Host { return f.h }

// Handle implements Filter.
func (f *WasmFilter) Handle(ctx context.Context, info StreamInfo, headers [][2]string, body []byte, next Next) (Reply, bool, error) {
	props := wasmhost.Properties{}
	props.SetBool("connection.mtls", info.MTLS)
	if info.PeerURISAN != "" {
		props.SetString("connection.uri_san_peer_certificate", info.PeerURISAN)
	}
	if info.LocalURISAN != "" {
		props.SetString("connection.uri_san_local_certificate", info.LocalURISAN)
	}
	if info.SourceAddress != "" {
		props.SetString("source.address", info.SourceAddress)
	}
	if info.DestinationAddress != "" {
		props.SetString("destination.address", info.DestinationAddress)
	}
	if info.SNI != "" {
		props.SetString("connection.requested_server_name", info.SNI)
	}
	if info.RouteName != "" {
		props.SetString("xds.route_name", info.RouteName)
	}
	if info.ClusterName != "" {
		props.SetString("xds.cluster_name", info.ClusterName)
	}
	if info.Direction != 0 {
		props.SetInt("listener_direction", info.Direction)
	}
	res, err := f.h.HandleRequest(ctx, wasmhost.Request{Headers: headers, Body: body, Properties: props},
		func(ctx context.Context, ur wasmhost.UpstreamRequest) wasmhost.Response {
			r := next(ctx, ur.Headers, ur.Body)
			return wasmhost.Response{Status: r.Status, Headers: r.Headers, Body: r.Body}
		})
	if err != nil {
		return Reply{}, false, fmt.Errorf("envoyemu: wasm filter: %w", err)
	}
	if res.Reset {
		return Reply{}, false, errors.New("envoyemu: wasm filter reset the stream")
	}
	local := res.Local != nil && !res.Forwarded
	return Reply{Status: res.Response.Status, Headers: res.Response.Headers, Body: res.Response.Body}, local, nil
}
