package filtercore

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/wire"
	"github.com/meshguard/meshguard/wasm/internal/detect"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Defaults for the event reporter.
const (
	DefaultTickMillis    = 1000
	DefaultMaxBatch      = 100
	DefaultTimeoutMillis = 5000
	DefaultMaxEvents     = 1024
	maxEventsLimit       = 1 << 16
)

// Config is a parsed, validated and compiled plugin configuration.
// Immutable once built.
type Config struct {
	// snap and detect come from the bundle; both are nil while a filter
	// that fetches its bundle has none yet (every request is denied).
	snap        *policies.Snapshot
	detect      *detect.Config
	tuning      detect.Tuning
	target      policies.Target
	workloadID  string
	requireMTLS bool
	service     string
	// extAuthz: meshguard's ext_authz server follows the filter (JWT-SVID
	// checks are left to it, except on the routes it skips).
	extAuthz *wire.ExtAuthz
	// labelsWarning says why the target's labels are unknown, for the log.
	labelsWarning string
	// fetch is set when the bundle comes from the control plane.
	fetch *fetchConfig

	// The outbound side: which side each request is on, the workload's
	// own identity (the source of its outbound requests) and its key in
	// the detectors' table, the destination of each outbound cluster.
	direction  direction
	self       spiffeid.ID
	selfKey    uint64
	selfReason string // why self is unknown, for the log
	upstreams  map[string]string
	detectOut  *detect.Config
	// selfNS and selfSA are the node's namespace and service account, the
	// workload's identity in the bundle's trust domain when the
	// configuration names none.
	selfNS, selfSA string

	cluster, authority, path  string
	tickMillis, timeoutMillis uint32
	maxBatch, maxEvents       int
}

// fetchConfig is wire.BundleFetch with its defaults.
type fetchConfig struct {
	path                                    string
	waitMillis, retryMillis, maxRetryMillis uint32
	maxBytes                                int
}

// Version is the bundle version, empty while there is no bundle.
func (c *Config) Version() string {
	if c.snap == nil {
		return ""
	}
	return c.snap.Version()
}

// Node identifies the proxy the filter runs in: Envoy's node.cluster and
// node.id, which select the workload when the configuration lists every
// workload of a mesh rather than naming one, and the labels in the node's
// metadata (LABELS, where Istio's proxies carry their pod's labels).
type Node struct {
	Cluster, ID string
	// Labels is node.metadata.LABELS; LabelsErr says why it could not be
	// read (absent, or not a string map). Used with labelsFrom: node.
	Labels    map[string]string
	LabelsErr error
	// Namespace and ServiceAccount are node.metadata NAMESPACE and
	// SERVICE_ACCOUNT (Istio's proxies carry them): the workload's own
	// identity on the outbound side when the configuration names none.
	Namespace, ServiceAccount string
}

// direction is the side of the workload's traffic a request is on, or how
// to tell (wire.FilterConfig.Direction).
type direction uint8

const (
	dirInbound direction = iota
	dirOutbound
	dirListener
)

// Envoy's listener_direction values (envoy.config.core.v3.TrafficDirection).
const (
	listenerInbound  = 1
	listenerOutbound = 2
)

// defaultTrustDomain is Istio's, for an identity read from node metadata
// when the bundle's MeshSettings name none.
const defaultTrustDomain = "cluster.local"

// outbound detector state: one caller (the workload itself), few
// destinations.
var outTuning = detect.Tuning{Capacity: 4, EdgeCache: 256}

