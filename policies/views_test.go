package policies_test

import (
	"fmt"
	"math/rand"
	"path/filepath"
	"sync"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshguard/meshguard/internal/testbed/policygen"
	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/policytest"
	"github.com/meshguard/meshguard/policies/source"
)

// viewsSet scopes policies in every way collect distinguishes targets: the
// mesh (root namespace) with and without selectors, a namespace with
// multi-label selectors (one on a label's empty value), targetRefs
// (Service and Gateway, in a namespace and in the root namespace, one
// policy with both), exact and glob workload patterns, DefaultDeny in
// enforce and dry-run, dry-run ALLOW policies, AUDIT, CUSTOM, route
// overrides with rules, and a bucket with enough rules to be indexed.
const viewsSet = `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-deny-admin, namespace: istio-system}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-edge, namespace: istio-system}
spec:
  selector: {matchLabels: {tier: edge}}
  rules:
  - from: [{source: {namespaces: [edge]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-audit-deletes, namespace: istio-system}
spec:
  action: AUDIT
  rules:
  - to: [{operation: {methods: [DELETE]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-payments, namespace: istio-system}
spec:
  action: CUSTOM
  provider: {name: ext}
  selector: {matchLabels: {app: pay}}
  rules:
  - to: [{operation: {paths: ["/pay/*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-ingress, namespace: istio-system}
spec:
  targetRefs: [{kind: Gateway, name: ingress}]
  rules:
  - from: [{source: {principals: ["cluster.local/ns/edge/sa/lb"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: shop-web-first, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  rules:
  - from: [{source: {namespaces: [shop]}}]
    to: [{operation: {methods: [GET]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: shop-ns, namespace: shop}
spec:
  rules:
  - from: [{source: {namespaces: [shop]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: shop-web-v1, namespace: shop}
spec:
  selector: {matchLabels: {app: web, version: v1}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/edge/sa/gw"]}}]
    to: [{operation: {methods: [GET]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: shop-canary, namespace: shop}
spec:
  selector: {matchLabels: {canary: ""}}
  rules:
  - from: [{source: {namespaces: [ops]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: shop-web-trial
  namespace: shop
  annotations: {istio.io/dry-run: "true"}
spec:
  selector: {matchLabels: {app: web}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/jobs/sa/batch"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: shop-catalog, namespace: shop}
spec:
  action: DENY
  targetRefs: [{kind: Service, name: catalog}]
  rules:
  - to: [{operation: {methods: [DELETE]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: shop-gateway, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, name: shop-gw}]
  rules:
  - from: [{source: {namespaces: [edge]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: shop-edge-both, namespace: shop}
spec:
  targetRefs: [{kind: Service, name: catalog}, {kind: Gateway, name: shop-gw}]
  rules:
  - from: [{source: {principals: ["cluster.local/ns/shop/sa/frontend"]}}]
    to: [{operation: {methods: [GET]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: shop-many, namespace: shop}
spec:
  selector: {matchLabels: {team: many}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/a/sa/a"]}}]
  - from: [{source: {principals: ["cluster.local/ns/b/sa/b"]}}]
  - from: [{source: {principals: ["cluster.local/ns/c/sa/c"]}}]
  - from: [{source: {principals: ["cluster.local/ns/d/sa/d"]}}]
  - from: [{source: {principals: ["cluster.local/ns/e/sa/e"]}}]
  - from: [{source: {principals: ["cluster.local/ns/f/sa/f"]}}]
  - from: [{source: {principals: ["cluster.local/ns/g/sa/g"]}}]
  - from: [{source: {principals: ["cluster.local/ns/h/sa/h"]}}]
  - from: [{source: {principals: ["cluster.local/ns/jobs/sa/batch"]}}]
    to: [{operation: {methods: [DELETE]}}]
  - to: [{operation: {paths: ["/catalog/*"]}}]
    when: [{key: "request.headers[x-tenant]", values: [gold]}]
---
apiVersion: meshguard.dev/v1alpha1
kind: IdentityPolicy
metadata: {name: shop-web-exact, namespace: shop}
spec:
  workloads: ["spiffe://cluster.local/ns/shop/sa/web"]
  rules:
  - name: frontends
    from: [{ids: ["spiffe://cluster.local/ns/*/sa/frontend"]}]
    to: [{methods: [GET], paths: ["/catalog/*"]}]
---
apiVersion: meshguard.dev/v1alpha1
kind: IdentityPolicy
metadata: {name: shop-no-legacy, namespace: shop}
spec:
  action: DENY
  workloads: ["spiffe://cluster.local/ns/shop/sa/*"]
  rules:
  - name: legacy
    from: [{ids: ["spiffe://cluster.local/ns/*/sa/legacy"]}]
---
apiVersion: meshguard.dev/v1alpha1
kind: DefaultDeny
metadata: {name: shop-db, namespace: shop}
spec:
  workloads: ["spiffe://cluster.local/ns/shop/sa/db"]
---
apiVersion: meshguard.dev/v1alpha1
kind: DefaultDeny
metadata: {name: ops-trial, namespace: ops}
spec: {mode: dry-run}
---
apiVersion: meshguard.dev/v1alpha1
kind: RouteOverride
metadata: {name: refunds, namespace: shop}
spec:
  route: refunds
  action: DENY
  rules:
  - name: no-deletes
    to: [{methods: [DELETE]}]
---
apiVersion: meshguard.dev/v1alpha1
kind: RouteOverride
metadata: {name: reports, namespace: shop}
spec: {route: reports, mode: dry-run}`

