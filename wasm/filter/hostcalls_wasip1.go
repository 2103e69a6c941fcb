//go:build wasip1

package main

import (
	"encoding/binary"
	"errors"
	"unsafe"

	"github.com/meshguard/meshguard/wasm/internal/filtercore"
)

// Host calls made on every request, written against the proxy-wasm ABI
// directly: the SDK's versions allocate on each call (a [][2]string for
// the header map, the serialized path of a property, and the two return
// slots whose addresses go to the host, which escape to the heap), and
// allocation is a large share of a request's cost inside a wasm VM. The
// signatures are the SDK's own, so the module imports each function once.

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

// requestHeaders reads the request headers into scratch (reused across
// requests). The strings alias the buffer the host filled, which stays
// alive while they reference it.
func requestHeaders(scratch [][2]string) ([][2]string, error) {
	ret.data, ret.size = nil, 0
	if proxyGetHeaderMapPairs(mapRequestHeaders, unsafe.Pointer(&ret.data), &ret.size) != statusOK || ret.data == nil {
		return scratch[:0], errHeaders
	}
	return decodePairs(unsafe.Slice(ret.data, ret.size), scratch[:0])
}

var errMalformed = errors.New("malformed header map")

// decodePairs parses the proxy-wasm map encoding (a count, a table of key
// and value sizes, then the NUL-terminated keys and values) into out,
// aliasing b.
func decodePairs(b []byte, out [][2]string) ([][2]string, error) {
	if len(b) < 4 {
		return out, errMalformed
	}
	n := int(binary.LittleEndian.Uint32(b))
	if n < 0 || n > (len(b)-4)/10 {
		return out, errMalformed
	}
	sizes, data := b[4:4+8*n], b[4+8*n:]
	for i := 0; i < n; i++ {
		ks := int(binary.LittleEndian.Uint32(sizes[8*i:]))
		vs := int(binary.LittleEndian.Uint32(sizes[8*i+4:]))
		if ks < 0 || vs < 0 || ks+vs+2 > len(data) {
			return out, errMalformed
		}
		k := unsafe.String(unsafe.SliceData(data), ks)
		v := unsafe.String(unsafe.SliceData(data[ks+1:]), vs)
		out = append(out, [2]string{k, v})
		data = data[ks+vs+2:]
	}
	return out, nil
}

// property reads a property by its serialized path.
func property(p filtercore.Prop) ([]byte, bool) {
	ret.data, ret.size = nil, 0
	if proxyGetProperty(unsafe.StringData(p.Wire), int32(len(p.Wire)), unsafe.Pointer(&ret.data), &ret.size) != statusOK {
		return nil, false
	}
	if ret.data == nil {
		return nil, true
	}
	return unsafe.Slice(ret.data, ret.size), true
}

// responseHeader reads one response header; the string aliases the
// host-filled buffer.
func responseHeader(name string) (string, bool) {
	ret.data, ret.size = nil, 0
	if proxyGetHeaderMapValue(mapResponseHeaders, unsafe.StringData(name), int32(len(name)), unsafe.Pointer(&ret.data), &ret.size) != statusOK {
		return "", false
	}
	if ret.data == nil {
		return "", true
	}
	return unsafe.String(ret.data, ret.size), true
}

// clock is the proxy's wall clock: one host call, where time.Now makes
// two WASI clock calls.
func clock() int64 {
	if proxyGetCurrentTimeNanoseconds(&ret.time) != statusOK {
		return 0
	}
	return ret.time
}
