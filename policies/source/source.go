// Package source reads meshguard policy documents from Kubernetes-style YAML:
// files, directories (recursively, *.yaml and *.yml) and multi-document
// streams separated by "---".
//
// Decoding is strict. Unknown fields, values of the wrong type, duplicate
// keys, unknown apiVersion/kind pairs, missing names and duplicate objects
// are errors, and every problem is reported in one pass as a
// policies.Diagnostic with a file:line:column and a stable code. The set that
// decodes is then checked with policies.Validate and policies.Lint, and the
// field paths of their diagnostics are resolved back to the YAML line and
// column they came from.
//
// A Kubernetes v1 List is read item by item. Like kubectl, a document
// without metadata.namespace is placed in the
// "default" namespace. Fields that the Kubernetes API server fills in
// (metadata.uid, resourceVersion, generation, creationTimestamp,
// managedFields, ...) and a top-level status are accepted and ignored, so
// that the output of `kubectl get -o yaml` can be linted as is.
package source

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/meshguard/meshguard/policies"
)

// Limits that bound the work a hostile input can cause.
const (
	// MaxFileSize is the largest file (or in-memory input) read, in bytes.
	MaxFileSize = 4 << 20
	// maxExpandedNodes caps the YAML nodes visited while decoding one
	// document, aliases expanded; a document may also not expand to more
	// than expansionRatio times its own node count (plus a small allowance).
	maxExpandedNodes = 4_000_000
	expansionRatio   = 10
	expansionSlack   = 10_000
	// maxDiagnosticsPerFile keeps reports of hostile files bounded.
	maxDiagnosticsPerFile = 1000
)

// DefaultNamespace is the namespace of documents that do not name one, as
// with kubectl.
const DefaultNamespace = "default"

// Load reads the given files and directories from the operating system.
// Directories are walked recursively for *.yaml and *.yml files (hidden
// directories are skipped; symbolic links to files are followed, so that a
// mounted Kubernetes ConfigMap reads as its keys); files named explicitly are
// read whatever their extension. The error is only for paths that cannot be read; problems in
// the documents are Diagnostics.
func Load(paths ...string) (policies.Set, policies.Diagnostics, error) {
	return load(osFS{}, paths)
}

// LoadFS is Load over a file system (for example an embedded one).
func LoadFS(fsys fs.FS, paths ...string) (policies.Set, policies.Diagnostics, error) {
	return load(ioFS{fsys}, paths)
}

// Parse reads one in-memory YAML stream; name is used in locations.
func Parse(name string, data []byte) (policies.Set, policies.Diagnostics) {
	r := newReader()
	r.add(name, data)
	return r.finish()
}

// fileSystem is the little that Load needs from a file system.
type fileSystem interface {
	stat(name string) (fs.FileInfo, error)
	walk(root string, fn fs.WalkDirFunc) error
	open(name string) (io.ReadCloser, error)
	join(elem ...string) string
}

type osFS struct{}

func (osFS) stat(name string) (fs.FileInfo, error)       { return os.Stat(name) }
func (osFS) walk(root string, fn fs.WalkDirFunc) error   { return filepath.WalkDir(root, fn) }
func (osFS) open(name string) (io.ReadCloser, error)     { return os.Open(name) }
func (osFS) join(elem ...string) string                  { return filepath.Join(elem...) }
func (f ioFS) stat(name string) (fs.FileInfo, error)     { return fs.Stat(f.fsys, name) }
func (f ioFS) walk(root string, fn fs.WalkDirFunc) error { return fs.WalkDir(f.fsys, root, fn) }
func (f ioFS) open(name string) (io.ReadCloser, error)   { return f.fsys.Open(name) }
func (ioFS) join(elem ...string) string                  { return path.Join(elem...) }

type ioFS struct{ fsys fs.FS }

