package console

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/meshguard/meshguard/controlplane/quarantine"
	"github.com/meshguard/meshguard/controlplane/state/disk"
	"github.com/meshguard/meshguard/controlplane/store"
	"github.com/meshguard/meshguard/policies"
)

func newManager(t *testing.T) (*quarantine.Manager, *store.Store) {
	t.Helper()
	st, err := store.New(store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.SetSource("files", policies.Set{}); err != nil {
		t.Fatal(err)
	}
	ds, err := disk.Open(t.TempDir(), disk.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ds.Close() })
	qm, err := quarantine.New(quarantine.Options{Store: ds, Sink: st})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(qm.Close)
	if err := qm.Load(context.Background()); err != nil {
		t.Fatal(err)
	}
	return qm, st
}

func jsonRequest(method, path, body string, hdr map[string]string) *http.Request {
	r := httptest.NewRequest(method, path, strings.NewReader(body))
	r.Header.Set("Content-Type", "application/json")
	for k, v := range hdr {
		r.Header.Set(k, v)
	}
	return r
}

// discard is a ResponseWriter that keeps nothing.
type discard struct{}

func (discard) Header() http.Header         { return http.Header{} }
func (discard) Write(b []byte) (int, error) { return len(b), nil }
func (discard) WriteHeader(int)             {}

func testutilCounter(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return -1
	}
	return m.GetCounter().GetValue()
}
