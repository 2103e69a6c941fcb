package detect

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/meshguard/meshguard/policies"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

var (
	web      = spiffeid.RequireFromString("spiffe://mesh.test/ns/shop/sa/web")
	attacker = spiffeid.RequireFromString("spiffe://mesh.test/ns/shop/sa/compromised")
	ops      = spiffeid.RequireFromString("spiffe://mesh.test/ns/ops/sa/node-agent")
	t0       = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
)

// allDetectors is a profile running every detector with the given responses.
func allDetectors(responses map[string]string) policies.AnomalyProfile {
	return policies.AnomalyProfile{
		Metadata: policies.ObjectMeta{Name: "all", Namespace: "mesh"},
		Spec: policies.AnomalyProfileSpec{
			Rate: &policies.RateDetector{}, Errors: &policies.ErrorDetector{},
			Enumeration: &policies.EnumerationDetector{},
			Egress:      &policies.EgressDetector{AllowedIDs: []string{"spiffe://mesh.test/ns/ops/**"}},
			Lateral:     &policies.LateralDetector{},
			Responses:   responses,
		},
	}
}

func newEngine(t testing.TB, set policies.Set) *Engine {
	t.Helper()
	return NewEngine(newConfig(t, set, Tuning{}))
}

// newConfig compiles set with the policy engine (as the filter does) and
// the detection settings on top.
func newConfig(t testing.TB, set policies.Set, tu Tuning) *Config {
	t.Helper()
	b, _, err := policies.NewBundle("test", set)
	if err != nil {
		t.Fatal(err)
	}
	snap, err := policies.Compile(b)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := NewConfig(&b.Set, snap, tu)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// legit is one request of a well-behaved client: a handful of endpoints,
// record IDs in paths, GET/POST, destination "orders".
func legit(rng *rand.Rand, now int64, src spiffeid.ID) Request {
	eps := []string{"/api/orders/%d", "/api/orders/%d/items", "/api/customers/%d", "/healthz", "/api/cart", "/api/products/%x-%x-%x-%x"}
	ep := eps[rng.IntN(len(eps))]
	var path string
	switch strings.Count(ep, "%") {
	case 0:
		path = ep
	case 1:
		path = fmt.Sprintf(ep, rng.IntN(100000))
	default:
		path = fmt.Sprintf(ep, rng.Uint32(), rng.Uint32()&0xffff, rng.Uint32()&0xffff, rng.Uint64())
	}
	m := "GET"
	if rng.IntN(5) == 0 {
		m = "POST"
	}
	return Request{Now: now, Source: src, Method: m, Path: path + "?page=2", Authority: "orders.shop.svc.cluster.local:8080", Route: "orders-api"}
}

func legitStatus(rng *rand.Rand) int {
	switch x := rng.IntN(100); {
	case x < 2:
		return 404
	case x < 3:
		return 503
	case x < 4:
		return 403
	}
	return 200
}

// run sends rps requests per second (±25% jitter) for secs seconds and
// returns every finding.
func run(e *Engine, rng *rand.Rand, start int64, secs, rps int, src spiffeid.ID) (findings []Finding, denied int, end int64) {
	now := start
	for s := 0; s < secs; s++ {
		n := rps + rng.IntN(rps/2+1) - rps/4
		for i := 0; i < n; i++ {
			now = start + int64(s)*1e9 + int64(i)*(1e9/int64(n+1))
			r := legit(rng, now, src)
			v := e.Observe(&r)
			findings = append(findings, v.Findings[:v.N]...)
			if v.Status != 0 {
				denied++
				continue
			}
			v2 := e.ObserveResponse(v.Ref, now+1e6, legitStatus(rng))
			findings = append(findings, v2.Findings[:v2.N]...)
		}
	}
	return findings, denied, start + int64(secs)*1e9
}

func TestSteadyTrafficStaysQuiet(t *testing.T) {
	// Ten minutes of steady traffic: 60 error/enumeration windows and
	// 600 rate buckets with no finding at all.
	set := policies.Set{
		AnomalyProfiles: []policies.AnomalyProfile{allDetectors(map[string]string{"rate": "block", "errors": "block", "enumeration": "block"})},
		TrafficBaselines: []policies.TrafficBaseline{{Metadata: policies.ObjectMeta{Name: "b", Namespace: "shop"}, Spec: policies.TrafficBaselineSpec{
			Mode: policies.BaselineEnforce, Edges: []policies.Edge{{Source: "spiffe://mesh.test/ns/shop/sa/web", Destination: "orders", Routes: []string{"orders-api"}}}}}},
	}
	for _, rps := range []int{8, 40, 200} {
		t.Run(fmt.Sprint(rps, "rps"), func(t *testing.T) {
			e := newEngine(t, set)
			rng := rand.New(rand.NewPCG(1, uint64(rps)))
			f, denied, _ := run(e, rng, t0, 600, rps, web)
			if len(f) != 0 || denied != 0 {
				t.Fatalf("steady traffic: %d findings (first %+v), %d denied", len(f), first(f), denied)
			}
		})
	}
}

func first(f []Finding) Finding {
	if len(f) == 0 {
		return Finding{}
	}
	return f[0]
}

func has(f []Finding, d Detector, detail string) bool {
	for _, x := range f {
		if x.Detector == d && (detail == "" || x.Detail == detail) {
			return true
		}
	}
	return false
}

func TestRateBurstFires(t *testing.T) {
	e := newEngine(t, policies.Set{AnomalyProfiles: []policies.AnomalyProfile{allDetectors(map[string]string{"rate": "rate-limit"})}})
	rng := rand.New(rand.NewPCG(2, 2))
	f, _, now := run(e, rng, t0, 120, 20, web)
	if has(f, DetRate, "") {
		t.Fatal("rate fired during the steady phase")
	}
	// A burst of 400 requests within one second.
	var limited int
	var fired Finding
	for i := 0; i < 400; i++ {
		r := legit(rng, now+int64(i)*1e6, web)
		v := e.Observe(&r)
		for _, x := range v.Findings[:v.N] {
			if x.Detector == DetRate {
				fired = x
			}
		}
		if v.Status == 429 {
			limited++
			if v.Reason != policies.ReasonRateLimited {
				t.Fatalf("reason %s", v.Reason)
			}
		}
	}
	if fired.Detector != DetRate || fired.Score < DefaultZScore || fired.Response != RespRateLimit {
		t.Fatalf("rate finding %+v", fired)
	}
	if limited < 300 {
		t.Fatalf("only %d of 400 burst requests were limited", limited)
	}
}

func TestRateNeedsVolumeAndWarmup(t *testing.T) {
	e := newEngine(t, policies.Set{AnomalyProfiles: []policies.AnomalyProfile{allDetectors(nil)}})
	// A brand-new caller starting at 100 rps is not a rate anomaly (no history).
	rng := rand.New(rand.NewPCG(3, 3))
	if f, _, _ := run(e, rng, t0, 5, 100, web); has(f, DetRate, "") {
		t.Fatal("rate fired before warm-up")
	}
	// A caller at 0.2 rps jumping to 4 rps stays below the volume floor.
	e = newEngine(t, policies.Set{AnomalyProfiles: []policies.AnomalyProfile{allDetectors(nil)}})
	now := t0
	for s := 0; s < 100; s += 5 {
		r := legit(rng, t0+int64(s)*1e9, web)
		e.Observe(&r)
		now = r.Now
	}
	now += 1e9
	for i := 0; i < 4; i++ {
		r := legit(rng, now+int64(i)*1e6, web)
		if v := e.Observe(&r); v.N != 0 {
			t.Fatalf("finding below the floor: %+v", v.Findings[0])
		}
	}
}

func TestErrorDetectors(t *testing.T) {
	cases := []struct {
		name   string
		method string
		status int
		detail string
	}{
		{"credential probing", "GET", 401, "auth_failures"},
		{"forbidden probing", "GET", 403, "auth_failures"},
		{"enumeration by 404", "GET", 404, "not_found"},
		{"server errors", "GET", 500, "error_ratio"},
		{"rare methods", "TRACE", 200, "rare_methods"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEngine(t, policies.Set{AnomalyProfiles: []policies.AnomalyProfile{allDetectors(map[string]string{"errors": "block"})}})
			var got []Finding
			blocked := false
			for i := 0; i < 40; i++ {
				now := t0 + int64(i)*50e6
				r := Request{Now: now, Source: attacker, Method: tc.method, Path: "/login", Authority: "auth"}
				v := e.Observe(&r)
				got = append(got, v.Findings[:v.N]...)
				if v.Status == 403 {
					blocked = true
					if v.Reason != policies.ReasonDeniedAnomaly {
						t.Fatalf("reason %s", v.Reason)
					}
					continue
				}
				v = e.ObserveResponse(v.Ref, now+1e6, tc.status)
				got = append(got, v.Findings[:v.N]...)
			}
			if !has(got, DetErrors, tc.detail) {
				t.Fatalf("want errors/%s, got %+v", tc.detail, got)
			}
			if !blocked {
				t.Fatal("block response did not deny later requests")
			}
		})
	}
}

