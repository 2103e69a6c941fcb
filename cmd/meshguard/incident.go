package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshguard/meshguard/controlplane/api"
	"github.com/meshguard/meshguard/controlplane/record"
	"github.com/meshguard/meshguard/controlplane/recordstore"
)

// recordSource is where forensic commands read records: the control
// plane's admin API (--server) or a record store file (--store).
type recordSource struct {
	client adminClient
	store  string
}

func (s *recordSource) register(cmd *cobra.Command) {
	s.client.register(cmd)
	// --server is not required here: --store reads a file instead.
	_ = cmd.PersistentFlags().SetAnnotation("server", cobra.BashCompOneRequiredFlag, []string{"false"})
	cmd.PersistentFlags().StringVar(&s.store, "store", "", "read a record store file (the control plane's --records, or a copy) instead of asking --server")
}

func (s *recordSource) check() error {
	if (s.client.server == "") == (s.store == "") {
		return errors.New("give either --server (the control plane's admin API) or --store (a record store file)")
	}
	return nil
}

func (s *recordSource) open(ctx context.Context) (*recordstore.Store, error) {
	return recordstore.Open(ctx, recordstore.Options{Path: s.store, ReadOnly: true})
}

func (s *recordSource) query(ctx context.Context, stderr io.Writer, f recordstore.Filter) (*recordstore.Result, error) {
	if s.store != "" {
		st, err := s.open(ctx)
		if err != nil {
			return nil, err
		}
		defer st.Close()
		return st.Query(ctx, f)
	}
	var res recordstore.Result
	err := s.client.do(ctx, stderr, http.MethodGet, api.PathRecords+"?"+api.FilterValues(f).Encode(), nil, &res)
	return &res, err
}

func (s *recordSource) timeline(ctx context.Context, stderr io.Writer, id string, o recordstore.TimelineOptions) (*recordstore.Timeline, error) {
	if s.store != "" {
		st, err := s.open(ctx)
		if err != nil {
			return nil, err
		}
		defer st.Close()
		return st.Timeline(ctx, id, o)
	}
	q := url.Values{"identity": {id}}
	if o.Before != "" {
		q.Set("before", o.Before)
	}
	if o.Window > 0 {
		q.Set("window", o.Window.String())
	}
	if !o.Since.IsZero() {
		q.Set("since", o.Since.UTC().Format(time.RFC3339Nano))
	}
	if !o.Until.IsZero() {
		q.Set("until", o.Until.UTC().Format(time.RFC3339Nano))
	}
	if o.Limit > 0 {
		q.Set("limit", fmt.Sprint(o.Limit))
	}
	var tl recordstore.Timeline
	err := s.client.do(ctx, stderr, http.MethodGet, api.PathIncident+"?"+q.Encode(), nil, &tl)
	return &tl, err
}

const (
	outTable = "table"
	outJSON  = "json"
	outJSONL = "jsonl"
)

func checkOutput(o string) error {
	switch o {
	case outTable, outJSON, outJSONL:
		return nil
	}
	return fmt.Errorf("--output %q: want table, json or jsonl", o)
}

