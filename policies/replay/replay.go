// Package replay decides recorded requests again under a candidate policy
// set and reports what would change: requests that were allowed and would
// be denied, and the reverse, grouped by the candidate's deciding policy
// and rule and by edge (caller, workload, route), with counts and examples.
//
// A recorded decision (wire.Decision: an authz server's decision-log line,
// or a record of the control plane's store) carries what the engine read,
// as far as it may be recorded. Some decisions cannot be replayed, and the
// report says how many and why:
//
//   - decisions not taken by the policy engine: the caller's identity or
//     JWT-SVID failed validation, the request was malformed, the check timed
//     out or failed, no policy was loaded (the candidate policy has nothing
//     to say about them);
//   - quarantines and anomaly responses: runtime state of the control plane
//     and the detectors, not policy;
//   - decisions whose re-decision reads a header that was not recorded
//     (only the decision log's --decision-log-header names are, and
//     credentials never are);
//   - decisions with a JWT when the candidate policy matches a claim the
//     recorder did not copy (claims are recorded only as configured:
//     meshguard authz --decision-log-jwt-claim);
//   - records without the recorded request (a filter's report) or with an
//     identity that does not parse.
package replay

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/wire"
)

// Why a decision is not replayed.
const (
	SkipNotPolicy     = "not_decided_by_policy"
	SkipRuntime       = "runtime_state"
	SkipHeader        = "header_not_recorded"
	SkipClaims        = "jwt_claims_not_recorded"
	SkipNoRequest     = "no_recorded_request"
	SkipUnreadable    = "unreadable_record"
	DirAllowToDeny    = "allow->deny"
	DirDenyToAllow    = "deny->allow"
	defaultExampleCap = 3
)

// SkipReasons explains each skip reason.
var SkipReasons = map[string]string{
	SkipNotPolicy:  "decided before or outside the policy engine (identity, JWT-SVID, a token a RequestAuthentication refused, malformed request, timeout, internal error, no policy loaded)",
	SkipRuntime:    "decided by runtime state (quarantine, anomaly response), not by policy",
	SkipHeader:     "the candidate policy reads a header the recorder did not copy (credentials never are)",
	SkipClaims:     "the candidate policy matches a JWT claim the recorder did not copy (--decision-log-jwt-claim)",
	SkipNoRequest:  "the record has no recorded request (a filter's report)",
	SkipUnreadable: "an identity or address in the record does not parse",
}

// Options configure a Replayer.
type Options struct {
	// Examples kept per group of changes (default 3).
	Examples int
}

// Replayer re-decides recorded requests against one compiled candidate.
// Replay is safe for concurrent use only on distinct Reports.
type Replayer struct {
	snap     *policies.Snapshot
	claims   []string // the top-level JWT claims the candidate reads
	examples int
}

// New compiles the candidate bundle.
func New(b *policies.Bundle, o Options) (*Replayer, error) {
	snap, err := policies.Compile(b)
	if err != nil {
		return nil, fmt.Errorf("replay: compile candidate: %w", err)
	}
	if o.Examples <= 0 {
		o.Examples = defaultExampleCap
	}
	return &Replayer{snap: snap, claims: ClaimsRead(&b.Set), examples: o.Examples}, nil
}

// Report is the outcome of a replay.
type Report struct {
	Total     int `json:"total"`
	Replayed  int `json:"replayed"`
	Unchanged int `json:"unchanged"`
	// AllowToDeny and DenyToAllow count the changes of each direction.
	AllowToDeny int `json:"allowToDeny"`
	DenyToAllow int `json:"denyToAllow"`
	// Skipped counts what could not be replayed, by reason (SkipReasons);
	// SkippedHeaders and SkippedClaims count the unrecorded headers and
	// JWT claims asked for.
	Skipped        map[string]int `json:"skipped,omitempty"`
	SkippedHeaders map[string]int `json:"skippedHeaders,omitempty"`
	SkippedClaims  map[string]int `json:"skippedClaims,omitempty"`
	// Groups are the changes, most frequent first.
	Groups []*Group `json:"groups"`
	// From and To span the recorded requests.
	From time.Time `json:"from,omitzero"`
	To   time.Time `json:"to,omitzero"`

	groups map[groupKey]*Group
	cap    int
}