// ParseConfig decodes the plugin configuration strictly (unknown fields are
// errors), decodes and verifies the bundle, compiles it with the policy
// engine and compiles the detection settings. It reports every problem it
// can find at once. A configuration with bundleFetch has no bundle yet:
// the filter gets it from the control plane (see Plugin.Configure).
func ParseConfig(data []byte, node Node) (*Config, error) {
	fc, err := wire.DecodeFilterConfig(data)
	if err != nil {
		return nil, fmt.Errorf("plugin configuration: %w", err)
	}
	var errs []error
	c := &Config{requireMTLS: fc.RequireMTLS}
	var b *policies.Bundle
	hasBundle := len(fc.Bundle) != 0 && string(fc.Bundle) != "null"
	switch {
	case fc.BundleFetch != nil && hasBundle:
		return nil, errors.New("plugin configuration: bundle and bundleFetch exclude each other")
	case fc.BundleFetch != nil:
		if c.fetch, err = parseFetch(fc.BundleFetch, &fc.ControlPlane); err != nil {
			errs = append(errs, err)
		}
	case !hasBundle:
		return nil, errors.New("plugin configuration: bundle (or bundleFetch) is required")
	default:
		if b, err = policies.DecodeBundle(fc.Bundle); err != nil {
			return nil, fmt.Errorf("plugin configuration: %w", err)
		}
		if c.snap, err = policies.Compile(b); err != nil {
			return nil, fmt.Errorf("plugin configuration: %w", err)
		}
	}

	w, err := workloadOf(&fc, node)
	if err != nil {
		errs = append(errs, err)
	}
	c.target = policies.Target{Namespace: w.Namespace, Labels: w.Labels, Service: w.Service, Gateway: w.Gateway}
	if err := c.targetLabels(&w, node); err != nil {
		errs = append(errs, err)
	}
	if w.ID != "" {
		id, err := spiffeid.FromString(w.ID)
		if err != nil {
			errs = append(errs, fmt.Errorf("workload.id %q: %w", w.ID, err))
		}
		c.target.ID, c.workloadID = id, w.ID
	}
	c.service = w.Service
	c.extAuthz = w.ExtAuthz
	if err := c.outboundSide(&fc, &w, node); err != nil {
		errs = append(errs, err)
	}

	cp := fc.ControlPlane
	c.cluster, c.authority, c.path = cp.Cluster, cp.Authority, cp.Path
	if c.path == "" {
		c.path = wire.EventsPath
	}
	if c.authority == "" {
		c.authority = cp.Cluster
	}
	if c.path[0] != '/' {
		errs = append(errs, fmt.Errorf("controlPlane.path %q: must start with /", cp.Path))
	}
	c.tickMillis, c.timeoutMillis, c.maxBatch = cp.TickMillis, cp.TimeoutMilli, cp.MaxBatch
	if c.tickMillis == 0 {
		c.tickMillis = DefaultTickMillis
	}
	if c.timeoutMillis == 0 {
		c.timeoutMillis = DefaultTimeoutMillis
	}
	if c.maxBatch == 0 {
		c.maxBatch = DefaultMaxBatch
	}
	if c.maxBatch < 0 || c.maxBatch > maxEventsLimit {
		errs = append(errs, fmt.Errorf("controlPlane.maxBatch %d: want 1..%d", cp.MaxBatch, maxEventsLimit))
	}
	c.maxEvents = DefaultMaxEvents
	if d := fc.Detection; d != nil {
		c.tuning = detect.Tuning{Capacity: d.Capacity, EdgeCache: d.EdgeCache, Warmup: d.WarmupSeconds}
		if d.Capacity < 0 || d.EdgeCache < 0 || d.WarmupSeconds < 0 || d.MaxEvents < 0 {
			errs = append(errs, errors.New("detection: values must not be negative"))
		}
		if d.MaxEvents > maxEventsLimit {
			errs = append(errs, fmt.Errorf("detection.maxEvents %d: at most %d", d.MaxEvents, maxEventsLimit))
		}
		if d.MaxEvents > 0 {
			c.maxEvents = d.MaxEvents
		}
	}
	version := "(fetched)"
	if b != nil {
		version = b.Version
		dc, err := detect.NewConfig(&b.Set, c.snap, c.tuning)
		if err != nil {
			errs = append(errs, err)
		}
		c.detect = dc
		c.outboundBundle(b)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("plugin configuration (bundle %s): %w", version, err)
	}
	return c, nil
}

