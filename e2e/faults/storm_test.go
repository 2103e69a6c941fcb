//go:build faults

package faults

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/meshguard/meshguard/internal/testbed/netfault"
	"github.com/meshguard/meshguard/policies/wire"
)

// stormMesh is n plain-Envoy workloads, ten per namespace.
func stormMesh(n int) string {
	var b strings.Builder
	fmt.Fprintf(&b, `apiVersion: meshguard.dev/v1alpha1
kind: Mesh
metadata: {name: storm}
spec:
  trustDomain: %s
  authz: {address: 127.0.0.1, port: 9191, spiffeID: spiffe://%[1]s/ns/meshguard/sa/authz}
  controlPlane: {address: 127.0.0.1, port: 8443, spiffeID: spiffe://%[1]s/ns/meshguard/sa/controlplane}
  wasm: {file: /etc/meshguard/meshguard.wasm}
  workloads:
`, td)
	for i := range n {
		fmt.Fprintf(&b, `  - name: svc-%d
    namespace: ns-%d
    spiffeID: spiffe://%s/ns/ns-%d/sa/svc-%d
    labels: {app: svc-%d}
    inbound: [{name: http, port: 15006, appPort: 8080, routes: [{name: svc-%d-api, prefix: /api/}, {name: svc-%d-root, prefix: /}]}]
`, i, i/10, td, i/10, i, i, i, i)
	}
	return b.String()
}

// fleet is n Envoy-like ADS clients: listeners and clusters (wildcard),
// the inbound route and the filter's ECDS resource by name, every response
// ACKed; a broken stream is reopened after a short jittered pause, asking
// with the versions held, as Envoy does.
type fleet struct {
	mu       sync.Mutex
	ecds     []string // ECDS version each node holds
	fresh    []bool   // got an ECDS response on its current stream
	nacks    atomic.Int64
	reopened atomic.Int64
}

func (f *fleet) run(ctx context.Context, conn *grpc.ClientConn, i int) {
	node := &core.Node{Id: fmt.Sprintf("svc-%d-0", i), Cluster: fmt.Sprintf("svc-%d.ns-%d", i, i/10)}
	names := map[string][]string{
		resource.ListenerType:        nil,
		resource.ClusterType:         nil,
		resource.RouteType:           {"inbound_http"},
		resource.ExtensionConfigType: {wire.FilterConfigName},
	}
	held := map[string]string{}
	for ctx.Err() == nil {
		f.stream(ctx, conn, i, node, names, held)
		f.mu.Lock()
		f.fresh[i] = false
		f.mu.Unlock()
		f.reopened.Add(1)
		select {
		case <-ctx.Done():
		case <-time.After(time.Duration(50+rand.N(200)) * time.Millisecond):
		}
	}
}

func (f *fleet) stream(ctx context.Context, conn *grpc.ClientConn, i int, node *core.Node, names map[string][]string, held map[string]string) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return
	}
	for typ, ns := range names {
		if err := st.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: typ, ResourceNames: ns, VersionInfo: held[typ]}); err != nil {
			return
		}
	}
	for {
		resp, err := st.Recv()
		if err != nil {
			return
		}
		typ := resp.GetTypeUrl()
		ok := len(resp.GetResources()) > 0
		req := &discovery.DiscoveryRequest{TypeUrl: typ, ResourceNames: names[typ], ResponseNonce: resp.GetNonce(), VersionInfo: resp.GetVersionInfo()}
		if !ok {
			f.nacks.Add(1)
			req.VersionInfo = held[typ]
			req.ErrorDetail = nil
		} else {
			held[typ] = resp.GetVersionInfo()
		}
		if err := st.Send(req); err != nil {
			return
		}
		if ok && typ == resource.ExtensionConfigType {
			f.mu.Lock()
			f.ecds[i], f.fresh[i] = resp.GetVersionInfo(), true
			f.mu.Unlock()
		}
	}
}

