package scenario

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/wire"
)

// All is the suite.
var All = []Scenario{
	{Name: "allowed", Run: allowed},
	{Name: "denied_by_identity", Run: deniedByIdentity},
	{Name: "denied_by_route", Run: deniedByRoute},
	{Name: "dry_run", Run: dryRun},
	{Name: "decision_events", Run: decisionEvents},
	{Name: "mode_off", Run: modeOff},
	{Name: "missing_mtls", Run: missingMTLS},
	{Name: "spoofed_headers_stripped", Run: spoofedHeaders},
	{Name: "quarantined_identity", Run: quarantined},
	{Name: "invalid_configuration_refused", Run: invalidConfig},
	{Name: "new_configuration_swaps", Run: reconfigure},
	{Name: "detector_errors", Run: detectErrors},
	{Name: "detector_enumeration", Run: detectEnumeration},
	{Name: "detector_egress", Run: detectEgress},
	{Name: "detector_lateral", Run: detectLateral},
	{Name: "baseline_enforce", Run: baselineEnforce},
	{Name: "jwt_left_to_ext_authz", Run: jwtLeftToExtAuthz},
	{Name: "outbound_side", Run: outboundSide},
	{Name: "outbound_quarantined_source", Run: outboundQuarantined},
	{Name: "outbound_fan_out_blocked_at_source", Run: outboundFanOut},
	{Name: "outbound_egress_blocked_at_source", Run: outboundEgress},
	{Name: "outbound_baseline_enforce", Run: outboundBaseline},
	{Name: "end_user_token_left_to_ext_authz", Run: endUserTokenLeftToExtAuthz},
	{Name: "request_authentication_key_sources", Run: requestAuthnKeySources},
	{Name: "duplicated_headers", Run: duplicatedHeaders},
	{Name: "detector_rate", Slow: true, Run: detectRate},
	{Name: "steady_traffic_no_false_positives", Slow: true, Run: steadyTraffic},
}

func allowed(t *testing.T, d Driver) {
	mustStart(t, d, Options{})
	// Without mTLS required, a plaintext caller is anonymous and the ALLOW
	// policy (trust domain callers) does not admit it.
	wantDenied(t, d.Do(t, get("", "orders-api", "/api/orders/1")), 403, policies.ReasonDeniedNoMatch)
	r := d.Do(t, get(Web, "orders-api", "/api/orders/1"))
	wantForwarded(t, r)
	for name, want := range map[string]string{
		wire.HeaderRoute:         "orders-api",
		wire.HeaderBundleVersion: "v1",
		wire.HeaderPolicyRef:     "IdentityPolicy/shop/orders-callers#mesh-callers",
	} {
		if got, n := Header(r.Upstream, name); got != want || n != 1 {
			t.Errorf("upstream %s = %q (%d times), want %q once", name, got, n, want)
		}
	}
}

func deniedByIdentity(t *testing.T, d Driver) {
	mustStart(t, d, Options{})
	r := d.Do(t, get(Intruder, "orders-api", "/api/orders/1"))
	wantDenied(t, r, 403, policies.ReasonDeniedNoMatch)
	if !strings.Contains(string(r.Body), `"bundle_version":"v1"`) {
		t.Fatalf("body %s lacks the bundle version", r.Body)
	}
	// A peer certificate whose URI SAN is not a SPIFFE ID.
	bad := get("https://mesh.test/ns/shop/sa/web", "orders-api", "/")
	wantDenied(t, d.Do(t, bad), 403, policies.ReasonDeniedIdentity)
	bad.Source = "spiffe://mesh.test/ns/../sa/web"
	wantDenied(t, d.Do(t, bad), 403, policies.ReasonDeniedIdentity)
	// A trust domain's own ID names no workload.
	bad.Source = "spiffe://mesh.test"
	wantDenied(t, d.Do(t, bad), 403, policies.ReasonDeniedIdentity)
}

