package policies

import "sync/atomic"

// Engine holds the current Snapshot. The zero value has no snapshot and
// denies everything with ReasonDeniedNoPolicy. It is safe for concurrent use;
// Decide takes no lock.
type Engine struct {
	cur atomic.Pointer[Snapshot]
}

// Swap installs s and returns the previous snapshot.
func (e *Engine) Swap(s *Snapshot) *Snapshot { return e.cur.Swap(s) }

// Snapshot returns the current snapshot, or nil.
func (e *Engine) Snapshot() *Snapshot { return e.cur.Load() }

// Decide evaluates a against the current snapshot; without one it denies.
func (e *Engine) Decide(a *Attributes) Decision {
	s := e.cur.Load()
	if s == nil {
		return Deny(ReasonDeniedNoPolicy)
	}
	return s.Decide(a)
}
