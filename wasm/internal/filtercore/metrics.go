package filtercore

import (
	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/wasm/internal/detect"
)

// Metric names. Envoy exposes proxy-wasm metrics under its stats sink;
// label values are encoded in the name as ".<label>.<value>" pairs drawn
// from fixed sets (reason codes, detector and response names), never from
// request data. docs/wasm.md gives the stats_tags regex to extract them.
const (
	mRequests       = "meshguard_wasm_requests_total"
	mDecisions      = "meshguard_wasm_decisions_total"
	mDryRun         = "meshguard_wasm_dry_run_denials_total"
	mAnomalies      = "meshguard_wasm_anomalies_total"
	mEdges          = "meshguard_wasm_edges_reported_total"
	mStripped       = "meshguard_wasm_spoofed_headers_stripped_total"
	mEventsSent     = "meshguard_wasm_events_sent_total"
	mEventsDropped  = "meshguard_wasm_events_dropped_total"
	mConfig         = "meshguard_wasm_config_loads_total"
	mIdentities     = "meshguard_wasm_tracked_identities"
	mEvictions      = "meshguard_wasm_identity_evictions_total"
	mSharedConflict = "meshguard_wasm_shared_data_conflicts_total"
	mBundleFetches  = "meshguard_wasm_bundle_fetches_total"
	// The workload's own requests, decided on its outbound side (their
	// decisions are in mDecisions too).
	mOutRequests = "meshguard_wasm_outbound_requests_total"
)

// reasons is every reason code the filter can answer with; one counter each.
var reasons = []policies.Reason{
	policies.ReasonAllowedNoPolicy, policies.ReasonAllowedByPolicy, policies.ReasonAllowedModeOff,
	policies.ReasonDeniedByPolicy, policies.ReasonDeniedNoMatch, policies.ReasonDeniedDefault,
	policies.ReasonDeniedUnsafePath, policies.ReasonDeniedInvalidReq, policies.ReasonDeniedQuarantine,
	policies.ReasonDeniedBaseline, policies.ReasonDeniedNoPolicy, policies.ReasonDeniedNoMTLS,
	policies.ReasonDeniedIdentity, policies.ReasonDeniedJWT, policies.ReasonDeniedInternal,
	policies.ReasonDeniedTimeout, policies.ReasonDeniedAnomaly, policies.ReasonRateLimited,
	policies.ReasonDeniedUnresolved, policies.ReasonDeniedInvalidPolicy,
}

type metrics struct {
	// Counted on the request path: batched (see batched).
	requests, dryRun, edges, stripped *batched
	decisions                         map[policies.Reason]*batched
	other                             *batched
	outRequests                       *batched
	anomalies                         [5][5]*batched
	all                               []*batched
	last                              struct {
		r policies.Reason
		c *batched
	}

	sent, dropped, evictions, conflicts Counter
	configOK, configErr                 Counter
	// Answers of the bundle endpoint: a new bundle loaded, unchanged at the
	// end of the wait, a bundle refused, no usable answer.
	fetchUpdated, fetchUnchanged, fetchRefused, fetchFailed Counter
	identities                                              Gauge
}

// batched counts locally and hands the sum to the host counter on flush,
// which runs on every tick: a host call per increment is a good part of a
// request's cost in a wasm VM. Counters stay exact, and lag by at most
// one tick period.
type batched struct {
	c Counter
	n uint64
}

func (b *batched) Add(n uint64) { b.n += n }

func (b *batched) flush() {
	if b.n != 0 {
		n := b.n
		b.n = 0
		b.c.Add(n)
	}
}

func (m *metrics) batch(c Counter) *batched {
	b := &batched{c: c}
	m.all = append(m.all, b)
	return b
}

// flush sends the batched counts to the host.
func (m *metrics) flush() {
	for _, b := range m.all {
		b.flush()
	}
}

func newMetrics(h Host) *metrics {
	m := &metrics{
		sent:       h.DefineCounter(mEventsSent),
		dropped:    h.DefineCounter(mEventsDropped),
		evictions:  h.DefineCounter(mEvictions),
		conflicts:  h.DefineCounter(mSharedConflict),
		configOK:   h.DefineCounter(mConfig + ".result.ok"),
		configErr:  h.DefineCounter(mConfig + ".result.error"),
		identities: h.DefineGauge(mIdentities),

		fetchUpdated:   h.DefineCounter(mBundleFetches + ".result.updated"),
		fetchUnchanged: h.DefineCounter(mBundleFetches + ".result.unchanged"),
		fetchRefused:   h.DefineCounter(mBundleFetches + ".result.refused"),
		fetchFailed:    h.DefineCounter(mBundleFetches + ".result.failed"),
		decisions:      make(map[policies.Reason]*batched, len(reasons)),
	}
	m.requests = m.batch(h.DefineCounter(mRequests))
	m.dryRun = m.batch(h.DefineCounter(mDryRun))
	m.edges = m.batch(h.DefineCounter(mEdges))
	m.stripped = m.batch(h.DefineCounter(mStripped))
	for _, r := range reasons {
		m.decisions[r] = m.batch(h.DefineCounter(mDecisions + ".reason." + string(r)))
	}
	m.other = m.batch(h.DefineCounter(mDecisions + ".reason.other"))
	m.outRequests = m.batch(h.DefineCounter(mOutRequests))
	for _, d := range detect.Detectors() {
		for _, r := range detect.Responses() {
			m.anomalies[d][r] = m.batch(h.DefineCounter(mAnomalies + ".detector." + d.String() + ".response." + r.String()))
		}
	}
	return m
}

func (m *metrics) decision(r policies.Reason) {
	if r == m.last.r && m.last.c != nil {
		m.last.c.Add(1) // the common case: the same reason as the last request
		return
	}
	c, ok := m.decisions[r]
	if !ok {
		c = m.other
	}
	m.last.r, m.last.c = r, c
	c.Add(1)
}
