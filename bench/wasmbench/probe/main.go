// Command probe is a benchmark-only proxy-wasm filter that makes one kind
// of host call per request and nothing else, chosen at build time, to
// price each host call of the floor module on its own:
//
//	for c in none property property4 headers add3 now2 status; do
//		GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -ldflags "-s -w -X main.call=$c" -o /tmp/probe-$c.wasm ./bench/wasmbench/probe
//		go run ./bench/wasmbench -floor /tmp/probe-$c.wasm -requests 20000 | grep floor
//	done
//
// Each result minus the "none" one is the price of that call. Calls that
// return data (a property, the header map, a header) re-enter the module
// to allocate the buffer (proxy_on_memory_allocate); calls that only pass
// data in (adding a header, reading the clock) do not.
package main

import (
	"github.com/meshguard/meshguard/internal/hostcall"
	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm"
	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm/types"
)

func main() {}

// call is set with -ldflags "-X main.call=...".
var call = "none"

// init registers the context (the SDK's reactor entrypoint contract).
func init() {
	proxywasm.SetHttpContext(func(uint32) types.HttpContext { return &httpContext{} })
}

type httpContext struct{ types.DefaultHttpContext }

var (
	connID  = []string{"connection", "id"}
	scratch [][2]string
)

func (*httpContext) OnHttpRequestHeaders(int, bool) types.Action {
	switch call {
	case "property":
		_, _ = hostcall.Property(connID, "connection\x00id")
	case "property4":
		for i := 0; i < 4; i++ {
			_, _ = hostcall.Property(connID, "connection\x00id")
		}
	case "headers":
		h, _ := hostcall.RequestHeaders(scratch)
		scratch = h[:0]
	case "add3":
		_ = proxywasm.AddHttpRequestHeader("x-a", "1")
		_ = proxywasm.AddHttpRequestHeader("x-b", "2")
		_ = proxywasm.AddHttpRequestHeader("x-c", "3")
	case "now2":
		_, _ = hostcall.Now(), hostcall.Now()
	}
	return types.ActionContinue
}

func (*httpContext) OnHttpResponseHeaders(int, bool) types.Action {
	if call == "status" {
		_, _ = hostcall.ResponseHeader(":status")
	}
	return types.ActionContinue
}
