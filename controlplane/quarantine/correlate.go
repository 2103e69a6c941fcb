package quarantine

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshguard/meshguard/controlplane/state"
	"github.com/meshguard/meshguard/policies"
)

// ByCorrelation is who adds a quarantine that reports put together called
// for, in its history and the audit trail.
const ByCorrelation = "meshguard/correlation"

// Findings of the correlation, in metrics and logs.
const (
	FindingFanOut    = "fan_out"
	FindingThreshold = "threshold"
)

// correlation is what the source's anomaly profile says about putting its
// reports together; enabled false when it says nothing.
type correlation struct {
	enabled         bool
	profile         string
	window          time.Duration
	maxDestinations int
	response        string
	quarantineFor   time.Duration
}

// correlationFor returns the correlation settings of the first profile (by
// namespace, name) watching id, as the filters pick a caller's profile.
func correlationFor(profiles []policies.AnomalyProfile, id spiffeid.ID) correlation {
	ps := slices.Clone(profiles)
	sort.SliceStable(ps, func(i, j int) bool {
		if ps[i].Metadata.Namespace != ps[j].Metadata.Namespace {
			return ps[i].Metadata.Namespace < ps[j].Metadata.Namespace
		}
		return ps[i].Metadata.Name < ps[j].Metadata.Name
	})
	for i := range ps {
		p := &ps[i]
		if !watches(p, id) {
			continue
		}
		var c correlation
		c.profile = p.Metadata.Name
		if p.Spec.QuarantineFor != "" {
			c.quarantineFor, _ = time.ParseDuration(p.Spec.QuarantineFor) // validated by policies
		}
		if p.Spec.Correlation != nil {
			c.enabled = true
			c.window, c.maxDestinations, c.response = p.Spec.Correlation.Settings()
		}
		return c
	}
	return correlation{}
}

// watches reports whether profile p watches caller id (no workloads: all).
func watches(p *policies.AnomalyProfile, id spiffeid.ID) bool {
	if len(p.Spec.Workloads) == 0 {
		return true
	}
	for _, w := range p.Spec.Workloads {
		if pat, err := policies.ParseIDPattern(w); err == nil && pat.Match(id) {
			return true
		}
	}
	return false
}

// observe stores reports about id that no single one of which calls for a
// quarantine, on id's record in the state store (which every replica
// shares), and decides in the same write whether what the record now holds
// adds up to a quarantine:
//
//   - a fan-out: more distinct destinations than the source's profile's
//     correlation.maxDestinations reported it within correlation.window
//     (the inbound sides of the destinations it called and its own
//     outbound side, whichever replica they reached); the profile's
//     correlation.response says what to do (quarantine or log);
//   - the threshold: Options.Threshold.Events block reports within
//     Options.Threshold.Window.
//
// A report already stored (the same report sent again, or to another
// replica) or acted on counts once. Because the decision and the add are
// one resourceVersion-guarded write of the record, two replicas that each
// receive the report that completes a finding quarantine once. When the
// store does not take the write, this replica decides on its own view and,
// on a finding, enforces the quarantine as pending (fail closed).
func (m *Manager) observe(ctx context.Context, id spiffeid.ID, obs []state.Evidence, profiles []policies.AnomalyProfile) {
	if m.protected(id) {
		return
	}
	corr := correlationFor(profiles, id)
	thr := m.opts.Threshold
	counts := corr.enabled
	for _, e := range obs {
		counts = counts || (thr.Events > 0 && e.Response == ResponseBlock)
	}
	if !counts {
		return
	}
	identity := id.String()
	now := m.opts.Now().UTC()
	var out outcome
	ctx, cancel := context.WithTimeout(ctx, m.opts.WriteTimeout)
	defer cancel()
	q, err := m.store.UpdateQuarantine(ctx, identity, func(cur *state.Quarantine) (*state.Quarantine, error) {
		next, o, err := m.correlate(cur, identity, now, obs, corr)
		out = o
		return next, err
	})
	switch {
	case err == nil:
	case errors.Is(err, ErrLimit), errors.Is(err, ErrInvalid):
		m.log.Error("correlated quarantine refused", "identity", identity, "error", err)
		return
	default:
		m.storeFailures.WithLabelValues("observe").Inc()
		m.log.Error("reports about an identity not stored; correlated on this replica's view only", "identity", identity, "error", err)
		var cur *state.Quarantine
		for _, r := range m.store.Quarantines() {
			if r.Identity == identity {
				cur = r.Clone()
			}
		}
		if _, o, cerr := m.correlate(cur, identity, now, obs, corr); cerr == nil && o.finding != nil {
			m.findings.WithLabelValues(o.kind, o.response).Inc()
			m.addPending(*o.finding)
			m.log.Error("correlated quarantine enforced by this replica but not stored; retrying every sweep", "identity", identity, "reason", o.finding.Reason)
		}
		return
	}
	if out.kind == "" {
		return
	}
	m.findings.WithLabelValues(out.kind, out.response).Inc()
	if out.finding == nil {
		m.log.Warn("correlated finding", "identity", identity, "finding", out.kind, "response", out.response, "reason", out.reason)
		return
	}
	m.dropPending(identity)
	m.done(q, state.ActionAdd)
}

