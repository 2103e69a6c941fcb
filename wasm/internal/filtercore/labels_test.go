package filtercore

import (
	"encoding/binary"
	"encoding/json"
	"strings"
	"testing"

	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/source"
	"github.com/meshguard/meshguard/policies/wire"
	"github.com/meshguard/meshguard/wasm/internal/scenario"
)

// versionsPolicy: a namespace-wide ALLOW of reads and a DENY of exports
// selected by version.
const versionsPolicy = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: read, namespace: shop}
spec:
  rules: [{to: [{operation: {methods: [GET]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: v2-no-export, namespace: shop}
spec:
  selector: {matchLabels: {app: orders, version: v2}}
  action: DENY
  rules: [{to: [{operation: {paths: [/export]}}]}]
`

func versionsConfig(t *testing.T, w wire.Workload) []byte {
	t.Helper()
	set, diags := source.Parse("p.yaml", []byte(versionsPolicy))
	if err := diags.Err(); err != nil {
		t.Fatal(err)
	}
	b, _, err := policies.NewBundle("v1", set)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := b.Encode()
	if err != nil {
		t.Fatal(err)
	}
	w.ID, w.Namespace, w.Service = scenario.Workload, "shop", "orders"
	data, err := json.Marshal(wire.FilterConfig{Bundle: raw, Workloads: map[string]wire.Workload{"orders-v2.shop": w}})
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// pairs is a string map property as Envoy serializes it (proxy-wasm map
// encoding, padded to 30 bytes).
func pairs(kv ...string) []byte {
	b := binary.LittleEndian.AppendUint32(nil, uint32(len(kv)/2))
	for i := 0; i < len(kv); i += 2 {
		b = binary.LittleEndian.AppendUint32(b, uint32(len(kv[i])))
		b = binary.LittleEndian.AppendUint32(b, uint32(len(kv[i+1])))
	}
	for _, s := range kv {
		b = append(append(b, s...), 0)
	}
	for len(b) < 30 {
		b = append(b, 0)
	}
	return b
}

// TestTargetLabelsFromTheirSource: the filter takes its workload's labels
// from the configuration when the control plane says they are complete, or
// from its own node metadata (Istio's LABELS); where neither gives them, a
// selector-scoped DENY is not skipped: the request is denied.
func TestTargetLabelsFromTheirSource(t *testing.T) {
	v2 := map[string]string{"app": "orders", "version": "v2"}
	tests := []struct {
		name      string
		w         wire.Workload
		nodeProps map[string][]byte
		// want is the decision for GET /export and GET /other.
		wantExport, wantOther policies.Reason
		wantErr               string
	}{
		{name: "control plane: complete labels", w: wire.Workload{Labels: v2, LabelsFrom: wire.LabelsFromConfig},
			wantExport: policies.ReasonDeniedByPolicy, wantOther: policies.ReasonAllowedByPolicy},
		{name: "control plane: workload without labels", w: wire.Workload{LabelsFrom: wire.LabelsFromConfig},
			wantExport: policies.ReasonAllowedByPolicy, wantOther: policies.ReasonAllowedByPolicy},
		{name: "Istio: node metadata labels", w: wire.Workload{LabelsFrom: wire.LabelsFromNode},
			nodeProps:  map[string][]byte{"node.metadata.LABELS": pairs("app", "orders", "version", "v2", "istio-locality", "r1")},
			wantExport: policies.ReasonDeniedByPolicy, wantOther: policies.ReasonAllowedByPolicy},
		{name: "Istio: node of another version", w: wire.Workload{LabelsFrom: wire.LabelsFromNode},
			nodeProps:  map[string][]byte{"node.metadata.LABELS": pairs("app", "orders", "version", "v1")},
			wantExport: policies.ReasonAllowedByPolicy, wantOther: policies.ReasonAllowedByPolicy},
		{name: "Istio: node without LABELS", w: wire.Workload{LabelsFrom: wire.LabelsFromNode},
			wantExport: policies.ReasonDeniedUnresolved, wantOther: policies.ReasonDeniedUnresolved},
		{name: "Istio: LABELS not a string map", w: wire.Workload{LabelsFrom: wire.LabelsFromNode},
			nodeProps:  map[string][]byte{"node.metadata.LABELS": []byte("\x0a\x05hello")},
			wantExport: policies.ReasonDeniedUnresolved, wantOther: policies.ReasonDeniedUnresolved},
		{name: "no source, no labels", w: wire.Workload{},
			wantExport: policies.ReasonDeniedUnresolved, wantOther: policies.ReasonDeniedUnresolved},
		{name: "labels with labelsFrom node", w: wire.Workload{Labels: v2, LabelsFrom: wire.LabelsFromNode}, wantErr: "must be empty"},
		{name: "unknown source", w: wire.Workload{LabelsFrom: "pod"}, wantErr: `labelsFrom "pod"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newFakeHost()
			h.props = map[string][]byte{"node.cluster": []byte("orders-v2.shop")}
			for k, v := range tt.nodeProps {
				h.props[k] = v
			}
			p := NewVM(h).NewPlugin()
			err := p.Configure(versionsConfig(t, tt.w))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for path, want := range map[string]policies.Reason{"/export": tt.wantExport, "/other": tt.wantOther} {
				s := streamFor(scenario.Request{Method: "GET", Path: path, Authority: "orders", Source: scenario.Web})
				var st StreamState
				cont := p.OnRequestHeaders(s, &st)
				got := policies.ReasonAllowedByPolicy
				if !cont {
					got = policies.Reason(headerOf(s.local.Headers, wire.HeaderReason))
				}
				if got != want {
					t.Errorf("GET %s: %s, want %s", path, got, want)
				}
			}
			if tt.wantExport == policies.ReasonDeniedUnresolved && tt.w.LabelsFrom == wire.LabelsFromNode &&
				!strings.Contains(strings.Join(h.logs, "\n"), "labels of the node unknown") {
				t.Errorf("no warning logged: %q", h.logs)
			}
		})
	}
}

func headerOf(hs [][2]string, name string) string {
	for _, kv := range hs {
		if kv[0] == name {
			return kv[1]
		}
	}
	return ""
}
