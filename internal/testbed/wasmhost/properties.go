package wasmhost

import (
	"encoding/binary"
	"math"
	"strconv"
	"strings"
	"time"
)

// Properties are Envoy attributes (proxy_get_property) keyed by their dotted
// path, e.g. "connection.uri_san_peer_certificate" or "xds.route_name". The
// guest asks with path segments separated by NUL bytes; the host looks the
// path up with the segments joined by ".". Values are stored in the encoding
// Envoy uses on the wire: strings and bytes raw, integers as 8-byte little
// endian, booleans as one byte, timestamps and durations as int64
// nanoseconds, string maps in the proxy-wasm map encoding. Use the Set*
// methods to build them.
type Properties map[string][]byte

// SetString sets a string attribute (source.address, xds.route_name,
// connection.uri_san_peer_certificate, ...).
func (p Properties) SetString(path, v string) Properties {
	p[path] = []byte(v)
	return p
}

// SetBytes sets a bytes attribute.
func (p Properties) SetBytes(path string, v []byte) Properties {
	p[path] = append([]byte(nil), v...)
	return p
}

// SetBool sets a boolean attribute (connection.mtls).
func (p Properties) SetBool(path string, v bool) Properties {
	b := byte(0)
	if v {
		b = 1
	}
	p[path] = []byte{b}
	return p
}

// SetInt sets an integer attribute (destination.port, response.code).
func (p Properties) SetInt(path string, v int64) Properties {
	p[path] = binary.LittleEndian.AppendUint64(nil, uint64(v))
	return p
}

// SetUint sets an unsigned integer attribute.
func (p Properties) SetUint(path string, v uint64) Properties {
	p[path] = binary.LittleEndian.AppendUint64(nil, v)
	return p
}

// SetFloat sets a double attribute.
func (p Properties) SetFloat(path string, v float64) Properties {
	p[path] = binary.LittleEndian.AppendUint64(nil, math.Float64bits(v))
	return p
}

// SetTime sets a timestamp attribute (request.time).
func (p Properties) SetTime(path string, t time.Time) Properties {
	return p.SetInt(path, t.UnixNano())
}

// SetDuration sets a duration attribute (request.duration).
func (p Properties) SetDuration(path string, d time.Duration) Properties {
	return p.SetInt(path, int64(d))
}

// SetMap sets a string-map attribute (request.headers, metadata maps).
func (p Properties) SetMap(path string, m [][2]string) Properties {
	pairs := make([]pair, len(m))
	for i, kv := range m {
		pairs[i] = pair{k: kv[0], v: kv[1]}
	}
	b := make([]byte, pairsSize(pairs))
	encodePairs(b, pairs)
	p[path] = b
	return p
}

// derivedProperty derives the request.* and response.* attributes Envoy
// computes from the headers. Explicit Properties take precedence.
func (s *stream) derivedProperty(path string) ([]byte, bool) {
	switch path {
	case "request.path":
		return s.reqHeaderBytes(":path")
	case "request.url_path":
		v, ok := s.reqHeaders.get(":path")
		if !ok {
			return nil, false
		}
		if i := strings.IndexByte(v, '?'); i >= 0 {
			v = v[:i]
		}
		return []byte(v), true
	case "request.host":
		return s.reqHeaderBytes(":authority")
	case "request.method":
		return s.reqHeaderBytes(":method")
	case "request.scheme":
		return s.reqHeaderBytes(":scheme")
	case "request.id":
		return s.reqHeaderBytes("x-request-id")
	case "request.referer":
		return s.reqHeaderBytes("referer")
	case "request.useragent":
		return s.reqHeaderBytes("user-agent")
	case "request.time":
		return binary.LittleEndian.AppendUint64(nil, uint64(s.start.UnixNano())), true
	case "request.headers":
		return encodeHeaderMap(s.reqHeaders), true
	case "response.headers":
		if s.respHeaders == nil {
			return nil, false
		}
		return encodeHeaderMap(s.respHeaders), true
	case "response.code":
		v, ok := s.respHeaders.get(":status")
		if !ok {
			return nil, false
		}
		code, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return nil, false
		}
		return binary.LittleEndian.AppendUint64(nil, uint64(code)), true
	}
	return nil, false
}

func (s *stream) reqHeaderBytes(key string) ([]byte, bool) {
	v, ok := s.reqHeaders.get(key)
	if !ok {
		return nil, false
	}
	return []byte(v), true
}

func encodeHeaderMap(m headerMap) []byte {
	b := make([]byte, pairsSize(m))
	encodePairs(b, m)
	return b
}
