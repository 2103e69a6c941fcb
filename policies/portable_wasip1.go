//go:build wasip1

package policies

// In the wasm filter the bundle hash and Quarantine expiry are computed by
// the small implementations in sha256.go and rfc3339.go: crypto/sha256 and
// time.Parse would take a fifth of the module's 4 MB budget. Their tests and
// fuzz targets hold them to the standard library's answers.

func sum256(data []byte) [32]byte { return sum256Portable(data) }

func parseRFC3339(s string) (int64, bool) { return parseRFC3339Portable(s) }
