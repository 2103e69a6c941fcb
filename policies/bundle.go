package policies

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
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
	h, err := hashSet(&set)
	if err != nil {
		return nil, diags, err
	}
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
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var b Bundle
	if err := dec.Decode(&b); err != nil {
		return nil, fmt.Errorf("policies: decode bundle: %w", err)
	}
	if dec.More() {
		return nil, fmt.Errorf("policies: decode bundle: trailing data after the bundle")
	}
	if b.Format != BundleFormat {
		return nil, fmt.Errorf("policies: bundle format %q, want %q", b.Format, BundleFormat)
	}
	if b.Version == "" {
		return nil, fmt.Errorf("policies: bundle has no version")
	}
	h, err := hashSet(&b.Set)
	if err != nil {
		return nil, err
	}
	if h != b.Hash {
		return nil, fmt.Errorf("policies: bundle %s: hash %s does not match content %s", b.Version, b.Hash, h)
	}
	if err := Validate(&b.Set).Err(); err != nil {
		return nil, fmt.Errorf("policies: bundle %s: %w", b.Version, err)
	}
	return &b, nil
}

func hashSet(s *Set) (string, error) {
	data, err := json.Marshal(s)
	if err != nil {
		return "", fmt.Errorf("policies: encode set: %w", err)
	}
	sum := sha256.Sum256(data)
	return "sha256:" + hex.EncodeToString(sum[:]), nil
}
