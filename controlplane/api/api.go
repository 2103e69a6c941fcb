// Package api is the control plane's HTTP surface: the events endpoint that
// wasm filters and authz servers post detections and observed edges to, and
// the admin API behind `meshguard quarantine` and `meshguard baseline`.
//
// With TLS, callers are identified by the SPIFFE ID of their client
// certificate: event reporters must be meshguard data-plane components
// (Reporters) and report only traffic they saw, and admin callers must be
// listed. Without TLS (--insecure-plaintext, local use only) nobody is
// authenticated and audit records say so.
package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/meshguard/meshguard/controlplane/learn"
	"github.com/meshguard/meshguard/controlplane/quarantine"
	"github.com/meshguard/meshguard/controlplane/record"
	"github.com/meshguard/meshguard/controlplane/recordstore"
	"github.com/meshguard/meshguard/policies/wire"
)

// Paths of the admin API.
const (
	PathQuarantines = "/v1/quarantines"
	PathRelease     = "/v1/quarantines/release"
	PathAudit       = "/v1/quarantines/audit"
	PathEdges       = "/v1/baseline/edges"
	PathRecords     = "/v1/records"
	PathIncident    = "/v1/incident"
)

// Limits of the events endpoint.
const (
	MaxBatchBytes  = 1 << 20
	MaxBatchEvents = 1000
	maxAdminBytes  = 64 << 10
	// MaxDecisionBytes and MaxDecisions bound one DecisionBatch.
	MaxDecisionBytes = 8 << 20
	MaxDecisions     = 10_000
)

// EventObserver sees every batch the events endpoint accepts, with the
// events the reporter may report (after the learner and the quarantine
// manager); reporter is the authenticated reporter
// ("unauthenticated:<claimed>" without TLS). It must not keep the batch or
// block.
type EventObserver interface {
	ObserveEvents(reporter string, b *wire.EventBatch)
}

// DecisionObserver sees the decisions of every batch the decisions
// endpoint accepts (the web console draws the denials: authz servers deny
// requests the filters let through). It must not keep the slice or block.
type DecisionObserver interface {
	ObserveDecisions(reporter string, ds []wire.Decision)
}

// RecordSink keeps records (the record store, and the OTLP exporter behind
// it). Append must not block; it returns record.ErrFull when it has no room.
type RecordSink interface {
	Append(recs []record.Record) error
}

// Forensics answers the admin API's record queries (the record store).
type Forensics interface {
	Query(ctx context.Context, f recordstore.Filter) (*recordstore.Result, error)
	Timeline(ctx context.Context, identity string, o recordstore.TimelineOptions) (*recordstore.Timeline, error)
}

// Options configure the handler.
type Options struct {
	Quarantine *quarantine.Manager
	Learner    *learn.Learner
	// Observers also get the accepted events (the web console).
	Observers []EventObserver
	// DecisionObservers also get the accepted decisions (the web console).
	DecisionObservers []DecisionObserver
	// TrustDomain of the mesh (required with TLS); reporters outside it
	// are refused whatever Reporters says.
	TrustDomain spiffeid.TrustDomain
	// Reporters are the data-plane components that may post events; with
	// TLS, nil or empty refuses every batch.
	Reporters *Reporters
	// Admins may call the admin API (with TLS).
	Admins []spiffeid.ID
	// Insecure accepts requests without client certificates. For local
	// use only; the controlplane command warns loudly.
	Insecure   bool
	Logger     *slog.Logger
	Registerer prometheus.Registerer
	// Records receives decisions shipped to DecisionsPath and the
	// detections of event batches; nil: neither is kept (DecisionsPath
	// answers 404).
	Records RecordSink
	// RecordAllowSample is the fraction, in [0, 1], of filters' reports
	// of allowed requests (counts per caller and route every few seconds)
	// that are kept as records; their denials and dry-run would-denies
	// always are.
	RecordAllowSample float64
	// Forensics answers PathRecords and PathIncident; nil: 404.
	Forensics Forensics
	// Now is the clock of relative times in queries (default time.Now).
	Now func() time.Time
}

// Handler serves the API.
type Handler struct {
	opts     Options
	log      *slog.Logger
	mux      *http.ServeMux
	batches  *prometheus.CounterVec
	received *prometheus.CounterVec
	refused  *prometheus.CounterVec
	dropped  prometheus.Counter
	// Decision shipping and record intake.
	decBatches *prometheus.CounterVec
	decDropped prometheus.Counter
	recRefused *prometheus.CounterVec
}

