// Package deploy_test checks everything under deploy/: the Helm chart is
// rendered in-process with Helm's engine for several value sets and every
// rendered document is decoded strictly into its Kubernetes or Istio Go type;
// the CRDs are regenerated from the policy model and compared; the SPIRE
// registration, the Istio examples and the Envoy bootstrap are decoded
// strictly; the Grafana dashboard's metrics are checked against the code.
package deploy_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	meshapi "istio.io/api/mesh/v1alpha1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/yaml"

	"github.com/meshguard/meshguard/controlplane/mesh"
	statekube "github.com/meshguard/meshguard/controlplane/state/kube"
	"github.com/meshguard/meshguard/internal/crdgen"
	"github.com/meshguard/meshguard/internal/testbed/kubestrict"
	"github.com/meshguard/meshguard/internal/xdsvalidate"
)

var update = flag.Bool("update", false, "regenerate deploy/crds and the chart's crds/ from the policy model")

const chartDir = "helm/meshguard"

// releaseNamespace is where the tests install the chart.
const releaseNamespace = "meshguard"

func decoder(t *testing.T) *kubestrict.Decoder {
	t.Helper()
	d, err := kubestrict.New(monitoringv1.AddToScheme)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// allCRDs are the policy kinds' and the control plane state's.
func allCRDs() []*apiextensionsv1.CustomResourceDefinition {
	out := crdgen.CRDs()
	for _, k := range statekube.Kinds {
		out = append(out, crdgen.CRD(k))
	}
	return out
}

// TestCRDsUpToDate regenerates meshguard's CRDs from the policy model and
// the state types and compares them with deploy/crds and the chart's crds/.
func TestCRDsUpToDate(t *testing.T) {
	d := decoder(t)
	for _, c := range allCRDs() {
		want, err := crdgen.YAML(c)
		if err != nil {
			t.Fatal(err)
		}
		for _, dir := range []string{"crds", filepath.Join(chartDir, "crds")} {
			path := filepath.Join(dir, c.Name+".yaml")
			if *update {
				if err := os.MkdirAll(dir, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, want, 0o644); err != nil {
					t.Fatal(err)
				}
				continue
			}
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (go test ./deploy -update)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s is not what the policy model generates; run go test ./deploy -update", path)
			}
			obj, _, err := d.Decode(got)
			if err != nil {
				t.Fatalf("%s: %v", path, err)
			}
			crd, ok := obj.(*apiextensionsv1.CustomResourceDefinition)
			if !ok || crd.Spec.Group != crdgen.Group || len(crd.Spec.Versions) != 1 || crd.Spec.Versions[0].Schema == nil {
				t.Errorf("%s: %T %+v", path, obj, obj)
			}
		}
	}
}

// rendered is one document the chart produced.
type rendered struct {
	template string
	doc      []byte
	obj      runtime.Object
}