// Files lists the files Load would read for the paths, in order.
func Files(paths ...string) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	for _, p := range paths {
		files, err := collect(osFS{}, p)
		if err != nil {
			return nil, err
		}
		for _, f := range files {
			k := path.Clean(filepath.ToSlash(f))
			if !seen[k] {
				seen[k] = true
				out = append(out, f)
			}
		}
	}
	return out, nil
}

func load(fsys fileSystem, paths []string) (policies.Set, policies.Diagnostics, error) {
	r := newReader()
	if len(paths) == 0 {
		return policies.Set{}, nil, errors.New("source: no paths given")
	}
	seen := map[string]bool{}
	for _, p := range paths {
		files, err := collect(fsys, p)
		if err != nil {
			return policies.Set{}, nil, err
		}
		for _, f := range files {
			// a file reached twice (a directory and a file in it) is read once
			k := path.Clean(filepath.ToSlash(f))
			if seen[k] {
				continue
			}
			seen[k] = true
			data, err := readLimited(fsys, f)
			if errors.Is(err, errTooLarge) {
				r.tooLarge(f)
				continue
			}
			if err != nil {
				return policies.Set{}, nil, err
			}
			r.add(f, data)
		}
	}
	set, diags := r.finish()
	return set, diags, nil
}

// collect lists the policy files under p in lexical order.
func collect(fsys fileSystem, p string) ([]string, error) {
	info, err := fsys.stat(p)
	if err != nil {
		return nil, fmt.Errorf("source: %w", err)
	}
	if !info.IsDir() {
		return []string{p}, nil
	}
	var files []string
	err = fsys.walk(p, func(name string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("source: %w", err)
		}
		if d.IsDir() {
			if name != p && strings.HasPrefix(d.Name(), ".") {
				return fs.SkipDir
			}
			return nil
		}
		if ext := strings.ToLower(path.Ext(d.Name())); ext != ".yaml" && ext != ".yml" {
			return nil
		}
		regular := d.Type().IsRegular()
		if d.Type()&fs.ModeSymlink != 0 {
			// Kubernetes mounts ConfigMap keys as symlinks into a hidden
			// ..data directory: follow links to files, not to directories.
			info, err := fsys.stat(name)
			regular = err == nil && info.Mode().IsRegular()
		}
		if regular {
			files = append(files, name)
		}
		return nil
	})
	return files, err
}

var errTooLarge = errors.New("file too large")

func readLimited(fsys fileSystem, name string) ([]byte, error) {
	f, err := fsys.open(name)
	if err != nil {
		return nil, fmt.Errorf("source: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("source: read %s: %w", name, err)
	}
	if len(data) > MaxFileSize {
		return nil, errTooLarge
	}
	return data, nil
}

// document is one decoded object and the YAML it came from, kept to locate
// the diagnostics of later passes.
type document struct {
	file string
	root *yaml.Node
}

// reader accumulates documents from any number of inputs.
type reader struct {
	set      policies.Set
	diags    policies.Diagnostics
	objects  map[string]*document // by Kind/namespace/name
	settings *document
	types    typeCache
}

func newReader() *reader {
	return &reader{objects: map[string]*document{}, types: typeCache{}}
}

func (r *reader) tooLarge(file string) {
	r.diags = append(r.diags, policies.Diagnostic{
		Severity: policies.SeverityError,
		Code:     policies.CodeTooLarge,
		Message:  fmt.Sprintf("file is larger than %d bytes; refusing to read it", MaxFileSize),
		Loc:      policies.Location{File: file},
	})
}

// add reads every document of one YAML stream.
func (r *reader) add(file string, data []byte) {
	if len(data) > MaxFileSize {
		r.tooLarge(file)
		return
	}
	diags := newDiagList(maxDiagnosticsPerFile)
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var doc yaml.Node
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			diags.add(nil, syntaxDiagnostic(file, err))
			break // the stream cannot be resynchronized after a syntax error
		}
		if len(doc.Content) == 0 {
			continue
		}
		r.addDocument(file, doc.Content[0], diags, nil)
	}
	if diags.dropped > 0 {
		diags.list = append(diags.list, policies.Diagnostic{
			Severity: policies.SeverityError,
			Code:     policies.CodeTooLarge,
			Message:  fmt.Sprintf("%d more problems in this file not shown", diags.dropped),
			Loc:      policies.Location{File: file},
		})
	}
	r.diags = append(r.diags, diags.list...)
}

