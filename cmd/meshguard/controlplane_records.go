package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/exporters/otlp/otlplog/otlploggrpc"
	"go.opentelemetry.io/otel/sdk/resource"
	semconv "go.opentelemetry.io/otel/semconv/v1.37.0"

	"github.com/meshguard/meshguard/controlplane/api"
	"github.com/meshguard/meshguard/controlplane/quarantine"
	"github.com/meshguard/meshguard/controlplane/record"
	"github.com/meshguard/meshguard/controlplane/recordexport"
	"github.com/meshguard/meshguard/controlplane/recordstore"
	"github.com/meshguard/meshguard/controlplane/store"
	"github.com/meshguard/meshguard/internal/buildinfo"
)

// records is the control plane's record keeping: the SQLite store and the
// OTLP export, either of which may be off.
type records struct {
	store  *recordstore.Store
	export *recordexport.Exporter
	log    *slog.Logger
	stop   func()
}

func startRecords(ctx context.Context, f *recordFlags, log *slog.Logger, reg prometheus.Registerer) (*records, error) {
	r := &records{log: log, stop: func() {}}
	var stops []func()
	r.stop = func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}
	if f.maxAge < 0 || f.maxMiB < 0 {
		return nil, errors.New("--records-max-age and --records-max-mib must not be negative")
	}
	if f.filterAllowSample < 0 || f.filterAllowSample > 1 {
		return nil, fmt.Errorf("--records-filter-allow-sample %v: want 0 to 1", f.filterAllowSample)
	}
	if f.path != "off" && f.path != "" {
		if err := os.MkdirAll(filepath.Dir(f.path), 0o700); err != nil {
			return nil, fmt.Errorf("--records: %w", err)
		}
		maxAge, maxBytes := f.maxAge, f.maxMiB<<20
		if maxAge == 0 {
			maxAge = -1
		}
		if maxBytes == 0 {
			maxBytes = -1
		}
		st, err := recordstore.Open(ctx, recordstore.Options{Path: f.path, MaxAge: maxAge, MaxBytes: maxBytes, Logger: log, Registerer: reg})
		if err != nil {
			return nil, fmt.Errorf("--records: %w (\"--records off\" runs without a record store)", err)
		}
		runCtx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); st.Run(runCtx) }()
		stops = append(stops, func() { cancel(); <-done; _ = st.Close() })
		r.store = st
		log.Info("record store", "path", f.path, "max_age", f.maxAge.String(), "max_mib", f.maxMiB)
	}
	if f.otlpEndpoint != "" {
		opts := []otlploggrpc.Option{otlploggrpc.WithEndpoint(f.otlpEndpoint)}
		if f.otlpInsecure {
			opts = append(opts, otlploggrpc.WithInsecure())
		}
		exp, err := otlploggrpc.New(ctx, opts...)
		if err != nil {
			r.stop()
			return nil, fmt.Errorf("--otlp-logs-endpoint: %w", err)
		}
		res := resource.NewWithAttributes(semconv.SchemaURL, semconv.ServiceName("meshguard-controlplane"), semconv.ServiceVersion(buildinfo.Version))
		e, err := recordexport.New(recordexport.Options{Exporter: exp, Resource: res, Logger: log, Registerer: reg})
		if err != nil {
			r.stop()
			return nil, err
		}
		runCtx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); e.Run(runCtx) }()
		stops = append(stops, func() { cancel(); <-done })
		r.export = e
		log.Info("OTLP log export", "endpoint", f.otlpEndpoint, "insecure", f.otlpInsecure)
	}
	return r, nil
}

// sink is where the API puts records: the store first (its fullness is the
// back-pressure senders see), then the export.
func (r *records) sink() api.RecordSink {
	if r.store == nil && r.export == nil {
		return nil
	}
	t := record.Tee{}
	if r.store != nil {
		t.First = r.store
	}
	if r.export != nil {
		t.Others = append(t.Others, r.export)
	}
	return t
}

func (r *records) forensics() api.Forensics {
	if r.store == nil {
		return nil
	}
	return r.store
}

// keep appends the control plane's own records; with the store full they
// are dropped and counted (they cannot wait: the hooks hold locks).
func (r *records) keep(rec record.Record) {
	s := r.sink()
	if s == nil {
		return
	}
	if err := s.Append([]record.Record{rec}); errors.Is(err, record.ErrFull) {
		r.store.Dropped(1)
	}
}

func (r *records) quarantineChanged(a quarantine.AuditRecord) {
	r.keep(record.FromQuarantine(a.Time, a.Action, a.Identity, a.By, a.Reason, a.Expires))
}

func (r *records) policyChanged(c store.Change) {
	r.keep(record.FromPolicyChange(time.Now(), c.Source, c.Version, c.Documents, c.Err))
}