func render(t *testing.T, values map[string]any) []rendered {
	t.Helper()
	ch, err := loader.Load(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	vals, err := chartutil.ToRenderValues(ch, values, chartutil.ReleaseOptions{Name: "meshguard", Namespace: releaseNamespace, IsInstall: true, Revision: 1}, chartutil.DefaultCapabilities)
	if err != nil {
		t.Fatal(err)
	}
	files, err := engine.Render(ch, vals)
	if err != nil {
		t.Fatalf("render: %v", err)
	}
	d := decoder(t)
	var out []rendered
	names := slices.Sorted(maps.Keys(files))
	for _, name := range names {
		if strings.HasSuffix(name, "NOTES.txt") || strings.HasSuffix(name, ".tpl") {
			continue
		}
		docs, err := kubestrict.Documents([]byte(files[name]))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for _, doc := range docs {
			obj, _, err := d.Decode(doc)
			if err != nil {
				t.Fatalf("%s: %v\n%s", name, err, doc)
			}
			out = append(out, rendered{template: name, doc: doc, obj: obj})
		}
	}
	// The chart's CRDs are installed by Helm from crds/, not rendered.
	for _, f := range ch.CRDObjects() {
		obj, _, err := d.Decode(f.File.Data)
		if err != nil {
			t.Fatalf("%s: %v", f.Filename, err)
		}
		out = append(out, rendered{template: f.Filename, doc: f.File.Data, obj: obj})
	}
	return out
}

func kinds(objs []rendered) map[string]int {
	m := map[string]int{}
	for _, r := range objs {
		m[fmt.Sprintf("%T", r.obj)]++
	}
	return m
}

// chartCases are the values combinations the tests render (TestHelmChart)
// and send to the API server (TestHelmChartDryRun).
var chartCases = []struct {
	name   string
	values map[string]any
	want   map[string]int // object counts by Go type
	check  func(t *testing.T, objs []rendered)
}{
	{
		name:   "defaults",
		values: nil,
		want: map[string]int{
			"*v1.Deployment": 2, "*v1.Service": 2, "*v1.ServiceAccount": 2, "*v1.PodDisruptionBudget": 2,
			// The control plane watches the cluster, keeps its state
			// there and elects a leader.
			"*v1.ClusterRole": 1, "*v1.ClusterRoleBinding": 1, "*v1.Role": 3, "*v1.RoleBinding": 3,
			"*v1.CustomResourceDefinition": len(crdgen.Kinds) + len(statekube.Kinds),
		},
		check: func(t *testing.T, objs []rendered) {
			checkWorkloads(t, objs)
			checkArgs(t, objs)
			checkKubernetesAccess(t, objs, true, true)
			if args := controlPlaneArgs(t, objs); !slices.Contains(args, "--reporter-id=spiffe://cluster.local/ns/*/sa/*") {
				t.Errorf("default reporters: %v", args)
			}
		},
	},
	{
		name:   "control plane without the Kubernetes API or a record store",
		values: map[string]any{"controlplane": map[string]any{"kubernetes": map[string]any{"enabled": false}, "records": map[string]any{"enabled": false}}},
		want:   map[string]int{"*v1.ClusterRole": 0, "*v1.ClusterRoleBinding": 0, "*v1.Role": 0, "*v1.RoleBinding": 0},
		check: func(t *testing.T, objs []rendered) {
			checkArgs(t, objs)
			checkKubernetesAccess(t, objs, false, false)
			checkStateVolume(t, objs, "")
			if args := controlPlaneArgs(t, objs); !slices.Contains(args, "--records=off") {
				t.Errorf("records disabled: %v", args)
			}
		},
	},
	{
		name: "embedded state on a persistent volume, reporters named",
		values: map[string]any{"controlplane": map[string]any{"kubernetes": map[string]any{"enabled": false}, "stateClaim": "meshguard-state",
			"reporterIds": []any{"spiffe://cluster.local/ns/shop/sa/*", "spiffe://cluster.local/ns/bank/sa/*"}}},
		want: map[string]int{"*v1.Role": 0},
		check: func(t *testing.T, objs []rendered) {
			checkArgs(t, objs)
			checkStateVolume(t, objs, "meshguard-state")
			args := controlPlaneArgs(t, objs)
			if !slices.Contains(args, "--reporter-id=spiffe://cluster.local/ns/shop/sa/*") || !slices.Contains(args, "--reporter-id=spiffe://cluster.local/ns/bank/sa/*") ||
				slices.Contains(args, "--reporter-id=spiffe://cluster.local/ns/*/sa/*") {
				t.Errorf("reporter args %v", args)
			}
		},
	},
	{
		name:   "watching without leader election",
		values: map[string]any{"controlplane": map[string]any{"kubernetes": map[string]any{"leaderElection": false}}},
		want:   map[string]int{"*v1.ClusterRole": 1, "*v1.ClusterRoleBinding": 1, "*v1.Role": 2, "*v1.RoleBinding": 2},
		check: func(t *testing.T, objs []rendered) {
			checkArgs(t, objs)
			checkKubernetesAccess(t, objs, true, false)
		},
	},
	{
		name: "service monitors, policies, extra args",
		values: map[string]any{
			"metrics":      map[string]any{"podAnnotations": false, "serviceMonitor": map[string]any{"enabled": true, "labels": map[string]any{"release": "prom"}}},
			"controlplane": map[string]any{"policyConfigMap": "mesh-policies", "replicas": 1, "extraArgs": []any{"--mesh=/etc/mesh.yaml"}},
			"authz":        map[string]any{"ports": map[string]any{"http": 9193}, "jwtAudiences": []any{"meshguard"}, "allowedCallers": []any{"spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway"}},
			"image":        map[string]any{"tag": "v9.9.9"},
		},
		want: map[string]int{"*v1.ServiceMonitor": 2, "*v1.Deployment": 2},
		check: func(t *testing.T, objs []rendered) {
			checkWorkloads(t, objs)
			checkArgs(t, objs)
			for _, r := range objs {
				if dep, ok := r.obj.(*appsv1.Deployment); ok {
					c := dep.Spec.Template.Spec.Containers[0]
					if !strings.HasSuffix(c.Image, ":v9.9.9") {
						t.Errorf("%s image %s", dep.Name, c.Image)
					}
					if _, ok := dep.Spec.Template.Annotations["prometheus.io/scrape"]; ok {
						t.Errorf("%s has scrape annotations although disabled", dep.Name)
					}
					if strings.Contains(dep.Name, "controlplane") && (!slices.Contains(c.Args, "--policy=/etc/meshguard/policies") || !slices.Contains(c.Args, "--mesh=/etc/mesh.yaml")) {
						t.Errorf("controlplane args %v", c.Args)
					}
					if strings.Contains(dep.Name, "authz") && (!slices.Contains(c.Args, "--http-addr=:9193") || !slices.Contains(c.Args, "--jwt-audience=meshguard") ||
						slices.Contains(c.Args, "--no-jwt-svid") || slices.ContainsFunc(c.Args, func(a string) bool { return strings.HasPrefix(a, "--allowed-caller-trust-domain") })) {
						t.Errorf("authz args %v", c.Args)
					}
				}
			}
		},
	},
	{
		name:   "authz only",
		values: map[string]any{"controlplane": map[string]any{"enabled": false}, "imagePullSecrets": []any{map[string]any{"name": "regcred"}}},
		want:   map[string]int{"*v1.Deployment": 1, "*v1.ClusterRole": 0, "*v1.ServiceAccount": 1},
		check: func(t *testing.T, objs []rendered) {
			checkWorkloads(t, objs)
			checkArgs(t, objs)
			for _, r := range objs {
				if dep, ok := r.obj.(*appsv1.Deployment); ok {
					if len(dep.Spec.Template.Spec.ImagePullSecrets) != 1 {
						t.Errorf("pull secrets %v", dep.Spec.Template.Spec.ImagePullSecrets)
					}
					for _, a := range dep.Spec.Template.Spec.Containers[0].Args {
						if strings.HasPrefix(a, "--control-plane=") {
							t.Errorf("authz points at a control plane that is not installed: %s", a)
						}
					}
				}
			}
		},
	},
}

func TestHelmChart(t *testing.T) {
	for _, tt := range chartCases {
		t.Run(tt.name, func(t *testing.T) {
			objs := render(t, tt.values)
			got := kinds(objs)
			for k, n := range tt.want {
				if got[k] != n {
					t.Errorf("%s: %d, want %d (all: %v)", k, got[k], n, got)
				}
			}
			tt.check(t, objs)
		})
	}
}

// checkKubernetesAccess: with watch, the control plane runs with
// --kubernetes, its API token, and a ClusterRole bound to its service
// account that reads every kind it watches (Istio AuthorizationPolicies and
// each meshguard CRD) and writes Events; with elect, --leader-election and a
// Role on Leases in the release namespace. Without them, neither.
func checkKubernetesAccess(t *testing.T, objs []rendered, watch, elect bool) {
	t.Helper()
	for _, r := range objs {
		dep, ok := r.obj.(*appsv1.Deployment)
		if !ok || !strings.Contains(dep.Name, "controlplane") {
			continue
		}
		ps := dep.Spec.Template.Spec
		args := ps.Containers[0].Args
		if slices.Contains(args, "--kubernetes") != watch || slices.Contains(args, "--leader-election") != elect {
			t.Errorf("controlplane args %v (watch %v, elect %v)", args, watch, elect)
		}
		if ps.AutomountServiceAccountToken == nil || *ps.AutomountServiceAccountToken != watch {
			t.Errorf("automountServiceAccountToken %v, want %v", ps.AutomountServiceAccountToken, watch)
		}
		ns := false
		for _, e := range ps.Containers[0].Env {
			ns = ns || (e.Name == "POD_NAMESPACE" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.namespace")
		}
		if !ns {
			t.Error("controlplane has no POD_NAMESPACE (the Lease's namespace)")
		}
	}
	if !watch {
		return
	}
	can := func(rules []rbacv1.PolicyRule, group, resource, verb string) bool {
		for _, r := range rules {
			if slices.Contains(r.APIGroups, group) && slices.Contains(r.Resources, resource) && slices.Contains(r.Verbs, verb) {
				return true
			}
		}
		return false
	}
	var lease, stateRole, meshConfig *rbacv1.Role
	var cluster *rbacv1.ClusterRole
	bound := map[string]bool{}
	for _, r := range objs {
		switch o := r.obj.(type) {
		case *rbacv1.ClusterRole:
			cluster = o
		case *rbacv1.Role:
			if strings.HasSuffix(o.Name, "-state") {
				stateRole = o
			} else if strings.HasSuffix(o.Name, "-istio-mesh-config") {
				meshConfig = o
			} else {
				lease = o
			}
		case *rbacv1.ClusterRoleBinding:
			for _, s := range o.Subjects {
				bound[o.RoleRef.Kind+"/"+o.RoleRef.Name+"→"+s.Namespace+"/"+s.Name] = true
			}
		case *rbacv1.RoleBinding:
			for _, s := range o.Subjects {
				bound[o.RoleRef.Kind+"/"+o.RoleRef.Name+"→"+s.Namespace+"/"+s.Name] = true
			}
		}
	}
	if cluster == nil {
		t.Fatal("no ClusterRole")
	}
	for _, verb := range []string{"get", "list", "watch"} {
		for _, res := range []string{"authorizationpolicies", "requestauthentications"} {
			if !can(cluster.Rules, "security.istio.io", res, verb) {
				t.Errorf("ClusterRole cannot %s %s", verb, res)
			}
		}
		for _, k := range crdgen.Kinds {
			if !can(cluster.Rules, crdgen.Group, k.Plural, verb) {
				t.Errorf("ClusterRole cannot %s %s.%s", verb, k.Plural, crdgen.Group)
			}
		}
	}
	if !can(cluster.Rules, "", "events", "create") {
		t.Error("ClusterRole cannot create events")
	}
	sa := "meshguard/meshguard-controlplane"
	if !bound["ClusterRole/"+cluster.Name+"→"+sa] {
		t.Errorf("ClusterRole %s not bound to %s: %v", cluster.Name, sa, bound)
	}
	// Istio's MeshConfig: that one ConfigMap in istiod's namespace.
	if meshConfig == nil || meshConfig.Namespace != "istio-system" || !bound["Role/"+meshConfig.Name+"→"+sa] {
		t.Fatalf("no Role bound to %s to read Istio's MeshConfig: %+v %v", sa, meshConfig, bound)
	}
	for _, verb := range []string{"get", "list", "watch"} {
		if !can(meshConfig.Rules, "", "configmaps", verb) {
			t.Errorf("Role cannot %s configmaps", verb)
		}
	}
	if rn := meshConfig.Rules[0].ResourceNames; len(rn) != 1 || rn[0] != "istio" {
		t.Errorf("the MeshConfig Role reads %v, want only the ConfigMap istio", rn)
	}
	// The state kinds: read and written in the release namespace only.
	if stateRole == nil {
		t.Fatal("no Role for the state kinds")
	}
	for _, k := range statekube.Kinds {
		for _, verb := range []string{"get", "list", "watch", "create", "update", "delete"} {
			if !can(stateRole.Rules, crdgen.Group, k.Plural, verb) {
				t.Errorf("state Role cannot %s %s", verb, k.Plural)
			}
		}
		if can(cluster.Rules, crdgen.Group, k.Plural, "create") || can(cluster.Rules, crdgen.Group, k.Plural, "update") {
			t.Errorf("the ClusterRole may write %s in every namespace", k.Plural)
		}
	}
	if stateRole.Namespace != "meshguard" || !bound["Role/"+stateRole.Name+"→"+sa] {
		t.Errorf("state Role %s/%s not bound to %s: %v", stateRole.Namespace, stateRole.Name, sa, bound)
	}
	if !elect {
		return
	}
	if lease == nil {
		t.Fatal("no Role for the leader-election Lease")
	}
	for _, verb := range []string{"get", "create", "update"} {
		if !can(lease.Rules, "coordination.k8s.io", "leases", verb) {
			t.Errorf("Role cannot %s leases", verb)
		}
	}
	if lease.Namespace != "meshguard" || !bound["Role/"+lease.Name+"→"+sa] {
		t.Errorf("Role %s/%s not bound to %s: %v", lease.Namespace, lease.Name, sa, bound)
	}
}

func controlPlaneArgs(t *testing.T, objs []rendered) []string {
	t.Helper()
	for _, r := range objs {
		if dep, ok := r.obj.(*appsv1.Deployment); ok && strings.HasSuffix(dep.Name, "-controlplane") {
			return dep.Spec.Template.Spec.Containers[0].Args
		}
	}
	t.Fatal("no control plane Deployment")
	return nil
}

// checkStateVolume: without the Kubernetes API the control plane keeps its
// state in --state-dir on a volume: the claim when one is named, else an
// emptyDir.
func checkStateVolume(t *testing.T, objs []rendered, claim string) {
	t.Helper()
	for _, r := range objs {
		dep, ok := r.obj.(*appsv1.Deployment)
		if !ok || !strings.HasSuffix(dep.Name, "-controlplane") {
			continue
		}
		ps := dep.Spec.Template.Spec
		if !slices.Contains(ps.Containers[0].Args, "--state-dir=/var/lib/meshguard") {
			t.Errorf("args %v: no --state-dir", ps.Containers[0].Args)
		}
		mounted := slices.ContainsFunc(ps.Containers[0].VolumeMounts, func(m corev1.VolumeMount) bool {
			return m.Name == "state" && m.MountPath == "/var/lib/meshguard" && !m.ReadOnly
		})
		var vol *corev1.Volume
		for i := range ps.Volumes {
			if ps.Volumes[i].Name == "state" {
				vol = &ps.Volumes[i]
			}
		}
		switch {
		case !mounted || vol == nil:
			t.Errorf("state volume mounted %v, volume %+v", mounted, vol)
		case claim == "" && vol.EmptyDir == nil:
			t.Errorf("state volume %+v, want an emptyDir", vol)
		case claim != "" && (vol.PersistentVolumeClaim == nil || vol.PersistentVolumeClaim.ClaimName != claim):
			t.Errorf("state volume %+v, want claim %s", vol, claim)
		}
		return
	}
	t.Fatal("no control plane Deployment")
}

// checkWorkloads: every Deployment is non-root with the SPIFFE socket and
// both probes, and its Service and PodDisruptionBudget select its pods.
// checkAuthzShutdown: the authz pod stops in the order that loses nothing
// — preStop sleep while the endpoint goes away, then on SIGTERM not ready
// for --shutdown-delay (longer than a readiness probe period, so the
// kubelet sees it), drain, decision log — and the grace period covers it.
func checkAuthzShutdown(t *testing.T, pod corev1.PodSpec) {
	t.Helper()
	c := pod.Containers[0]
	arg := func(name string) time.Duration {
		for _, a := range c.Args {
			if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
				d, err := time.ParseDuration(v)
				if err != nil {
					t.Errorf("--%s=%s: %v", name, v, err)
				}
				return d
			}
		}
		t.Errorf("authz args lack --%s: %v", name, c.Args)
		return 0
	}
	delay, grace, flush := arg("shutdown-delay"), arg("shutdown-grace"), arg("decision-log-flush-timeout")
	var preStop time.Duration
	if c.Lifecycle == nil || c.Lifecycle.PreStop == nil || c.Lifecycle.PreStop.Sleep == nil {
		t.Errorf("authz has no preStop sleep: %+v", c.Lifecycle)
	} else {
		preStop = time.Duration(c.Lifecycle.PreStop.Sleep.Seconds) * time.Second
	}
	rp := c.ReadinessProbe
	if rp == nil || time.Duration(rp.PeriodSeconds*rp.FailureThreshold)*time.Second >= delay {
		t.Errorf("readiness probe %+v does not see the not-ready delay %s", rp, delay)
	}
	if pod.TerminationGracePeriodSeconds == nil || time.Duration(*pod.TerminationGracePeriodSeconds)*time.Second < preStop+delay+grace+flush {
		t.Errorf("terminationGracePeriodSeconds %v < preStop %s + delay %s + grace %s + flush %s",
			pod.TerminationGracePeriodSeconds, preStop, delay, grace, flush)
	}
}

func checkWorkloads(t *testing.T, objs []rendered) {
	t.Helper()
	for _, r := range objs {
		dep, ok := r.obj.(*appsv1.Deployment)
		if !ok {
			continue
		}
		pod := dep.Spec.Template.Spec
		ps := pod.SecurityContext
		if ps == nil || ps.RunAsNonRoot == nil || !*ps.RunAsNonRoot || ps.RunAsUser == nil || *ps.RunAsUser == 0 {
			t.Errorf("%s: pod may run as root", dep.Name)
		}
		var csi bool
		for _, v := range pod.Volumes {
			if v.CSI != nil && v.CSI.Driver == "csi.spiffe.io" && v.CSI.ReadOnly != nil && *v.CSI.ReadOnly {
				csi = true
			}
		}
		if !csi {
			t.Errorf("%s: no read-only csi.spiffe.io volume", dep.Name)
		}
		c := pod.Containers[0]
		if c.SecurityContext == nil || c.SecurityContext.ReadOnlyRootFilesystem == nil || !*c.SecurityContext.ReadOnlyRootFilesystem ||
			c.SecurityContext.AllowPrivilegeEscalation == nil || *c.SecurityContext.AllowPrivilegeEscalation {
			t.Errorf("%s: container security context %+v", dep.Name, c.SecurityContext)
		}
		if c.LivenessProbe == nil || c.LivenessProbe.HTTPGet == nil || c.LivenessProbe.HTTPGet.Path != "/healthz" ||
			c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet == nil || c.ReadinessProbe.HTTPGet.Path != "/readyz" {
			t.Errorf("%s: probes %+v %+v", dep.Name, c.LivenessProbe, c.ReadinessProbe)
		}
		if !hasEnv(c.Env, "SPIFFE_ENDPOINT_SOCKET") {
			t.Errorf("%s: no SPIFFE_ENDPOINT_SOCKET", dep.Name)
		}
		if strings.HasSuffix(dep.Name, "-authz") {
			checkAuthzShutdown(t, pod)
			// --gc-percent lets the heap grow between collections; the
			// soft limit keeps it under the container's.
			ok := false
			for _, e := range c.Env {
				if e.Name == "GOMEMLIMIT" && e.ValueFrom != nil && e.ValueFrom.ResourceFieldRef != nil && e.ValueFrom.ResourceFieldRef.Resource == "limits.memory" {
					ok = true
				}
			}
			if !ok {
				t.Errorf("%s: no GOMEMLIMIT from limits.memory", dep.Name)
			}
		}
		podLabels := labels.Set(dep.Spec.Template.Labels)
		sel := labels.SelectorFromSet(dep.Spec.Selector.MatchLabels)
		if !sel.Matches(podLabels) {
			t.Errorf("%s: selector does not match its pods", dep.Name)
		}
		var svc, pdb bool
		for _, o := range objs {
			switch x := o.obj.(type) {
			case *corev1.Service:
				if x.Name == dep.Name && labels.SelectorFromSet(x.Spec.Selector).Matches(podLabels) {
					svc = true
					for _, p := range x.Spec.Ports {
						if !hasPort(c.Ports, p.TargetPort.StrVal) {
							t.Errorf("service %s targets port %s the container does not have", x.Name, p.TargetPort.StrVal)
						}
					}
				}
			case *policyv1.PodDisruptionBudget:
				if x.Name == dep.Name && labels.SelectorFromSet(x.Spec.Selector.MatchLabels).Matches(podLabels) {
					pdb = true
				}
			}
		}
		if !svc || !pdb {
			t.Errorf("%s: service %v, pdb %v", dep.Name, svc, pdb)
		}
	}
}

func hasEnv(env []corev1.EnvVar, name string) bool {
	for _, e := range env {
		if e.Name == name {
			return true
		}
	}
	return false
}

func hasPort(ports []corev1.ContainerPort, name string) bool {
	for _, p := range ports {
		if p.Name == name {
			return true
		}
	}
	return false
}

// TestIstioExamples decodes every example in deploy/istio strictly.
func TestIstioExamples(t *testing.T) {
	d := decoder(t)
	files, err := filepath.Glob("istio/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no examples: %v", err)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if filepath.Base(f) == "policies.yaml" {
			continue // meshguard's input, not Kubernetes objects
		}
		if filepath.Base(f) == "mesh-config.yaml" {
			js, err := yaml.YAMLToJSONStrict(data)
			if err != nil {
				t.Fatal(err)
			}
			var values struct {
				MeshConfig json.RawMessage `json:"meshConfig"`
			}
			if err := json.Unmarshal(js, &values); err != nil {
				t.Fatal(err)
			}
			var mc meshapi.MeshConfig
			if err := protojson.Unmarshal(values.MeshConfig, &mc); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			p := mc.GetExtensionProviders()
			if len(p) != 1 || p[0].GetEnvoyExtAuthzGrpc() == nil || p[0].GetEnvoyExtAuthzGrpc().GetFailOpen() {
				t.Errorf("%s: provider %v", f, p)
			}
			continue
		}
		docs, err := kubestrict.Documents(data)
		if err != nil {
			t.Fatal(err)
		}
		for _, doc := range docs {
			if _, _, err := d.Decode(doc); err != nil {
				t.Errorf("%s: %v", f, err)
			}
		}
	}
}

