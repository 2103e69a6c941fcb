// Package policytest runs data-driven policy tests: YAML files of cases, each
// a request and the decision expected for it, in the manner of `opa test`.
// `meshguard policy test` and the engine's own tests both use it.
//
// A test file holds a list of cases (several lists may be given as YAML
// documents separated by "---"):
//
//	# cases.yaml
//	- name: web may read the catalog
//	  request:
//	    source: spiffe://prod.example/ns/shop/sa/web
//	    method: GET
//	    host: catalog.shop.svc
//	    path: /v1/books?page=2
//	    target: {namespace: shop, labels: {app: catalog}}
//	  expect:
//	    allowed: true
//	    reason: allowed_by_policy
//	    policy: AuthorizationPolicy/shop/catalog-read
//	    rule: "0"
//
// Decoding is strict: unknown fields, malformed SPIFFE IDs and IP addresses
// are errors, never silently ignored.
package policytest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.yaml.in/yaml/v3"

	"github.com/meshguard/meshguard/policies"
)

// maxFileSize bounds a test file.
const maxFileSize = 4 << 20

// Case is one test case.
type Case struct {
	Name    string  `yaml:"name" json:"name"`
	Request Request `yaml:"request" json:"request"`
	Expect  Expect  `yaml:"expect" json:"expect"`
	// File and Line locate the case (not read from YAML).
	File string `yaml:"-" json:"file,omitempty"`
	Line int    `yaml:"-" json:"line,omitempty"`
}

// Request is the request of a case, as strings; Attributes parses it.
type Request struct {
	// Source is the SPIFFE ID of the mTLS peer (Istio's source.principal);
	// empty: a plaintext caller, or one whose certificate has no SPIFFE ID.
	Source string `yaml:"source,omitempty" json:"source,omitempty"`
	// MTLS defaults to true when Source is set and to false otherwise; it
	// cannot be false with a Source (only mTLS authenticates a peer).
	MTLS *bool `yaml:"mtls,omitempty" json:"mtls,omitempty"`
	// ForwardedClient is the SPIFFE ID a trusted hop named in
	// x-forwarded-client-cert (the peer, Source, is then the hop).
	ForwardedClient string            `yaml:"forwardedClient,omitempty" json:"forwardedClient,omitempty"`
	Method          string            `yaml:"method,omitempty" json:"method,omitempty"`
	Host            string            `yaml:"host,omitempty" json:"host,omitempty"`
	Path            string            `yaml:"path,omitempty" json:"path,omitempty"`
	Headers         map[string]string `yaml:"headers,omitempty" json:"headers,omitempty"`
	Route           string            `yaml:"route,omitempty" json:"route,omitempty"`
	Target          Target            `yaml:"target,omitempty" json:"target,omitempty"`
	JWT             *JWT              `yaml:"jwt,omitempty" json:"jwt,omitempty"`
	// JWTSVID is a JWT-SVID the request carries besides an end-user token
	// (JWT, which is then the request principal).
	JWTSVID         *JWT   `yaml:"jwtSvid,omitempty" json:"jwtSvid,omitempty"`
	SourceIP        string `yaml:"sourceIp,omitempty" json:"sourceIp,omitempty"`
	RemoteIP        string `yaml:"remoteIp,omitempty" json:"remoteIp,omitempty"`
	DestinationIP   string `yaml:"destinationIp,omitempty" json:"destinationIp,omitempty"`
	DestinationPort uint32 `yaml:"destinationPort,omitempty" json:"destinationPort,omitempty"`
	SNI             string `yaml:"sni,omitempty" json:"sni,omitempty"`
}

// Target is the workload the request is for. Its labels, service and
// gateway are all it has (policies.Target.Resolved), unless Unresolved says
// that the enforcement point does not know them.
type Target struct {
	Namespace  string            `yaml:"namespace,omitempty" json:"namespace,omitempty"`
	ID         string            `yaml:"id,omitempty" json:"id,omitempty"` // SPIFFE ID
	Labels     map[string]string `yaml:"labels,omitempty" json:"labels,omitempty"`
	Service    string            `yaml:"service,omitempty" json:"service,omitempty"`
	Gateway    string            `yaml:"gateway,omitempty" json:"gateway,omitempty"`
	Unresolved bool              `yaml:"unresolved,omitempty" json:"unresolved,omitempty"`
}