// Group is the changes of one direction, by one candidate rule, on one edge.
type Group struct {
	Direction string `json:"direction"`
	// Policy, Rule and Reason are the candidate's decision.
	Policy      string    `json:"policy,omitempty"`
	Rule        string    `json:"rule,omitempty"`
	Reason      string    `json:"reason"`
	Source      string    `json:"source,omitempty"`
	Destination string    `json:"destination,omitempty"`
	Route       string    `json:"route,omitempty"`
	Count       int       `json:"count"`
	Examples    []Example `json:"examples"`
}

// Example is one changed request.
type Example struct {
	Time       time.Time `json:"time"`
	DecisionID string    `json:"decisionId"`
	Method     string    `json:"method,omitempty"`
	Path       string    `json:"path,omitempty"`
	// Recorded is the original decision's reason, policy and rule.
	Recorded string `json:"recorded"`
}

type groupKey struct{ dir, policy, rule, reason, src, dst, route string }

// NewReport returns an empty report.
func (r *Replayer) NewReport() *Report {
	return &Report{Skipped: map[string]int{}, SkippedHeaders: map[string]int{}, SkippedClaims: map[string]int{}, groups: map[groupKey]*Group{}, cap: r.examples}
}

// Replay re-decides d and adds the outcome to rep.
func (r *Replayer) Replay(d *wire.Decision, rep *Report) {
	rep.Total++
	if rep.From.IsZero() || d.Time.Before(rep.From) {
		rep.From = d.Time
	}
	if d.Time.After(rep.To) {
		rep.To = d.Time
	}
	if skip := notReplayable(d); skip != "" {
		rep.Skipped[skip]++
		return
	}
	a, hdrs, err := Attributes(d)
	if err != nil {
		rep.Skipped[SkipUnreadable]++
		return
	}
	if len(r.claims) > 0 && (d.JWT != nil || d.JWTSVID != nil) {
		missing := false
		for _, c := range r.claims {
			for _, j := range []*wire.DecisionJWT{d.JWT, d.JWTSVID} {
				if j != nil && !slices.Contains(j.ClaimNames, c) {
					rep.SkippedClaims[c]++
					missing = true
					break
				}
			}
		}
		if missing {
			rep.Skipped[SkipClaims]++
			return
		}
	}
	dec := r.snap.Decide(a)
	if len(hdrs.missing) > 0 {
		rep.Skipped[SkipHeader]++
		for _, h := range hdrs.missing {
			rep.SkippedHeaders[h]++
		}
		return
	}
	rep.Replayed++
	if dec.Allowed == d.Allowed {
		rep.Unchanged++
		return
	}
	dir := DirAllowToDeny
	if dec.Allowed {
		dir = DirDenyToAllow
		rep.DenyToAllow++
	} else {
		rep.AllowToDeny++
	}
	k := groupKey{dir, dec.Ref.Policy, dec.Ref.Rule, string(dec.Reason), d.Source, d.Destination, d.Route}
	g := rep.groups[k]
	if g == nil {
		g = &Group{Direction: dir, Policy: k.policy, Rule: k.rule, Reason: k.reason, Source: k.src, Destination: k.dst, Route: k.route}
		rep.groups[k] = g
	}
	g.Count++
	if len(g.Examples) < rep.cap {
		g.Examples = append(g.Examples, Example{Time: d.Time, DecisionID: d.DecisionID, Method: d.Method, Path: d.Path, Recorded: recorded(d)})
	}
}

func recorded(d *wire.Decision) string {
	s := d.Reason
	if d.Policy != "" {
		s += " " + d.Policy
		if d.Rule != "" {
			s += " rule " + d.Rule
		}
	}
	return s
}