func syntaxDiagnostic(file string, err error) policies.Diagnostic {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	loc := policies.Location{File: file}
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		if num, tail, ok := strings.Cut(rest, ": "); ok {
			var line int
			if _, err := fmt.Sscanf(num, "%d", &line); err == nil && line > 0 {
				loc.Line, msg = line, tail
			}
		}
	}
	return policies.Diagnostic{
		Severity: policies.SeverityError,
		Code:     policies.CodeYAMLSyntax,
		Message:  msg,
		Loc:      loc,
	}
}

// isManaged reports fields the Kubernetes API server fills in; they are
// accepted and ignored so that `kubectl get -o yaml` output reads as is.
func isManaged(field string) bool {
	switch field {
	case "status",
		"metadata.uid", "metadata.resourceVersion", "metadata.generation",
		"metadata.creationTimestamp", "metadata.deletionTimestamp",
		"metadata.deletionGracePeriodSeconds", "metadata.managedFields",
		"metadata.selfLink", "metadata.finalizers", "metadata.ownerReferences",
		"metadata.generateName":
		return true
	}
	return false
}

// newObject returns a new model object for apiVersion and kind.
func newObject(apiVersion, kind string) (any, bool) {
	switch apiVersion {
	case policies.APIVersionIstioV1, policies.APIVersionIstioV1beta1:
		switch kind {
		case policies.KindAuthorizationPolicy:
			return &policies.AuthorizationPolicy{}, true
		case policies.KindRequestAuthentication:
			return &policies.RequestAuthentication{}, true
		}
	case policies.APIVersionMeshguard:
		switch kind {
		case policies.KindIdentityPolicy:
			return &policies.IdentityPolicy{}, true
		case policies.KindDefaultDeny:
			return &policies.DefaultDeny{}, true
		case policies.KindRouteOverride:
			return &policies.RouteOverride{}, true
		case policies.KindTrafficBaseline:
			return &policies.TrafficBaseline{}, true
		case policies.KindAnomalyProfile:
			return &policies.AnomalyProfile{}, true
		case policies.KindQuarantine:
			return &policies.Quarantine{}, true
		case policies.KindMeshSettings:
			return &policies.MeshSettings{}, true
		}
	}
	return nil, false
}

func expectedAPIVersion(kind string) string {
	switch kind {
	case policies.KindAuthorizationPolicy, policies.KindRequestAuthentication:
		return policies.APIVersionIstioV1
	case policies.KindIdentityPolicy, policies.KindDefaultDeny, policies.KindRouteOverride,
		policies.KindTrafficBaseline, policies.KindAnomalyProfile, policies.KindQuarantine,
		policies.KindMeshSettings:
		return policies.APIVersionMeshguard
	}
	return ""
}

// lookup returns the value node of key in a mapping, or nil.
func lookup(m *yaml.Node, key string) (k, v *yaml.Node) {
	m = deref(m)
	if m == nil || m.Kind != yaml.MappingNode {
		return nil, nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if kn := deref(m.Content[i]); kn != nil && kn.Kind == yaml.ScalarNode && kn.Value == key {
			return kn, m.Content[i+1]
		}
	}
	return nil, nil
}

func scalarAt(m *yaml.Node, key string) (string, *yaml.Node) {
	k, v := lookup(m, key)
	if k == nil {
		return "", nil
	}
	if v = deref(v); v != nil && v.Kind == yaml.ScalarNode && v.Tag == tagStr {
		return v.Value, v
	}
	return "", k
}

