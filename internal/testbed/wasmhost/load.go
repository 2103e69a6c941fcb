package wasmhost

import (
	"context"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// LoadOptions describes a load run (Host.RunLoad).
type LoadOptions struct {
	// Requests is the total number of requests.
	Requests int
	// Concurrency is the number of client goroutines; goroutine g always
	// uses VM g mod Workers(), like a connection pinned to an Envoy worker.
	// Default: Workers().
	Concurrency int
	// Request builds request i. Default: a GET / with a few headers.
	Request func(i int) Request
	// Upstream answers forwarded requests. Default: 200, no body.
	Upstream Upstream
}

// LoadReport is the outcome of a load run.
type LoadReport struct {
	Requests, Errors int
	FirstError       error
	Elapsed          time.Duration
	// NsPerRequest is wall time per request over the whole run (with
	// Concurrency > 1 this is throughput, not latency).
	NsPerRequest float64
	// HostAllocsPerRequest and HostBytesPerRequest are the Go-side
	// allocations (host and wazero) per request.
	HostAllocsPerRequest, HostBytesPerRequest float64
	// GuestMemoryBytes is each VM's linear memory size after the run: the
	// guest heap Envoy would hold.
	GuestMemoryBytes []uint64
	// HostHeapBytes is the Go heap in use after the run and a GC.
	HostHeapBytes uint64
}

// DefaultRequest is the request RunLoad sends when LoadOptions.Request is nil.
func DefaultRequest(int) Request {
	return Request{Headers: [][2]string{
		{":method", "GET"}, {":path", "/"}, {":authority", "svc.example"}, {":scheme", "http"},
		{"user-agent", "meshguard-load"}, {"accept", "*/*"},
	}}
}

// RunLoad sends opts.Requests requests through the filter and reports the
// cost per request and memory. It is the measuring loop behind the wasm
// benchmarks.
func (h *Host) RunLoad(ctx context.Context, opts LoadOptions) (LoadReport, error) {
	if opts.Concurrency <= 0 {
		opts.Concurrency = len(h.workers)
	}
	if opts.Request == nil {
		opts.Request = DefaultRequest
	}
	var (
		next     atomic.Int64
		errs     atomic.Int64
		firstErr error
		errOnce  sync.Once
		wg       sync.WaitGroup
		before   runtime.MemStats
		after    runtime.MemStats
	)
	runtime.GC()
	runtime.ReadMemStats(&before)
	start := time.Now()
	for g := range opts.Concurrency {
		w := h.workers[g%len(h.workers)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= opts.Requests || ctx.Err() != nil {
					return
				}
				if _, err := w.HandleRequest(ctx, opts.Request(i), opts.Upstream); err != nil {
					errs.Add(1)
					errOnce.Do(func() { firstErr = err })
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	runtime.ReadMemStats(&after)
	rep := LoadReport{
		Requests:   opts.Requests,
		Errors:     int(errs.Load()),
		FirstError: firstErr,
		Elapsed:    elapsed,
	}
	if opts.Requests > 0 {
		n := float64(opts.Requests)
		rep.NsPerRequest = float64(elapsed.Nanoseconds()) / n
		rep.HostAllocsPerRequest = float64(after.Mallocs-before.Mallocs) / n
		rep.HostBytesPerRequest = float64(after.TotalAlloc-before.TotalAlloc) / n
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	rep.HostHeapBytes = after.HeapInuse
	rep.GuestMemoryBytes = h.MemoryStats()
	return rep, ctx.Err()
}
