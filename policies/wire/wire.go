// Package wire holds the formats that cross process boundaries between
// meshguard's parts and are not policy: the proxy-wasm plugin configuration
// that the control plane writes and the filter reads, and the detection and
// edge events that filters and authz servers report to the control plane.
// Like package policies it is pure Go and builds for GOOS=wasip1.
package wire

// Header names stamped by meshguard. Client-sent headers with the
// x-meshguard- prefix are always stripped before these are set.
const (
	HeaderPrefix        = "x-meshguard-"
	HeaderSourceID      = "x-meshguard-source-id"
	HeaderDecisionID    = "x-meshguard-decision-id"
	HeaderReason        = "x-meshguard-reason"
	HeaderRoute         = "x-meshguard-route"          // stamped by the wasm filter for ext_authz
	HeaderPolicyRef     = "x-meshguard-policy"         // stamped by the wasm filter for ext_authz
	HeaderBundleVersion = "x-meshguard-bundle-version" // stamped by the wasm filter for ext_authz
)

// Context extension keys the control plane sets on ExtAuthzPerRoute.
const (
	ContextRoute       = "meshguard.route"
	ContextPolicyScope = "meshguard.scope"
	ContextNamespace   = "meshguard.namespace"
	ContextWorkload    = "meshguard.workload"
	ContextService     = "meshguard.service"
	// ContextLabelPrefix prefixes one context extension per label of the
	// destination workload ("meshguard.label.app": "reviews"), for Istio
	// selectors.
	ContextLabelPrefix = "meshguard.label."
	// ContextResolved, "true", says that the route's meshguard.label.*,
	// meshguard.service and meshguard.namespace extensions are all the
	// control plane knows of the workload: no label extension then means
	// the workload has no labels (not that they are unknown).
	ContextResolved = "meshguard.resolved"
)

// xDS names of the policy bundle resource that authz servers subscribe to:
// a TypedExtensionConfig named BundleResourceName whose typed_config is a
// google.protobuf.StringValue holding the bundle JSON.
const (
	BundleTypeURL      = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
	BundleResourceName = "meshguard-policy-bundle"
	// FilterConfigName is the ECDS resource name of the wasm filter.
	FilterConfigName = "meshguard-wasm"
)

// EventsPath is where the control plane accepts EventBatch JSON (POST).
const EventsPath = "/v1/events"

// The bundle endpoint, where filters that fetch their bundle (BundleFetch)
// get it: GET BundlePath?wait=<milliseconds> with If-None-Match: "<hash of
// the bundle the filter holds>". The control plane answers 200 with the
// bundle JSON (policies.Bundle) and ETag "<its hash>" when it serves
// another bundle, holds the request up to the wait while it does not, and
// answers 304 when the wait ends unchanged; 503 while it has no bundle.
const (
	BundlePath = "/v1/bundle"
	// BundleWaitParam is the query parameter of the long poll, in
	// milliseconds; 0 or absent answers at once.
	BundleWaitParam = "wait"
)

// Defaults and bounds of BundleFetch.
const (
	DefaultBundleWaitMillis     = 20000
	MaxBundleWaitMillis         = 60000
	DefaultBundleRetryMillis    = 1000
	DefaultBundleMaxRetryMillis = 30000
	DefaultBundleMaxBytes       = 8 << 20
	MaxBundleMaxBytes           = 64 << 20
)

// FilterConfig is the proxy-wasm plugin configuration (Envoy's
// plugin_config.configuration, Istio's WasmPlugin pluginConfig), as JSON.
type FilterConfig struct {
	// Bundle is a policies.Bundle, JSON encoded. Exactly one of Bundle and
	// BundleFetch is set.
	Bundle RawJSON `json:"bundle,omitempty"`
	// BundleFetch makes the filter fetch its bundle from the control plane
	// through ControlPlane.Cluster and follow its changes, instead of
	// taking it from Bundle (Istio WasmPlugins: the plugin configuration
	// then never changes with the policy). Until the first bundle arrives
	// the filter denies every request (denied_no_policy_loaded); when a fetch
	// fails or brings a bundle it refuses, the last good bundle keeps
	// serving.
	BundleFetch *BundleFetch `json:"bundleFetch,omitempty"`
	// Workload is the workload the filter protects. When it is empty the
	// filter finds its workload in Workloads.
	Workload Workload `json:"workload,omitzero"`
	// Workloads maps the key of every workload of a mesh ("<name>.<namespace>")
	// to its description, so that one configuration serves every proxy of
	// the mesh: the filter looks up its Envoy node's cluster (property
	// node.cluster), then its node ID (node.id), as the control plane does
	// when it picks a node's snapshot. A node found in neither fails closed.
	// Ignored when Workload is set.
	Workloads map[string]Workload `json:"workloads,omitempty"`
	// Direction is the side of the workload's traffic the filter is on:
	// DirectionInbound (or empty), DirectionOutbound, or DirectionListener.
	Direction string `json:"direction,omitempty"`
	// RequireMTLS denies inbound requests that did not arrive over mTLS.
	RequireMTLS bool `json:"requireMtls,omitempty"`
	// ControlPlane is where events go, and where the bundle comes from
	// with BundleFetch.
	ControlPlane ControlPlane `json:"controlPlane,omitempty"`
	// Detection tunes the wasm filter's detector state; thresholds and
	// responses come from the bundle's AnomalyProfiles. Optional.
	Detection *Detection `json:"detection,omitempty"`
}

