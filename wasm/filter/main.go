// Command filter is meshguard's proxy-wasm HTTP filter, built with the
// upstream Go toolchain as a WASI reactor:
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o bin/meshguard-filter.wasm ./wasm/filter
//
// This package is only the glue between the proxy-wasm Go SDK and
// wasm/internal/filtercore, where the behaviour lives.
package main

import (
	"github.com/meshguard/meshguard/internal/hostcall"
	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm"
)

// main is never called in a c-shared (reactor) build; Go requires it.
func main() {}

// init registers the VM context: the SDK's reactor entrypoint contract
// (the host runs _initialize, which runs init, before any proxy_on_* call).
// This is the one place the process touches global state.
func init() {
	proxywasm.SetVMContext(newVMContext(hostcall.Now))
}