func deniedByRoute(t *testing.T, d Driver) {
	mustStart(t, d, Options{})
	r := d.Do(t, get(Web, "orders-admin", "/admin/users"))
	wantDenied(t, r, 403, policies.ReasonDeniedByPolicy)
	if !strings.Contains(string(r.Body), "RouteOverride/shop/admin-only") {
		t.Fatalf("body %s does not name the route override", r.Body)
	}
	wantForwarded(t, d.Do(t, get(Admin, "orders-admin", "/admin/users")))
}

// jwtLeftToExtAuthz: a rule that needs a JWT-SVID cannot match in the
// filter, which cannot verify one; where the ext_authz server follows, the
// filter leaves that check to it (and the server decides), elsewhere the
// filter decides alone and the rule does not match.
func jwtLeftToExtAuthz(t *testing.T, d Driver) {
	partner := get(Intruder, "orders-partner", "/partner/orders")
	mustStart(t, d, Options{})
	wantDenied(t, d.Do(t, partner), 403, policies.ReasonDeniedNoMatch)

	mustStart(t, d, Options{ExtAuthz: &wire.ExtAuthz{}})
	r := d.Do(t, partner)
	wantForwarded(t, r)
	if ref, _ := Header(r.Upstream, wire.HeaderPolicyRef); ref != "IdentityPolicy/shop/orders-callers#partner-with-token" {
		t.Errorf("policy ref %q", ref)
	}
	// Nothing else changes: the same caller elsewhere is still denied.
	wantDenied(t, d.Do(t, get(Intruder, "orders-api", "/api/orders/1")), 403, policies.ReasonDeniedNoMatch)

	mustStart(t, d, Options{ExtAuthz: &wire.ExtAuthz{SkipRoutes: []string{"orders-partner"}}})
	wantDenied(t, d.Do(t, partner), 403, policies.ReasonDeniedNoMatch)
}

// endUserTokenLeftToExtAuthz: requestPrincipals need an end-user token a
// RequestAuthentication validates, which the filter cannot do: alone it
// decides without one (the rule does not match, whatever token is sent),
// and where the ext_authz server follows it leaves the check to it.
func endUserTokenLeftToExtAuthz(t *testing.T, d Driver) {
	user := get(Intruder, "orders-api", "/user/1")
	user.Headers = [][2]string{{"authorization", "Bearer a.b.c"}}
	mustStart(t, d, Options{})
	wantDenied(t, d.Do(t, user), 403, policies.ReasonDeniedNoMatch)

	mustStart(t, d, Options{ExtAuthz: &wire.ExtAuthz{}})
	r := d.Do(t, user)
	wantForwarded(t, r)
	if ref, _ := Header(r.Upstream, wire.HeaderPolicyRef); ref != "AuthorizationPolicy/shop/tenants#1" {
		t.Errorf("policy ref %q", ref)
	}
}

// requestAuthnKeySources: the jwtRules whose keys come from a jwksUri or
// an inline key set, whose checks the wasm filter's compile leaves out
// (docs/wasm.md, "Module size"), decide as the engine does. Alone, the
// filter reaches the engine's decision for the request without a verified
// token; followed by the ext_authz server, it forwards the request and
// names the rule the engine matches with a token of the issuer.
func requestAuthnKeySources(t *testing.T, d Driver) {
	b, _, err := policies.NewBundle("v1", Set(Options{}))
	if err != nil {
		t.Fatal(err)
	}
	engine, err := policies.Compile(b)
	if err != nil {
		t.Fatal(err)
	}
	attrs := func(r Request, jwt *policies.JWT) *policies.Attributes {
		return &policies.Attributes{
			Peer: spiffeid.RequireFromString(r.Source), MTLS: true,
			Target: policies.Target{ID: spiffeid.RequireFromString(Workload), Namespace: "shop", Service: "orders", Labels: map[string]string{"app": "orders"}},
			Method: r.Method, Host: r.Authority, Path: r.Path, Route: r.Route,
			Headers: policies.MapHeaders{"authorization": "Bearer a.b.c"}, JWT: jwt,
		}
	}
	for _, c := range []struct{ path, iss, sub string }{
		{"/keys/1", KeysIssuer, "bob"},
		{"/keys/2", InlineIssuer, "alice"},
	} {
		r := get(Intruder, "orders-api", c.path)
		r.Headers = [][2]string{{"authorization", "Bearer a.b.c"}}

		mustStart(t, d, Options{})
		want := engine.Decide(attrs(r, nil))
		if want.Allowed {
			t.Fatalf("%s: the engine allows without a token", c.path)
		}
		wantDenied(t, d.Do(t, r), 403, want.Reason)

		mustStart(t, d, Options{ExtAuthz: &wire.ExtAuthz{}})
		want = engine.Decide(attrs(r, &policies.JWT{Issuer: c.iss, Subject: c.sub, Principal: c.iss + "/" + c.sub}))
		if !want.Allowed {
			t.Fatalf("%s: the engine denies a token of %s: %s", c.path, c.iss, want.Reason)
		}
		got := d.Do(t, r)
		wantForwarded(t, got)
		if ref, _ := Header(got.Upstream, wire.HeaderPolicyRef); ref != want.Ref.Policy+"#"+want.Ref.Rule {
			t.Errorf("%s: policy ref %q, the engine's rule is %s#%s", c.path, ref, want.Ref.Policy, want.Ref.Rule)
		}
	}
}

