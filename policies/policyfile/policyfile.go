// Package policyfile reads policy files for a process that reloads them
// while it serves (`meshguard authz --policy`, `meshguard controlplane
// --policy`), so that a file caught in the middle of a write, truncated or
// emptied is never applied. The rules, which docs/authz.md states for
// operators:
//
//  1. Read once. Each poll reads every file once; the content hash, the
//     checks and the parse all use those bytes (Snapshot). A file whose
//     size or modification time changes while it is read is read again at
//     the next poll.
//  2. Settle. New content is handed out only when it has stopped changing:
//     no file was modified in the last Settle, or the same content was read
//     on polls at least Settle apart (Watcher).
//  3. Complete files. Every file holds at least one document, and a YAML
//     file ends with a line break: one cut off mid-line may still parse,
//     with a shorter path or namespace than was written (Snapshot.Check).
//  4. No lost enforcement points. A set with no document left in a
//     namespace the serving set has documents in — an empty set among
//     them — is refused (CheckCoverage).
//
// Rules 3 and 4 give way when the operator explicitly allows empty sets.
package policyfile

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/source"
)

// File is one policy file as read.
type File struct {
	Path    string
	Data    []byte
	ModTime time.Time
}

// Snapshot is the content of the policy files, each read once.
type Snapshot struct {
	Files []File
	// Hash covers every file's path and content, in order.
	Hash [sha256.Size]byte
	// Newest is the latest modification time among the files.
	Newest time.Time
}

// ErrChanging means a file changed while it was read: read again later.
var ErrChanging = errors.New("policyfile: a file changed while it was read")

// Read reads the files named by paths once. A directory is walked for
// files whose extension (lowercase, with the dot) is in exts; hidden files
// and directories are skipped, except that symbolic links to files are
// followed (a mounted Kubernetes ConfigMap reads as its keys). A file named
// explicitly is read whatever its extension. A file reached twice is read
// once.
func Read(paths []string, exts []string) (*Snapshot, error) {
	if len(paths) == 0 {
		return nil, errors.New("policyfile: no paths")
	}
	var names []string
	seen := map[string]bool{}
	for _, p := range paths {
		files, err := list(p, exts)
		if err != nil {
			return nil, err
		}
		for _, f := range files {
			if k := filepath.Clean(f); !seen[k] {
				seen[k] = true
				names = append(names, f)
			}
		}
	}
	s := &Snapshot{Files: make([]File, 0, len(names))}
	h := sha256.New()
	for _, name := range names {
		f, err := readFile(name)
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(h, "%s\x00%d\x00", f.Path, len(f.Data))
		h.Write(f.Data)
		if f.ModTime.After(s.Newest) {
			s.Newest = f.ModTime
		}
		s.Files = append(s.Files, f)
	}
	copy(s.Hash[:], h.Sum(nil))
	return s, nil
}

