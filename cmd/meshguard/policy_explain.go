package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"

	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/policytest"
)

// requestFlags are the explain flags that build a request.
type requestFlags struct {
	file         string
	source       string
	forwarded    string
	mtls         string
	method       string
	host         string
	path         string
	headers      []string
	route        string
	targetNS     string
	targetID     string
	targetLabels []string
	targetSvc    string
	targetGW     string
	jwtSubject   string
	jwtIssuer    string
	jwtAudiences []string
	sourceIP     string
	remoteIP     string
}

func (f *requestFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&f.file, "request", "", "YAML or JSON file with the request (the request: part of a test case); flags override it")
	fl.StringVar(&f.source, "source", "", "the mTLS peer's SPIFFE ID (spiffe://trust-domain/path); empty: no peer")
	fl.StringVar(&f.forwarded, "forwarded-client", "", "SPIFFE ID of the client a trusted hop (--source) names in x-forwarded-client-cert")
	fl.StringVar(&f.mtls, "mtls", "", "true or false: whether the connection was mutual TLS (default: true when --source is set)")
	fl.StringVar(&f.method, "method", "", "HTTP method")
	fl.StringVar(&f.host, "host", "", "host (:authority)")
	fl.StringVar(&f.path, "path", "", "request path, query included")
	fl.StringArrayVar(&f.headers, "header", nil, "request header name=value (repeatable)")
	fl.StringVar(&f.route, "route", "", "Envoy route name")
	fl.StringVar(&f.targetNS, "target-ns", "", "namespace of the workload receiving the request")
	fl.StringVar(&f.targetID, "target-id", "", "SPIFFE ID of the workload receiving the request")
	fl.StringArrayVar(&f.targetLabels, "target-label", nil, "label key=value of the receiving workload (repeatable)")
	fl.StringVar(&f.targetSvc, "target-service", "", "Kubernetes Service the request addressed (for targetRefs)")
	fl.StringVar(&f.targetGW, "target-gateway", "", "Gateway name when the workload is a gateway (for targetRefs)")
	fl.StringVar(&f.jwtSubject, "jwt-subject", "", "subject (SPIFFE ID) of a validated JWT-SVID on the request")
	fl.StringVar(&f.jwtIssuer, "jwt-issuer", "", "issuer of the JWT-SVID")
	fl.StringArrayVar(&f.jwtAudiences, "jwt-audience", nil, "audience of the JWT-SVID (repeatable)")
	fl.StringVar(&f.sourceIP, "source-ip", "", "direct peer address (source.ip)")
	fl.StringVar(&f.remoteIP, "remote-ip", "", "original client address (remote.ip)")
	_ = cmd.MarkFlagFilename("request", "yaml", "yml", "json")
	_ = cmd.RegisterFlagCompletionFunc("mtls", cobra.FixedCompletions([]string{"true", "false"}, cobra.ShellCompDirectiveNoFileComp))
}

// request builds the case to explain: the --request file, then the flags
// that were set.
func (f *requestFlags) request(cmd *cobra.Command) (policytest.Case, error) {
	c := policytest.Case{Name: "explain"}
	if f.file != "" {
		data, err := os.ReadFile(f.file)
		if err != nil {
			return c, err
		}
		dec := yaml.NewDecoder(bytes.NewReader(data))
		dec.KnownFields(true)
		if err := dec.Decode(&c.Request); err != nil && err != io.EOF {
			return c, fmt.Errorf("--request %s: %w", f.file, err)
		}
	}
	r := &c.Request
	set := func(name string, dst *string, v string) {
		if cmd.Flags().Changed(name) {
			*dst = v
		}
	}
	set("source", &r.Source, f.source)
	set("forwarded-client", &r.ForwardedClient, f.forwarded)
	set("method", &r.Method, f.method)
	set("host", &r.Host, f.host)
	set("path", &r.Path, f.path)
	set("route", &r.Route, f.route)
	set("target-ns", &r.Target.Namespace, f.targetNS)
	set("target-id", &r.Target.ID, f.targetID)
	set("target-service", &r.Target.Service, f.targetSvc)
	set("target-gateway", &r.Target.Gateway, f.targetGW)
	set("source-ip", &r.SourceIP, f.sourceIP)
	set("remote-ip", &r.RemoteIP, f.remoteIP)
	if cmd.Flags().Changed("mtls") {
		switch f.mtls {
		case "true":
			r.MTLS = ptr(true)
		case "false":
			r.MTLS = ptr(false)
		default:
			return c, fmt.Errorf("--mtls %q: want true or false", f.mtls)
		}
	}
	for _, h := range f.headers {
		k, v, ok := strings.Cut(h, "=")
		if !ok || k == "" {
			return c, fmt.Errorf("--header %q: want name=value", h)
		}
		if r.Headers == nil {
			r.Headers = map[string]string{}
		}
		k = strings.ToLower(k)
		if prev, dup := r.Headers[k]; dup {
			v = prev + ", " + v // duplicated headers arrive comma-joined
		}
		r.Headers[k] = v
	}
	for _, l := range f.targetLabels {
		k, v, ok := strings.Cut(l, "=")
		if !ok || k == "" {
			return c, fmt.Errorf("--target-label %q: want key=value", l)
		}
		if r.Target.Labels == nil {
			r.Target.Labels = map[string]string{}
		}
		r.Target.Labels[k] = v
	}
	if cmd.Flags().Changed("jwt-subject") || cmd.Flags().Changed("jwt-issuer") || cmd.Flags().Changed("jwt-audience") {
		if r.JWT == nil {
			r.JWT = &policytest.JWT{}
		}
		set("jwt-subject", &r.JWT.Subject, f.jwtSubject)
		set("jwt-issuer", &r.JWT.Issuer, f.jwtIssuer)
		if len(f.jwtAudiences) > 0 {
			r.JWT.Audiences = f.jwtAudiences
		}
	}
	return c, nil
}

