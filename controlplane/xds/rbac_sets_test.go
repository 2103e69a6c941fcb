package xds_test

import (
	"fmt"
	"math/rand"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshguard/meshguard/internal/testbed/policygen"
	"github.com/meshguard/meshguard/policies"
)

// handPicked are the edge cases: what a pattern, a scope, a mode or a
// negation means is where translations go wrong. Ports are filled in
// (%[1]d svc-0, %[2]d svc-1, %[3]d svc-10). All but the last translate
// exactly.
var handPicked = []struct {
	name  string
	yaml  string
	exact bool
}{
	{"a DefaultDeny scoped with ** applies to every workload under it", `
apiVersion: meshguard.dev/v1alpha1
kind: DefaultDeny
metadata: {name: ns-0, namespace: ns-0}
spec: {workloads: ["spiffe://prod.example/ns/ns-0/**"]}
---
apiVersion: meshguard.dev/v1alpha1
kind: IdentityPolicy
metadata: {name: svc-0, namespace: ns-0}
spec:
  workloads: [spiffe://prod.example/ns/ns-0/sa/svc-0]
  rules: [{name: callers, from: [{ids: [spiffe://prod.example/ns/ns-0/sa/svc-3]}]}]`, true},
	{"single-segment globs, negations and a whole trust domain", `
apiVersion: meshguard.dev/v1alpha1
kind: IdentityPolicy
metadata: {name: ns-0, namespace: ns-0}
spec:
  rules:
  - name: any-svc-3
    from: [{ids: ["spiffe://prod.example/ns/*/sa/svc-3"]}]
  - name: other-domain
    from: [{trustDomains: [other.example]}]
  - name: ops-but-intern
    from: [{ids: ["spiffe://prod.example/ns/ops/**"], notIds: [spiffe://prod.example/ns/ops/sa/intern]}]
---
apiVersion: meshguard.dev/v1alpha1
kind: IdentityPolicy
metadata: {name: mesh, namespace: istio-system}
spec:
  action: DENY
  workloads: ["spiffe://prod.example/ns/*/sa/svc-10"]
  rules: [{name: not-the-domain, from: [{notIds: ["spiffe://prod.example"]}]}]`, true},
	{"Istio principals: prefix, suffix, any, and a spiffe:// prefix read away", `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: svc-0, namespace: ns-0}
spec:
  selector: {matchLabels: {app: svc-0}}
  rules:
  - from: [{source: {principals: ["prod.example/ns/ops/*", "*/sa/svc-7", "spiffe://prod.example/ns/ns-1/sa/svc-11"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: tier-web, namespace: ns-0}
spec:
  selector: {matchLabels: {tier: web}}
  action: DENY
  rules:
  - from: [{source: {principals: ["*/svc-3/extra"]}}]
  - from: [{source: {notPrincipals: ["*"]}}]`, true},
	{"namespaces and notNamespaces, and IDs without a namespace", `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ops, namespace: istio-system}
spec:
  rules:
  - from: [{source: {namespaces: ["op*"], notPrincipals: [prod.example/ns/ops/sa/intern]}}]
  - from: [{source: {namespaces: ["*-0"]}}]
    to: [{operation: {paths: ["/api/v1/svc-0/*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: outsiders, namespace: ns-1}
spec:
  action: DENY
  rules:
  - from: [{source: {notNamespaces: [ns-0, ns-1]}}]
    when: [{key: source.namespace, notValues: [ops]}]`, true},
	{"quarantines (one expired) before a route whose enforcement is off", `
apiVersion: meshguard.dev/v1alpha1
kind: Quarantine
metadata: {name: svc-3, namespace: istio-system}
spec: {identity: spiffe://prod.example/ns/ns-0/sa/svc-3, reason: test}
---
apiVersion: meshguard.dev/v1alpha1
kind: Quarantine
metadata: {name: svc-7, namespace: istio-system}
spec: {identity: spiffe://prod.example/ns/ns-0/sa/svc-7, reason: test, expiresAt: "2001-01-01T00:00:00Z"}
---
apiVersion: meshguard.dev/v1alpha1
kind: DefaultDeny
metadata: {name: mesh, namespace: istio-system}
spec: {}
---
apiVersion: meshguard.dev/v1alpha1
kind: RouteOverride
metadata: {name: status, namespace: ns-0}
spec: {route: status, mode: "off"}`, true},
	{"a dry-run route still sends CUSTOM matches to their provider", `
apiVersion: meshguard.dev/v1alpha1
kind: RouteOverride
metadata: {name: items, namespace: ns-0}
spec: {route: items, mode: dry-run}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext, namespace: ns-0}
spec:
  action: CUSTOM
  provider: {name: meshguard}
  rules: [{to: [{operation: {paths: ["/api/v1/svc-0/items/*", "/helloworld.Greeter/*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: ns-0}
spec: {action: DENY, rules: [{}]}`, true},
	{"a route override's own rules apply on its route only", `
apiVersion: meshguard.dev/v1alpha1
kind: RouteOverride
metadata: {name: say, namespace: ns-0}
spec:
  route: say
  action: ALLOW
  rules: [{name: svc-3, from: [{ids: [spiffe://prod.example/ns/ns-0/sa/svc-3]}]}]
---
apiVersion: meshguard.dev/v1alpha1
kind: IdentityPolicy
metadata: {name: routes, namespace: ns-0}
spec:
  action: DENY
  rules:
  - name: status-from-ops
    from: [{ids: ["spiffe://prod.example/ns/ops/**"]}]
    to: [{routes: ["stat*", "inbound_grpc_default"]}]`, true},
	{"headers: repeated values, trimming, notValues on the allow side", `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: tenants, namespace: istio-system}
spec:
  rules:
  - when:
    - {key: "request.headers[x-tenant]", values: ["shared", "tenant-*"], notValues: [tenant-9]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: evil, namespace: istio-system}
spec:
  action: DENY
  rules:
  - when: [{key: "request.headers[x-tenant]", values: ["evil", "*-9"]}]
  - when: [{key: "request.headers[X-Debug-Override]", values: ["*"]}]`, true},
	{"paths: templates, and case folding on the deny side", `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: paths, namespace: ns-0}
spec:
  rules:
  - to: [{operation: {paths: ["/api/v1/{*}/items/{**}", "/helloworld.Greeter/Say*"], notPaths: ["/api/v1/svc-0/items/4*"]}}]
  - to: [{operation: {notPaths: ["/ADMIN*", "*/Admin"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-status, namespace: ns-0}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/API/v1/svc-0/STATUS", "*/check"]}}]}]`, true},
	{"methods, ports and targetRefs", `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: by-service, namespace: ns-0}
spec:
  targetRefs: [{kind: Service, group: "", name: svc-1}]
  action: DENY
  rules: [{to: [{operation: {methods: [post]}}], from: [{source: {principals: [prod.example/ns/ns-0/sa/svc-3]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ports, namespace: ns-0}
spec:
  rules:
  - to: [{operation: {ports: ["%[1]d"], methods: ["POST"]}}]
  - to: [{operation: {notPorts: ["%[1]d"], notMethods: [get]}}]
  - to: [{operation: {methods: [post]}}]
    from: [{source: {namespaces: [ops]}}]`, true},
	{"dry-run policies and rules decide nothing, an enforced rule of a dry-run policy does", `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: dry, namespace: ns-0, annotations: {istio.io/dry-run: "true"}}
spec: {rules: [{from: [{source: {namespaces: [ops]}}]}]}
---
apiVersion: meshguard.dev/v1alpha1
kind: DefaultDeny
metadata: {name: dry, namespace: ns-1}
spec: {mode: dry-run}
---
apiVersion: meshguard.dev/v1alpha1
kind: IdentityPolicy
metadata: {name: mixed, namespace: ns-0}
spec:
  mode: dry-run
  rules:
  - {name: dry, from: [{trustDomains: [prod.example]}]}
  - {name: enforced, mode: enforce, from: [{ids: ["spiffe://prod.example/ns/ns-0/sa/*"]}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-ops, namespace: ns-0}
spec:
  selector: {matchLabels: {app: svc-0}}
  rules: [{from: [{source: {namespaces: [ops]}}]}]`, true},
	{"addresses", `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: addresses, namespace: istio-system}
spec:
  rules:
  - from: [{source: {ipBlocks: ["127.0.0.0/8"], notIpBlocks: ["127.0.0.2"], remoteIpBlocks: ["::ffff:127.0.0.0/104"]}}]
    when: [{key: destination.ip, values: ["127.0.0.1"]}, {key: source.ip, notValues: ["10.0.0.0/8"]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: far, namespace: ns-1}
spec:
  action: DENY
  rules: [{when: [{key: remote.ip, notValues: ["127.0.0.1"]}]}, {when: [{key: destination.port, values: ["%[3]d"]}, {key: source.principal, values: ["*svc-11"]}]}]`, true},
	{"Istio's readings of the peer: trust domain rewriting and aliases, service accounts, trust domains, namespaces by regex", `
apiVersion: meshguard.dev/v1alpha1
kind: MeshSettings
metadata: {name: mesh, namespace: istio-system}
spec: {trustDomain: prod.example, trustDomainAliases: [old.example]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: peers, namespace: ns-0}
spec:
  rules:
  - from: [{source: {principals: [cluster.local/ns/ns-0/sa/svc-3, "*.example/ns/ops/sa/admin"]}}]
  - from: [{source: {serviceAccounts: [svc-7, ns-1/svc-11], notTrustDomains: [other.example]}}]
  - from: [{source: {trustDomains: [old.example, "other*"], notServiceAccounts: [ops/intern]}}]
  - to: [{operation: {hosts: ["127.0.0.1:*"], ports: ["%[2]d"]}}]
    when: [{key: source.trustDomain, values: [cluster.local]}, {key: source.serviceAccount, notValues: [svc-3]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-peers, namespace: ns-1}
spec:
  action: DENY
  rules:
  - from: [{source: {namespaces: [ns-1], principals: ["*/svc-11"]}}]
  - from: [{source: {serviceAccounts: [ops/admin]}}]
    to: [{operation: {notHosts: ["127.0.0.1:%[3]d"]}}]
  - from: [{source: {notTrustDomains: [cluster.local]}}]
    when: [{key: source.namespace, notValues: [ns-1, ops]}]`, true},
	{"what a proxyless server cannot see fails closed", `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: tokens, namespace: ns-0}
spec:
  selector: {matchLabels: {app: svc-0}}
  action: DENY
  rules: [{from: [{source: {requestPrincipals: ["*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: claims, namespace: ns-0}
spec:
  selector: {matchLabels: {app: svc-1}}
  rules:
  - when: [{key: "request.auth.claims[group]", values: [admin]}]
  - to: [{operation: {hosts: ["*"]}}]
  - when: [{key: connection.sni, values: ["*"]}]
  - from: [{source: {principals: [prod.example/ns/ns-0/sa/svc-7]}}]
---
apiVersion: meshguard.dev/v1alpha1
kind: IdentityPolicy
metadata: {name: jwt, namespace: ns-1}
spec:
  action: DENY
  rules: [{name: token, jwt: {audiences: [x]}, from: [{ids: [spiffe://prod.example/ns/ops/sa/admin]}]}]`, false},
}