// New returns the handler.
func New(opts Options) (*Handler, error) {
	if opts.Quarantine == nil || opts.Learner == nil {
		return nil, errors.New("api: a quarantine manager and a learner are required")
	}
	if !opts.Insecure && opts.TrustDomain.IsZero() {
		return nil, errors.New("api: a trust domain is required unless insecure")
	}
	if opts.RecordAllowSample < 0 || opts.RecordAllowSample > 1 {
		return nil, fmt.Errorf("api: record allow sample %v not in [0, 1]", opts.RecordAllowSample)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h := &Handler{
		opts: opts,
		log:  log,
		mux:  http.NewServeMux(),
		batches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshguard_controlplane_event_batches_total",
			Help: "Event batches by result (accepted, unauthenticated, forbidden, too_large, invalid).",
		}, []string{"result"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshguard_controlplane_events_refused_total",
			Help: "Events of accepted batches that were dropped because they are not about traffic their reporter saw, by kind.",
		}, []string{"kind"}),
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshguard_controlplane_events_total",
			Help: "Events received, by kind.",
		}, []string{"kind"}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meshguard_controlplane_events_dropped_by_reporters_total",
			Help: "Events reporters say they dropped before sending.",
		}),
	}
	h.decBatches = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshguard_controlplane_decision_batches_total",
		Help: "Decision batches from authz servers by result (accepted, busy, unauthenticated, too_large, invalid, disabled).",
	}, []string{"result"})
	h.decDropped = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "meshguard_controlplane_decisions_dropped_by_reporters_total",
		Help: "Decisions authz servers say they dropped before the control plane accepted them.",
	})
	h.recRefused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshguard_controlplane_records_refused_total",
		Help: "Records the record store had no room for at intake, by endpoint: events are lost (counted here), decisions are answered 503 and kept by their sender.",
	}, []string{"endpoint"})
	if opts.Now == nil {
		h.opts.Now = time.Now
	}
	if opts.Registerer != nil {
		for _, c := range []prometheus.Collector{h.batches, h.received, h.refused, h.dropped, h.decBatches, h.decDropped, h.recRefused} {
			if err := opts.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("api: register metrics: %w", err)
			}
		}
	}
	h.mux.HandleFunc("POST "+wire.EventsPath, h.events)
	h.mux.HandleFunc("GET "+PathQuarantines, h.admin(h.listQuarantines))
	h.mux.HandleFunc("POST "+PathQuarantines, h.admin(h.addQuarantine))
	h.mux.HandleFunc("POST "+PathRelease, h.admin(h.release))
	h.mux.HandleFunc("GET "+PathAudit, h.admin(h.audit))
	h.mux.HandleFunc("GET "+PathEdges, h.admin(h.edges))
	h.mux.HandleFunc("POST "+wire.DecisionsPath, h.decisions)
	h.mux.HandleFunc("GET "+PathRecords, h.admin(h.records))
	h.mux.HandleFunc("GET "+PathIncident, h.admin(h.incident))
	return h, nil
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

// caller returns the SPIFFE ID of the client certificate.
func (h *Handler) caller(r *http.Request) (spiffeid.ID, error) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return spiffeid.ID{}, errors.New("no client certificate")
	}
	return x509svid.IDFromCert(r.TLS.PeerCertificates[0])
}

