package loader

import (
	"context"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/policyfile"
	"github.com/meshguard/meshguard/policies/source"
)

// ParseFunc builds a bundle from policy documents (YAML files, in the
// order read); the command wires the policy parser in. It parses the bytes
// it is given and reads nothing itself.
type ParseFunc func(files []source.File) (*policies.Bundle, error)

// FileSource watches a bundle file (*.json, a policies.Bundle), a policy
// file or a directory of policy files by polling (which also sees the
// atomic symlink swaps of Kubernetes ConfigMap volumes). It follows the
// reload rules of package policyfile: every poll reads each file once and
// hashes, checks and parses those same bytes; content is applied once it
// has settled; a file with no document, or cut off mid-line, is refused;
// and so is a set that leaves a namespace this source had applied
// documents in without any (an empty set among them), unless AllowEmpty.
type FileSource struct {
	Path     string
	Interval time.Duration // default 2s
	// Settle is how long the files must have stayed unchanged before new
	// content applies (zero: as soon as it reads whole).
	Settle time.Duration
	// AllowEmpty accepts files without documents and sets that leave
	// namespaces without documents.
	AllowEmpty bool
	// Parse reads policy documents; nil accepts only bundle JSON.
	Parse ParseFunc
}

// Name implements Source.
func (*FileSource) Name() string { return "file" }

// Run implements Source.
func (f *FileSource) Run(ctx context.Context, apply ApplyFunc) error {
	interval := f.Interval
	if interval <= 0 {
		interval = 2 * time.Second
	}
	w := &policyfile.Watcher{Paths: []string{f.Path}, Exts: []string{".yaml", ".yml", ".json"}, Settle: f.Settle}
	var applied *policies.Set // what this source last applied
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		snap, err := w.Next(time.Now())
		switch {
		case err != nil:
			// A missing or unreadable path: an update error once per state.
			_ = apply(Update{Err: err, Origin: f.Path})
		case snap != nil:
			u := f.build(snap, applied)
			if apply(u) == nil && u.Bundle != nil {
				applied = &u.Bundle.Set
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// build turns a snapshot into an update: checked, parsed from the bytes
// read, and compared with what this source applied before.
func (f *FileSource) build(snap *policyfile.Snapshot, applied *policies.Set) Update {
	origin := f.Path + " sha256:" + hex.EncodeToString(snap.Hash[:6])
	fail := func(err error) Update { return Update{Err: err, Origin: origin} }
	if len(snap.Files) == 0 {
		return fail(fmt.Errorf("%s: no policy files", f.Path))
	}
	if err := snap.Check(f.AllowEmpty); err != nil {
		return fail(err)
	}
	var b *policies.Bundle
	if first := snap.Files[0]; len(snap.Files) == 1 && strings.EqualFold(filepath.Ext(first.Path), ".json") {
		var err error
		if b, err = policies.DecodeBundle(first.Data); err != nil {
			return fail(fmt.Errorf("%s: %w", first.Path, err))
		}
	} else {
		if f.Parse == nil {
			return fail(fmt.Errorf("%s: only a bundle JSON file is supported here", f.Path))
		}
		var err error
		if b, err = f.Parse(snap.SourceFiles()); err != nil {
			return fail(err)
		}
	}
	if !f.AllowEmpty {
		if err := policyfile.CheckCoverage(applied, &b.Set); err != nil {
			return fail(fmt.Errorf("%s: %w", f.Path, err))
		}
	}
	return Update{Bundle: b, Origin: origin}
}
