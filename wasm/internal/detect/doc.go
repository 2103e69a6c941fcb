// Package detect holds the wasm filter's anomaly and lateral-movement
// detectors. It is pure Go with no host calls so it is unit-tested with plain
// `go test` and runs unchanged inside the proxy-wasm module.
//
// Every detector is O(1) per request and all state is bounded: a fixed-size,
// set-associative table of per-identity records (least recently seen is
// evicted), fixed-size bitmaps for distinct counts (linear counting) and a
// fixed-size cache of service-graph edges. Nothing here grows with traffic.
package detect
