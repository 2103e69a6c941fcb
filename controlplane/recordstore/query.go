package recordstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshguard/meshguard/controlplane/record"
	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/wire"
)

// Limits of a query.
const (
	DefaultLimit = 100
	MaxLimit     = 100_000
	// maxPatternIDs bounds how many identities a pattern may expand to.
	maxPatternIDs = 10_000
)

// Filter selects records. Empty fields select everything; the conditions
// are ANDed, values within a list ORed.
type Filter struct {
	// Identity matches records whose source or destination is one of these
	// SPIFFE IDs or SPIFFE ID patterns ("spiffe://td/ns/shop/*",
	// "spiffe://td" for a trust domain, a final "**" for any depth).
	Identity []string `json:"identity,omitempty"`
	// Source and Destination match one side only (an edge is both).
	Source      []string `json:"source,omitempty"`
	Destination []string `json:"destination,omitempty"`
	// Since (inclusive) and Until (exclusive) bound the time.
	Since time.Time     `json:"since,omitzero"`
	Until time.Time     `json:"until,omitzero"`
	Kinds []record.Kind `json:"kind,omitempty"`
	// Actions: allow, deny, would_deny for decisions; other kinds' actions.
	Actions []string `json:"action,omitempty"`
	// Reasons: reason codes of decisions, detectors of detections.
	Reasons []string `json:"reason,omitempty"`
	Policy  string   `json:"policy,omitempty"`
	Rule    string   `json:"rule,omitempty"`
	Route   string   `json:"route,omitempty"`
	// Limit is the most records returned (default 100, at most 100,000).
	Limit int `json:"limit,omitempty"`
	// Ascending returns the oldest first; by default the newest first.
	Ascending bool `json:"ascending,omitempty"`
}

// Validate reports every problem of the filter.
func (f *Filter) Validate() error {
	var errs []error
	for _, list := range [][]string{f.Identity, f.Source, f.Destination} {
		for _, p := range list {
			if _, err := policies.ParseIDPattern(p); err != nil {
				errs = append(errs, fmt.Errorf("identity %w", err))
			}
		}
	}
	for _, k := range f.Kinds {
		if !k.Valid() {
			errs = append(errs, fmt.Errorf("kind %q: want one of %v", k, record.Kinds))
		}
	}
	if f.Rule != "" && f.Policy == "" {
		errs = append(errs, errors.New("a rule needs its policy"))
	}
	if f.Limit < 0 || f.Limit > MaxLimit {
		errs = append(errs, fmt.Errorf("limit %d: want 1 to %d", f.Limit, MaxLimit))
	}
	if !f.Since.IsZero() && !f.Until.IsZero() && !f.Until.After(f.Since) {
		errs = append(errs, errors.New("until must be after since"))
	}
	return errors.Join(errs...)
}

// Result is what a query returns.
type Result struct {
	Records []record.Record `json:"records"`
	// Truncated: more records matched than the limit.
	Truncated bool `json:"truncated,omitempty"`
}

const selectSQL = `SELECT r.id, r.time, r.kind, rep.s, src.s, dst.s, act.s, rsn.s, pol.s, rul.s, rte.s, who.s, cx.s,
	r.method, r.path, r.host, r.source_ip, r.decision_id, r.request_id, r.trace_id, r.latency_us, r.detail, r.extra
	FROM records r
	LEFT JOIN strs rep ON rep.id = r.reporter
	LEFT JOIN strs src ON src.id = r.source
	LEFT JOIN strs dst ON dst.id = r.destination
	LEFT JOIN strs act ON act.id = r.action
	LEFT JOIN strs rsn ON rsn.id = r.reason
	LEFT JOIN strs pol ON pol.id = r.policy
	LEFT JOIN strs rul ON rul.id = r.rule
	LEFT JOIN strs rte ON rte.id = r.route
	LEFT JOIN strs who ON who.id = r.actor
	LEFT JOIN strs cx ON cx.id = r.ctx`

