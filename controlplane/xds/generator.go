// Package xds turns a mesh description and a policy bundle into xDS
// resources: per Envoy node an inbound mTLS listener (certificates over SDS
// from the SPIRE agent) whose HTTP filters are the meshguard wasm filter
// (configured through ECDS), ext_authz and the router; outbound listeners for
// the node's upstreams; the clusters for the authz server, the control plane
// and the SPIRE agent; for proxyless gRPC nodes, listeners with the RBAC HTTP
// filter compiled from the policies; and, for every node, the policy bundle
// resource that authz servers subscribe to.
//
// Every resource is validated in depth (internal/xdsvalidate: its generated
// ValidateAll, and that of every message packed in it) and every snapshot
// checked with Consistent before anyone may publish it.
package xds

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cache "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshguard/meshguard/controlplane/mesh"
	"github.com/meshguard/meshguard/internal/xdsvalidate"
	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/wire"
)

type anyProto = anypb.Any

const (
	connectTimeout   = 2 * time.Second
	wasmFetchTimeout = 30 * time.Second
)

// Event reporting defaults written into the filter configuration.
const (
	eventTickMillis    = 1000
	eventMaxBatch      = 256
	eventTimeoutMillis = 2000
)

// Generator builds snapshots. It is safe for concurrent use; its only
// state is what its validation remembers.
type Generator struct {
	mesh *mesh.Mesh
	// now is the clock that tells which quarantines are in force.
	now func() time.Time
	// valid remembers the packed configurations found valid: the nodes of
	// a fleet share most of them.
	valid *xdsvalidate.Memo
}

// memoSize bounds what a generator's validation remembers (about 2 MiB).
const memoSize = 1 << 15

// NewGenerator returns a generator for m.
func NewGenerator(m *mesh.Mesh) *Generator {
	return &Generator{mesh: m, now: time.Now, valid: xdsvalidate.NewMemo(memoSize)}
}

// Mesh returns the mesh the generator serves.
func (g *Generator) Mesh() *mesh.Mesh { return g.mesh }

// EncodedBundle is a bundle prepared once for every node: its JSON, the
// bundle resource authz servers subscribe to and, when a Generator encoded
// it, the wasm filter's ECDS resource for every Envoy node of the mesh.
// Every snapshot under the bundle holds these very resources, so a fleet
// costs one copy of the bundle, not one per node.
type EncodedBundle struct {
	Bundle   *policies.Bundle
	JSON     []byte
	Resource *core.TypedExtensionConfig
	// Filter is the wasm filter's configuration (ECDS), shared by every
	// Envoy node of the generator's mesh; nil from EncodeBundle.
	Filter *core.TypedExtensionConfig

	// snap is the bundle compiled by the engine, which the RBAC of
	// proxyless nodes translates. Read-only.
	snap *policies.Snapshot
}

// EncodeBundle prepares b for distribution to nodes that take the bundle
// resource only (authz servers). Generator.Encode also prepares the filter
// configuration.
func EncodeBundle(b *policies.Bundle) (*EncodedBundle, error) {
	if b == nil {
		return nil, errors.New("xds: no bundle")
	}
	data, err := b.Encode()
	if err != nil {
		return nil, fmt.Errorf("xds: encode bundle %s: %w", b.Version, err)
	}
	tc, err := marshalAny(wrapperspb.String(string(data)))
	if err != nil {
		return nil, err
	}
	res := &core.TypedExtensionConfig{Name: wire.BundleResourceName, TypedConfig: tc}
	if err := xdsvalidate.All(res); err != nil {
		return nil, fmt.Errorf("xds: bundle resource: %w", err)
	}
	snap, err := policies.Compile(b)
	if err != nil {
		return nil, fmt.Errorf("xds: %w", err)
	}
	return &EncodedBundle{Bundle: b, JSON: data, Resource: res, snap: snap}, nil
}

// Encode prepares b for every node of g's mesh: the bundle resource and,
// when the mesh has Envoy workloads, the filter configuration they share.
func (g *Generator) Encode(b *policies.Bundle) (*EncodedBundle, error) {
	eb, err := EncodeBundle(b)
	if err != nil {
		return nil, err
	}
	if !g.hasWasm() {
		return eb, nil
	}
	fc, err := g.FilterConfig(eb)
	if err != nil {
		return nil, err
	}
	if eb.Filter, err = g.wasmExtensionConfig(fc); err != nil {
		return nil, fmt.Errorf("xds: filter config: %w", err)
	}
	if err := g.valid.All(eb.Filter); err != nil {
		return nil, fmt.Errorf("xds: filter config: %w", err)
	}
	return eb, nil
}

// hasWasm reports whether an Envoy node of the mesh runs the wasm filter.
func (g *Generator) hasWasm() bool {
	for _, w := range g.mesh.Workloads {
		if !w.Proxyless && !w.DisableWasm {
			return true
		}
	}
	return false
}

