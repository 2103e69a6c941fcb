// Command noop is a proxy-wasm HTTP filter that does nothing: it returns
// Continue from every callback. It is built with the same toolchain and SDK as
// meshguard's filter so that benchmarks can subtract the cost of the host, the
// SDK and the Go runtime from the cost of meshguard's own logic.
//
// Build: GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o noop.wasm ./wasm/noop
package main

import (
	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm"
	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm/types"
)

func main() {}

func init() {
	// The SDK's only way to register a filter is from init; with
	// -buildmode=c-shared, main never runs.
	proxywasm.SetHttpContext(func(uint32) types.HttpContext { return &httpContext{} })
}

// httpContext embeds the SDK's defaults, which return ActionContinue from every
// HTTP callback.
type httpContext struct {
	types.DefaultHttpContext
}