func TestEnumerationAndFanOut(t *testing.T) {
	e := newEngine(t, policies.Set{AnomalyProfiles: []policies.AnomalyProfile{allDetectors(nil)}})
	var got []Finding
	words := []string{"admin", ".git", "backup", "config", "wp-login.php", "env", "debug", "console", "actuator", "swagger"}
	for i := 0; i < 120; i++ {
		r := Request{Now: t0 + int64(i)*10e6, Source: attacker, Method: "GET",
			Path: fmt.Sprintf("/%s/%s", words[i%len(words)], words[(i/len(words))%len(words)]), Authority: "orders"}
		v := e.Observe(&r)
		got = append(got, v.Findings[:v.N]...)
	}
	if !has(got, DetEnumeration, "distinct_paths") {
		t.Fatalf("no distinct_paths finding: %+v", got)
	}
	got = nil
	for i := 0; i < 30; i++ {
		r := Request{Now: t0 + 20e9 + int64(i)*10e6, Source: attacker, Method: "GET", Path: "/", Authority: fmt.Sprintf("svc-%d.shop.svc:80", i)}
		v := e.Observe(&r)
		got = append(got, v.Findings[:v.N]...)
	}
	if !has(got, DetEnumeration, "distinct_destinations") {
		t.Fatalf("no distinct_destinations finding: %+v", got)
	}
}