// parseFetch fills the defaults of bundleFetch and checks its bounds.
func parseFetch(bf *wire.BundleFetch, cp *wire.ControlPlane) (*fetchConfig, error) {
	f := &fetchConfig{path: bf.Path, waitMillis: bf.WaitMillis, retryMillis: bf.RetryMillis,
		maxRetryMillis: bf.MaxRetryMillis, maxBytes: bf.MaxBytes}
	if f.path == "" {
		f.path = wire.BundlePath
	}
	if f.waitMillis == 0 {
		f.waitMillis = wire.DefaultBundleWaitMillis
	}
	if f.retryMillis == 0 {
		f.retryMillis = wire.DefaultBundleRetryMillis
	}
	if f.maxRetryMillis == 0 {
		f.maxRetryMillis = max(wire.DefaultBundleMaxRetryMillis, f.retryMillis)
	}
	if f.maxBytes == 0 {
		f.maxBytes = wire.DefaultBundleMaxBytes
	}
	var errs []error
	if cp.Cluster == "" {
		errs = append(errs, errors.New("bundleFetch: controlPlane.cluster is required"))
	}
	if f.path[0] != '/' {
		errs = append(errs, fmt.Errorf("bundleFetch.path %q: must start with /", bf.Path))
	}
	for _, c := range f.path {
		if c == '?' || c == '#' || c <= ' ' || c == 0x7f {
			errs = append(errs, fmt.Errorf("bundleFetch.path %q: a path without query, fragment, spaces or controls", bf.Path))
			break
		}
	}
	if f.waitMillis > wire.MaxBundleWaitMillis {
		errs = append(errs, fmt.Errorf("bundleFetch.waitMillis %d: at most %d", bf.WaitMillis, wire.MaxBundleWaitMillis))
	}
	if f.maxRetryMillis < f.retryMillis {
		errs = append(errs, fmt.Errorf("bundleFetch.maxRetryMillis %d: below retryMillis %d", bf.MaxRetryMillis, f.retryMillis))
	}
	if f.maxBytes < 0 || f.maxBytes > wire.MaxBundleMaxBytes {
		errs = append(errs, fmt.Errorf("bundleFetch.maxBytes %d: want 1..%d", bf.MaxBytes, wire.MaxBundleMaxBytes))
	}
	return f, errors.Join(errs...)
}

// withBundle returns a copy of c that enforces b: its compiled snapshot and
// the detection settings compiled from it.
func (c *Config) withBundle(b *policies.Bundle) (*Config, error) {
	snap, err := policies.Compile(b)
	if err != nil {
		return nil, err
	}
	dc, err := detect.NewConfig(&b.Set, snap, c.tuning)
	if err != nil {
		return nil, fmt.Errorf("bundle %s: %w", b.Version, err)
	}
	n := *c
	n.snap, n.detect = snap, dc
	n.outboundBundle(b)
	return &n, nil
}

// outboundSide reads the direction and the destination of each outbound
// cluster, and where the workload's own identity — the source of its
// outbound requests — comes from: the configuration's workload.id, else
// its node (Istio's NAMESPACE and SERVICE_ACCOUNT metadata, in the
// bundle's trust domain: see outboundBundle).
func (c *Config) outboundSide(fc *wire.FilterConfig, w *wire.Workload, node Node) error {
	switch fc.Direction {
	case "", wire.DirectionInbound:
		c.direction = dirInbound
	case wire.DirectionOutbound:
		c.direction = dirOutbound
	case wire.DirectionListener:
		c.direction = dirListener
	default:
		return errors.New("direction " + strconv.Quote(fc.Direction) + ": want inbound, outbound, listener or empty")
	}
	var err error
	for cluster, d := range w.Upstreams {
		if cluster == "" || d == "" || strings.ContainsAny(d, "/: ") {
			err = errors.New("workload.upstreams: a cluster name and a destination (no '/', ':' or spaces) are required, got " + strconv.Quote(cluster) + ": " + strconv.Quote(d))
			continue
		}
		if c.upstreams == nil {
			c.upstreams = make(map[string]string, len(w.Upstreams))
		}
		c.upstreams[cluster] = strings.ToLower(d)
	}
	if w.ID == "" {
		c.selfNS, c.selfSA = node.Namespace, node.ServiceAccount
	}
	return err
}

