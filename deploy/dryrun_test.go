package deploy_test

// Server-side dry runs against a real kube-apiserver (built by `make
// kube-assets`, started through controller-runtime's envtest), so that the
// API server's own validation, the CRDs' schemas and their CEL rules judge
// what users apply — not only a decode into Go types. Installed CRDs:
// Istio's (from the istio.io/api module, as controlplane/istio's tests do),
// meshguard's (deploy/crds), the Prometheus Operator's ServiceMonitor and
// spire-controller-manager's ClusterSPIFFEID (from their modules on the Go
// module proxy, at pinned versions). Skipped without KUBEBUILDER_ASSETS.
//
// Every object is sent twice with dryRun=All and strict field validation:
// as a server-side apply and as a create. Namespaced objects need their
// namespace to exist even in a dry run (the NamespaceLifecycle admission
// plugin refuses objects in a missing one): the test creates the release
// namespace, istio-system (the chart's Role that reads Istio's mesh config
// lives there) and the namespaces the Istio resources target, as `helm
// install --create-namespace`, an Istio installation and a user would.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/yaml"

	"github.com/meshguard/meshguard/controlplane/istiogen"
	"github.com/meshguard/meshguard/internal/testbed/kubestrict"
	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/source"
	"github.com/meshguard/meshguard/policies/wire"
)

// Third-party CRDs, from their Go modules: the versions whose objects the
// chart renders and deploy/spire ships.
const (
	prometheusOperator    = "github.com/prometheus-operator/prometheus-operator@v0.85.0"
	serviceMonitorCRD     = "example/prometheus-operator-crd-full/monitoring.coreos.com_servicemonitors.yaml"
	spireControllerManger = "github.com/spiffe/spire-controller-manager@v0.6.3"
	clusterSPIFFEIDCRD    = "config/crd/bases/spire.spiffe.io_clusterspiffeids.yaml"
)

// kube is one API server shared by the dry-run tests.
var kube struct {
	once sync.Once
	env  *envtest.Environment
	cfg  *rest.Config
	err  error
}

// stopAPIServer stops the API server, if a test started it (TestMain).
func stopAPIServer() error {
	if kube.env == nil {
		return nil
	}
	return kube.env.Stop()
}

// moduleDir returns where the Go command keeps module@version, downloading
// it from the module proxy if needed (outside this module: go.mod is not
// touched).
func moduleDir(modVersion string) (string, error) {
	cmd := exec.Command("go", "mod", "download", "-json", modVersion)
	cmd.Dir = os.TempDir()
	cmd.Env = append(os.Environ(), "GOFLAGS=")
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go mod download %s: %w", modVersion, err)
	}
	var info struct{ Dir, Error string }
	if err := json.Unmarshal(out, &info); err != nil || info.Dir == "" {
		return "", fmt.Errorf("go mod download %s: %s %v", modVersion, info.Error, err)
	}
	return info.Dir, nil
}

// dryRunner sends objects to the shared API server with dryRun=All.
type dryRunner struct {
	dyn    dynamic.Interface
	mapper meta.RESTMapper
	kube   kubernetes.Interface
}

func apiServer(t *testing.T) *dryRunner {
	t.Helper()
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		t.Skip("KUBEBUILDER_ASSETS is not set: run `make kube-assets` and export KUBEBUILDER_ASSETS=$PWD/bin to dry-run against a real kube-apiserver")
	}
	kube.once.Do(func() {
		logf.SetLogger(logr.Discard())
		out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "istio.io/api").Output()
		if err != nil {
			kube.err = err
			return
		}
		istioCRDs := filepath.Join(strings.TrimSpace(string(out)), "kubernetes", "customresourcedefinitions.gen.yaml")
		prom, err := moduleDir(prometheusOperator)
		if err != nil {
			kube.err = err
			return
		}
		spire, err := moduleDir(spireControllerManger)
		if err != nil {
			kube.err = err
			return
		}
		env := &envtest.Environment{
			BinaryAssetsDirectory: assets,
			CRDDirectoryPaths:     []string{istioCRDs, "crds", filepath.Join(prom, serviceMonitorCRD), filepath.Join(spire, clusterSPIFFEIDCRD)},
			ErrorIfCRDPathMissing: true,
		}
		api := env.ControlPlane.GetAPIServer()
		api.Configure().Set("advertise-address", "127.0.0.1").Set("endpoint-reconciler-type", "none")
		start := time.Now()
		kube.cfg, kube.err = env.Start()
		kube.env = env
		t.Logf("kube-apiserver and etcd started in %s", time.Since(start).Round(time.Millisecond))
	})
	if kube.err != nil {
		t.Fatalf("start the API server: %v", kube.err)
	}
	cfg := rest.CopyConfig(kube.cfg)
	cfg.QPS, cfg.Burst = 200, 400
	r := &dryRunner{}
	var err error
	if r.dyn, err = dynamic.NewForConfig(cfg); err != nil {
		t.Fatal(err)
	}
	if r.kube, err = kubernetes.NewForConfig(cfg); err != nil {
		t.Fatal(err)
	}
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r.mapper = restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))
	return r
}

