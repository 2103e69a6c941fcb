package api

import (
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/meshguard/meshguard/controlplane/record"
	"github.com/meshguard/meshguard/controlplane/recordstore"
)

// Query parameters of PathRecords (repeatable ones marked *): identity*,
// source*, destination*, since, until, kind*, decision* (allow, deny,
// would_deny; any record action), reason*, policy, rule, route, limit,
// order (asc or desc). PathIncident takes identity, before, window, since,
// until and limit.

// ParseTime reads an RFC 3339 time, or a Go duration meaning that long
// before now ("15m").
func ParseTime(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return time.Time{}, fmt.Errorf("%q: want an RFC 3339 time or a duration before now (15m, 2h)", s)
	}
	return now.Add(-d), nil
}

// ParseFilter reads a record query from URL parameters, reporting every
// problem.
func ParseFilter(q url.Values, now time.Time) (recordstore.Filter, error) {
	var errs []error
	known := map[string]bool{"identity": true, "source": true, "destination": true, "since": true, "until": true, "kind": true,
		"decision": true, "reason": true, "policy": true, "rule": true, "route": true, "limit": true, "order": true}
	for k := range q {
		if !known[k] {
			errs = append(errs, fmt.Errorf("unknown parameter %q", k))
		}
	}
	f := recordstore.Filter{
		Identity: q["identity"], Source: q["source"], Destination: q["destination"],
		Actions: q["decision"], Reasons: q["reason"], Policy: q.Get("policy"), Rule: q.Get("rule"), Route: q.Get("route"),
	}
	for _, k := range q["kind"] {
		f.Kinds = append(f.Kinds, record.Kind(k))
	}
	var err error
	if f.Since, err = ParseTime(q.Get("since"), now); err != nil {
		errs = append(errs, fmt.Errorf("since %w", err))
	}
	if f.Until, err = ParseTime(q.Get("until"), now); err != nil {
		errs = append(errs, fmt.Errorf("until %w", err))
	}
	if l := q.Get("limit"); l != "" {
		if f.Limit, err = strconv.Atoi(l); err != nil {
			errs = append(errs, fmt.Errorf("limit %q: not a number", l))
		}
	}
	switch o := strings.ToLower(q.Get("order")); o {
	case "", "desc":
	case "asc":
		f.Ascending = true
	default:
		errs = append(errs, fmt.Errorf("order %q: want asc or desc", o))
	}
	if err := errors.Join(errs...); err != nil {
		return f, err
	}
	return f, f.Validate()
}

// ParseTimeline reads an incident timeline request from URL parameters.
func ParseTimeline(q url.Values, now time.Time) (string, recordstore.TimelineOptions, error) {
	var o recordstore.TimelineOptions
	var errs []error
	for k := range q {
		switch k {
		case "identity", "before", "window", "since", "until", "limit":
		default:
			errs = append(errs, fmt.Errorf("unknown parameter %q", k))
		}
	}
	id := q.Get("identity")
	if id == "" {
		errs = append(errs, errors.New("identity is required"))
	}
	o.Before = q.Get("before")
	var err error
	if w := q.Get("window"); w != "" {
		if o.Window, err = time.ParseDuration(w); err != nil || o.Window <= 0 {
			errs = append(errs, fmt.Errorf("window %q: want a positive duration", w))
		}
	}
	if o.Since, err = ParseTime(q.Get("since"), now); err != nil {
		errs = append(errs, fmt.Errorf("since %w", err))
	}
	if o.Until, err = ParseTime(q.Get("until"), now); err != nil {
		errs = append(errs, fmt.Errorf("until %w", err))
	}
	if l := q.Get("limit"); l != "" {
		if o.Limit, err = strconv.Atoi(l); err != nil || o.Limit <= 0 {
			errs = append(errs, fmt.Errorf("limit %q: want a positive number", l))
		}
	}
	return id, o, errors.Join(errs...)
}

// FilterValues is the inverse of ParseFilter, for clients.
func FilterValues(f recordstore.Filter) url.Values {
	q := url.Values{}
	add := func(k string, vs ...string) {
		for _, v := range vs {
			if v != "" {
				q.Add(k, v)
			}
		}
	}
	add("identity", f.Identity...)
	add("source", f.Source...)
	add("destination", f.Destination...)
	for _, k := range f.Kinds {
		add("kind", string(k))
	}
	add("decision", f.Actions...)
	add("reason", f.Reasons...)
	add("policy", f.Policy)
	add("rule", f.Rule)
	add("route", f.Route)
	if !f.Since.IsZero() {
		add("since", f.Since.UTC().Format(time.RFC3339Nano))
	}
	if !f.Until.IsZero() {
		add("until", f.Until.UTC().Format(time.RFC3339Nano))
	}
	if f.Limit > 0 {
		add("limit", strconv.Itoa(f.Limit))
	}
	if f.Ascending {
		add("order", "asc")
	}
	return q
}