func newEventsCmd() *cobra.Command {
	src := &recordSource{}
	var (
		f                 recordstore.Filter
		kinds             []string
		since, until, out string
		oldestFirst       bool
	)
	cmd := &cobra.Command{
		Use:   "events",
		Short: "Query the control plane's records: decisions, detections, quarantines, releases, policy changes",
		Long: `events queries the records the control plane keeps (see docs/incident.md):
authorization decisions shipped by authz servers, detections reported by the
filters, quarantines, releases and policy changes.

Conditions combine with AND; a repeated flag is an OR of its values.
--identity matches either side of a request (source or destination) and
takes exact SPIFFE IDs or patterns (spiffe://td/ns/shop/*, spiffe://td for a
trust domain, a final ** for any depth). An edge is --source and
--destination together. Times are RFC 3339 or a duration before now (15m).

Records come from the control plane's admin API (--server, as an --admin-id
identity) or from a record store file (--store). Output: a table, or JSON
(one document) or JSON lines for tools.`,
		Example: `  meshguard events --server https://cp:8443 --identity spiffe://cluster.local/ns/bookstore/sa/reviews --since 1h
  meshguard events --store records.db --decision deny --reason denied_no_allow_match -o jsonl
  meshguard events --server … --source spiffe://cluster.local/ns/bookstore/sa/reviews --destination 'spiffe://cluster.local/ns/payments/**'
  meshguard events --server … --policy AuthorizationPolicy/bookstore/catalog --rule 0 --kind decision`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := errors.Join(src.check(), checkOutput(out)); err != nil {
				return err
			}
			now := time.Now()
			var err error
			if f.Since, err = api.ParseTime(since, now); err != nil {
				return fmt.Errorf("--since %w", err)
			}
			if f.Until, err = api.ParseTime(until, now); err != nil {
				return fmt.Errorf("--until %w", err)
			}
			f.Kinds = nil
			for _, k := range kinds {
				f.Kinds = append(f.Kinds, record.Kind(k))
			}
			f.Ascending = oldestFirst
			if err := f.Validate(); err != nil {
				return err
			}
			res, err := src.query(cmd.Context(), cmd.ErrOrStderr(), f)
			if err != nil {
				return err
			}
			return printRecords(cmd.OutOrStdout(), out, res.Records, res.Truncated)
		},
	}
	src.register(cmd)
	fl := cmd.Flags()
	fl.StringArrayVar(&f.Identity, "identity", nil, "SPIFFE ID or pattern on either side (repeatable)")
	fl.StringArrayVar(&f.Source, "source", nil, "calling SPIFFE ID or pattern (repeatable); for quarantines, the identity")
	fl.StringArrayVar(&f.Destination, "destination", nil, "called workload's SPIFFE ID or pattern (repeatable)")
	fl.StringVar(&since, "since", "", "from this time (RFC 3339, or a duration before now: 15m)")
	fl.StringVar(&until, "until", "", "before this time (RFC 3339, or a duration before now)")
	fl.StringArrayVar(&kinds, "kind", nil, "decision, detection, quarantine, release or policy (repeatable)")
	fl.StringArrayVar(&f.Actions, "decision", nil, "allow, deny or would_deny (repeatable; any record's action: block, add, release…)")
	fl.StringArrayVar(&f.Reasons, "reason", nil, "reason code of a decision, or detector of a detection (repeatable)")
	fl.StringVar(&f.Policy, "policy", "", "deciding policy (Kind/namespace/name)")
	fl.StringVar(&f.Rule, "rule", "", "deciding rule of --policy")
	fl.StringVar(&f.Route, "route", "", "Envoy route name")
	fl.IntVar(&f.Limit, "limit", recordstore.DefaultLimit, "most records to show (the newest, unless --oldest-first)")
	fl.BoolVar(&oldestFirst, "oldest-first", false, "the oldest records first")
	fl.StringVarP(&out, "output", "o", outTable, "table, json or jsonl")
	return cmd
}