// clusterSPIFFEID mirrors spire-controller-manager v0.6.3's
// spire.spiffe.io/v1alpha1 ClusterSPIFFEID (api/v1alpha1/clusterspiffeid_types.go)
// field for field. Its Go package cannot be imported here: it needs an older
// controller-runtime than the one the envtest tests use.
type clusterSPIFFEID struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name string `json:"name"`
	} `json:"metadata"`
	Spec struct {
		SPIFFEIDTemplate          string                `json:"spiffeIDTemplate"`
		TTL                       metav1.Duration       `json:"ttl"`
		JWTTTL                    metav1.Duration       `json:"jwtTtl"`
		DNSNameTemplates          []string              `json:"dnsNameTemplates,omitempty"`
		WorkloadSelectorTemplates []string              `json:"workloadSelectorTemplates,omitempty"`
		FederatesWith             []string              `json:"federatesWith,omitempty"`
		NamespaceSelector         *metav1.LabelSelector `json:"namespaceSelector,omitempty"`
		PodSelector               *metav1.LabelSelector `json:"podSelector,omitempty"`
		Admin                     bool                  `json:"admin,omitempty"`
		Downstream                bool                  `json:"downstream,omitempty"`
		AutoPopulateDNSNames      bool                  `json:"autoPopulateDNSNames,omitempty"`
		ClassName                 string                `json:"className,omitempty"`
		Fallback                  bool                  `json:"fallback,omitempty"`
		Hint                      string                `json:"hint,omitempty"`
	} `json:"spec"`
}

