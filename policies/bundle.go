package policies

import (
	"encoding/hex"
	"encoding/json"
	"fmt"

	"github.com/meshguard/meshguard/policies/internal/strictjson"
)

// BundleFormat identifies the serialization below; bump on breaking change.
const BundleFormat = "meshguard.dev/bundle/v1"

// Bundle is a validated policy set with a version and a content hash: the
// one format the control plane ships and the authz server, the wasm filter
// and the CLI load.
type Bundle struct {
	Format  string `json:"format"`
	Version string `json:"version"`
	// Hash is "sha256:<hex>" of the canonical JSON encoding of Set.
	Hash string `json:"hash"`
	Set  Set    `json:"set"`
}

// NewBundle validates set and wraps it. An empty version is replaced by the
// first 12 hex digits of the content hash.
func NewBundle(version string, set Set) (*Bundle, Diagnostics, error) {
	diags := Validate(&set)
	if err := diags.Err(); err != nil {
		return nil, diags, err
	}
	h := hashSet(&set)
	if version == "" {
		version = h[len("sha256:") : len("sha256:")+12]
	}
	return &Bundle{Format: BundleFormat, Version: version, Hash: h, Set: set}, diags, nil
}

// Encode returns the bundle's JSON encoding.
func (b *Bundle) Encode() ([]byte, error) {
	return json.Marshal(b)
}

// DecodeBundle parses a bundle strictly (unknown fields are errors), checks
// its format and hash, and validates its set. A bundle that fails any check
// is rejected whole.
func DecodeBundle(data []byte) (*Bundle, error) {
	var b Bundle
	if err := strictjson.Decode(data, "the bundle", b.decodeJSON); err != nil {
		return nil, fmt.Errorf("policies: decode bundle: %w", err)
	}
	if b.Format != BundleFormat {
		return nil, fmt.Errorf("policies: bundle format %q, want %q", b.Format, BundleFormat)
	}
	if b.Version == "" {
		return nil, fmt.Errorf("policies: bundle has no version")
	}
	h := hashSet(&b.Set)
	if h != b.Hash {
		return nil, fmt.Errorf("policies: bundle %s: hash %s does not match content %s", b.Version, b.Hash, h)
	}
	// Validate's lint half only warns, and a decoded bundle has nowhere
	// to report warnings: the compiler's errors are the whole answer.
	if _, diags := compileSet(&b.Set); diags.Err() != nil {
		return nil, fmt.Errorf("policies: bundle %s: %w", b.Version, diags.Err())
	}
	return &b, nil
}

// hashSet is the content hash: SHA-256 over json.Marshal(s) (written by
// the generated encoder, which produces the same bytes).
func hashSet(s *Set) string {
	var e strictjson.Encoder
	s.encodeJSON(&e)
	sum := sum256(e.B)
	return "sha256:" + hex.EncodeToString(sum[:])
}

//go:generate go run ./internal/jsongen -pkg policies