// JWT is a validated token. Principal defaults to "issuer/subject" (the
// subject alone without an issuer), as Istio's request principal. The token
// is a JWT-SVID when SVID is true, which it is by default when the subject
// is a SPIFFE ID.
type JWT struct {
	Subject   string         `yaml:"subject,omitempty" json:"subject,omitempty"`
	SVID      *bool          `yaml:"svid,omitempty" json:"svid,omitempty"`
	Issuer    string         `yaml:"issuer,omitempty" json:"issuer,omitempty"`
	Principal string         `yaml:"principal,omitempty" json:"principal,omitempty"`
	Audiences []string       `yaml:"audiences,omitempty" json:"audiences,omitempty"`
	Presenter string         `yaml:"presenter,omitempty" json:"presenter,omitempty"`
	Claims    map[string]any `yaml:"claims,omitempty" json:"claims,omitempty"`
}

// Expect is what the decision must be. Unset fields are not checked.
type Expect struct {
	Allowed   *bool  `yaml:"allowed,omitempty" json:"allowed,omitempty"`
	Reason    string `yaml:"reason,omitempty" json:"reason,omitempty"`
	Policy    string `yaml:"policy,omitempty" json:"policy,omitempty"` // Kind/namespace/name; "-" for none
	Rule      string `yaml:"rule,omitempty" json:"rule,omitempty"`     // index or rule name
	Mode      string `yaml:"mode,omitempty" json:"mode,omitempty"`     // enforce, dry-run, off
	WouldDeny *bool  `yaml:"wouldDeny,omitempty" json:"wouldDeny,omitempty"`
	Audit     *bool  `yaml:"audit,omitempty" json:"audit,omitempty"`
	Custom    string `yaml:"custom,omitempty" json:"custom,omitempty"` // CUSTOM provider; "-" for none
}

// Load reads the cases of a test file, or of every *.yaml and *.yml file in
// a directory (recursively, in lexical order).
func Load(path string) ([]Case, error) {
	info, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("policytest: %w", err)
	}
	if !info.IsDir() {
		return loadFile(os.DirFS(filepath.Dir(path)), filepath.Base(path), path)
	}
	return loadTree(os.DirFS(path), ".", func(name string) string { return filepath.Join(path, filepath.FromSlash(name)) })
}

// LoadFS is Load over a file system.
func LoadFS(fsys fs.FS, path string) ([]Case, error) {
	info, err := fs.Stat(fsys, path)
	if err != nil {
		return nil, fmt.Errorf("policytest: %w", err)
	}
	if !info.IsDir() {
		return loadFile(fsys, path, path)
	}
	return loadTree(fsys, path, func(name string) string { return name })
}

func loadTree(fsys fs.FS, root string, display func(string) string) ([]Case, error) {
	var names []string
	err := fs.WalkDir(fsys, root, func(name string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if name != root && strings.HasPrefix(d.Name(), ".") {
				return fs.SkipDir
			}
			return nil
		}
		if ext := strings.ToLower(filepath.Ext(name)); ext == ".yaml" || ext == ".yml" {
			names = append(names, name)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("policytest: %w", err)
	}
	sort.Strings(names)
	var all []Case
	for _, n := range names {
		cases, err := loadFile(fsys, n, display(n))
		if err != nil {
			return nil, err
		}
		all = append(all, cases...)
	}
	return all, nil
}

func loadFile(fsys fs.FS, name, display string) ([]Case, error) {
	f, err := fsys.Open(name)
	if err != nil {
		return nil, fmt.Errorf("policytest: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("policytest: read %s: %w", display, err)
	}
	if len(data) > maxFileSize {
		return nil, fmt.Errorf("policytest: %s: larger than %d bytes", display, maxFileSize)
	}
	return Parse(display, data)
}

// Parse reads the cases of one YAML stream; name is used in errors. Every
// case is decoded strictly and its request checked with Attributes, so that
// a malformed case fails the load rather than the run.
func Parse(name string, data []byte) ([]Case, error) {
	// Two passes over the same bytes: nodes for line numbers, a strict
	// decoder (unknown fields are errors) for the values.
	var nodes []*yaml.Node
	nd := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var doc yaml.Node
		if err := nd.Decode(&doc); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return nil, fmt.Errorf("policytest: %s: %w", name, err)
		}
		if len(doc.Content) == 0 {
			continue
		}
		root := doc.Content[0]
		if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
			continue
		}
		if root.Kind != yaml.SequenceNode {
			return nil, fmt.Errorf("policytest: %s:%d: a test file is a list of cases", name, root.Line)
		}
		nodes = append(nodes, root.Content...)
	}
	var cases []Case
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	for {
		var list []Case
		if err := dec.Decode(&list); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return nil, fmt.Errorf("policytest: %s: %w", name, err)
		}
		cases = append(cases, list...)
	}
	if len(cases) != len(nodes) {
		return nil, fmt.Errorf("policytest: %s: %d cases decoded from %d list items", name, len(cases), len(nodes))
	}
	var errs []error
	names := map[string]int{}
	for i := range cases {
		c := &cases[i]
		c.File, c.Line = name, nodes[i].Line
		if c.Name == "" {
			errs = append(errs, fmt.Errorf("%s:%d: case has no name", name, c.Line))
		} else if prev, dup := names[c.Name]; dup {
			errs = append(errs, fmt.Errorf("%s:%d: case %q is also at line %d", name, c.Line, c.Name, prev))
		} else {
			names[c.Name] = c.Line
		}
		if _, err := c.Attributes(); err != nil {
			errs = append(errs, fmt.Errorf("%s:%d: case %q: %w", name, c.Line, c.Name, err))
		}
		if err := c.Expect.check(); err != nil {
			errs = append(errs, fmt.Errorf("%s:%d: case %q: %w", name, c.Line, c.Name, err))
		}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("policytest: %w", errors.Join(errs...))
	}
	return cases, nil
}

