package recordstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
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

// Query returns the records f selects.
//
// It reads through one index chosen by the filter, not by the query
// planner's estimates: the records that are not decisions' (when only
// they are asked for), else an identity's (its records as source, then as
// destination: each in time order), else the policy's, the reason's, or
// time's; every other condition is
// checked on the rows found. And it reads in time windows from the newest
// (or, ascending, the oldest) end, each twice as long as the last, until
// it has the records asked for: a common match is found in the first
// small window, a rare one after a few, and neither reads the store
// through an order it cannot stop early.
func (s *Store) Query(ctx context.Context, f Filter) (*Result, error) {
	if err := f.Validate(); err != nil {
		return nil, fmt.Errorf("recordstore: query: %w", err)
	}
	limit := f.Limit
	if limit == 0 {
		limit = DefaultLimit
	}
	qp, err := s.plan(ctx, &f)
	if err != nil {
		return nil, fmt.Errorf("recordstore: query: %w", err)
	}
	res := &Result{Records: []record.Record{}}
	if qp.none {
		return res, nil
	}
	// One read transaction: every window reads the same snapshot, through
	// one prepared statement.
	tx, err := s.r.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("recordstore: query: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	lo, hi, ok, err := span(ctx, tx, &f)
	if err != nil {
		return nil, err
	}
	if !ok {
		return res, nil
	}
	q := qp.sql(f.Ascending)
	stmt, err := tx.PrepareContext(ctx, q)
	if err != nil {
		return nil, fmt.Errorf("recordstore: query: %w", err)
	}
	defer stmt.Close()
	var rd reader
	want := limit + 1
	w := firstWindow
	for want > 0 && lo < hi {
		a, b := lo, hi
		if f.Ascending {
			b = min(lo+w, hi)
			lo = b
		} else {
			a = max(hi-w, lo)
			hi = a
		}
		rows, err := stmt.QueryContext(ctx, qp.args(a, b, want)...)
		if err != nil {
			return nil, fmt.Errorf("recordstore: query: %w", err)
		}
		n := len(res.Records)
		err = rd.read(ctx, s, tx, rows, func(r *record.Record) error { res.Records = append(res.Records, *r); return nil })
		if err != nil {
			return nil, err
		}
		want -= len(res.Records) - n
		w *= windowGrowth
	}
	if len(res.Records) > limit {
		res.Records, res.Truncated = res.Records[:limit], true
	}
	return res, nil
}

// firstWindow is the span of time, in microseconds, that a query reads
// first; each next window is windowGrowth times longer.
const (
	firstWindow  = int64(time.Minute / time.Microsecond)
	windowGrowth = 4
)

// span returns the time range, in unix microseconds [lo, hi), that f can
// select from: its own bounds within the stored records'.
func span(ctx context.Context, tx *sql.Tx, f *Filter) (lo, hi int64, ok bool, err error) {
	var oldest, newest *int64
	if err := tx.QueryRowContext(ctx, `SELECT (SELECT MIN(time) FROM records), (SELECT MAX(time) FROM records)`).Scan(&oldest, &newest); err != nil {
		return 0, 0, false, fmt.Errorf("recordstore: query: %w", err)
	}
	if oldest == nil {
		return 0, 0, false, nil
	}
	lo, hi = *oldest, *newest+1
	if !f.Since.IsZero() {
		lo = max(lo, f.Since.UnixMicro())
	}
	if !f.Until.IsZero() {
		hi = min(hi, f.Until.UnixMicro())
	}
	return lo, hi, lo < hi, nil
}

// queryPlan is a filter turned into SQL: the index to read (one part per
// index: an identity's reads its source and its destination index) and
// the conditions checked on the rows.
type queryPlan struct {
	parts []planPart
	none  bool // a condition no stored string can meet
}

type planPart struct {
	index string // the INDEXED BY of this part
	where []string
	args  []any
}

// sql is the plan's query over a time window, ordered, with a limit:
// its arguments are args(a, b, limit).
func (qp *queryPlan) sql(ascending bool) string {
	order := " ORDER BY time DESC, id DESC"
	if ascending {
		order = " ORDER BY time, id"
	}
	var q strings.Builder
	for i, p := range qp.parts {
		if i > 0 {
			q.WriteString(" UNION ALL ")
		}
		if len(qp.parts) > 1 {
			q.WriteString("SELECT * FROM (")
		}
		q.WriteString(selectSQL)
		q.WriteString(" INDEXED BY ")
		q.WriteString(p.index)
		q.WriteString(" WHERE r.time >= ? AND r.time < ?")
		for _, w := range p.where {
			q.WriteString(" AND ")
			q.WriteString(w)
		}
		if len(qp.parts) > 1 {
			// Each part in time order with its own limit, so that each
			// reads its index in order and stops.
			q.WriteString(strings.ReplaceAll(order, " ORDER BY ", " ORDER BY r."))
			q.WriteString(" LIMIT ?)")
		}
	}
	q.WriteString(order)
	q.WriteString(" LIMIT ?")
	return q.String()
}

// args are the arguments of sql for the window [a, b) and the limit.
func (qp *queryPlan) args(a, b int64, limit int) []any {
	var args []any
	for _, p := range qp.parts {
		args = append(args, a, b)
		args = append(args, p.args...)
		if len(qp.parts) > 1 {
			args = append(args, limit)
		}
	}
	return append(args, limit)
}

// plan resolves f's strings to dictionary ids and chooses the index.
func (s *Store) plan(ctx context.Context, f *Filter) (*queryPlan, error) {
	qp := &queryPlan{}
	// Conditions on a dictionary column: col IN (ids).
	type cond struct {
		col string
		ids []any
	}
	var conds []cond
	add := func(col string, ids []int64) {
		if len(ids) == 0 {
			qp.none = true
			return
		}
		c := cond{col: col}
		for _, id := range ids {
			c.ids = append(c.ids, id)
		}
		conds = append(conds, c)
	}
	idList := func(patterns []string) ([]int64, error) {
		if len(patterns) == 0 {
			return nil, nil
		}
		return s.identityIDs(ctx, patterns)
	}
	identity, err := idList(f.Identity)
	if err != nil {
		return nil, err
	}
	if len(f.Identity) > 0 && len(identity) == 0 {
		qp.none = true
	}
	for _, c := range []struct {
		col  string
		list []string
		ids  bool
	}{
		{"source", f.Source, true}, {"destination", f.Destination, true},
		{"policy", nonEmpty(f.Policy), false}, {"reason", f.Reasons, false},
		{"action", f.Actions, false}, {"rule", nonEmpty(f.Rule), false}, {"route", nonEmpty(f.Route), false},
	} {
		if len(c.list) == 0 {
			continue
		}
		var ids []int64
		var err error
		if c.ids {
			ids, err = idList(c.list)
		} else {
			ids, err = s.stringIDs(ctx, c.list)
		}
		if err != nil {
			return nil, err
		}
		add(c.col, ids)
	}
	if qp.none {
		return qp, nil
	}
	in := func(col string, ids []any) string {
		if len(ids) == 1 {
			return "r." + col + " = ?"
		}
		return "r." + col + " IN (" + placeholders(len(ids)) + ")"
	}
	// The conditions every part checks.
	var where []string
	var args []any
	byCol := map[string]cond{}
	for _, c := range conds {
		byCol[c.col] = c
		where = append(where, in(c.col, c.ids))
		args = append(args, c.ids...)
	}
	if len(f.Kinds) > 0 {
		events := true
		var ks []any
		for _, k := range f.Kinds {
			ks = append(ks, kindCodes[k])
			events = events && k != record.KindDecision
		}
		where = append(where, "r.kind IN ("+placeholders(len(ks))+")")
		args = append(args, ks...)
		if events {
			// The partial index's own term, so that it may be used.
			where = append(where, "r.kind > 1")
		}
	}
	part := func(index string, extra []string, extraArgs []any) planPart {
		return planPart{index: index, where: append(append([]string{}, where...), extra...), args: append(append([]any{}, args...), extraArgs...)}
	}
	ids := make([]any, len(identity))
	for i, id := range identity {
		ids[i] = id
	}
	if len(f.Kinds) > 0 && !slices.Contains(f.Kinds, record.KindDecision) {
		// The records that are not decisions are few: their index first.
		if len(ids) > 0 {
			qp.parts = []planPart{part("records_events", []string{"(" + in("source", ids) + " OR " + in("destination", ids) + ")"},
				append(append([]any{}, ids...), ids...))}
		} else {
			qp.parts = []planPart{part("records_events", nil, nil)}
		}
		return qp, nil
	}
	if len(ids) > 0 {
		// Its records as source, then those as destination that are not
		// also as source.
		qp.parts = []planPart{
			part("records_source", []string{in("source", ids)}, ids),
			part("records_destination", []string{in("destination", ids), "(r.source IS NULL OR NOT " + in("source", ids) + ")"},
				append(append([]any{}, ids...), ids...)),
		}
		return qp, nil
	}
	index := "records_time"
	switch {
	case byCol["source"].col != "":
		index = "records_source"
	case byCol["destination"].col != "":
		index = "records_destination"
	case byCol["policy"].col != "":
		index = "records_policy"
	case byCol["reason"].col != "":
		index = "records_reason"
	}
	qp.parts = []planPart{part(index, nil, nil)}
	return qp, nil
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

// Summary counts a timeline. Requests are counted as the records stand
// for them (a filter's report counts several).
type Summary struct {
	Records      int            `json:"records"`
	Kinds        map[string]int `json:"kinds"`
	Decisions    map[string]int `json:"decisions,omitempty"` // requests the identity made, by action
	Reasons      map[string]int `json:"reasons,omitempty"`   // its requests denied, by reason
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

// IdentityTimeline is the incident timeline of an identity for the web
// console's identity page, newest first, at most limit records: the
// timeline that led to its last quarantine and what came of it, else to
// its last detection, else its records of the last hour.
func (s *Store) IdentityTimeline(ctx context.Context, identity string, limit int) ([]record.Record, error) {
	if limit <= 0 || limit > MaxLimit {
		return nil, fmt.Errorf("recordstore: identity timeline: limit %d: want 1 to %d", limit, MaxLimit)
	}
	var tl *Timeline
	var err error
	for _, o := range []TimelineOptions{
		{Before: "quarantine", Limit: limit},
		{Before: "detection", Limit: limit},
		{Since: s.opts.Now().Add(-time.Hour), Limit: limit},
	} {
		if tl, err = s.Timeline(ctx, identity, o); !errors.Is(err, ErrNoAnchor) {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	recs := tl.Records
	for i, j := 0, len(recs)-1; i < j; i, j = i+1, j-1 {
		recs[i], recs[j] = recs[j], recs[i]
	}
	if len(recs) > limit {
		recs = recs[:limit]
	}
	return recs, nil
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
			n := int(max(r.Count, 1))
			s.Decisions[r.Action] += n
			if r.Destination != "" {
				s.Destinations[r.Destination] += n
			}
			if r.Action == record.ActionDeny {
				s.Reasons[r.Reason] += n
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
