package istiogen

import (
	"bytes"
	"encoding/json"
	"fmt"

	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"
)

// ResourcesYAML writes the AuthorizationPolicies, EnvoyFilters and
// WasmPlugins as one multi-document YAML stream, ready for kubectl apply -f.
func (o *Output) ResourcesYAML() ([]byte, error) {
	var buf bytes.Buffer
	var objs []any
	for _, ap := range o.AuthorizationPolicies {
		objs = append(objs, ap)
	}
	for _, ef := range o.EnvoyFilters {
		objs = append(objs, ef)
	}
	for _, wp := range o.WasmPlugins {
		objs = append(objs, wp)
	}
	for i, obj := range objs {
		m, err := toMap(obj)
		if err != nil {
			return nil, err
		}
		if m["kind"] == "WasmPlugin" {
			// FAIL_CLOSE is the enum's zero value, which the protobuf JSON
			// encoding leaves out; write it so that a reviewer sees it.
			if spec, ok := m["spec"].(map[string]any); ok {
				if _, ok := spec["failStrategy"]; !ok {
					spec["failStrategy"] = "FAIL_CLOSE"
				}
			}
		}
		data, err := yaml.Marshal(m)
		if err != nil {
			return nil, fmt.Errorf("istiogen: yaml: %w", err)
		}
		if i > 0 {
			buf.WriteString("---\n")
		}
		buf.Write(data)
	}
	return buf.Bytes(), nil
}

// toMap encodes a Kubernetes object to a map without the fields the API
// server fills (status, creationTimestamp).
func toMap(obj any) (map[string]any, error) {
	data, err := json.Marshal(obj)
	if err != nil {
		return nil, fmt.Errorf("istiogen: encode: %w", err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("istiogen: encode: %w", err)
	}
	delete(m, "status")
	if meta, ok := m["metadata"].(map[string]any); ok {
		delete(meta, "creationTimestamp")
	}
	return m, nil
}

// MeshConfigYAML writes the extension provider as istiod Helm values
// (`meshConfig.extensionProviders`). Helm replaces lists rather than merging
// them: if the mesh already has extension providers, add this entry to them.
func (o *Output) MeshConfigYAML() ([]byte, error) {
	data, err := protojson.Marshal(o.MeshConfig)
	if err != nil {
		return nil, fmt.Errorf("istiogen: encode mesh config: %w", err)
	}
	var mc map[string]any
	if err := json.Unmarshal(data, &mc); err != nil {
		return nil, fmt.Errorf("istiogen: encode mesh config: %w", err)
	}
	// failOpen false is the zero value the encoding leaves out; write it so
	// that a reviewer sees the provider fails closed.
	if eps, ok := mc["extensionProviders"].([]any); ok {
		for _, ep := range eps {
			ep, _ := ep.(map[string]any)
			for _, k := range []string{"envoyExtAuthzGrpc", "envoyExtAuthzHttp"} {
				if p, ok := ep[k].(map[string]any); ok {
					p["failOpen"] = false
				}
			}
		}
	}
	out, err := yaml.Marshal(map[string]any{"meshConfig": mc})
	if err != nil {
		return nil, fmt.Errorf("istiogen: yaml: %w", err)
	}
	return out, nil
}