// targetVariants derives, from one target, targets that share its SPIFFE
// ID but differ in what else collect reads: so that a view stored for one
// of them is offered to the others.
func targetVariants(t policies.Target) []policies.Target {
	out := []policies.Target{t}
	add := func(f func(*policies.Target)) {
		v := t
		v.Labels = make(map[string]string, len(t.Labels))
		for k, l := range t.Labels {
			v.Labels[k] = l
		}
		f(&v)
		out = append(out, v)
	}
	add(func(v *policies.Target) { v.Namespace = "" })
	add(func(v *policies.Target) { v.Namespace = "other" })
	add(func(v *policies.Target) { v.Labels = nil })
	add(func(v *policies.Target) { v.Labels["unrelated"] = "x" })
	add(func(v *policies.Target) { v.Labels["app"] += "-x" })
	add(func(v *policies.Target) { v.Labels["version"] = "v2" })
	add(func(v *policies.Target) { v.Labels["tier"] = "edge" })
	add(func(v *policies.Target) { v.Labels["canary"] = "" })
	add(func(v *policies.Target) { v.Labels["team"] = "many" })
	add(func(v *policies.Target) { v.Labels["app"] = "pay" })
	add(func(v *policies.Target) { v.Service = "catalog" })
	add(func(v *policies.Target) { v.Service = "" })
	add(func(v *policies.Target) { v.Gateway = "shop-gw" })
	add(func(v *policies.Target) { v.Service, v.Gateway = "catalog", "shop-gw" })
	add(func(v *policies.Target) { v.Gateway = "ingress"; v.Namespace = "istio-system" })
	add(func(v *policies.Target) { v.ID = spiffeid.ID{} })
	return out
}

// checkSameDecisions decides every request with and without views, for
// every variant of its target (each twice: the first may store a view, the
// second finds it), and fails on the first difference.
func checkSameDecisions(t *testing.T, s *policies.Snapshot, reqs []policies.Attributes) {
	t.Helper()
	plain := policies.WithoutViews(s)
	for i := range reqs {
		for _, tgt := range targetVariants(reqs[i].Target) {
			a := reqs[i]
			a.Target = tgt
			want := plain.Decide(&a)
			for round := 0; round < 2; round++ {
				if got := s.Decide(&a); got != want {
					t.Fatalf("request %d, target %+v, round %d:\n got  %+v\n want %+v", i, tgt, round, got, want)
				}
			}
			if got, _ := s.Explain(&a); got != want {
				t.Fatalf("request %d, target %+v: explain %+v, decide %+v", i, tgt, got, want)
			}
		}
	}
}

