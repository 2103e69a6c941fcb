package server

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/meshguard/meshguard/internal/spool"
)

// Readiness: the server is ready (/readyz 200, gRPC health SERVING) when a
// policy is loaded, it is not draining, every ReadinessCheck holds, and —
// with the block overflow policy only — the decision log is not stalled.

// MarkReady records that a policy bundle is loaded: call it once the first
// bundle is applied.
func (s *Server) MarkReady() {
	s.loaded.Store(true)
	s.updateHealth()
}

// Ready reports whether the server is ready now.
func (s *Server) Ready() bool {
	ready, _ := s.status()
	return ready
}

// status evaluates readiness: ready, and one line per condition.
func (s *Server) status() (bool, []string) {
	ready := true
	var lines []string
	fail := func(format string, args ...any) {
		ready = false
		lines = append(lines, fmt.Sprintf(format, args...))
	}
	if s.draining.Load() {
		fail("draining: shutting down")
	}
	if snap := s.engine.Snapshot(); snap == nil || !s.loaded.Load() {
		fail("policy: no policy bundle loaded")
	} else {
		lines = append(lines, fmt.Sprintf("policy: %s %s", snap.Version(), snap.Hash()))
	}
	for _, c := range s.readiness {
		if err := c.Check(); err != nil {
			fail("%s: %v", c.Name, err)
		} else {
			lines = append(lines, c.Name+": ok")
		}
	}
	if s.dlog != nil {
		h := s.dlog.Health()
		switch err := h.Err(); {
		case err != nil && h.Overflow == spool.Block:
			fail("decision log: %v; checks wait for it (block overflow policy)", err)
		case err != nil:
			lines = append(lines, fmt.Sprintf("decision log: %v; decisions are dropped and counted (drop overflow policy)", err))
		default:
			lines = append(lines, fmt.Sprintf("decision log: ok (%d written, %d dropped)", h.Written, h.Dropped))
		}
	}
	return ready, lines
}

// updateHealth sets gRPC health and the ready gauge to the readiness now,
// logging a change.
func (s *Server) updateHealth() bool {
	ready, lines := s.status()
	s.healthMu.Lock()
	defer s.healthMu.Unlock()
	if hs := s.health.Load(); hs != nil {
		st := healthpb.HealthCheckResponse_NOT_SERVING
		if ready {
			st = healthpb.HealthCheckResponse_SERVING
		}
		hs.SetServingStatus("", st)
		hs.SetServingStatus(authv3.Authorization_ServiceDesc.ServiceName, st)
	}
	if ready != s.serving {
		s.serving = ready
		if ready {
			s.log.Info("ready", slog.String("status", strings.Join(lines, "; ")))
		} else {
			s.log.Warn("not ready", slog.String("status", strings.Join(lines, "; ")))
		}
	}
	if ready {
		s.metrics.Ready.Set(1)
	} else {
		s.metrics.Ready.Set(0)
	}
	return ready
}

// WatchReadiness re-evaluates readiness every interval until ctx ends, so
// that gRPC health follows conditions that change by themselves (a stale
// policy subscription, a stalled decision log).
func (s *Server) WatchReadiness(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.updateHealth()
		}
	}
}

// Drain turns the server not ready for good (/readyz 503, gRPC health
// NOT_SERVING) while it goes on answering checks: the first step of a
// shutdown, so that load balancers and health-checking Envoys stop sending
// before the listeners stop taking connections.
func (s *Server) Drain() {
	s.draining.Store(true)
	s.updateHealth()
	if hs := s.health.Load(); hs != nil {
		hs.Shutdown() // NOT_SERVING, and no later update may undo it
	}
}
