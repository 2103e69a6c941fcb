// Package crdgen derives the CustomResourceDefinitions of meshguard's kinds
// (meshguard.dev/v1alpha1) from the policy model, so that the schema the API
// server checks and the types the control plane decodes into cannot drift.
// The generated files live in deploy/crds and the Helm chart's crds/; a test
// in deploy/ regenerates and compares them.
package crdgen

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/meshguard/meshguard/policies"
)

// Group and Version of meshguard's kinds.
const (
	Group   = "meshguard.dev"
	Version = "v1alpha1"
)

// Kind describes one meshguard kind.
type Kind struct {
	Kind       string
	Plural     string
	ShortNames []string
	Doc        string
	// Spec is the Go type of the object's spec; the schema is derived
	// from its fields and JSON tags.
	Spec reflect.Type
	// Columns are kubectl's extra printer columns (Age is added).
	Columns []apiextensionsv1.CustomResourceColumnDefinition
	// Enums closes string fields to a set of values, by "Type.Field" as
	// the fields of the policy model are in this package's own table.
	Enums map[string][]string
}

// Column is a string printer column at a JSON path.
func Column(name, path string) apiextensionsv1.CustomResourceColumnDefinition {
	return apiextensionsv1.CustomResourceColumnDefinition{Name: name, Type: "string", JSONPath: path}
}

func col(name, path string) apiextensionsv1.CustomResourceColumnDefinition { return Column(name, path) }

// Kinds lists meshguard's policy kinds in a stable order: the documents
// users write, which the control plane watches and compiles. The control
// plane's own state has kinds of its own (package controlplane/state/kube).
var Kinds = []Kind{
	{policies.KindIdentityPolicy, "identitypolicies", []string{"mgip"}, "Rules by SPIFFE ID pattern, JWT-SVID requirements and Envoy route names, with an enforcement mode per policy and rule.",
		reflect.TypeFor[policies.IdentityPolicySpec](), []apiextensionsv1.CustomResourceColumnDefinition{col("Action", ".spec.action"), col("Mode", ".spec.mode")}, nil},
	{policies.KindDefaultDeny, "defaultdenies", []string{"mgdd"}, "Deny every request to the selected workloads that no ALLOW policy admits.",
		reflect.TypeFor[policies.DefaultDenySpec](), []apiextensionsv1.CustomResourceColumnDefinition{col("Mode", ".spec.mode")}, nil},
	{policies.KindRouteOverride, "routeoverrides", []string{"mgro"}, "Per Envoy route tuning: mode, extra rules, unsafe-path opt-out, ext_authz disable, anomaly thresholds.",
		reflect.TypeFor[policies.RouteOverrideSpec](), []apiextensionsv1.CustomResourceColumnDefinition{col("Route", ".spec.route"), col("Mode", ".spec.mode")}, nil},
	{policies.KindTrafficBaseline, "trafficbaselines", []string{"mgtb"}, "The expected edges of the service graph: source identity, destination service, routes.",
		reflect.TypeFor[policies.TrafficBaselineSpec](), []apiextensionsv1.CustomResourceColumnDefinition{col("Mode", ".spec.mode")}, nil},
	{policies.KindAnomalyProfile, "anomalyprofiles", []string{"mgap"}, "Anomaly and lateral-movement detectors, thresholds and responses.",
		reflect.TypeFor[policies.AnomalyProfileSpec](), nil, nil},
	{policies.KindQuarantine, "quarantines", []string{"mgq"}, "An identity denied mesh-wide until it expires or is released.",
		reflect.TypeFor[policies.QuarantineSpec](), []apiextensionsv1.CustomResourceColumnDefinition{col("Identity", ".spec.identity"), col("Expires", ".spec.expiresAt")}, nil},
	{policies.KindMeshSettings, "meshsettings", []string{"mgms"}, "Mesh-wide settings: root namespace, trust domain, path normalization. At most one per mesh.",
		reflect.TypeFor[policies.MeshSettingsSpec](), nil, nil},
}

// Plurals maps kind to resource name.
func Plurals() map[string]string {
	m := make(map[string]string, len(Kinds))
	for _, k := range Kinds {
		m[k.Kind] = k.Plural
	}
	return m
}

// enums are the closed sets of values the model's string types hold.
var enums = map[reflect.Type][]string{
	reflect.TypeFor[policies.Mode](): {string(policies.ModeEnforce), string(policies.ModeDryRun), string(policies.ModeOff)},
}

// fieldEnums are closed sets of plain string fields, by struct and field.
var fieldEnums = map[string][]string{
	"IdentityPolicySpec.Action":           {"ALLOW", "DENY", "AUDIT"},
	"RouteOverrideSpec.Action":            {"ALLOW", "DENY", "AUDIT"},
	"TrafficBaselineSpec.Mode":            {policies.BaselineLearn, policies.BaselineShadow, policies.BaselineEnforce},
	"MeshSettingsSpec.PathNormalization":  {policies.NormalizationBase, policies.NormalizationMergeSlashes, policies.NormalizationDecodeAndMergeSlashes},
	"AnomalyOverrides.Response":           {"log", "count", "rate-limit", "block", "quarantine"},
	"AnomalyProfileSpec.Responses.values": {"log", "count", "rate-limit", "block", "quarantine"},
}

// CRDs returns the definitions of the policy kinds.
func CRDs() []*apiextensionsv1.CustomResourceDefinition {
	out := make([]*apiextensionsv1.CustomResourceDefinition, 0, len(Kinds))
	for _, k := range Kinds {
		out = append(out, CRD(k))
	}
	return out
}