func (h *Handler) events(w http.ResponseWriter, r *http.Request) {
	reporter := "unauthenticated"
	var sc scope
	if !h.opts.Insecure {
		id, err := h.caller(r)
		if err != nil || id.TrustDomain() != h.opts.TrustDomain {
			h.batches.WithLabelValues("unauthenticated").Inc()
			httpError(w, http.StatusUnauthorized, "a client SVID of the mesh's trust domain is required")
			return
		}
		var ok bool
		if sc, ok = h.opts.Reporters.scopeOf(id); !ok {
			h.batches.WithLabelValues("forbidden").Inc()
			h.log.Warn("event batch from an identity that is not a meshguard data-plane component refused", "reporter", id.String())
			httpError(w, http.StatusForbidden, id.String()+" is not a meshguard data-plane component")
			return
		}
		reporter = id.String()
	}
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
		h.batches.WithLabelValues("invalid").Inc()
		httpError(w, http.StatusUnsupportedMediaType, "want application/json")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBatchBytes))
	if err != nil {
		h.batches.WithLabelValues("too_large").Inc()
		httpError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("batch larger than %d bytes", MaxBatchBytes))
		return
	}
	batch, err := DecodeBatch(body)
	if err != nil {
		h.batches.WithLabelValues("invalid").Inc()
		httpError(w, http.StatusBadRequest, err.Error())
		return
	}
	if !h.opts.Insecure && batch.Reporter != "" && batch.Reporter != reporter {
		// The certificate is the identity; a batch claiming another is
		// logged and attributed to the certificate.
		h.log.Warn("event batch reporter differs from its certificate", "claimed", batch.Reporter, "reporter", reporter)
	}
	if h.opts.Insecure && batch.Reporter != "" {
		reporter = "unauthenticated:" + batch.Reporter
	}
	h.batches.WithLabelValues("accepted").Inc()
	h.dropped.Add(float64(batch.Dropped))
	events := batch.Events
	if !h.opts.Insecure {
		// Only what the reporter saw: a workload cannot have others
		// quarantined for traffic it never handled.
		events = events[:0]
		for _, ev := range batch.Events {
			if !sc.allows(&ev) {
				h.refused.WithLabelValues(kindLabel(ev.Kind)).Inc()
				h.log.Warn("event not about traffic its reporter saw; dropped", "reporter", reporter, "kind", ev.Kind,
					"source", ev.Source, "destination", ev.Destination)
				continue
			}
			if ev.Kind == wire.EventAnomaly && ev.Destination == "" && ev.Source != sc.id && sc.workload != nil {
				// An anomaly a workload's inbound side reports about a
				// caller is about that workload: name it as its own
				// outbound side and other sidecars do, for correlation.
				// (Only anomalies: edges name their destination, and
				// decisions must not become learned edges.)
				ev.Destination = sc.workload.Service + "." + sc.workload.Namespace
			}
			events = append(events, ev)
		}
	}
	for _, ev := range events {
		h.received.WithLabelValues(kindLabel(ev.Kind)).Inc()
	}
	h.opts.Learner.Observe(events)
	// Detections are stored before the quarantine manager acts on them, so
	// that a timeline shows them ahead of the quarantine they cause.
	if h.opts.Records != nil {
		if recs := record.FromEvents(reporter, events, record.EventOptions{AllowSample: h.opts.RecordAllowSample}); len(recs) > 0 {
			if err := h.opts.Records.Append(recs); err != nil {
				h.recRefused.WithLabelValues("events").Add(float64(len(recs)))
				h.log.Warn("records of an event batch not stored", "records", len(recs), "error", err)
			}
		}
	}
	h.opts.Quarantine.HandleEvents(r.Context(), reporter, events)
	if len(h.opts.Observers) > 0 {
		accepted := *batch
		accepted.Events = events
		for _, o := range h.opts.Observers {
			o.ObserveEvents(reporter, &accepted)
		}
	}
	w.WriteHeader(http.StatusAccepted)
}

// reporter authenticates an event or decision sender: the SPIFFE ID of its
// client certificate, which must be in the mesh's trust domain.
func (h *Handler) reporter(r *http.Request) (string, bool) {
	if h.opts.Insecure {
		return "unauthenticated", true
	}
	id, err := h.caller(r)
	if err != nil || id.TrustDomain() != h.opts.TrustDomain {
		return "", false
	}
	return id.String(), true
}

// decisions takes a DecisionBatch from an authz server into the record
// store. A full store answers 503 with Retry-After: the sender keeps the
// batch and retries (back-pressure), counting what it cannot keep.
func (h *Handler) decisions(w http.ResponseWriter, r *http.Request) {
	if h.opts.Records == nil {
		h.decBatches.WithLabelValues("disabled").Inc()
		httpError(w, http.StatusNotFound, "this control plane keeps no decisions (no record store)")
		return
	}
	reporter, ok := h.reporter(r)
	if !ok {
		h.decBatches.WithLabelValues("unauthenticated").Inc()
		httpError(w, http.StatusUnauthorized, "a client SVID of the mesh's trust domain is required")
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
		h.decBatches.WithLabelValues("invalid").Inc()
		httpError(w, http.StatusUnsupportedMediaType, "want application/json")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxDecisionBytes))
	if err != nil {
		h.decBatches.WithLabelValues("too_large").Inc()
		httpError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("batch larger than %d bytes", MaxDecisionBytes))
		return
	}
	batch, err := DecodeDecisions(body)
	if err != nil {
		h.decBatches.WithLabelValues("invalid").Inc()
		httpError(w, http.StatusBadRequest, err.Error())
		return
	}
	if h.opts.Insecure && batch.Reporter != "" {
		reporter = "unauthenticated:" + batch.Reporter
	}
	recs := make([]record.Record, len(batch.Decisions))
	for i := range batch.Decisions {
		recs[i] = record.FromDecision(reporter, &batch.Decisions[i])
	}
	if err := h.opts.Records.Append(recs); err != nil {
		if errors.Is(err, record.ErrFull) {
			h.decBatches.WithLabelValues("busy").Inc()
			h.recRefused.WithLabelValues("decisions").Add(float64(len(recs)))
			w.Header().Set("Retry-After", "1")
			httpError(w, http.StatusServiceUnavailable, "record store busy: retry later")
			return
		}
		// Appended to the store, refused by another sink (which counts it).
		h.log.Warn("decision records", "error", err)
	}
	h.decBatches.WithLabelValues("accepted").Inc()
	h.decDropped.Add(float64(batch.Dropped))
	for _, o := range h.opts.DecisionObservers {
		o.ObserveDecisions(reporter, batch.Decisions)
	}
	w.WriteHeader(http.StatusAccepted)
}

