// Package strictjson reads and writes JSON without reflection, for the
// decoders and encoders generated for meshguard's configuration types
// (policies/internal/jsongen). It exists so that the proxy-wasm filter does
// not link encoding/json, whose reflection-driven codec is a large part of
// a wasm module's size.
//
// It is not a general JSON library: it gives exactly encoding/json's
// answers for the shapes the generated code uses (structs decoded with
// DisallowUnknownFields, strings, bools, ints, float64, slices, string
// maps, pointers), and its encoder produces json.Marshal's bytes, which
// the bundle hash is defined over. The tests compare both against
// encoding/json.
package strictjson