// Merge adds other's counts and groups to rep.
func (rep *Report) Merge(other *Report) {
	rep.Total += other.Total
	rep.Replayed += other.Replayed
	rep.Unchanged += other.Unchanged
	rep.AllowToDeny += other.AllowToDeny
	rep.DenyToAllow += other.DenyToAllow
	for k, v := range other.Skipped {
		rep.Skipped[k] += v
	}
	for k, v := range other.SkippedHeaders {
		rep.SkippedHeaders[k] += v
	}
	for k, v := range other.SkippedClaims {
		rep.SkippedClaims[k] += v
	}
	if !other.From.IsZero() && (rep.From.IsZero() || other.From.Before(rep.From)) {
		rep.From = other.From
	}
	if other.To.After(rep.To) {
		rep.To = other.To
	}
	for k, g := range other.groups {
		mine := rep.groups[k]
		if mine == nil {
			cp := *g
			cp.Examples = append([]Example(nil), g.Examples...)
			rep.groups[k] = &cp
			continue
		}
		mine.Count += g.Count
		mine.Examples = append(mine.Examples, g.Examples...)
	}
}

// Finish sorts the groups (most changes first) and their examples (oldest
// first, at most the cap).
func (rep *Report) Finish() {
	rep.Groups = rep.Groups[:0]
	for _, g := range rep.groups {
		sort.Slice(g.Examples, func(i, j int) bool { return g.Examples[i].Time.Before(g.Examples[j].Time) })
		if len(g.Examples) > rep.cap {
			g.Examples = g.Examples[:rep.cap]
		}
		rep.Groups = append(rep.Groups, g)
	}
	sort.Slice(rep.Groups, func(i, j int) bool {
		a, b := rep.Groups[i], rep.Groups[j]
		if a.Count != b.Count {
			return a.Count > b.Count
		}
		// The key's fields in order: groups are distinct by key, so the
		// order is total and the output stable.
		for _, c := range [...][2]string{{a.Direction, b.Direction}, {a.Policy, b.Policy}, {a.Rule, b.Rule},
			{a.Reason, b.Reason}, {a.Source, b.Source}, {a.Destination, b.Destination}, {a.Route, b.Route}} {
			if c[0] != c[1] {
				return c[0] < c[1]
			}
		}
		return false
	})
	if rep.Groups == nil {
		rep.Groups = []*Group{}
	}
}

// notReplayable says why a decision's outcome did not come from policy.
func notReplayable(d *wire.Decision) string {
	switch policies.Reason(d.Reason) {
	case policies.ReasonDeniedIdentity, policies.ReasonDeniedJWT, policies.ReasonDeniedToken, policies.ReasonDeniedTokenAudience,
		policies.ReasonDeniedInvalidReq,
		policies.ReasonDeniedTimeout, policies.ReasonDeniedInternal, policies.ReasonDeniedNoPolicy:
		return SkipNotPolicy
	case policies.ReasonDeniedQuarantine, policies.ReasonDeniedAnomaly, policies.ReasonRateLimited:
		return SkipRuntime
	}
	if d.Method == "" || d.Path == "" {
		return SkipNoRequest
	}
	return ""
}

// recordedHeaders answers the engine from the recorded headers: a name the
// recorder copied is present or known absent; any other name is unknown,
// and is noted.
type recordedHeaders struct {
	m       map[string]string
	names   []string
	missing []string
}

func (h *recordedHeaders) Get(name string) (string, bool) {
	for _, n := range h.names {
		if n == name {
			v, ok := h.m[name]
			return v, ok
		}
	}
	for _, n := range h.missing {
		if n == name {
			return "", false
		}
	}
	h.missing = append(h.missing, name)
	return "", false
}