func ptr[T any](v T) *T { return &v }

type explainJSON struct {
	Decision decisionJSON       `json:"decision"`
	Request  policytest.Request `json:"request"`
	Trace    policies.Trace     `json:"trace"`
}

type decisionJSON struct {
	Allowed   bool     `json:"allowed"`
	Reason    string   `json:"reason"`
	Mode      string   `json:"mode,omitempty"`
	WouldDeny bool     `json:"wouldDeny,omitempty"`
	Policy    string   `json:"policy,omitempty"`
	Rule      string   `json:"rule,omitempty"`
	Location  string   `json:"location,omitempty"`
	Audit     bool     `json:"audit,omitempty"`
	AuditRef  *refJSON `json:"auditRef,omitempty"`
	Custom    string   `json:"custom,omitempty"`
	Version   string   `json:"version,omitempty"`
}

type refJSON struct {
	Policy string `json:"policy"`
	Rule   string `json:"rule,omitempty"`
}

func toDecisionJSON(d policies.Decision, locs map[string]policies.Location) decisionJSON {
	out := decisionJSON{
		Allowed: d.Allowed, Reason: string(d.Reason), Mode: string(d.Mode), WouldDeny: d.WouldDeny,
		Policy: d.Ref.Policy, Rule: d.Ref.Rule, Audit: d.Audit, Custom: d.Custom, Version: d.Version,
	}
	if l, ok := locs[d.Ref.Policy]; ok {
		out.Location = locString(l)
	}
	if !d.AuditRef.IsZero() {
		out.AuditRef = &refJSON{Policy: d.AuditRef.Policy, Rule: d.AuditRef.Rule}
	}
	return out
}

func locString(l policies.Location) string {
	if l.File == "" {
		return ""
	}
	return fmt.Sprintf("%s:%d", l.File, l.Line)
}

// objectLocations maps "Kind/namespace/name" to where each object was read.
func objectLocations(s *policies.Set) map[string]policies.Location {
	m := map[string]policies.Location{}
	add := func(kind string, meta policies.ObjectMeta, l policies.Location) {
		m[kind+"/"+meta.Namespace+"/"+meta.Name] = l
	}
	for _, p := range s.AuthorizationPolicies {
		add(policies.KindAuthorizationPolicy, p.Metadata, p.Loc)
	}
	for _, p := range s.IdentityPolicies {
		add(policies.KindIdentityPolicy, p.Metadata, p.Loc)
	}
	for _, p := range s.DefaultDenies {
		add(policies.KindDefaultDeny, p.Metadata, p.Loc)
	}
	for _, p := range s.RouteOverrides {
		add(policies.KindRouteOverride, p.Metadata, p.Loc)
	}
	for _, p := range s.Quarantines {
		add(policies.KindQuarantine, p.Metadata, p.Loc)
	}
	return m
}