// namespace creates ns (for real: a dry-run object needs its namespace).
func (r *dryRunner) namespace(t *testing.T, ns string) {
	t.Helper()
	_, err := r.kube.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

// dryRun sends one YAML document as a server-side apply and as a create,
// both with dryRun=All and strict field validation; a namespaced object
// without a namespace goes to defaultNS, as `helm install -n` or `kubectl
// apply -n` would send it. It returns the first refusal, and the object.
func (r *dryRunner) dryRun(doc []byte, defaultNS string) (*unstructured.Unstructured, error) {
	js, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return nil, err
	}
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(js); err != nil {
		return nil, err
	}
	gvk := u.GroupVersionKind()
	m, err := r.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return u, fmt.Errorf("%s: no such resource on the API server: %w", gvk, err)
	}
	var ri dynamic.ResourceInterface = r.dyn.Resource(m.Resource)
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		if u.GetNamespace() == "" {
			u.SetNamespace(defaultNS)
		}
		ri = r.dyn.Resource(m.Resource).Namespace(u.GetNamespace())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	body, err := u.MarshalJSON()
	if err != nil {
		return u, err
	}
	force := true
	if _, err := ri.Patch(ctx, u.GetName(), types.ApplyPatchType, body, metav1.PatchOptions{
		FieldManager: "meshguard-deploy-test", Force: &force, DryRun: []string{metav1.DryRunAll}, FieldValidation: "Strict",
	}); err != nil {
		return u, fmt.Errorf("server-side apply: %w", err)
	}
	if _, err := ri.Create(ctx, u, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}, FieldValidation: "Strict"}); err != nil {
		// The CRDs are installed for real (the test environment needs
		// them): a create of one is a conflict, its apply above judged it.
		if !(apierrors.IsAlreadyExists(err) && gvk.Kind == "CustomResourceDefinition") {
			return u, fmt.Errorf("create: %w", err)
		}
	}
	return u, nil
}

func describe(u *unstructured.Unstructured) string {
	if u == nil {
		return "?"
	}
	return fmt.Sprintf("%s %s/%s", u.GetKind(), u.GetNamespace(), u.GetName())
}

// TestHelmChartDryRun: every object the chart renders, for every values
// combination TestHelmChart renders, passes the API server's validation.
func TestHelmChartDryRun(t *testing.T) {
	r := apiServer(t)
	r.namespace(t, releaseNamespace)
	for _, tc := range chartCases {
		t.Run(tc.name, func(t *testing.T) {
			objs := render(t, tc.values)
			for _, o := range objs {
				// An object outside the release namespace (the Role that
				// reads Istio's mesh config, in istio-system) needs its
				// namespace: Istio's, which exists where Istio runs.
				if ns := namespaceOf(t, o.doc); ns != "" {
					r.namespace(t, ns)
				}
				if u, err := r.dryRun(o.doc, releaseNamespace); err != nil {
					t.Errorf("%s (%s): %v", describe(u), o.template, err)
				}
			}
			t.Logf("%d objects accepted", len(objs))
		})
	}
}