// duplicatedHeaders: a header sent twice is matched as Envoy joins it
// (values with ','): an ALLOW on one value does not match the pair, and a
// DENY matches an element of it.
func duplicatedHeaders(t *testing.T, d Driver) {
	mustStart(t, d, Options{})
	tenant := func(vals ...string) Request {
		r := get(Intruder, "orders-api", "/tenant/x")
		for _, v := range vals {
			r.Headers = append(r.Headers, [2]string{"x-tenant", v})
		}
		return r
	}
	wantForwarded(t, d.Do(t, tenant("acme")))
	wantDenied(t, d.Do(t, tenant("acme", "other")), 403, policies.ReasonDeniedNoMatch)
	wantDenied(t, d.Do(t, tenant("other", "acme")), 403, policies.ReasonDeniedNoMatch)

	role := get(Web, "orders-api", "/api/orders/1")
	wantForwarded(t, d.Do(t, role))
	role.Headers = [][2]string{{"x-role", "ok"}, {"x-role", "evil"}}
	wantDenied(t, d.Do(t, role), 403, policies.ReasonDeniedByPolicy)
}

func dryRun(t *testing.T, d Driver) {
	mustStart(t, d, Options{})
	r := d.Do(t, get(Web, "orders-beta", "/api/beta"))
	wantForwarded(t, r)
	d.Tick(t)
	evs := d.Events(t)
	e, ok := findEvent(evs, wire.EventDecision, "", Web)
	if !ok || e.Response != "dry-run" || !strings.Contains(e.Detail, string(policies.ReasonDeniedByPolicy)) {
		t.Fatalf("no dry-run decision event: %s", describe(evs))
	}
}

func modeOff(t *testing.T, d Driver) {
	mustStart(t, d, Options{})
	// Enforcement is off on the route: even a caller no policy admits passes.
	r := d.Do(t, get(Intruder, "orders-legacy", "/legacy"))
	wantForwarded(t, r)
	if v, _ := Header(r.Upstream, wire.HeaderPolicyRef); v != "RouteOverride/shop/legacy-open" {
		t.Errorf("policy header %q", v)
	}
	wantDenied(t, d.Do(t, get(Intruder, "orders-api", "/api")), 403, policies.ReasonDeniedNoMatch)
}

func missingMTLS(t *testing.T, d Driver) {
	mustStart(t, d, Options{RequireMTLS: true})
	plain := get("", "orders-api", "/api/orders/1")
	wantDenied(t, d.Do(t, plain), 403, policies.ReasonDeniedNoMTLS)
	// mTLS with a certificate that carries no URI SAN: no SPIFFE identity.
	plain.MTLS = true
	wantDenied(t, d.Do(t, plain), 403, policies.ReasonDeniedIdentity)
	wantForwarded(t, d.Do(t, get(Web, "orders-api", "/api/orders/1")))
}

