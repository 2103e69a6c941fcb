package wasmhost

import (
	"encoding/binary"
	"errors"
)

// status is a proxy-wasm ABI v0.2.1 WasmResult.
type status uint32

const (
	statusOK              status = 0
	statusNotFound        status = 1
	statusBadArgument     status = 2
	statusSerialization   status = 3
	statusParseFailure    status = 4
	statusEmpty           status = 7
	statusCasMismatch     status = 8
	statusInternalFailure status = 10
	statusUnimplemented   status = 12
)

// mapType selects a header map (proxy_*_header_map_*).
type mapType uint32

const (
	mapRequestHeaders       mapType = 0
	mapRequestTrailers      mapType = 1
	mapResponseHeaders      mapType = 2
	mapResponseTrailers     mapType = 3
	mapGrpcReceiveInitial   mapType = 4
	mapGrpcReceiveTrailing  mapType = 5
	mapHTTPCallResponseHdrs mapType = 6
	mapHTTPCallResponseTrls mapType = 7
)

// bufferType selects a buffer (proxy_get/set_buffer_bytes).
type bufferType uint32

const (
	bufferRequestBody         bufferType = 0
	bufferResponseBody        bufferType = 1
	bufferDownstreamData      bufferType = 2
	bufferUpstreamData        bufferType = 3
	bufferHTTPCallResponse    bufferType = 4
	bufferGrpcReceive         bufferType = 5
	bufferVMConfiguration     bufferType = 6
	bufferPluginConfiguration bufferType = 7
	bufferCallData            bufferType = 8
)

// streamType selects a direction (proxy_continue_stream, proxy_close_stream).
type streamType uint32

const (
	streamRequest    streamType = 0
	streamResponse   streamType = 1
	streamDownstream streamType = 2
	streamUpstream   streamType = 3
)

// action is what a stream callback returns.
const (
	actionContinue = 0
	actionPause    = 1
)

// errMalformedMap reports a serialized header map that does not follow the
// proxy-wasm encoding.
var errMalformedMap = errors.New("malformed serialized map")

// pairsSize is the size of pairs in the proxy-wasm map encoding: a count,
// then a (key size, value size) table, then each key and value followed by
// a NUL byte, all sizes 32-bit little endian.
func pairsSize(pairs []pair) int {
	n := 4
	for _, p := range pairs {
		n += 8 + len(p.k) + len(p.v) + 2
	}
	return n
}

// encodePairs writes pairs into dst, which must be pairsSize(pairs) long.
func encodePairs(dst []byte, pairs []pair) {
	binary.LittleEndian.PutUint32(dst, uint32(len(pairs)))
	sizes := dst[4:]
	data := dst[4+8*len(pairs):]
	for i, p := range pairs {
		binary.LittleEndian.PutUint32(sizes[8*i:], uint32(len(p.k)))
		binary.LittleEndian.PutUint32(sizes[8*i+4:], uint32(len(p.v)))
		n := copy(data, p.k)
		data[n] = 0
		data = data[n+1:]
		n = copy(data, p.v)
		data[n] = 0
		data = data[n+1:]
	}
}

// decodePairs parses the proxy-wasm map encoding, copying keys and values out
// of b (which usually aliases guest memory). An empty b is an empty map.
func decodePairs(b []byte) ([]pair, error) {
	if len(b) == 0 {
		return nil, nil
	}
	if len(b) < 4 {
		return nil, errMalformedMap
	}
	n := binary.LittleEndian.Uint32(b)
	// Each pair needs at least 8 bytes of sizes and 2 NULs.
	if uint64(n)*10 > uint64(len(b)-4) {
		return nil, errMalformedMap
	}
	sizes := b[4 : 4+8*int(n)]
	data := b[4+8*int(n):]
	out := make([]pair, n)
	for i := range out {
		ks := uint64(binary.LittleEndian.Uint32(sizes[8*i:]))
		vs := uint64(binary.LittleEndian.Uint32(sizes[8*i+4:]))
		if ks+vs+2 > uint64(len(data)) {
			return nil, errMalformedMap
		}
		k := string(data[:ks])
		data = data[ks+1:]
		v := string(data[:vs])
		data = data[vs+1:]
		out[i] = pair{k: k, v: v}
	}
	return out, nil
}
