package policies

import (
	"errors"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Snapshot is a compiled, immutable bundle. Safe for concurrent use.
type Snapshot struct {
	version string
	hash    string
}

// Version is the bundle version the snapshot was compiled from.
func (s *Snapshot) Version() string { return s.version }

// Hash is the bundle content hash.
func (s *Snapshot) Hash() string { return s.hash }

// Compile turns a bundle into a snapshot.
func Compile(b *Bundle) (*Snapshot, error) { return nil, errors.New("policies: compile: in progress") }

// Validate checks a set and returns every problem found.
func Validate(s *Set) Diagnostics { return nil }

// Decide evaluates a request. It allocates nothing for ordinary requests.
func (s *Snapshot) Decide(a *Attributes) Decision { return Deny(ReasonDeniedInternal) }

// Quarantined reports whether id is quarantined in this snapshot.
func (s *Snapshot) Quarantined(id spiffeid.ID) bool { return false }
