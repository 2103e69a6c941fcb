// Package jsonw appends JSON values to byte slices without reflection, for
// the few hot paths (deny bodies, decision log lines) whose shape is fixed.
package jsonw

import (
	"encoding/json"
	"strconv"
)

// String appends s as a JSON string. Printable ASCII is quoted directly
// (strconv's escapes for '"' and '\' are JSON's); anything else goes
// through encoding/json, which also replaces invalid UTF-8.
func String(b []byte, s string) []byte {
	plain := true
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e || c == '<' || c == '>' || c == '&' {
			q, err := json.Marshal(s)
			if err != nil {
				// Unreachable: a string always encodes.
				return append(b, `""`...)
			}
			return append(b, q...)
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
