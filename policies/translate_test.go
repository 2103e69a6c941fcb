package policies_test

import (
	"math/rand"
	"regexp"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshguard/meshguard/policies"
)

var idPatterns = []string{
	"spiffe://mesh.test",
	"spiffe://mesh.test/ns/prod/**",
	"spiffe://mesh.test/ns/*/sa/web",
	"spiffe://mesh.test/ns/prod/sa/*",
	"spiffe://mesh.test/*",
	"spiffe://mesh.test/**",
	"spiffe://mesh.test/ns/prod/sa/web",
	"spiffe://mesh.test/a.b/*/c",
	"spiffe://mesh.test/ns/*/sa/*/**",
	"spiffe://other.test/ns/prod/**",
}

var idSegments = []string{"ns", "prod", "sa", "web", "a.b", "aXb", "...", ".x", "x.", "-", "_", "prod2", "c"}

// randomID is a valid SPIFFE ID over a small vocabulary, so that patterns
// and IDs meet often.
func randomID(rng *rand.Rand) spiffeid.ID {
	td := []string{"mesh.test", "other.test", "mesh.test2"}[rng.Intn(3)]
	seg := func() string { return idSegments[rng.Intn(len(idSegments))] }
	var b strings.Builder
	b.WriteString("spiffe://" + td)
	switch rng.Intn(3) {
	case 0: // any segments
		for range rng.Intn(6) {
			b.WriteString("/" + seg())
		}
	case 1: // Kubernetes form, sometimes with more after
		b.WriteString("/ns/" + seg() + "/sa/" + seg())
		if rng.Intn(4) == 0 {
			b.WriteString("/" + seg())
		}
	default:
		b.WriteString("/a.b/" + seg() + "/c")
	}
	return spiffeid.RequireFromString(b.String())
}

// TestIDPatternRegexp: the expression matches what Match matches, over
// thousands of IDs, and refuses strings that are no valid ID.
func TestIDPatternRegexp(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	for _, src := range idPatterns {
		p, err := policies.ParseIDPattern(src)
		if err != nil {
			t.Fatal(err)
		}
		re := regexp.MustCompile(p.Regexp())
		matched := 0
		for range 3000 {
			id := randomID(rng)
			want := p.Match(id)
			if got := re.MatchString(id.String()); got != want {
				t.Fatalf("%s ~ %s: regexp %v, Match %v (%s)", src, id, got, want, p.Regexp())
			}
			if want {
				matched++
			}
		}
		if matched == 0 {
			t.Errorf("%s matched none of the IDs: the comparison shows nothing", src)
		}
		for _, bad := range []string{"spiffe://mesh.test/ns/prod/sa/./x", "spiffe://mesh.test/ns/prod/../web", "spiffe://mesh.test/ns//prod", "spiffe://mesh.test/ns/prod/sa/web/", "spiffe://mesh.test/ns/prod/sa/w%20b", "spiffe://mesh.test.evil/ns/prod/sa/web"} {
			if re.MatchString(bad) {
				t.Errorf("%s: regexp accepts %q, which is no SPIFFE ID it covers", src, bad)
			}
		}
	}
	exact, _ := policies.ParseIDPattern("spiffe://mesh.test/ns/prod/sa/web")
	if id, ok := exact.Exact(); !ok || id.String() != "spiffe://mesh.test/ns/prod/sa/web" {
		t.Errorf("Exact() = %v, %v", id, ok)
	}
	glob, _ := policies.ParseIDPattern("spiffe://mesh.test/ns/prod/**")
	if _, ok := glob.Exact(); ok {
		t.Error("a glob has an exact ID")
	}
}

func TestNamespaceIDRegexp(t *testing.T) {
	re := regexp.MustCompile(policies.NamespaceIDRegexp(regexp.QuoteMeta("prod")))
	for id, want := range map[string]bool{
		"spiffe://mesh.test/ns/prod/sa/web":        true,
		"spiffe://other.test/ns/prod/sa/x":         true,
		"spiffe://mesh.test/ns/prod/sa/web/extra":  false,
		"spiffe://mesh.test/ns/evil/sa/x/ns/prod/": false,
		"spiffe://mesh.test/ns/prod2/sa/web":       false,
		"spiffe://mesh.test/ns/prod":               false,
	} {
		if got := re.MatchString(id); got != want {
			t.Errorf("%s: %v, want %v", id, got, want)
		}
	}
}

