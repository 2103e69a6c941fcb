package istio

import (
	"context"
	"reflect"
	"strings"
	"testing"
	"time"

	istiofake "istio.io/client-go/pkg/clientset/versioned/fake"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kubefake "k8s.io/client-go/kubernetes/fake"

	"github.com/meshguard/meshguard/policies"
)

func meshConfigMap(ns, name, mesh string) *corev1.ConfigMap {
	return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Data: map[string]string{"mesh": mesh}}
}

// What istiod's Helm chart writes (meshConfig values), with fields meshguard
// does not read.
const sampleMesh = `
accessLogFile: /dev/stdout
defaultConfig:
  discoveryAddress: istiod.istio-system.svc:15012
enablePrometheusMerge: true
rootNamespace: istio-system
trustDomain: prod.example
trustDomainAliases: [old.example, cluster.local]
pathNormalization: {normalization: MERGE_SLASHES}
extensionProviders:
- name: meshguard
  envoyExtAuthzGrpc: {service: meshguard-authz.meshguard.svc.cluster.local, port: 9191}
- name: otel
  opentelemetry: {service: otel.observability.svc.cluster.local, port: 4317}
`

func TestMeshSettingsFromConfigMap(t *testing.T) {
	got, err := meshSettingsFromConfigMap(meshConfigMap("istio-system", "istio", sampleMesh))
	if err != nil {
		t.Fatal(err)
	}
	want := policies.MeshSettingsSpec{
		RootNamespace: "istio-system", TrustDomain: "prod.example", TrustDomainAliases: []string{"old.example", "cluster.local"},
		PathNormalization: "MERGE_SLASHES", ExtensionProviders: []string{"meshguard", "otel"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v\nwant %+v", got, want)
	}
	for _, bad := range []string{"trustDomain: [a]", "pathNormalization: {normalization: SOMETIMES}", ": :"} {
		if _, err := meshSettingsFromConfigMap(meshConfigMap("istio-system", "istio", bad)); err == nil {
			t.Errorf("%q read without error", bad)
		}
	}
	if got, err := meshSettingsFromConfigMap(meshConfigMap("istio-system", "istio", "pathNormalization: {normalization: NONE}")); err != nil || got.PathNormalization != "" {
		t.Errorf("NONE: %+v %v, want meshguard's default", got, err)
	}
}

func TestMergeMeshSettings(t *testing.T) {
	istio := policies.MeshSettingsSpec{TrustDomain: "prod.example", ExtensionProviders: []string{"meshguard"}}
	got, err := mergeMeshSettings(istio, policies.MeshSettingsSpec{MultipleCustomProviders: true, TrustDomain: "prod.example"})
	if err != nil || got.TrustDomain != "prod.example" || !got.MultipleCustomProviders || len(got.ExtensionProviders) != 1 {
		t.Errorf("merge = %+v, %v", got, err)
	}
	if _, err := mergeMeshSettings(istio, policies.MeshSettingsSpec{TrustDomain: "cluster.local"}); err == nil || !strings.Contains(err.Error(), "trustDomain") {
		t.Errorf("a disagreement on the trust domain: err = %v", err)
	}
	if _, err := mergeMeshSettings(istio, policies.MeshSettingsSpec{ExtensionProviders: []string{"opa"}}); err == nil {
		t.Error("a disagreement on the extension providers merged")
	}
}

// The watcher reads Istio's MeshConfig in Istio mode: its trust domain
// reaches the pushed set, a change is pushed, and a MeshConfig that
// disagrees with the MeshSettings object stops the pushes.
func TestWatcherReadsMeshConfig(t *testing.T) {
	noLeaks(t)
	kube := kubefake.NewSimpleClientset(
		meshConfigMap("istio-system", "istio", sampleMesh),
		meshConfigMap("istio-system", "other", "trustDomain: wrong.example"),
		meshConfigMap("default", "istio", "trustDomain: wrong.example"),
	)
	sink := newRecordingSink()
	w := runWatcher(t, Options{Istio: istiofake.NewSimpleClientset(), Dynamic: fakeDynamic(), Kube: kube, Sink: sink})
	sink.next(t, "Istio's trust domain", func(s policies.Set) bool {
		return s.Settings.TrustDomain == "prod.example" && len(s.Settings.ExtensionProviders) == 2
	})

	cm := meshConfigMap("istio-system", "istio", "trustDomain: next.example")
	if _, err := kube.CoreV1().ConfigMaps("istio-system").Update(context.Background(), cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	sink.next(t, "the changed trust domain", func(s policies.Set) bool { return s.Settings.TrustDomain == "next.example" })

	cm = meshConfigMap("istio-system", "istio", "trustDomain: [not, a, string]")
	if _, err := kube.CoreV1().ConfigMaps("istio-system").Update(context.Background(), cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for (w.Status().LastErr == nil || !strings.Contains(w.Status().LastErr.Error(), "MeshConfig")) && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if err := w.Status().LastErr; err == nil || !strings.Contains(err.Error(), "MeshConfig") {
		t.Fatalf("an unreadable MeshConfig was pushed past: last error %v", err)
	}
}

func TestWatcherRefusesMeshConfigThatDisagrees(t *testing.T) {
	noLeaks(t)
	kube := kubefake.NewSimpleClientset(meshConfigMap("istio-system", "istio", "trustDomain: prod.example"))
	dyn := fakeDynamic(unstructuredObj("MeshSettings", "istio-system", "mesh", map[string]any{"trustDomain": "cluster.local"}))
	sink := newRecordingSink()
	w := runWatcher(t, Options{Istio: istiofake.NewSimpleClientset(), Dynamic: dyn, Kube: kube, Sink: sink})
	deadline := time.Now().Add(5 * time.Second)
	for w.Status().Pushes == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if err := w.Status().LastErr; err == nil || !strings.Contains(err.Error(), "disagree") {
		t.Fatalf("last error = %v", err)
	}
	sink.mu.Lock()
	defer sink.mu.Unlock()
	if len(sink.sets) != 0 {
		t.Error("a set was pushed under settings Istio and meshguard read differently")
	}
}
