// Package record is the control plane's model of what happened in the mesh:
// authorization decisions that authz servers ship, detections that filters
// report, quarantines, releases and policy changes. Every one is a Record;
// the record store (controlplane/recordstore) keeps them for forensic
// queries and incident timelines, and the OTLP exporter
// (controlplane/recordexport) sends the same records to a collector.
package record

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/meshguard/meshguard/policies/wire"
)

// Kind is what a record is about.
type Kind string

// Kinds of records.
const (
	KindDecision   Kind = "decision"   // an authorization decision (authz server, or a filter's would-deny)
	KindDetection  Kind = "detection"  // an anomaly, or an edge the traffic baseline does not list
	KindQuarantine Kind = "quarantine" // an identity quarantined (action add) or its quarantine extended (extend)
	KindRelease    Kind = "release"    // a quarantine lifted by an operator (release) or by expiry (expire)
	KindPolicy     Kind = "policy"     // a policy bundle published or an update rejected
)

// Kinds lists every kind, in the order of the constants.
var Kinds = []Kind{KindDecision, KindDetection, KindQuarantine, KindRelease, KindPolicy}

// Valid reports whether k is a known kind.
func (k Kind) Valid() bool {
	for _, x := range Kinds {
		if k == x {
			return true
		}
	}
	return false
}

// Actions of decision records.
const (
	ActionAllow     = "allow"
	ActionDeny      = "deny"
	ActionWouldDeny = "would_deny" // allowed because the denying rule runs in dry-run
)

// Record is one thing that happened. Fields that do not apply to a kind
// are empty.
type Record struct {
	// ID is the store's sequence number (0 before it is stored).
	ID   int64     `json:"id,omitempty"`
	Time time.Time `json:"time"`
	Kind Kind      `json:"kind"`
	// Reporter is who told the control plane: the SPIFFE ID of the client
	// certificate of an authz server or filter, or the control plane's own
	// component (meshguard/quarantine, meshguard/policy-store).
	Reporter string `json:"reporter,omitempty"`
	// Source is the calling identity of a decision or detection, and the
	// identity a quarantine or release is about.
	Source      string `json:"source,omitempty"`
	Destination string `json:"destination,omitempty"`
	// Action: allow, deny or would_deny for decisions; the response of a
	// detection (log, count, rate-limit, block, quarantine); add or extend
	// for quarantines; release or expire for releases; published or
	// rejected for policy changes.
	Action string `json:"action,omitempty"`
	// Reason is the stable reason code of a decision, and the detector of a
	// detection (rate, errors, enumeration, egress, lateral, baseline).
	Reason string `json:"reason,omitempty"`
	Policy string `json:"policy,omitempty"`
	Rule   string `json:"rule,omitempty"`
	Route  string `json:"route,omitempty"`
	Method string `json:"method,omitempty"`
	Path   string `json:"path,omitempty"`
	// Count is how many requests a filter's decision report stands for
	// (requests of one caller, route, outcome, reason and rule since its
	// previous report; Method and Path are the first one's); 0 for every
	// other record, which stands for one.
	Count uint64 `json:"count,omitempty"`
	// By is who quarantined or released, or the policy source that changed.
	By string `json:"by,omitempty"`
	// Detail is free text: why a quarantine was made or lifted, what a
	// detector saw, the version of a policy bundle, an error.
	Detail string `json:"detail,omitempty"`
	// Decision is the whole recorded decision of an authz server (what
	// policy replay needs); nil for other kinds and for filter reports.
	Decision *wire.Decision `json:"decision,omitempty"`
}

// Sink receives records. Append must not block: a sink that cannot take
// them returns ErrFull (the caller may retry later) or counts them as
// dropped.
type Sink interface {
	Append(recs []Record) error
}

// ErrFull is returned by a sink that has no room now.
var ErrFull = errors.New("record: sink full")

// Tee appends to First, then, when First took the records, to every Other
// (whose own drops they count themselves). A full First makes the whole
// append fail, so that a sender retrying later does not duplicate records
// in the others.
type Tee struct {
	First  Sink
	Others []Sink
}

