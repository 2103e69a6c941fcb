// Package istiogen generates what a user applies to wire meshguard into an
// Istio mesh: the meshConfig extension provider that points Istio's CUSTOM
// authorization at the meshguard authz server, CUSTOM AuthorizationPolicies
// that send the selected workloads' requests to it, EnvoyFilters that make
// Istio's ext_authz filter send the proxy's own pod labels with each check,
// and WasmPlugins that load the meshguard filter. By default the
// WasmPlugins' filters fetch the policy bundle from the control plane and
// follow its changes (wire.BundleFetch), so that the objects do not change
// with the policy; BundleFromEmbedded writes a copy of the bundle into the
// pluginConfig instead, for meshes without the control plane.
//
// Everything it writes fails closed: the provider has failOpen false, the
// WasmPlugins have failStrategy FAIL_CLOSE.
package istiogen

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	extensionsapi "istio.io/api/extensions/v1alpha1"
	meshapi "istio.io/api/mesh/v1alpha1"
	networkingapi "istio.io/api/networking/v1alpha3"
	securityapi "istio.io/api/security/v1beta1"
	typeapi "istio.io/api/type/v1beta1"
	extensionsv1alpha1 "istio.io/client-go/pkg/apis/extensions/v1alpha1"
	networkingv1alpha3 "istio.io/client-go/pkg/apis/networking/v1alpha3"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/wire"
)

// Defaults.
const (
	DefaultProviderName  = "meshguard"
	DefaultPort          = 9191
	DefaultTimeout       = 500 * time.Millisecond
	DefaultPluginName    = "meshguard"
	DefaultRootNamespace = policies.DefaultRootNamespace
	// ObjectName is the name of every generated AuthorizationPolicy and
	// WasmPlugin, suffixed with the target's name when it has one.
	ObjectName = "meshguard"
	// LabelManagedBy marks generated objects.
	LabelManagedBy = "app.kubernetes.io/managed-by"
	// MaxPluginConfigBytes bounds the pluginConfig of one WasmPlugin that
	// embeds the bundle: the object must fit in etcd's 1.5 MiB request
	// limit with room to spare. Larger bundles are fetched from the
	// control plane (BundleFromControlPlane).
	MaxPluginConfigBytes = 1 << 20
)

// Where a WasmPlugin's filter takes its policy bundle from (Wasm.BundleFrom).
const (
	// BundleFromControlPlane: the filter fetches the bundle from the
	// control plane through Wasm.ControlPlane.Cluster and follows its
	// changes (long poll of wire.BundlePath); the pluginConfig holds no
	// policy.
	BundleFromControlPlane = "controlplane"
	// BundleFromEmbedded: the pluginConfig holds a copy of the bundle
	// taken at generation time; a policy change needs the objects
	// generated and applied again.
	BundleFromEmbedded = "embedded"
)

// Provider modes.
const (
	ModeGRPC = "grpc" // envoyExtAuthzGrpc: the whole request header map is sent
	ModeHTTP = "http" // envoyExtAuthzHttp: only IncludeRequestHeadersInCheck are sent
)

// Provider describes the meshguard authz server as Istio reaches it.
type Provider struct {
	// Name of the extension provider; default DefaultProviderName.
	Name string
	// Service is the authz server's host, as Istio knows it
	// (meshguard-authz.meshguard.svc.cluster.local). Required.
	Service string
	// Port; default DefaultPort.
	Port uint32
	// Timeout of one check; default DefaultTimeout.
	Timeout time.Duration
	// Mode is ModeGRPC (default) or ModeHTTP.
	Mode string
	// PathPrefix of the HTTP check (ModeHTTP only).
	PathPrefix string
	// IncludeRequestHeadersInCheck (ModeHTTP only); default
	// DefaultCheckHeaders.
	IncludeRequestHeadersInCheck []string
	// HeadersToUpstreamOnAllow and HeadersToDownstreamOnDeny (ModeHTTP
	// only); defaults cover meshguard's own headers.
	HeadersToUpstreamOnAllow  []string
	HeadersToDownstreamOnDeny []string
}

