// Package scenario is the meshguard filter's behaviour suite, written once
// and run against every way the filter can execute: filtercore with a fake
// host, the SDK glue under proxytest, and the compiled .wasm in the wazero
// proxy-wasm host. A Driver adapts each.
package scenario

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/wire"
)

// Identities used by the scenarios.
const (
	TrustDomain = "mesh.test"
	Web         = "spiffe://mesh.test/ns/shop/sa/web"
	Intruder    = "spiffe://mesh.test/ns/evil/sa/intruder"
	Admin       = "spiffe://mesh.test/ns/ops/sa/admin"
	Quarantined = "spiffe://mesh.test/ns/shop/sa/leaky"
	Prober      = "spiffe://mesh.test/ns/shop/sa/prober"
	Scanner     = "spiffe://mesh.test/ns/shop/sa/scanner"
	Mover       = "spiffe://mesh.test/ns/shop/sa/mover"
	Burster     = "spiffe://mesh.test/ns/shop/sa/burster"
	Workload    = "spiffe://mesh.test/ns/shop/sa/orders"
	Cluster     = "outbound|9090||meshguard-controlplane.meshguard.svc.cluster.local"
)

// Request is one request as a scenario describes it.
type Request struct {
	Source     string // URI SAN of the peer certificate; "" for none
	MTLS       bool   // connection.mtls (implied by Source)
	SourceAddr string // "ip:port"
	DestAddr   string
	Route      string // xds.route_name
	Method     string
	Path       string
	Authority  string
	Headers    [][2]string // extra request headers
	Status     int         // the upstream's answer; 0 means 200
	// Direction is the listener's traffic_direction (the property
	// listener_direction): ListenerInbound, ListenerOutbound, or 0 for a
	// listener that sets none (the property is absent).
	Direction int
	// Cluster is the route's upstream cluster (xds.cluster_name); "" for none.
	Cluster string
}

// Values of Request.Direction (envoy.config.core.v3.TrafficDirection).
const (
	ListenerInbound  = 1
	ListenerOutbound = 2
)

// Result is what happened to a request.
type Result struct {
	Forwarded bool
	Status    int         // local response status, 0 when forwarded
	Headers   [][2]string // local response headers
	Body      []byte      // local response body
	Upstream  [][2]string // request headers the upstream received
}

// Header returns the first value of name in hs.
func Header(hs [][2]string, name string) (string, int) {
	v, n := "", 0
	for _, kv := range hs {
		if strings.EqualFold(kv[0], name) {
			if n == 0 {
				v = kv[1]
			}
			n++
		}
	}
	return v, n
}

// Driver runs the filter one way. Each scenario starts a fresh filter.
type Driver interface {
	// Start creates a fresh filter with the plugin configuration; an error
	// means the filter refused to start.
	Start(t *testing.T, pluginConfig []byte) error
	// Reconfigure delivers a new plugin configuration (ECDS).
	Reconfigure(t *testing.T, pluginConfig []byte) error
	Do(t *testing.T, r Request) Result
	// Tick runs the filter's timer and completes its event callouts at the
	// fake control plane.
	Tick(t *testing.T)
	// Sleep lets time pass (a fake clock advances; a real one sleeps).
	Sleep(d time.Duration)
	// Events are the events the fake control plane received so far.
	Events(t *testing.T) []wire.Event
}

// Options shape the configuration.
type Options struct {
	Version     string
	RequireMTLS bool
	Baseline    string // baseline mode, default shadow
	BadProfile  bool   // an invalid AnomalyProfile response
	// EgressResponse replaces the egress detector's response (block).
	EgressResponse string
	// ExtAuthz says the ext_authz server follows the filter.
	ExtAuthz *wire.ExtAuthz
	// Direction is the configuration's direction (default inbound).
	Direction string
	// Self replaces the workload's SPIFFE ID (Workload).
	Self string
	// EnumerationResponse replaces the enumeration detector's response (log).
	EnumerationResponse string
	// BadKeySource gives the jwtRule of KeysIssuer a jwksUri that is not an
	// http(s) URL: a bundle the control plane refuses to publish, and whose
	// check the wasm filter's compile leaves out (docs/wasm.md).
	BadKeySource bool
}