// Attributes rebuilds the engine's attributes of a recorded decision: the
// mTLS peer, the forwarded client and the JWT (issuer, subject, principal,
// JWT-SVID or not, audiences, presenter, the recorded claims) as the
// server established them, checked against the recorded caller. The
// returned headers note the unrecorded names the engine asks for.
func Attributes(d *wire.Decision) (*policies.Attributes, *recordedHeaders, error) {
	a := &policies.Attributes{MTLS: d.MTLS, Method: d.Method, Host: d.Host, Path: d.Path, Route: d.Route, SNI: d.SNI,
		DestinationPort: d.DestinationPort}
	var err error
	if a.Peer, err = parseID(d.Peer); err != nil {
		return nil, nil, fmt.Errorf("peer: %w", err)
	}
	if a.ForwardedClient, err = parseID(d.ForwardedClient); err != nil {
		return nil, nil, fmt.Errorf("forwarded client: %w", err)
	}
	if a.JWT, err = recordedJWT(d.JWT); err != nil {
		return nil, nil, fmt.Errorf("jwt: %w", err)
	}
	if a.JWTSVID, err = recordedJWT(d.JWTSVID); err != nil {
		return nil, nil, fmt.Errorf("jwt_svid: %w", err)
	}
	if a.JWTSVID != nil && (a.JWT == nil || a.JWTSVID.SVID.IsZero()) {
		return nil, nil, errors.New("jwt_svid: recorded without an end-user token, or not a JWT-SVID")
	}
	// The recorded caller is what these identities give; a record where
	// they disagree was not written by an authz server.
	if caller := a.Caller(); d.Source != idString(caller) {
		return nil, nil, fmt.Errorf("source %q is not the caller of the recorded identities (%q)", d.Source, idString(caller))
	}
	if a.Target.ID, err = parseID(d.Destination); err != nil {
		return nil, nil, fmt.Errorf("destination: %w", err)
	}
	a.Target.Namespace, a.Target.Service, a.Target.Gateway, a.Target.Labels = d.TargetNamespace, d.TargetService, d.TargetGateway, d.TargetLabels
	a.Target.Resolved = d.TargetResolved
	if a.SourceIP, err = parseAddr(d.SourceIP); err != nil {
		return nil, nil, err
	}
	a.RemoteIP = a.SourceIP
	if d.RemoteIP != "" {
		if a.RemoteIP, err = parseAddr(d.RemoteIP); err != nil {
			return nil, nil, err
		}
	}
	if a.DestinationIP, err = parseAddr(d.DestinationIP); err != nil {
		return nil, nil, err
	}
	h := &recordedHeaders{m: d.Headers, names: d.HeaderNames}
	a.Headers = h
	return a, h, nil
}

// recordedJWT rebuilds a recorded token (nil for none).
func recordedJWT(j *wire.DecisionJWT) (*policies.JWT, error) {
	if j == nil {
		return nil, nil
	}
	t := &policies.JWT{Issuer: j.Issuer, Subject: j.Subject, Principal: j.Principal, Audiences: j.Audiences, Presenter: j.Presenter}
	if j.SVID {
		var err error
		if t.SVID, err = spiffeid.FromString(j.Subject); err != nil {
			return nil, fmt.Errorf("jwt-svid subject: %w", err)
		}
	}
	if len(j.Claims) > 0 {
		if err := json.Unmarshal(j.Claims, &t.Claims); err != nil {
			return nil, fmt.Errorf("claims: %w", err)
		}
	}
	return t, nil
}

func idString(id spiffeid.ID) string {
	if id.IsZero() {
		return ""
	}
	return id.String()
}

func parseID(s string) (spiffeid.ID, error) {
	if s == "" {
		return spiffeid.ID{}, nil
	}
	return spiffeid.FromString(s)
}

func parseAddr(s string) (netip.Addr, error) {
	if s == "" {
		return netip.Addr{}, nil
	}
	return netip.ParseAddr(s)
}

// ClaimsRead returns the top-level JWT claims that policies of set match
// (request.auth.claims conditions, IdentityPolicy JWT requirements),
// sorted.
func ClaimsRead(set *policies.Set) []string {
	names := map[string]bool{}
	conds := func(ws []policies.Condition) {
		for _, w := range ws {
			rest, ok := strings.CutPrefix(w.Key, "request.auth.claims[")
			if !ok {
				continue
			}
			if name, _, ok := strings.Cut(rest, "]"); ok && name != "" {
				names[name] = true
			}
		}
	}
	for _, p := range set.AuthorizationPolicies {
		for _, r := range p.Spec.Rules {
			conds(r.When)
		}
	}
	for _, p := range set.IdentityPolicies {
		for _, r := range p.Spec.Rules {
			conds(r.When)
			if r.JWT != nil {
				for _, c := range r.JWT.Claims {
					name, _, _ := strings.Cut(c.Name, ".")
					names[name] = true
				}
			}
		}
	}
	out := make([]string, 0, len(names))
	for n := range names {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}