// DecodeDecisions decodes a decision batch strictly: unknown fields,
// trailing data, too many decisions, and decisions without a time, a
// decision ID or a reason are errors.
func DecodeDecisions(body []byte) (*wire.DecisionBatch, error) {
	b, err := wire.DecodeDecisionBatch(body)
	if err != nil {
		return nil, fmt.Errorf("decode decision batch: %w", err)
	}
	if len(b.Decisions) > MaxDecisions {
		return nil, fmt.Errorf("decision batch has %d decisions, at most %d", len(b.Decisions), MaxDecisions)
	}
	for i := range b.Decisions {
		d := &b.Decisions[i]
		if d.Time.IsZero() || d.DecisionID == "" || d.Reason == "" {
			return nil, fmt.Errorf("decision %d: time, decision_id and reason are required", i)
		}
	}
	return b, nil
}

func (h *Handler) records(w http.ResponseWriter, r *http.Request, _ string) {
	if h.opts.Forensics == nil {
		httpError(w, http.StatusNotFound, "this control plane keeps no records (no record store)")
		return
	}
	f, err := ParseFilter(r.URL.Query(), h.opts.Now())
	if err != nil {
		httpError(w, http.StatusBadRequest, err.Error())
		return
	}
	res, err := h.opts.Forensics.Query(r.Context(), f)
	if err != nil {
		httpError(w, http.StatusBadRequest, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (h *Handler) incident(w http.ResponseWriter, r *http.Request, _ string) {
	if h.opts.Forensics == nil {
		httpError(w, http.StatusNotFound, "this control plane keeps no records (no record store)")
		return
	}
	q := r.URL.Query()
	id, o, err := ParseTimeline(q, h.opts.Now())
	if err != nil {
		httpError(w, http.StatusBadRequest, err.Error())
		return
	}
	tl, err := h.opts.Forensics.Timeline(r.Context(), id, o)
	switch {
	case errors.Is(err, recordstore.ErrNoAnchor):
		httpError(w, http.StatusNotFound, err.Error())
	case err != nil:
		httpError(w, http.StatusBadRequest, err.Error())
	default:
		writeJSON(w, http.StatusOK, tl)
	}
}

// DecodeBatch decodes an event batch strictly: unknown fields, trailing
// data, too many events and events without a kind are errors.
func DecodeBatch(body []byte) (*wire.EventBatch, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	var b wire.EventBatch
	if err := dec.Decode(&b); err != nil {
		return nil, fmt.Errorf("decode event batch: %w", err)
	}
	if dec.More() {
		return nil, errors.New("decode event batch: trailing data")
	}
	if len(b.Events) > MaxBatchEvents {
		return nil, fmt.Errorf("event batch has %d events, at most %d", len(b.Events), MaxBatchEvents)
	}
	for i, ev := range b.Events {
		switch ev.Kind {
		case wire.EventAnomaly, wire.EventEdge, wire.EventDecision:
		default:
			return nil, fmt.Errorf("event %d: unknown kind %q", i, ev.Kind)
		}
	}
	return &b, nil
}

func kindLabel(k string) string {
	switch k {
	case wire.EventAnomaly, wire.EventEdge, wire.EventDecision:
		return k
	}
	return "other"
}

// admin wraps admin endpoints: with TLS the caller must be an admin.
func (h *Handler) admin(next func(http.ResponseWriter, *http.Request, string)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if h.opts.Insecure {
			next(w, r, "unauthenticated")
			return
		}
		id, err := h.caller(r)
		if err != nil {
			httpError(w, http.StatusUnauthorized, "a client SVID is required")
			return
		}
		for _, a := range h.opts.Admins {
			if a == id {
				next(w, r, id.String())
				return
			}
		}
		h.log.Warn("admin call refused", "caller", id.String(), "path", r.URL.Path)
		httpError(w, http.StatusForbidden, id.String()+" is not an admin")
	}
}

// QuarantineRequest is the body of POST /v1/quarantines.
type QuarantineRequest struct {
	Identity string `json:"identity"`
	Reason   string `json:"reason"`
	// Duration is a Go duration; empty: the default.
	Duration string `json:"duration,omitempty"`
	// By names the operator when the API is unauthenticated.
	By string `json:"by,omitempty"`
}

// ReleaseRequest is the body of POST /v1/quarantines/release.
type ReleaseRequest struct {
	Identity string `json:"identity"`
	Reason   string `json:"reason"`
	By       string `json:"by,omitempty"`
}

func who(caller, by string) string {
	if caller == "unauthenticated" && by != "" {
		return "unauthenticated:" + by
	}
	return caller
}

func (h *Handler) listQuarantines(w http.ResponseWriter, _ *http.Request, _ string) {
	writeJSON(w, http.StatusOK, h.opts.Quarantine.List())
}

func (h *Handler) addQuarantine(w http.ResponseWriter, r *http.Request, caller string) {
	var req QuarantineRequest
	if err := decodeStrict(w, r, &req); err != nil {
		httpError(w, http.StatusBadRequest, err.Error())
		return
	}
	var d time.Duration
	if req.Duration != "" {
		var err error
		if d, err = time.ParseDuration(req.Duration); err != nil || d <= 0 {
			httpError(w, http.StatusBadRequest, fmt.Sprintf("duration %q: want a positive Go duration", req.Duration))
			return
		}
	}
	if strings.TrimSpace(req.Reason) == "" {
		httpError(w, http.StatusBadRequest, "a reason is required")
		return
	}
	e, err := h.opts.Quarantine.Add(r.Context(), quarantine.AddRequest{Identity: req.Identity, Reason: req.Reason, By: who(caller, req.By), For: d})
	if err != nil {
		h.log.Error("quarantine add failed", "identity", req.Identity, "caller", caller, "error", err)
		httpError(w, statusOf(err), err.Error())
		return
	}
	writeJSON(w, http.StatusOK, e)
}

func (h *Handler) release(w http.ResponseWriter, r *http.Request, caller string) {
	var req ReleaseRequest
	if err := decodeStrict(w, r, &req); err != nil {
		httpError(w, http.StatusBadRequest, err.Error())
		return
	}
	if err := h.opts.Quarantine.Release(r.Context(), req.Identity, who(caller, req.By), req.Reason); err != nil {
		if !errors.Is(err, quarantine.ErrNotQuarantined) {
			h.log.Error("quarantine release failed", "identity", req.Identity, "caller", caller, "error", err)
		}
		httpError(w, statusOf(err), err.Error())
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// statusOf maps the quarantine manager's errors: a change the store did
// not take, or one stored but not yet served, is an error for the caller
// to retry, never a success.
func statusOf(err error) int {
	switch {
	case errors.Is(err, quarantine.ErrInvalid):
		return http.StatusBadRequest
	case errors.Is(err, quarantine.ErrNotQuarantined):
		return http.StatusNotFound
	case errors.Is(err, quarantine.ErrLimit):
		return http.StatusConflict
	case errors.Is(err, quarantine.ErrStore):
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

func (h *Handler) audit(w http.ResponseWriter, _ *http.Request, _ string) {
	writeJSON(w, http.StatusOK, h.opts.Quarantine.Audit())
}

func (h *Handler) edges(w http.ResponseWriter, _ *http.Request, _ string) {
	writeJSON(w, http.StatusOK, h.opts.Learner.Edges())
}

func decodeStrict(w http.ResponseWriter, r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxAdminBytes))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("decode request: %w", err)
	}
	if dec.More() {
		return errors.New("decode request: trailing data")
	}
	return nil
}

// ErrorBody is the JSON of every error response.
type ErrorBody struct {
	Error string `json:"error"`
}

func httpError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, ErrorBody{Error: msg})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
