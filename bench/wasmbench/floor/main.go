// Command floor is a benchmark-only proxy-wasm filter that makes the host
// calls the meshguard filter makes on its allow path (request headers,
// connection.id, xds.route_name, a header replace, the response :status)
// and nothing else. With upstream Go every host call that returns data
// re-enters the module to allocate the buffer, so this is the floor any
// filter reading these inputs pays; wasmbench reports meshguard against it
// as well as against the no-op filter.
package main

import (
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
)

func (*httpContext) OnHttpRequestHeaders(int, bool) types.Action {
	h, err := proxywasm.GetHttpRequestHeaders()
	if err != nil {
		return types.ActionContinue
	}
	_, _ = proxywasm.GetProperty(connID)
	route, _ := proxywasm.GetProperty(routeName)
	h = append(h, [2]string{"x-meshguard-route", string(route)}, [2]string{"x-meshguard-policy", "p"}, [2]string{"x-meshguard-bundle-version", "v"})
	_ = proxywasm.ReplaceHttpRequestHeaders(h)
	return types.ActionContinue
}

func (*httpContext) OnHttpResponseHeaders(int, bool) types.Action {
	_, _ = proxywasm.GetHttpResponseHeader(":status")
	return types.ActionContinue
}