// DefaultCheckHeaders are the request headers an HTTP-mode check needs: the
// JWT-SVID, the client certificate Envoy forwards and the route and policy
// the wasm filter stamped.
var DefaultCheckHeaders = []string{
	"authorization",
	"x-forwarded-client-cert",
	wire.HeaderRoute,
	wire.HeaderPolicyRef,
	wire.HeaderBundleVersion,
}

// Wasm describes the filter module and how it reports.
type Wasm struct {
	// URL of the module: oci://, https:// or file://. Required.
	URL string
	// SHA256 of the module, hex; recommended for https:// URLs.
	SHA256 string
	// ImagePullPolicy: "", IfNotPresent or Always.
	ImagePullPolicy string
	// ImagePullSecret for a private registry.
	ImagePullSecret string
	// PluginName; default DefaultPluginName.
	PluginName string
	// Priority among AUTHZ-phase plugins; nil leaves Istio's default.
	Priority *int32
	// RequireMTLS makes the filter deny requests that did not arrive over
	// mTLS.
	RequireMTLS bool
	// ControlPlane is where the filter sends events and, with
	// BundleFromControlPlane, fetches its bundle.
	ControlPlane wire.ControlPlane
	// BundleFrom is BundleFromControlPlane (default) or
	// BundleFromEmbedded.
	BundleFrom string
}

// Target is one scope to wire: a namespace, or the workloads selected by
// labels in it. A target in the root namespace with no selector covers the
// whole mesh.
type Target struct {
	Namespace string
	// Name distinguishes several targets in one namespace; it becomes the
	// suffix of the generated objects' names.
	Name string
	// Selector selects workloads by label; empty: the whole namespace.
	Selector map[string]string
	// Workload is given to the filter (its SPIFFE ID, service, gateway);
	// its Namespace and Labels are filled from the target.
	Workload wire.Workload
}

// Config is the input of Generate.
type Config struct {
	// Bundle is embedded in the WasmPlugins with BundleFromEmbedded, and
	// gives the default targets; it may be nil when the filters fetch
	// their bundle and Targets are given.
	Bundle   *policies.Bundle
	Provider Provider
	Wasm     Wasm
	// Targets to wire; empty: DefaultTargets(Bundle, RootNamespace).
	Targets []Target
	// RootNamespace is Istio's root namespace; default the bundle's
	// settings, then DefaultRootNamespace.
	RootNamespace string
	// Labels are added to every generated object.
	Labels map[string]string
}

// Output is what Generate produces.
type Output struct {
	// MeshConfig holds only the extension provider; merge it into Istio's
	// mesh config (MeshConfigYAML writes it as istiod Helm values).
	MeshConfig            *meshapi.MeshConfig
	AuthorizationPolicies []*securityv1.AuthorizationPolicy
	// EnvoyFilters set bootstrap_metadata_labels_key on the ext_authz
	// filter Istio generates for the CUSTOM policies, one per target.
	EnvoyFilters []*networkingv1alpha3.EnvoyFilter
	WasmPlugins  []*extensionsv1alpha1.WasmPlugin
}

// NodeLabelsKey is the key of an Istio proxy's node metadata that holds its
// pod's labels.
const NodeLabelsKey = "LABELS"