// TestRBACAgreesWithTheEngine is the differential test (see
// rbac_differential_test.go): 57 sets, 3 grpc-go servers each, about
// 15,000 RPCs in some 7 s; with -race 32 sets and a sample of 4,680
// requests, about 13 s (go test -run TestRBACAgreesWithTheEngine -v
// ./controlplane/xds prints the figures).
func TestRBACAgreesWithTheEngine(t *testing.T) {
	f := newFixture(t)
	start := time.Now()
	rng := rand.New(rand.NewSource(9))
	var total outcome
	sets := 0
	p := f.ports
	for _, hp := range handPicked {
		ports := strings.NewReplacer("%[1]d", strconv.Itoa(p["svc-0.ns-0"]), "%[2]d", strconv.Itoa(p["svc-1.ns-0"]), "%[3]d", strconv.Itoa(p["svc-10.ns-1"]))
		set := setFromYAML(t, ports.Replace(hp.yaml))
		all := 0 // every caller against every path
		if raceEnabled {
			all = 60
		}
		o := f.run(hp.name, set, requests(rng, &set, f.mesh, all), hp.exact)
		t.Logf("%-85s allowed %4d denied %4d fail-closed %3d", hp.name, o.allowed, o.denied, o.failClosed)
		if o.allowed == 0 || o.denied+o.failClosed == 0 {
			t.Errorf("%s: allowed %d, denied %d: the case shows nothing", hp.name, o.allowed, o.denied+o.failClosed)
		}
		if !hp.exact && o.failClosed == 0 {
			t.Errorf("%s: no request shows the fail-closed side", hp.name)
		}
		total.add(o)
		sets++
	}
	perSet := 70
	if raceEnabled {
		perSet = 40
	}
	// policygen's realistic sets: the mesh-wide DENY rules and per-service
	// ALLOW policies benchmarks use.
	for i, rules := range []int{20, 60, 120} {
		set, _ := policygen.Realistic(rules, int64(i))
		total.add(f.run(fmt.Sprintf("policygen.Realistic(%d)", rules), set, requests(rng, &set, f.mesh, perSet), false))
		sets++
	}
	// Sets drawn over every field, scope and mode the translation handles.
	n := 40
	if testing.Short() || raceEnabled {
		n = 15
	}
	for i := range n {
		set := generate(rng, f)
		total.add(f.run("generated-"+strconv.Itoa(i), set, requests(rng, &set, f.mesh, perSet), false))
		sets++
	}
	t.Logf("%d sets, %d requests: %d allowed and %d denied by both, %d denied by RBAC only where the translation approximates (%d of %d workload translations); %s",
		sets, total.allowed+total.denied+total.failClosed, total.allowed, total.denied, total.failClosed,
		total.approxWorkloads, sets*len(f.mesh.Workloads), time.Since(start).Round(100*time.Millisecond))
}

