// Package hostcall makes the proxy-wasm host calls a filter makes on
// every request without allocating inside the module: the request header
// map into a reused slice, properties by pre-serialized path, one
// response header, the proxy's clock. Inside a wasm VM an allocation is a
// large share of a request's cost; the SDK's versions of these calls
// allocate two to three objects each.
//
// Values returned alias buffers the host filled for the current call:
// they are valid while referenced, and must not be modified. Outside
// wasip1 (tests run the glue natively under proxytest) the SDK's calls
// stand in.
package hostcall
