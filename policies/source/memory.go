package source

import "github.com/meshguard/meshguard/policies"

// File is one in-memory input of ParseFiles.
type File struct {
	// Name is used in locations and to tell duplicate objects apart.
	Name string
	Data []byte
}

// ParseFiles reads in-memory YAML streams as one set, as Load reads files:
// a process that must parse exactly the bytes it has already read (and
// hashed) uses it instead of Load, which reads the files again.
func ParseFiles(files ...File) (policies.Set, policies.Diagnostics) {
	r := newReader()
	for _, f := range files {
		r.add(f.Name, f.Data)
	}
	return r.finish()
}
