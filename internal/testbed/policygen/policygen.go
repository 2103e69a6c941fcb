// Package policygen generates realistic policy sets and requests of a given
// size, for benchmarks and load tests of every enforcement point. The mesh it
// describes has namespaces of ten services each; every service has an Istio
// ALLOW policy with a selector (exact principals, path prefixes and
// templates, header conditions), some services a meshguard IdentityPolicy
// with SPIFFE ID globs, and the root namespace a few mesh-wide DENY rules.
package policygen

import (
	"fmt"
	"math/rand"
	"net/netip"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshguard/meshguard/policies"
)

// TrustDomain of the generated mesh.
const TrustDomain = "prod.example"

// RulesPerService is how many rules each service's policies hold in total.
const RulesPerService = 5

// ServicesPerNamespace in the generated mesh.
const ServicesPerNamespace = 10

// Mesh describes a generated set: how many services and namespaces.
type Mesh struct {
	Services   int
	Namespaces int
}

func (m Mesh) namespace(svc int) string { return fmt.Sprintf("ns-%d", svc/ServicesPerNamespace) }

func service(svc int) string { return fmt.Sprintf("svc-%d", svc) }

// ID is the SPIFFE ID of a service's workload.
func (m Mesh) ID(svc int) spiffeid.ID {
	return spiffeid.RequireFromString(fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", TrustDomain, m.namespace(svc), service(svc)))
}

func (m Mesh) principal(svc int) string {
	return fmt.Sprintf("%s/ns/%s/sa/%s", TrustDomain, m.namespace(svc), service(svc))
}

// Realistic returns a set with about the given number of rules (at least
// one service) and the mesh it describes. The same seed gives the same set.
func Realistic(rules int, seed int64) (policies.Set, Mesh) {
	rng := rand.New(rand.NewSource(seed))
	nsvc := rules / RulesPerService
	if nsvc < 1 {
		nsvc = 1
	}
	m := Mesh{Services: nsvc, Namespaces: (nsvc + ServicesPerNamespace - 1) / ServicesPerNamespace}
	var set policies.Set
	set.Settings.TrustDomain = TrustDomain

	// Mesh-wide: no plaintext, no admin paths from outside the admin
	// namespace, no debug endpoints with a suspicious header.
	set.AuthorizationPolicies = append(set.AuthorizationPolicies, policies.AuthorizationPolicy{
		APIVersion: policies.APIVersionIstioV1, Kind: policies.KindAuthorizationPolicy,
		Metadata: policies.ObjectMeta{Name: "mesh-deny", Namespace: policies.DefaultRootNamespace},
		Spec: policies.AuthorizationPolicySpec{Action: "DENY", Rules: []policies.Rule{
			{From: []policies.RuleFrom{{Source: policies.Source{NotPrincipals: []string{"*"}}}}},
			{From: []policies.RuleFrom{{Source: policies.Source{NotNamespaces: []string{"ops"}}}},
				To: []policies.RuleTo{{Operation: policies.Operation{Paths: []string{"/admin*", "/debug/{**}"}}}}},
			{When: []policies.Condition{{Key: "request.headers[x-debug-override]", Values: []string{"*"}}}},
		}},
	})

	for svc := 0; svc < nsvc; svc++ {
		ns, name := m.namespace(svc), service(svc)
		caller := func() int { return rng.Intn(nsvc) }
		var rs []policies.Rule
		n := RulesPerService
		withIdentity := svc%4 == 0
		if withIdentity {
			n--
		}
		for i := 0; i < n; i++ {
			switch i % 4 {
			case 0: // exact principals, path prefix
				rs = append(rs, policies.Rule{
					From: []policies.RuleFrom{{Source: policies.Source{Principals: []string{m.principal(caller()), m.principal(caller())}}}},
					To:   []policies.RuleTo{{Operation: policies.Operation{Methods: []string{"GET", "HEAD"}, Paths: []string{"/api/v1/" + name + "/*"}}}},
				})
			case 1: // exact principal, path template
				rs = append(rs, policies.Rule{
					From: []policies.RuleFrom{{Source: policies.Source{Principals: []string{m.principal(caller())}}}},
					To:   []policies.RuleTo{{Operation: policies.Operation{Methods: []string{"POST", "PUT"}, Paths: []string{"/api/v1/" + name + "/items/{*}", "/api/v1/" + name + "/orders/{**}"}}}},
				})
			case 2: // namespace source, header condition
				rs = append(rs, policies.Rule{
					From: []policies.RuleFrom{{Source: policies.Source{Namespaces: []string{m.namespace(caller())}}}},
					To:   []policies.RuleTo{{Operation: policies.Operation{Methods: []string{"GET"}, Paths: []string{"/healthz", "/metrics"}}}},
					When: []policies.Condition{{Key: "request.headers[x-tenant]", Values: []string{fmt.Sprintf("tenant-%d", rng.Intn(20)), "shared"}}},
				})
			case 3: // principal prefix (service accounts of a namespace), exact path
				rs = append(rs, policies.Rule{
					From: []policies.RuleFrom{{Source: policies.Source{Principals: []string{fmt.Sprintf("%s/ns/%s/sa/*", TrustDomain, m.namespace(caller()))}}}},
					To:   []policies.RuleTo{{Operation: policies.Operation{Paths: []string{"/api/v1/" + name + "/status"}}}},
				})
			}
		}
		set.AuthorizationPolicies = append(set.AuthorizationPolicies, policies.AuthorizationPolicy{
			APIVersion: policies.APIVersionIstioV1, Kind: policies.KindAuthorizationPolicy,
			Metadata: policies.ObjectMeta{Name: name + "-allow", Namespace: ns},
			Spec: policies.AuthorizationPolicySpec{
				Selector: &policies.WorkloadSelector{MatchLabels: map[string]string{"app": name}},
				Rules:    rs,
			},
		})
		if withIdentity {
			set.IdentityPolicies = append(set.IdentityPolicies, policies.IdentityPolicy{
				APIVersion: policies.APIVersionMeshguard, Kind: policies.KindIdentityPolicy,
				Metadata: policies.ObjectMeta{Name: name + "-frontends", Namespace: ns},
				Spec: policies.IdentityPolicySpec{
					Workloads: []string{m.ID(svc).String()},
					Rules: []policies.IdentityRule{{
						Name: "frontends-read",
						From: []policies.IdentitySource{{IDs: []string{"spiffe://" + TrustDomain + "/ns/*/sa/frontend"}}},
						To:   []policies.IdentityTarget{{Methods: []string{"GET"}, Paths: []string{"/api/v1/" + name + "/*"}}},
					}},
				},
			})
		}
	}
	return set, m
}

// Requests returns n requests against random services of m: roughly half
// allowed by the generated policies, the rest denied for various reasons.
func Requests(set *policies.Set, m Mesh, n int, seed int64) []policies.Attributes {
	rng := rand.New(rand.NewSource(seed))
	out := make([]policies.Attributes, n)
	// Index the first principal of each service's first rule, to make
	// allowed requests.
	allowedCaller := make(map[string]string, m.Services)
	for i := range set.AuthorizationPolicies {
		p := &set.AuthorizationPolicies[i]
		if p.Spec.Selector == nil || len(p.Spec.Rules) == 0 || len(p.Spec.Rules[0].From) == 0 {
			continue
		}
		allowedCaller[p.Spec.Selector.MatchLabels["app"]] = p.Spec.Rules[0].From[0].Source.Principals[0]
	}
	for i := range out {
		svc := rng.Intn(m.Services)
		name := service(svc)
		a := policies.Attributes{
			MTLS:            true,
			SourceIP:        netip.AddrFrom4([4]byte{10, 0, byte(rng.Intn(256)), byte(rng.Intn(256))}),
			DestinationPort: 8080,
			Target: policies.Target{
				ID:        m.ID(svc),
				Namespace: m.namespace(svc),
				Labels:    map[string]string{"app": name},
				Service:   name,
			},
			Host:    name + "." + m.namespace(svc) + ".svc.cluster.local:8080",
			Method:  "GET",
			Headers: policies.MapHeaders{"x-tenant": "shared", "user-agent": "bench"},
		}
		switch i % 4 {
		case 0, 1: // allowed: the listed caller reads an item
			a.Peer = spiffeid.RequireFromString("spiffe://" + allowedCaller[name])
			a.Path = fmt.Sprintf("/api/v1/%s/items/%d?verbose=1", name, rng.Intn(1000))
		case 2: // denied: a random caller writes
			a.Peer = m.ID(rng.Intn(m.Services))
			a.Method = "DELETE"
			a.Path = fmt.Sprintf("/api/v1/%s/items/%d", name, rng.Intn(1000))
		case 3: // denied by the mesh-wide DENY on /admin
			a.Peer = m.ID(rng.Intn(m.Services))
			a.Path = "/admin/users"
		}
		out[i] = a
	}
	return out
}
