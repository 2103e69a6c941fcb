package server

import (
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/meshguard/meshguard/authz/request"
	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/wire"
)

// HTTPHandler serves Envoy's HTTP ext_authz mode: Envoy forwards the
// original request (method, path_prefix + path, the allowed headers) and
// reads the answer from the status. 200 allows: the response carries
// x-meshguard-source-id and x-meshguard-decision-id (list them in
// allowed_upstream_headers) and x-envoy-auth-headers-to-remove. Any other
// status denies, and Envoy returns it to the client with the JSON body and
// the allowed client headers (x-meshguard-reason, x-meshguard-decision-id).
// Over mTLS the calling Envoy's SPIFFE ID is the peer whose XFCC header may
// be trusted (see identity); over plaintext there is none.
func (s *Server) HTTPHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		var o outcome
		func() {
			defer func() {
				if p := recover(); p != nil {
					s.log.Error("panic in HTTP check; denying", slog.Any("panic", p))
					o = outcome{decisionID: s.newDecisionID(), dec: policies.Deny(policies.ReasonDeniedInternal)}
				}
			}()
			m, err := request.FromHTTP(r, s.prefix, peerID(r), s.reqOpts)
			o = s.decideTraced(r.Context(), start.Add(s.timeout), m, err)
		}()
		s.record("http", &o, start)
		h := w.Header()
		h.Set(wire.HeaderDecisionID, o.decisionID)
		if o.dec.Ref.Policy != "" {
			h.Set(wire.HeaderPolicyRef, o.dec.Ref.Policy)
			h.Set(HeaderRule, o.dec.Ref.Rule)
		}
		h.Set(HeaderMode, mode(o.dec))
		if o.dec.Allowed {
			if !o.id.ID.IsZero() {
				h.Set(wire.HeaderSourceID, o.id.ID.String())
			}
			for _, kv := range o.set {
				h.Set(kv[0], kv[1])
			}
			if len(o.remove) > 0 {
				h.Set(HeaderAuthRemove, strings.Join(o.remove, ","))
			}
			w.WriteHeader(http.StatusOK)
			return
		}
		h.Set("content-type", "application/json")
		h.Set(wire.HeaderReason, string(o.dec.Reason))
		if o.authFail != nil {
			h.Set("www-authenticate", wwwAuthenticate(o.mapped))
		}
		w.WriteHeader(httpStatus(o.dec.Reason))
		_, _ = w.Write(denyJSON(&o))
	})
}

// peerID is the SPIFFE ID of an mTLS client (already verified by the TLS
// configuration), or zero.
func peerID(r *http.Request) spiffeid.ID {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return spiffeid.ID{}
	}
	id, err := x509svid.IDFromCert(r.TLS.PeerCertificates[0])
	if err != nil {
		return spiffeid.ID{}
	}
	return id
}

// AdminHandler serves /healthz (the process is up), /readyz (200 when the
// server is ready, 503 otherwise; one line per condition either way) and
// /metrics from g.
func (s *Server) AdminHandler(g prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		ready, lines := s.status()
		w.Header().Set("content-type", "text/plain; charset=utf-8")
		w.Header().Set("cache-control", "no-store")
		if !ready {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte("not ready\n" + strings.Join(lines, "\n") + "\n"))
			return
		}
		_, _ = w.Write([]byte("ready " + s.engine.Snapshot().Version() + "\n" + strings.Join(lines, "\n") + "\n"))
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	return mux
}
