package xds

import (
	"os"
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	cache "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"
)

// TestShippedBootstrapFitsTheGeneratedConfig: what the generated listeners
// and clusters need from the node's bootstrap is in deploy/envoy: the
// static SDS cluster their TLS contexts name (Envoy accepts an xDS config
// source only on a statically defined cluster, so it cannot come over CDS)
// and a node.cluster in the <name>.<namespace> form by which the control
// plane picks the node's workload. And the control plane sends no cluster
// of that name.
func TestShippedBootstrapFitsTheGeneratedConfig(t *testing.T) {
	data, err := os.ReadFile("../../deploy/envoy/bootstrap.yaml")
	if err != nil {
		t.Fatal(err)
	}
	js, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		t.Fatal(err)
	}
	var b bootstrapv3.Bootstrap
	if err := protojson.Unmarshal(js, &b); err != nil {
		t.Fatal(err)
	}
	var sds *cluster.Cluster
	for _, c := range b.GetStaticResources().GetClusters() {
		if c.GetName() == ClusterSPIREAgent {
			sds = c
		}
	}
	if sds == nil || sds.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetPipe() == nil {
		t.Fatalf("the bootstrap has no static %s cluster on the SPIRE agent's socket", ClusterSPIREAgent)
	}
	if name, ns, ok := strings.Cut(b.GetNode().GetCluster(), "."); !ok || name == "" || ns == "" {
		t.Errorf("node.cluster %q is not <name>.<namespace>", b.GetNode().GetCluster())
	}

	m, eb := loadCase(t, "testdata/in/basic.yaml")
	snap, err := NewGenerator(m).Snapshot(m.Workloads[0], eb)
	if err != nil {
		t.Fatal(err)
	}
	if _, sent := snap.GetResources(resource.ClusterType)[ClusterSPIREAgent]; sent {
		t.Errorf("the control plane sends a %s cluster, which Envoy cannot use for SDS", ClusterSPIREAgent)
	}
	rendered := render(t, map[string]*cache.Snapshot{"node": snap})
	if !strings.Contains(string(rendered), `"cluster_name": "`+ClusterSPIREAgent+`"`) {
		t.Errorf("the generated TLS contexts do not take SDS from %s", ClusterSPIREAgent)
	}
}
