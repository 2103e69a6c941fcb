package hostcall

import (
	"encoding/binary"
	"reflect"
	"testing"
)

// encode is the proxy-wasm map encoding, written independently of
// decodePairs.
func encode(pairs [][2]string) []byte {
	b := binary.LittleEndian.AppendUint32(nil, uint32(len(pairs)))
	for _, kv := range pairs {
		b = binary.LittleEndian.AppendUint32(b, uint32(len(kv[0])))
		b = binary.LittleEndian.AppendUint32(b, uint32(len(kv[1])))
	}
	for _, kv := range pairs {
		b = append(append(b, kv[0]...), 0)
		b = append(append(b, kv[1]...), 0)
	}
	return b
}

func TestDecodePairs(t *testing.T) {
	for _, want := range [][][2]string{
		{},
		{{":method", "GET"}, {":path", "/a"}, {"x-empty", ""}, {"", "v"}},
		{{"k\x00", "v\x00x"}},
	} {
		scratch := make([][2]string, 1, 8)
		scratch[0] = [2]string{"stale", "stale"}
		got, err := decodePairs(encode(want), scratch[:0])
		if err != nil || !reflect.DeepEqual(append([][2]string{}, got...), append([][2]string{}, want...)) {
			t.Errorf("decodePairs(encode(%q)) = %q, %v", want, got, err)
		}
	}
	for _, bad := range [][]byte{nil, {1, 0}, {1, 0, 0, 0}, {1, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 'a', 0}, {0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}} {
		if _, err := decodePairs(bad, nil); err == nil {
			t.Errorf("decodePairs(%q) accepted", bad)
		}
	}
}

// FuzzDecodePairs: any buffer is refused or decodes to pairs that encode
// back to it, but for the separator bytes, which the decoder (like the
// SDK's) skips without reading.
func FuzzDecodePairs(f *testing.F) {
	f.Add(encode([][2]string{{":method", "GET"}, {"a", ""}}))
	f.Add([]byte{1, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f, 1, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := decodePairs(b, nil)
		if err != nil {
			return
		}
		re := encode(got)
		if len(re) > len(b) {
			t.Fatalf("%q decoded to %q, which encodes to %q", b, got, re)
		}
		masked := append([]byte(nil), b[:len(re)]...)
		p := 4 + 8*len(got)
		for _, kv := range got {
			p += len(kv[0])
			masked[p] = 0
			p += 1 + len(kv[1])
			masked[p] = 0
			p++
		}
		if string(re) != string(masked) {
			t.Fatalf("%q decoded to %q, which encodes to %q", b, got, re)
		}
	})
}

// TestDecodeMap: a map property as Envoy serializes it, padded to at least
// 30 bytes, decodes to an owned map; a malformed one is refused.
func TestDecodeMap(t *testing.T) {
	b := encode([][2]string{{"app", "catalog"}, {"version", "v2"}})
	b = append(b, make([]byte, 30)...)
	m, err := DecodeMap(b)
	if err != nil || len(m) != 2 || m["app"] != "catalog" || m["version"] != "v2" {
		t.Fatalf("DecodeMap = %v, %v", m, err)
	}
	b[len(b)-33] = 'X' // the "v" of "v2": the decoded strings do not alias b
	if m["version"] != "v2" {
		t.Fatal("decoded map aliases the buffer")
	}
	if m, err := DecodeMap(make([]byte, 30)); err != nil || len(m) != 0 {
		t.Fatalf("padded empty map: %v, %v", m, err)
	}
	if _, err := DecodeMap([]byte("\x0a\x0cnot pairs")); err == nil {
		t.Fatal("a protobuf Struct was decoded as pairs")
	}
}

// FuzzDecodeMap: any property value is refused or decodes to a map whose
// pairs encode back to a prefix of it (the rest being padding).
func FuzzDecodeMap(f *testing.F) {
	f.Add(append(encode([][2]string{{"app", "catalog"}, {"version", "v2"}}), make([]byte, 8)...))
	f.Add([]byte("\x0a\x0cnot pairs"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeMap(b)
		if err != nil {
			return
		}
		if len(m) > (len(b)-4)/10 {
			t.Fatalf("%d entries from %d bytes", len(m), len(b))
		}
	})
}