func TestSPIRERegistration(t *testing.T) {
	data, err := os.ReadFile("spire/clusterspiffeid.yaml")
	if err != nil {
		t.Fatal(err)
	}
	docs, err := kubestrict.Documents(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(docs) == 0 {
		t.Fatal("no ClusterSPIFFEID")
	}
	for _, doc := range docs {
		var id clusterSPIFFEID
		if err := yaml.UnmarshalStrict(doc, &id); err != nil {
			t.Fatal(err)
		}
		if id.APIVersion != "spire.spiffe.io/v1alpha1" || id.Kind != "ClusterSPIFFEID" {
			t.Errorf("%s: %s %s", id.Metadata.Name, id.APIVersion, id.Kind)
		}
		if !strings.HasPrefix(id.Spec.SPIFFEIDTemplate, "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/") {
			t.Errorf("%s: SPIFFE ID template %q is not of Istio's form", id.Metadata.Name, id.Spec.SPIFFEIDTemplate)
		}
		if id.Spec.PodSelector == nil {
			t.Errorf("%s: selects every pod", id.Metadata.Name)
		}
	}
}

// TestEnvoyBootstrap decodes the plain-Envoy bootstrap strictly into
// envoy.config.bootstrap.v3.Bootstrap and validates it in depth: its
// generated validation and that of every message packed in it (TLS
// contexts, protocol options). Its node names a workload the control plane
// finds.
func TestEnvoyBootstrap(t *testing.T) {
	data, err := os.ReadFile("envoy/bootstrap.yaml")
	if err != nil {
		t.Fatal(err)
	}
	js, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		t.Fatal(err)
	}
	var b bootstrapv3.Bootstrap
	if err := (protojson.UnmarshalOptions{}).Unmarshal(js, &b); err != nil {
		t.Fatalf("strict decode: %v", err)
	}
	if err := xdsvalidate.All(&b); err != nil {
		t.Fatalf("validate: %v", err)
	}
	if a := b.GetAdmin().GetAddress().GetSocketAddress().GetAddress(); a != "127.0.0.1" {
		t.Errorf("admin listens on %q, want loopback", a)
	}
	ads := b.GetDynamicResources().GetAdsConfig()
	if ads.GetApiType().String() != "GRPC" || ads.GetGrpcServices()[0].GetEnvoyGrpc().GetClusterName() != "meshguard-controlplane" {
		t.Errorf("ADS = %v", ads)
	}
	if b.GetNode().GetId() == "" || b.GetNode().GetCluster() == "" {
		t.Error("node id and cluster are required by the control plane")
	}
	// The control plane matches a node to its workload by node.cluster
	// (or node.id) "<name>.<namespace>": the example's web in shop.
	m, err := mesh.Parse([]byte(`
apiVersion: meshguard.dev/v1alpha1
kind: Mesh
metadata: {name: example}
spec:
  trustDomain: cluster.local
  authz: {address: meshguard-authz.meshguard.svc.cluster.local, port: 9191, spiffeID: spiffe://cluster.local/ns/meshguard/sa/meshguard-authz}
  controlPlane: {address: meshguard-controlplane.meshguard.svc.cluster.local, port: 18000, spiffeID: spiffe://cluster.local/ns/meshguard/sa/meshguard-controlplane}
  wasm: {file: /etc/meshguard/meshguard-filter.wasm}
  workloads:
  - {name: web, namespace: shop, spiffeID: spiffe://cluster.local/ns/shop/sa/web, inbound: [{name: http, port: 15006, appPort: 8080, routes: [{name: all, prefix: /}]}]}
`))
	if err != nil {
		t.Fatal(err)
	}
	if w, ok := m.Lookup(b.GetNode().GetCluster(), b.GetNode().GetId()); !ok {
		t.Errorf("node cluster %q, id %q name no workload: the control plane would send it the bundle only", b.GetNode().GetCluster(), b.GetNode().GetId())
	} else if got := b.GetNode().GetMetadata().GetFields()["spiffe_id"].GetStringValue(); got != w.ID.String() {
		t.Errorf("node metadata spiffe_id %q, the workload's ID is %s", got, w.ID)
	}
	var spire bool
	for _, c := range b.GetStaticResources().GetClusters() {
		if c.GetName() == "meshguard-controlplane" && c.GetTransportSocket() == nil {
			t.Error("control plane cluster without TLS")
		}
		if c.GetName() == "meshguard-controlplane" {
			// A silent partition must end the ADS stream (docs/faults.md).
			var opts httpv3.HttpProtocolOptions
			if err := c.GetTypedExtensionProtocolOptions()["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].UnmarshalTo(&opts); err != nil {
				t.Errorf("control plane cluster protocol options: %v", err)
			}
			ka := opts.GetExplicitHttpConfig().GetHttp2ProtocolOptions().GetConnectionKeepalive()
			if ka.GetInterval().AsDuration() < 5*time.Second || ka.GetTimeout().AsDuration() <= 0 {
				t.Errorf("control plane cluster HTTP/2 keepalive %v: want an interval of at least 5s (the control plane's ping floor) and a timeout", ka)
			}
		}
		for _, e := range c.GetLoadAssignment().GetEndpoints() {
			for _, le := range e.GetLbEndpoints() {
				if p := le.GetEndpoint().GetAddress().GetPipe(); p != nil && strings.HasSuffix(p.GetPath(), "spire-agent.sock") {
					spire = true
				}
			}
		}
	}
	if !spire {
		t.Error("no SDS cluster on the SPIRE agent socket")
	}
}