// printRecords writes records as a table, a JSON array or JSON lines.
func printRecords(w io.Writer, format string, recs []record.Record, truncated bool) error {
	switch format {
	case outJSON:
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(recordstore.Result{Records: recs, Truncated: truncated})
	case outJSONL:
		enc := json.NewEncoder(w)
		for i := range recs {
			if err := enc.Encode(&recs[i]); err != nil {
				return err
			}
		}
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tKIND\tACTION\tSOURCE → DESTINATION\tREQUEST\tREASON\tPOLICY/RULE\tDETAIL")
	for i := range recs {
		r := &recs[i]
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Time.Local().Format("2006-01-02 15:04:05.000"), r.Kind, dash(r.Action),
			edge(r), dash(requestOf(r)), dash(r.Reason), dash(ruleRef(r)), dash(detail(r)))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if truncated {
		_, err := fmt.Fprintf(w, "(more records match: raise --limit or narrow the query)\n")
		return err
	}
	return nil
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func edge(r *record.Record) string {
	switch {
	case r.Source != "" && r.Destination != "":
		return r.Source + " → " + r.Destination
	case r.Source != "":
		return r.Source
	case r.Destination != "":
		return "→ " + r.Destination
	}
	return "-"
}

func requestOf(r *record.Record) string {
	s := strings.TrimSpace(r.Method + " " + r.Path)
	if r.Route != "" {
		if s != "" {
			s += " "
		}
		s += "(" + r.Route + ")"
	}
	return s
}

func ruleRef(r *record.Record) string {
	if r.Rule != "" {
		return r.Policy + " rule " + r.Rule
	}
	return r.Policy
}

func detail(r *record.Record) string {
	d := r.Detail
	if r.By != "" {
		d = strings.TrimSpace("by " + r.By + " " + d)
	}
	if len(d) > 140 {
		d = d[:137] + "..."
	}
	return d
}

func newIncidentCmd() *cobra.Command {
	src := &recordSource{}
	var (
		o                 recordstore.TimelineOptions
		since, until, out string
		export            string
	)
	cmd := &cobra.Command{
		Use:   "incident SPIFFE_ID",
		Short: "The timeline that led to an identity's quarantine (or detection): requests, denies, detections, the quarantine, the release",
		Long: `incident prints, in order, what an identity did and what happened to it:
the requests it made and received (allowed and denied, with the reason and
the deciding rule), the detections that named it, its quarantine, and who
released it.

By default the timeline ends at the identity's last quarantine and starts
--window (10m) before it, followed by what came of the quarantine (extension,
release or expiry). --before detection anchors it on the last detection
instead; --since (and --until) give a time window.

--export FILE.tar.gz writes a self-contained bundle for a ticket:
timeline.jsonl (one record a line), summary.json and summary.txt (this
command's table).`,
		Example: `  meshguard incident spiffe://cluster.local/ns/bookstore/sa/reviews --server https://cp:8443
  meshguard incident spiffe://cluster.local/ns/bookstore/sa/reviews --store records.db --window 30m --export reviews.tar.gz
  meshguard incident spiffe://cluster.local/ns/bookstore/sa/reviews --server … --since 2h -o jsonl`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := errors.Join(src.check(), checkOutput(out)); err != nil {
				return err
			}
			now := time.Now()
			var err error
			if o.Since, err = api.ParseTime(since, now); err != nil {
				return fmt.Errorf("--since %w", err)
			}
			if o.Until, err = api.ParseTime(until, now); err != nil {
				return fmt.Errorf("--until %w", err)
			}
			tl, err := src.timeline(cmd.Context(), cmd.ErrOrStderr(), args[0], o)
			if err != nil {
				return err
			}
			if export != "" {
				if err := writeBundle(export, tl); err != nil {
					return err
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "wrote %s (%d records)\n", export, len(tl.Records))
			}
			return printTimeline(cmd.OutOrStdout(), out, tl)
		},
	}
	src.register(cmd)
	fl := cmd.Flags()
	fl.StringVar(&o.Before, "before", "quarantine", "what the timeline leads to: quarantine or detection (the identity's last)")
	fl.DurationVar(&o.Window, "window", 10*time.Minute, "how long before the quarantine or detection the timeline starts")
	fl.StringVar(&since, "since", "", "a time window instead: from this time (RFC 3339, or a duration before now)")
	fl.StringVar(&until, "until", "", "end of the window, or the latest quarantine considered (default now)")
	fl.IntVar(&o.Limit, "limit", 10_000, "most records (the latest are kept)")
	fl.StringVarP(&out, "output", "o", outTable, "table, json or jsonl")
	fl.StringVar(&export, "export", "", "also write the timeline as a bundle for a ticket (.tar.gz: timeline.jsonl, summary.json, summary.txt)")
	return cmd
}

func printTimeline(w io.Writer, format string, tl *recordstore.Timeline) error {
	switch format {
	case outJSON:
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(tl)
	case outJSONL:
		return printRecords(w, outJSONL, tl.Records, false)
	}
	s := tl.Summary
	fmt.Fprintf(w, "incident timeline of %s\n", tl.Identity)
	fmt.Fprintf(w, "  window     %s .. %s\n", tl.From.Local().Format(time.RFC3339), tl.To.Local().Format(time.RFC3339))
	if !s.Quarantined.IsZero() {
		fmt.Fprintf(w, "  quarantined %s by %s\n", s.Quarantined.Local().Format(time.RFC3339), s.QuarantineBy)
	}
	if !s.Released.IsZero() {
		fmt.Fprintf(w, "  released   %s by %s\n", s.Released.Local().Format(time.RFC3339), s.ReleasedBy)
	}
	fmt.Fprintf(w, "  records    %d %s; its requests %s; denies by reason %s; detections %s\n", s.Records, counts(s.Kinds),
		counts(s.Decisions), counts(s.Reasons), counts(s.Detections))
	if tl.Truncated {
		fmt.Fprintln(w, "  (the window holds more records than --limit: the earliest are left out)")
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "AT\tKIND\tACTION\tSOURCE → DESTINATION\tREQUEST\tREASON\tPOLICY/RULE\tDETAIL")
	origin := tl.From
	if tl.Anchor != nil {
		origin = tl.Anchor.Time
	}
	for i := range tl.Records {
		r := &tl.Records[i]
		at := r.Time.Sub(origin).Round(time.Millisecond)
		sign := "+"
		if at < 0 {
			sign, at = "-", -at
		}
		fmt.Fprintf(tw, "%s%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", sign, at, strings.ToUpper(string(r.Kind)), dash(r.Action), edge(r),
			dash(requestOf(r)), dash(r.Reason), dash(ruleRef(r)), dash(detail(r)))
	}
	return tw.Flush()
}

func counts(m map[string]int) string {
	if len(m) == 0 {
		return "none"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s %d", dash(k), m[k])
	}
	return b.String()
}

// writeBundle writes the timeline as a .tar.gz for a ticket.
func writeBundle(path string, tl *recordstore.Timeline) error {
	var jsonl, text bytes.Buffer
	if err := printRecords(&jsonl, outJSONL, tl.Records, false); err != nil {
		return err
	}
	if err := printTimeline(&text, outTable, tl); err != nil {
		return err
	}
	meta := *tl
	meta.Records = nil
	summary, err := json.MarshalIndent(struct {
		*recordstore.Timeline
		Records   int       `json:"records"`
		Generated time.Time `json:"generated"`
	}{&meta, len(tl.Records), time.Now().UTC()}, "", "  ")
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("--export: %w", err)
	}
	zw := gzip.NewWriter(f)
	tw := tar.NewWriter(zw)
	now := time.Now()
	for _, e := range []struct {
		name string
		data []byte
	}{{"timeline.jsonl", jsonl.Bytes()}, {"summary.json", append(summary, '\n')}, {"summary.txt", text.Bytes()}} {
		if err := tw.WriteHeader(&tar.Header{Name: e.name, Mode: 0o600, Size: int64(len(e.data)), ModTime: now, Typeflag: tar.TypeReg}); err != nil {
			_ = f.Close()
			return fmt.Errorf("--export: %w", err)
		}
		if _, err := tw.Write(e.data); err != nil {
			_ = f.Close()
			return fmt.Errorf("--export: %w", err)
		}
	}
	err = errors.Join(tw.Close(), zw.Close(), f.Close())
	if err != nil {
		return fmt.Errorf("--export: %w", err)
	}
	return nil
}
