package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"sigs.k8s.io/yaml"

	"github.com/meshguard/meshguard/controlplane/api"
	"github.com/meshguard/meshguard/controlplane/learn"
	"github.com/meshguard/meshguard/controlplane/quarantine"
	"github.com/meshguard/meshguard/policies"
)

// adminClient calls the control plane's admin API.
type adminClient struct {
	server   string
	serverID string
	by       string
	spiffe   spiffeFlags
}

func (c *adminClient) register(cmd *cobra.Command) {
	fl := cmd.PersistentFlags()
	fl.StringVar(&c.server, "server", "", "control plane admin URL (https://host:8443; http:// only with --insecure-plaintext)")
	fl.StringVar(&c.serverID, "server-id", "", "SPIFFE ID the control plane must present (default: any member of the trust domain)")
	fl.StringVar(&c.by, "by", "", "operator name recorded in the audit trail when the API is unauthenticated")
	_ = cmd.MarkPersistentFlagRequired("server")
	pf := cmd.PersistentFlags()
	pf.StringVar(&c.spiffe.socket, "spiffe-socket", "", "SPIFFE Workload API socket for the client SVID")
	pf.StringVar(&c.spiffe.certFile, "svid-cert", "", "client X509-SVID certificate chain (PEM)")
	pf.StringVar(&c.spiffe.keyFile, "svid-key", "", "client X509-SVID private key (PEM)")
	pf.StringVar(&c.spiffe.bundleFile, "trust-bundle", "", "trust bundle (PEM)")
	pf.StringVar(&c.spiffe.trustDomain, "trust-domain", "", "trust domain (default: the SVID's)")
	pf.BoolVar(&c.spiffe.insecure, "insecure-plaintext", false, "talk to a control plane running with --insecure-plaintext (LOCAL TESTING ONLY)")
}

func (c *adminClient) do(ctx context.Context, stderr io.Writer, method, path string, body, out any) error {
	u, err := url.Parse(c.server)
	if err != nil || u.Host == "" {
		return fmt.Errorf("--server %q is not a URL", c.server)
	}
	client := &http.Client{Timeout: 30 * time.Second}
	switch {
	case u.Scheme == "http":
		if !c.spiffe.insecure {
			return errors.New("--server is http://: add --insecure-plaintext (local testing only) or use https://")
		}
		warnInsecure(stderr, "this command talks to the control plane")
	case u.Scheme == "https":
		if c.spiffe.insecure {
			return errors.New("--insecure-plaintext with an https:// server")
		}
		svids, bundles, td, closeSrc, err := c.spiffe.sources(ctx)
		if err != nil {
			return err
		}
		defer closeSrc()
		auth := tlsconfig.AuthorizeMemberOf(td)
		if c.serverID != "" {
			id, err := spiffeid.FromString(c.serverID)
			if err != nil {
				return fmt.Errorf("--server-id: %w", err)
			}
			auth = tlsconfig.AuthorizeID(id)
		}
		tr := &http.Transport{TLSClientConfig: tlsconfig.MTLSClientConfig(svids, bundles, auth)}
		defer tr.CloseIdleConnections()
		client.Transport = tr
	default:
		return fmt.Errorf("--server %q: want https:// (or http:// with --insecure-plaintext)", c.server)
	}
	var rd io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimSuffix(c.server, "/")+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode >= 300 {
		var eb api.ErrorBody
		if json.Unmarshal(data, &eb) == nil && eb.Error != "" {
			return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, eb.Error)
		}
		return fmt.Errorf("%s %s: %s", method, path, resp.Status)
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("%s %s: decode response: %w", method, path, err)
		}
	}
	return nil
}