// TestPathPatternRegexp: the expression matches what Match matches, with
// and without case folding.
func TestPathPatternRegexp(t *testing.T) {
	values := []string{"*", "/api", "/api*", "*/status", "/api/{*}/items", "/api/{**}", "/{*}", "/{*}/{**}", "/", "/a/", "/API/v1*", "/api/{*}",
		"/a/{**}/b", "/{**}", "/a/{*}/", "/{**}/status", "/api/{*}/{**}/x"}
	segs := []string{"api", "API", "items", "v1", "status", "", "x", "a", "b", "a=b", "w rd", "%41", "x*y"}
	rng := rand.New(rand.NewSource(2))
	for _, v := range values {
		p, err := policies.ParsePathPattern(v)
		if err != nil {
			t.Fatal(err)
		}
		for _, fold := range []bool{false, true} {
			re := regexp.MustCompile(p.Regexp(fold))
			matched := 0
			for range 3000 {
				var b strings.Builder
				for range rng.Intn(5) {
					b.WriteString("/" + segs[rng.Intn(len(segs))])
				}
				path := b.String()
				if path == "" || rng.Intn(8) == 0 {
					path += "/"
				}
				want := p.Match(path, fold)
				if got := re.MatchString(path); got != want {
					t.Fatalf("%s (fold %v) ~ %q: regexp %v, Match %v (%s)", v, fold, path, got, want, p.Regexp(fold))
				}
				if want {
					matched++
				}
			}
			if matched == 0 {
				t.Errorf("%s matched no path", v)
			}
		}
	}
	for _, bad := range []string{"/a/{x}", "/a?b", "a*b", "/a/{**}/{*}", "/a/b c/{*}"} {
		if _, err := policies.ParsePathPattern(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// TestPoliciesFor: the engine's scope resolution, per workload.
func TestPoliciesFor(t *testing.T) {
	snap := compileYAML(t, `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh, namespace: istio-system}
spec: {action: DENY, rules: [{to: [{operation: {paths: [/admin]}}]}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ns-wide, namespace: prod}
spec: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-only, namespace: prod}
spec: {selector: {matchLabels: {app: web}}, rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: by-service, namespace: prod}
spec: {targetRefs: [{kind: Service, group: "", name: web}], rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: other-ns, namespace: dev}
spec: {}
---
apiVersion: meshguard.dev/v1alpha1
kind: DefaultDeny
metadata: {name: prod-all, namespace: prod}
spec: {workloads: ["spiffe://mesh.test/ns/prod/**"]}
---
apiVersion: meshguard.dev/v1alpha1
kind: DefaultDeny
metadata: {name: off, namespace: prod}
spec: {mode: "off"}
---
apiVersion: meshguard.dev/v1alpha1
kind: IdentityPolicy
metadata: {name: api-only, namespace: prod}
spec: {workloads: ["spiffe://mesh.test/ns/prod/sa/api"], mode: dry-run, rules: [{from: [{trustDomains: [mesh.test]}]}]}
`)

	web := policies.Target{ID: spiffeid.RequireFromString("spiffe://mesh.test/ns/prod/sa/web"), Namespace: "prod", Labels: map[string]string{"app": "web"}, Service: "web"}
	got := snap.PoliciesFor(&web)
	slices.Sort(got)
	want := []string{"AuthorizationPolicy/istio-system/mesh", "AuthorizationPolicy/prod/by-service", "AuthorizationPolicy/prod/ns-wide", "AuthorizationPolicy/prod/web-only", "DefaultDeny/prod/prod-all"}
	if !slices.Equal(got, want) {
		t.Errorf("web: %v\nwant %v", got, want)
	}
	api := policies.Target{ID: spiffeid.RequireFromString("spiffe://mesh.test/ns/prod/sa/api"), Namespace: "prod", Labels: map[string]string{"app": "api"}, Service: "api"}
	got = snap.PoliciesFor(&api)
	slices.Sort(got)
	want = []string{"AuthorizationPolicy/istio-system/mesh", "AuthorizationPolicy/prod/ns-wide", "DefaultDeny/prod/prod-all", "IdentityPolicy/prod/api-only"}
	if !slices.Equal(got, want) {
		t.Errorf("api: %v\nwant %v", got, want)
	}
	// A workload of another namespace is not in prod's scope, even with
	// matching labels.
	dev := policies.Target{ID: spiffeid.RequireFromString("spiffe://mesh.test/ns/dev/sa/web"), Labels: map[string]string{"app": "web"}, Service: "web"}
	got = snap.PoliciesFor(&dev)
	slices.Sort(got)
	want = []string{"AuthorizationPolicy/dev/other-ns", "AuthorizationPolicy/istio-system/mesh"}
	if !slices.Equal(got, want) {
		t.Errorf("dev: %v\nwant %v", got, want)
	}
}

// FuzzIDPatternRegexp: for every pattern the parser accepts and every ID,
// the expression and Match agree.
func FuzzIDPatternRegexp(f *testing.F) {
	for _, p := range idPatterns {
		f.Add(p, "spiffe://mesh.test/ns/prod/sa/web")
	}
	f.Fuzz(func(t *testing.T, pattern, id string) {
		p, err := policies.ParseIDPattern(pattern)
		if err != nil {
			return
		}
		re, err := regexp.Compile(p.Regexp())
		if err != nil {
			t.Fatalf("%s: %v", p.Regexp(), err)
		}
		sid, err := spiffeid.FromString(id)
		if err != nil {
			return
		}
		if got, want := re.MatchString(sid.String()), p.Match(sid); got != want {
			t.Fatalf("%s ~ %s: regexp %v, Match %v", pattern, sid, got, want)
		}
	})
}

// FuzzPathPatternRegexp: likewise for paths, with and without folding.
func FuzzPathPatternRegexp(f *testing.F) {
	f.Add("/api/{*}/items", "/api/x/items", false)
	f.Add("/API*", "/api/v1", true)
	f.Add("*/status", "/a/status", false)
	f.Fuzz(func(t *testing.T, value, path string, fold bool) {
		p, err := policies.ParsePathPattern(value)
		if err != nil || !utf8.ValidString(path) {
			return // the engine refuses request paths outside ASCII before any rule
		}
		re, err := regexp.Compile(p.Regexp(fold))
		if err != nil {
			t.Fatalf("%s: %v", p.Regexp(fold), err)
		}
		if got, want := re.MatchString(path), p.Match(path, fold); got != want {
			t.Fatalf("%q (fold %v) ~ %q: regexp %v, Match %v", value, fold, path, got, want)
		}
	})
}

func TestMatchValue(t *testing.T) {
	for _, c := range []struct {
		pattern, s string
		want       bool
	}{
		{"*", "x", true}, {"*", "", false}, {"users*", "users-list", true}, {"users*", "Users", false},
		{"*-list", "users-list", true}, {"users", "users", true}, {"users", "users2", false},
	} {
		if got := policies.MatchValue(c.pattern, c.s); got != c.want {
			t.Errorf("%q ~ %q = %v", c.pattern, c.s, got)
		}
	}
}
