package policies_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"sigs.k8s.io/yaml"

	"github.com/meshguard/meshguard/policies"
)

// setFromYAML builds a set from YAML documents. The product reads files with
// policies/source; these tests stay independent of it.
func setFromYAML(t testing.TB, docs string) policies.Set {
	t.Helper()
	var set policies.Set
	for _, doc := range strings.Split(docs, "\n---\n") {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		var head struct {
			Kind string `json:"kind"`
		}
		if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
			t.Fatalf("yaml: %v\n%s", err, doc)
		}
		var err error
		switch head.Kind {
		case policies.KindAuthorizationPolicy:
			var p policies.AuthorizationPolicy
			err = yaml.UnmarshalStrict([]byte(doc), &p)
			set.AuthorizationPolicies = append(set.AuthorizationPolicies, p)
		case policies.KindRequestAuthentication:
			var p policies.RequestAuthentication
			err = yaml.UnmarshalStrict([]byte(doc), &p)
			set.RequestAuthentications = append(set.RequestAuthentications, p)
		case policies.KindIdentityPolicy:
			var p policies.IdentityPolicy
			err = yaml.UnmarshalStrict([]byte(doc), &p)
			set.IdentityPolicies = append(set.IdentityPolicies, p)
		case policies.KindDefaultDeny:
			var p policies.DefaultDeny
			err = yaml.UnmarshalStrict([]byte(doc), &p)
			set.DefaultDenies = append(set.DefaultDenies, p)
		case policies.KindRouteOverride:
			var p policies.RouteOverride
			err = yaml.UnmarshalStrict([]byte(doc), &p)
			set.RouteOverrides = append(set.RouteOverrides, p)
		case policies.KindQuarantine:
			var p policies.Quarantine
			err = yaml.UnmarshalStrict([]byte(doc), &p)
			set.Quarantines = append(set.Quarantines, p)
		case policies.KindTrafficBaseline:
			var p policies.TrafficBaseline
			err = yaml.UnmarshalStrict([]byte(doc), &p)
			set.TrafficBaselines = append(set.TrafficBaselines, p)
		case policies.KindAnomalyProfile:
			var p policies.AnomalyProfile
			err = yaml.UnmarshalStrict([]byte(doc), &p)
			set.AnomalyProfiles = append(set.AnomalyProfiles, p)
		case policies.KindMeshSettings:
			var p policies.MeshSettings
			err = yaml.UnmarshalStrict([]byte(doc), &p)
			set.Settings = p.Spec
		default:
			t.Fatalf("unknown kind %q", head.Kind)
		}
		if err != nil {
			t.Fatalf("yaml: %v\n%s", err, doc)
		}
	}
	return set
}

func compileYAML(t testing.TB, docs string) *policies.Snapshot {
	t.Helper()
	return compileSet(t, "test", setFromYAML(t, docs))
}

// compileSet bundles set as version and compiles it.
func compileSet(t testing.TB, version string, set policies.Set) *policies.Snapshot {
	t.Helper()
	b, _, err := policies.NewBundle(version, set)
	if err != nil {
		t.Fatal(err)
	}
	s, err := policies.Compile(b)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// rq builds attributes: a caller (SPIFFE ID or "" for none), a method and a
// path, to workload "app=web" in namespace "shop" unless changed by opts.
func rq(source, method, path string, opts ...func(*policies.Attributes)) *policies.Attributes {
	a := &policies.Attributes{
		Method:          method,
		Path:            path,
		Host:            "web.shop.svc.cluster.local",
		DestinationPort: 8080,
		SourceIP:        netip.MustParseAddr("10.1.2.3"),
		Target: policies.Target{
			ID:        spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/web"),
			Namespace: "shop",
			Labels:    map[string]string{"app": "web", "version": "v1"},
			Service:   "web",
		},
		Headers: policies.MapHeaders{},
	}
	if source != "" {
		a.Peer = spiffeid.RequireFromString(source)
		a.MTLS = true
	}
	for _, o := range opts {
		o(a)
	}
	return a
}

func withHeader(k, v string) func(*policies.Attributes) {
	return func(a *policies.Attributes) { a.Headers.(policies.MapHeaders)[k] = v }
}

func withHost(h string) func(*policies.Attributes) {
	return func(a *policies.Attributes) { a.Host = h }
}

func withRoute(r string) func(*policies.Attributes) {
	return func(a *policies.Attributes) { a.Route = r }
}

// withTarget sets the target: labels are all it has (nil: none).
func withTarget(ns string, labels map[string]string, id string) func(*policies.Attributes) {
	return func(a *policies.Attributes) {
		a.Target.Namespace = ns
		a.Target.Labels = labels
		a.Target.Resolved = true
		a.Target.ID = spiffeid.ID{}
		if id != "" {
			a.Target.ID = spiffeid.RequireFromString(id)
		}
	}
}

func withIP(src, remote string) func(*policies.Attributes) {
	return func(a *policies.Attributes) {
		a.SourceIP = netip.MustParseAddr(src)
		if remote != "" {
			a.RemoteIP = netip.MustParseAddr(remote)
		}
	}
}

func withJWT(sub string, aud []string, claims map[string]any) func(*policies.Attributes) {
	return func(a *policies.Attributes) {
		id := spiffeid.RequireFromString(sub)
		a.JWT = &policies.JWT{Subject: sub, SVID: id, Issuer: id.TrustDomain().Name(), Principal: id.TrustDomain().Name() + "/" + sub, Audiences: aud, Claims: claims}
	}
}

type want struct {
	allowed bool
	reason  policies.Reason
	policy  string
	rule    string
}

func check(t *testing.T, s *policies.Snapshot, a *policies.Attributes, w want) policies.Decision {
	t.Helper()
	d := s.Decide(a)
	if d.Allowed != w.allowed || (w.reason != "" && d.Reason != w.reason) ||
		(w.policy != "" && d.Ref.Policy != w.policy) || (w.rule != "" && d.Ref.Rule != w.rule) {
		_, tr := s.Explain(a)
		t.Errorf("%s %s %s from %q: got %+v, want %+v\ntrace: %+v", a.Method, a.Host, a.Path, a.Peer, d, w, tr)
	}
	return d
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }
