package filtercore

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/meshguard/meshguard/policies/wire"
	"github.com/meshguard/meshguard/wasm/internal/scenario"
)

// meshWide turns the scenario's configuration into the control plane's
// shape: no workload of its own, every workload of the mesh listed.
func meshWide(t *testing.T) []byte {
	t.Helper()
	var fc wire.FilterConfig
	if err := json.Unmarshal(scenario.Config(t, scenario.Options{}), &fc); err != nil {
		t.Fatal(err)
	}
	orders := fc.Workload
	fc.Workload = wire.Workload{}
	fc.Workloads = map[string]wire.Workload{
		"orders.shop": orders,
		"web.shop":    {ID: scenario.Web, Namespace: "shop", Labels: map[string]string{"app": "web"}},
	}
	data, err := json.Marshal(fc)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(data), `"workload":`) {
		t.Fatalf("empty workload encoded: %s", data)
	}
	return data
}

func TestConfigPicksTheNodesWorkload(t *testing.T) {
	data := meshWide(t)
	for _, tc := range []struct {
		name    string
		node    Node
		want    string // workload ID; "" means refused
		wantErr string
	}{
		{name: "by cluster", node: Node{Cluster: "orders.shop", ID: "orders-7f9c"}, want: scenario.Workload},
		{name: "cluster before id", node: Node{Cluster: "web.shop", ID: "orders.shop"}, want: scenario.Web},
		{name: "by id", node: Node{ID: "web.shop"}, want: scenario.Web},
		{name: "unknown node", node: Node{Cluster: "db.shop", ID: "db-1"}, wantErr: `none for node cluster "db.shop" or node id "db-1"`},
		{name: "no node", node: Node{}, wantErr: "workloads: none"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := ParseConfig(data, tc.node)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				if cfg != nil {
					t.Fatal("config returned with an error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cfg.workloadID != tc.want || cfg.target.ID.String() != tc.want {
				t.Fatalf("workload %q, want %q", cfg.workloadID, tc.want)
			}
		})
	}
}

func TestConfigNamedWorkloadWins(t *testing.T) {
	var fc wire.FilterConfig
	if err := json.Unmarshal(meshWide(t), &fc); err != nil {
		t.Fatal(err)
	}
	fc.Workload = fc.Workloads["web.shop"]
	data, err := json.Marshal(fc)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := ParseConfig(data, Node{Cluster: "orders.shop"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.workloadID != scenario.Web {
		t.Fatalf("workload %q, want the named %q", cfg.workloadID, scenario.Web)
	}
}

// TestPluginReadsTheNodeFromTheHost: the plugin asks the proxy for
// node.cluster and node.id when it is configured.
func TestPluginReadsTheNodeFromTheHost(t *testing.T) {
	h := newFakeHost()
	h.props = map[string][]byte{"node.cluster": []byte("orders.shop"), "node.id": []byte("orders-1")}
	p := NewVM(h).NewPlugin()
	if err := p.Configure(meshWide(t)); err != nil {
		t.Fatal(err)
	}
	if p.cfg.workloadID != scenario.Workload {
		t.Fatalf("workload %q", p.cfg.workloadID)
	}
	h.props["node.cluster"] = []byte("db.shop")
	if err := p.Configure(meshWide(t)); err == nil {
		t.Fatal("a node the configuration does not list was configured")
	}
	if p.cfg.workloadID != scenario.Workload {
		t.Fatal("the previous configuration was not kept")
	}
}