// metricRef matches meshguard metric names in PromQL.
var metricRef = regexp.MustCompile(`\bmeshguard_[a-z0-9_]+\b`)

// metricOwners maps metric name prefixes to the package that registers
// them, longest prefix first.
var metricOwners = []struct{ prefix, dir string }{
	{"meshguard_controlplane_kube_", "../controlplane/istio"},
	{"meshguard_controlplane_bundle_builds", "../controlplane/store"},
	{"meshguard_controlplane_bundle_documents", "../controlplane/store"},
	{"meshguard_controlplane_", "../controlplane/xdsserver"},
	{"meshguard_authz_", "../authz"},
	{"meshguard_wasm_", "../wasm"},
}

// TestGrafanaDashboard parses the dashboard and checks that every metric it
// queries is registered by the code. A component not yet in this tree is
// reported and skipped; once it is, its metrics are checked.
func TestGrafanaDashboard(t *testing.T) {
	data, err := os.ReadFile("grafana/meshguard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title  string `json:"title"`
		UID    string `json:"uid"`
		Panels []struct {
			Title   string `json:"title"`
			Type    string `json:"type"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatal(err)
	}
	if dash.UID == "" || len(dash.Panels) == 0 {
		t.Fatal("dashboard has no uid or panels")
	}
	used := map[string]bool{}
	for _, p := range dash.Panels {
		if p.Type != "row" && len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			for _, m := range metricRef.FindAllString(tg.Expr, -1) {
				used[m] = true
			}
		}
	}
	sources := map[string]string{} // dir -> concatenated Go source
	for _, m := range slices.Sorted(maps.Keys(used)) {
		base := m
		for _, suf := range []string{"_bucket", "_count", "_sum"} {
			base = strings.TrimSuffix(base, suf)
		}
		dir := ""
		for _, o := range metricOwners {
			if strings.HasPrefix(base, o.prefix) {
				dir = o.dir
				break
			}
		}
		if dir == "" {
			t.Errorf("%s: no known owner", m)
			continue
		}
		src, ok := sources[dir]
		if !ok {
			src = goSource(t, dir)
			sources[dir] = src
		}
		if src == "" {
			t.Logf("%s: %s is not in this tree; not checked", m, dir)
			continue
		}
		if !strings.Contains(src, `"`+base+`"`) && !strings.Contains(src, `"`+base+`.`) {
			t.Errorf("%s is queried by the dashboard but not registered in %s", base, dir)
		}
	}
}

