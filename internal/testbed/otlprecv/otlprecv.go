// Package otlprecv runs the OpenTelemetry Collector's own OTLP receiver
// (go.opentelemetry.io/collector/receiver/otlpreceiver) in process, on a
// loopback port with gRPC only, as a collector's `otlp` receiver serves it:
// what meshguard exports is tested against the real protocol, not an
// imitation of it.
package otlprecv

import (
	"context"
	"testing"

	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/component/componenttest"
	"go.opentelemetry.io/collector/config/configoptional"
	"go.opentelemetry.io/collector/consumer"
	"go.opentelemetry.io/collector/receiver"
	"go.opentelemetry.io/collector/receiver/otlpreceiver"
	"go.opentelemetry.io/collector/receiver/receivertest"

	"github.com/meshguard/meshguard/internal/testbed/freeport"
)

// Logs starts a receiver whose logs go to consume, and returns its
// address; it stops when the test ends.
func Logs(t testing.TB, consume consumer.ConsumeLogsFunc) string {
	t.Helper()
	next, err := consumer.NewLogs(consume)
	if err != nil {
		t.Fatal(err)
	}
	return start(t, func(f receiver.Factory, set receiver.Settings, cfg component.Config) (component.Component, error) {
		return f.CreateLogs(context.Background(), set, cfg, next)
	})
}

// Traces starts a receiver whose spans go to consume, and returns its
// address; it stops when the test ends.
func Traces(t testing.TB, consume consumer.ConsumeTracesFunc) string {
	t.Helper()
	next, err := consumer.NewTraces(consume)
	if err != nil {
		t.Fatal(err)
	}
	return start(t, func(f receiver.Factory, set receiver.Settings, cfg component.Config) (component.Component, error) {
		return f.CreateTraces(context.Background(), set, cfg, next)
	})
}

type createFunc func(receiver.Factory, receiver.Settings, component.Config) (component.Component, error)

func start(t testing.TB, create createFunc) string {
	t.Helper()
	addr := freeport.MustAddr(t) // the receiver takes an address, not a listener
	f := otlpreceiver.NewFactory()
	cfg := f.CreateDefaultConfig().(*otlpreceiver.Config)
	cfg.Protocols.GRPC.GetOrInsertDefault().NetAddr.Endpoint = addr
	cfg.Protocols.HTTP = configoptional.None[otlpreceiver.HTTPConfig]()
	r, err := create(f, receivertest.NewNopSettings(f.Type()), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(context.Background(), componenttest.NewNopHost()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Shutdown(context.Background()) })
	return addr
}
