// Package xds turns a mesh description and a policy bundle into xDS
// resources: per Envoy node an inbound mTLS listener (certificates over SDS
// from the SPIRE agent) whose HTTP filters are the meshguard wasm filter
// (configured through ECDS), ext_authz and the router; outbound listeners for
// the node's upstreams; the clusters for the authz server, the control plane
// and the SPIRE agent; for proxyless gRPC nodes, listeners with the RBAC HTTP
// filter compiled from the policies; and, for every node, the policy bundle
// resource that authz servers subscribe to.
//
// Every resource is checked with its generated ValidateAll and every snapshot
// with Consistent before anyone may publish it.
package xds

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cache "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshguard/meshguard/controlplane/mesh"
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

// Generator builds snapshots. It holds no mutable state and is safe for
// concurrent use.
type Generator struct {
	mesh *mesh.Mesh
}

// NewGenerator returns a generator for m.
func NewGenerator(m *mesh.Mesh) *Generator { return &Generator{mesh: m} }

// Mesh returns the mesh the generator serves.
func (g *Generator) Mesh() *mesh.Mesh { return g.mesh }

// EncodedBundle is a bundle prepared once for every node: its JSON and the
// bundle resource authz servers subscribe to.
type EncodedBundle struct {
	Bundle   *policies.Bundle
	JSON     []byte
	Resource *core.TypedExtensionConfig
}

// EncodeBundle prepares b for distribution.
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
	if err := res.ValidateAll(); err != nil {
		return nil, fmt.Errorf("xds: bundle resource: %w", err)
	}
	return &EncodedBundle{Bundle: b, JSON: data, Resource: res}, nil
}

// FilterConfig returns the wasm filter's configuration (wire.FilterConfig
// JSON) for w.
func (g *Generator) FilterConfig(w *mesh.ValidWorkload, eb *EncodedBundle) ([]byte, error) {
	p, err := g.filterConfigParts(w, eb)
	if err != nil {
		return nil, err
	}
	return p.appendTo(make([]byte, 0, p.len())), nil
}

// filterConfigParts is the filter configuration JSON in three pieces: the
// bundle JSON is shared by every workload and spliced in, never re-encoded.
type filterConfigParts struct {
	head, bundle, rest []byte
}

func (p filterConfigParts) len() int { return len(p.head) + len(p.bundle) + len(p.rest) }

func (p filterConfigParts) appendTo(b []byte) []byte {
	b = append(b, p.head...)
	b = append(b, p.bundle...)
	return append(b, p.rest...)
}

func (g *Generator) filterConfigParts(w *mesh.ValidWorkload, eb *EncodedBundle) (filterConfigParts, error) {
	fc := wire.FilterConfig{
		Workload: wire.Workload{
			ID:        w.SPIFFEID,
			Namespace: w.Namespace,
			Labels:    w.Labels,
			Service:   w.Service,
		},
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
	rest, err := json.Marshal(fc)
	if err != nil {
		return filterConfigParts{}, fmt.Errorf("xds: filter config of %s: %w", w.Key, err)
	}
	const head = `{"bundle":null`
	if !bytes.HasPrefix(rest, []byte(head)) {
		return filterConfigParts{}, fmt.Errorf("xds: filter config of %s: unexpected encoding", w.Key)
	}
	return filterConfigParts{head: []byte(`{"bundle":`), bundle: eb.JSON, rest: rest[len(head):]}, nil
}

// BundleOnly is the snapshot of a node that is not a workload of the mesh
// (an authz server): only the bundle resource.
func BundleOnly(eb *EncodedBundle) (*cache.Snapshot, error) {
	res := map[resource.Type][]types.Resource{
		resource.ExtensionConfigType: {eb.Resource},
	}
	return assemble(res, map[resource.Type]string{resource.ExtensionConfigType: eb.Bundle.Version})
}

// Snapshot returns the snapshot of a node serving w under bundle eb. It fails
// when any resource does not validate or the snapshot is not consistent.
func (g *Generator) Snapshot(w *mesh.ValidWorkload, eb *EncodedBundle) (*cache.Snapshot, error) {
	var (
		res map[resource.Type][]types.Resource
		err error
	)
	if w.Proxyless {
		res, err = g.grpcResources(w, eb.Bundle)
	} else {
		var fc filterConfigParts
		fc, err = g.filterConfigParts(w, eb)
		if err == nil {
			res, err = g.envoyResources(w, eb.Bundle, fc)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("xds: node %s: %w", w.Key, err)
	}
	res[resource.ExtensionConfigType] = append(res[resource.ExtensionConfigType], eb.Resource)
	versions := map[resource.Type]string{}
	for typ, items := range res {
		if typ == resource.ExtensionConfigType {
			// The filter config is derived from the bundle and the mesh;
			// hashing a large bundle per node would cost more than it says.
			versions[typ] = eb.Bundle.Version
			continue
		}
		v, err := hashResources(items)
		if err != nil {
			return nil, fmt.Errorf("xds: node %s: %w", w.Key, err)
		}
		versions[typ] = v
	}
	snap, err := assemble(res, versions)
	if err != nil {
		return nil, fmt.Errorf("xds: node %s: %w", w.Key, err)
	}
	return snap, nil
}

// assemble validates every resource and builds a consistent snapshot with a
// version per type.
func assemble(res map[resource.Type][]types.Resource, versions map[resource.Type]string) (*cache.Snapshot, error) {
	var errs []error
	for _, typ := range sortedKeys(res) {
		for _, r := range res[typ] {
			v, ok := r.(interface{ ValidateAll() error })
			if !ok {
				errs = append(errs, fmt.Errorf("%s %s: no validator", typ, cache.GetResourceName(r)))
				continue
			}
			if err := v.ValidateAll(); err != nil {
				errs = append(errs, fmt.Errorf("%s %s: %w", typ, cache.GetResourceName(r), err))
			}
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
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
