package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshguard/meshguard/controlplane/api"
	"github.com/meshguard/meshguard/controlplane/recordstore"
	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/replay"
	"github.com/meshguard/meshguard/policies/source"
	"github.com/meshguard/meshguard/policies/wire"
)

// Values of --fail-on.
const (
	failAny         = "any"
	failAllowToDeny = "allow-to-deny"
	failDenyToAllow = "deny-to-allow"
	failNone        = "none"
)

func newPolicyReplayCmd() *cobra.Command {
	var (
		candidates        []string
		logs              []string
		store             string
		since, until      string
		failOn, format    string
		examples, workers int
	)
	cmd := &cobra.Command{
		Use:   "replay --policy CANDIDATE (--log FILE.jsonl… | --store FILE) [--since …]",
		Short: "Decide recorded requests again under a candidate policy set and show what would change",
		Long: `replay re-decides recorded requests under the candidate policy files (the
same YAML as every policy command) and prints what would change: requests
allowed then and denied now (allow->deny) and the reverse (deny->allow),
grouped by the candidate's deciding policy and rule and by edge (caller,
workload, route), with counts and examples.

Recorded requests come from authz decision logs (--log, the JSON lines of
meshguard authz --decision-log; repeatable, "-" is standard input) or from
the control plane's record store (--store FILE: its --records file or a
copy; reading it while the control plane writes is safe). Allows are only
there as far as they were sampled (--decision-log-allow-sample,
--ship-allow-sample).

What cannot be replayed is counted and said: decisions not taken by policy
(identity and JWT-SVID failures, malformed requests, timeouts, internal
errors, no policy loaded), runtime state (quarantines, anomaly responses),
requests whose re-decision reads a header that was not recorded
(--decision-log-header; credentials never are), and requests with a
JWT-SVID when the candidate matches JWT claims (never recorded).

Exit status: 0 when nothing --fail-on names changes, 1 when it does (a CI
gate), 2 when the command could not run.`,
		Example: `  meshguard policy replay --policy candidate/ --log /var/log/meshguard/decisions.jsonl
  meshguard policy replay --policy candidate/ --store records.db --since 24h --fail-on allow-to-deny
  kubectl logs deploy/meshguard-authz | meshguard policy replay --policy candidate/ --log - --format json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var errs []error
			if len(candidates) == 0 {
				errs = append(errs, errors.New("--policy: give the candidate policy files or directories"))
			}
			if (len(logs) == 0) == (store == "") {
				errs = append(errs, errors.New("give --log files or --store, not both"))
			}
			switch failOn {
			case failAny, failAllowToDeny, failDenyToAllow, failNone:
			default:
				errs = append(errs, fmt.Errorf("--fail-on %q: want any, allow-to-deny, deny-to-allow or none", failOn))
			}
			errs = append(errs, checkFormat(format))
			now := time.Now()
			var win replay.Window
			var err error
			if win.Since, err = api.ParseTime(since, now); err != nil {
				errs = append(errs, fmt.Errorf("--since %w", err))
			}
			if win.Until, err = api.ParseTime(until, now); err != nil {
				errs = append(errs, fmt.Errorf("--until %w", err))
			}
			if err := errors.Join(errs...); err != nil {
				return &exitError{code: 2, msg: err.Error()}
			}
			set, diags, err := source.Load(candidates...)
			if err != nil {
				return &exitError{code: 2, msg: err.Error()}
			}
			if diags.HasErrors() {
				return &exitError{code: 2, msg: "the candidate policies have errors: " + diags.Err().Error()}
			}
			b, _, err := policies.NewBundle("candidate", set)
			if err != nil {
				return &exitError{code: 2, msg: err.Error()}
			}
			r, err := replay.New(b, replay.Options{Examples: examples})
			if err != nil {
				return &exitError{code: 2, msg: err.Error()}
			}
			rep := r.NewReport()
			start := time.Now()
			if store != "" {
				st, err := recordstore.Open(cmd.Context(), recordstore.Options{Path: store, ReadOnly: true})
				if err != nil {
					return &exitError{code: 2, msg: err.Error()}
				}
				err = st.EachDecision(cmd.Context(), win.Since, win.Until, func(d *wire.Decision) error { r.Replay(d, rep); return nil })
				_ = st.Close()
				if err != nil {
					return &exitError{code: 2, msg: err.Error()}
				}
			}
			for _, path := range logs {
				var rd io.Reader = cmd.InOrStdin()
				if path != "-" {
					f, err := os.Open(path)
					if err != nil {
						return &exitError{code: 2, msg: fmt.Sprintf("--log: %v", err)}
					}
					defer f.Close()
					rd = f
				}
				if err := r.ReplayJSONL(rd, win, workers, rep); err != nil {
					return &exitError{code: 2, msg: fmt.Sprintf("--log %s: %v", path, err)}
				}
			}
			rep.Finish()
			elapsed := time.Since(start)
			if err := printReplay(cmd.OutOrStdout(), format, rep, elapsed); err != nil {
				return err
			}
			if n := gated(rep, failOn); n > 0 {
				return &exitError{code: 1, msg: fmt.Sprintf("%d recorded request(s) would change (--fail-on %s)", n, failOn)}
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringArrayVar(&candidates, "policy", nil, "candidate policy file or directory (repeatable)")
	fl.StringArrayVar(&logs, "log", nil, "decision log (JSON lines) to replay (repeatable; - is standard input)")
	fl.StringVar(&store, "store", "", "record store file to replay the recorded decisions of")
	fl.StringVar(&since, "since", "", "only requests from this time (RFC 3339, or a duration before now: 24h)")
	fl.StringVar(&until, "until", "", "only requests before this time")
	fl.StringVar(&failOn, "fail-on", failAny, "exit 1 when changes of this kind exist: any, allow-to-deny, deny-to-allow, none")
	fl.IntVar(&examples, "examples", 3, "examples shown per group")
	fl.IntVar(&workers, "workers", 0, "goroutines decoding and deciding log lines (0: one per CPU)")
	addFormatFlag(cmd, &format)
	_ = cmd.MarkFlagFilename("policy", "yaml", "yml")
	return cmd
}

func gated(rep *replay.Report, failOn string) int {
	switch failOn {
	case failAny:
		return rep.AllowToDeny + rep.DenyToAllow
	case failAllowToDeny:
		return rep.AllowToDeny
	case failDenyToAllow:
		return rep.DenyToAllow
	}
	return 0
}

func printReplay(w io.Writer, format string, rep *replay.Report, elapsed time.Duration) error {
	if format == formatJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	span := ""
	if !rep.From.IsZero() {
		span = fmt.Sprintf(" from %s to %s", rep.From.Format(time.RFC3339), rep.To.Format(time.RFC3339))
	}
	fmt.Fprintf(w, "replayed %d of %d recorded requests%s in %s\n", rep.Replayed, rep.Total, span, elapsed.Round(time.Millisecond))
	fmt.Fprintf(w, "  unchanged     %d\n  allow->deny   %d\n  deny->allow   %d\n", rep.Unchanged, rep.AllowToDeny, rep.DenyToAllow)
	if len(rep.Skipped) > 0 {
		fmt.Fprintln(w, "not replayed:")
		keys := make([]string, 0, len(rep.Skipped))
		for k := range rep.Skipped {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(w, "  %-24s %d  %s\n", k, rep.Skipped[k], replay.SkipReasons[k])
		}
		if len(rep.SkippedHeaders) > 0 {
			var hs []string
			for h, n := range rep.SkippedHeaders {
				hs = append(hs, fmt.Sprintf("%s (%d)", h, n))
			}
			sort.Strings(hs)
			fmt.Fprintf(w, "  headers asked for but not recorded: %s\n", strings.Join(hs, ", "))
		}
	}
	if len(rep.Groups) == 0 {
		_, err := fmt.Fprintln(w, "no recorded request changes its outcome")
		return err
	}
	fmt.Fprintln(w, "changes:")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  COUNT\tCHANGE\tNOW DECIDED BY\tREASON\tSOURCE → DESTINATION\tROUTE")
	for _, g := range rep.Groups {
		by := g.Policy
		if g.Rule != "" {
			by += " rule " + g.Rule
		}
		fmt.Fprintf(tw, "  %d\t%s\t%s\t%s\t%s → %s\t%s\n", g.Count, g.Direction, dash(by), g.Reason, dash(g.Source), dash(g.Destination), dash(g.Route))
		for _, e := range g.Examples {
			fmt.Fprintf(tw, "  \t  e.g.\t%s %s\t(was %s)\t%s %s\t\n", e.Time.Format(time.RFC3339), e.DecisionID, e.Recorded, e.Method, e.Path)
		}
	}
	return tw.Flush()
}