func countNodes(root *yaml.Node) int {
	n := 0
	stack := []*yaml.Node{root}
	for len(stack) > 0 {
		top := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		n++
		if top.Kind != yaml.AliasNode {
			stack = append(stack, top.Content...)
		}
	}
	return n
}

// addDocument decodes one document. budget is nil for a top-level
// document, which gets its own; List items share their List's.
func (r *reader) addDocument(file string, root *yaml.Node, diags *diagList, budget *int) {
	inList := budget != nil
	orig := root
	if root = deref(root); root == nil || isNull(root) {
		return // an empty document
	}
	if budget == nil {
		b := min(countNodes(root)*expansionRatio+expansionSlack, maxExpandedNodes)
		budget = &b
	}
	d := &decoder{file: file, diags: diags, types: r.types, budget: budget}
	if !d.spend(root) {
		return
	}
	if root.Kind != yaml.MappingNode {
		d.errorf(orig, policies.CodeWrongType, "", "a document must be a mapping with apiVersion, kind, metadata and spec; got %s", describe(root))
		return
	}
	apiVersion, avNode := scalarAt(root, "apiVersion")
	kind, kindNode := scalarAt(root, "kind")
	_, metaNode := lookup(root, "metadata")
	name, _ := scalarAt(metaNode, "name")
	namespace, _ := scalarAt(metaNode, "namespace")
	if namespace == "" {
		namespace = DefaultNamespace
	}
	if kind != "" {
		d.object = kind + "/" + namespace + "/" + name
	}
	bad := false
	if apiVersion == "" {
		if avNode != nil {
			d.errorf(avNode, policies.CodeWrongType, "apiVersion", "apiVersion must be a string")
		} else {
			d.errorf(root, policies.CodeMissingField, "apiVersion", "apiVersion is required")
		}
		bad = true
	}
	if kind == "" {
		if kindNode != nil {
			d.errorf(kindNode, policies.CodeWrongType, "kind", "kind must be a string")
		} else {
			d.errorf(root, policies.CodeMissingField, "kind", "kind is required")
		}
		bad = true
	}
	if bad {
		return
	}
	if apiVersion == "v1" && kind == "List" && !inList {
		r.addList(root, d)
		return
	}
	obj, ok := newObject(apiVersion, kind)
	if !ok {
		if want := expectedAPIVersion(kind); want != "" {
			d.errorf(avNode, policies.CodeUnknownKind, "apiVersion", "%s is not served by apiVersion %q; use %q", kind, apiVersion, want)
		} else {
			d.errorf(kindNode, policies.CodeUnknownKind, "kind", "unknown kind %q (apiVersion %q); meshguard reads %s %s and %s, and %s %s", kind, apiVersion,
				policies.APIVersionIstioV1, policies.KindAuthorizationPolicy, policies.KindRequestAuthentication, policies.APIVersionMeshguard,
				"IdentityPolicy, DefaultDeny, RouteOverride, TrafficBaseline, AnomalyProfile, Quarantine, MeshSettings")
		}
		return
	}

	before := len(diags.list) + diags.dropped
	v := reflect.ValueOf(obj).Elem()
	d.decodeObject(root, v)
	if len(diags.list)+diags.dropped != before {
		return // reported; a partly decoded object is not validated
	}

	meta := v.FieldByName("Metadata").Addr().Interface().(*policies.ObjectMeta)
	if meta.Name == "" {
		at, field := root, "metadata.name"
		if k, _ := lookup(root, "metadata"); k != nil {
			at = k
		}
		d.errorf(at, policies.CodeMissingField, field, "metadata.name is required")
		return
	}
	if meta.Namespace == "" {
		meta.Namespace = DefaultNamespace
	}
	v.FieldByName("Loc").Set(reflect.ValueOf(policies.Location{File: file, Line: root.Line, Column: root.Column}))
	key := kind + "/" + meta.Namespace + "/" + meta.Name
	doc := &document{file: file, root: root}

	if ms, ok := obj.(*policies.MeshSettings); ok {
		if r.settings != nil {
			d.errorf(root, policies.CodeDuplicateObject, "", "at most one MeshSettings per policy set; another is at %s", locString(r.settings))
			return
		}
		r.settings = doc
		r.objects[key] = doc
		r.set.Settings = ms.Spec
		return
	}
	if prev, dup := r.objects[key]; dup {
		d.errorf(root, policies.CodeDuplicateObject, "", "%s is defined twice; first at %s", key, locString(prev))
		return
	}
	r.objects[key] = doc
	switch o := obj.(type) {
	case *policies.AuthorizationPolicy:
		r.set.AuthorizationPolicies = append(r.set.AuthorizationPolicies, *o)
	case *policies.RequestAuthentication:
		r.set.RequestAuthentications = append(r.set.RequestAuthentications, *o)
	case *policies.IdentityPolicy:
		r.set.IdentityPolicies = append(r.set.IdentityPolicies, *o)
	case *policies.DefaultDeny:
		r.set.DefaultDenies = append(r.set.DefaultDenies, *o)
	case *policies.RouteOverride:
		r.set.RouteOverrides = append(r.set.RouteOverrides, *o)
	case *policies.TrafficBaseline:
		r.set.TrafficBaselines = append(r.set.TrafficBaselines, *o)
	case *policies.AnomalyProfile:
		r.set.AnomalyProfiles = append(r.set.AnomalyProfiles, *o)
	case *policies.Quarantine:
		r.set.Quarantines = append(r.set.Quarantines, *o)
	}
}

