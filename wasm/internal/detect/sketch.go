package detect

import (
	"math"

	"github.com/meshguard/meshguard/policies"
)

// Distinct counts per window use linear counting over a fixed bitmap: exact
// for small counts, a few percent off near half occupancy, and never more
// memory than the bitmap. The thresholds (maxPaths, maxDestinations) are kept
// below half the bitmap (the compiler refuses more) so the estimate stays
// accurate where it matters.
const (
	pathBits = 2 * policies.MaxEnumerationPaths
	destBits = 2 * policies.MaxEnumerationDestinations
)

// setBit sets bit h mod len(b)*64 and reports whether it was clear.
func setBit(b []uint64, h uint64) bool {
	n := uint64(len(b) * 64)
	i := h % n
	w, m := i/64, uint64(1)<<(i%64)
	if b[w]&m != 0 {
		return false
	}
	b[w] |= m
	return true
}

// linearCount estimates the number of distinct items hashed into a bitmap of
// m bits of which set are set.
func linearCount(m, set int) float64 {
	if set >= m {
		return float64(m) * math.Log(float64(m)) // saturated: report a large value
	}
	return -float64(m) * math.Log(float64(m-set)/float64(m))
}

// exceeds reports whether a linear count is above max, rounded to the
// nearest integer: exactly max distinct items without a collision estimate
// a little more than max (the estimator expects collisions), and must not
// fire.
func exceeds(est, max float64) bool { return est >= max+0.5 }

const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

func fnvString(h uint64, s string) uint64 {
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= fnvPrime
	}
	return h
}

func fnvByte(h uint64, c byte) uint64 {
	h ^= uint64(c)
	return h * fnvPrime
}

// mix is a 64-bit finalizer so that FNV's weak low bits spread over the
// bitmap and table indexes.
func mix(h uint64) uint64 {
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return h
}

// hashPath hashes the path part of a :path (query and fragment dropped) with
// identifier-like segments (all digits, or 16+ hex digits and dashes such as
// UUIDs) folded into one placeholder, so that a client reading many records
// of one collection counts as one path, and one walking many collections or
// files counts as many.
func hashPath(p string) uint64 {
	h := uint64(fnvOffset)
	start := 0
	for i := 0; i <= len(p); i++ {
		end := i == len(p) || p[i] == '?' || p[i] == '#'
		if end || p[i] == '/' {
			seg := p[start:i]
			if isIdentifier(seg) {
				h = fnvByte(h, 0)
			} else {
				h = fnvString(h, seg)
			}
			if end {
				break
			}
			h = fnvByte(h, '/')
			start = i + 1
		}
	}
	return mix(h)
}

func isIdentifier(seg string) bool {
	if seg == "" {
		return false
	}
	digits, hex := true, true
	for i := 0; i < len(seg); i++ {
		c := seg[i]
		isDigit := c >= '0' && c <= '9'
		if !isDigit {
			digits = false
		}
		if !isDigit && !(c >= 'a' && c <= 'f') && !(c >= 'A' && c <= 'F') && c != '-' {
			hex = false
		}
	}
	return digits || (hex && len(seg) >= 16)
}

// hostOnly returns the host of an :authority, without port or trailing dot.
func hostOnly(authority string) string {
	h := authority
	if len(h) > 0 && h[0] == '[' {
		if i := indexByte(h, ']'); i > 0 {
			return h[1:i]
		}
		return h
	}
	// Exactly one colon: host:port. More than one: a bare IPv6 address.
	if i := indexByte(h, ':'); i >= 0 && indexByte(h[i+1:], ':') < 0 {
		h = h[:i]
	}
	if len(h) > 0 && h[len(h)-1] == '.' {
		h = h[:len(h)-1]
	}
	return h
}

func indexByte(s string, c byte) int {
	for i := 0; i < len(s); i++ {
		if s[i] == c {
			return i
		}
	}
	return -1
}

// lowerHost returns s in lower case, allocating only if s has upper case.
func lowerHost(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 'A' && c <= 'Z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if b[j] >= 'A' && b[j] <= 'Z' {
					b[j] += 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
}