func TestEgress(t *testing.T) {
	e := newEngine(t, policies.Set{AnomalyProfiles: []policies.AnomalyProfile{allDetectors(map[string]string{"egress": "block"})}})
	cases := []struct {
		name      string
		src       spiffeid.ID
		authority string
		dst       string
		fires     bool
	}{
		{"metadata by authority", attacker, "169.254.169.254", "", true},
		{"metadata by name", web, "Metadata.Google.Internal.", "", true},
		{"kubernetes api", web, "kubernetes.default.svc:443", "", true},
		{"metadata by destination address", web, "innocent.example", "169.254.169.254", true},
		{"ipv6 metadata", web, "[fd00:ec2::254]:80", "", true},
		{"allowed identity", ops, "kubernetes.default.svc", "", false},
		{"ordinary service", web, "orders:8080", "10.0.0.3", false},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := Request{Now: t0 + int64(i)*100e9, Source: tc.src, Method: "GET", Path: "/", Authority: tc.authority}
			if tc.dst != "" {
				r.DestAddr = netip.MustParseAddr(tc.dst)
			}
			v := e.Observe(&r)
			if got := has(v.Findings[:v.N], DetEgress, ""); got != tc.fires {
				t.Fatalf("fired=%v want %v", got, tc.fires)
			}
			if tc.fires && v.Status != 403 {
				t.Fatalf("status %d, want 403", v.Status)
			}
		})
	}
}

func baselineSet(mode string) policies.Set {
	return policies.Set{
		AnomalyProfiles: []policies.AnomalyProfile{allDetectors(nil)},
		TrafficBaselines: []policies.TrafficBaseline{{Metadata: policies.ObjectMeta{Name: "graph", Namespace: "shop"}, Spec: policies.TrafficBaselineSpec{
			Mode: mode, Edges: []policies.Edge{{Source: "spiffe://mesh.test/ns/shop/sa/web", Destination: "orders", Routes: []string{"orders-api"}}}}}},
	}
}

