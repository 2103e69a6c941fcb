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
	"github.com/meshguard/meshguard/policies/wire"
)

// Paths of the admin API.
const (
	PathQuarantines = "/v1/quarantines"
	PathRelease     = "/v1/quarantines/release"
	PathAudit       = "/v1/quarantines/audit"
	PathEdges       = "/v1/baseline/edges"
)

// Limits of the events endpoint.
const (
	MaxBatchBytes  = 1 << 20
	MaxBatchEvents = 1000
	maxAdminBytes  = 64 << 10
)

// EventObserver sees every batch the events endpoint accepts, with the
// events the reporter may report (after the learner and the quarantine
// manager); reporter is the authenticated reporter
// ("unauthenticated:<claimed>" without TLS). It must not keep the batch or
// block.
type EventObserver interface {
	ObserveEvents(reporter string, b *wire.EventBatch)
}

// Options configure the handler.
type Options struct {
	Quarantine *quarantine.Manager
	Learner    *learn.Learner
	// Observers also get the accepted events (the web console).
	Observers []EventObserver
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
}

// New returns the handler.
func New(opts Options) (*Handler, error) {
	if opts.Quarantine == nil || opts.Learner == nil {
		return nil, errors.New("api: a quarantine manager and a learner are required")
	}
	if !opts.Insecure && opts.TrustDomain.IsZero() {
		return nil, errors.New("api: a trust domain is required unless insecure")
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
	if opts.Registerer != nil {
		for _, c := range []prometheus.Collector{h.batches, h.received, h.refused, h.dropped} {
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
