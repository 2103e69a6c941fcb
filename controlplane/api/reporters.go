package api

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/wire"
)

// Reporters says which identities are meshguard data-plane components,
// which may post events, and what each may report: the traffic it saw.
//
// A data-plane component is either a workload of the mesh description
// (the control plane configures its Envoy and its filter; it reports with
// the workload's SVID) or an identity matching a configured pattern (Istio
// sidecars, whose workloads the control plane does not list). Anything
// else is refused. Every event must be about traffic the reporter saw: its
// own outbound calls (the event's source is the reporter) or calls into
// it: a destination-less anomaly (the inbound filter does not name its own
// workload), or a destination that is the reporter's service. For a mesh
// workload that is its service, under any of its DNS names; for a
// pattern-matched identity of the form /ns/<namespace>/sa/<name>, any
// service of its namespace (a bare "svc" is taken as one); a
// pattern-matched identity without a namespace may report only
// destination-less anomalies and its own calls.
type Reporters struct {
	workloads map[spiffeid.ID]ReportingWorkload
	patterns  []policies.IDPattern
}

// ReportingWorkload is a workload of the mesh description.
type ReportingWorkload struct {
	ID        spiffeid.ID
	Namespace string
	Service   string
}

// NewReporters checks the workloads and parses the patterns (SPIFFE ID
// patterns as meshguard's kinds write them: exact, "spiffe://td", or
// segment globs "*" and a final "**"). Every problem is reported.
func NewReporters(workloads []ReportingWorkload, patterns []string) (*Reporters, error) {
	r := &Reporters{workloads: map[spiffeid.ID]ReportingWorkload{}}
	var errs []error
	for _, w := range workloads {
		if w.ID.IsZero() || w.Service == "" || w.Namespace == "" {
			errs = append(errs, fmt.Errorf("reporting workload %+v: an ID, a service and a namespace are required", w))
			continue
		}
		r.workloads[w.ID] = w
	}
	for _, p := range patterns {
		pat, err := policies.ParseIDPattern(p)
		if err != nil {
			errs = append(errs, fmt.Errorf("reporter pattern: %w", err))
			continue
		}
		r.patterns = append(r.patterns, pat)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return r, nil
}

// Empty reports whether no identity may report.
func (r *Reporters) Empty() bool { return r == nil || (len(r.workloads) == 0 && len(r.patterns) == 0) }

// scope is what one reporter may report about.
type scope struct {
	id       string
	workload *ReportingWorkload // a mesh workload: exactly its service
	ns       string             // a pattern-matched identity's namespace
}

// scopeOf returns the reporter's scope; false when it is not a data-plane
// component.
func (r *Reporters) scopeOf(id spiffeid.ID) (scope, bool) {
	if r == nil {
		return scope{}, false
	}
	if w, ok := r.workloads[id]; ok {
		return scope{id: id.String(), workload: &w}, true
	}
	for i := range r.patterns {
		if r.patterns[i].Match(id) {
			return scope{id: id.String(), ns: namespaceOfID(id)}, true
		}
	}
	return scope{}, false
}

// allows reports whether the reporter saw the traffic ev is about.
func (s scope) allows(ev *wire.Event) bool {
	if ev.Source == s.id || ev.Destination == "" {
		return true
	}
	svc, ns, ok := splitDestination(ev.Destination)
	if !ok {
		return false
	}
	if s.workload != nil {
		return svc == s.workload.Service && (ns == "" || ns == s.workload.Namespace)
	}
	if ns == "" {
		ns = s.ns
	}
	return s.ns != "" && ns == s.ns
}

// namespaceOfID reads <ns> from a /ns/<ns>/sa/<name> SPIFFE ID.
func namespaceOfID(id spiffeid.ID) string {
	segs := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	if len(segs) == 4 && segs[0] == "ns" && segs[2] == "sa" {
		return segs[1]
	}
	return ""
}

// splitDestination reads a destination as Kubernetes DNS names are written:
// "svc", "svc.ns", "svc.ns.svc[.<cluster domain>]", each with an optional
// ":port". An IP address or any other form is not attributed to a
// namespace (false).
func splitDestination(d string) (svc, ns string, ok bool) {
	if i := strings.LastIndexByte(d, ':'); i >= 0 {
		d = d[:i]
	}
	parts := strings.Split(d, ".")
	for _, p := range parts {
		if p == "" {
			return "", "", false
		}
	}
	switch {
	case len(parts) == 1:
		return parts[0], "", !isNumeric(parts[0])
	case len(parts) == 2:
		return parts[0], parts[1], !isNumeric(parts[1])
	case parts[2] == "svc":
		return parts[0], parts[1], true
	}
	return "", "", false
}

func isNumeric(s string) bool {
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}