// addList reads a Kubernetes v1 List, what `kubectl get -o yaml` prints for
// several objects: each item is a document. Lists do not nest.
func (r *reader) addList(root *yaml.Node, d *decoder) {
	d.object = ""
	for i := 0; i+1 < len(root.Content); i += 2 {
		k := deref(root.Content[i])
		if k == nil || k.Kind != yaml.ScalarNode {
			continue
		}
		switch k.Value {
		case "apiVersion", "kind", "metadata":
		case "items":
			items := deref(root.Content[i+1])
			if items == nil || isNull(items) {
				continue
			}
			if items.Kind != yaml.SequenceNode {
				d.wrongType(items, "items", "a list")
				continue
			}
			for _, item := range items.Content {
				if *d.budget < 0 {
					return
				}
				r.addDocument(d.file, item, d.diags, d.budget)
			}
		default:
			d.errorf(k, policies.CodeUnknownField, k.Value, "unknown field %q in a List (apiVersion, kind, metadata, items)", k.Value)
		}
	}
}

func locString(d *document) string {
	return fmt.Sprintf("%s:%d:%d", d.file, d.root.Line, d.root.Column)
}

// decodeObject decodes a document's root mapping, skipping the fields the
// Kubernetes API server manages.
func (d *decoder) decodeObject(root *yaml.Node, v reflect.Value) {
	d.spend(root)
	fields := d.types.fieldsOf(v.Type())
	for _, p := range d.mappingPairs(root, "") {
		k, val := p[0], p[1]
		if isManaged(k.Value) {
			continue
		}
		f, ok := fields.byName[k.Value]
		if !ok {
			d.unknownField(k, "", fields)
			continue
		}
		if k.Value == "metadata" {
			d.decodeMetadata(val, v.Field(f))
			continue
		}
		d.decode(val, v.Field(f), k.Value)
	}
}

