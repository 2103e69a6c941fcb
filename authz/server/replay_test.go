package server

import (
	"bytes"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/meshguard/meshguard/authz/identity"
	"github.com/meshguard/meshguard/authz/requestauth"
	"github.com/meshguard/meshguard/internal/testbed/ca"
	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/replay"
	"github.com/meshguard/meshguard/policies/wire"
)

// recordedLine returns the decision-log line of a decision.
func recordedLine(t *testing.T, e *env, decisionID string) []byte {
	t.Helper()
	key := `"decision_id":"` + decisionID + `"`
	for _, line := range strings.Split(e.decisionLog(key), "\n") {
		if strings.Contains(line, key) {
			return []byte(line)
		}
	}
	t.Fatalf("no decision-log line for %s", decisionID)
	return nil
}

// TestRecordedDecisionsReplay: every class of caller identity the server
// establishes (an mTLS principal or certificate, a client a trusted hop
// forwards in XFCC behind its own peer, a JWT-SVID without mTLS, ignored
// credentials) is recorded so that policy replay under the policy it was
// decided with rebuilds the attributes and decides the same; a request
// denied before the engine (identity, JWT, malformed) is not replayed and
// says so.
func TestRecordedDecisionsReplay(t *testing.T) {
	e := newEnv(t)
	set := testSet()
	e.load(t, "v1", set)
	rp, err := replay.New(mustBundle(t, "v1", set), replay.Options{})
	if err != nil {
		t.Fatal(err)
	}
	replayed, forwarded, jwts := 0, 0, 0
	for _, tc := range identityCases() {
		if tc.req == nil {
			continue
		}
		resp := e.check(t, tc.req(t, e))
		id := resp.GetDynamicMetadata().GetFields()["decision_id"].GetStringValue()
		line := recordedLine(t, e, id)
		var d wire.Decision
		if err := wire.DecodeDecision(line, &d); err != nil {
			t.Fatalf("%s: the decision-log line is not a recorded decision: %v\n%s", tc.name, err, line)
		}
		rep := rp.NewReport()
		rp.Replay(&d, rep)
		switch policies.Reason(d.Reason) {
		case policies.ReasonDeniedIdentity, policies.ReasonDeniedJWT, policies.ReasonDeniedInvalidReq:
			if rep.Skipped[replay.SkipNotPolicy] != 1 {
				t.Errorf("%s: %s replayed: %+v", tc.name, d.Reason, rep)
			}
			continue
		}
		if rep.Replayed != 1 || rep.Unchanged != 1 {
			t.Errorf("%s: recorded %s (allowed %v), replayed under the same policy: %+v\n%s", tc.name, d.Reason, d.Allowed, rep, line)
			continue
		}
		replayed++
		if d.ForwardedClient != "" && d.Peer != d.ForwardedClient {
			forwarded++
		}
		if d.JWT != nil && d.JWT.SVID && d.Peer == "" {
			jwts++
		}
	}
	// The classes that a flattened "source" could not tell apart.
	if replayed < 10 || forwarded < 2 || jwts < 2 {
		t.Errorf("replayed %d decisions, %d of a forwarded client behind a hop, %d of a JWT-SVID without a peer", replayed, forwarded, jwts)
	}
}

// TestRecordedClaimsReplay: the JWT claims named by RecordClaims are
// recorded when the token carries them (and only they), so that a
// candidate's request.auth.claims condition decides the replay; a claim
// that was not recorded makes the request not replayable, by name.
func TestRecordedClaimsReplay(t *testing.T) {
	e := newEnv(t, func(c *Config, _ *identity.Config) { c.RecordClaims = []string{"groups", "tier"} })
	set := testSet()
	e.load(t, "v1", set)
	tok := mustJWT(t, e.ca, idBatch, []string{audience}, 5*time.Minute,
		ca.WithClaim("groups", []string{"batch", "blocked"}), ca.WithClaim("secret", "s3cr3t"))
	resp := e.check(t, get("/api/items", map[string]string{"authorization": "Bearer " + tok}))
	line := recordedLine(t, e, resp.GetDynamicMetadata().GetFields()["decision_id"].GetStringValue())
	var d wire.Decision
	if err := wire.DecodeDecision(line, &d); err != nil {
		t.Fatal(err)
	}
	if !d.Allowed || d.JWT == nil || !d.JWT.SVID || string(d.JWT.Claims) != `{"groups":["batch","blocked"]}` ||
		strings.Join(d.JWT.ClaimNames, ",") != "groups,tier" || bytes.Contains(line, []byte("s3cr3t")) {
		t.Fatalf("recorded %s", line)
	}
	deny := func(claim, value string) policies.Set {
		c := testSet()
		c.AuthorizationPolicies = append(c.AuthorizationPolicies, policies.AuthorizationPolicy{
			APIVersion: policies.APIVersionIstioV1, Kind: policies.KindAuthorizationPolicy,
			Metadata: policies.ObjectMeta{Name: "deny-" + claim, Namespace: "shop"},
			Spec: policies.AuthorizationPolicySpec{Action: "DENY", Rules: []policies.Rule{{
				When: []policies.Condition{{Key: "request.auth.claims[" + claim + "]", Values: []string{value}}},
			}}},
		})
		return c
	}
	for _, tc := range []struct {
		claim, value string
		check        func(*replay.Report) bool
	}{
		{"groups", "blocked", func(r *replay.Report) bool { return r.AllowToDeny == 1 }},
		{"groups", "admins", func(r *replay.Report) bool { return r.Unchanged == 1 }},
		{"tier", "gold", func(r *replay.Report) bool { return r.Unchanged == 1 }}, // recorded absent
		{"secret", "s3cr3t", func(r *replay.Report) bool {
			return r.Skipped[replay.SkipClaims] == 1 && r.SkippedClaims["secret"] == 1
		}},
	} {
		rp, err := replay.New(mustBundle(t, "v2", deny(tc.claim, tc.value)), replay.Options{})
		if err != nil {
			t.Fatal(err)
		}
		rep := rp.NewReport()
		rp.Replay(&d, rep)
		if !tc.check(rep) {
			t.Errorf("candidate denying claims[%s]=%s: %+v", tc.claim, tc.value, rep)
		}
	}
}