// Issuers of the scenarios' RequestAuthentication "keys": the key set of
// one is fetched from a jwksUri, the other's is inline.
const (
	KeysIssuer   = "https://keys.mesh.test"
	InlineIssuer = "https://inline.mesh.test"
)

// inlineKeySet is RFC 8037's Ed25519 public key, as a JSON Web Key Set.
const inlineKeySet = `{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}`

// Upstreams are the workload's outbound clusters the configuration names
// (the rest are read as Istio names them).
var Upstreams = map[string]string{
	"outbound|payments": "payments.payments",
	"outbound|orders":   "orders.shop",
}

// Set is the scenarios' policy set.
func Set(o Options) policies.Set {
	mode := o.Baseline
	if mode == "" {
		mode = policies.BaselineShadow
	}
	meta := func(name string) policies.ObjectMeta { return policies.ObjectMeta{Name: name, Namespace: "shop"} }
	ap := policies.AnomalyProfile{APIVersion: policies.APIVersionMeshguard, Kind: policies.KindAnomalyProfile, Metadata: meta("detect"),
		Spec: policies.AnomalyProfileSpec{
			Rate:        &policies.RateDetector{HalfLife: "2s", ZScore: 4, MinRPS: 5},
			Errors:      &policies.ErrorDetector{Window: "1s", MinRequests: 20},
			Enumeration: &policies.EnumerationDetector{Window: "1s", MaxPaths: 20, MaxDestinations: 5},
			Egress:      &policies.EgressDetector{AllowedIDs: []string{"spiffe://mesh.test/ns/ops/**"}},
			Lateral:     &policies.LateralDetector{MaxNewEdges: 2},
			Responses:   map[string]string{"rate": "rate-limit", "errors": "block", "enumeration": "log", "egress": "block", "lateral": "log"},
		}}
	if o.BadProfile {
		ap.Spec.Responses["rate"] = "explode"
	}
	if o.EgressResponse != "" {
		ap.Spec.Responses["egress"] = o.EgressResponse
		ap.Spec.QuarantineFor = "1h"
	}
	if o.EnumerationResponse != "" {
		ap.Spec.Responses["enumeration"] = o.EnumerationResponse
	}
	jwksURI := KeysIssuer + "/.well-known/jwks.json"
	if o.BadKeySource {
		jwksURI = "ftp://keys.mesh.test/jwks.json"
	}
	return policies.Set{
		Settings: policies.MeshSettingsSpec{TrustDomain: TrustDomain},
		// Istio policies of the scenarios: header conditions over duplicated
		// headers, and end-user tokens the filter cannot verify.
		AuthorizationPolicies: []policies.AuthorizationPolicy{
			{APIVersion: policies.APIVersionIstioV1, Kind: policies.KindAuthorizationPolicy, Metadata: meta("tenants"),
				Spec: policies.AuthorizationPolicySpec{Rules: []policies.Rule{{
					To:   []policies.RuleTo{{Operation: policies.Operation{Paths: []string{"/tenant/*"}}}},
					When: []policies.Condition{{Key: "request.headers[x-tenant]", Values: []string{"acme"}}},
				}, {
					From: []policies.RuleFrom{{Source: policies.Source{RequestPrincipals: []string{"https://idp.mesh.test/*"}}}},
					To:   []policies.RuleTo{{Operation: policies.Operation{Paths: []string{"/user/*"}}}},
				}, {
					From: []policies.RuleFrom{{Source: policies.Source{RequestPrincipals: []string{KeysIssuer + "/*", InlineIssuer + "/alice"}}}},
					To:   []policies.RuleTo{{Operation: policies.Operation{Paths: []string{"/keys/*"}}}},
				}}}},
			{APIVersion: policies.APIVersionIstioV1, Kind: policies.KindAuthorizationPolicy, Metadata: meta("no-evil-role"),
				Spec: policies.AuthorizationPolicySpec{Action: "DENY", Rules: []policies.Rule{{
					When: []policies.Condition{{Key: "request.headers[x-role]", Values: []string{"evil"}}},
				}}}},
		},
		RequestAuthentications: []policies.RequestAuthentication{{
			APIVersion: policies.APIVersionIstioV1, Kind: policies.KindRequestAuthentication, Metadata: meta("idp"),
			Spec: policies.RequestAuthenticationSpec{JWTRules: []policies.JWTRule{{Issuer: "https://idp.mesh.test"}}}}, {
			APIVersion: policies.APIVersionIstioV1, Kind: policies.KindRequestAuthentication, Metadata: meta("keys"),
			Spec: policies.RequestAuthenticationSpec{JWTRules: []policies.JWTRule{
				{Issuer: KeysIssuer, JWKSURI: jwksURI},
				{Issuer: InlineIssuer, JWKS: inlineKeySet},
			}}}},
		IdentityPolicies: []policies.IdentityPolicy{{
			APIVersion: policies.APIVersionMeshguard, Kind: policies.KindIdentityPolicy, Metadata: meta("orders-callers"),
			Spec: policies.IdentityPolicySpec{Action: "ALLOW", Rules: []policies.IdentityRule{{
				Name: "mesh-callers",
				From: []policies.IdentitySource{{TrustDomains: []string{TrustDomain}, NotIDs: []string{Intruder}}},
			}, {
				// Only with a JWT-SVID, which the filter cannot verify.
				Name: "partner-with-token",
				From: []policies.IdentitySource{{IDs: []string{Intruder}}},
				To:   []policies.IdentityTarget{{Routes: []string{"orders-partner"}}},
				JWT:  &policies.JWTRequirement{Audiences: []string{"orders"}},
			}}},
		}},
		RouteOverrides: []policies.RouteOverride{
			{APIVersion: policies.APIVersionMeshguard, Kind: policies.KindRouteOverride, Metadata: meta("admin-only"),
				Spec: policies.RouteOverrideSpec{Route: "orders-admin", Action: "DENY", Rules: []policies.IdentityRule{{
					Name: "not-admin", From: []policies.IdentitySource{{NotIDs: []string{Admin}}}}}}},
			{APIVersion: policies.APIVersionMeshguard, Kind: policies.KindRouteOverride, Metadata: meta("legacy-open"),
				Spec: policies.RouteOverrideSpec{Route: "orders-legacy", Mode: policies.ModeOff}},
			{APIVersion: policies.APIVersionMeshguard, Kind: policies.KindRouteOverride, Metadata: meta("beta-trial"),
				Spec: policies.RouteOverrideSpec{Route: "orders-beta", Mode: policies.ModeDryRun, Action: "DENY", Rules: []policies.IdentityRule{{
					Name: "no-web", From: []policies.IdentitySource{{IDs: []string{Web}}}}}}},
		},
		TrafficBaselines: []policies.TrafficBaseline{{APIVersion: policies.APIVersionMeshguard, Kind: policies.KindTrafficBaseline, Metadata: meta("graph"),
			Spec: policies.TrafficBaselineSpec{Mode: mode, Edges: []policies.Edge{
				{Source: Web, Destination: "orders", Routes: []string{"orders-api", "orders-beta"}},
				{Source: "spiffe://mesh.test/ns/shop/**", Destination: "orders", Routes: []string{"orders-api"}},
				{Source: Admin, Destination: "orders"},
			}}}},
		AnomalyProfiles: []policies.AnomalyProfile{ap},
		Quarantines: []policies.Quarantine{{APIVersion: policies.APIVersionMeshguard, Kind: policies.KindQuarantine, Metadata: meta("leaky"),
			Spec: policies.QuarantineSpec{Identity: Quarantined, Reason: "credential leak"}}},
	}
}