// converged waits until every node holds one version other than not (and,
// when fresh, got it on its current stream); it returns that version.
func (f *fleet) converged(t *testing.T, not string, fresh bool, d time.Duration) (string, time.Duration, bool) {
	start := time.Now()
	for {
		f.mu.Lock()
		v, all := f.ecds[0], true
		for i := range f.ecds {
			if f.ecds[i] != v || v == "" || v == not || (fresh && !f.fresh[i]) {
				all = false
				break
			}
		}
		f.mu.Unlock()
		if all {
			return v, time.Since(start), true
		}
		if time.Since(start) > d {
			return "", time.Since(start), false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (f *fleet) behind(version string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, v := range f.ecds {
		if v != version {
			n++
		}
	}
	return n
}

// TestReconnectionStorm: a fleet of Envoy-like ADS clients loses every
// connection at once, reconnects while a policy change is published, and
// goes through a silent partition with another change; every node must
// converge on the newest version each time and the control plane must
// hold exactly the fleet's nodes and streams afterwards.
func TestReconnectionStorm(t *testing.T) {
	n := envInt("FAULTS_STORM_NODES", 1000)
	fx := newFixture(t)
	cp := startControlPlane(t, "storm-cp", fx, stormMesh(n))
	proxy, err := netfault.Listen(cp.xds)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { proxy.Close() })
	var conns []*grpc.ClientConn
	for range 16 {
		c, err := grpc.NewClient(proxy.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		conns = append(conns, c)
	}
	f := &fleet{ecds: make([]string, n), fresh: make([]bool, n)}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	for i := range n {
		wg.Add(1)
		go func() { defer wg.Done(); f.run(ctx, conns[i%len(conns)], i) }()
	}
	const limit = 90 * time.Second
	v1, initial, ok := f.converged(t, "", false, limit)
	if !ok {
		t.Fatalf("the fleet did not converge: %d of %d behind", f.behind(v1), n)
	}

	// 1. Every connection reset at once: the fleet reconnects together.
	reopened := f.reopened.Load()
	proxy.Reset()
	for f.reopened.Load() < reopened+int64(n) && ctx.Err() == nil {
		time.Sleep(5 * time.Millisecond) // every client saw its stream end
	}
	_, storm, okStorm := f.converged(t, "", true, limit)

	// 2. Reset again, and publish a change while the fleet reconnects.
	policy := filepath.Join(cp.policyDir, "policy.yaml")
	proxy.Reset()
	writeAtomic(t, policy, wholePolicy+"---\n"+probeDoc)
	v2, stormUpdate, okUpdate := f.converged(t, v1, false, limit)

	// 3. A silent partition while another change is published; then heal.
	proxy.Blackhole()
	writeAtomic(t, policy, wholePolicy)
	time.Sleep(3 * time.Second)
	held := n - f.behind(v2)
	proxy.Heal()
	v3, partition, okPartition := f.converged(t, v2, false, limit)

	time.Sleep(500 * time.Millisecond)
	nodes, _ := metric(cp.metrics, "meshguard_controlplane_xds_nodes")
	streams, _ := metric(cp.metrics, "meshguard_controlplane_xds_streams")
	nacks, _ := metric(cp.metrics, "meshguard_controlplane_xds_nacks_total")
	record(t, fmt.Sprintf("reconnection storm, %d ADS/ECDS nodes (control plane)", n),
		"every node converges on the newest version within 15s after a mass reset, a reset during a publish and a silent partition; the control plane holds exactly the fleet's nodes and streams after",
		okStorm && okUpdate && okPartition && max(storm, stormUpdate, partition) <= 15*time.Second && v3 != v2 && int(nodes) == n && int(streams) == n && nacks == 0 && f.nacks.Load() == 0,
		"initial convergence %s; after a mass reset %s; reset during a publish %s (%s → %s); partition 3s with a publish (%d nodes still on the old version at its end) then healed: %s (→ %s); control plane nodes %v, streams %v, NACKs %v; %d streams reopened",
		ms(initial), ms(storm), ms(stormUpdate), v1, v2, held, ms(partition), v3, nodes, streams, nacks, f.reopened.Load())
}