// Generate validates cfg, reporting every problem at once, and builds the
// objects.
func Generate(cfg Config) (*Output, error) {
	c, err := cfg.normalize()
	if err != nil {
		return nil, err
	}
	var bundleJSON []byte
	if c.Wasm.BundleFrom == BundleFromEmbedded {
		if bundleJSON, err = c.Bundle.Encode(); err != nil {
			return nil, fmt.Errorf("istiogen: encode bundle: %w", err)
		}
	}
	out := &Output{MeshConfig: &meshapi.MeshConfig{ExtensionProviders: []*meshapi.MeshConfig_ExtensionProvider{provider(&c.Provider)}}}
	for _, t := range c.Targets {
		meta := metav1.ObjectMeta{Name: objectName(t), Namespace: t.Namespace, Labels: c.Labels}
		var sel *typeapi.WorkloadSelector
		if len(t.Selector) > 0 {
			sel = &typeapi.WorkloadSelector{MatchLabels: maps.Clone(t.Selector)}
		}
		out.AuthorizationPolicies = append(out.AuthorizationPolicies, &securityv1.AuthorizationPolicy{
			TypeMeta:   metav1.TypeMeta{APIVersion: "security.istio.io/v1", Kind: "AuthorizationPolicy"},
			ObjectMeta: *meta.DeepCopy(),
			Spec: securityapi.AuthorizationPolicy{
				Selector: sel,
				Action:   securityapi.AuthorizationPolicy_CUSTOM,
				ActionDetail: &securityapi.AuthorizationPolicy_Provider{
					Provider: &securityapi.AuthorizationPolicy_ExtensionProvider{Name: c.Provider.Name},
				},
				// One empty rule matches every request: all of them are
				// checked, and the authz server decides.
				Rules: []*securityapi.Rule{{}},
			},
		})
		ef, err := labelsFilter(meta, t)
		if err != nil {
			return nil, err
		}
		out.EnvoyFilters = append(out.EnvoyFilters, ef)
		pc, err := pluginConfig(bundleJSON, &c.Wasm, t)
		if err != nil {
			return nil, err
		}
		wp := &extensionsv1alpha1.WasmPlugin{
			TypeMeta:   metav1.TypeMeta{APIVersion: "extensions.istio.io/v1alpha1", Kind: "WasmPlugin"},
			ObjectMeta: *meta.DeepCopy(),
			Spec: extensionsapi.WasmPlugin{
				Selector:        sel,
				Url:             c.Wasm.URL,
				Sha256:          c.Wasm.SHA256,
				ImagePullPolicy: extensionsapi.PullPolicy(extensionsapi.PullPolicy_value[cmp.Or(c.Wasm.ImagePullPolicy, "UNSPECIFIED_POLICY")]),
				ImagePullSecret: c.Wasm.ImagePullSecret,
				PluginConfig:    pc,
				PluginName:      c.Wasm.PluginName,
				Phase:           extensionsapi.PluginPhase_AUTHZ,
				FailStrategy:    extensionsapi.FailStrategy_FAIL_CLOSE,
				Type:            extensionsapi.PluginType_HTTP,
			},
		}
		if c.Wasm.Priority != nil {
			wp.Spec.Priority = wrapperspb.Int32(*c.Wasm.Priority)
		}
		if t.Workload.Gateway == "" {
			// Sidecars: both sides of the workload's traffic. Inbound
			// (SERVER), the workload is the destination the policies
			// speak of; outbound (CLIENT), it is the source, stopped by
			// its own sidecar when quarantined or anomalous. The plugin
			// configuration asks each listener which side it is
			// (direction "listener": Istio sets traffic_direction on a
			// sidecar's listeners).
			wp.Spec.Match = []*extensionsapi.WasmPlugin_TrafficSelector{
				{Mode: typeapi.WorkloadMode_SERVER},
				{Mode: typeapi.WorkloadMode_CLIENT},
			}
		}
		out.WasmPlugins = append(out.WasmPlugins, wp)
	}
	return out, nil
}

