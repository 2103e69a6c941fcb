package policies

import "github.com/meshguard/meshguard/policies/internal/strictjson"

// DecodeBundleJSON is DecodeBundle's JSON step alone, without the format,
// hash and validation checks, for the codec comparison tests.
func DecodeBundleJSON(data []byte) (Bundle, error) {
	var b Bundle
	err := strictjson.Decode(data, "the bundle", b.decodeJSON)
	return b, err
}

// EncodeSetJSON is the encoding the bundle hash is computed over.
func EncodeSetJSON(s *Set) []byte {
	var e strictjson.Encoder
	s.encodeJSON(&e)
	return e.B
}
