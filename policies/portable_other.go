//go:build !wasip1

package policies

import (
	"crypto/sha256"
	"time"
)

// Everywhere but the wasm filter the standard library hashes bundles and
// reads Quarantine expiry times (see portable_wasip1.go).

func sum256(data []byte) [32]byte { return sha256.Sum256(data) }

func parseRFC3339(s string) (int64, bool) {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return 0, false
	}
	return t.UnixNano(), true
}
