package wasmhost_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/meshguard/meshguard/internal/testbed/wasmhost"
)

// TestConcurrentStreams runs many goroutines on several VMs at once, mixing
// callouts (which interleave streams on one VM), shared data CAS updates,
// local responses and body rewrites, while the configuration is swapped,
// ticks fire and stats are read. Run with -race.
func TestConcurrentStreams(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(time.Millisecond) // keep streams paused long enough to interleave
		w.Header().Set("X-Echo", r.Header.Get("x-from"))
		_, _ = w.Write([]byte("ok"))
	}))
	t.Cleanup(srv.Close)
	const vms, goroutines, each = 3, 8, 20
	h := newHost(t, "abitest", wasmhost.Config{
		VMs: vms, ManualTicks: true, Clusters: map[string]string{"authz": srv.URL},
		PluginConfig: []byte(`{"tag":"a","tickMillis":1000}`),
	})
	var incr atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, goroutines*each)
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := h.Worker(g % vms)
			for i := range each {
				var check func(wasmhost.Result) error
				var req wasmhost.Request
				switch i % 4 {
				case 0:
					req = get("callout", [2]string{"x-cluster", "authz"}, [2]string{"x-callout-path", "/c"})
					check = func(r wasmhost.Result) error {
						if header(r.Upstream.Headers, "x-callout-body") != "ok" {
							return fmt.Errorf("callout result lost: %v", r.Upstream.Headers)
						}
						return nil
					}
				case 1:
					req = get("shared-incr")
					incr.Add(1)
					check = func(r wasmhost.Result) error {
						if header(r.Upstream.Headers, "x-counter") == "" {
							return fmt.Errorf("no counter: %v", r.Upstream.Headers)
						}
						return nil
					}
				case 2:
					req = get("deny")
					check = func(r wasmhost.Result) error {
						if r.Local == nil || r.Local.Status != 403 {
							return fmt.Errorf("not denied: %+v", r)
						}
						return nil
					}
				case 3:
					req = get("body")
					req.Body = []byte("g" + strconv.Itoa(g))
					check = func(r wasmhost.Result) error {
						if want := ">G" + strconv.Itoa(g) + "!"; string(r.Upstream.Body) != want {
							return fmt.Errorf("body %q, want %q", r.Upstream.Body, want)
						}
						return nil
					}
				}
				res, err := w.HandleRequest(context.Background(), req, nil)
				if err == nil {
					err = check(res)
				}
				if err != nil {
					errc <- err
				}
			}
		}()
	}
	stop := make(chan struct{})
	var side sync.WaitGroup
	side.Add(1)
	go func() {
		defer side.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if err := h.Reconfigure([]byte(fmt.Sprintf(`{"tag":"t%d","tickMillis":1000}`, i))); err != nil {
				errc <- err
			}
			if err := h.Tick(); err != nil {
				errc <- err
			}
			_ = h.MemoryStats()
			_ = h.Metrics().Snapshot()
			time.Sleep(10 * time.Millisecond)
		}
	}()
	wg.Wait()
	close(stop)
	side.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	if got := h.Metrics().Value("abitest_requests_total"); got != goroutines*each {
		t.Errorf("requests = %d, want %d", got, goroutines*each)
	}
	if got := h.Metrics().Value("abitest_inflight"); got != 0 {
		t.Errorf("inflight = %d after all streams ended", got)
	}
	if v, _, _ := h.SharedData().Get("counter"); string(v) != strconv.FormatInt(incr.Load(), 10) {
		t.Errorf("shared counter = %s, want %d: lost CAS updates", v, incr.Load())
	}
}

// TestCloseLeaksNothing closes a Host while real tickers run and callouts
// are in flight, and checks that no goroutine survives.
func TestCloseLeaksNothing(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	h, err := wasmhost.New(context.Background(), wasmhost.ModuleForTest("abitest"), wasmhost.Config{
		VMs: 2, CompilationCache: wasmhost.CacheForTest(),
		Clusters:     map[string]string{"authz": srv.URL, "cp": srv.URL},
		PluginConfig: []byte(`{"tickMillis":2,"tickCluster":"cp"}`),
	})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "ticks", func() bool { return h.Metrics().Value("abitest_ticks_total") >= 4 })
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = h.Worker(i%2).HandleRequest(context.Background(),
				get("callout", [2]string{"x-cluster", "authz"}, [2]string{"x-callout-path", "/slow"}), nil)
		}()
	}
	time.Sleep(50 * time.Millisecond) // let the callouts reach the server
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	for _, err := range errs {
		if !errors.Is(err, wasmhost.ErrClosed) {
			t.Errorf("stream pending at Close ended with %v, want ErrClosed", err)
		}
	}
	close(release)
	srv.Close()
}
