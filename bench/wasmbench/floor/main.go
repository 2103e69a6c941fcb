// Command floor is a benchmark-only proxy-wasm filter that makes the host
// calls the meshguard filter makes on its allow path, the same cheap way
// (internal/hostcall), and nothing else: the request headers,
// connection.id and xds.route_name, the clock, three stamp headers added,
// and the response :status and clock. With upstream Go every host call
// that returns data re-enters the module to allocate its buffer, so this
// is the floor any filter reading these inputs pays; wasmbench reports
// meshguard against it as well as against the no-op filter.
package main

import (
	"github.com/meshguard/meshguard/internal/hostcall"
	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm"
	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm/types"
)

func main() {}

// init registers the context (the SDK's reactor entrypoint contract).
func init() {
	proxywasm.SetHttpContext(func(uint32) types.HttpContext { return &httpContext{} })
}

type httpContext struct{ types.DefaultHttpContext }

var (
	connID    = []string{"connection", "id"}
	routeName = []string{"xds", "route_name"}
	scratch   [][2]string
)

func (*httpContext) OnHttpRequestHeaders(int, bool) types.Action {
	h, err := hostcall.RequestHeaders(scratch)
	scratch = h[:0]
	if err != nil {
		return types.ActionContinue
	}
	_, _ = hostcall.Property(connID, "connection\x00id")
	route, _ := hostcall.Property(routeName, "xds\x00route_name")
	_ = hostcall.Now()
	_ = proxywasm.AddHttpRequestHeader("x-meshguard-route", string(route))
	_ = proxywasm.AddHttpRequestHeader("x-meshguard-policy", "p")
	_ = proxywasm.AddHttpRequestHeader("x-meshguard-bundle-version", "v")
	return types.ActionContinue
}

func (*httpContext) OnHttpResponseHeaders(int, bool) types.Action {
	_, _ = hostcall.ResponseHeader(":status")
	_ = hostcall.Now()
	return types.ActionContinue
}