func (e *Expect) check() error {
	if e.Allowed == nil && e.Reason == "" && e.Policy == "" && e.Rule == "" && e.Mode == "" &&
		e.WouldDeny == nil && e.Audit == nil && e.Custom == "" {
		return errors.New("expect is empty: the case would check nothing")
	}
	switch policies.Mode(e.Mode) {
	case "", policies.ModeEnforce, policies.ModeDryRun, policies.ModeOff:
	default:
		return fmt.Errorf("expect.mode %q: want enforce, dry-run or off", e.Mode)
	}
	return nil
}

// Attributes turns the case's request into engine attributes. SPIFFE IDs
// and IP addresses must parse.
func (c Case) Attributes() (*policies.Attributes, error) {
	r := &c.Request
	a := &policies.Attributes{
		Method:          r.Method,
		Host:            r.Host,
		Path:            r.Path,
		Route:           r.Route,
		DestinationPort: r.DestinationPort,
		SNI:             r.SNI,
	}
	var err error
	if r.Source != "" {
		if a.Peer, err = workloadID(r.Source); err != nil {
			return nil, fmt.Errorf("request.source %q: %w", r.Source, err)
		}
		a.MTLS = true
	}
	if r.MTLS != nil {
		if !*r.MTLS && r.Source != "" {
			return nil, errors.New("request.source is the mTLS peer: it cannot be given with mtls: false (a JWT-SVID's subject is jwt.subject)")
		}
		a.MTLS = *r.MTLS
	}
	if r.ForwardedClient != "" {
		if r.Source == "" {
			return nil, errors.New("request.forwardedClient needs the trusted hop that forwarded it as request.source")
		}
		if a.ForwardedClient, err = workloadID(r.ForwardedClient); err != nil {
			return nil, fmt.Errorf("request.forwardedClient %q: %w", r.ForwardedClient, err)
		}
	}
	for field, p := range map[string]struct {
		s   string
		dst *netip.Addr
	}{
		"sourceIp": {r.SourceIP, &a.SourceIP}, "remoteIp": {r.RemoteIP, &a.RemoteIP}, "destinationIp": {r.DestinationIP, &a.DestinationIP},
	} {
		if p.s == "" {
			continue
		}
		if *p.dst, err = netip.ParseAddr(p.s); err != nil {
			return nil, fmt.Errorf("request.%s: %w", field, err)
		}
	}
	if r.Headers != nil {
		h := make(policies.MapHeaders, len(r.Headers))
		for k, v := range r.Headers {
			lk := strings.ToLower(k)
			if _, dup := h[lk]; dup {
				return nil, fmt.Errorf("request.headers: %q given twice (header names are case-insensitive; join duplicated headers with \",\" as Envoy does)", lk)
			}
			h[lk] = v
		}
		a.Headers = h
	}
	t := &r.Target
	a.Target = policies.Target{Namespace: t.Namespace, Labels: t.Labels, Service: t.Service, Gateway: t.Gateway,
		Resolved: !t.Unresolved}
	if t.ID != "" {
		if a.Target.ID, err = spiffeid.FromString(t.ID); err != nil {
			return nil, fmt.Errorf("request.target.id %q: %w", t.ID, err)
		}
	}
	if r.JWT != nil {
		if a.JWT, err = r.JWT.token("request.jwt", false); err != nil {
			return nil, err
		}
	}
	if r.JWTSVID != nil {
		if r.JWT == nil {
			return nil, errors.New("request.jwtSvid is a JWT-SVID besides an end-user token: give that as request.jwt (a JWT-SVID alone is request.jwt)")
		}
		if a.JWTSVID, err = r.JWTSVID.token("request.jwtSvid", true); err != nil {
			return nil, err
		}
	}
	return a, nil
}

