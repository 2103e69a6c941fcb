package loader

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/meshguard/meshguard/policies"
)

// ParseFunc builds a bundle from policy documents (YAML files); the command
// wires the policy parser in. Paths are files, sorted.
type ParseFunc func(paths []string) (*policies.Bundle, error)

// FileSource watches a bundle file (*.json, a policies.Bundle), a policy
// file or a directory of policy files by polling: every Interval it hashes
// the files' contents and, when they changed, builds and applies an update.
// Polling (rather than inotify) also sees the atomic symlink swaps of
// Kubernetes ConfigMap volumes.
type FileSource struct {
	Path     string
	Interval time.Duration // default 2s
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
	var last [sha256.Size]byte
	first := true
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		files, sum, err := f.snapshot()
		if err != nil {
			// A missing or unreadable path is an update error once per state.
			errSum := sha256.Sum256([]byte(err.Error()))
			if first || errSum != last {
				_ = apply(Update{Err: err, Origin: f.Path})
				last, first = errSum, false
			}
		} else if first || sum != last {
			last, first = sum, false
			_ = apply(f.build(files))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

type file struct {
	path string
	data []byte
}

// snapshot reads every policy file under Path and hashes names and contents.
func (f *FileSource) snapshot() ([]file, [sha256.Size]byte, error) {
	var zero [sha256.Size]byte
	st, err := os.Stat(f.Path)
	if err != nil {
		return nil, zero, fmt.Errorf("policy path: %w", err)
	}
	var paths []string
	if st.IsDir() {
		err := filepath.WalkDir(f.Path, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			name := d.Name()
			if d.IsDir() {
				// Kubernetes ConfigMap volumes keep old copies in ..data dirs.
				if p != f.Path && strings.HasPrefix(name, ".") {
					return filepath.SkipDir
				}
				return nil
			}
			if strings.HasPrefix(name, ".") {
				return nil
			}
			switch strings.ToLower(filepath.Ext(name)) {
			case ".yaml", ".yml", ".json":
				paths = append(paths, p)
			}
			return nil
		})
		if err != nil {
			return nil, zero, fmt.Errorf("policy directory: %w", err)
		}
	} else {
		paths = []string{f.Path}
	}
	sort.Strings(paths)
	h := sha256.New()
	files := make([]file, 0, len(paths))
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, zero, fmt.Errorf("read policy file: %w", err)
		}
		fmt.Fprintf(h, "%s\x00%d\x00", p, len(data))
		h.Write(data)
		files = append(files, file{p, data})
	}
	var sum [sha256.Size]byte
	copy(sum[:], h.Sum(nil))
	return files, sum, nil
}

func (f *FileSource) build(files []file) Update {
	origin := f.Path
	if len(files) == 1 && strings.EqualFold(filepath.Ext(files[0].path), ".json") {
		b, err := policies.DecodeBundle(files[0].data)
		if err != nil {
			return Update{Err: fmt.Errorf("%s: %w", files[0].path, err), Origin: origin}
		}
		return Update{Bundle: b, Origin: origin}
	}
	if len(files) == 0 {
		return Update{Err: fmt.Errorf("%s: no policy files", f.Path), Origin: origin}
	}
	if f.Parse == nil {
		return Update{Err: fmt.Errorf("%s: only a bundle JSON file is supported here", f.Path), Origin: origin}
	}
	paths := make([]string, len(files))
	for i, fl := range files {
		paths[i] = fl.path
	}
	b, err := f.Parse(paths)
	if err != nil {
		return Update{Err: err, Origin: origin}
	}
	return Update{Bundle: b, Origin: origin}
}