// Values of FilterConfig.Direction.
const (
	// DirectionInbound: every request is one into the workload (from the
	// peer of the connection); the default. Gateways run inbound.
	DirectionInbound = "inbound"
	// DirectionOutbound: every request is one the workload makes (the
	// source is the workload itself, the destination the route's cluster).
	DirectionOutbound = "outbound"
	// DirectionListener: each request's listener says, by its
	// traffic_direction (the property listener_direction: INBOUND or
	// OUTBOUND), which the configuration that generated the listener
	// sets; a listener that says neither is denied. The meshguard control
	// plane and Istio sidecars set it on every listener (Istio's gateway
	// listeners say OUTBOUND: gateways need DirectionInbound).
	DirectionListener = "listener"
)

// Detection bounds the wasm filter's per-VM detector state. Zero values
// mean the defaults documented in docs/wasm.md.
type Detection struct {
	// Capacity is the number of caller identities tracked per VM (default
	// 4096, least recently seen evicted).
	Capacity int `json:"capacity,omitempty"`
	// EdgeCache is the number of service-graph edges cached per VM (default 4096).
	EdgeCache int `json:"edgeCache,omitempty"`
	// WarmupSeconds of history a caller needs before the rate detector may
	// fire (default 10).
	WarmupSeconds int `json:"warmupSeconds,omitempty"`
	// MaxEvents buffered between flushes; more are dropped and counted
	// (default 1024).
	MaxEvents int `json:"maxEvents,omitempty"`
}

// Workload describes the protected workload for policy scoping.
type Workload struct {
	ID        string `json:"id,omitempty"` // SPIFFE ID
	Namespace string `json:"namespace,omitempty"`
	// Labels of the workload, for Istio selectors; see LabelsFrom.
	Labels map[string]string `json:"labels,omitempty"`
	// LabelsFrom says where the workload's labels come from and whether
	// they are all of them: LabelsFromConfig, LabelsFromNode, or empty. When
	// it is empty the labels are taken as given (the selector labels of an
	// older configuration), and a workload with none has unknown labels:
	// a selector-scoped policy of its namespace or of the mesh then denies
	// (denied_unresolved_target) instead of being skipped.
	LabelsFrom string `json:"labelsFrom,omitempty"`
	Service    string `json:"service,omitempty"`
	Gateway    string `json:"gateway,omitempty"`
	// ExtAuthz, when set, says that meshguard's ext_authz server checks
	// this workload's requests after the filter, with the same bundle and
	// verified JWT-SVIDs. The filter, which cannot verify a JWT-SVID, then
	// leaves the checks that need one to the server (policies.Attributes.
	// JWTDeferred) instead of deciding as if no request carried one. Unset:
	// the filter decides alone.
	ExtAuthz *ExtAuthz `json:"extAuthz,omitempty"`
	// Upstreams names the destination of each outbound Envoy cluster of
	// the workload, by cluster name, for the filter on the outbound side:
	// the service a request routed to that cluster goes to, written
	// "<service>.<namespace>" (or a host name). A cluster not listed is
	// read as Istio names outbound clusters (outbound|<port>|<subset>|<host>).
	Upstreams map[string]string `json:"upstreams,omitempty"`
}

// Values of Workload.LabelsFrom.
const (
	// LabelsFromConfig: Labels is the workload's whole label set, possibly
	// empty (the meshguard control plane writes it from the mesh
	// description).
	LabelsFromConfig = "config"
	// LabelsFromNode: the labels are the proxy's own node metadata LABELS
	// (the property node.metadata.LABELS), where Istio's sidecars and
	// gateways carry their pod's labels; Labels must be empty.
	LabelsFromNode = "node"
)