// Query returns the records f selects.
func (s *Store) Query(ctx context.Context, f Filter) (*Result, error) {
	if err := f.Validate(); err != nil {
		return nil, fmt.Errorf("recordstore: query: %w", err)
	}
	limit := f.Limit
	if limit == 0 {
		limit = DefaultLimit
	}
	var where []string
	var args []any
	none := false // a condition no stored string can meet
	idCond := func(patterns []string, cols ...string) error {
		if len(patterns) == 0 {
			return nil
		}
		ids, err := s.identityIDs(ctx, patterns)
		if err != nil {
			return err
		}
		if len(ids) == 0 {
			none = true
			return nil
		}
		in := placeholders(len(ids))
		var ors []string
		for _, c := range cols {
			ors = append(ors, "r."+c+" IN ("+in+")")
			for _, id := range ids {
				args = append(args, id)
			}
		}
		where = append(where, "("+strings.Join(ors, " OR ")+")")
		return nil
	}
	strCond := func(col string, vals ...string) error {
		if len(vals) == 0 {
			return nil
		}
		ids, err := s.stringIDs(ctx, vals)
		if err != nil {
			return err
		}
		if len(ids) == 0 {
			none = true
			return nil
		}
		where = append(where, "r."+col+" IN ("+placeholders(len(ids))+")")
		for _, id := range ids {
			args = append(args, id)
		}
		return nil
	}
	if err := errors.Join(
		idCond(f.Identity, "source", "destination"),
		idCond(f.Source, "source"),
		idCond(f.Destination, "destination"),
		strCond("action", f.Actions...),
		strCond("reason", f.Reasons...),
		strCond("policy", nonEmpty(f.Policy)...),
		strCond("rule", nonEmpty(f.Rule)...),
		strCond("route", nonEmpty(f.Route)...),
	); err != nil {
		return nil, fmt.Errorf("recordstore: query: %w", err)
	}
	if none {
		return &Result{Records: []record.Record{}}, nil
	}
	if len(f.Kinds) > 0 {
		var ks []string
		for _, k := range f.Kinds {
			ks = append(ks, "?")
			args = append(args, kindCodes[k])
		}
		where = append(where, "r.kind IN ("+strings.Join(ks, ",")+")")
	}
	if !f.Since.IsZero() {
		where = append(where, "r.time >= ?")
		args = append(args, f.Since.UnixMicro())
	}
	if !f.Until.IsZero() {
		where = append(where, "r.time < ?")
		args = append(args, f.Until.UnixMicro())
	}
	q := selectSQL
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	if f.Ascending {
		q += " ORDER BY r.time, r.id"
	} else {
		q += " ORDER BY r.time DESC, r.id DESC"
	}
	q += " LIMIT ?"
	args = append(args, limit+1)
	recs, err := s.scan(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	res := &Result{Records: recs}
	if len(recs) > limit {
		res.Records, res.Truncated = recs[:limit], true
	}
	return res, nil
}

func nonEmpty(s string) []string {
	if s == "" {
		return nil
	}
	return []string{s}
}

func placeholders(n int) string {
	return strings.TrimSuffix(strings.Repeat("?,", n), ",")
}

// stringIDs returns the dictionary ids of the values that are stored.
func (s *Store) stringIDs(ctx context.Context, vals []string) ([]int64, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT id FROM strs WHERE s IN (`+placeholders(len(vals))+`)`, anys(vals)...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var ids []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, rows.Err()
}

func anys(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}

// identityIDs expands SPIFFE IDs and patterns to the dictionary ids of the
// stored identities they match. A pattern reads only the dictionary range
// of its trust domain.
func (s *Store) identityIDs(ctx context.Context, patterns []string) ([]int64, error) {
	var exact []string
	var ids []int64
	for _, p := range patterns {
		pat, err := policies.ParseIDPattern(p)
		if err != nil {
			return nil, err
		}
		if id, err := spiffeid.FromString(p); err == nil && id.Path() != "" {
			exact = append(exact, id.String())
			continue
		}
		td, _, _ := strings.Cut(strings.TrimPrefix(p, "spiffe://"), "/")
		lo := "spiffe://" + td
		rows, err := s.r.QueryContext(ctx, `SELECT id, s FROM strs WHERE s >= ? AND s < ?`, lo, lo+"0")
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			var id int64
			var v string
			if err := rows.Scan(&id, &v); err != nil {
				rows.Close()
				return nil, err
			}
			sid, err := spiffeid.FromString(v)
			if err != nil || !pat.Match(sid) {
				continue
			}
			ids = append(ids, id)
			if len(ids) > maxPatternIDs {
				rows.Close()
				return nil, fmt.Errorf("identity patterns match more than %d identities: narrow them", maxPatternIDs)
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	if len(exact) > 0 {
		more, err := s.stringIDs(ctx, exact)
		if err != nil {
			return nil, err
		}
		ids = append(ids, more...)
	}
	return ids, nil
}

func (s *Store) scan(ctx context.Context, q string, args ...any) ([]record.Record, error) {
	out := []record.Record{}
	err := s.each(ctx, func(r *record.Record) error { out = append(out, *r); return nil }, q, args...)
	return out, err
}

// EachDecision calls fn with every recorded authz decision (with its
// request) in [since, until) (zero: open), oldest first, without holding
// them all in memory. It stops at fn's first error and returns it.
func (s *Store) EachDecision(ctx context.Context, since, until time.Time, fn func(*wire.Decision) error) error {
	q := selectSQL + ` WHERE r.kind = ? AND r.ctx IS NOT NULL`
	args := []any{kindCodes[record.KindDecision]}
	if !since.IsZero() {
		q += ` AND r.time >= ?`
		args = append(args, since.UnixMicro())
	}
	if !until.IsZero() {
		q += ` AND r.time < ?`
		args = append(args, until.UnixMicro())
	}
	q += ` ORDER BY r.time, r.id`
	return s.each(ctx, func(r *record.Record) error { return fn(r.Decision) }, q, args...)
}

func (s *Store) each(ctx context.Context, fn func(*record.Record) error, q string, args ...any) error {
	rows, err := s.r.QueryContext(ctx, q, args...)
	if err != nil {
		return fmt.Errorf("recordstore: query: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			r                                                     record.Record
			t, kind                                               int64
			rep, src, dst, act, rsn, pol, rul, rte, who, cx       sql.NullString
			method, path, host, sip, did, rid, tid, detail, extra sql.NullString
			latency                                               sql.NullInt64
		)
		if err := rows.Scan(&r.ID, &t, &kind, &rep, &src, &dst, &act, &rsn, &pol, &rul, &rte, &who, &cx,
			&method, &path, &host, &sip, &did, &rid, &tid, &latency, &detail, &extra); err != nil {
			return fmt.Errorf("recordstore: scan: %w", err)
		}
		r.Time, r.Kind = time.UnixMicro(t).UTC(), kindOf(kind)
		r.Reporter, r.Source, r.Destination, r.Action, r.Reason = rep.String, src.String, dst.String, act.String, rsn.String
		r.Policy, r.Rule, r.Route, r.By = pol.String, rul.String, rte.String, who.String
		r.Method, r.Path, r.Detail = method.String, path.String, detail.String
		if cx.Valid {
			d := &wire.Decision{}
			if err := json.Unmarshal([]byte(cx.String), d); err != nil {
				return fmt.Errorf("recordstore: record %d: context: %w", r.ID, err)
			}
			if extra.Valid {
				var rf rareFields
				if err := json.Unmarshal([]byte(extra.String), &rf); err != nil {
					return fmt.Errorf("recordstore: record %d: extra: %w", r.ID, err)
				}
				d.RemoteIP, d.JWT, d.Headers = rf.RemoteIP, rf.JWT, rf.Headers
			}
			d.Time, d.DecisionID, d.RequestID, d.TraceID = r.Time, did.String, rid.String, tid.String
			d.Source, d.Destination, d.SourceIP, d.Host = r.Source, r.Destination, sip.String, host.String
			d.Method, d.Path, d.Route = r.Method, r.Path, r.Route
			d.Allowed, d.WouldDeny = r.Action != record.ActionDeny, r.Action == record.ActionWouldDeny
			d.Reason, d.Policy, d.Rule, d.Error, d.LatencyMicros = r.Reason, r.Policy, r.Rule, r.Detail, latency.Int64
			r.Decision = d
		}
		if err := fn(&r); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("recordstore: query: %w", err)
	}
	return nil
}

// TimelineOptions choose the window of an incident timeline.
type TimelineOptions struct {
	// Before names what the timeline leads to: "quarantine" (the default:
	// the identity's last quarantine) or "detection" (its last detection).
	// Ignored when Since is set.
	Before string `json:"before,omitempty"`
	// Window is how far before that the timeline starts (default 10m).
	Window time.Duration `json:"window,omitempty"`
	// Since starts the timeline at a time instead (Until, default now,
	// ends it).
	Since time.Time `json:"since,omitzero"`
	Until time.Time `json:"until,omitzero"`
	// Limit bounds the records (default 10,000); the latest are kept.
	Limit int `json:"limit,omitempty"`
}

// Timeline is what happened around an identity, in order.
type Timeline struct {
	Identity string    `json:"identity"`
	From     time.Time `json:"from"`
	To       time.Time `json:"to"`
	// Anchor is the quarantine or detection the timeline leads to.
	Anchor  *record.Record  `json:"anchor,omitempty"`
	Records []record.Record `json:"records"`
	// Truncated: the window held more records than the limit; the
	// earliest were left out.
	Truncated bool    `json:"truncated,omitempty"`
	Summary   Summary `json:"summary"`
}

// Summary counts a timeline.
type Summary struct {
	Records      int            `json:"records"`
	Kinds        map[string]int `json:"kinds"`
	Decisions    map[string]int `json:"decisions,omitempty"` // by action, for requests the identity made
	Reasons      map[string]int `json:"reasons,omitempty"`   // denies the identity received, by reason
	Destinations map[string]int `json:"destinations,omitempty"`
	Detections   map[string]int `json:"detections,omitempty"` // by detector
	FirstDeny    time.Time      `json:"firstDeny,omitzero"`
	Quarantined  time.Time      `json:"quarantined,omitzero"`
	QuarantineBy string         `json:"quarantinedBy,omitempty"`
	Released     time.Time      `json:"released,omitzero"`
	ReleasedBy   string         `json:"releasedBy,omitempty"`
}

// ErrNoAnchor is returned when the identity has no record to anchor a
// timeline on.
var ErrNoAnchor = errors.New("no such record")

// Timeline returns what identity did and what happened to it: its requests
// and the requests to it, the denies, detections, the quarantine, and who
// released it, oldest first.
func (s *Store) Timeline(ctx context.Context, identity string, o TimelineOptions) (*Timeline, error) {
	id, err := spiffeid.FromString(identity)
	if err != nil {
		return nil, fmt.Errorf("recordstore: timeline: identity %q: %w", identity, err)
	}
	if o.Window <= 0 {
		o.Window = 10 * time.Minute
	}
	if o.Limit <= 0 {
		o.Limit = 10_000
	}
	if o.Limit > MaxLimit {
		return nil, fmt.Errorf("recordstore: timeline: limit %d: at most %d", o.Limit, MaxLimit)
	}
	tl := &Timeline{Identity: id.String()}
	who := []string{id.String()}
	switch {
	case !o.Since.IsZero():
		tl.From, tl.To = o.Since, o.Until
		if tl.To.IsZero() {
			tl.To = s.opts.Now()
		}
	default:
		kind := record.KindQuarantine
		switch o.Before {
		case "", "quarantine":
		case "detection":
			kind = record.KindDetection
		default:
			return nil, fmt.Errorf("recordstore: timeline: before %q: want quarantine or detection", o.Before)
		}
		f := Filter{Source: who, Kinds: []record.Kind{kind}, Until: o.Until, Limit: 1}
		if kind == record.KindQuarantine {
			f.Actions = []string{"add"}
		}
		res, err := s.Query(ctx, f)
		if err != nil {
			return nil, err
		}
		if len(res.Records) == 0 {
			return nil, fmt.Errorf("recordstore: timeline: %w: no %s of %s recorded (use since for a time window)", ErrNoAnchor, kind, id)
		}
		a := res.Records[0]
		tl.Anchor = &a
		tl.From, tl.To = a.Time.Add(-o.Window), a.Time.Add(time.Microsecond)
	}
	res, err := s.Query(ctx, Filter{Identity: who, Since: tl.From, Until: tl.To, Limit: o.Limit})
	if err != nil {
		return nil, err
	}
	recs, truncated := res.Records, res.Truncated
	if tl.Anchor != nil {
		// What came of it: extensions, the release or expiry, up to the
		// next quarantine.
		after, err := s.Query(ctx, Filter{Source: who, Kinds: []record.Kind{record.KindQuarantine, record.KindRelease},
			Since: tl.To, Limit: 100, Ascending: true})
		if err != nil {
			return nil, err
		}
		for _, r := range after.Records {
			if r.Kind == record.KindQuarantine && r.Action == "add" {
				break
			}
			recs = append(recs, r)
			if r.Kind == record.KindRelease {
				tl.To = r.Time.Add(time.Microsecond)
				break
			}
		}
	}
	sort.SliceStable(recs, func(i, j int) bool {
		if !recs[i].Time.Equal(recs[j].Time) {
			return recs[i].Time.Before(recs[j].Time)
		}
		return recs[i].ID < recs[j].ID
	})
	tl.Records, tl.Truncated = recs, truncated
	tl.Summary = summarize(id.String(), recs)
	return tl, nil
}

func summarize(id string, recs []record.Record) Summary {
	s := Summary{Records: len(recs), Kinds: map[string]int{}, Decisions: map[string]int{}, Reasons: map[string]int{},
		Destinations: map[string]int{}, Detections: map[string]int{}}
	for i := range recs {
		r := &recs[i]
		s.Kinds[string(r.Kind)]++
		switch r.Kind {
		case record.KindDecision:
			if r.Source != id {
				continue
			}
			s.Decisions[r.Action]++
			if r.Destination != "" {
				s.Destinations[r.Destination]++
			}
			if r.Action == record.ActionDeny {
				s.Reasons[r.Reason]++
				if s.FirstDeny.IsZero() {
					s.FirstDeny = r.Time
				}
			}
		case record.KindDetection:
			s.Detections[r.Reason]++
		case record.KindQuarantine:
			if r.Action == "add" {
				s.Quarantined, s.QuarantineBy = r.Time, r.By
			}
		case record.KindRelease:
			s.Released, s.ReleasedBy = r.Time, r.By
		}
	}
	return s
}
