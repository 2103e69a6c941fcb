package strictjson

import (
	"bytes"
	"errors"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

// Decoder reads one JSON value from a byte slice. Its error is sticky:
// after the first problem every method does nothing, so generated code
// checks Err once at the end.
type Decoder struct {
	data []byte
	pos  int
	err  error
	// scratch holds unquoted object keys; it is reused for every key.
	scratch []byte
	// depth is the nesting of objects and arrays, bounded as in
	// encoding/json so that no input can exhaust the stack.
	depth int
}

// maxDepth is encoding/json's nesting limit.
const maxDepth = 10000

// enter counts one more level of nesting; false (with the error set)
// past the limit.
func (d *Decoder) enter() bool {
	d.depth++
	if d.depth > maxDepth {
		d.syntax("exceeded max depth")
		return false
	}
	return true
}

// NewDecoder returns a decoder positioned at the start of data.
func NewDecoder(data []byte) *Decoder { return &Decoder{data: data} }

// Err is the first error met, nil if none.
func (d *Decoder) Err() error { return d.err }

// SyntaxError is malformed JSON at a byte offset.
type SyntaxError struct {
	Msg    string
	Offset int
}

func (e *SyntaxError) Error() string {
	return "json: " + e.Msg + " at offset " + strconv.Itoa(e.Offset)
}

// TypeError is a well-formed JSON value that does not fit the Go value it
// is decoded into.
type TypeError struct {
	Value  string // "string", "number 1.5", "object", ...
	Target string // the Go type, as the generated code names it
	Field  string // the JSON key holding the value, when known
	Offset int
}

func (e *TypeError) Error() string {
	s := "json: cannot unmarshal " + e.Value + " into Go value of type " + e.Target
	if e.Field != "" {
		s = "json: cannot unmarshal " + e.Value + " into Go struct field " + e.Field + " of type " + e.Target
	}
	return s
}

// UnknownFieldError is an object key that names no field.
type UnknownFieldError struct{ Key string }

func (e *UnknownFieldError) Error() string { return "json: unknown field " + strconv.Quote(e.Key) }

func (d *Decoder) syntax(msg string) {
	if d.err == nil {
		d.err = &SyntaxError{Msg: msg, Offset: d.pos}
	}
}

// Fail records err unless an error is already recorded.
func (d *Decoder) Fail(err error) {
	if d.err == nil {
		d.err = err
	}
}

func (d *Decoder) typeErr(value, target string) {
	d.Fail(&TypeError{Value: value, Target: target, Offset: d.pos})
}

func (d *Decoder) skipSpace() {
	for d.pos < len(d.data) {
		switch d.data[d.pos] {
		case ' ', '\t', '\n', '\r':
			d.pos++
		default:
			return
		}
	}
}

func (d *Decoder) peek() byte {
	d.skipSpace()
	if d.pos >= len(d.data) {
		return 0
	}
	return d.data[d.pos]
}

// End checks what follows the value the way encoding/json's Decoder.More
// does after Decode: only white space, or a closing bracket or brace,
// may follow.
func (d *Decoder) End(what string) {
	if d.err != nil {
		return
	}
	d.skipSpace()
	if d.pos >= len(d.data) {
		return
	}
	switch d.data[d.pos] {
	case ']', '}':
		return
	}
	d.Fail(errors.New("trailing data after " + what))
}

// Finish checks that only white space follows the value, as
// json.Unmarshal does.
func (d *Decoder) Finish(what string) {
	if d.err != nil {
		return
	}
	d.skipSpace()
	if d.pos < len(d.data) {
		d.Fail(errors.New("trailing data after " + what))
	}
}

// EOF reports an empty input (only white space), which encoding/json's
// Decoder answers with io.EOF.
func (d *Decoder) EOF() bool {
	d.skipSpace()
	return d.pos >= len(d.data) && d.err == nil
}

// Null consumes a null literal if one comes next.
func (d *Decoder) Null() bool {
	if d.err != nil || d.peek() != 'n' {
		return false
	}
	d.literal("null")
	return d.err == nil
}

func (d *Decoder) literal(lit string) {
	if !bytes.HasPrefix(d.data[d.pos:], []byte(lit)) {
		d.syntax("invalid literal")
		return
	}
	d.pos += len(lit)
}

// kind names the next value for error messages, and checks it is
// well-formed by skipping it.
func (d *Decoder) mismatch(target string) {
	start := d.pos
	c := d.peek()
	d.Skip()
	if d.err != nil {
		return
	}
	var v string
	switch c {
	case '{':
		v = "object"
	case '[':
		v = "array"
	case '"':
		v = "string"
	case 't', 'f':
		v = "bool"
	default:
		v = "number " + string(bytes.TrimSpace(d.data[start:d.pos]))
	}
	d.pos = start
	d.typeErr(v, target)
}

// Object decodes an object, calling field for every key (unquoted; the
// slice is only valid during the call). field decodes the value and
// returns false when the key names no field, which is an error. A null
// is accepted and leaves the target unchanged, as encoding/json does for
// a struct; target names the Go type for error messages.
func (d *Decoder) Object(target string, field func(key []byte) bool) {
	if d.err != nil || d.Null() {
		return
	}
	if d.peek() != '{' {
		d.mismatch(target)
		return
	}
	if !d.enter() {
		return
	}
	defer func() { d.depth-- }()
	d.pos++
	if d.peek() == '}' {
		d.pos++
		return
	}
	for d.err == nil {
		if d.peek() != '"' {
			d.syntax("expected a string key")
			return
		}
		key := d.unquote(d.scratch[:0])
		if d.err != nil {
			return
		}
		if d.peek() != ':' {
			d.syntax("expected ':' after an object key")
			return
		}
		d.pos++
		d.scratch = key
		if !field(key) {
			d.Fail(&UnknownFieldError{Key: string(key)})
			return
		}
		if d.err != nil {
			return
		}
		switch d.peek() {
		case ',':
			d.pos++
		case '}':
			d.pos++
			return
		default:
			d.syntax("expected ',' or '}' after an object value")
		}
	}
}

// Key reports whether an object key names the field called name: an
// exact match, or one equal under Unicode case folding (encoding/json's
// rule).
func Key(key []byte, name string) bool {
	return string(key) == name || bytes.EqualFold(key, []byte(name))
}

// Array decodes an array, calling elem for each element (i counts from
// 0). The caller handles null before calling Array.
func (d *Decoder) Array(target string, elem func(i int)) int {
	if d.err != nil {
		return 0
	}
	if d.peek() != '[' {
		d.mismatch(target)
		return 0
	}
	if !d.enter() {
		return 0
	}
	defer func() { d.depth-- }()
	d.pos++
	if d.peek() == ']' {
		d.pos++
		return 0
	}
	i := 0
	for d.err == nil {
		elem(i)
		i++
		if d.err != nil {
			return i
		}
		switch d.peek() {
		case ',':
			d.pos++
		case ']':
			d.pos++
			return i
		default:
			d.syntax("expected ',' or ']' after an array element")
		}
	}
	return i
}

// String decodes a string into *s; null leaves it unchanged.
func (d *Decoder) String(s *string, target string) {
	if d.err != nil || d.Null() {
		return
	}
	if d.peek() != '"' {
		d.mismatch(target)
		return
	}
	// Most strings are plain (no escape, control character or non-ASCII
	// byte): one copy straight from the input.
	data, start := d.data, d.pos+1
	if end := plainRun(data, start); end < len(data) && data[end] == '"' {
		*s = string(data[start:end])
		d.pos = end + 1
		return
	}
	b := d.unquote(nil)
	if d.err == nil {
		*s = string(b)
	}
}

// plainRun returns the index of the first byte at or after p that a string
// literal cannot copy as it is: a quote, a backslash, a control character
// or a non-ASCII byte (len(data) when there is none).
func plainRun(data []byte, p int) int {
	for p < len(data) {
		if c := data[p]; c == '"' || c == '\\' || c < 0x20 || c >= utf8.RuneSelf {
			return p
		}
		p++
	}
	return p
}

// Bool decodes true or false into *b; null leaves it unchanged.
func (d *Decoder) Bool(b *bool) {
	if d.err != nil || d.Null() {
		return
	}
	switch d.peek() {
	case 't':
		d.literal("true")
		if d.err == nil {
			*b = true
		}
	case 'f':
		d.literal("false")
		if d.err == nil {
			*b = false
		}
	default:
		d.mismatch("bool")
	}
}

// IsFalse consumes a false literal if one comes next.
func (d *Decoder) IsFalse() bool {
	if d.err != nil || d.peek() != 'f' {
		return false
	}
	d.literal("false")
	return d.err == nil
}

// number consumes a number literal (JSON grammar) and returns its text;
// ok is false when the next value is not a number (nothing is consumed).
func (d *Decoder) number() (lit []byte, ok bool) {
	c := d.peek()
	if c != '-' && (c < '0' || c > '9') {
		return nil, false
	}
	start := d.pos
	p := d.pos
	data := d.data
	digits := func() int {
		n := 0
		for p < len(data) && data[p] >= '0' && data[p] <= '9' {
			p++
			n++
		}
		return n
	}
	if data[p] == '-' {
		p++
	}
	switch {
	case p < len(data) && data[p] == '0':
		p++
	case p < len(data) && data[p] >= '1' && data[p] <= '9':
		digits()
	default:
		d.pos = p
		d.syntax("invalid number")
		return nil, true
	}
	if p < len(data) && data[p] == '.' {
		p++
		if digits() == 0 {
			d.pos = p
			d.syntax("invalid number")
			return nil, true
		}
	}
	if p < len(data) && (data[p] == 'e' || data[p] == 'E') {
		p++
		if p < len(data) && (data[p] == '+' || data[p] == '-') {
			p++
		}
		if digits() == 0 {
			d.pos = p
			d.syntax("invalid number")
			return nil, true
		}
	}
	d.pos = p
	return data[start:p], true
}

// Int decodes an integer that fits in bits into *v; null leaves it
// unchanged.
func (d *Decoder) Int(v *int64, bits int, target string) {
	d.parseNumber(target, func(lit string) error {
		n, err := strconv.ParseInt(lit, 10, bits)
		if err == nil {
			*v = n
		}
		return err
	})
}

// Uint decodes an unsigned integer that fits in bits into *v; null
// leaves it unchanged.
func (d *Decoder) Uint(v *uint64, bits int, target string) {
	d.parseNumber(target, func(lit string) error {
		n, err := strconv.ParseUint(lit, 10, bits)
		if err == nil {
			*v = n
		}
		return err
	})
}

// Float64 decodes a number into *v; null leaves it unchanged.
func (d *Decoder) Float64(v *float64) {
	d.parseNumber("float64", func(lit string) error {
		f, err := strconv.ParseFloat(lit, 64)
		if err == nil {
			*v = f
		}
		return err
	})
}

// parseNumber reads a number literal for target and hands it to parse;
// null is a no-op, a non-number a type mismatch, and a literal parse
// refuses (out of range, a fraction for an integer) encoding/json's
// "cannot unmarshal number N" error at the literal.
func (d *Decoder) parseNumber(target string, parse func(lit string) error) {
	if d.err != nil || d.Null() {
		return
	}
	start := d.pos
	lit, ok := d.number()
	if !ok {
		d.mismatch(target)
		return
	}
	if d.err != nil {
		return
	}
	if err := parse(string(lit)); err != nil {
		d.pos = start
		d.typeErr("number "+string(lit), target)
	}
}

// Raw returns the next value's bytes, checked to be well-formed JSON.
func (d *Decoder) Raw() []byte {
	if d.err != nil {
		return nil
	}
	d.skipSpace()
	start := d.pos
	d.Skip()
	if d.err != nil {
		return nil
	}
	return d.data[start:d.pos]
}

// Skip consumes one well-formed value of any type.
func (d *Decoder) Skip() {
	if d.err != nil {
		return
	}
	switch c := d.peek(); c {
	case '[':
		if !d.enter() {
			return
		}
		defer func() { d.depth-- }()
	}
	switch c := d.peek(); c {
	case '{':
		// Object checks the nesting depth and the object's syntax; every
		// member is skipped.
		d.Object("", func([]byte) bool {
			d.Skip()
			return true
		})
	case '[':
		d.pos++
		if d.peek() == ']' {
			d.pos++
			return
		}
		for d.err == nil {
			d.Skip()
			if d.err != nil {
				return
			}
			switch d.peek() {
			case ',':
				d.pos++
			case ']':
				d.pos++
				return
			default:
				d.syntax("expected ',' or ']' after an array element")
			}
		}
	case '"':
		d.unquote(d.scratch[:0])
	case 't':
		d.literal("true")
	case 'f':
		d.literal("false")
	case 'n':
		d.literal("null")
	case 0:
		d.syntax("unexpected end of JSON input")
	default:
		if _, ok := d.number(); !ok {
			d.syntax("invalid character " + strconv.QuoteRune(rune(c)) + " looking for beginning of value")
		}
	}
}

// unquote consumes a string literal and appends its value to buf.
// Invalid UTF-8 and unpaired surrogate escapes become U+FFFD, as in
// encoding/json; control characters and bad escapes are syntax errors.
func (d *Decoder) unquote(buf []byte) []byte {
	data := d.data
	p := d.pos + 1 // past the opening quote
	for {
		// The plain bytes up to the next special one, in one append.
		if q := plainRun(data, p); q > p {
			buf = append(buf, data[p:q]...)
			p = q
		}
		if p >= len(data) {
			d.pos = p
			d.syntax("unexpected end of JSON input in a string")
			return buf
		}
		c := data[p]
		switch {
		case c == '"':
			d.pos = p + 1
			return buf
		case c < 0x20:
			d.pos = p
			d.syntax("invalid control character in a string")
			return buf
		case c == '\\':
			if p+1 >= len(data) {
				d.pos = p
				d.syntax("unexpected end of JSON input in a string")
				return buf
			}
			switch e := data[p+1]; {
			case unescape[e] != 0:
				buf = append(buf, unescape[e])
				p += 2
			case e == 'u':
				r, ok := hex4(data[p+2:])
				if !ok {
					d.pos = p
					d.syntax("invalid \\u escape in a string")
					return buf
				}
				p += 6
				if utf16.IsSurrogate(r) {
					// A high surrogate pairs only with an escaped low one
					// that follows at once; anything else is U+FFFD and
					// the next escape is read on its own.
					if len(data) >= p+2 && data[p] == '\\' && data[p+1] == 'u' {
						if r2, ok := hex4(data[p+2:]); ok {
							if dec := utf16.DecodeRune(r, r2); dec != utf8.RuneError {
								buf = utf8.AppendRune(buf, dec)
								p += 6
								continue
							}
						}
					}
					r = utf8.RuneError
				}
				buf = utf8.AppendRune(buf, r)
			default:
				d.pos = p
				d.syntax("invalid escape in a string")
				return buf
			}
		default:
			r, n := utf8.DecodeRune(data[p:])
			if r == utf8.RuneError && n == 1 {
				buf = utf8.AppendRune(buf, utf8.RuneError)
			} else {
				buf = append(buf, data[p:p+n]...)
			}
			p += n
		}
	}
}

func hex4(b []byte) (rune, bool) {
	if len(b) < 4 {
		return 0, false
	}
	var r rune
	for _, c := range b[:4] {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			c = c - 'A' + 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	return r, true
}

// DecodeSlice decodes an array into *s with encoding/json's semantics:
// null is a nil slice; elements already in *s (a repeated key) are
// decoded into, not replaced; an empty array is an empty, non-nil slice.
func DecodeSlice[E any](d *Decoder, s *[]E, target string, elem func(*E)) {
	if d.err != nil {
		return
	}
	if d.Null() {
		*s = nil
		return
	}
	v := *s
	n := d.Array(target, func(i int) {
		if i >= len(v) {
			if i < cap(v) {
				v = v[:i+1]
			} else {
				var zero E
				v = append(v, zero)
			}
		}
		elem(&v[i])
	})
	if d.err != nil {
		return
	}
	if n < len(v) {
		v = v[:n]
	}
	if n == 0 {
		v = []E{}
	}
	*s = v
}

// Strings decodes an array of strings into *s (see DecodeSlice).
func (d *Decoder) Strings(s *[]string) {
	DecodeSlice(d, s, "[]string", func(e *string) { d.String(e, "string") })
}

// StringMap decodes an object of strings into *m, merging into a map
// already there as encoding/json does; null is a nil map.
func (d *Decoder) StringMap(m *map[string]string) {
	if d.err != nil {
		return
	}
	if d.Null() {
		*m = nil
		return
	}
	if d.peek() != '{' {
		d.mismatch("map[string]string")
		return
	}
	if *m == nil {
		*m = map[string]string{}
	}
	mm := *m
	d.Object("map[string]string", func(key []byte) bool {
		k := string(key)
		var v string
		d.String(&v, "string")
		if d.err == nil {
			mm[k] = v
		}
		return true
	})
}

// Decode decodes one JSON value from data with decode (a generated
// decoder), with the answers of an encoding/json Decoder with
// DisallowUnknownFields followed by a More check: an empty input is an
// error, and only white space or a closing bracket may follow the value.
// what names the value in the trailing-data error.
func Decode(data []byte, what string, decode func(*Decoder)) error {
	d := NewDecoder(data)
	if d.EOF() {
		return errors.New("json: no value (empty input)")
	}
	decode(d)
	d.End(what)
	return d.Err()
}

// unescape maps the byte after a backslash to what it stands for, for the
// one-byte escapes (\u is read apart); 0 is not one.
var unescape = [256]byte{'"': '"', '\\': '\\', '/': '/', 'b': '\b', 'f': '\f', 'n': '\n', 'r': '\r', 't': '\t'}
