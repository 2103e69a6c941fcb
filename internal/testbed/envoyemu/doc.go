// Package envoyemu EMULATES the parts of an Envoy proxy that meshguard
// relies on, for the end-to-end suite, the acceptance tests and `meshguard
// demo` on machines without an Envoy binary. It is a test harness, not a
// proxy to deploy.
//
// A Proxy is configured the way Envoy is: it opens one ADS stream to the
// control plane as its node (node.id, node.cluster, node.metadata), asks for
// clusters and listeners by wildcard and for the route configurations (RDS)
// and filter configurations (ECDS) the listeners name, ACKs what it applies
// and NACKs, with the reason, what it cannot honour — an HTTP filter it does
// not implement, a route match other than prefix or path, a TLS context
// naming a secret it cannot serve — keeping the last accepted version, as
// Envoy keeps it. Nothing is configured by hand: listeners, routes and
// clusters are the control plane's, exactly as generated. A listener starts
// serving once its routes and filter configurations have arrived (Envoy
// warms it until then); an RDS or ECDS update applies to the next request.
//
// What it honours, for each request on a listener:
//
//   - the listener's address (optionally bound on loopback instead of
//     0.0.0.0: Config.BindHost) and its DownstreamTlsContext: mTLS with the
//     workload's X509-SVID, a client certificate that chains to the trust
//     bundle required;
//   - the HTTP connection manager: x-request-id, x-forwarded-proto,
//     x-forwarded-for with use_remote_address, x-forwarded-client-cert by
//     forward_client_cert_details and set_current_client_cert_details,
//     normalize_path (RFC 3986 dot segments, "%2e" read as "."), merge_slashes
//     and path_with_escaped_slashes_action (redirect or reject);
//   - the route configuration: virtual hosts by domain, routes by prefix or
//     exact path (case_sensitive), first match wins, the route's name is
//     xds.route_name; ext_authz's per-route config (disabled, or context
//     extensions merged over the virtual host's); validate_clusters;
//   - the HTTP filters in their configured order: meshguard's wasm filter
//     from its ECDS resource (the module the VM config names — a local file,
//     or a remote one fetched through its cluster with its sha256 checked —
//     run in the wazero proxy-wasm host, internal/testbed/wasmhost, with
//     Envoy's connection and node properties, including node.metadata maps
//     such as Istio's LABELS, the listener's traffic_direction as
//     listener_direction and the matched route's cluster as
//     xds.cluster_name; failure_policy), ext_authz (gRPC to its
//     cluster's endpoint with the cluster's TLS and SAN check, its timeout,
//     failure_mode_allow, status_on_error, include_peer_certificate,
//     bootstrap_metadata_labels_key → destination.labels from the node's
//     metadata; the CheckRequest filled as Envoy documents it), the router
//     (the route's cluster: its address, plain HTTP or TLS with the
//     workload's SVID and the cluster's SAN matchers);
//   - the filter's HTTP callouts to the clusters they name.
//
// What stands in for Envoy's machinery: secrets come from a go-spiffe
// source (the SPIFFE Workload API in the e2e suite, an in-process CA in the
// demo and tests) in place of SDS — the emulator checks that the secret
// names the configuration uses are ones SPIRE's SDS serves for that
// identity and NACKs others, where Envoy would wait for them. Not emulated:
// HTTP/2 multiplexing semantics, retries, load balancing over several
// endpoints, header size limits, Envoy's full path canonicalizer
// (backslashes, percent-encoding case). The real-Envoy suite in e2e/envoy
// covers those where an envoy binary exists.
package envoyemu