// TestIstioResourcesDryRun: what `meshguard istio generate` writes — the
// CUSTOM AuthorizationPolicies and WasmPlugins, for both provider modes,
// every module URL scheme, selector, namespace, mesh-wide and gateway
// targets — and the Istio and policy documents shipped in deploy/istio and
// examples/policies pass the API server's validation with Istio's and
// meshguard's CRDs. The extension provider is istiod Helm values
// (meshConfig), not a Kubernetes object: TestIstioExamples decodes it
// strictly into istio.io/api's MeshConfig.
func TestIstioResourcesDryRun(t *testing.T) {
	r := apiServer(t)
	set, _, err := source.Load("../examples/policies")
	if err != nil {
		t.Fatal(err)
	}
	b, _, err := policies.NewBundle("", set)
	if err != nil {
		t.Fatal(err)
	}
	prio := int32(100)
	sha := strings.Repeat("ab", 32)
	cp := wire.ControlPlane{Cluster: "outbound|8443||meshguard-controlplane.meshguard.svc.cluster.local", Authority: "meshguard-controlplane.meshguard.svc.cluster.local", Path: wire.EventsPath}
	configs := map[string]istiogen.Config{
		"grpc provider, oci module, namespace and selector targets": {
			Provider: istiogen.Provider{Service: "meshguard-authz.meshguard.svc.cluster.local"},
			Wasm:     istiogen.Wasm{URL: "oci://ghcr.io/meshguard/meshguard-filter:v0.1.0", RequireMTLS: true, Priority: &prio, ControlPlane: cp},
			Targets: []istiogen.Target{
				{Namespace: "bookstore"},
				{Namespace: "bookstore", Name: "catalog", Selector: map[string]string{"app": "catalog", "version": "v2"}},
			},
		},
		"http provider, https module with sha256, pull secret, gateway target": {
			Provider: istiogen.Provider{Service: "meshguard-authz.meshguard.svc.cluster.local", Mode: istiogen.ModeHTTP, Port: 9193, PathPrefix: "/check"},
			Wasm:     istiogen.Wasm{URL: "https://example.com/meshguard-filter.wasm", SHA256: sha, ImagePullPolicy: "Always", ImagePullSecret: "regcred", ControlPlane: cp},
			Targets: []istiogen.Target{
				{Namespace: "istio-system", Name: "ingress", Selector: map[string]string{"istio": "ingressgateway"}, Workload: wire.Workload{Gateway: "istio-ingressgateway"}},
			},
			Labels: map[string]string{"team": "security"},
		},
		"file module, default targets (mesh-wide: the examples have root-namespace documents)": {
			Provider: istiogen.Provider{Service: "meshguard-authz.meshguard.svc.cluster.local"},
			Wasm:     istiogen.Wasm{URL: "file:///etc/istio/extensions/meshguard-filter.wasm", ImagePullPolicy: "IfNotPresent", ControlPlane: cp},
		},
		"http module, bundle embedded": {
			Provider: istiogen.Provider{Service: "meshguard-authz.meshguard.svc.cluster.local", Timeout: 2 * time.Second},
			Wasm:     istiogen.Wasm{URL: "http://modules.internal/meshguard-filter.wasm", BundleFrom: istiogen.BundleFromEmbedded},
			Targets:  []istiogen.Target{{Namespace: "payments"}},
		},
	}
	total := 0
	for name, cfg := range configs {
		cfg.Bundle = b
		out, err := istiogen.Generate(cfg)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		data, err := out.ResourcesYAML()
		if err != nil {
			t.Fatal(err)
		}
		total += applyAll(t, r, name, data)
	}
	for _, f := range []string{"istio/resources.yaml", "istio/peer-authentication.yaml", "istio/policies.yaml", "spire/clusterspiffeid.yaml"} {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		total += applyAll(t, r, f, data)
	}
	files, err := filepath.Glob("../examples/policies/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no example policies: %v", err)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		total += applyAll(t, r, f, data)
	}
	t.Logf("%d objects accepted", total)
}

// namespaceOf is the namespace a document names, if any.
func namespaceOf(t *testing.T, doc []byte) string {
	t.Helper()
	var m struct {
		Metadata struct {
			Namespace string `json:"namespace"`
		} `json:"metadata"`
	}
	if err := yaml.Unmarshal(doc, &m); err != nil {
		t.Fatal(err)
	}
	return m.Metadata.Namespace
}

// applyAll dry-runs every document of a YAML stream, creating the
// namespaces it names first.
func applyAll(t *testing.T, r *dryRunner, what string, data []byte) int {
	t.Helper()
	docs, err := kubestrict.Documents(data)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	for _, doc := range docs {
		if ns := namespaceOf(t, doc); ns != "" {
			r.namespace(t, ns)
		}
		if u, err := r.dryRun(doc, "default"); err != nil {
			t.Errorf("%s: %s: %v", what, describe(u), err)
		}
	}
	return len(docs)
}