// TestViewsDecideAsUncached: a snapshot with target views decides exactly
// as the plain per-request collect does, over policygen's realistic sets
// and requests, a set that scopes policies in every way, and the
// data-driven cases, with targets that share an ID but differ in
// namespace, labels, service and gateway.
func TestViewsDecideAsUncached(t *testing.T) {
	for _, rules := range []int{10, 1000} {
		t.Run(fmt.Sprintf("realistic-%d", rules), func(t *testing.T) {
			set, m := policygen.Realistic(rules, 7)
			s := compileSet(t, "", set)
			checkSameDecisions(t, s, policygen.Requests(&set, m, 512, 3))
		})
	}
	t.Run("scopes", func(t *testing.T) {
		s := compileYAML(t, viewsSet)
		sources := []string{"", "spiffe://cluster.local/ns/edge/sa/gw", "spiffe://cluster.local/ns/edge/sa/lb",
			"spiffe://cluster.local/ns/shop/sa/frontend", "spiffe://cluster.local/ns/jobs/sa/batch",
			"spiffe://cluster.local/ns/shop/sa/legacy", "spiffe://cluster.local/ns/ops/sa/x"}
		targets := []struct {
			ns, id string
			labels map[string]string
		}{
			{"shop", "spiffe://cluster.local/ns/shop/sa/web", map[string]string{"app": "web", "version": "v1"}},
			{"shop", "spiffe://cluster.local/ns/shop/sa/db", map[string]string{"app": "db"}},
			{"shop", "spiffe://cluster.local/ns/shop/sa/pay", map[string]string{"app": "pay", "tier": "edge"}},
			{"edge", "spiffe://cluster.local/ns/edge/sa/gw", map[string]string{"tier": "edge"}},
			{"ops", "spiffe://cluster.local/ns/ops/sa/x", nil},
			{"istio-system", "spiffe://cluster.local/ns/istio-system/sa/ingress", map[string]string{"app": "ingress"}},
			{"", "spiffe://cluster.local/ns/shop/sa/web", nil},
			{"", "spiffe://cluster.local/weird/path", nil},
		}
		var reqs []policies.Attributes
		for _, src := range sources {
			for _, tg := range targets {
				for _, op := range []struct{ method, path, route string }{
					{"GET", "/catalog/1", ""}, {"DELETE", "/catalog/1", ""}, {"GET", "/admin/x", ""},
					{"POST", "/pay/now", ""}, {"DELETE", "/r", "refunds"}, {"GET", "/r", "reports"},
				} {
					a := rq(src, op.method, op.path, withTarget(tg.ns, tg.labels, tg.id), withRoute(op.route))
					reqs = append(reqs, *a)
				}
			}
		}
		checkSameDecisions(t, s, reqs)
	})
	dirs, err := filepath.Glob("testdata/cases/*")
	if err != nil || len(dirs) == 0 {
		t.Fatalf("no cases: %v", err)
	}
	for _, dir := range dirs {
		t.Run("cases-"+filepath.Base(dir), func(t *testing.T) {
			set, diags, err := source.Load(filepath.Join(dir, "policies.yaml"))
			if err != nil || diags.HasErrors() {
				t.Fatalf("load: %v %v", err, diags)
			}
			s := compileSet(t, "cases", set)
			cases, err := policytest.Load(filepath.Join(dir, "cases.yaml"))
			if err != nil {
				t.Fatal(err)
			}
			var reqs []policies.Attributes
			for _, c := range cases {
				a, err := c.Attributes()
				if err != nil {
					t.Fatal(err)
				}
				reqs = append(reqs, *a)
			}
			checkSameDecisions(t, s, reqs)
		})
	}
}

// TestViewsFollowLabels: one workload ID, asked with labels that select
// different policies in turn, is decided by the policies of the labels it
// comes with each time, never by a view stored for other labels.
func TestViewsFollowLabels(t *testing.T) {
	s := compileYAML(t, viewsSet)
	gw := "spiffe://cluster.local/ns/edge/sa/gw"
	v1 := withTarget("shop", map[string]string{"app": "web", "version": "v1"}, "spiffe://cluster.local/ns/shop/sa/web")
	v2 := withTarget("shop", map[string]string{"app": "web", "version": "v2"}, "spiffe://cluster.local/ns/shop/sa/web")
	for i := 0; i < 3; i++ {
		check(t, s, rq(gw, "GET", "/x", v1), want{true, policies.ReasonAllowedByPolicy, "AuthorizationPolicy/shop/shop-web-v1", "0"})
		check(t, s, rq(gw, "GET", "/x", v2), want{false, policies.ReasonDeniedNoMatch, "", ""})
		// the Service, when a targetRef names it
		check(t, s, rq("spiffe://cluster.local/ns/shop/sa/a", "DELETE", "/x", v1), want{true, policies.ReasonAllowedByPolicy, "AuthorizationPolicy/shop/shop-ns", "0"})
		check(t, s, rq("spiffe://cluster.local/ns/shop/sa/a", "DELETE", "/x", v1, func(a *policies.Attributes) { a.Target.Service = "catalog" }),
			want{false, policies.ReasonDeniedByPolicy, "AuthorizationPolicy/shop/shop-catalog", "0"})
	}
}

// TestViewsTellIDsApart: targets that differ only in their SPIFFE ID, more
// of them than the table has sets, so that they share sets: each is
// decided by the workload patterns of its own ID.
func TestViewsTellIDsApart(t *testing.T) {
	s := compileYAML(t, viewsSet)
	plain := policies.WithoutViews(s)
	_, capacity := policies.Views(s)
	for i := 0; i < 2*capacity; i++ {
		// shop/sa/* IDs are in the scope of the DENY on legacy callers,
		// the others not.
		id := fmt.Sprintf("spiffe://cluster.local/ns/shop/sa/w%d", i)
		if i%2 == 1 {
			id = fmt.Sprintf("spiffe://cluster.local/ns/shop/job/w%d", i)
		}
		a := rq("spiffe://cluster.local/ns/shop/sa/legacy", "GET", "/x", withTarget("shop", map[string]string{"app": "w"}, id))
		if got, want := s.Decide(a), plain.Decide(a); got != want {
			t.Fatalf("target %s: got %+v, want %+v", id, got, want)
		}
	}
}