// Append implements Sink.
func (t Tee) Append(recs []Record) error {
	if t.First != nil {
		if err := t.First.Append(recs); err != nil {
			return err
		}
	}
	var errs []error
	for _, o := range t.Others {
		if err := o.Append(recs); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// FromDecision is the record of a decision shipped by reporter.
func FromDecision(reporter string, d *wire.Decision) Record {
	action := ActionAllow
	switch {
	case !d.Allowed:
		action = ActionDeny
	case d.WouldDeny:
		action = ActionWouldDeny
	}
	return Record{
		Time: d.Time, Kind: KindDecision, Reporter: reporter,
		Source: d.Source, Destination: d.Destination, Action: action, Reason: d.Reason,
		Policy: d.Policy, Rule: d.Rule, Route: d.Route, Method: d.Method, Path: d.Path,
		Detail: d.Error, Decision: d,
	}
}

// EventOptions choose which events become records.
type EventOptions struct {
	// AllowSample is the fraction, in [0, 1], of filters' reports of
	// allowed requests (each counts one caller's allowed requests on a
	// route over a few seconds) that are kept as records. Denials and
	// dry-run would-denies are always kept.
	AllowSample float64
	// Rand returns a number in [0, 1) for sampling (default math/rand/v2).
	Rand func() float64
}

// keepAllow samples a report of allowed requests.
func (o *EventOptions) keepAllow() bool {
	switch {
	case o.AllowSample <= 0:
		return false
	case o.AllowSample >= 1:
		return true
	case o.Rand != nil:
		return o.Rand() < o.AllowSample
	}
	return rand.Float64() < o.AllowSample
}

// FromEvents turns the events of a filter's or authz server's batch into
// records: anomaly events and edges the traffic baseline does not list are
// detections, decision events are decisions without the full request,
// each with the count of requests it stands for (denials and dry-run
// would-denies always, reports of allowed requests as o samples them).
// Plain observed edges are the learner's, not records.
func FromEvents(reporter string, events []wire.Event, o EventOptions) []Record {
	var out []Record
	for i := range events {
		ev := &events[i]
		t := time.UnixMilli(ev.UnixMillis).UTC()
		dest := ev.Destination
		if dest == "" {
			// A filter reports about traffic to its own workload (the
			// identity it claims, on a control plane without TLS).
			dest = strings.TrimPrefix(reporter, "unauthenticated:")
		}
		switch {
		case ev.Kind == wire.EventAnomaly:
			out = append(out, Record{Time: t, Kind: KindDetection, Reporter: reporter, Source: ev.Source, Destination: dest,
				Action: ev.Response, Reason: ev.Detector, Route: ev.Route, Method: ev.Method, Policy: profilePolicy(ev.Profile),
				Detail: eventDetail(ev)})
		case ev.Kind == wire.EventEdge && strings.Contains(ev.Detail, "unknown"):
			out = append(out, Record{Time: t, Kind: KindDetection, Reporter: reporter, Source: ev.Source, Destination: dest,
				Action: ev.Response, Reason: "baseline", Route: ev.Route, Method: ev.Method, Policy: "TrafficBaseline",
				Detail: eventDetail(ev)})
		case ev.Kind == wire.EventDecision:
			var action string
			switch ev.Response {
			case "deny":
				action = ActionDeny
			case "dry-run":
				action = ActionWouldDeny
			case "allow":
				if !o.keepAllow() {
					continue
				}
				action = ActionAllow
			default:
				continue // not an outcome this control plane knows
			}
			reason, ref, _ := strings.Cut(ev.Detail, " ")
			policy, rule := splitRef(ref)
			n := ev.Count
			if n == 0 {
				n = 1
			}
			out = append(out, Record{Time: t, Kind: KindDecision, Reporter: reporter, Source: ev.Source, Destination: dest,
				Action: action, Reason: reason, Policy: policy, Rule: rule, Route: ev.Route, Method: ev.Method, Path: ev.Path, Count: n})
		}
	}
	return out
}

func profilePolicy(p string) string {
	if p == "" {
		return ""
	}
	return "AnomalyProfile/" + p
}

func eventDetail(ev *wire.Event) string {
	var b strings.Builder
	b.WriteString(ev.Detail)
	if ev.Score != 0 {
		fmt.Fprintf(&b, " score=%g", ev.Score)
	}
	if ev.Count != 0 {
		fmt.Fprintf(&b, " count=%d", ev.Count)
	}
	return strings.TrimSpace(b.String())
}

// splitRef reads a filter's "policy rule N" or "policy#rule" reference.
func splitRef(ref string) (policy, rule string) {
	if p, r, ok := strings.Cut(ref, " rule "); ok {
		return p, r
	}
	if p, r, ok := strings.Cut(ref, "#"); ok {
		return p, r
	}
	return ref, ""
}

// Reporters of the control plane's own records.
const (
	ReporterQuarantine  = "meshguard/quarantine"
	ReporterPolicyStore = "meshguard/policy-store"
)

// FromQuarantine is the record of a change of the quarantine list: action
// add, extend, release or expire.
func FromQuarantine(t time.Time, action, identity, by, reason string, expires time.Time) Record {
	kind := KindQuarantine
	if action == "release" || action == "expire" {
		kind = KindRelease
	}
	detail := reason
	if !expires.IsZero() {
		detail = strings.TrimSpace(detail + " (until " + expires.UTC().Format(time.RFC3339) + ")")
	}
	return Record{Time: t.UTC(), Kind: kind, Reporter: ReporterQuarantine, Source: identity, Action: action, By: by, Detail: detail}
}

// FromPolicyChange is the record of a policy store update: published with
// the new version, or rejected with the error.
func FromPolicyChange(t time.Time, source, version string, documents int, err error) Record {
	r := Record{Time: t.UTC(), Kind: KindPolicy, Reporter: ReporterPolicyStore, By: source, Action: "published",
		Detail: fmt.Sprintf("bundle %s, %d documents", version, documents)}
	if err != nil {
		r.Action, r.Detail = "rejected", err.Error()
	}
	return r
}
