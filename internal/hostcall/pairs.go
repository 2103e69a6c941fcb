package hostcall

import (
	"encoding/binary"
	"errors"
	"strings"
	"unsafe"
)

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

// DecodeMap parses a string map property in the proxy-wasm map encoding
// (how Envoy returns a map-valued attribute such as node.metadata.LABELS)
// into a map that owns its strings. Bytes after the encoded pairs are
// ignored: Envoy pads short encodings.
func DecodeMap(b []byte) (map[string]string, error) {
	pairs, err := decodePairs(b, nil)
	if err != nil {
		return nil, err
	}
	m := make(map[string]string, len(pairs))
	for _, kv := range pairs {
		m[strings.Clone(kv[0])] = strings.Clone(kv[1])
	}
	return m, nil
}
