// Package envoyemu EMULATES the parts of an Envoy sidecar that meshguard
// relies on, for the end-to-end suite and `meshguard demo` on machines
// without an Envoy binary. It is a test harness, not a proxy to deploy.
//
// What it does, in Envoy's order, for each request on an inbound listener:
//
//  1. terminates mTLS with the workload's X509-SVID (from any go-spiffe
//     source: the SPIFFE Workload API or an in-process CA), requiring a
//     client certificate that chains to the trust bundle (Envoy's
//     DownstreamTlsContext with require_client_certificate);
//  2. adds x-request-id and x-forwarded-proto as Envoy's connection manager
//     does, and picks the route by path prefix (the route's name is
//     xds.route_name and keys the per-route ext_authz context_extensions);
//  3. runs the HTTP filter that sits before ext_authz — meshguard's wasm
//     filter in the wazero proxy-wasm host — with Envoy's connection
//     properties, and honours its local replies and header rewrites;
//  4. fills an envoy.service.auth.v3.CheckRequest as Envoy's ext_authz filter
//     documents it (source/destination address and principal, the URL-encoded
//     PEM peer certificate when include_peer_certificate is set, lowercase
//     headers with pseudo-headers, duplicates comma-joined, path with its
//     query, context_extensions) and calls the authorization server over
//     gRPC with failure_mode_allow=false: a transport error or timeout is a
//     403, as in Envoy;
//  5. applies the OK response's header mutations and forwards to the
//     upstream application with x-forwarded-client-cert set, or returns the
//     denied response (status, headers, body);
//  6. passes the response status back through the filter (the wasm filter's
//     error-ratio detector reads it).
//
// What it does not do: HTTP/2 multiplexing semantics, retries, load
// balancing, header size limits, Envoy's path normalization, RDS/LDS/CDS.
// The real-Envoy suite in e2e/envoy covers those where an envoy binary exists.
package envoyemu