// Config returns plugin configuration JSON for o.
func Config(t testing.TB, o Options) []byte {
	t.Helper()
	if o.Version == "" {
		o.Version = "v1"
	}
	set := Set(o)
	var b *policies.Bundle
	if o.BadProfile || o.BadKeySource {
		// NewBundle validates; build the invalid bundle by hand, with a
		// correct hash, so that the filter's own checks are what judge it.
		b = &policies.Bundle{Format: policies.BundleFormat, Version: o.Version, Set: set, Hash: hashOf(t, set)}
	} else {
		var err error
		if b, _, err = policies.NewBundle(o.Version, set); err != nil {
			t.Fatalf("bundle: %v", err)
		}
	}
	raw, err := b.Encode()
	if err != nil {
		t.Fatal(err)
	}
	self := Workload
	if o.Self != "" {
		self = o.Self
	}
	fc := wire.FilterConfig{
		Bundle: raw,
		Workload: wire.Workload{ID: self, Namespace: "shop", Service: "orders", Labels: map[string]string{"app": "orders"}, ExtAuthz: o.ExtAuthz,
			Upstreams: Upstreams},
		Direction:    o.Direction,
		RequireMTLS:  o.RequireMTLS,
		ControlPlane: wire.ControlPlane{Cluster: Cluster, Authority: "meshguard-controlplane", TickMillis: 200},
		Detection:    &wire.Detection{WarmupSeconds: 2},
	}
	out, err := json.Marshal(fc)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func hashOf(t testing.TB, set policies.Set) string {
	// DecodeBundle verifies the hash over the set's canonical JSON; reuse
	// NewBundle's algorithm through a valid twin of the set.
	data, err := json.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	return sha256Hex(data)
}

// Run runs every scenario against drivers made by newDriver.
func Run(t *testing.T, newDriver func(t *testing.T) Driver) {
	for _, s := range All {
		t.Run(s.Name, func(t *testing.T) {
			if testing.Short() && s.Slow {
				t.Skip("slow in real time; skipped with -short")
			}
			s.Run(t, newDriver(t))
		})
	}
}

// Scenario is one behaviour.
type Scenario struct {
	Name string
	Slow bool // needs seconds of (possibly real) time
	Run  func(t *testing.T, d Driver)
}

func mustStart(t *testing.T, d Driver, o Options) {
	t.Helper()
	if err := d.Start(t, Config(t, o)); err != nil {
		t.Fatalf("start: %v", err)
	}
}

func get(src, route, path string) Request {
	return Request{Source: src, MTLS: src != "", SourceAddr: "10.0.0.7:40000", DestAddr: "10.0.0.9:8080",
		Route: route, Method: "GET", Path: path, Authority: "orders.shop.svc.cluster.local:8080"}
}

func wantDenied(t *testing.T, r Result, status int, reason policies.Reason) {
	t.Helper()
	if r.Forwarded || r.Status != status {
		t.Fatalf("forwarded=%v status=%d, want local %d (%s); body %s", r.Forwarded, r.Status, status, reason, r.Body)
	}
	if got, _ := Header(r.Headers, wire.HeaderReason); got != string(reason) {
		t.Fatalf("%s = %q, want %q", wire.HeaderReason, got, reason)
	}
	var body struct {
		Reason        string `json:"reason"`
		Policy        string `json:"policy"`
		Rule          string `json:"rule"`
		BundleVersion string `json:"bundle_version"`
	}
	if err := json.Unmarshal(r.Body, &body); err != nil {
		t.Fatalf("body %q: %v", r.Body, err)
	}
	if body.Reason != string(reason) {
		t.Fatalf("body reason %q, want %q", body.Reason, reason)
	}
}

func wantForwarded(t *testing.T, r Result) {
	t.Helper()
	if !r.Forwarded {
		t.Fatalf("not forwarded: status %d reason %v body %s", r.Status, r.Headers, r.Body)
	}
}

func findEvent(evs []wire.Event, kind, detector, source string) (wire.Event, bool) {
	for _, e := range evs {
		if e.Kind == kind && (detector == "" || e.Detector == detector) && (source == "" || e.Source == source) {
			return e, true
		}
	}
	return wire.Event{}, false
}

func describe(evs []wire.Event) string {
	var b strings.Builder
	for _, e := range evs {
		fmt.Fprintf(&b, "\n  %s/%s src=%s resp=%s detail=%s", e.Kind, e.Detector, e.Source, e.Response, e.Detail)
	}
	return b.String()
}