func TestLateral(t *testing.T) {
	req := func(e *Engine, i int, src spiffeid.ID, svc, route string) Verdict {
		r := Request{Now: t0 + int64(i)*1e6, Source: src, Method: "GET", Path: "/", Authority: svc + ".shop.svc.cluster.local", Route: route}
		return e.Observe(&r)
	}
	t.Run("learn reports every new edge once", func(t *testing.T) {
		e := newEngine(t, baselineSet(policies.BaselineLearn))
		v := req(e, 0, web, "orders", "orders-api")
		if !v.Edge.Report || !v.Edge.Known || v.Edge.Dest != "orders.shop.svc.cluster.local" {
			t.Fatalf("edge %+v", v.Edge)
		}
		if v = req(e, 1, web, "orders", "orders-api"); v.Edge.Report {
			t.Fatal("edge reported twice")
		}
		if v = req(e, 2, attacker, "payments", "pay"); !v.Edge.Report || v.Edge.Known || v.Status != 0 {
			t.Fatalf("unknown edge in learn: %+v status %d", v.Edge, v.Status)
		}
	})
	t.Run("shadow reports unknown edges and fires above maxNewEdges", func(t *testing.T) {
		e := newEngine(t, baselineSet(policies.BaselineShadow))
		if v := req(e, 0, web, "orders", "orders-api"); v.Edge.Report {
			t.Fatal("known edge reported in shadow mode")
		}
		var fired bool
		for i, svc := range []string{"payments", "users", "inventory", "billing", "admin"} {
			v := req(e, i+1, attacker, svc, "r")
			if !v.Edge.Report || v.Status != 0 {
				t.Fatalf("%s: %+v status %d", svc, v.Edge, v.Status)
			}
			fired = fired || has(v.Findings[:v.N], DetLateral, "unknown_edges")
		}
		if !fired {
			t.Fatal("lateral did not fire")
		}
	})
	t.Run("enforce denies unknown edges", func(t *testing.T) {
		e := newEngine(t, baselineSet(policies.BaselineEnforce))
		if v := req(e, 0, web, "orders", "orders-api"); v.Status != 0 {
			t.Fatalf("known edge denied: %+v", v)
		}
		if v := req(e, 1, web, "orders", "orders-admin"); v.Status != 403 || v.Reason != policies.ReasonDeniedBaseline {
			t.Fatalf("unknown route: status %d reason %s", v.Status, v.Reason)
		}
		if v := req(e, 2, attacker, "orders", "orders-api"); v.Status != 403 {
			t.Fatalf("unknown source: status %d", v.Status)
		}
	})
}

func TestRouteOverrides(t *testing.T) {
	z := 100.0
	set := policies.Set{
		AnomalyProfiles: []policies.AnomalyProfile{allDetectors(map[string]string{"egress": "block"})},
		RouteOverrides: []policies.RouteOverride{
			{Metadata: policies.ObjectMeta{Name: "dry", Namespace: "shop"}, Spec: policies.RouteOverrideSpec{Route: "dry", Mode: policies.ModeDryRun}},
			{Metadata: policies.ObjectMeta{Name: "quiet", Namespace: "shop"}, Spec: policies.RouteOverrideSpec{Route: "quiet", Anomaly: &policies.AnomalyOverrides{Response: "count", RateZ: &z}}},
		},
	}
	e := newEngine(t, set)
	r := Request{Now: t0, Source: attacker, Method: "GET", Path: "/", Authority: "169.254.169.254", Route: "dry"}
	v := e.Observe(&r)
	if v.Status != 0 || !v.DryRun || v.N != 1 || !v.Findings[0].DryRun || v.Findings[0].Response != RespLog {
		t.Fatalf("dry-run: %+v", v)
	}
	r = Request{Now: t0 + 1e9, Source: web, Method: "GET", Path: "/", Authority: "169.254.169.254", Route: "quiet"}
	v = e.Observe(&r)
	if v.Status != 0 || v.N != 1 || v.Findings[0].Response != RespCount {
		t.Fatalf("count override: %+v", v)
	}
}

func TestQuarantineResponse(t *testing.T) {
	ap := allDetectors(map[string]string{"egress": "quarantine"})
	ap.Spec.QuarantineFor = "1h"
	e := newEngine(t, policies.Set{AnomalyProfiles: []policies.AnomalyProfile{ap}})
	r := Request{Now: t0, Source: attacker, Method: "GET", Path: "/", Authority: "metadata"}
	v := e.Observe(&r)
	if !v.Quarantine || v.QuarantineFor != int64(time.Hour) || v.Status != 403 {
		t.Fatalf("%+v", v)
	}
	r = Request{Now: t0 + int64(59*time.Minute), Source: attacker, Method: "GET", Path: "/ok", Authority: "orders"}
	if v = e.Observe(&r); v.Status != 403 || v.Reason != policies.ReasonDeniedAnomaly {
		t.Fatalf("not blocked after quarantine: %+v", v)
	}
	r.Now = t0 + int64(61*time.Minute)
	if v = e.Observe(&r); v.Status != 0 {
		t.Fatalf("still blocked after expiry: %+v", v)
	}
}