// generate draws a policy set that compiles.
func generate(rng *rand.Rand, f *fixture) policies.Set {
	for {
		set := draw(rng, f)
		if _, _, err := policies.NewBundle("x", set); err == nil {
			if b, _, _ := policies.NewBundle("x", set); b != nil {
				if _, err := policies.Compile(b); err == nil {
					return set
				}
			}
		}
	}
}

func pick[T any](rng *rand.Rand, xs ...T) T { return xs[rng.Intn(len(xs))] }

func some[T any](rng *rand.Rand, max int, gen func() T) []T {
	var out []T
	for range rng.Intn(max + 1) {
		out = append(out, gen())
	}
	return out
}

func draw(rng *rand.Rand, f *fixture) policies.Set {
	var set policies.Set
	// The mesh's trust domain: prod.example, perhaps with an alias, or
	// Istio's default, which then names no workload of the fixture.
	switch rng.Intn(4) {
	case 0, 1:
		set.Settings.TrustDomain = "prod.example"
	case 2:
		set.Settings.TrustDomain, set.Settings.TrustDomainAliases = "prod.example", []string{"old.example"}
	}
	ns := func() string { return pick(rng, policies.DefaultRootNamespace, "ns-0", "ns-0", "ns-1", "ops") }
	port := func() string {
		return pick(rng, strconv.Itoa(f.ports["svc-0.ns-0"]), strconv.Itoa(f.ports["svc-1.ns-0"]), strconv.Itoa(f.ports["svc-10.ns-1"]), "8080")
	}
	principal := func() string {
		return pick(rng, "prod.example/ns/ns-0/sa/svc-3", "prod.example/ns/ops/*", "*/sa/svc-7", "*", "prod.example/ns/ns-1/sa/svc-11",
			"spiffe://prod.example/ns/ops/sa/admin", "*/extra", "other.example/*", "prod.example/legacy/batch",
			"cluster.local/ns/ns-0/sa/svc-3", "old.example/ns/ns-0/sa/svc-7", "*.example/ns/ops/sa/admin", "cluster.local/ns/ops/*")
	}
	namespace := func() string { return pick(rng, "ns-0", "ns-1", "ops", "op*", "*-1", "*", "ns") }
	serviceAccount := func() string { return pick(rng, "svc-3", "ns-0/svc-7", "ns-1/svc-11", "ops/admin", "ops/intern") }
	trustDomain := func() string {
		return pick(rng, "prod.example", "cluster.local", "old.example", "other.example", "*.example", "prod*", "*")
	}
	path := func() string {
		return pick(rng, "/api/v1/svc-0/items/*", "/api/v1/{*}/items/{**}", "/helloworld.Greeter/SayHello", "/helloworld.Greeter/*",
			"*/Reset", "/API/*", "*", "/api/v1/svc-0/status", "/{*}/{*}", "/admin.Console/{**}", "/grpc.health.v1.Health/Check")
	}
	method := func() string { return pick(rng, "POST", "post", "GET", "*", "P*") }
	idPattern := func() string {
		return pick(rng, "spiffe://prod.example/ns/ns-0/sa/svc-3", "spiffe://prod.example/ns/ops/**", "spiffe://prod.example/ns/*/sa/svc-7",
			"spiffe://prod.example", "spiffe://other.example", "spiffe://prod.example/ns/ns-0/**", "spiffe://prod.example/legacy/*",
			"spiffe://prod.example/ns/ns-0/sa/svc-3/extra")
	}
	workloads := func() []string {
		return pick(rng, nil, nil, []string{"spiffe://prod.example/ns/ns-0/**"}, []string{"spiffe://prod.example/ns/*/sa/svc-1"},
			[]string{"spiffe://prod.example/ns/ns-1/sa/svc-10"}, []string{"spiffe://prod.example"}, []string{"spiffe://prod.example/ns/ns-0/sa/*", "spiffe://prod.example/ns/ns-1/**"})
	}
	header := func() policies.Condition {
		c := policies.Condition{Key: pick(rng, "request.headers[x-tenant]", "request.headers[x-debug-override]")}
		c.Values = some(rng, 2, func() string { return pick(rng, "shared", "tenant-*", "*-3", "evil", "*") })
		if len(c.Values) == 0 || rng.Intn(3) == 0 {
			c.NotValues = []string{pick(rng, "evil", "tenant-9", "shared")}
		}
		return c
	}
	condition := func() policies.Condition {
		switch rng.Intn(8) {
		case 0, 1:
			return header()
		case 2:
			return policies.Condition{Key: "source.namespace", Values: some(rng, 1, namespace), NotValues: []string{pick(rng, "ops", "ns-1")}}
		case 3:
			return policies.Condition{Key: "source.principal", Values: []string{principal()}}
		case 4:
			return policies.Condition{Key: "destination.port", Values: []string{port()}}
		case 5:
			return policies.Condition{Key: pick(rng, "source.ip", "remote.ip", "destination.ip"), NotValues: []string{pick(rng, "127.0.0.1", "10.0.0.0/8")}}
		case 6:
			if rng.Intn(2) == 0 {
				return policies.Condition{Key: "source.serviceAccount", Values: some(rng, 1, serviceAccount), NotValues: []string{serviceAccount()}}
			}
			return policies.Condition{Key: "source.trustDomain", Values: some(rng, 1, trustDomain), NotValues: []string{trustDomain()}}
		}
		return policies.Condition{Key: pick(rng, "request.auth.principal", "connection.sni"), Values: []string{"*"}}
	}
	source := func() policies.Source {
		for {
			var s policies.Source
			switch rng.Intn(11) {
			case 0:
				s.Principals = some(rng, 2, principal)
			case 1:
				s.NotPrincipals = some(rng, 2, principal)
			case 2:
				s.Namespaces = some(rng, 2, namespace)
			case 3:
				s.NotNamespaces = some(rng, 2, namespace)
			case 4:
				s.Principals, s.NotNamespaces = some(rng, 1, principal), some(rng, 1, namespace)
			case 5:
				s.IPBlocks = []string{pick(rng, "127.0.0.1", "10.0.0.0/8")}
			case 6:
				s.NotRemoteIPBlocks = []string{pick(rng, "127.0.0.1", "10.0.0.0/8")}
			case 7:
				s.ServiceAccounts = some(rng, 2, serviceAccount)
			case 8:
				s.NotServiceAccounts, s.TrustDomains = some(rng, 1, serviceAccount), some(rng, 1, trustDomain)
			case 9:
				s.NotTrustDomains = some(rng, 2, trustDomain)
			default:
				s.RequestPrincipals = []string{"*"}
			}
			if len(s.Principals)+len(s.NotPrincipals)+len(s.Namespaces)+len(s.NotNamespaces)+len(s.IPBlocks)+len(s.NotRemoteIPBlocks)+len(s.RequestPrincipals)+
				len(s.ServiceAccounts)+len(s.NotServiceAccounts)+len(s.TrustDomains)+len(s.NotTrustDomains) > 0 {
				return s
			}
		}
	}
	operation := func() policies.Operation {
		for {
			var o policies.Operation
			o.Paths = some(rng, 2, path)
			if rng.Intn(3) == 0 {
				o.NotPaths = some(rng, 1, path)
			}
			if rng.Intn(3) == 0 {
				o.Methods = some(rng, 1, method)
			}
			if rng.Intn(4) == 0 {
				o.NotMethods = some(rng, 1, method)
			}
			if rng.Intn(4) == 0 {
				o.Ports = []string{port()}
			}
			if rng.Intn(6) == 0 {
				o.NotPorts = []string{port()}
			}
			if rng.Intn(6) == 0 {
				o.Hosts = []string{pick(rng, "*", "127.0.0.1:*", "*:"+port(), "example.com")}
			}
			if rng.Intn(8) == 0 {
				o.NotHosts = []string{pick(rng, "127.0.0.1:"+port(), "*.com")}
			}
			if len(o.Paths)+len(o.NotPaths)+len(o.Methods)+len(o.NotMethods)+len(o.Ports)+len(o.NotPorts)+len(o.Hosts)+len(o.NotHosts) > 0 {
				return o
			}
		}
	}
	istioRule := func() policies.Rule {
		var r policies.Rule
		for _, s := range some(rng, 2, source) {
			r.From = append(r.From, policies.RuleFrom{Source: s})
		}
		for _, o := range some(rng, 2, operation) {
			r.To = append(r.To, policies.RuleTo{Operation: o})
		}
		r.When = some(rng, 1, condition)
		return r
	}
	identityRule := func(i int) policies.IdentityRule {
		r := policies.IdentityRule{Name: "r" + strconv.Itoa(i), Mode: pick(rng, "", "", "", policies.ModeDryRun, policies.ModeEnforce)}
		r.From = some(rng, 2, func() policies.IdentitySource {
			switch rng.Intn(4) {
			case 0:
				return policies.IdentitySource{NotIDs: some(rng, 1, idPattern), IDs: []string{idPattern()}}
			case 1:
				return policies.IdentitySource{TrustDomains: []string{pick(rng, "prod.example", "other.example")}}
			}
			return policies.IdentitySource{IDs: some(rng, 1, idPattern)}
		})
		for i := range r.From {
			if len(r.From[i].IDs)+len(r.From[i].NotIDs)+len(r.From[i].TrustDomains) == 0 {
				r.From[i].IDs = []string{idPattern()}
			}
		}
		r.To = some(rng, 1, func() policies.IdentityTarget {
			t := policies.IdentityTarget{Paths: some(rng, 1, path), Methods: some(rng, 1, method)}
			if rng.Intn(3) == 0 {
				t.Routes = []string{pick(rng, "items", "status", "say", "s*", "inbound_grpc_default", "*")}
			}
			if rng.Intn(5) == 0 {
				t.NotPaths = []string{path()}
			}
			if len(t.Paths)+len(t.Methods)+len(t.Routes)+len(t.NotPaths) == 0 {
				t.Ports = []string{port()}
			}
			return t
		})
		r.When = some(rng, 1, condition)
		if rng.Intn(10) == 0 {
			r.JWT = &policies.JWTRequirement{Audiences: []string{"x"}}
		}
		return r
	}
	for i := range 1 + rng.Intn(5) {
		meta := policies.ObjectMeta{Name: "p" + strconv.Itoa(i), Namespace: ns()}
		switch rng.Intn(10) {
		case 0, 1, 2, 3: // Istio
			p := policies.AuthorizationPolicy{APIVersion: policies.APIVersionIstioV1, Kind: policies.KindAuthorizationPolicy, Metadata: meta}
			p.Spec.Action = pick(rng, "", "ALLOW", "ALLOW", "DENY", "DENY", "CUSTOM", "AUDIT")
			if p.Spec.Action == "CUSTOM" {
				p.Spec.Provider = &policies.ExtensionProvider{Name: "ext"}
			} else if rng.Intn(8) == 0 {
				p.Metadata.Annotations = map[string]string{"istio.io/dry-run": "true"}
			}
			switch rng.Intn(5) {
			case 0:
				p.Spec.Selector = &policies.WorkloadSelector{MatchLabels: map[string]string{"app": pick(rng, "svc-0", "svc-1", "svc-10")}}
			case 1:
				p.Spec.Selector = &policies.WorkloadSelector{MatchLabels: map[string]string{"tier": pick(rng, "web", "api")}}
			case 2:
				p.Spec.TargetRefs = []policies.PolicyTargetReference{{Kind: "Service", Name: pick(rng, "svc-0", "svc-1", "svc-10")}}
			}
			p.Spec.Rules = some(rng, 3, istioRule)
			set.AuthorizationPolicies = append(set.AuthorizationPolicies, p)
		case 4, 5, 6: // meshguard identity policy
			p := policies.IdentityPolicy{APIVersion: policies.APIVersionMeshguard, Kind: policies.KindIdentityPolicy, Metadata: meta}
			p.Spec.Action = pick(rng, "", "ALLOW", "DENY", "DENY", "AUDIT")
			p.Spec.Mode = pick(rng, "", "", "", policies.ModeDryRun, policies.ModeOff)
			p.Spec.Workloads = workloads()
			for j := range 1 + rng.Intn(2) {
				p.Spec.Rules = append(p.Spec.Rules, identityRule(j))
			}
			set.IdentityPolicies = append(set.IdentityPolicies, p)
		case 7:
			d := policies.DefaultDeny{APIVersion: policies.APIVersionMeshguard, Kind: policies.KindDefaultDeny, Metadata: meta}
			d.Spec.Workloads = workloads()
			d.Spec.Mode = pick(rng, "", "", policies.ModeDryRun, policies.ModeOff)
			set.DefaultDenies = append(set.DefaultDenies, d)
		case 8:
			route := pick(rng, "items", "status", "say", "inbound_grpc_default")
			for _, ro := range set.RouteOverrides {
				if ro.Spec.Route == route {
					route = ""
				}
			}
			if route == "" {
				continue
			}
			ro := policies.RouteOverride{APIVersion: policies.APIVersionMeshguard, Kind: policies.KindRouteOverride, Metadata: meta}
			ro.Spec.Route = route
			ro.Spec.Mode = pick(rng, "", "", policies.ModeOff, policies.ModeDryRun, policies.ModeEnforce)
			if rng.Intn(2) == 0 {
				ro.Spec.Action = pick(rng, "ALLOW", "DENY")
				ro.Spec.Rules = []policies.IdentityRule{identityRule(0)}
			}
			set.RouteOverrides = append(set.RouteOverrides, ro)
		default:
			q := policies.Quarantine{APIVersion: policies.APIVersionMeshguard, Kind: policies.KindQuarantine, Metadata: meta}
			q.Spec.Identity = pick(rng, "spiffe://prod.example/ns/ns-0/sa/svc-3", "spiffe://prod.example/ns/ops/sa/admin")
			if rng.Intn(3) == 0 {
				q.Spec.ExpiresAt = pick(rng, "2001-01-01T00:00:00Z", "2099-01-01T00:00:00Z")
			}
			set.Quarantines = append(set.Quarantines, q)
		}
	}
	return set
}
