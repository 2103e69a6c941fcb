// Package jsonw appends JSON values to byte slices without reflection, for
// the few hot paths (deny bodies, decision log lines) whose shape is fixed.
package jsonw

import (
	"strconv"
	"unicode/utf8"
)

// String appends s as a JSON string. Printable ASCII is quoted directly
// (strconv's escapes for '"' and '\' are JSON's); anything else goes
// through quote, which writes what encoding/json writes (invalid UTF-8
// replaced) without linking it: the wasm filter links this package.
func String(b []byte, s string) []byte {
	plain := true
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e || c == '<' || c == '>' || c == '&' {
			return quote(b, s)
		}
		if c == '"' || c == '\\' {
			plain = false
		}
	}
	if plain {
		// Printable ASCII without quotes or backslashes: nothing to escape.
		b = append(b, '"')
		b = append(b, s...)
		return append(b, '"')
	}
	// Printable ASCII: Go's quoting escapes exactly what JSON needs here.
	return strconv.AppendQuote(b, s)
}

func Field(b []byte, first bool, name, value string) []byte {
	if !first {
		b = append(b, ',')
	}
	b = append(b, '"')
	b = append(b, name...)
	b = append(b, `":`...)
	return String(b, value)
}

// Bool appends `,"name":true|false`.
func Bool(b []byte, name string, v bool) []byte {
	b = append(b, ',', '"')
	b = append(b, name...)
	b = append(b, `":`...)
	return strconv.AppendBool(b, v)
}

// Int appends `,"name":n`.
func Int(b []byte, name string, n int64) []byte {
	b = append(b, ',', '"')
	b = append(b, name...)
	b = append(b, `":`...)
	return strconv.AppendInt(b, n, 10)
}

const hexDigits = "0123456789abcdef"

// quote quotes s as encoding/json does: invalid UTF-8 becomes \ufffd;
// <, > and & are escaped for HTML safety, as are U+2028 and U+2029 for
// JavaScript.
func quote(b []byte, s string) []byte {
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