func TestTableIsBounded(t *testing.T) {
	set := policies.Set{AnomalyProfiles: []policies.AnomalyProfile{allDetectors(nil)}}
	e := NewEngine(newConfig(t, set, Tuning{Capacity: 64}))
	for i := 0; i < 100000; i++ {
		id := spiffeid.RequireFromString(fmt.Sprintf("spiffe://mesh.test/ns/n/sa/s%d", i))
		r := Request{Now: t0 + int64(i)*1e6, Source: id, Method: "GET", Path: "/", Authority: "a"}
		e.Observe(&r)
	}
	st := e.Stats()
	if st.Capacity != 64 || st.Identities != 64 || st.Evictions != 100000-64 {
		t.Fatalf("%+v", st)
	}
	// Anonymous callers are keyed by address.
	r := Request{Now: t0, SourceAddr: netip.MustParseAddr("10.1.2.3"), Method: "GET", Path: "/", Authority: "a"}
	e.Observe(&r)
	if got := e.Source(e.Observe(&r).Ref); got != "10.1.2.3" {
		t.Fatalf("anonymous source %q", got)
	}
}

// TestCompilerRefusesWhatTheDetectorsCannotRun: NewConfig does not check
// again what the policy compiler checks. For every setting the detectors
// cannot run, the compiler must refuse the set with the field named, and
// NewConfig, given the set anyway, must refuse it too (fail closed).
func TestCompilerRefusesWhatTheDetectorsCannotRun(t *testing.T) {
	f := func(v float64) *float64 { return &v }
	profile := func(edit func(*policies.AnomalyProfileSpec)) policies.Set {
		p := allDetectors(nil)
		edit(&p.Spec)
		return policies.Set{AnomalyProfiles: []policies.AnomalyProfile{p}}
	}
	route := func(mode policies.Mode, a *policies.AnomalyOverrides) policies.Set {
		set := profile(func(*policies.AnomalyProfileSpec) {})
		set.RouteOverrides = []policies.RouteOverride{{Metadata: policies.ObjectMeta{Name: "r", Namespace: "mesh"},
			Spec: policies.RouteOverrideSpec{Route: "x", Mode: mode, Anomaly: a}}}
		return set
	}
	bad := map[string]policies.Set{
		"spec.workloads":              profile(func(s *policies.AnomalyProfileSpec) { s.Workloads = []string{"web"} }),
		"spec.responses.nosuch":       profile(func(s *policies.AnomalyProfileSpec) { s.Responses = map[string]string{"nosuch": "log"} }),
		"spec.responses.rate":         profile(func(s *policies.AnomalyProfileSpec) { s.Responses = map[string]string{"rate": "explode"} }),
		"spec.quarantineFor":          profile(func(s *policies.AnomalyProfileSpec) { s.QuarantineFor = "-1m" }),
		"spec.rate.halfLife":          profile(func(s *policies.AnomalyProfileSpec) { s.Rate.HalfLife = "soon" }),
		"spec.rate":                   profile(func(s *policies.AnomalyProfileSpec) { s.Rate.ZScore = -1 }),
		"spec.errors.window":          profile(func(s *policies.AnomalyProfileSpec) { s.Errors.Window = "0s" }),
		"spec.errors.minRequests":     profile(func(s *policies.AnomalyProfileSpec) { s.Errors.MinRequests = -1 }),
		"spec.errors":                 profile(func(s *policies.AnomalyProfileSpec) { s.Errors.AuthRatio = 2 }),
		"spec.enumeration":            profile(func(s *policies.AnomalyProfileSpec) { s.Enumeration.MaxPaths = policies.MaxEnumerationPaths + 1 }),
		"spec.enumeration.window":     profile(func(s *policies.AnomalyProfileSpec) { s.Enumeration.Window = "ten" }),
		"spec.egress.destinations[1]": profile(func(s *policies.AnomalyProfileSpec) { s.Egress.Destinations = []string{"metadata", "http://x/"} }),
		"spec.egress.allowedIds":      profile(func(s *policies.AnomalyProfileSpec) { s.Egress.AllowedIDs = []string{"ops"} }),
		"spec.lateral.maxNewEdges":    profile(func(s *policies.AnomalyProfileSpec) { s.Lateral.MaxNewEdges = -2 }),
		"spec.mode":                   route("sometimes", nil),
		"spec.anomaly.profile":        route("", &policies.AnomalyOverrides{Profile: "missing"}),
		"spec.anomaly.rateZ":          route("", &policies.AnomalyOverrides{RateZ: f(0)}),
		"spec.anomaly.minRps":         route("", &policies.AnomalyOverrides{MinRPS: f(-1)}),
		"spec.anomaly.errorRatio":     route("", &policies.AnomalyOverrides{ErrorRate: f(1.5)}),
		"spec.anomaly.response":       route("", &policies.AnomalyOverrides{Response: "explode"}),
		"spec.enumeration destinations": profile(func(s *policies.AnomalyProfileSpec) {
			s.Enumeration.MaxDestinations = policies.MaxEnumerationDestinations + 1
		}),
		"spec.errors notFoundRatio":      profile(func(s *policies.AnomalyProfileSpec) { s.Errors.NotFoundRatio = -0.5 }),
		"spec.rate minRps":               profile(func(s *policies.AnomalyProfileSpec) { s.Rate.MinRPS = -3 }),
		"spec.egress.destinations[0]":    profile(func(s *policies.AnomalyProfileSpec) { s.Egress.Destinations = []string{"."} }),
		"spec.anomaly.profile (default)": route("", &policies.AnomalyOverrides{Profile: policies.DefaultAnomalyProfile}),
	}
	for name, set := range bad {
		t.Run(name, func(t *testing.T) {
			field, _, _ := strings.Cut(name, " ")
			errs := policies.Validate(&set).Errors()
			found := false
			for _, d := range errs {
				found = found || d.Field == field || strings.HasPrefix(d.Field, field+"[")
			}
			if !found {
				t.Errorf("the compiler does not refuse %s: %v", field, errs)
			}
			_, err := NewConfig(&set, nil, Tuning{})
			if err == nil || !strings.Contains(err.Error(), "policy compiler refuses") {
				t.Errorf("NewConfig accepted a set the compiler refuses: %v", err)
			}
		})
	}
	// What both accept: limits at their bounds, the built-in profile named
	// by a route in a set without profiles.
	good := map[string]policies.Set{
		"limits at their bounds": profile(func(s *policies.AnomalyProfileSpec) {
			s.Enumeration.MaxPaths, s.Enumeration.MaxDestinations = policies.MaxEnumerationPaths, policies.MaxEnumerationDestinations
			s.Egress.Destinations = []string{"169.254.169.254", "fd00:ec2::254", "metadata.google.internal."}
			s.Errors.AuthRatio, s.Errors.MinRequests, s.Lateral.MaxNewEdges = 1, 1, 1
		}),
		"the built-in profile": {RouteOverrides: []policies.RouteOverride{{Metadata: policies.ObjectMeta{Name: "r", Namespace: "mesh"},
			Spec: policies.RouteOverrideSpec{Route: "x", Anomaly: &policies.AnomalyOverrides{Profile: policies.DefaultAnomalyProfile}}}}},
		// A RouteOverride validated on its own, as the Kubernetes watcher
		// validates each object: the profile it names is elsewhere.
		"a profile named in a set without profiles": {RouteOverrides: []policies.RouteOverride{{Metadata: policies.ObjectMeta{Name: "r", Namespace: "mesh"},
			Spec: policies.RouteOverrideSpec{Route: "x", Anomaly: &policies.AnomalyOverrides{Profile: "strict"}}}}},
	}
	for name, set := range good {
		t.Run(name, func(t *testing.T) {
			if errs := policies.Validate(&set).Errors(); len(errs) > 0 {
				t.Fatalf("the compiler refuses: %v", errs)
			}
			if _, err := NewConfig(&set, nil, Tuning{}); err != nil {
				t.Fatalf("NewConfig refuses: %v", err)
			}
		})
	}
}