// token is the validated token j describes; svid forces a JWT-SVID.
func (j *JWT) token(field string, svid bool) (*policies.JWT, error) {
	if j.Subject == "" && j.Issuer == "" {
		return nil, fmt.Errorf("%s needs a subject or an issuer", field)
	}
	if !svid {
		svid = strings.HasPrefix(j.Subject, "spiffe://")
		if j.SVID != nil {
			svid = *j.SVID
		}
	} else if j.SVID != nil && !*j.SVID {
		return nil, fmt.Errorf("%s is a JWT-SVID: svid cannot be false", field)
	}
	var sub spiffeid.ID
	if svid {
		var err error
		if sub, err = workloadID(j.Subject); err != nil {
			return nil, fmt.Errorf("%s.subject %q: a JWT-SVID's subject: %w", field, j.Subject, err)
		}
	}
	claims, err := jsonClaims(j.Claims)
	if err != nil {
		return nil, fmt.Errorf("%s.claims: %w", field, err)
	}
	principal := j.Principal
	if principal == "" {
		principal = j.Subject
		if j.Issuer != "" {
			principal = j.Issuer + "/" + j.Subject
		}
	}
	return &policies.JWT{
		Subject: j.Subject, SVID: sub, Issuer: j.Issuer, Principal: principal,
		Audiences: j.Audiences, Presenter: j.Presenter, Claims: claims,
	}, nil
}

// workloadID parses a workload's SPIFFE ID: a trust domain's own ID (no
// path) names no workload.
func workloadID(s string) (spiffeid.ID, error) {
	id, err := spiffeid.FromString(s)
	if err != nil {
		return spiffeid.ID{}, err
	}
	if id.Path() == "" {
		return spiffeid.ID{}, errors.New("a SPIFFE ID without a path names a trust domain, not a workload")
	}
	return id, nil
}

// jsonClaims gives claims the types a JSON decoder would (float64 numbers,
// []any, map[string]any), which is what enforcement points pass the engine.
func jsonClaims(c map[string]any) (map[string]any, error) {
	if c == nil {
		return nil, nil
	}
	data, err := json.Marshal(c)
	if err != nil {
		return nil, err
	}
	var out map[string]any
	if err := json.Unmarshal(data, &out); err != nil {
		return nil, err
	}
	return out, nil
}

// Decider is what Run needs of a snapshot.
type Decider interface {
	Decide(*policies.Attributes) policies.Decision
}

// Result is the outcome of one case.
type Result struct {
	Case     Case              `json:"case"`
	Decision policies.Decision `json:"decision"`
	// Diffs lists every expectation that did not hold, "field: got X, want Y".
	Diffs []string `json:"diffs,omitempty"`
	// Err is set when the case could not be run (its request is malformed).
	Err error `json:"-"`
}

// Passed reports whether the case ran and every expectation held.
func (r *Result) Passed() bool { return r.Err == nil && len(r.Diffs) == 0 }

// Run decides every case and compares the decision with its expectations.
func Run(d Decider, cases []Case) []Result {
	out := make([]Result, len(cases))
	for i := range cases {
		out[i] = runCase(d, cases[i])
	}
	return out
}

func runCase(d Decider, c Case) Result {
	r := Result{Case: c}
	a, err := c.Attributes()
	if err != nil {
		r.Err = err
		return r
	}
	r.Decision = d.Decide(a)
	r.Diffs = Compare(c.Expect, r.Decision)
	return r
}

// Compare lists how a decision differs from an expectation.
func Compare(e Expect, d policies.Decision) []string {
	var diffs []string
	diffBool := func(field string, want *bool, got bool) {
		if want != nil && *want != got {
			diffs = append(diffs, fmt.Sprintf("%s: got %t, want %t", field, got, *want))
		}
	}
	diffStr := func(field, want, got string) {
		if want == "" {
			return
		}
		if want == "-" {
			want = ""
		}
		if want != got {
			diffs = append(diffs, fmt.Sprintf("%s: got %q, want %q", field, got, want))
		}
	}
	diffBool("allowed", e.Allowed, d.Allowed)
	diffStr("reason", e.Reason, string(d.Reason))
	diffStr("policy", e.Policy, d.Ref.Policy)
	diffStr("rule", e.Rule, d.Ref.Rule)
	diffStr("mode", e.Mode, string(d.Mode))
	diffBool("wouldDeny", e.WouldDeny, d.WouldDeny)
	diffBool("audit", e.Audit, d.Audit)
	diffStr("custom", e.Custom, d.Custom)
	return diffs
}