// outboundBundle sets what the outbound side takes from the bundle: the
// workload's identity when it comes from the node (the trust domain is the
// bundle's MeshSettings', else Istio's default) and the detection settings
// of its own requests. Without an identity the configuration still serves
// the inbound side; outbound requests are denied (selfReason says why).
func (c *Config) outboundBundle(b *policies.Bundle) {
	if c.direction == dirInbound {
		return
	}
	if c.detect != nil {
		c.detectOut = c.detect.WithTuning(outTuning)
	}
	c.self, c.selfReason = spiffeid.ID{}, ""
	switch {
	case c.workloadID != "":
		c.self = c.target.ID // parsed (or refused) with the workload
	case c.selfNS != "" && c.selfSA != "":
		td := b.Set.Settings.TrustDomain
		if td == "" {
			td = defaultTrustDomain
		}
		id, err := spiffeid.FromString("spiffe://" + td + "/ns/" + c.selfNS + "/sa/" + c.selfSA)
		if err == nil && strings.Contains(c.selfNS+c.selfSA, "/") {
			err = errors.New("a namespace or service account with a '/'")
		}
		if err != nil {
			c.selfReason = "the workload's identity from node metadata is not a SPIFFE ID: " + err.Error()
		} else {
			c.self = id
		}
	default:
		c.selfReason = "no workload.id and no NAMESPACE and SERVICE_ACCOUNT in the node metadata"
	}
	if c.selfReason != "" {
		c.selfReason = "outbound requests are denied with " + string(policies.ReasonDeniedIdentity) + ": " + c.selfReason
	} else {
		c.selfKey = detect.IdentityKey(c.self, netip.Addr{})
	}
}

// GatewayNameLabel is the pod label by which Istio attaches targetRefs of
// kind Gateway to a gateway's proxies.
const GatewayNameLabel = "gateway.networking.k8s.io/gateway-name"

// targetLabels sets the target's labels from where the workload says they
// come from, and whether they are all of them (policies.Target.Resolved):
// the configuration's complete list, or the proxy's own node metadata. Node
// labels that cannot be read leave the target unresolved (selector-scoped
// policies then deny) rather than refuse the configuration: the rest of the
// policy still applies.
func (c *Config) targetLabels(w *wire.Workload, node Node) error {
	switch w.LabelsFrom {
	case "":
	case wire.LabelsFromConfig:
		c.target.Resolved = true
	case wire.LabelsFromNode:
		if len(w.Labels) > 0 {
			return errors.New("workload.labels: must be empty with labelsFrom node (the labels are the node's)")
		}
		if node.LabelsErr != nil {
			c.labelsWarning = "labels of the node unknown (" + node.LabelsErr.Error() + "): selector-scoped policies deny with " + string(policies.ReasonDeniedUnresolved)
			return nil
		}
		c.target.Labels, c.target.Resolved = node.Labels, true
		if c.target.Gateway == "" && c.target.Service == "" {
			c.target.Gateway = node.Labels[GatewayNameLabel]
		}
	default:
		return fmt.Errorf("workload.labelsFrom %q: want %q, %q or empty", w.LabelsFrom, wire.LabelsFromConfig, wire.LabelsFromNode)
	}
	return nil
}

// workloadOf is the workload the configuration names, or the one it lists
// for node: by cluster, then by ID, as the control plane picks a node's
// snapshot. A node the list does not hold has no workload to protect, and
// its filter must not run with a guessed one.
func workloadOf(fc *wire.FilterConfig, node Node) (wire.Workload, error) {
	if !isZeroWorkload(&fc.Workload) || fc.Workloads == nil {
		return fc.Workload, nil
	}
	if w, ok := fc.Workloads[node.Cluster]; ok && node.Cluster != "" {
		return w, nil
	}
	if w, ok := fc.Workloads[node.ID]; ok && node.ID != "" {
		return w, nil
	}
	return wire.Workload{}, fmt.Errorf("workloads: none for node cluster %q or node id %q", node.Cluster, node.ID)
}

func isZeroWorkload(w *wire.Workload) bool {
	return w.ID == "" && w.Namespace == "" && len(w.Labels) == 0 && w.Service == "" && w.Gateway == "" && len(w.Upstreams) == 0
}