func spoofedHeaders(t *testing.T, d Driver) {
	mustStart(t, d, Options{})
	r := get(Web, "orders-api", "/api/orders/1")
	r.Headers = [][2]string{
		{"x-meshguard-route", "orders-admin"},
		{"x-meshguard-policy", "forged"},
		{"X-MeshGuard-Bundle-Version", "v0"},
		{"x-meshguard-source-id", Admin},
		{"x-request-id", "keep-me"},
	}
	res := d.Do(t, r)
	wantForwarded(t, res)
	for _, kv := range res.Upstream {
		if strings.HasPrefix(strings.ToLower(kv[0]), wire.HeaderPrefix) && (kv[1] == "orders-admin" || kv[1] == "forged" || kv[1] == "v0" || kv[1] == Admin) {
			t.Errorf("spoofed header reached the upstream: %s: %s", kv[0], kv[1])
		}
	}
	if v, n := Header(res.Upstream, wire.HeaderRoute); v != "orders-api" || n != 1 {
		t.Errorf("route header %q x%d", v, n)
	}
	if v, _ := Header(res.Upstream, "x-request-id"); v != "keep-me" {
		t.Errorf("unrelated header lost: %q", v)
	}
}

func quarantined(t *testing.T, d Driver) {
	mustStart(t, d, Options{})
	wantDenied(t, d.Do(t, get(Quarantined, "orders-api", "/api/orders/1")), 403, policies.ReasonDeniedQuarantine)
}

func invalidConfig(t *testing.T, d Driver) {
	good := string(Config(t, Options{}))
	cases := map[string]string{
		"not json":         `{"bundle":`,
		"unknown field":    strings.Replace(good, `"requireMtls"`, `"requireMTLSX"`, 1) + "",
		"no bundle":        `{"workload":{"id":"` + Workload + `"}}`,
		"tampered bundle":  strings.Replace(good, `credential leak`, `credential leek`, 1),
		"bad workload id":  strings.Replace(good, Workload, "orders", 1),
		"invalid profile":  string(Config(t, Options{BadProfile: true})),
		"trailing garbage": good + "{}",
	}
	if !strings.Contains(good, `"requireMtls"`) {
		cases["unknown field"] = strings.Replace(good, `{"bundle"`, `{"surprise":1,"bundle"`, 1)
	}
	for name, cfg := range cases {
		if err := d.Start(t, []byte(cfg)); err == nil {
			t.Errorf("%s: configuration accepted", name)
		}
	}
}

func reconfigure(t *testing.T, d Driver) {
	mustStart(t, d, Options{})
	if err := d.Reconfigure(t, Config(t, Options{Version: "v2"})); err != nil {
		t.Fatalf("reconfigure: %v", err)
	}
	r := d.Do(t, get(Web, "orders-api", "/api/orders/1"))
	if v, _ := Header(r.Upstream, wire.HeaderBundleVersion); v != "v2" {
		t.Fatalf("bundle version after swap %q", v)
	}
	if err := d.Reconfigure(t, []byte(`{"bundle":{}}`)); err == nil {
		t.Fatal("invalid update accepted")
	}
	r = d.Do(t, get(Web, "orders-api", "/api/orders/2"))
	if v, _ := Header(r.Upstream, wire.HeaderBundleVersion); v != "v2" || !r.Forwarded {
		t.Fatalf("after a refused update: forwarded=%v version %q", r.Forwarded, v)
	}
}

func detectErrors(t *testing.T, d Driver) {
	mustStart(t, d, Options{})
	blocked := false
	for i := 0; i < 40; i++ {
		r := get(Prober, "orders-api", "/api/login")
		r.Status = 401
		res := d.Do(t, r)
		if !res.Forwarded {
			wantDenied(t, res, 403, policies.ReasonDeniedAnomaly)
			blocked = true
		}
	}
	if !blocked {
		t.Fatal("credential probing was not blocked")
	}
	d.Tick(t)
	evs := d.Events(t)
	e, ok := findEvent(evs, wire.EventAnomaly, "errors", Prober)
	if !ok || e.Detail != "auth_failures" || e.Response != "block" || e.Profile != "detect" {
		t.Fatalf("no errors/auth_failures event: %s", describe(evs))
	}
	// An unrelated caller is not affected.
	wantForwarded(t, d.Do(t, get(Web, "orders-api", "/api/orders/1")))
}