// FilterConfig returns the wasm filter's configuration (wire.FilterConfig
// JSON) under eb. It is the same for every Envoy node of the mesh: it names
// no workload but lists them all, keyed as nodes are matched to workloads
// (mesh.Lookup), and each filter picks its own by its node's cluster or ID.
// The list is small next to the bundle, and one configuration for the
// fleet is what lets the control plane build and hold it once.
func (g *Generator) FilterConfig(eb *EncodedBundle) ([]byte, error) {
	fc := wire.FilterConfig{
		Bundle:    eb.JSON,
		Workloads: map[string]wire.Workload{},
		// One configuration for both sides of every node: each generated
		// listener says by its traffic_direction which side it is.
		Direction:   wire.DirectionListener,
		RequireMTLS: g.mesh.Wasm.RequireMTLS,
		ControlPlane: wire.ControlPlane{
			Cluster:      ClusterControlPlane,
			Authority:    g.mesh.ControlPlane.Address,
			Path:         wire.EventsPath,
			TickMillis:   eventTickMillis,
			MaxBatch:     eventMaxBatch,
			TimeoutMilli: uint32(g.mesh.ControlPlane.Timeout / time.Millisecond),
		},
	}
	for _, w := range g.mesh.Workloads {
		if w.Proxyless || w.DisableWasm {
			continue
		}
		fc.Workloads[w.Key] = wire.Workload{
			ID:        w.ID.String(),
			Namespace: w.Namespace,
			// The mesh description lists every label of the workload.
			Labels:     w.Labels,
			LabelsFrom: wire.LabelsFromConfig,
			Service:    w.Service,
			ExtAuthz:   extAuthzOf(w, eb.Bundle),
			Upstreams:  g.upstreamsOf(w),
		}
	}
	data, err := json.Marshal(fc)
	if err != nil {
		return nil, fmt.Errorf("xds: filter config: %w", err)
	}
	return data, nil
}

// BundleOnly is the snapshot of a node that is not a workload of the mesh
// (an authz server): only the bundle resource.
func BundleOnly(eb *EncodedBundle) (*cache.Snapshot, error) {
	res := map[resource.Type][]types.Resource{
		resource.ExtensionConfigType: {eb.Resource},
	}
	return assemble(res, map[resource.Type]string{resource.ExtensionConfigType: eb.Bundle.Version})
}

// Snapshot returns the snapshot of a node serving w under bundle eb, which
// g.Encode prepared. It fails when any resource does not validate or the
// snapshot is not consistent.
//
// The extension configs (bundle and filter configuration) are eb's own
// resources, validated once by Encode; only the node's own resources are
// built and validated here.
func (g *Generator) Snapshot(w *mesh.ValidWorkload, eb *EncodedBundle) (*cache.Snapshot, error) {
	var (
		res map[resource.Type][]types.Resource
		err error
	)
	if w.Proxyless {
		res, err = g.grpcResources(w, eb)
	} else if eb.Filter == nil && !w.DisableWasm {
		err = errors.New("bundle encoded without the filter configuration (use Generator.Encode)")
	} else {
		res, err = g.envoyResources(w, eb.Bundle)
	}
	if err != nil {
		return nil, fmt.Errorf("xds: node %s: %w", w.Key, err)
	}
	versions := map[resource.Type]string{}
	for typ, items := range res {
		v, err := hashResources(items)
		if err != nil {
			return nil, fmt.Errorf("xds: node %s: %w", w.Key, err)
		}
		versions[typ] = v
	}
	if err := validate(g.valid, res); err != nil {
		return nil, fmt.Errorf("xds: node %s: %w", w.Key, err)
	}
	ecds := []types.Resource{eb.Resource}
	if !w.Proxyless && !w.DisableWasm {
		ecds = append(ecds, eb.Filter)
	}
	// Both are derived from the bundle and the mesh, which a server
	// never changes: the bundle version names them.
	res[resource.ExtensionConfigType] = ecds
	versions[resource.ExtensionConfigType] = eb.Bundle.Version
	snap, err := build(res, versions)
	if err != nil {
		return nil, fmt.Errorf("xds: node %s: %w", w.Key, err)
	}
	return snap, nil
}

// assemble validates every resource and builds a consistent snapshot with a
// version per type.
func assemble(res map[resource.Type][]types.Resource, versions map[resource.Type]string) (*cache.Snapshot, error) {
	if err := validate(nil, res); err != nil {
		return nil, err
	}
	return build(res, versions)
}

// validate validates every resource in depth and reports every failure.
func validate(memo *xdsvalidate.Memo, res map[resource.Type][]types.Resource) error {
	var errs []error
	for _, typ := range slices.Sorted(maps.Keys(res)) {
		for _, r := range res[typ] {
			if err := memo.All(r); err != nil {
				errs = append(errs, fmt.Errorf("%s %s: %w", typ, cache.GetResourceName(r), err))
			}
		}
	}
	return errors.Join(errs...)
}

// build makes a snapshot of resources validated before and checks that it
// is consistent.
func build(res map[resource.Type][]types.Resource, versions map[resource.Type]string) (*cache.Snapshot, error) {
	snap := &cache.Snapshot{}
	for typ, items := range res {
		snap.Resources[cache.GetResponseType(typ)] = cache.NewResources(versions[typ], items)
	}
	if err := snap.Consistent(); err != nil {
		return nil, fmt.Errorf("inconsistent snapshot: %w", err)
	}
	return snap, nil
}

var deterministic = proto.MarshalOptions{Deterministic: true}

func marshalAny(m proto.Message) (*anypb.Any, error) {
	a := &anypb.Any{}
	if err := anypb.MarshalFrom(a, m, deterministic); err != nil {
		return nil, fmt.Errorf("marshal %T: %w", m, err)
	}
	return a, nil
}

// mustAny is for messages built from constants only.
func mustAny(m proto.Message) *anypb.Any {
	a, err := marshalAny(m)
	if err != nil {
		panic(err)
	}
	return a
}

func hashResources(items []types.Resource) (string, error) {
	h := sha256.New()
	for _, r := range items {
		data, err := deterministic.Marshal(r)
		if err != nil {
			return "", fmt.Errorf("hash %s: %w", cache.GetResourceName(r), err)
		}
		h.Write(data)
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}
