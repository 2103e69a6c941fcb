package envoyemu

import "context"

// StreamInfo is what Envoy exposes to an HTTP filter about the connection
// and route, as proxy-wasm properties.
type StreamInfo struct {
	// PeerURISAN is connection.uri_san_peer_certificate (the first URI SAN).
	PeerURISAN string
	// LocalURISAN is connection.uri_san_local_certificate.
	LocalURISAN string
	// MTLS is connection.mtls.
	MTLS bool
	// SourceAddress and DestinationAddress are "ip:port".
	SourceAddress      string
	DestinationAddress string
	// SNI is connection.requested_server_name.
	SNI string
	// RouteName is xds.route_name.
	RouteName string
	// ClusterName is xds.cluster_name: the matched route's cluster.
	ClusterName string
	// Direction is listener_direction: the listener's traffic_direction
	// (1 inbound, 2 outbound; 0, unspecified, sets no property).
	Direction int64
}

// Reply is an HTTP response inside the chain.
type Reply struct {
	Status  int
	Headers [][2]string // lowercase, without :status
	Body    []byte
}

// Next is the rest of the filter chain (the next filters, then the
// router): it receives the request as the filter left it.
type Next func(ctx context.Context, headers [][2]string, body []byte) Reply

// Filter is an HTTP filter of the chain that the emulator runs as a
// module: meshguard's wasm filter in the wazero proxy-wasm host implements
// it (WasmFilter).
type Filter interface {
	// Handle runs one request through the filter. headers are Envoy's
	// request header map: pseudo-headers first, lowercase names, one entry
	// per value. The filter calls next unless it answers locally; local
	// reports that it did. The reply is what the client receives, after
	// the filter's response callbacks.
	Handle(ctx context.Context, info StreamInfo, headers [][2]string, body []byte, next Next) (reply Reply, local bool, err error)
}
