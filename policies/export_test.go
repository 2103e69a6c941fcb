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

// WithoutViews returns a copy of s that keeps no target views: every
// decision takes the uncached path, as each did before views existed.
func WithoutViews(s *Snapshot) *Snapshot {
	c := *s
	c.views = viewCache{}
	return &c
}

// Views reports how many target views s holds and how many it can hold.
func Views(s *Snapshot) (n, capacity int) {
	for i := range s.views.slots {
		if s.views.slots[i].Load() != nil {
			n++
		}
	}
	return n, len(s.views.slots)
}