// outcome is what one correlation decided.
type outcome struct {
	kind     string // FindingFanOut, FindingThreshold, or "" for none
	response string
	reason   string
	finding  *Finding // a quarantine, added in the same write
}

// correlate is the observation as an update of the current record (nil:
// none): the reports are stored, old ones dropped, and the record is
// turned into an active quarantine when they add up to one. It runs again
// on the newer record when another replica changed it first, so it has no
// side effect.
func (m *Manager) correlate(cur *state.Quarantine, identity string, now time.Time, obs []state.Evidence, corr correlation) (*state.Quarantine, outcome, error) {
	var out outcome
	if cur.ActiveAt(now) {
		return nil, out, state.ErrUnchanged // quarantined already
	}
	keep := max(corr.window, m.opts.Threshold.Window)
	next := cur
	if next == nil {
		next = &state.Quarantine{Identity: identity, Phase: state.PhaseObserved, By: ByCorrelation, CreatedAt: now}
	}
	var before []state.Evidence
	for _, e := range next.Observations {
		if now.Sub(e.Received) <= keep {
			before = append(before, e)
		}
	}
	fresh := 0
	all := before
	for _, e := range obs {
		if next.HasEvidence(e.Key) || slices.ContainsFunc(all, func(o state.Evidence) bool { return o.Key == e.Key }) {
			continue // acted on, or stored already (by this replica or another)
		}
		if next.Ended != nil && e.Received.Before(next.Ended.At) {
			continue // received before the release: the release stands
		}
		all = append(all, e)
		fresh++
	}
	if fresh == 0 {
		return nil, out, state.ErrUnchanged
	}
	if n := len(all) - state.MaxObservations; n > 0 {
		all = all[n:]
	}

	// A fan-out: distinct destinations within the window, before and after.
	if corr.enabled {
		was := destinations(before, now, corr.window)
		is := destinations(all, now, corr.window)
		if len(is) > corr.maxDestinations && len(was) <= corr.maxDestinations {
			out.kind, out.response = FindingFanOut, corr.response
			out.reason = fmt.Sprintf("fan-out over %d destinations within %s (more than %d): %s",
				len(is), corr.window, corr.maxDestinations, strings.Join(is, ", "))
			if corr.response == ResponseQuarantine {
				out.finding = &Finding{Reason: out.reason, Detector: "correlation", Evidence: within(all, now, corr.window)}
			}
		}
	}
	// The threshold of block reports.
	if thr := m.opts.Threshold; out.finding == nil && thr.Events > 0 {
		var blocks []state.Evidence
		for _, e := range all {
			if e.Response == ResponseBlock && now.Sub(e.Received) <= thr.Window {
				blocks = append(blocks, e)
			}
		}
		if len(blocks) >= thr.Events {
			last := blocks[len(blocks)-1]
			out.kind, out.response = FindingThreshold, ResponseQuarantine
			out.reason = fmt.Sprintf("%d anomaly events within %s, last: %s anomaly (%s) reported by %s", len(blocks), thr.Window, last.Detector, last.Detail, last.Reporter)
			out.finding = &Finding{Reason: out.reason, Detector: last.Detector, Evidence: blocks}
		}
	}
	if out.finding == nil {
		next.Observations = all
		return next, out, nil
	}
	f := out.finding
	f.Source, _ = spiffeid.FromString(identity)
	f.By, f.Profile, f.For = ByCorrelation, corr.profile, corr.quarantineFor
	if len(f.Evidence) > state.MaxEvidence {
		f.Evidence = f.Evidence[len(f.Evidence)-state.MaxEvidence:]
	}
	d := f.For
	if d <= 0 {
		d = m.opts.DefaultDuration
	}
	d = min(d, m.opts.MaxDuration)
	added, _, err := m.decideAdd(next, identity, now, addArgs{reason: clip(f.Reason), by: f.By, profile: f.Profile, detector: f.Detector, d: d, evidence: f.Evidence})
	if err != nil {
		return nil, out, err
	}
	added.Observations = nil // they are its evidence now
	return added, out, nil
}