func TestHashPathFoldsIdentifiers(t *testing.T) {
	same := [][2]string{
		{"/api/orders/1", "/api/orders/99999"},
		{"/api/p/3f2a9c4e-1b2d-4e5f-8a9b-0c1d2e3f4a5b", "/api/p/00000000-0000-0000-0000-000000000000"},
		{"/a?x=1", "/a?y=2"},
		{"/a#f", "/a"},
	}
	for _, p := range same {
		if hashPath(p[0]) != hashPath(p[1]) {
			t.Errorf("%s and %s differ", p[0], p[1])
		}
	}
	diff := [][2]string{{"/admin", "/backup"}, {"/a/b", "/ab"}, {"/a/1", "/a/b"}, {"/cafe", "/beef"}}
	for _, p := range diff {
		if hashPath(p[0]) == hashPath(p[1]) {
			t.Errorf("%s and %s collide", p[0], p[1])
		}
	}
}

func TestHostOnly(t *testing.T) {
	for in, want := range map[string]string{
		"a.b:80": "a.b", "a.b.": "a.b", "[fd00::1]:80": "fd00::1", "fd00::1": "fd00::1", "": "", "[bad": "[bad", "x": "x",
	} {
		if got := hostOnly(in); got != want {
			t.Errorf("hostOnly(%q) = %q, want %q", in, got, want)
		}
	}
}