// TestDryRunRefusesInvalidObjects: objects that decode strictly into their
// Go types (kubestrict, the check the other tests of this package make)
// but that the API server refuses — by its own validation, by an Istio
// CRD's CEL rule, by a CRD's schema. The dry runs above are worth more than
// the decoding for that reason.
func TestDryRunRefusesInvalidObjects(t *testing.T) {
	r := apiServer(t)
	r.namespace(t, releaseNamespace)
	r.namespace(t, "shop")
	d := decoder(t)
	var pdb, deployment []byte
	for _, o := range render(t, nil) {
		switch {
		case strings.HasSuffix(o.template, "authz.yaml") && bytes.Contains(o.doc, []byte("kind: PodDisruptionBudget")):
			pdb = o.doc
		case strings.HasSuffix(o.template, "authz.yaml") && bytes.Contains(o.doc, []byte("kind: Deployment")):
			deployment = o.doc
		}
	}
	if pdb == nil || deployment == nil {
		t.Fatal("the chart rendered no authz PodDisruptionBudget or Deployment")
	}
	resources, err := os.ReadFile("istio/resources.yaml")
	if err != nil {
		t.Fatal(err)
	}
	docs, err := kubestrict.Documents(resources)
	if err != nil {
		t.Fatal(err)
	}
	byKind := map[string][]byte{}
	for _, doc := range docs {
		var k struct {
			Kind string `json:"kind"`
		}
		if err := yaml.Unmarshal(doc, &k); err != nil {
			t.Fatal(err)
		}
		byKind[k.Kind] = doc
	}
	if byKind["AuthorizationPolicy"] == nil || byKind["WasmPlugin"] == nil {
		t.Fatalf("istio/resources.yaml has no AuthorizationPolicy or WasmPlugin: %v", slices.Collect(maps.Keys(byKind)))
	}
	tests := []struct {
		name string
		doc  []byte
		edit func(u map[string]any)
		want string
	}{
		{"a PodDisruptionBudget with both minAvailable and maxUnavailable (API server validation)", pdb,
			func(u map[string]any) { u["spec"].(map[string]any)["minAvailable"] = 1 }, "minAvailable"},
		{"a Deployment whose selector does not select its pods (API server validation)", deployment,
			func(u map[string]any) {
				u["spec"].(map[string]any)["selector"] = map[string]any{"matchLabels": map[string]any{"app.kubernetes.io/name": "someone-else"}}
			}, "selector"},
		{"a CUSTOM AuthorizationPolicy with a selector and targetRefs (Istio CEL rule)", byKind["AuthorizationPolicy"],
			func(u map[string]any) {
				spec := u["spec"].(map[string]any)
				spec["selector"] = map[string]any{"matchLabels": map[string]any{"app": "api"}}
				spec["targetRefs"] = []any{map[string]any{"kind": "Service", "group": "", "name": "api"}}
			}, "only one of targetRefs or selector"},
		{"a WasmPlugin whose module URL has another scheme (Istio CEL rule)", byKind["WasmPlugin"],
			func(u map[string]any) { u["spec"].(map[string]any)["url"] = "ftp://example.com/filter.wasm" }, "url must have schema"},
		{"a DefaultDeny with an unknown mode (meshguard CRD schema)", []byte(`{"apiVersion":"meshguard.dev/v1alpha1","kind":"DefaultDeny","metadata":{"name":"x","namespace":"shop"},"spec":{"mode":"sometimes"}}`),
			nil, "mode"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			js, err := yaml.YAMLToJSONStrict(tt.doc)
			if err != nil {
				t.Fatal(err)
			}
			var u map[string]any
			if err := json.Unmarshal(js, &u); err != nil {
				t.Fatal(err)
			}
			if tt.edit != nil {
				tt.edit(u)
			}
			doc, err := json.Marshal(u)
			if err != nil {
				t.Fatal(err)
			}
			if u["apiVersion"] != "meshguard.dev/v1alpha1" {
				if _, _, err := d.Decode(doc); err != nil {
					t.Fatalf("Go decoding already refuses it, the case shows nothing: %v", err)
				}
			}
			_, err = r.dryRun(doc, releaseNamespace)
			if err == nil {
				t.Fatal("the API server accepted it")
			}
			if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("want an Invalid error about %q, got: %v", tt.want, err)
			}
		})
	}
}