// within returns the observations received within window before now.
func within(obs []state.Evidence, now time.Time, window time.Duration) []state.Evidence {
	var out []state.Evidence
	for _, e := range obs {
		if now.Sub(e.Received) <= window {
			out = append(out, e)
		}
	}
	return out
}

// destinations are the distinct destinations of the observations received
// within window before now, sorted.
func destinations(obs []state.Evidence, now time.Time, window time.Duration) []string {
	seen := map[string]bool{}
	var out []string
	for _, e := range obs {
		if now.Sub(e.Received) > window {
			continue
		}
		if d := destinationKey(e); !seen[d] {
			seen[d] = true
			out = append(out, d)
		}
	}
	sort.Strings(out)
	return out
}

// destinationKey names the destination a report is about the same way
// whoever sent it: "<service>.<namespace>". A report that names no
// destination came from the destination's own (inbound) side: its
// reporter is the destination. A bare service is in the reporter's
// namespace (the destination's, or for the source's own outbound report
// the source's, where a short name resolves); a Kubernetes service host is
// shortened to "<service>.<namespace>"; addresses and other hosts are
// kept as they are.
func destinationKey(e state.Evidence) string {
	d := strings.ToLower(strings.TrimSuffix(e.Destination, "."))
	if d == "" {
		return e.Reporter
	}
	if h, _, err := net.SplitHostPort(d); err == nil {
		d = h
	}
	if net.ParseIP(d) != nil {
		return d
	}
	if i := strings.Index(d, ".svc"); i > 0 && (len(d) == i+4 || d[i+4] == '.') {
		d = d[:i]
	}
	if !strings.Contains(d, ".") {
		if ns := namespaceOf(e.Reporter); ns != "" {
			return d + "." + ns
		}
	}
	return d
}

// namespaceOf reads <ns> from a /ns/<ns>/sa/<name> SPIFFE ID.
func namespaceOf(id string) string {
	sid, err := spiffeid.FromString(id)
	if err != nil {
		return ""
	}
	segs := strings.Split(strings.TrimPrefix(sid.Path(), "/"), "/")
	if len(segs) == 4 && segs[0] == "ns" && segs[2] == "sa" {
		return segs[1]
	}
	return ""
}

// forgetObserved deletes an Observed record whose reports are all older
// than keep: it never added up to anything.
func (m *Manager) forgetObserved(ctx context.Context, identity string, now time.Time, keep time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, m.opts.WriteTimeout)
	defer cancel()
	_, err := m.store.UpdateQuarantine(ctx, identity, func(cur *state.Quarantine) (*state.Quarantine, error) {
		if cur == nil || cur.Phase != state.PhaseObserved || !stale(cur, now, keep) {
			return nil, state.ErrUnchanged
		}
		return nil, nil
	})
	if err != nil {
		m.storeFailures.WithLabelValues("delete").Inc()
		return fmt.Errorf("delete the observations of %s: %w", identity, err)
	}
	return nil
}

// stale reports whether every observation of q is older than keep.
func stale(q *state.Quarantine, now time.Time, keep time.Duration) bool {
	for _, e := range q.Observations {
		if now.Sub(e.Received) <= keep {
			return false
		}
	}
	return true
}