func FuzzRequestHandling(f *testing.F) {
	f.Add("/a/b?c", "host:80", "GET", 200)
	f.Add("", "[::1", "TRACE", 404)
	f.Add("/%00/../..", "169.254.169.254", "CONNECT", 401)
	set := baselineSet(policies.BaselineEnforce)
	set.AnomalyProfiles = []policies.AnomalyProfile{allDetectors(map[string]string{"errors": "quarantine"})}
	e := NewEngine(newConfig(f, set, Tuning{Capacity: 16, EdgeCache: 16}))
	var now int64 = t0
	f.Fuzz(func(t *testing.T, path, authority, method string, status int) {
		now += 1e8
		r := Request{Now: now, Source: attacker, Method: method, Path: path, Authority: authority}
		v := e.Observe(&r)
		e.ObserveResponse(v.Ref, now, status)
		if e.Stats().Identities > 16 {
			t.Fatal("table grew")
		}
	})
}

func BenchmarkObserve(b *testing.B) {
	e := newEngine(b, baselineSet(policies.BaselineShadow))
	reqs := make([]Request, 256)
	rng := rand.New(rand.NewPCG(9, 9))
	for i := range reqs {
		reqs[i] = legit(rng, 0, web)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r := &reqs[i&255]
		r.Now = t0 + int64(i)*1e6
		v := e.Observe(r)
		e.ObserveResponse(v.Ref, r.Now, 200)
	}
}