// list returns the policy files under p, sorted.
func list(p string, exts []string) ([]string, error) {
	st, err := os.Stat(p)
	if err != nil {
		return nil, fmt.Errorf("policy path: %w", err)
	}
	if !st.IsDir() {
		return []string{p}, nil
	}
	var out []string
	err = filepath.WalkDir(p, func(name string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			// Kubernetes ConfigMap volumes keep their copies in ..data dirs.
			if name != p && strings.HasPrefix(d.Name(), ".") {
				return filepath.SkipDir
			}
			return nil
		}
		if strings.HasPrefix(d.Name(), ".") {
			return nil
		}
		ext := strings.ToLower(filepath.Ext(d.Name()))
		found := false
		for _, e := range exts {
			found = found || e == ext
		}
		if !found {
			return nil
		}
		regular := d.Type().IsRegular()
		if d.Type()&fs.ModeSymlink != 0 {
			info, err := os.Stat(name)
			regular = err == nil && info.Mode().IsRegular()
		}
		if regular {
			out = append(out, name)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("policy directory: %w", err)
	}
	sort.Strings(out)
	return out, nil
}

// readFile reads one file and checks it did not change while being read.
func readFile(name string) (File, error) {
	f, err := os.Open(name)
	if err != nil {
		return File{}, fmt.Errorf("read policy file: %w", err)
	}
	defer f.Close()
	before, err := f.Stat()
	if err != nil {
		return File{}, fmt.Errorf("read policy file: %w", err)
	}
	data, err := io.ReadAll(io.LimitReader(f, source.MaxFileSize+1))
	if err != nil {
		return File{}, fmt.Errorf("read policy file %s: %w", name, err)
	}
	if len(data) > source.MaxFileSize {
		return File{}, fmt.Errorf("policy file %s is larger than %d bytes", name, source.MaxFileSize)
	}
	after, err := f.Stat()
	if err != nil {
		return File{}, fmt.Errorf("read policy file: %w", err)
	}
	if after.Size() != before.Size() || !after.ModTime().Equal(before.ModTime()) || int64(len(data)) != after.Size() {
		return File{}, fmt.Errorf("%w: %s", ErrChanging, name)
	}
	return File{Path: name, Data: data, ModTime: after.ModTime()}, nil
}

// SourceFiles are the snapshot's files as policies/source parses them.
func (s *Snapshot) SourceFiles() []source.File {
	out := make([]source.File, len(s.Files))
	for i, f := range s.Files {
		out[i] = source.File{Name: f.Path, Data: f.Data}
	}
	return out
}

// Check applies rule 3 to every file: it holds at least one document
// (unless allowEmpty), and a file that is not JSON ends with a line break.
// The error names every file that fails.
func (s *Snapshot) Check(allowEmpty bool) error {
	var errs []error
	for _, f := range s.Files {
		if !allowEmpty && !hasDocument(f.Data) {
			errs = append(errs, fmt.Errorf("%s: no policy document (an empty file is refused unless empty sets are allowed)", f.Path))
			continue
		}
		json := strings.EqualFold(filepath.Ext(f.Path), ".json")
		if !json && len(f.Data) > 0 && f.Data[len(f.Data)-1] != '\n' {
			errs = append(errs, fmt.Errorf("%s: does not end with a line break; a file cut off mid-line is refused (it may have been caught in a write)", f.Path))
		}
	}
	return errors.Join(errs...)
}

// hasDocument reports whether data holds anything but blank lines,
// comments and document markers.
func hasDocument(data []byte) bool {
	for line := range bytes.Lines(data) {
		l := bytes.TrimSpace(line)
		if len(l) == 0 || l[0] == '#' || bytes.Equal(l, []byte("---")) || bytes.Equal(l, []byte("...")) {
			continue
		}
		return true
	}
	return false
}

// Namespaces counts a set's documents per namespace.
func Namespaces(s *policies.Set) map[string]int {
	n := map[string]int{}
	s.EachObject(func(_ string, m policies.ObjectMeta) { n[m.Namespace]++ })
	return n
}

// CheckCoverage applies rule 4: next must have documents in every
// namespace prev has documents in. prev nil (nothing served yet) passes.
func CheckCoverage(prev, next *policies.Set) error {
	if prev == nil {
		return nil
	}
	had, has := Namespaces(prev), Namespaces(next)
	var lost []string
	for ns := range had {
		if has[ns] == 0 {
			lost = append(lost, ns)
		}
	}
	if len(lost) == 0 {
		return nil
	}
	sort.Strings(lost)
	if len(has) == 0 {
		return errors.New("the policy set is empty where the serving one has documents; refused unless empty sets are allowed (a file emptied or cut off by a write?)")
	}
	return fmt.Errorf("the policy set has no document left in namespace(s) %s, which the serving set covers; refused unless empty sets are allowed (a file cut off by a write?)", strings.Join(lost, ", "))
}

// Watcher polls policy files and hands out new content once it has
// settled (rules 1 and 2). Content handed out once is not handed out
// again until the files change: whether it was applied or rejected is the
// caller's business.
type Watcher struct {
	Paths []string
	// Exts are the extensions read in directories.
	Exts []string
	// Settle is how long content must have stayed unchanged; zero hands
	// out any content that did not change while it was read.
	Settle time.Duration

	handed    [sha256.Size]byte
	hasHanded bool
	cand      [sha256.Size]byte
	candSince time.Time
	lastErr   string
}

// Next reads the files once. It returns new settled content; nil and nil
// when there is none (nothing changed, or the change has not settled); or
// an error that kept the files from being read, once per distinct error.
func (w *Watcher) Next(now time.Time) (*Snapshot, error) {
	s, err := Read(w.Paths, w.Exts)
	if errors.Is(err, ErrChanging) {
		w.cand = [sha256.Size]byte{}
		return nil, nil
	}
	if err != nil {
		if msg := err.Error(); msg != w.lastErr {
			w.lastErr = msg
			// The files may come back with the content handed out
			// before the error: hand it out again then.
			w.hasHanded = false
			return nil, err
		}
		return nil, nil
	}
	w.lastErr = ""
	if s.Hash != w.cand {
		// Any other content in between restarts the clock: content that
		// comes and goes (a file rewritten in place again and again) is
		// not settled, however often it is seen.
		w.cand, w.candSince = s.Hash, now
	}
	if w.hasHanded && s.Hash == w.handed {
		return nil, nil
	}
	if now.Sub(s.Newest) < w.Settle && now.Sub(w.candSince) < w.Settle {
		return nil, nil
	}
	w.handed, w.hasHanded = s.Hash, true
	return s, nil
}