// labelsFilter is the EnvoyFilter that makes Istio's ext_authz filter (the
// one the CUSTOM policy adds to the target's proxies) fill
// destination.labels from the proxy's node metadata LABELS: the pod labels
// Istio's injector writes into the proxy's bootstrap. Istio's own filter
// sends no labels and no context extensions, so without it the authz server
// cannot tell which selector-scoped policies apply and denies
// (denied_unresolved_target) where one may.
func labelsFilter(meta metav1.ObjectMeta, t Target) (*networkingv1alpha3.EnvoyFilter, error) {
	patch, err := structpb.NewStruct(map[string]any{
		"typed_config": map[string]any{
			"@type":                         "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
			"bootstrap_metadata_labels_key": NodeLabelsKey,
		},
	})
	if err != nil {
		return nil, fmt.Errorf("istiogen: envoy filter patch: %w", err)
	}
	context := networkingapi.EnvoyFilter_SIDECAR_INBOUND
	if t.Workload.Gateway != "" {
		context = networkingapi.EnvoyFilter_GATEWAY
	}
	var sel *networkingapi.WorkloadSelector
	if len(t.Selector) > 0 {
		sel = &networkingapi.WorkloadSelector{Labels: maps.Clone(t.Selector)}
	}
	return &networkingv1alpha3.EnvoyFilter{
		TypeMeta:   metav1.TypeMeta{APIVersion: "networking.istio.io/v1alpha3", Kind: "EnvoyFilter"},
		ObjectMeta: *meta.DeepCopy(),
		Spec: networkingapi.EnvoyFilter{
			WorkloadSelector: sel,
			ConfigPatches: []*networkingapi.EnvoyFilter_EnvoyConfigObjectPatch{{
				ApplyTo: networkingapi.EnvoyFilter_HTTP_FILTER,
				Match: &networkingapi.EnvoyFilter_EnvoyConfigObjectMatch{
					Context: context,
					ObjectTypes: &networkingapi.EnvoyFilter_EnvoyConfigObjectMatch_Listener{Listener: &networkingapi.EnvoyFilter_ListenerMatch{
						FilterChain: &networkingapi.EnvoyFilter_ListenerMatch_FilterChainMatch{
							Filter: &networkingapi.EnvoyFilter_ListenerMatch_FilterMatch{
								Name:      "envoy.filters.network.http_connection_manager",
								SubFilter: &networkingapi.EnvoyFilter_ListenerMatch_SubFilterMatch{Name: "envoy.filters.http.ext_authz"},
							},
						},
					}},
				},
				Patch: &networkingapi.EnvoyFilter_Patch{Operation: networkingapi.EnvoyFilter_Patch_MERGE, Value: patch},
			}},
		},
	}, nil
}

func objectName(t Target) string {
	if t.Name == "" {
		return ObjectName
	}
	return ObjectName + "-" + t.Name
}

func provider(p *Provider) *meshapi.MeshConfig_ExtensionProvider {
	if p.Mode == ModeHTTP {
		return &meshapi.MeshConfig_ExtensionProvider{
			Name: p.Name,
			Provider: &meshapi.MeshConfig_ExtensionProvider_EnvoyExtAuthzHttp{EnvoyExtAuthzHttp: &meshapi.MeshConfig_ExtensionProvider_EnvoyExternalAuthorizationHttpProvider{
				Service:                      p.Service,
				Port:                         p.Port,
				Timeout:                      durationpb.New(p.Timeout),
				PathPrefix:                   p.PathPrefix,
				FailOpen:                     false,
				StatusOnError:                "403",
				IncludeRequestHeadersInCheck: slices.Clone(p.IncludeRequestHeadersInCheck),
				HeadersToUpstreamOnAllow:     slices.Clone(p.HeadersToUpstreamOnAllow),
				HeadersToDownstreamOnDeny:    slices.Clone(p.HeadersToDownstreamOnDeny),
			}},
		}
	}
	return &meshapi.MeshConfig_ExtensionProvider{
		Name: p.Name,
		Provider: &meshapi.MeshConfig_ExtensionProvider_EnvoyExtAuthzGrpc{EnvoyExtAuthzGrpc: &meshapi.MeshConfig_ExtensionProvider_EnvoyExternalAuthorizationGrpcProvider{
			Service:       p.Service,
			Port:          p.Port,
			Timeout:       durationpb.New(p.Timeout),
			FailOpen:      false,
			StatusOnError: "403",
		}},
	}
}

// pluginConfig is wire.FilterConfig as a protobuf Struct: with the bundle
// when bundleJSON is set, else with bundleFetch.
func pluginConfig(bundleJSON []byte, w *Wasm, t Target) (*structpb.Struct, error) {
	wl := t.Workload
	wl.Namespace = t.Namespace
	// The target's selector is only some of a pod's labels: the filter
	// reads all of them from its proxy's node metadata.
	wl.Labels, wl.LabelsFrom = nil, wire.LabelsFromNode
	fc := wire.FilterConfig{
		Bundle:       bundleJSON,
		Workload:     wl,
		RequireMTLS:  w.RequireMTLS,
		ControlPlane: w.ControlPlane,
	}
	if bundleJSON == nil {
		fc.BundleFetch = &wire.BundleFetch{Path: wire.BundlePath}
	}
	if t.Workload.Gateway == "" {
		// A sidecar's plugin runs on both sides (see the match above); a
		// gateway's listeners say OUTBOUND, yet its callers are inbound
		// to it: it keeps the default, every request inbound.
		fc.Direction = wire.DirectionListener
	}
	data, err := json.Marshal(fc)
	if err != nil {
		return nil, fmt.Errorf("istiogen: encode plugin config: %w", err)
	}
	if len(data) > MaxPluginConfigBytes {
		return nil, fmt.Errorf("istiogen: plugin config for %s is %d bytes, over %d: let the filters fetch the bundle from the control plane instead (%s)", t.Namespace, len(data), MaxPluginConfigBytes, BundleFromControlPlane)
	}
	var m map[string]any
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("istiogen: plugin config: %w", err)
	}
	s, err := structpb.NewStruct(numbersToFloat(m).(map[string]any))
	if err != nil {
		return nil, fmt.Errorf("istiogen: plugin config: %w", err)
	}
	return s, nil
}