// TestRequestAuthenticationReplay: decisions on end-user tokens that a
// RequestAuthentication validated (alone, and beside a JWT-SVID in its own
// header) are recorded so that replay under the same policy decides each
// as the server did — request principals, the recorded scope claim, the
// caller from the JWT-SVID; a token the RequestAuthentication refused is
// not replayed and says so; and a candidate that reads the claim decides
// from the recorded value.
func TestRequestAuthenticationReplay(t *testing.T) {
	p := newIDP(t)
	e := newEnv(t, withRequestAuth(t, requestauth.Config{MinRefetch: time.Millisecond}), func(c *Config, ic *identity.Config) {
		c.RecordClaims = []string{"scope"}
		ic.JWTHeader = "x-jwt-svid"
	})
	set := requestAuthSet(p.srv.URL + "/keys")
	e.load(t, "v1", set)
	user := func(r *authv3.CheckRequest, sub string, extra ...any) *authv3.CheckRequest {
		r.Attributes.Request.Http.Headers["authorization"] = "Bearer " + p.token(t, userClaims(sub, extra...))
		return r
	}
	svid := func(r *authv3.CheckRequest) *authv3.CheckRequest {
		r.Attributes.Request.Http.Headers["x-jwt-svid"] = mustJWT(t, e.ca, idBatch, []string{audience}, time.Minute)
		return r
	}
	reqs := []*authv3.CheckRequest{
		user(get("/orders/1", nil), "alice"),
		user(envoyRequest("POST", "/orders/2", nil), "bob", "scope", "orders:write"),
		user(envoyRequest("POST", "/orders/2", nil), "bob", "scope", "orders:read"),
		user(get("/orders/1", nil), "mallory"),
		svid(user(get("/orders/1", nil), "alice")),
		svid(user(get("/api/items", nil), "carol")),
		user(get("/orders/1", nil), "alice", "exp", time.Now().Unix()-300),
	}
	var lines []wire.Decision
	both := 0
	for _, r := range reqs {
		resp := e.check(t, r)
		var d wire.Decision
		if err := wire.DecodeDecision(recordedLine(t, e, resp.GetDynamicMetadata().GetFields()["decision_id"].GetStringValue()), &d); err != nil {
			t.Fatal(err)
		}
		if d.JWTSVID != nil && d.JWT != nil && d.JWT.Principal != "" && d.Source == idBatch.String() {
			both++
		}
		lines = append(lines, d)
	}
	if both != 2 {
		t.Errorf("%d decisions recorded an end-user token beside the JWT-SVID that is their caller, want 2", both)
	}
	rp, err := replay.New(mustBundle(t, "v1", set), replay.Options{})
	if err != nil {
		t.Fatal(err)
	}
	rep := rp.NewReport()
	for i := range lines {
		rp.Replay(&lines[i], rep)
	}
	if rep.Replayed != 6 || rep.Unchanged != 6 || rep.Skipped[replay.SkipNotPolicy] != 1 {
		t.Errorf("replayed under the same policy: %+v", rep)
	}
	// A candidate that lets only orders:admin write.
	cand := requestAuthSet(p.srv.URL + "/keys")
	cand.AuthorizationPolicies[len(cand.AuthorizationPolicies)-2].Spec.Rules[1].When[0].Values = []string{"orders:admin"}
	rp, err = replay.New(mustBundle(t, "v2", cand), replay.Options{})
	if err != nil {
		t.Fatal(err)
	}
	rep = rp.NewReport()
	for i := range lines {
		rp.Replay(&lines[i], rep)
	}
	if rep.AllowToDeny != 1 || rep.DenyToAllow != 0 || rep.Unchanged != 5 {
		t.Errorf("replayed under the candidate: %+v", rep)
	}
}