// CRD returns the definition of one kind.
func CRD(k Kind) *apiextensionsv1.CustomResourceDefinition {
	g := generator{enums: k.Enums}
	spec := g.schemaOf(k.Spec, k.Spec.Name())
	spec.Description = k.Doc
	return &apiextensionsv1.CustomResourceDefinition{
		TypeMeta: metav1.TypeMeta{APIVersion: "apiextensions.k8s.io/v1", Kind: "CustomResourceDefinition"},
		ObjectMeta: metav1.ObjectMeta{
			Name:   k.Plural + "." + Group,
			Labels: map[string]string{"app.kubernetes.io/part-of": "meshguard"},
		},
		Spec: apiextensionsv1.CustomResourceDefinitionSpec{
			Group: Group,
			Names: apiextensionsv1.CustomResourceDefinitionNames{
				Kind:       k.Kind,
				ListKind:   k.Kind + "List",
				Plural:     k.Plural,
				Singular:   strings.ToLower(k.Kind),
				ShortNames: k.ShortNames,
				Categories: []string{"meshguard"},
			},
			Scope: apiextensionsv1.NamespaceScoped,
			Versions: []apiextensionsv1.CustomResourceDefinitionVersion{{
				Name:    Version,
				Served:  true,
				Storage: true,
				Schema: &apiextensionsv1.CustomResourceValidation{OpenAPIV3Schema: &apiextensionsv1.JSONSchemaProps{
					Type:        "object",
					Description: k.Doc,
					Required:    []string{"spec"},
					Properties: map[string]apiextensionsv1.JSONSchemaProps{
						"apiVersion": {Type: "string"},
						"kind":       {Type: "string"},
						"metadata":   {Type: "object"},
						"spec":       spec,
					},
				}},
				AdditionalPrinterColumns: append(slices.Clone(k.Columns), apiextensionsv1.CustomResourceColumnDefinition{
					Name: "Age", Type: "date", JSONPath: ".metadata.creationTimestamp",
				}),
			}},
		},
	}
}

// generator derives schemas; enums are the kind's own closed fields.
type generator struct {
	enums map[string][]string
}

var timeType = reflect.TypeFor[time.Time]()

// schemaOf maps a model type to a structural OpenAPI schema.
func (g generator) schemaOf(t reflect.Type, path string) apiextensionsv1.JSONSchemaProps {
	if t.Kind() == reflect.Pointer {
		return g.schemaOf(t.Elem(), path)
	}
	var s apiextensionsv1.JSONSchemaProps
	if t == timeType {
		// encoding/json writes RFC 3339; the API server checks it.
		return apiextensionsv1.JSONSchemaProps{Type: "string", Format: "date-time"}
	}
	switch t.Kind() {
	case reflect.String:
		s.Type = "string"
		for _, v := range enums[t] {
			s.Enum = append(s.Enum, apiextensionsv1.JSON{Raw: []byte(fmt.Sprintf("%q", v))})
		}
		for _, v := range fieldEnums[path] {
			s.Enum = append(s.Enum, apiextensionsv1.JSON{Raw: []byte(fmt.Sprintf("%q", v))})
		}
		for _, v := range g.enums[path] {
			s.Enum = append(s.Enum, apiextensionsv1.JSON{Raw: []byte(fmt.Sprintf("%q", v))})
		}
	case reflect.Bool:
		s.Type = "boolean"
	case reflect.Int, reflect.Int32, reflect.Int64, reflect.Uint32:
		s.Type = "integer"
	case reflect.Float64:
		s.Type = "number"
	case reflect.Slice:
		items := g.schemaOf(t.Elem(), path+".items")
		s.Type = "array"
		s.Items = &apiextensionsv1.JSONSchemaPropsOrArray{Schema: &items}
	case reflect.Map:
		vals := g.schemaOf(t.Elem(), path+".values")
		s.Type = "object"
		s.AdditionalProperties = &apiextensionsv1.JSONSchemaPropsOrBool{Allows: true, Schema: &vals}
	case reflect.Struct:
		s.Type = "object"
		s.Properties = map[string]apiextensionsv1.JSONSchemaProps{}
		for i := range t.NumField() {
			f := t.Field(i)
			tag := f.Tag.Get("json")
			name, opts, _ := strings.Cut(tag, ",")
			if name == "-" || !f.IsExported() {
				continue
			}
			if name == "" {
				name = f.Name
			}
			s.Properties[name] = g.schemaOf(f.Type, t.Name()+"."+f.Name)
			if !strings.Contains(opts, "omitempty") && !strings.Contains(opts, "omitzero") {
				s.Required = append(s.Required, name)
			}
		}
	default:
		panic(fmt.Sprintf("crdgen: %s: no schema for %s", path, t))
	}
	return s
}

// YAML writes a CRD as YAML with a header.
func YAML(c *apiextensionsv1.CustomResourceDefinition) ([]byte, error) {
	data, err := yaml.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("crdgen: %s: %w", c.Name, err)
	}
	// Drop the status and creationTimestamp the API server fills.
	var m map[string]any
	if err := yaml.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("crdgen: %s: %w", c.Name, err)
	}
	delete(m, "status")
	if meta, ok := m["metadata"].(map[string]any); ok {
		delete(meta, "creationTimestamp")
	}
	data, err = yaml.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("crdgen: %s: %w", c.Name, err)
	}
	return append([]byte("# Generated by internal/crdgen from the policy model and the control plane state types (go test ./deploy -update). Do not edit.\n"), data...), nil
}
