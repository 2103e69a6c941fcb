package wire

import "errors"

// RawJSON is a raw encoded JSON value, like encoding/json's RawMessage and
// with the same MarshalJSON and UnmarshalJSON, declared here so that the
// package does not import encoding/json: the wasm filter links it, and
// encoding/json is a large part of a module whose size is budgeted. A
// json.RawMessage or a []byte converts to it.
type RawJSON []byte

// MarshalJSON returns m, or null when m is nil.
func (m RawJSON) MarshalJSON() ([]byte, error) {
	if m == nil {
		return []byte("null"), nil
	}
	return m, nil
}

// UnmarshalJSON sets *m to a copy of data.
func (m *RawJSON) UnmarshalJSON(data []byte) error {
	if m == nil {
		return errors.New("wire.RawJSON: UnmarshalJSON on nil pointer")
	}
	*m = append((*m)[0:0], data...)
	return nil
}