func (d *decoder) decodeMetadata(n *yaml.Node, v reflect.Value) {
	if !d.spend(n) {
		return
	}
	orig := n
	if n = deref(n); n == nil {
		d.errorf(orig, policies.CodeInvalidValue, "metadata", "alias does not resolve to a value")
		return
	}
	if isNull(n) {
		return
	}
	if n.Kind != yaml.MappingNode {
		d.wrongType(n, "metadata", "a mapping")
		return
	}
	fields := d.types.fieldsOf(v.Type())
	for _, p := range d.mappingPairs(n, "metadata") {
		k, val := p[0], p[1]
		field := "metadata." + k.Value
		if isManaged(field) {
			continue
		}
		f, ok := fields.byName[k.Value]
		if !ok {
			d.unknownField(k, "metadata", fields)
			continue
		}
		d.decode(val, v.Field(f), field)
	}
}

// finish sorts the set, runs the set-wide checks and locates their
// diagnostics.
func (r *reader) finish() (policies.Set, policies.Diagnostics) {
	s := &r.set
	sortByMeta(s.AuthorizationPolicies, func(p policies.AuthorizationPolicy) policies.ObjectMeta { return p.Metadata })
	sortByMeta(s.RequestAuthentications, func(p policies.RequestAuthentication) policies.ObjectMeta { return p.Metadata })
	sortByMeta(s.IdentityPolicies, func(p policies.IdentityPolicy) policies.ObjectMeta { return p.Metadata })
	sortByMeta(s.DefaultDenies, func(p policies.DefaultDeny) policies.ObjectMeta { return p.Metadata })
	sortByMeta(s.RouteOverrides, func(p policies.RouteOverride) policies.ObjectMeta { return p.Metadata })
	sortByMeta(s.TrafficBaselines, func(p policies.TrafficBaseline) policies.ObjectMeta { return p.Metadata })
	sortByMeta(s.AnomalyProfiles, func(p policies.AnomalyProfile) policies.ObjectMeta { return p.Metadata })
	sortByMeta(s.Quarantines, func(p policies.Quarantine) policies.ObjectMeta { return p.Metadata })

	// Validate returns errors and warnings (Lint's included). Warnings about
	// the same field with the same code are one finding worded twice: the
	// first wording is kept.
	checked := policies.Validate(s)
	seen := map[string]bool{}
	for _, d := range checked {
		k := d.Severity.String() + "\x00" + d.Code + "\x00" + d.Object + "\x00" + d.Field
		if d.Severity == policies.SeverityError {
			k += "\x00" + d.Message
		}
		if seen[k] {
			continue
		}
		seen[k] = true
		r.locate(&d)
		r.diags = append(r.diags, d)
	}
	sortDiagnostics(r.diags)
	return r.set, r.diags
}

func sortByMeta[T any](list []T, meta func(T) policies.ObjectMeta) {
	sort.SliceStable(list, func(i, j int) bool {
		a, b := meta(list[i]), meta(list[j])
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		return a.Name < b.Name
	})
}

// sortDiagnostics orders diagnostics as a reader meets them: by file, line
// and column; those without a file come last, in the order found.
func sortDiagnostics(ds policies.Diagnostics) {
	sort.SliceStable(ds, func(i, j int) bool {
		a, b := ds[i].Loc, ds[j].Loc
		if (a.File == "") != (b.File == "") {
			return a.File != ""
		}
		if a.File != b.File {
			return a.File < b.File
		}
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		return a.Column < b.Column
	})
}

// locate sets the location of a diagnostic from a set-wide pass by resolving
// its object and field path in the YAML it came from.
func (r *reader) locate(d *policies.Diagnostic) {
	doc := r.objects[d.Object]
	field := d.Field
	if doc == nil && r.settings != nil {
		switch {
		case strings.HasPrefix(d.Object, policies.KindMeshSettings+"/"), d.Object == policies.KindMeshSettings, d.Object == "settings":
			doc = r.settings
		case d.Object == "" && (field == "settings" || strings.HasPrefix(field, "settings.")):
			doc = r.settings
			field = "spec" + strings.TrimPrefix(field, "settings")
		}
	}
	if doc == nil {
		return
	}
	n := resolveField(doc.root, field)
	d.Loc = policies.Location{File: doc.file, Line: n.Line, Column: n.Column}
}