func newQuarantineCmd() *cobra.Command {
	c := &adminClient{}
	cmd := &cobra.Command{
		Use:   "quarantine",
		Short: "List, add and release mesh-wide quarantines of SPIFFE identities",
	}
	c.register(cmd)

	var asJSON bool
	list := &cobra.Command{
		Use:   "list",
		Short: "List quarantined identities",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var entries []quarantine.Entry
			if err := c.do(cmd.Context(), cmd.ErrOrStderr(), http.MethodGet, api.PathQuarantines, nil, &entries); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(entries)
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "IDENTITY\tEXPIRES\tBY\tREASON")
			for _, e := range entries {
				exp := "never"
				if !e.ExpiresAt.IsZero() {
					exp = e.ExpiresAt.Format(time.RFC3339)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", e.Identity, exp, e.By, e.Reason)
			}
			return tw.Flush()
		},
	}
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON")

	var reason string
	var dur time.Duration
	add := &cobra.Command{
		Use:   "add SPIFFE_ID",
		Short: "Quarantine an identity mesh-wide (every filter and authz server denies it)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := api.QuarantineRequest{Identity: args[0], Reason: reason, By: c.by}
			if dur > 0 {
				req.Duration = dur.String()
			}
			var e quarantine.Entry
			if err := c.do(cmd.Context(), cmd.ErrOrStderr(), http.MethodPost, api.PathQuarantines, req, &e); err != nil {
				return err
			}
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "quarantined %s until %s\n", e.Identity, e.ExpiresAt.Format(time.RFC3339))
			return err
		},
	}
	add.Flags().StringVar(&reason, "reason", "", "why (recorded in the audit trail; required)")
	add.Flags().DurationVar(&dur, "for", 0, "how long (default: the control plane's --quarantine-for)")
	_ = add.MarkFlagRequired("reason")

	var auditJSON bool
	audit := &cobra.Command{
		Use:   "audit",
		Short: "Show the latest quarantine changes (add, extend, release, expire) of every replica",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var records []quarantine.AuditRecord
			if err := c.do(cmd.Context(), cmd.ErrOrStderr(), http.MethodGet, api.PathAudit, nil, &records); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if auditJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(records)
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "TIME\tACTION\tIDENTITY\tBY\tREPLICA\tREASON")
			for _, r := range records {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.Time.Format(time.RFC3339), r.Action, r.Identity, r.By, r.Replica, r.Reason)
			}
			return tw.Flush()
		},
	}
	audit.Flags().BoolVar(&auditJSON, "json", false, "print JSON")

	var releaseReason string
	release := &cobra.Command{
		Use:   "release SPIFFE_ID",
		Short: "Lift the quarantine of an identity",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := api.ReleaseRequest{Identity: args[0], Reason: releaseReason, By: c.by}
			if err := c.do(cmd.Context(), cmd.ErrOrStderr(), http.MethodPost, api.PathRelease, req, nil); err != nil {
				return err
			}
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "released %s\n", args[0])
			return err
		},
	}
	release.Flags().StringVar(&releaseReason, "reason", "", "why (recorded in the audit trail)")

	cmd.AddCommand(list, add, release, audit)
	return cmd
}

func newBaselineCmd() *cobra.Command {
	c := &adminClient{}
	cmd := &cobra.Command{
		Use:   "baseline",
		Short: "Work with the traffic baseline the control plane learns from observed edges",
	}
	c.register(cmd)
	var (
		outDir string
		opts   learn.DraftOptions
	)
	export := &cobra.Command{
		Use:   "export",
		Short: "Write least-privilege Istio AuthorizationPolicies and a TrafficBaseline for review",
		Long: `export fetches the edges the control plane has observed and writes, into
--output, one Istio AuthorizationPolicy per destination service (ALLOW exactly
the principals seen calling it, with the methods seen) and one meshguard
TrafficBaseline (mode: shadow) listing the edges with their routes. Review
them before applying: anything that did not happen while learning is denied.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var edges []learn.Edge
			if err := c.do(cmd.Context(), cmd.ErrOrStderr(), http.MethodGet, api.PathEdges, nil, &edges); err != nil {
				return err
			}
			n, err := writeDraft(edges, opts, outDir)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "wrote %d file(s) to %s from %d edge(s)\n", n, outDir, len(edges))
			return err
		},
	}
	export.Flags().StringVarP(&outDir, "output", "o", "", "directory to write the YAML files to (created)")
	export.Flags().StringVar(&opts.DefaultNamespace, "default-namespace", "default", "namespace of destinations that do not name one")
	export.Flags().StringVar(&opts.BaselineNamespace, "baseline-namespace", policies.DefaultRootNamespace, "namespace of the TrafficBaseline")
	export.Flags().StringVar(&opts.SelectorLabel, "selector-label", "app", "label that selects a destination's workloads (label=<service>)")
	_ = export.MarkFlagRequired("output")
	cmd.AddCommand(export)
	return cmd
}

// writeDraft writes the draft as YAML files; it returns how many.
func writeDraft(edges []learn.Edge, opts learn.DraftOptions, dir string) (int, error) {
	d, err := learn.MakeDraft(edges, opts)
	if err != nil {
		return 0, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, err
	}
	n := 0
	write := func(name string, v any) error {
		data, err := yaml.Marshal(v)
		if err != nil {
			return err
		}
		header := "# Drafted by `meshguard baseline export` from observed traffic. Review before applying.\n"
		if err := os.WriteFile(filepath.Join(dir, name), append([]byte(header), data...), 0o644); err != nil {
			return err
		}
		n++
		return nil
	}
	for _, p := range d.AuthorizationPolicies {
		if err := write(fmt.Sprintf("authorizationpolicy-%s-%s.yaml", p.Metadata.Namespace, p.Metadata.Name), p); err != nil {
			return n, err
		}
	}
	if err := write("trafficbaseline.yaml", d.Baseline); err != nil {
		return n, err
	}
	return n, nil
}
