package istiogen

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	extensionsapi "istio.io/api/extensions/v1alpha1"
	meshapi "istio.io/api/mesh/v1alpha1"
	networkingapi "istio.io/api/networking/v1alpha3"
	securityapi "istio.io/api/security/v1beta1"
	typeapi "istio.io/api/type/v1beta1"
	extensionsv1alpha1 "istio.io/client-go/pkg/apis/extensions/v1alpha1"
	networkingv1alpha3 "istio.io/client-go/pkg/apis/networking/v1alpha3"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	"sigs.k8s.io/yaml"

	"github.com/meshguard/meshguard/internal/testbed/kubestrict"
	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/wire"
)

var update = flag.Bool("update", false, "rewrite testdata/out from the generator")

func testBundle(t *testing.T) *policies.Bundle {
	t.Helper()
	set := policies.Set{
		Settings: policies.MeshSettingsSpec{RootNamespace: "istio-system", TrustDomain: "example.org"},
		AuthorizationPolicies: []policies.AuthorizationPolicy{{
			APIVersion: policies.APIVersionIstioV1, Kind: policies.KindAuthorizationPolicy,
			Metadata: policies.ObjectMeta{Name: "allow-web", Namespace: "shop"},
			Spec: policies.AuthorizationPolicySpec{Action: "ALLOW", Rules: []policies.Rule{{
				From: []policies.RuleFrom{{Source: policies.Source{Principals: []string{"example.org/ns/web/sa/web"}}}},
				To:   []policies.RuleTo{{Operation: policies.Operation{Methods: []string{"GET"}, Paths: []string{"/api/*"}}}},
			}}},
		}},
		AnomalyProfiles: []policies.AnomalyProfile{{
			APIVersion: policies.APIVersionMeshguard, Kind: policies.KindAnomalyProfile,
			Metadata: policies.ObjectMeta{Name: "default", Namespace: "payments"},
			Spec: policies.AnomalyProfileSpec{
				Rate:      &policies.RateDetector{HalfLife: "30s", ZScore: 4.5, MinRPS: 5},
				Errors:    &policies.ErrorDetector{MinRequests: 20, AuthRatio: 0.5},
				Responses: map[string]string{"rate": "quarantine"},
			},
		}},
	}
	b, _, err := policies.NewBundle("", set)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func baseConfig(t *testing.T) Config {
	return Config{
		Bundle:   testBundle(t),
		Provider: Provider{Service: "meshguard-authz.meshguard.svc.cluster.local"},
		Wasm: Wasm{
			URL:          "oci://ghcr.io/meshguard/filter:v0.1.0",
			RequireMTLS:  true,
			ControlPlane: wire.ControlPlane{Cluster: "outbound|8080||meshguard-controlplane.meshguard.svc.cluster.local", Path: wire.EventsPath},
		},
	}
}

func TestGenerateDefaults(t *testing.T) {
	cfg := baseConfig(t)
	out, err := Generate(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// One target per namespace the bundle's documents live in.
	if len(out.AuthorizationPolicies) != 2 || len(out.WasmPlugins) != 2 {
		t.Fatalf("policies = %d, plugins = %d", len(out.AuthorizationPolicies), len(out.WasmPlugins))
	}
	for i, ns := range []string{"payments", "shop"} {
		ap := out.AuthorizationPolicies[i]
		if ap.Namespace != ns || ap.Name != "meshguard" || ap.Labels[LabelManagedBy] != "meshguard" {
			t.Errorf("policy %d meta = %+v", i, ap.ObjectMeta)
		}
		if ap.Spec.Action != securityapi.AuthorizationPolicy_CUSTOM || ap.Spec.GetProvider().GetName() != "meshguard" {
			t.Errorf("policy %d is not CUSTOM meshguard: %v", i, &ap.Spec)
		}
		if len(ap.Spec.Rules) != 1 || !proto.Equal(ap.Spec.Rules[0], &securityapi.Rule{}) || ap.Spec.Selector != nil {
			t.Errorf("policy %d does not cover every request of the namespace: %v", i, &ap.Spec)
		}
		wp := out.WasmPlugins[i]
		if wp.Spec.Phase != extensionsapi.PluginPhase_AUTHZ || wp.Spec.FailStrategy != extensionsapi.FailStrategy_FAIL_CLOSE || wp.Spec.Url != cfg.Wasm.URL {
			t.Errorf("plugin %d = %v", i, &wp.Spec)
		}
		// A sidecar's plugin runs on both sides: inbound (SERVER) and on
		// the workload's own, outbound requests (CLIENT); each listener
		// tells the filter which side it is.
		if len(wp.Spec.Match) != 2 || wp.Spec.Match[0].Mode != typeapi.WorkloadMode_SERVER || wp.Spec.Match[1].Mode != typeapi.WorkloadMode_CLIENT {
			t.Errorf("plugin %d must run on inbound and outbound traffic: %v", i, wp.Spec.Match)
		}
		fc := filterConfig(t, wp)
		if fc.Workload.Namespace != ns || !fc.RequireMTLS || fc.ControlPlane.Path != wire.EventsPath || fc.Direction != wire.DirectionListener {
			t.Errorf("plugin %d config = %+v", i, fc)
		}
		// The filter fetches its bundle from the control plane: no policy
		// in the object.
		if len(fc.Bundle) != 0 || fc.BundleFetch == nil || fc.BundleFetch.Path != wire.BundlePath || fc.ControlPlane.Cluster != cfg.Wasm.ControlPlane.Cluster {
			t.Errorf("plugin %d does not fetch its bundle from the control plane: bundle %d bytes, bundleFetch %+v, cluster %q",
				i, len(fc.Bundle), fc.BundleFetch, fc.ControlPlane.Cluster)
		}
	}
	grpc := out.MeshConfig.ExtensionProviders[0].GetEnvoyExtAuthzGrpc()
	if grpc == nil || grpc.Service != cfg.Provider.Service || grpc.Port != DefaultPort || grpc.FailOpen || grpc.Timeout.AsDuration() != DefaultTimeout {
		t.Errorf("provider = %v", out.MeshConfig.ExtensionProviders[0])
	}
}

// TestGenerateEmbedded: with BundleFromEmbedded the pluginConfig holds the
// bundle, verbatim.
func TestGenerateEmbedded(t *testing.T) {
	cfg := baseConfig(t)
	cfg.Wasm.BundleFrom = BundleFromEmbedded
	out, err := Generate(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for i, wp := range out.WasmPlugins {
		fc := filterConfig(t, wp)
		if fc.BundleFetch != nil {
			t.Errorf("plugin %d: bundleFetch with an embedded bundle", i)
		}
		b, err := policies.DecodeBundle(fc.Bundle)
		if err != nil {
			t.Fatalf("plugin %d bundle does not decode: %v", i, err)
		}
		if b.Hash != cfg.Bundle.Hash || b.Version != cfg.Bundle.Version {
			t.Errorf("plugin %d bundle %s %s, want %s %s", i, b.Version, b.Hash, cfg.Bundle.Version, cfg.Bundle.Hash)
		}
	}
}

// TestGenerateTargetsWithoutBundle: filters that fetch their bundle need
// no policy at generation time when the targets are given.
func TestGenerateTargetsWithoutBundle(t *testing.T) {
	cfg := baseConfig(t)
	cfg.Bundle = nil
	cfg.Targets = []Target{{Namespace: "shop", Selector: map[string]string{"app": "orders"}}}
	out, err := Generate(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(out.WasmPlugins) != 1 || filterConfig(t, out.WasmPlugins[0]).BundleFetch == nil {
		t.Fatalf("plugins: %d", len(out.WasmPlugins))
	}
}

// filterConfig reads a plugin's config back the way the filter does: as
// JSON into wire.FilterConfig, strictly.
func filterConfig(t *testing.T, wp *extensionsv1alpha1.WasmPlugin) wire.FilterConfig {
	t.Helper()
	data, err := protojson.Marshal(wp.Spec.PluginConfig)
	if err != nil {
		t.Fatal(err)
	}
	var fc wire.FilterConfig
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&fc); err != nil {
		t.Fatalf("plugin config: %v", err)
	}
	return fc
}

func TestGenerateMeshWideWhenRootNamespaceHasPolicies(t *testing.T) {
	cfg := baseConfig(t)
	set := cfg.Bundle.Set
	set.AuthorizationPolicies = append(set.AuthorizationPolicies, policies.AuthorizationPolicy{
		APIVersion: policies.APIVersionIstioV1, Kind: policies.KindAuthorizationPolicy,
		Metadata: policies.ObjectMeta{Name: "mesh-deny", Namespace: "istio-system"},
		Spec:     policies.AuthorizationPolicySpec{Action: "DENY", Rules: []policies.Rule{{}}},
	})
	b, _, err := policies.NewBundle("", set)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Bundle = b
	out, err := Generate(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(out.AuthorizationPolicies) != 1 || out.AuthorizationPolicies[0].Namespace != "istio-system" {
		t.Fatalf("want one mesh-wide policy in the root namespace, got %d", len(out.AuthorizationPolicies))
	}
}

func TestGenerateTargetsAndHTTPMode(t *testing.T) {
	cfg := baseConfig(t)
	cfg.Provider.Mode = ModeHTTP
	cfg.Provider.Timeout = 250 * time.Millisecond
	prio := int32(10)
	cfg.Wasm.Priority = &prio
	cfg.Wasm.SHA256 = strings.Repeat("ab", 32)
	cfg.Wasm.ImagePullPolicy = "Always"
	cfg.Targets = []Target{
		{Namespace: "shop", Name: "api", Selector: map[string]string{"app": "api"}, Workload: wire.Workload{ID: "spiffe://example.org/ns/shop/sa/api", Service: "api.shop.svc.cluster.local"}},
		{Namespace: "edge", Name: "gw", Selector: map[string]string{"istio": "ingressgateway"}, Workload: wire.Workload{Gateway: "ingress"}},
	}
	out, err := Generate(cfg)
	if err != nil {
		t.Fatal(err)
	}
	http := out.MeshConfig.ExtensionProviders[0].GetEnvoyExtAuthzHttp()
	if http == nil || http.FailOpen || http.Timeout.AsDuration() != 250*time.Millisecond {
		t.Fatalf("provider = %v", out.MeshConfig.ExtensionProviders[0])
	}
	for _, h := range []string{"authorization", "x-forwarded-client-cert", wire.HeaderRoute} {
		if !contains(http.IncludeRequestHeadersInCheck, h) {
			t.Errorf("check headers %v lack %s", http.IncludeRequestHeadersInCheck, h)
		}
	}
	api := out.WasmPlugins[0]
	if api.Name != "meshguard-api" || api.Spec.Selector.MatchLabels["app"] != "api" || api.Spec.Priority.GetValue() != 10 || api.Spec.ImagePullPolicy != extensionsapi.PullPolicy_Always {
		t.Errorf("api plugin = %v", &api.Spec)
	}
	// The selector is only part of a pod's labels: the filter reads them
	// all from its node.
	if fc := filterConfig(t, api); fc.Workload.ID != "spiffe://example.org/ns/shop/sa/api" || len(fc.Workload.Labels) != 0 || fc.Workload.LabelsFrom != wire.LabelsFromNode {
		t.Errorf("api workload = %+v", fc.Workload)
	}
	if ef := out.EnvoyFilters[0]; ef.Name != "meshguard-api" || ef.Spec.WorkloadSelector.GetLabels()["app"] != "api" ||
		ef.Spec.ConfigPatches[0].Match.Context != networkingapi.EnvoyFilter_SIDECAR_INBOUND {
		t.Errorf("api envoy filter = %v", &ef.Spec)
	}
	if gw := out.EnvoyFilters[1]; gw.Spec.ConfigPatches[0].Match.Context != networkingapi.EnvoyFilter_GATEWAY {
		t.Errorf("gateway envoy filter = %v", &gw.Spec)
	}
	if gw := out.WasmPlugins[1]; len(gw.Spec.Match) != 0 {
		t.Errorf("a gateway plugin must not be limited to SERVER mode: %v", gw.Spec.Match)
	}
	// A gateway's listeners say OUTBOUND, yet its callers are inbound.
	if fc := filterConfig(t, out.WasmPlugins[1]); fc.Direction != "" {
		t.Errorf("gateway plugin direction %q, want the default (inbound)", fc.Direction)
	}
}

func contains(l []string, s string) bool {
	for _, e := range l {
		if e == s {
			return true
		}
	}
	return false
}

func TestGenerateRejectsBadConfig(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*Config)
		want   []string
	}{
		{"nothing", func(c *Config) { *c = Config{} }, []string{"bundle (for the default targets) or targets are required", "service host is required",
			"module url is required", "control plane's cluster is required"}},
		{"embedded without bundle", func(c *Config) {
			c.Bundle, c.Wasm.BundleFrom, c.Targets = nil, BundleFromEmbedded, []Target{{Namespace: "shop"}}
		}, []string{"required to embed it"}},
		{"bundle from", func(c *Config) { c.Wasm.BundleFrom = "configmap" }, []string{`bundle from "configmap"`}},
		{"fetch without cluster", func(c *Config) { c.Wasm.ControlPlane.Cluster = "" }, []string{"control plane's cluster is required"}},
		{"bad service", func(c *Config) { c.Provider.Service = "Not A Host" }, []string{`service "Not A Host"`}},
		{"bad mode", func(c *Config) { c.Provider.Mode = "tcp" }, []string{`mode "tcp"`}},
		{"grpc headers", func(c *Config) { c.Provider.IncludeRequestHeadersInCheck = []string{"a"} }, []string{"http mode only"}},
		{"timeout", func(c *Config) { c.Provider.Timeout = time.Microsecond }, []string{"below 1ms"}},
		{"url scheme", func(c *Config) { c.Wasm.URL = "ftp://x/y.wasm" }, []string{`scheme "ftp"`}},
		{"sha", func(c *Config) { c.Wasm.SHA256 = "abc" }, []string{"64 hex digits"}},
		{"pull policy", func(c *Config) { c.Wasm.ImagePullPolicy = "Never" }, []string{`pull policy "Never"`}},
		{"target namespace", func(c *Config) { c.Targets = []Target{{Namespace: "Shop"}} }, []string{`namespace "Shop"`}},
		{"target label", func(c *Config) { c.Targets = []Target{{Namespace: "shop", Selector: map[string]string{"app": "a b"}}} }, []string{`label app value "a b"`}},
		{"duplicate target", func(c *Config) { c.Targets = []Target{{Namespace: "shop"}, {Namespace: "shop"}} }, []string{"generated twice"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := baseConfig(t)
			tt.mutate(&cfg)
			_, err := Generate(cfg)
			if err == nil {
				t.Fatal("Generate accepted a bad config")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestGeneratePluginConfigSizeLimit(t *testing.T) {
	cfg := baseConfig(t)
	set := cfg.Bundle.Set
	for i := range 20000 {
		set.Quarantines = append(set.Quarantines, policies.Quarantine{
			APIVersion: policies.APIVersionMeshguard, Kind: policies.KindQuarantine,
			Metadata: policies.ObjectMeta{Name: "q" + strings.Repeat("x", 10) + string(rune('a'+i%26)) + strconv.Itoa(i), Namespace: "shop"},
			Spec:     policies.QuarantineSpec{Identity: "spiffe://example.org/ns/shop/sa/" + strconv.Itoa(i), Reason: "test"},
		})
	}
	b, _, err := policies.NewBundle("", set)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Bundle = b
	cfg.Wasm.BundleFrom = BundleFromEmbedded
	if _, err := Generate(cfg); err == nil || !strings.Contains(err.Error(), "fetch the bundle from the control plane") {
		t.Fatalf("err = %v, want the size limit", err)
	}
	// Fetched, the bundle's size does not reach the objects.
	cfg.Wasm.BundleFrom = BundleFromControlPlane
	if _, err := Generate(cfg); err != nil {
		t.Fatalf("fetching filters: %v", err)
	}
}

// TestYAMLStrict decodes what `meshguard istio generate` writes strictly
// into Istio's Go types and checks it equals what was generated.
func TestYAMLStrict(t *testing.T) {
	out, err := Generate(baseConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	data, err := out.ResourcesYAML()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(data, []byte("failStrategy: FAIL_CLOSE")) || !bytes.Contains(data, []byte("phase: AUTHZ")) {
		t.Errorf("fail-closed settings are not visible in the YAML:\n%s", data)
	}
	dec, err := kubestrict.New()
	if err != nil {
		t.Fatal(err)
	}
	docs, err := kubestrict.Documents(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(docs) != 6 {
		t.Fatalf("documents = %d, want 6", len(docs))
	}
	var aps, efs, wps int
	for _, doc := range docs {
		obj, _, err := dec.Decode(doc)
		if err != nil {
			t.Fatalf("%v\n%s", err, doc)
		}
		switch o := obj.(type) {
		case *securityv1.AuthorizationPolicy:
			if !proto.Equal(&o.Spec, &out.AuthorizationPolicies[aps].Spec) {
				t.Errorf("policy %d changed through YAML", aps)
			}
			aps++
		case *extensionsv1alpha1.WasmPlugin:
			if !proto.Equal(&o.Spec, &out.WasmPlugins[wps].Spec) {
				t.Errorf("plugin %d changed through YAML", wps)
			}
			wps++
		case *networkingv1alpha3.EnvoyFilter:
			if !proto.Equal(&o.Spec, &out.EnvoyFilters[efs].Spec) {
				t.Errorf("envoy filter %d changed through YAML", efs)
			}
			efs++
		default:
			t.Errorf("unexpected %T", obj)
		}
	}

	mc, err := out.MeshConfigYAML()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(mc, []byte("failOpen: false")) {
		t.Errorf("failOpen is not visible:\n%s", mc)
	}
	var values struct {
		MeshConfig json.RawMessage `json:"meshConfig"`
	}
	js, err := yaml.YAMLToJSONStrict(mc)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(js, &values); err != nil {
		t.Fatal(err)
	}
	var back meshapi.MeshConfig
	if err := protojson.Unmarshal(values.MeshConfig, &back); err != nil {
		t.Fatalf("mesh config does not decode strictly: %v", err)
	}
	if !proto.Equal(&back, out.MeshConfig) {
		t.Errorf("mesh config changed through YAML")
	}
}

// TestGolden pins what users apply for a representative input; run with
// -update to regenerate testdata/out after an intended change.
func TestGolden(t *testing.T) {
	cfg := baseConfig(t)
	out, err := Generate(cfg)
	if err != nil {
		t.Fatal(err)
	}
	res, err := out.ResourcesYAML()
	if err != nil {
		t.Fatal(err)
	}
	mc, err := out.MeshConfigYAML()
	if err != nil {
		t.Fatal(err)
	}
	for name, got := range map[string][]byte{"resources.yaml": res, "mesh-config.yaml": mc} {
		path := filepath.Join("testdata", "out", name)
		if *update {
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, got, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (run go test -update)", err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s differs from the generator's output; run go test ./controlplane/istiogen -update and review the diff", path)
		}
	}
}

// TestDefaultTargetsWireEveryDocument: every namespace a document of the
// bundle lives in is wired, a RequestAuthentication's included (meshguard
// checks its tokens there); a document in the root namespace wires the mesh.
func TestDefaultTargetsWireEveryDocument(t *testing.T) {
	meta := func(ns, name string) policies.ObjectMeta { return policies.ObjectMeta{Namespace: ns, Name: name} }
	set := policies.Set{
		AuthorizationPolicies:  []policies.AuthorizationPolicy{{Metadata: meta("shop", "a")}},
		RequestAuthentications: []policies.RequestAuthentication{{Metadata: meta("auth", "idp")}},
		Quarantines:            []policies.Quarantine{{Metadata: meta("ops", "q")}},
	}
	got := DefaultTargets(&policies.Bundle{Set: set}, policies.DefaultRootNamespace)
	want := []Target{{Namespace: "auth"}, {Namespace: "ops"}, {Namespace: "shop"}}
	if len(got) != len(want) {
		t.Fatalf("targets %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i].Namespace != want[i].Namespace {
			t.Fatalf("targets %+v, want %+v", got, want)
		}
	}
	set.RequestAuthentications[0].Metadata.Namespace = policies.DefaultRootNamespace
	if got := DefaultTargets(&policies.Bundle{Set: set}, policies.DefaultRootNamespace); len(got) != 1 || got[0].Namespace != policies.DefaultRootNamespace {
		t.Fatalf("a document in the root namespace: targets %+v, want the mesh", got)
	}
}
