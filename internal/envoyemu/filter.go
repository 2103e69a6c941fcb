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
}

// LocalReply is a response a filter sends instead of forwarding the request.
type LocalReply struct {
	Status  int
	Headers [][2]string
	Body    []byte
}

// Filter is an HTTP filter placed before ext_authz in the chain. meshguard's
// wasm filter running in the wazero host implements it (see WasmFilter).
type Filter interface {
	// NewStream starts one request's filter stream.
	NewStream(ctx context.Context, info StreamInfo) (FilterStream, error)
}

// FilterStream is one request through a Filter.
type FilterStream interface {
	// RequestHeaders runs the filter on the request headers (pseudo-headers
	// first, lowercase names, one entry per value). It returns the headers
	// to continue with, or a local reply.
	RequestHeaders(headers [][2]string) ([][2]string, *LocalReply, error)
	// ResponseHeaders runs the filter on the response headers (":status"
	// first).
	ResponseHeaders(headers [][2]string) ([][2]string, error)
	// Done ends the stream (proxy_on_log, proxy_on_done, proxy_on_delete).
	Done()
}
