// Package xfcc parses Envoy's x-forwarded-client-cert header.
//
// The header is a comma-separated list of elements, one per proxy hop that
// appended one; each element is a semicolon-separated list of Key=Value
// pairs with the keys By, Hash, Cert, Chain, Subject, URI and DNS (keys are
// case-insensitive). A value that contains a comma, semicolon or equals sign
// is double-quoted, and a double quote inside a quoted value is escaped with
// a backslash. The parser is strict: unknown keys, unterminated quotes, empty
// elements and oversized input are errors, because the header is an identity
// claim and a lenient reading is an attacker's lever.
package xfcc

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Limits on input, to bound the work an attacker can ask for.
const (
	MaxHeaderBytes = 64 << 10
	MaxElements    = 32
	MaxPairs       = 64
)

// Element is one hop's client certificate details.
type Element struct {
	// By is the URI SAN of the certificate of the proxy that added the element
	// (several when that proxy's certificate had several URI SANs).
	By []string
	// Hash is the hex SHA-256 of the client certificate.
	Hash string
	// Cert and Chain are URL-encoded PEM.
	Cert  string
	Chain string
	// Subject is the client certificate subject.
	Subject string
	// URI are the client certificate's URI SANs; DNS its DNS SANs.
	URI []string
	DNS []string
}

// Parse reads a header value. The elements are returned in header order:
// the last one was appended by the proxy nearest to the reader.
func Parse(header string) ([]Element, error) {
	if len(header) > MaxHeaderBytes {
		return nil, fmt.Errorf("xfcc: header of %d bytes exceeds %d", len(header), MaxHeaderBytes)
	}
	if !utf8.ValidString(header) {
		return nil, errors.New("xfcc: header is not valid UTF-8")
	}
	p := parser{s: header}
	var out []Element
	for {
		if len(out) == MaxElements {
			return nil, fmt.Errorf("xfcc: more than %d elements", MaxElements)
		}
		el, err := p.element()
		if err != nil {
			return nil, fmt.Errorf("xfcc: element %d: %w", len(out), err)
		}
		out = append(out, el)
		if p.eof() {
			return out, nil
		}
		// element() stops only at end of input or a comma.
		p.i++
	}
}

type parser struct {
	s string
	i int
}

func (p *parser) eof() bool { return p.i >= len(p.s) }

func (p *parser) skipSpace() {
	for !p.eof() && (p.s[p.i] == ' ' || p.s[p.i] == '\t') {
		p.i++
	}
}

// element reads pairs up to a top-level comma or the end of input.
func (p *parser) element() (Element, error) {
	var el Element
	pairs := 0
	for {
		p.skipSpace()
		if p.eof() || p.s[p.i] == ',' {
			if pairs == 0 {
				return el, errors.New("empty element")
			}
			return el, nil
		}
		if pairs == MaxPairs {
			return el, fmt.Errorf("more than %d pairs", MaxPairs)
		}
		key, err := p.key()
		if err != nil {
			return el, err
		}
		val, err := p.value()
		if err != nil {
			return el, fmt.Errorf("%s: %w", key, err)
		}
		if err := el.set(key, val); err != nil {
			return el, err
		}
		pairs++
		p.skipSpace()
		if !p.eof() && p.s[p.i] == ';' {
			p.i++
			continue
		}
		if !p.eof() && p.s[p.i] != ',' {
			return el, fmt.Errorf("unexpected %q after value of %s", p.s[p.i], key)
		}
	}
}

func (p *parser) key() (string, error) {
	start := p.i
	for !p.eof() {
		switch c := p.s[p.i]; {
		case c == '=':
			k := strings.TrimSpace(p.s[start:p.i])
			p.i++
			if k == "" {
				return "", errors.New("empty key")
			}
			return k, nil
		case c == ',' || c == ';' || c == '"':
			return "", fmt.Errorf("unexpected %q in key", c)
		}
		p.i++
	}
	return "", errors.New("key without value")
}

func (p *parser) value() (string, error) {
	if !p.eof() && p.s[p.i] == '"' {
		p.i++
		var b strings.Builder
		for !p.eof() {
			c := p.s[p.i]
			switch c {
			case '\\':
				if p.i+1 < len(p.s) && (p.s[p.i+1] == '"' || p.s[p.i+1] == '\\') {
					b.WriteByte(p.s[p.i+1])
					p.i += 2
					continue
				}
				b.WriteByte(c)
			case '"':
				p.i++
				return b.String(), nil
			default:
				b.WriteByte(c)
			}
			p.i++
		}
		return "", errors.New("unterminated quoted value")
	}
	start := p.i
	for !p.eof() {
		c := p.s[p.i]
		if c == ';' || c == ',' {
			break
		}
		if c == '"' || c == '=' {
			return "", fmt.Errorf("unexpected %q in unquoted value", c)
		}
		p.i++
	}
	return strings.TrimSpace(p.s[start:p.i]), nil
}

func (el *Element) set(key, val string) error {
	switch strings.ToLower(key) {
	case "by":
		el.By = append(el.By, val)
	case "hash":
		return setOnce(&el.Hash, "Hash", val)
	case "cert":
		return setOnce(&el.Cert, "Cert", val)
	case "chain":
		return setOnce(&el.Chain, "Chain", val)
	case "subject":
		return setOnce(&el.Subject, "Subject", val)
	case "uri":
		el.URI = append(el.URI, val)
	case "dns":
		el.DNS = append(el.DNS, val)
	default:
		return fmt.Errorf("unknown key %q", key)
	}
	return nil
}

func setOnce(dst *string, name, val string) error {
	if *dst != "" {
		return fmt.Errorf("duplicate %s", name)
	}
	*dst = val
	return nil
}
