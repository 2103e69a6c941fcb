package strictjson

import (
	"math"
	"strconv"

	"github.com/meshguard/meshguard/internal/jsonw"
)

// Encoder appends JSON to a byte slice, byte for byte as json.Marshal
// writes it (HTML-safe string escaping, ES6 number formatting).
type Encoder struct {
	B []byte
	// comma is set when the next member or element needs a separator.
	comma bool
}

// BeginObject writes '{'.
func (e *Encoder) BeginObject() {
	e.sep()
	e.B = append(e.B, '{')
	e.comma = false
}

// EndObject writes '}'.
func (e *Encoder) EndObject() {
	e.B = append(e.B, '}')
	e.comma = true
}

// BeginArray writes '['.
func (e *Encoder) BeginArray() {
	e.sep()
	e.B = append(e.B, '[')
	e.comma = false
}

// EndArray writes ']'.
func (e *Encoder) EndArray() {
	e.B = append(e.B, ']')
	e.comma = true
}

func (e *Encoder) sep() {
	if e.comma {
		e.B = append(e.B, ',')
	}
}

// Key writes an object key and the colon after it.
func (e *Encoder) Key(k string) {
	e.sep()
	e.B = appendString(e.B, k)
	e.B = append(e.B, ':')
	e.comma = false
}

// Null writes null.
func (e *Encoder) Null() {
	e.sep()
	e.B = append(e.B, "null"...)
	e.comma = true
}

// String writes a string.
func (e *Encoder) String(s string) {
	e.sep()
	e.B = appendString(e.B, s)
	e.comma = true
}

// Bool writes true or false.
func (e *Encoder) Bool(b bool) {
	e.sep()
	e.B = strconv.AppendBool(e.B, b)
	e.comma = true
}

// Int writes an integer.
func (e *Encoder) Int(n int64) {
	e.sep()
	e.B = strconv.AppendInt(e.B, n, 10)
	e.comma = true
}

// Uint writes an unsigned integer.
func (e *Encoder) Uint(n uint64) {
	e.sep()
	e.B = strconv.AppendUint(e.B, n, 10)
	e.comma = true
}

// Float64 writes a finite number the way ECMAScript prints it, as
// encoding/json does: plain decimal within [1e-6, 1e21), otherwise an
// exponent without zero padding. NaN and infinities are written as null;
// the generated types never hold them (no decoder produces them).
func (e *Encoder) Float64(f float64) {
	e.sep()
	e.comma = true
	if math.IsNaN(f) || math.IsInf(f, 0) {
		e.B = append(e.B, "null"...)
		return
	}
	format := byte('f')
	if a := math.Abs(f); a != 0 && (a < 1e-6 || a >= 1e21) {
		format = 'e'
	}
	e.B = strconv.AppendFloat(e.B, f, format, -1, 64)
	if format == 'e' {
		n := len(e.B)
		if n >= 4 && e.B[n-4] == 'e' && e.B[n-3] == '-' && e.B[n-2] == '0' {
			e.B[n-2] = e.B[n-1]
			e.B = e.B[:n-1]
		}
	}
}

// appendString quotes s as encoding/json does (see jsonw.String).
func appendString(b []byte, s string) []byte { return jsonw.String(b, s) }

// Strings writes a string array; nil is null.
func (e *Encoder) Strings(s []string) {
	if s == nil {
		e.Null()
		return
	}
	e.BeginArray()
	for _, v := range s {
		e.String(v)
	}
	e.EndArray()
}

// StringMap writes an object with sorted keys; nil is null.
func (e *Encoder) StringMap(m map[string]string) {
	if m == nil {
		e.Null()
		return
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	SortStrings(keys)
	e.BeginObject()
	for _, k := range keys {
		e.Key(k)
		e.String(m[k])
	}
	e.EndObject()
}
