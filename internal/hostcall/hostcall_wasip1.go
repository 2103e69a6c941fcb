//go:build wasip1

package hostcall

import (
	"errors"
	"unsafe"
)

// The signatures are the SDK's own, so that the module imports each
// function once.

//go:wasmimport env proxy_get_header_map_pairs
func proxyGetHeaderMapPairs(mapType uint32, returnData unsafe.Pointer, returnSize *int32) uint32

//go:wasmimport env proxy_get_property
func proxyGetProperty(pathData *byte, pathSize int32, returnData unsafe.Pointer, returnSize *int32) uint32

//go:wasmimport env proxy_get_header_map_value
func proxyGetHeaderMapValue(mapType uint32, keyData *byte, keySize int32, returnData unsafe.Pointer, returnSize *int32) uint32

//go:wasmimport env proxy_get_current_time_nanoseconds
func proxyGetCurrentTimeNanoseconds(returnTime *int64) uint32

// ret holds the host calls' out-parameters. A local variable would do,
// but its address escapes to the heap: two allocations per call. A VM
// runs one call at a time, and nothing between a call and the read of
// its results makes another.
var ret struct {
	data *byte
	size int32
	time int64
}

const (
	mapRequestHeaders  = 0
	mapResponseHeaders = 2
	statusOK           = 0
)

var errHeaders = errors.New("proxy_get_header_map_pairs failed")

// RequestHeaders reads the request headers into scratch (reused across
// requests). The strings alias the buffer the host filled, which stays
// alive while they reference it.
func RequestHeaders(scratch [][2]string) ([][2]string, error) {
	ret.data, ret.size = nil, 0
	if proxyGetHeaderMapPairs(mapRequestHeaders, unsafe.Pointer(&ret.data), &ret.size) != statusOK || ret.data == nil {
		return scratch[:0], errHeaders
	}
	return decodePairs(unsafe.Slice(ret.data, ret.size), scratch[:0])
}

// Property reads a property; wire is its path serialized for the ABI
// (segments joined by NUL bytes), path the same unserialized.
func Property(path []string, wire string) ([]byte, bool) {
	ret.data, ret.size = nil, 0
	if proxyGetProperty(unsafe.StringData(wire), int32(len(wire)), unsafe.Pointer(&ret.data), &ret.size) != statusOK {
		return nil, false
	}
	if ret.data == nil {
		return nil, true
	}
	return unsafe.Slice(ret.data, ret.size), true
}

// ResponseHeader reads one response header; the string aliases the
// host-filled buffer.
func ResponseHeader(name string) (string, bool) {
	ret.data, ret.size = nil, 0
	if proxyGetHeaderMapValue(mapResponseHeaders, unsafe.StringData(name), int32(len(name)), unsafe.Pointer(&ret.data), &ret.size) != statusOK {
		return "", false
	}
	if ret.data == nil {
		return "", true
	}
	return unsafe.String(ret.data, ret.size), true
}

// Now is the proxy's wall clock in unix nanoseconds: one host call, where time.Now makes
// two WASI clock calls.
func Now() int64 {
	if proxyGetCurrentTimeNanoseconds(&ret.time) != statusOK {
		return 0
	}
	return ret.time
}