// TestOutbound: on the caller's own side the destination is the service of
// the route's cluster, whatever :authority the caller wrote; the baseline
// is asked about the destination on any route.
func TestOutbound(t *testing.T) {
	out := func(e *Engine, i int, src spiffeid.ID, service, authority string) Verdict {
		r := Request{Now: t0 + int64(i)*1e6, Source: src, Method: "GET", Path: "/", Authority: authority,
			Route: "outbound_" + service, Service: service, Outbound: true}
		return e.Observe(&r)
	}
	t.Run("fan-out counts destinations, not hosts", func(t *testing.T) {
		e := newEngine(t, policies.Set{AnomalyProfiles: []policies.AnomalyProfile{allDetectors(map[string]string{"enumeration": "block"})}})
		// One :authority for every call: an inbound-style count would see one destination.
		var got []Finding
		var denied int
		for i := 0; i < 20; i++ {
			v := out(e, i, attacker, fmt.Sprintf("svc-%d.shop", i), "innocent.shop.svc")
			got = append(got, v.Findings[:v.N]...)
			if v.Status == 403 && v.Reason == policies.ReasonDeniedAnomaly {
				denied++
			}
		}
		if !has(got, DetEnumeration, "distinct_destinations") || denied == 0 {
			t.Fatalf("fan-out over 20 services not blocked: %d denied, %+v", denied, got)
		}
		// An inbound request with the same :authority counts one destination.
		e = newEngine(t, policies.Set{AnomalyProfiles: []policies.AnomalyProfile{allDetectors(map[string]string{"enumeration": "block"})}})
		for i := 0; i < 20; i++ {
			r := Request{Now: t0 + int64(i)*1e6, Source: attacker, Method: "GET", Path: "/", Authority: "innocent.shop.svc", Service: fmt.Sprintf("svc-%d.shop", i)}
			if v := e.Observe(&r); has(v.Findings[:v.N], DetEnumeration, "distinct_destinations") {
				t.Fatal("inbound request counted its service as a destination")
			}
		}
	})
	t.Run("egress by the cluster's service", func(t *testing.T) {
		e := newEngine(t, policies.Set{AnomalyProfiles: []policies.AnomalyProfile{allDetectors(map[string]string{"egress": "block"})}})
		if v := out(e, 0, web, "kubernetes.default", "api.internal"); !has(v.Findings[:v.N], DetEgress, "") || v.Status != 403 {
			t.Fatalf("egress to the Kubernetes API through a cluster not caught: %+v", v)
		}
		if v := out(e, 1, web, "orders.shop", "orders"); has(v.Findings[:v.N], DetEgress, "") {
			t.Fatalf("ordinary destination flagged: %+v", v)
		}
	})
	t.Run("enforced baseline: destination on any route", func(t *testing.T) {
		e := newEngine(t, baselineSet(policies.BaselineEnforce))
		// The baseline lists web → orders on route orders-api only: the
		// caller's side cannot know the route and allows the destination.
		if v := out(e, 0, web, "orders", "orders"); v.Status != 0 {
			t.Fatalf("known destination denied: %+v", v)
		}
		if v := out(e, 1, web, "payments", "orders"); v.Status != 403 || v.Reason != policies.ReasonDeniedBaseline {
			t.Fatalf("unknown destination: status %d reason %s", v.Status, v.Reason)
		}
	})
	t.Run("shadow: one edge per destination", func(t *testing.T) {
		e := newEngine(t, baselineSet(policies.BaselineShadow))
		v := out(e, 0, attacker, "payments", "payments")
		if !v.Edge.Report || v.Edge.Known || v.Edge.Dest != "payments" {
			t.Fatalf("edge %+v", v.Edge)
		}
		r := Request{Now: t0 + 5e6, Source: attacker, Method: "GET", Path: "/", Route: "another-route", Service: "payments", Outbound: true}
		if v := e.Observe(&r); v.Edge.Report {
			t.Fatal("the same destination reported again on another route")
		}
	})
}

// TestDistinctDestinationsLimitIsExact: maxDestinations destinations are
// allowed and one more fires (for these names, which do not collide in
// the sketch; a collision makes it count one less).
func TestDistinctDestinationsLimitIsExact(t *testing.T) {
	for _, max := range []int{1, 2, 3, 5, 10} {
		p := allDetectors(map[string]string{"enumeration": "block"})
		p.Spec.Enumeration.MaxDestinations = max
		e := newEngine(t, policies.Set{AnomalyProfiles: []policies.AnomalyProfile{p}})
		for i := 0; i <= max; i++ {
			r := Request{Now: t0 + int64(i)*1e6, Source: attacker, Method: "GET", Path: "/", Service: fmt.Sprintf("svc-%d.shop", i), Outbound: true}
			v := e.Observe(&r)
			if fired := has(v.Findings[:v.N], DetEnumeration, "distinct_destinations"); fired != (i == max) {
				t.Fatalf("maxDestinations %d: destination %d fired=%v", max, i+1, fired)
			}
		}
	}
}

func TestSortedProfiles(t *testing.T) {
	p := func(ns, name, tag string) policies.AnomalyProfile {
		return policies.AnomalyProfile{Metadata: policies.ObjectMeta{Namespace: ns, Name: name}, Spec: policies.AnomalyProfileSpec{QuarantineFor: tag}}
	}
	in := []policies.AnomalyProfile{p("shop", "b", "1"), p("", "z", "2"), p("shop", "a", "3"), p("ops", "a", "4"), p("shop", "a", "5")}
	var got []string
	for _, x := range sortedProfiles(in) {
		got = append(got, x.Metadata.Namespace+"/"+x.Metadata.Name+":"+x.Spec.QuarantineFor)
	}
	if want := "/z:2 ops/a:4 shop/a:3 shop/a:5 shop/b:1"; strings.Join(got, " ") != want {
		t.Fatalf("order %v, want %s", got, want)
	}
	if in[0].Metadata.Name != "b" {
		t.Fatal("the input was reordered")
	}
}
