// Package loader feeds policy bundles to the authz server's engine: it
// compiles each update and swaps it in atomically, and it rejects an invalid
// update whole (logging every error and counting it) so that the last good
// version keeps serving. Updates come from Sources: files and directories
// watched by polling under the reload rules of package policyfile
// (FileSource), and the control plane's ADS subscription, which also tells
// how fresh its bundle is (ADSSource). Several sources may run at once; the
// latest valid update wins.
package loader

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/meshguard/meshguard/authz/metrics"
	"github.com/meshguard/meshguard/policies"
)

// Update is one candidate bundle from a source, or the error that kept the
// source from building one (a file that does not parse, say).
type Update struct {
	Bundle *policies.Bundle
	Err    error
	// Origin says where it came from (a path, an xDS version), for logs.
	Origin string
}

// ApplyFunc installs an update; its error means the update was rejected and
// the previous version still serves.
type ApplyFunc func(Update) error

// Source produces updates until its context ends.
type Source interface {
	// Name is a short, bounded label for metrics and logs (file, ads).
	Name() string
	// Run calls apply for every new update and returns when ctx is done
	// (nil) or the source cannot go on (an error).
	Run(ctx context.Context, apply ApplyFunc) error
}

// Loader compiles and swaps bundles into an Engine.
type Loader struct {
	engine  *policies.Engine
	log     *slog.Logger
	metrics *metrics.Metrics
	compile func(*policies.Bundle) (*policies.Snapshot, error)

	mu      sync.Mutex // serializes applies
	current *policies.Bundle
	ready   chan struct{}
	once    sync.Once
}

// New returns a Loader for engine. log and m must not be nil.
func New(engine *policies.Engine, log *slog.Logger, m *metrics.Metrics) *Loader {
	return &Loader{engine: engine, log: log, metrics: m, compile: policies.Compile, ready: make(chan struct{})}
}

// Ready is closed once a bundle has been applied.
func (l *Loader) Ready() <-chan struct{} { return l.ready }

// Current is the bundle being served, or nil.
func (l *Loader) Current() *policies.Bundle {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.current
}

// Apply compiles u and swaps it in. It returns an error, and leaves the
// engine as it was, when the update carries one or does not compile.
func (l *Loader) Apply(source string, u Update) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	err := u.Err
	if err == nil && u.Bundle == nil {
		err = errors.New("empty update")
	}
	if err == nil && l.current != nil && l.current.Hash == u.Bundle.Hash && l.current.Version == u.Bundle.Version {
		l.metrics.Reloads.WithLabelValues(source, "unchanged").Inc()
		return nil
	}
	var snap *policies.Snapshot
	if err == nil {
		snap, err = l.compile(u.Bundle)
		if err != nil {
			err = fmt.Errorf("compile bundle %s: %w", u.Bundle.Version, err)
		}
	}
	if err != nil {
		l.metrics.Reloads.WithLabelValues(source, "rejected").Inc()
		attrs := []any{slog.String("source", source), slog.String("origin", u.Origin), slog.String("error", err.Error())}
		if l.current != nil {
			attrs = append(attrs, slog.String("serving_version", l.current.Version))
		}
		var se *policies.SetError
		if errors.As(err, &se) {
			for _, d := range se.Diagnostics {
				l.log.Error("policy update error", slog.String("source", source), slog.String("origin", u.Origin), slog.String("diagnostic", d.String()))
			}
		}
		l.log.Error("policy update rejected; the previous version keeps serving", attrs...)
		return err
	}
	l.engine.Swap(snap)
	l.current = u.Bundle
	l.metrics.Reloads.WithLabelValues(source, "applied").Inc()
	l.metrics.PolicyVersion.Reset()
	l.metrics.PolicyVersion.WithLabelValues(snap.Version(), snap.Hash()).Set(1)
	l.metrics.PolicyLoaded.Set(float64(time.Now().UnixNano()) / 1e9)
	l.log.Info("policy applied", slog.String("source", source), slog.String("origin", u.Origin),
		slog.String("version", snap.Version()), slog.String("hash", snap.Hash()))
	l.once.Do(func() { close(l.ready) })
	return nil
}

// Run runs every source until ctx is done. A source that fails is logged
// and restarted after a pause; the last good bundle keeps serving meanwhile.
func (l *Loader) Run(ctx context.Context, sources ...Source) {
	var wg sync.WaitGroup
	for _, s := range sources {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				err := s.Run(ctx, func(u Update) error { return l.Apply(s.Name(), u) })
				if ctx.Err() != nil {
					return
				}
				l.log.Error("policy source stopped; restarting", slog.String("source", s.Name()), slog.Any("error", err))
				select {
				case <-ctx.Done():
					return
				case <-time.After(time.Second):
				}
			}
		}()
	}
	wg.Wait()
}
