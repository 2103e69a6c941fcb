// Package wasmhost runs proxy-wasm filters (ABI v0.2.1) in-process on wazero, the
// way Envoy runs them, so that meshguard's compiled filter can be exercised by
// tests, benchmarks, the e2e suite and the demo on machines without Envoy.
//
// A Host compiles a module once and instantiates it once per simulated Envoy
// worker (a Worker). Each Worker is single-threaded like an Envoy worker: its
// guest calls are serialized by a mutex, while different Workers run in
// parallel. Clocks are the host's real clocks. Shared data (with CAS), shared
// queues and metrics are host-wide, as they are per vm_id in Envoy.
//
// The lifecycle follows Envoy: _initialize (the wasip1 reactor entry point),
// proxy_on_context_create for the root context, proxy_on_vm_start,
// proxy_on_configure (a refused configuration fails New or Reconfigure), then
// per stream proxy_on_context_create, the request and response callbacks,
// proxy_on_log, proxy_on_done and proxy_on_delete. HTTP callouts made with
// proxy_http_call are performed for real (net/http to a base URL per cluster,
// or a Go callback) and answered with proxy_on_http_call_response; ticks come
// from real timers, or from Host.Tick in deterministic tests.
//
// See docs/wasm-host.md for what differs from Envoy.
package wasmhost