func detectEnumeration(t *testing.T, d Driver) {
	mustStart(t, d, Options{})
	words := []string{"admin", ".git", "backup", "config", "env", "debug", "console", "actuator", "swagger", "metrics"}
	for i := 0; i < 30; i++ {
		r := get(Scanner, "orders-api", fmt.Sprintf("/%s/%s", words[i%10], words[i/10]))
		r.Status = 404
		d.Do(t, r)
	}
	for i := 0; i < 8; i++ {
		r := get(Scanner, "orders-api", "/")
		r.Authority = fmt.Sprintf("svc-%d.shop.svc.cluster.local", i)
		d.Do(t, r)
	}
	d.Tick(t)
	evs := d.Events(t)
	if _, ok := findEvent(evs, wire.EventAnomaly, "enumeration", Scanner); !ok {
		t.Fatalf("no enumeration event: %s", describe(evs))
	}
	var paths, dests bool
	for _, e := range evs {
		paths = paths || (e.Detector == "enumeration" && e.Detail == "distinct_paths")
		dests = dests || (e.Detector == "enumeration" && e.Detail == "distinct_destinations")
	}
	if !paths || !dests {
		t.Fatalf("paths=%v destinations=%v: %s", paths, dests, describe(evs))
	}
}

func detectEgress(t *testing.T, d Driver) {
	mustStart(t, d, Options{})
	for _, target := range []struct{ authority, dest string }{
		{"169.254.169.254", "169.254.169.254:80"},
		{"metadata.google.internal", "10.0.0.9:8080"},
		{"kubernetes.default.svc:443", "10.96.0.1:443"},
	} {
		r := get(Web, "orders-api", "/latest/meta-data/iam/security-credentials/")
		r.Authority, r.DestAddr = target.authority, target.dest
		wantDenied(t, d.Do(t, r), 403, policies.ReasonDeniedAnomaly)
	}
	ok := get(Admin, "orders-api", "/api/v1/nodes")
	ok.Authority = "kubernetes.default.svc:443"
	wantForwarded(t, d.Do(t, ok))
	d.Tick(t)
	evs := d.Events(t)
	if e, found := findEvent(evs, wire.EventAnomaly, "egress", Web); !found || e.Response != "block" {
		t.Fatalf("no egress event: %s", describe(evs))
	}
	if _, found := findEvent(evs, wire.EventAnomaly, "egress", Admin); found {
		t.Fatalf("allowed identity reported: %s", describe(evs))
	}
}

func detectLateral(t *testing.T, d Driver) {
	mustStart(t, d, Options{})
	for _, route := range []string{"orders-api", "orders-internal", "orders-export", "orders-debug", "orders-batch"} {
		wantForwarded(t, d.Do(t, get(Mover, route, "/x"))) // shadow: reported, not denied
	}
	d.Tick(t)
	evs := d.Events(t)
	edges := 0
	for _, e := range evs {
		if e.Kind == wire.EventEdge && e.Source == Mover {
			edges++
			if e.Destination != "orders" || !strings.HasPrefix(e.Detail, "unknown") {
				t.Errorf("edge event %+v", e)
			}
		}
	}
	if edges != 4 {
		t.Errorf("%d unknown-edge events, want 4 (orders-api is in the baseline): %s", edges, describe(evs))
	}
	if _, ok := findEvent(evs, wire.EventAnomaly, "lateral", Mover); !ok {
		t.Fatalf("no lateral anomaly: %s", describe(evs))
	}
}

func baselineEnforce(t *testing.T, d Driver) {
	mustStart(t, d, Options{Baseline: policies.BaselineEnforce})
	wantForwarded(t, d.Do(t, get(Mover, "orders-api", "/x")))
	wantDenied(t, d.Do(t, get(Mover, "orders-export", "/x")), 403, policies.ReasonDeniedBaseline)
}

