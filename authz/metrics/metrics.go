// Package metrics defines the authz server's Prometheus metrics. They are
// registered on a registry the caller injects; no label carries an
// identity, a path or any other unbounded value.
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the server's collectors.
type Metrics struct {
	// Decisions counts decisions by result (allow, deny, would_deny),
	// reason code and mode.
	Decisions *prometheus.CounterVec
	// CheckDuration is the time spent answering a check, by protocol
	// (grpc, http).
	CheckDuration *prometheus.HistogramVec
	// PolicyVersion is 1 for the serving bundle's version and hash (the
	// series is replaced on every swap, so at most one exists).
	PolicyVersion *prometheus.GaugeVec
	// PolicyLoaded is the Unix time of the last successful swap.
	PolicyLoaded prometheus.Gauge
	// Reloads counts policy updates by source (file, ads) and result
	// (applied, rejected, unchanged).
	Reloads *prometheus.CounterVec
	// IdentityFailures counts rejected or ignored credentials by kind.
	IdentityFailures *prometheus.CounterVec
	// Ready is 1 while the server is ready (/readyz 200).
	Ready prometheus.Gauge
	// PolicyStaleness is how long ago the control plane last confirmed the
	// serving bundle (0 while a live subscription holds it).
	PolicyStaleness prometheus.Gauge
	// PolicyStale counts the times the bundle went past the staleness
	// bound (the server then turns not ready).
	PolicyStale prometheus.Counter
	// ControlPlaneConnected is 1 while the policy subscription is live.
	ControlPlaneConnected prometheus.Gauge
	// ControlPlaneStreams counts ended policy subscription streams by
	// reason (error, watchdog).
	ControlPlaneStreams *prometheus.CounterVec
}

// New creates the collectors and registers them on reg.
func New(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshguard_authz_decisions_total",
			Help: "Authorization decisions by result (allow, deny, would_deny), reason code and mode.",
		}, []string{"result", "reason", "mode"}),
		CheckDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "meshguard_authz_check_duration_seconds",
			Help:    "Time to answer one check, from receipt to response, by protocol.",
			Buckets: []float64{25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 100e-3},
		}, []string{"protocol"}),
		PolicyVersion: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "meshguard_authz_policy_version_info",
			Help: "1 for the policy bundle version and hash being served.",
		}, []string{"version", "hash"}),
		PolicyLoaded: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meshguard_authz_policy_last_applied_timestamp_seconds",
			Help: "Unix time at which the serving policy bundle was applied.",
		}),
		Reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshguard_authz_policy_reloads_total",
			Help: "Policy bundle updates by source and result (applied, rejected, unchanged).",
		}, []string{"source", "result"}),
		IdentityFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshguard_authz_identity_failures_total",
			Help: "Caller credentials that were rejected (request denied) or ignored, by kind.",
		}, []string{"kind"}),
		Ready: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meshguard_authz_ready",
			Help: "1 while the server is ready (/readyz answers 200), 0 otherwise.",
		}),
		PolicyStaleness: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meshguard_authz_policy_staleness_seconds",
			Help: "Seconds since the control plane last confirmed the serving bundle (an update, a heartbeat or a live stream); 0 while it holds.",
		}),
		PolicyStale: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meshguard_authz_policy_stale_total",
			Help: "Times the serving bundle went unconfirmed past --policy-max-staleness (the server turned not ready).",
		}),
		ControlPlaneConnected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meshguard_authz_control_plane_connected",
			Help: "1 while the policy subscription to the control plane is live (answered, and not silent past the resource's TTL).",
		}),
		ControlPlaneStreams: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshguard_authz_control_plane_streams_ended_total",
			Help: "Policy subscription streams that ended, by reason: error (the transport or the control plane ended it; a keepalive timeout among them), watchdog (silent past the heartbeat TTL, or no first answer in time).",
		}, []string{"reason"}),
	}
	for _, r := range []string{"error", "watchdog"} {
		m.ControlPlaneStreams.WithLabelValues(r)
	}
	reg.MustRegister(m.Decisions, m.CheckDuration, m.PolicyVersion, m.PolicyLoaded, m.Reloads, m.IdentityFailures,
		m.Ready, m.PolicyStaleness, m.PolicyStale, m.ControlPlaneConnected, m.ControlPlaneStreams)
	return m
}
