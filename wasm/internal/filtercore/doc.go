// Package filtercore is the meshguard proxy-wasm filter without the SDK: it
// parses the plugin configuration, establishes the caller's identity from
// connection properties, enforces the compiled policy, runs the detectors,
// answers locally when it must and batches events for the control plane.
//
// It talks to the proxy only through the small Host and Stream interfaces,
// so the whole request path is unit-tested with plain `go test`; the main
// package in wasm/filter adapts them to proxy-wasm host calls.
package filtercore