// pace sends n requests spread over one second of driver time.
func pace(t *testing.T, d Driver, n int, mk func(i int) Request) (limited, denied int) {
	step := time.Second / time.Duration(n)
	for i := 0; i < n; i++ {
		res := d.Do(t, mk(i))
		if res.Status == 429 {
			limited++
		}
		if !res.Forwarded {
			denied++
		}
		d.Sleep(step)
	}
	return limited, denied
}

func detectRate(t *testing.T, d Driver) {
	mustStart(t, d, Options{})
	for s := 0; s < 4; s++ {
		if n, _ := pace(t, d, 20, func(i int) Request { return get(Burster, "orders-api", "/api/orders/1") }); n != 0 {
			t.Fatalf("steady phase rate-limited %d requests", n)
		}
	}
	limited := 0
	start := time.Now()
	for i := 0; i < 300; i++ {
		res := d.Do(t, get(Burster, "orders-api", "/api/orders/1"))
		if res.Status == 429 {
			limited++
			if i == 299 {
				wantDenied(t, res, 429, policies.ReasonRateLimited)
			}
		}
	}
	// The limit is the learned rate (mean + z·σ, under 50/s here) per second; a slow
	// runner (-race, a loaded machine) spreads the burst over more seconds.
	secs := int(time.Since(start)/time.Second) + 1
	if allowed := 300 - limited; limited == 0 || allowed > 60*(secs+1) {
		t.Fatalf("burst over about %d s: %d of 300 requests rate-limited", secs, limited)
	}
	d.Tick(t)
	evs := d.Events(t)
	if e, ok := findEvent(evs, wire.EventAnomaly, "rate", Burster); !ok || e.Response != "rate-limit" || e.Score < 4 {
		t.Fatalf("no rate event: %s", describe(evs))
	}
}

func steadyTraffic(t *testing.T, d Driver) {
	mustStart(t, d, Options{})
	eps := []string{"/api/orders/%d", "/api/orders/%d/items", "/api/customers/%d", "/api/cart", "/healthz"}
	denied := 0
	// Six seconds: six error and enumeration windows, three rate half-lives.
	for s := 0; s < 6; s++ {
		_, n := pace(t, d, 20+(s%3)*3, func(i int) Request {
			ep := eps[(i*7+s)%len(eps)]
			if strings.Contains(ep, "%d") {
				ep = fmt.Sprintf(ep, 1000+i*13+s)
			}
			r := get(Web, "orders-api", ep)
			if i%25 == 3 {
				r.Status = 404
			}
			if i%40 == 7 {
				r.Status = 503
			}
			if i%10 == 0 {
				r.Method = "POST"
			}
			return r
		})
		denied += n
		d.Tick(t)
	}
	if denied != 0 {
		t.Fatalf("%d legitimate requests denied", denied)
	}
	evs := d.Events(t)
	for _, e := range evs {
		if e.Kind == wire.EventAnomaly {
			t.Fatalf("false positive on steady traffic: %s", describe(evs))
		}
	}
}

