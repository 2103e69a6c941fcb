package istio

import (
	"fmt"
	"slices"

	meshv1alpha1 "istio.io/api/mesh/v1alpha1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/meshguard/meshguard/policies"
)

// Istio's MeshConfig lives in the ConfigMap "istio" of istiod's namespace,
// as YAML under the key "mesh". Some of it changes how AuthorizationPolicies
// read: the trust domain and its aliases ("cluster.local/..." in a policy
// means all of them), the root namespace (mesh-wide policies), the path
// normalization, and the extension providers CUSTOM policies may name.
const (
	DefaultMeshConfigNamespace = policies.DefaultRootNamespace
	DefaultMeshConfigName      = "istio"
	meshConfigKey              = "mesh"
)

// meshConfig is the part of Istio's MeshConfig (istio.io/api
// mesh/v1alpha1) meshguard reads; other fields are ignored, so that a newer
// Istio's additions do not stop the watch.
type meshConfig struct {
	TrustDomain        string   `json:"trustDomain"`
	TrustDomainAliases []string `json:"trustDomainAliases"`
	RootNamespace      string   `json:"rootNamespace"`
	ExtensionProviders []struct {
		Name string `json:"name"`
	} `json:"extensionProviders"`
	PathNormalization *struct {
		Normalization string `json:"normalization"`
	} `json:"pathNormalization"`
}

// meshSettingsFromConfigMap reads what meshguard needs of Istio's
// MeshConfig. A value it cannot read is an error: settings change how every
// policy reads.
func meshSettingsFromConfigMap(cm *corev1.ConfigMap) (policies.MeshSettingsSpec, error) {
	var out policies.MeshSettingsSpec
	raw, ok := cm.Data[meshConfigKey]
	if !ok {
		return out, nil // Istio's defaults
	}
	var mc meshConfig
	if err := yaml.Unmarshal([]byte(raw), &mc); err != nil {
		return out, fmt.Errorf("MeshConfig %s/%s: %w", cm.Namespace, cm.Name, err)
	}
	out.TrustDomain = mc.TrustDomain
	out.TrustDomainAliases = mc.TrustDomainAliases
	out.RootNamespace = mc.RootNamespace
	for _, p := range mc.ExtensionProviders {
		out.ExtensionProviders = append(out.ExtensionProviders, p.Name)
	}
	if pn := mc.PathNormalization; pn != nil && pn.Normalization != "" {
		if _, ok := meshv1alpha1.MeshConfig_ProxyPathNormalization_NormalizationType_value[pn.Normalization]; !ok {
			return out, fmt.Errorf("MeshConfig %s/%s: pathNormalization %q is not one of Istio's", cm.Namespace, cm.Name, pn.Normalization)
		}
		switch pn.Normalization {
		case "DEFAULT", "NONE":
			// meshguard always normalizes (BASE by default), and denies the
			// paths backends may read differently whatever Istio does.
		default:
			out.PathNormalization = pn.Normalization
		}
	}
	return out, nil
}

// mergeMeshSettings combines Istio's MeshConfig with meshguard's
// MeshSettings object: each field comes from whichever sets it, and a field
// both set differently is an error (the watcher then pushes nothing): the
// mesh must not be read one way by Istio and another by meshguard.
func mergeMeshSettings(istio, mg policies.MeshSettingsSpec) (policies.MeshSettingsSpec, error) {
	out := mg
	var errs []string
	str := func(name string, dst *string, v string) {
		switch {
		case v == "":
		case *dst == "":
			*dst = v
		case *dst != v:
			errs = append(errs, fmt.Sprintf("%s: MeshConfig says %q, MeshSettings %q", name, v, *dst))
		}
	}
	list := func(name string, dst *[]string, v []string) {
		switch {
		case len(v) == 0:
		case len(*dst) == 0:
			*dst = slices.Clone(v)
		case !slices.Equal(*dst, v):
			errs = append(errs, fmt.Sprintf("%s: MeshConfig says %v, MeshSettings %v", name, v, *dst))
		}
	}
	str("trustDomain", &out.TrustDomain, istio.TrustDomain)
	str("rootNamespace", &out.RootNamespace, istio.RootNamespace)
	str("pathNormalization", &out.PathNormalization, istio.PathNormalization)
	list("trustDomainAliases", &out.TrustDomainAliases, istio.TrustDomainAliases)
	list("extensionProviders", &out.ExtensionProviders, istio.ExtensionProviders)
	if len(errs) > 0 {
		return out, fmt.Errorf("the MeshConfig of Istio and meshguard's MeshSettings disagree: %v", errs)
	}
	return out, nil
}
