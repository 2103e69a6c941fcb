package strictjson

import (
	"math"
	"strconv"
	"unicode/utf8"
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

const hexDigits = "0123456789abcdef"

// appendString quotes s. Invalid UTF-8 becomes \ufffd; <, > and & are
// escaped for HTML safety, as are U+2028 and U+2029 for JavaScript.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
		default:
			i += n
			continue
		}
		i += n
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

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