// decisionEvents: the filter reports what it decided, counted per caller,
// route, outcome, reason and rule: denials and dry-run would-denies on the
// next tick, allowed requests every few seconds (the first tick included).
func decisionEvents(t *testing.T, d Driver) {
	mustStart(t, d, Options{})
	for i := 0; i < 3; i++ {
		wantForwarded(t, d.Do(t, get(Web, "orders-api", "/api/orders/1")))
	}
	for i := 0; i < 2; i++ {
		wantDenied(t, d.Do(t, get(Intruder, "orders-api", "/api/orders/1")), 403, policies.ReasonDeniedNoMatch)
	}
	wantDenied(t, d.Do(t, get(Web, "orders-admin", "/admin")), 403, policies.ReasonDeniedByPolicy)
	wantForwarded(t, d.Do(t, get(Web, "orders-beta", "/api/beta")))
	d.Tick(t)
	want := map[string]wire.Event{
		"allow " + Web + " orders-api":     {Count: 3, Detail: string(policies.ReasonAllowedByPolicy) + " IdentityPolicy/shop/orders-callers#mesh-callers"},
		"deny " + Intruder + " orders-api": {Count: 2, Detail: string(policies.ReasonDeniedNoMatch)},
		"deny " + Web + " orders-admin":    {Count: 1, Detail: string(policies.ReasonDeniedByPolicy) + " RouteOverride/shop/admin-only#not-admin"},
		"dry-run " + Web + " orders-beta":  {Count: 1, Detail: string(policies.ReasonDeniedByPolicy) + " RouteOverride/shop/beta-trial#no-web"},
	}
	got := map[string]wire.Event{}
	for _, e := range d.Events(t) {
		if e.Kind != wire.EventDecision {
			continue
		}
		k := e.Response + " " + e.Source + " " + e.Route
		if _, dup := got[k]; dup {
			t.Errorf("two decision events for %s in one report", k)
		}
		got[k] = e
	}
	for k, w := range want {
		e, ok := got[k]
		if !ok {
			t.Errorf("no decision event %q: %s", k, describe(d.Events(t)))
			continue
		}
		if e.Count != w.Count || e.Detail != w.Detail || e.UnixMillis == 0 {
			t.Errorf("%s: count %d detail %q at %d, want count %d detail %q", k, e.Count, e.Detail, e.UnixMillis, w.Count, w.Detail)
		}
	}
	if len(got) != len(want) {
		t.Errorf("%d decision events, want %d: %s", len(got), len(want), describe(d.Events(t)))
	}
}

// out is a request the workload makes through its sidecar's outbound
// listener: plain HTTP from the application, no peer certificate, routed
// to cluster.
func out(cluster, path string) Request {
	return Request{Direction: ListenerOutbound, SourceAddr: "127.0.0.1:51000", DestAddr: "127.0.0.1:9001",
		Route: "outbound", Cluster: cluster, Method: "GET", Path: path, Authority: "upstream.local"}
}

// istioCluster is Istio's name of the outbound cluster of a service.
func istioCluster(svc string) string { return "outbound|80||" + svc + ".shop.svc.cluster.local" }

// outboundSide: with direction "listener" each listener's traffic
// direction decides; the outbound side needs no peer certificate, strips
// client-sent x-meshguard-* headers and stamps nothing; a listener that
// says neither direction is denied.
func outboundSide(t *testing.T, d Driver) {
	mustStart(t, d, Options{Direction: wire.DirectionListener, RequireMTLS: true})
	// (In this order: proxytest cannot remove a property once set.)
	none := get("", "orders-api", "/api/orders/1")
	wantDenied(t, d.Do(t, none), 403, policies.ReasonDeniedInternal)
	plain := get("", "orders-api", "/api/orders/1")
	plain.Direction = ListenerInbound
	wantDenied(t, d.Do(t, plain), 403, policies.ReasonDeniedNoMTLS)

	o := out("outbound|payments", "/v1/charges")
	o.Headers = [][2]string{{"x-meshguard-source-id", Admin}, {"X-Meshguard-Route", "forged"}, {"x-request-id", "keep-me"}}
	r := d.Do(t, o)
	wantForwarded(t, r)
	for _, kv := range r.Upstream {
		if strings.HasPrefix(strings.ToLower(kv[0]), wire.HeaderPrefix) {
			t.Errorf("outbound: %s: %s reached the destination", kv[0], kv[1])
		}
	}
	if v, _ := Header(r.Upstream, "x-request-id"); v != "keep-me" {
		t.Errorf("outbound: unrelated header lost: %q", v)
	}

	in := get(Web, "orders-api", "/api/orders/1")
	in.Direction, in.Cluster = ListenerInbound, "inbound|8080||"
	r = d.Do(t, in)
	wantForwarded(t, r)
	if v, _ := Header(r.Upstream, wire.HeaderRoute); v != "orders-api" {
		t.Errorf("inbound listener: route header %q", v)
	}
}

