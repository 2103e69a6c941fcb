package policies

import (
	"encoding/hex"
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

	// compiled is the snapshot NewBundle or DecodeBundle compiled while
	// validating Set, handed to Compile so that a bundle compiles once.
	compiled *Snapshot
}

// NewBundle validates set and wraps it. An empty version is replaced by the
// first 12 hex digits of the content hash. The set must not be modified
// afterwards: the bundle keeps what validating it compiled.
func NewBundle(version string, set Set) (*Bundle, Diagnostics, error) {
	b := &Bundle{Format: BundleFormat, Set: set}
	snap, diags := compileSet(&b.Set)
	diags = append(diags, Lint(&b.Set)...)
	if err := diags.Err(); err != nil {
		return nil, diags, err
	}
	b.Hash = hashSet(&b.Set)
	b.Version = version
	if b.Version == "" {
		b.Version = b.Hash[len("sha256:") : len("sha256:")+12]
	}
	b.keep(snap)
	return b, diags, nil
}

// keep stores the snapshot compiled from b.Set for Compile.
func (b *Bundle) keep(s *Snapshot) {
	s.version, s.hash = b.Version, b.Hash
	b.compiled = s
}

// Encode returns the bundle's JSON encoding, the bytes json.Marshal
// writes for it (written by the generated encoder).
func (b *Bundle) Encode() ([]byte, error) {
	var e strictjson.Encoder
	b.encodeJSON(&e)
	return e.B, nil
}

// DecodeBundle parses a bundle strictly (unknown fields are errors), checks
// its format and hash, and validates its set by compiling it. A bundle that
// fails any check is rejected whole; one that passes carries the compiled
// snapshot, which Compile hands over. Its set must not be modified.
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
	snap, diags := compileSet(&b.Set)
	if err := diags.Err(); err != nil {
		return nil, fmt.Errorf("policies: bundle %s: %w", b.Version, err)
	}
	b.keep(snap)
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
