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
// the header map, the serialized path of a property), and allocation is
// a large share of a request's cost inside a wasm VM. The signatures are
// the SDK's own, so the module imports each function once.

//go:wasmimport env proxy_get_header_map_pairs
func proxyGetHeaderMapPairs(mapType uint32, returnData unsafe.Pointer, returnSize *int32) uint32

//go:wasmimport env proxy_get_property
func proxyGetProperty(pathData *byte, pathSize int32, returnData unsafe.Pointer, returnSize *int32) uint32

//go:wasmimport env proxy_get_current_time_nanoseconds
func proxyGetCurrentTimeNanoseconds(returnTime *int64) uint32

const (
	mapRequestHeaders = 0
	statusOK          = 0
)

var errHeaders = errors.New("proxy_get_header_map_pairs failed")

// requestHeaders reads the request headers into scratch (reused across
// requests). The strings alias the buffer the host filled, which stays
// alive while they reference it.
func requestHeaders(scratch [][2]string) ([][2]string, error) {
	var raw *byte
	var size int32
	if proxyGetHeaderMapPairs(mapRequestHeaders, unsafe.Pointer(&raw), &size) != statusOK || raw == nil {
		return scratch[:0], errHeaders
	}
	return decodePairs(unsafe.Slice(raw, size), scratch[:0])
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
	var raw *byte
	var size int32
	if proxyGetProperty(unsafe.StringData(p.Wire), int32(len(p.Wire)), unsafe.Pointer(&raw), &size) != statusOK {
		return nil, false
	}
	if raw == nil {
		return nil, true
	}
	return unsafe.Slice(raw, size), true
}

// clock is the proxy's wall clock: one host call, where time.Now makes
// two WASI clock calls.
func clock() int64 {
	var t int64
	if proxyGetCurrentTimeNanoseconds(&t) != statusOK {
		return 0
	}
	return t
}