// outboundQuarantined: a quarantined workload's own requests are denied by
// its own sidecar: they never leave the pod.
func outboundQuarantined(t *testing.T, d Driver) {
	mustStart(t, d, Options{Direction: wire.DirectionOutbound, Self: Quarantined})
	r := d.Do(t, out("outbound|payments", "/v1/charges"))
	wantDenied(t, r, 403, policies.ReasonDeniedQuarantine)
	if !strings.Contains(string(r.Body), "Quarantine/shop/leaky") {
		t.Errorf("body %s does not name the quarantine", r.Body)
	}
	// The same configuration for another workload lets its requests go.
	mustStart(t, d, Options{Direction: wire.DirectionOutbound})
	wantForwarded(t, d.Do(t, out("outbound|payments", "/v1/charges")))
}

// outboundFanOut: the workload calls more distinct services than the
// profile allows; its own sidecar counts the destinations of the routes'
// clusters (not the Host it writes), blocks the rest of the fan-out at the
// source and reports it, naming itself as the source.
func outboundFanOut(t *testing.T, d Driver) {
	mustStart(t, d, Options{Direction: wire.DirectionOutbound, EnumerationResponse: "block"})
	blockedAt := -1
	for i := 0; i < 10; i++ {
		res := d.Do(t, out(istioCluster(fmt.Sprintf("svc-%d", i)), "/"))
		if !res.Forwarded {
			wantDenied(t, res, 403, policies.ReasonDeniedAnomaly)
			if blockedAt < 0 {
				blockedAt = i
			}
		} else if blockedAt >= 0 {
			t.Fatalf("request %d left the pod after the block at %d", i, blockedAt)
		}
	}
	if blockedAt < 0 || blockedAt > 6 {
		t.Fatalf("fan-out over 10 services blocked at request %d, want within the profile's 5 destinations (+1)", blockedAt)
	}
	d.Tick(t)
	evs := d.Events(t)
	e, ok := findEvent(evs, wire.EventAnomaly, "enumeration", Workload)
	if !ok || e.Detail != "distinct_destinations" || e.Response != "block" || !strings.HasPrefix(e.Destination, "svc-") || !strings.HasSuffix(e.Destination, ".shop") {
		t.Fatalf("no outbound fan-out event from the workload itself: %s", describe(evs))
	}
	// Every destination it tried is an unknown edge of the shadow baseline,
	// reported once, blocked or not.
	edges := 0
	for _, e := range evs {
		if e.Kind == wire.EventEdge && e.Source == Workload {
			edges++
			if e.Route != "" || !strings.HasPrefix(e.Detail, "unknown") {
				t.Errorf("outbound edge event %+v", e)
			}
		}
	}
	if edges != 10 {
		t.Errorf("%d unknown outbound edges reported, want 10 (one per destination tried)", edges)
	}
}

// outboundEgress: egress to the Kubernetes API through its cluster, under
// an innocent Host, is caught on the caller's side.
func outboundEgress(t *testing.T, d Driver) {
	mustStart(t, d, Options{Direction: wire.DirectionOutbound})
	r := out("outbound|443||kubernetes.default.svc.cluster.local", "/api/v1/secrets")
	wantDenied(t, d.Do(t, r), 403, policies.ReasonDeniedAnomaly)
	d.Tick(t)
	evs := d.Events(t)
	if e, ok := findEvent(evs, wire.EventAnomaly, "egress", Workload); !ok || e.Destination != "kubernetes.default" || e.Response != "block" {
		t.Fatalf("no outbound egress event: %s", describe(evs))
	}
}

// outboundBaseline: with an enforced baseline, the workload reaches the
// destinations it has an edge to and no other, refused before they leave.
func outboundBaseline(t *testing.T, d Driver) {
	mustStart(t, d, Options{Direction: wire.DirectionOutbound, Baseline: policies.BaselineEnforce})
	// shop/** → orders is in the baseline (on route orders-api: the caller's
	// side allows the destination, the destination's side the route).
	wantForwarded(t, d.Do(t, out("outbound|orders", "/api/orders/1")))
	wantDenied(t, d.Do(t, out("outbound|payments", "/v1/charges")), 403, policies.ReasonDeniedBaseline)
	wantDenied(t, d.Do(t, out(istioCluster("ledger"), "/")), 403, policies.ReasonDeniedBaseline)
}