// BundleFetch says how the filter fetches its bundle from the control plane:
// a long poll on Path (GET, see BundlePath) through ControlPlane.Cluster
// with ControlPlane.Authority. Zero values mean the defaults.
type BundleFetch struct {
	// Path of the bundle endpoint; default BundlePath.
	Path string `json:"path,omitempty"`
	// WaitMillis is how long the control plane may hold a request while
	// the bundle does not change (default DefaultBundleWaitMillis, at most
	// MaxBundleWaitMillis). The callout's timeout is WaitMillis plus
	// ControlPlane.TimeoutMilli.
	WaitMillis uint32 `json:"waitMillis,omitempty"`
	// RetryMillis is the delay after a failed fetch, doubled on each
	// further failure up to MaxRetryMillis (defaults
	// DefaultBundleRetryMillis and DefaultBundleMaxRetryMillis).
	RetryMillis    uint32 `json:"retryMillis,omitempty"`
	MaxRetryMillis uint32 `json:"maxRetryMillis,omitempty"`
	// MaxBytes bounds the bundle's size; a larger one is refused (default
	// DefaultBundleMaxBytes, at most MaxBundleMaxBytes).
	MaxBytes int `json:"maxBytes,omitempty"`
}

// ExtAuthz describes the ext_authz check that follows the filter.
type ExtAuthz struct {
	// SkipRoutes are the Envoy routes on which ext_authz is disabled: there
	// the filter decides alone.
	SkipRoutes []string `json:"skipRoutes,omitempty"`
}

// Defers reports whether JWT-SVID checks on route are left to ext_authz.
func (e *ExtAuthz) Defers(route string) bool {
	if e == nil {
		return false
	}
	for _, r := range e.SkipRoutes {
		if r == route {
			return false
		}
	}
	return true
}

// ControlPlane tells the filter how to reach the control plane through an
// Envoy cluster: the event endpoint and, with FilterConfig.BundleFetch, the
// bundle endpoint.
type ControlPlane struct {
	Cluster      string `json:"cluster,omitempty"`
	Authority    string `json:"authority,omitempty"`
	Path         string `json:"path,omitempty"` // default EventsPath
	TickMillis   uint32 `json:"tickMillis,omitempty"`
	MaxBatch     int    `json:"maxBatch,omitempty"`
	TimeoutMilli uint32 `json:"timeoutMillis,omitempty"`
}

// Event kinds.
const (
	EventAnomaly  = "anomaly"
	EventEdge     = "edge"
	EventDecision = "decision"
)

// Event is one detection, observed edge or count of decisions.
//
// A decision event counts the requests to the reporting workload that the
// filter decided alike since its last report: Source is the caller ("" for
// one without a SPIFFE ID), Route the Envoy route, Response the outcome
// (allow, deny or dry-run: allowed, but enforced it would be denied), Count
// the requests and Detail the reason code, then a space and the deciding
// rule (Kind/namespace/name#rule) when there is one. Denials and dry-run
// outcomes are reported on the next tick, allowed requests every few
// seconds. Method and Path are those of the first request counted under the
// key since the last report (the path without its query): an example, not
// part of the key, so that a scan of many paths cannot multiply the events.
// Destination is empty: the reporter is the destination.
type Event struct {
	Kind        string  `json:"kind"`
	Detector    string  `json:"detector,omitempty"` // rate, errors, enumeration, egress, lateral
	Source      string  `json:"source,omitempty"`   // caller SPIFFE ID
	Destination string  `json:"destination,omitempty"`
	Route       string  `json:"route,omitempty"`
	Method      string  `json:"method,omitempty"`
	Path        string  `json:"path,omitempty"`     // decisions: an example request's path, without its query
	Response    string  `json:"response,omitempty"` // log, count, rate-limit, block, quarantine; decisions: allow, deny, dry-run
	Profile     string  `json:"profile,omitempty"`
	Score       float64 `json:"score,omitempty"`
	Count       uint64  `json:"count,omitempty"`
	UnixMillis  int64   `json:"unixMillis"`
	Detail      string  `json:"detail,omitempty"`
}

// EventBatch is what one reporter sends at a time.
type EventBatch struct {
	Reporter      string  `json:"reporter"` // SPIFFE ID or name of the reporting filter/server
	BundleVersion string  `json:"bundleVersion,omitempty"`
	Dropped       uint64  `json:"dropped,omitempty"` // events lost to a full buffer since the last batch
	Events        []Event `json:"events"`
}

// DenyBody is the JSON body of a local reply that denies a request.
type DenyBody struct {
	Reason        string `json:"reason"`
	Policy        string `json:"policy,omitempty"`
	Rule          string `json:"rule,omitempty"`
	BundleVersion string `json:"bundle_version,omitempty"`
}
