package wire

import "github.com/meshguard/meshguard/policies/internal/strictjson"

//go:generate go run ../internal/jsongen -pkg wire

// DecodeFilterConfig decodes a plugin configuration strictly: it accepts
// and refuses exactly what encoding/json's Decoder with
// DisallowUnknownFields does (followed by a check for trailing data),
// without reflection, which keeps encoding/json out of the wasm filter.
func DecodeFilterConfig(data []byte) (FilterConfig, error) {
	var fc FilterConfig
	err := strictjson.Decode(data, "the JSON object", fc.decodeJSON)
	return fc, err
}

// AppendJSON appends the batch's JSON encoding, the bytes json.Marshal
// writes for it.
func (b *EventBatch) AppendJSON(dst []byte) []byte {
	e := strictjson.Encoder{B: dst}
	b.encodeJSON(&e)
	return e.B
}

// AppendJSON appends the body's JSON encoding, the bytes json.Marshal
// writes for it.
func (b *DenyBody) AppendJSON(dst []byte) []byte {
	e := strictjson.Encoder{B: dst}
	b.encodeJSON(&e)
	return e.B
}