func newPolicyExplainCmd() *cobra.Command {
	var format string
	var rf requestFlags
	cmd := &cobra.Command{
		Use:   "explain PATH... (--request FILE | --source ID --method M --path P ...)",
		Short: "Decide one request against the policies and explain why",
		Long: `Compile the policies, decide one request exactly as the authz server and the
wasm filter would, and print the decision (allow or deny, reason code, mode),
the policy and rule that decided it (with its file and line), and every rule
that was considered with why it did or did not match.

The request comes from --request (YAML or JSON, the request: part of a
policy test case) and/or from flags; flags override the file.`,
		Example: `  meshguard policy explain examples/policies \
      --source spiffe://cluster.local/ns/bookstore/sa/frontend \
      --method GET --host catalog.bookstore.svc --path /api/books \
      --target-ns bookstore --target-label app=catalog
  meshguard policy explain examples/policies --request req.yaml --format json`,
		Args:              cobra.MinimumNArgs(1),
		ValidArgsFunction: policyFiles,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkFormat(format); err != nil {
				return err
			}
			c, err := rf.request(cmd)
			if err != nil {
				return err
			}
			attrs, err := c.Attributes()
			if err != nil {
				return fmt.Errorf("request: %w", err)
			}
			set, err := loadValid(cmd, args)
			if err != nil {
				return err
			}
			_, snap, err := compile("", set)
			if err != nil {
				return err
			}
			d, trace := snap.Explain(attrs)
			locs := objectLocations(&set)
			if format == formatJSON {
				return writeJSON(cmd.OutOrStdout(), explainJSON{Decision: toDecisionJSON(d, locs), Request: c.Request, Trace: trace})
			}
			printExplain(cmd.OutOrStdout(), d, trace, locs)
			return nil
		},
	}
	addFormatFlag(cmd, &format)
	rf.register(cmd)
	return cmd
}

func printExplain(w io.Writer, d policies.Decision, tr policies.Trace, locs map[string]policies.Location) {
	switch {
	case d.WouldDeny:
		fmt.Fprintf(w, "decision: ALLOW (dry-run; enforced, it would be denied: %s)\n", d.Reason)
	case d.Allowed:
		fmt.Fprintf(w, "decision: ALLOW (%s)\n", d.Reason)
	default:
		fmt.Fprintf(w, "decision: DENY (%s)\n", d.Reason)
	}
	if why := reasonText(d.Reason); why != "" {
		fmt.Fprintf(w, "why:      %s\n", why)
	}
	fmt.Fprintf(w, "mode:     %s\n", d.Mode)
	if !d.Ref.IsZero() {
		ref := d.Ref.Policy
		if d.Ref.Rule != "" {
			ref += " rule " + d.Ref.Rule
		}
		if l := locString(locs[d.Ref.Policy]); l != "" {
			ref += " (" + l + ")"
		}
		fmt.Fprintf(w, "policy:   %s\n", ref)
	} else {
		fmt.Fprintf(w, "policy:   none\n")
	}
	if d.Audit {
		fmt.Fprintf(w, "audit:    %s rule %s\n", d.AuditRef.Policy, d.AuditRef.Rule)
	}
	if d.Custom != "" {
		fmt.Fprintf(w, "custom:   the request must also be allowed by provider %q\n", d.Custom)
	}
	fmt.Fprintf(w, "version:  %s\n", d.Version)
	if len(tr.Scopes) > 0 {
		fmt.Fprintf(w, "\nscopes that apply to the target:\n")
		for _, s := range tr.Scopes {
			fmt.Fprintf(w, "  %s\n", s)
		}
	}
	if len(tr.Notes) > 0 {
		fmt.Fprintf(w, "\nnotes:\n")
		for _, n := range tr.Notes {
			fmt.Fprintf(w, "  %s\n", n)
		}
	}
	if len(tr.Steps) > 0 {
		fmt.Fprintf(w, "\nrules considered, in evaluation order:\n")
		for _, s := range tr.Steps {
			mark := "no match"
			if s.Matched {
				mark = "MATCH   "
			}
			line := fmt.Sprintf("  %s %-6s %s rule %s [%s]", mark, s.Action, s.Policy, s.Rule, s.Mode)
			if s.Why != "" {
				line += ": " + s.Why
			}
			fmt.Fprintln(w, line)
			for _, f := range s.Failed {
				fmt.Fprintf(w, "      %s\n", f)
			}
		}
	}
}

// reasonText says in words what a reason code means.
func reasonText(r policies.Reason) string {
	switch r {
	case policies.ReasonAllowedNoPolicy:
		return "no ALLOW policy and no DefaultDeny applies to the target, so the request is allowed"
	case policies.ReasonAllowedByPolicy:
		return "an ALLOW rule matched and no DENY rule did"
	case policies.ReasonAllowedModeOff:
		return "enforcement is off for the route"
	case policies.ReasonDeniedByPolicy:
		return "a DENY rule matched"
	case policies.ReasonDeniedNoMatch:
		return "ALLOW policies apply to the target and none of their rules matched"
	case policies.ReasonDeniedDefault:
		return "a DefaultDeny applies to the target and no ALLOW rule matched"
	case policies.ReasonDeniedUnsafePath:
		return "the path may be read differently by the backend (escaped slash or backslash, ';' parameters, control bytes, no leading '/')"
	case policies.ReasonDeniedInvalidReq:
		return "the request has no method or no path"
	case policies.ReasonDeniedQuarantine:
		return "the caller is quarantined"
	}
	return ""
}