// goSource returns the non-test Go source under dir, or "" if dir does not
// exist.
func goSource(t *testing.T, dir string) string {
	t.Helper()
	if _, err := os.Stat(dir); err != nil {
		return ""
	}
	var b strings.Builder
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(path, ".go") && !strings.HasSuffix(path, "_test.go") {
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			b.Write(data)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func TestDockerfiles(t *testing.T) {
	tests := []struct {
		file    string
		final   string
		nonRoot bool
	}{
		{"docker/Dockerfile", "gcr.io/distroless/static-debian12:nonroot", true},
		{"docker/filter.Dockerfile", "scratch", false},
	}
	for _, tt := range tests {
		data, err := os.ReadFile(tt.file)
		if err != nil {
			t.Fatal(err)
		}
		var froms, users []string
		for _, line := range strings.Split(string(data), "\n") {
			f := strings.Fields(line)
			if len(f) >= 2 && f[0] == "FROM" {
				froms = append(froms, f[1])
			}
			if len(f) >= 2 && f[0] == "USER" {
				users = append(users, f[1])
			}
		}
		if len(froms) < 2 {
			t.Errorf("%s: not a multi-stage build: %v", tt.file, froms)
			continue
		}
		if froms[len(froms)-1] != tt.final {
			t.Errorf("%s: final stage %s, want %s", tt.file, froms[len(froms)-1], tt.final)
		}
		if tt.nonRoot && (len(users) == 0 || strings.HasPrefix(users[len(users)-1], "0") || strings.HasPrefix(users[len(users)-1], "root")) {
			t.Errorf("%s: runs as root (USER %v)", tt.file, users)
		}
	}
}

// TestHelmValuesSchema: values.schema.json turns a mistyped value into an
// install error instead of a silently ignored setting.
func TestHelmValuesSchema(t *testing.T) {
	ch, err := loader.Load(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	opts := chartutil.ReleaseOptions{Name: "meshguard", Namespace: "meshguard", IsInstall: true}
	for _, bad := range []map[string]any{
		{"authz": map[string]any{"replica": 3}},
		{"controlplane": map[string]any{"ports": map[string]any{"xds": 70000}}},
		{"logLevel": "verbose"},
		{"metrics": map[string]any{"serviceMonitor": map[string]any{"enable": true}}},
	} {
		if _, err := chartutil.ToRenderValues(ch, bad, opts, chartutil.DefaultCapabilities); err == nil {
			t.Errorf("values %v accepted", bad)
		}
	}
}