// TestViewsBounded: however many targets a snapshot sees, it holds at most
// its table's views; once the table is full, a new target is decided
// without allocating, and as without views.
func TestViewsBounded(t *testing.T) {
	set, m := policygen.Realistic(1000, 1)
	s := compileSet(t, "", set)
	plain := policies.WithoutViews(s)
	reqs := policygen.Requests(&set, m, 64, 5)
	// Targets with IDs of their own: each needs a view.
	next := 0
	newTarget := func() *policies.Attributes {
		a := reqs[next%len(reqs)]
		a.Target.ID = spiffeid.RequireFromString(fmt.Sprintf("spiffe://%s/ns/%s/sa/replica-%d", policygen.TrustDomain, a.Target.Namespace, next))
		next++
		return &a
	}
	_, capacity := policies.Views(s)
	for n := 0; n < capacity; {
		if next > 100*capacity {
			t.Fatalf("table not full after %d targets: %d of %d views", next, n, capacity)
		}
		a := newTarget()
		if got, want := s.Decide(a), plain.Decide(a); got != want {
			t.Fatalf("target %s: got %+v, want %+v", a.Target.ID, got, want)
		}
		if n, _ = policies.Views(s); n > capacity {
			t.Fatalf("%d views, capacity %d", n, capacity)
		}
	}
	fresh := make([]*policies.Attributes, 201)
	for i := range fresh {
		fresh[i] = newTarget()
	}
	i := 0
	allocs := testing.AllocsPerRun(200, func() {
		a := fresh[i]
		i++
		if got, want := s.Decide(a), plain.Decide(a); got != want {
			t.Fatalf("target %s: got %+v, want %+v", a.Target.ID, got, want)
		}
	})
	if allocs != 0 {
		t.Errorf("a decision for a target that finds the table full allocates %v times", allocs)
	}
	if n, _ := policies.Views(s); n != capacity {
		t.Errorf("%d views, capacity %d", n, capacity)
	}
}

// TestViewsNoAllocations: a decision that finds its target's view
// allocates nothing.
func TestViewsNoAllocations(t *testing.T) {
	set, m := policygen.Realistic(1000, 1)
	s := compileSet(t, "", set)
	reqs := policygen.Requests(&set, m, 256, 2)
	for i := range reqs {
		s.Decide(&reqs[i])
	}
	i := 0
	if allocs := testing.AllocsPerRun(1000, func() { s.Decide(&reqs[i%len(reqs)]); i++ }); allocs != 0 {
		t.Errorf("%v allocations per decision", allocs)
	}
}

// TestViewsConcurrent: decisions on many goroutines share one snapshot's
// views while they are being stored, more targets than the table holds
// among them, and each decides as without views (run with -race).
func TestViewsConcurrent(t *testing.T) {
	set, m := policygen.Realistic(1000, 1)
	s := compileSet(t, "", set)
	_, capacity := policies.Views(s)
	base := policygen.Requests(&set, m, 256, 4)
	reqs := make([]policies.Attributes, 2*capacity)
	for i := range reqs {
		reqs[i] = base[i%len(base)]
		if i >= len(base) { // a replica with an ID of its own
			reqs[i].Target.ID = spiffeid.RequireFromString(fmt.Sprintf("spiffe://%s/ns/%s/sa/replica-%d", policygen.TrustDomain, reqs[i].Target.Namespace, i))
		}
	}
	plain := policies.WithoutViews(s)
	want := make([]policies.Decision, len(reqs))
	for i := range reqs {
		want[i] = plain.Decide(&reqs[i])
	}
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(seed int64) {
			defer wg.Done()
			rng := rand.New(rand.NewSource(seed))
			for k := 0; k < 3*len(reqs); k++ {
				i := rng.Intn(len(reqs))
				if got := s.Decide(&reqs[i]); got != want[i] {
					t.Errorf("request %d: got %+v, want %+v", i, got, want[i])
					return
				}
			}
		}(int64(w))
	}
	wg.Wait()
	if n, _ := policies.Views(s); n == 0 || n > capacity {
		t.Errorf("%d views, capacity %d", n, capacity)
	}
}