// numbersToFloat turns json.Numbers into float64 for structpb, which holds
// every number as a double; integers beyond 2^53 would lose precision, and
// the bundle holds none (counts and thresholds).
func numbersToFloat(v any) any {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			v[k] = numbersToFloat(e)
		}
		return v
	case []any:
		for i, e := range v {
			v[i] = numbersToFloat(e)
		}
		return v
	case json.Number:
		f, _ := v.Float64()
		return f
	}
	return v
}

// normalize fills defaults and checks the config, collecting every problem.
func (cfg Config) normalize() (Config, error) {
	var errs []error
	c := cfg
	c.Wasm.BundleFrom = cmp.Or(c.Wasm.BundleFrom, BundleFromControlPlane)
	switch {
	case c.Wasm.BundleFrom != BundleFromControlPlane && c.Wasm.BundleFrom != BundleFromEmbedded:
		errs = append(errs, fmt.Errorf("wasm: bundle from %q, want %s or %s", c.Wasm.BundleFrom, BundleFromControlPlane, BundleFromEmbedded))
	case c.Bundle == nil && c.Wasm.BundleFrom == BundleFromEmbedded:
		errs = append(errs, errors.New("a policy bundle is required to embed it"))
	case c.Bundle == nil && len(c.Targets) == 0:
		errs = append(errs, errors.New("a policy bundle (for the default targets) or targets are required"))
	}
	if c.Wasm.BundleFrom == BundleFromControlPlane && c.Wasm.ControlPlane.Cluster == "" {
		errs = append(errs, errors.New("wasm: the control plane's cluster is required: the filters fetch their bundle through it"))
	}
	p := &c.Provider
	p.Name = cmp.Or(p.Name, DefaultProviderName)
	p.Port = cmp.Or(p.Port, DefaultPort)
	p.Timeout = cmp.Or(p.Timeout, DefaultTimeout)
	p.Mode = cmp.Or(p.Mode, ModeGRPC)
	if p.Service == "" {
		errs = append(errs, errors.New("provider: the authz service host is required"))
	} else if msgs := validation.IsDNS1123Subdomain(p.Service); len(msgs) > 0 {
		errs = append(errs, fmt.Errorf("provider: service %q: %s", p.Service, strings.Join(msgs, "; ")))
	}
	if p.Port > 65535 {
		errs = append(errs, fmt.Errorf("provider: port %d out of range", p.Port))
	}
	if p.Timeout < time.Millisecond {
		errs = append(errs, fmt.Errorf("provider: timeout %s is below 1ms", p.Timeout))
	}
	switch p.Mode {
	case ModeGRPC:
		if p.PathPrefix != "" || len(p.IncludeRequestHeadersInCheck) > 0 || len(p.HeadersToUpstreamOnAllow) > 0 || len(p.HeadersToDownstreamOnDeny) > 0 {
			errs = append(errs, errors.New("provider: path prefix and header lists apply to the http mode only (grpc sends every header)"))
		}
	case ModeHTTP:
		if p.IncludeRequestHeadersInCheck == nil {
			p.IncludeRequestHeadersInCheck = slices.Clone(DefaultCheckHeaders)
		}
		if p.HeadersToUpstreamOnAllow == nil {
			p.HeadersToUpstreamOnAllow = []string{wire.HeaderSourceID, wire.HeaderDecisionID}
		}
		if p.HeadersToDownstreamOnDeny == nil {
			p.HeadersToDownstreamOnDeny = []string{wire.HeaderReason, wire.HeaderDecisionID}
		}
	default:
		errs = append(errs, fmt.Errorf("provider: mode %q, want %s or %s", p.Mode, ModeGRPC, ModeHTTP))
	}
	w := &c.Wasm
	w.PluginName = cmp.Or(w.PluginName, DefaultPluginName)
	if w.URL == "" {
		errs = append(errs, errors.New("wasm: the module url is required"))
	} else if u, err := url.Parse(w.URL); err != nil {
		errs = append(errs, fmt.Errorf("wasm: url: %w", err))
	} else if u.Scheme != "oci" && u.Scheme != "https" && u.Scheme != "http" && u.Scheme != "file" {
		errs = append(errs, fmt.Errorf("wasm: url scheme %q, want oci, https, http or file", u.Scheme))
	}
	if w.SHA256 != "" && !isHex64(w.SHA256) {
		errs = append(errs, fmt.Errorf("wasm: sha256 %q is not 64 hex digits", w.SHA256))
	}
	switch w.ImagePullPolicy {
	case "", "IfNotPresent", "Always":
	default:
		errs = append(errs, fmt.Errorf("wasm: image pull policy %q, want IfNotPresent or Always", w.ImagePullPolicy))
	}
	if c.RootNamespace == "" && c.Bundle != nil {
		c.RootNamespace = c.Bundle.Set.Settings.RootNamespace
	}
	c.RootNamespace = cmp.Or(c.RootNamespace, DefaultRootNamespace)
	if len(c.Targets) == 0 && c.Bundle != nil {
		c.Targets = DefaultTargets(c.Bundle, c.RootNamespace)
	}
	if len(c.Targets) == 0 && c.Bundle != nil {
		errs = append(errs, errors.New("no targets: the bundle names no namespace; give targets"))
	}
	seen := map[string]bool{}
	for i, t := range c.Targets {
		if msgs := validation.IsDNS1123Label(t.Namespace); len(msgs) > 0 {
			errs = append(errs, fmt.Errorf("targets[%d]: namespace %q: %s", i, t.Namespace, strings.Join(msgs, "; ")))
		}
		if msgs := validation.IsDNS1123Subdomain(objectName(t)); t.Name != "" && len(msgs) > 0 {
			errs = append(errs, fmt.Errorf("targets[%d]: name %q: %s", i, t.Name, strings.Join(msgs, "; ")))
		}
		key := t.Namespace + "/" + objectName(t)
		if seen[key] {
			errs = append(errs, fmt.Errorf("targets[%d]: %s is generated twice; give the targets distinct names", i, key))
		}
		seen[key] = true
		for k, v := range t.Selector {
			if msgs := validation.IsQualifiedName(k); len(msgs) > 0 {
				errs = append(errs, fmt.Errorf("targets[%d]: label key %q: %s", i, k, strings.Join(msgs, "; ")))
			}
			if msgs := validation.IsValidLabelValue(v); len(msgs) > 0 {
				errs = append(errs, fmt.Errorf("targets[%d]: label %s value %q: %s", i, k, v, strings.Join(msgs, "; ")))
			}
		}
	}
	labels := map[string]string{LabelManagedBy: "meshguard"}
	maps.Copy(labels, c.Labels)
	c.Labels = labels
	if err := errors.Join(errs...); err != nil {
		return c, fmt.Errorf("istiogen: %w", err)
	}
	return c, nil
}

func isHex64(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, r := range s {
		if !strings.ContainsRune("0123456789abcdefABCDEF", r) {
			return false
		}
	}
	return true
}

// DefaultTargets wires every namespace the bundle's documents live in, or
// the whole mesh (one target in the root namespace) when any document lives
// in the root namespace, since those apply mesh-wide.
func DefaultTargets(b *policies.Bundle, root string) []Target {
	nss := map[string]bool{}
	b.Set.EachObject(func(_ string, m policies.ObjectMeta) {
		if m.Namespace != "" {
			nss[m.Namespace] = true
		}
	})
	if nss[root] {
		return []Target{{Namespace: root}}
	}
	var out []Target
	for _, ns := range slices.Sorted(maps.Keys(nss)) {
		out = append(out, Target{Namespace: ns})
	}
	return out
}
