package source

import (
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/meshguard/meshguard/policies"
)

// YAML tags as yaml.v3 resolves them.
const (
	tagStr   = "!!str"
	tagInt   = "!!int"
	tagFloat = "!!float"
	tagBool  = "!!bool"
	tagNull  = "!!null"
	tagMerge = "!!merge"
)

// decoder decodes one YAML document into a model value strictly: every
// unknown field, wrong type and duplicate key becomes a diagnostic, and
// decoding carries on so that one run reports every problem.
type decoder struct {
	file   string
	object string // Kind/namespace/name, for diagnostics
	diags  *diagList
	// budget is how many more nodes may be visited, aliases expanded. It
	// bounds the work an alias bomb can cause; the items of a List share
	// the List's.
	budget   *int
	exceeded bool
	types    typeCache
}

// typeCache holds the field tables of the model's struct types, built on
// first use by one loader.
type typeCache map[reflect.Type]*structFields

// diagList collects diagnostics, reporting each (node, code) once even when
// aliases make the decoder visit a node many times, and stops growing at a
// limit so that a hostile file cannot produce an unbounded report.
type diagList struct {
	list    policies.Diagnostics
	seen    map[diagKey]bool
	limit   int
	dropped int
}

type diagKey struct {
	node  *yaml.Node
	code  string
	field string
}

func newDiagList(limit int) *diagList {
	return &diagList{seen: map[diagKey]bool{}, limit: limit}
}

func (l *diagList) add(n *yaml.Node, d policies.Diagnostic) {
	if n != nil {
		k := diagKey{n, d.Code, d.Field}
		if l.seen[k] {
			return
		}
		l.seen[k] = true
	}
	if len(l.list) >= l.limit {
		l.dropped++
		return
	}
	l.list = append(l.list, d)
}

func (d *decoder) errorf(n *yaml.Node, code, field, format string, args ...any) {
	d.diags.add(n, policies.Diagnostic{
		Severity: policies.SeverityError,
		Code:     code,
		Message:  fmt.Sprintf(format, args...),
		Object:   d.object,
		Field:    field,
		Loc:      d.loc(n),
	})
}

func (d *decoder) loc(n *yaml.Node) policies.Location {
	l := policies.Location{File: d.file}
	if n != nil {
		l.Line, l.Column = n.Line, n.Column
	}
	return l
}

// deref follows aliases. yaml.v3 can build alias cycles (an anchor that
// refers to itself), so it gives up after a few hops.
func deref(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode && i < 64; i++ {
		n = n.Alias
	}
	if n != nil && n.Kind == yaml.AliasNode {
		return nil
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.Tag == tagNull
}

// spend charges one node against the budget; false means stop.
func (d *decoder) spend(n *yaml.Node) bool {
	if d.exceeded {
		return false
	}
	*d.budget--
	if *d.budget < 0 {
		d.exceeded = true
		d.errorf(n, policies.CodeTooLarge, "", "document expands to too many YAML nodes (alias expansion limit); refusing to decode it")
		return false
	}
	return true
}

// decode decodes n into v, whose type is one of the model's: structs with
// json tags, slices, string maps, pointers, strings, bools, ints, floats.
func (d *decoder) decode(n *yaml.Node, v reflect.Value, field string) {
	if !d.spend(n) {
		return
	}
	orig := n
	n = deref(n)
	if n == nil {
		d.errorf(orig, policies.CodeInvalidValue, field, "alias does not resolve to a value")
		return
	}
	if isNull(n) {
		return // like JSON null: the zero value
	}
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		d.decode(n, v.Elem(), field)
	case reflect.Struct:
		d.decodeStruct(n, v, field)
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			d.wrongType(n, field, "a list")
			return
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, item := range n.Content {
			d.decode(item, s.Index(i), fmt.Sprintf("%s[%d]", field, i))
		}
		v.Set(s)
	case reflect.Map:
		d.decodeMap(n, v, field)
	case reflect.String:
		if !d.scalar(n, field, "a string", tagStr) {
			return
		}
		v.SetString(n.Value)
	case reflect.Bool:
		if !d.scalar(n, field, "true or false", tagBool) {
			return
		}
		var b bool
		if err := n.Decode(&b); err != nil {
			d.errorf(n, policies.CodeWrongType, field, "expected true or false, got %q", n.Value)
			return
		}
		v.SetBool(b)
	case reflect.Int, reflect.Int64, reflect.Int32:
		if !d.scalar(n, field, "an integer", tagInt) {
			return
		}
		i, err := strconv.ParseInt(strings.ReplaceAll(n.Value, "_", ""), 0, 64)
		if err != nil || v.OverflowInt(i) {
			d.errorf(n, policies.CodeInvalidValue, field, "integer %q out of range", n.Value)
			return
		}
		v.SetInt(i)
	case reflect.Float64:
		if !d.scalar(n, field, "a number", tagFloat, tagInt) {
			return
		}
		var f float64
		if err := n.Decode(&f); err != nil {
			d.errorf(n, policies.CodeInvalidValue, field, "invalid number %q", n.Value)
			return
		}
		v.SetFloat(f)
	default:
		// The model has no other kinds; reaching here is a programming error
		// in the model, reported rather than ignored.
		d.errorf(n, policies.CodeInvalidValue, field, "cannot decode into %s", v.Type())
	}
}

// scalar checks that n is a scalar with one of the tags.
func (d *decoder) scalar(n *yaml.Node, field, want string, tags ...string) bool {
	if n.Kind == yaml.ScalarNode {
		for _, t := range tags {
			if n.Tag == t {
				return true
			}
		}
	}
	d.wrongType(n, field, want)
	return false
}

func (d *decoder) wrongType(n *yaml.Node, field, want string) {
	got := describe(n)
	hint := ""
	if want == "a string" && n.Kind == yaml.ScalarNode && (n.Tag == tagInt || n.Tag == tagFloat || n.Tag == tagBool) {
		hint = fmt.Sprintf(" (quote it: \"%s\")", n.Value)
	}
	d.errorf(n, policies.CodeWrongType, field, "expected %s, got %s%s", want, got, hint)
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch n.Tag {
		case tagStr:
			return fmt.Sprintf("the string %q", clip(n.Value))
		case tagInt:
			return "the integer " + clip(n.Value)
		case tagFloat:
			return "the number " + clip(n.Value)
		case tagBool:
			return "the boolean " + n.Value
		}
		return fmt.Sprintf("a value tagged %s", clip(n.Tag))
	}
	return "an unsupported node"
}

func clip(s string) string {
	if len(s) > 40 {
		return s[:37] + "..."
	}
	return s
}

// mappingPairs returns the key/value pairs of a mapping with YAML merge keys
// (<<: *base) applied: explicit keys win over merged ones. Duplicate explicit
// keys are reported: parsers disagree on which one wins, so neither does.
func (d *decoder) mappingPairs(n *yaml.Node, field string) [][2]*yaml.Node {
	var pairs [][2]*yaml.Node
	index := map[string]int{}
	var merged [][2]*yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := deref(n.Content[i]), n.Content[i+1]
		if k == nil {
			d.errorf(n.Content[i], policies.CodeInvalidValue, field, "alias does not resolve to a value")
			continue
		}
		if k.Kind == yaml.ScalarNode && k.Tag == tagMerge {
			merged = append(merged, d.mergeSources(val, field)...)
			continue
		}
		if k.Kind != yaml.ScalarNode || (k.Tag != tagStr && k.Tag != tagInt && k.Tag != tagBool && k.Tag != tagFloat) {
			d.errorf(k, policies.CodeWrongType, field, "mapping keys must be strings, got %s", describe(k))
			continue
		}
		if prev, dup := index[k.Value]; dup {
			d.errorf(k, policies.CodeDuplicateField, join(field, k.Value), "key %q appears twice in this mapping (first at line %d)", k.Value, pairs[prev][0].Line)
			continue
		}
		index[k.Value] = len(pairs)
		pairs = append(pairs, [2]*yaml.Node{k, val})
	}
	for _, p := range merged {
		if _, ok := index[p[0].Value]; ok {
			continue
		}
		index[p[0].Value] = len(pairs)
		pairs = append(pairs, p)
	}
	return pairs
}

// mergeSources returns the pairs a merge key brings in: one mapping or a
// list of mappings, earlier ones winning.
func (d *decoder) mergeSources(val *yaml.Node, field string) [][2]*yaml.Node {
	v := deref(val)
	if v == nil {
		d.errorf(val, policies.CodeInvalidValue, field, "alias does not resolve to a value")
		return nil
	}
	var maps []*yaml.Node
	switch v.Kind {
	case yaml.MappingNode:
		maps = []*yaml.Node{v}
	case yaml.SequenceNode:
		for _, item := range v.Content {
			m := deref(item)
			if m == nil || m.Kind != yaml.MappingNode {
				d.errorf(item, policies.CodeWrongType, field, "a merge key (<<) takes mappings")
				continue
			}
			maps = append(maps, m)
		}
	default:
		d.errorf(val, policies.CodeWrongType, field, "a merge key (<<) takes a mapping or a list of mappings")
		return nil
	}
	seen := map[string]bool{}
	var out [][2]*yaml.Node
	for _, m := range maps {
		if !d.spend(m) {
			return out
		}
		for i := 0; i+1 < len(m.Content); i += 2 {
			k := deref(m.Content[i])
			if k == nil || k.Kind != yaml.ScalarNode || k.Tag == tagMerge || seen[k.Value] {
				continue // nested merges are not followed
			}
			seen[k.Value] = true
			out = append(out, [2]*yaml.Node{k, m.Content[i+1]})
		}
	}
	return out
}

func (d *decoder) decodeStruct(n *yaml.Node, v reflect.Value, field string) {
	if n.Kind != yaml.MappingNode {
		d.wrongType(n, field, "a mapping")
		return
	}
	fields := d.types.fieldsOf(v.Type())
	for _, p := range d.mappingPairs(n, field) {
		k, val := p[0], p[1]
		f, ok := fields.byName[k.Value]
		if !ok {
			d.unknownField(k, field, fields)
			continue
		}
		d.decode(val, v.Field(f), join(field, k.Value))
	}
}

func (d *decoder) unknownField(k *yaml.Node, field string, fields *structFields) {
	msg := fmt.Sprintf("unknown field %q", k.Value)
	if s := suggest(k.Value, fields.names); s != "" {
		msg += fmt.Sprintf("; did you mean %q?", s)
	}
	d.errorf(k, policies.CodeUnknownField, join(field, k.Value), "%s", msg)
}

func (d *decoder) decodeMap(n *yaml.Node, v reflect.Value, field string) {
	if n.Kind != yaml.MappingNode {
		d.wrongType(n, field, "a mapping")
		return
	}
	if v.Type().Key().Kind() != reflect.String {
		d.errorf(n, policies.CodeInvalidValue, field, "cannot decode into %s", v.Type())
		return
	}
	m := reflect.MakeMap(v.Type())
	for _, p := range d.mappingPairs(n, field) {
		k, val := p[0], p[1]
		if k.Tag != tagStr {
			d.errorf(k, policies.CodeWrongType, field, "expected string keys, got %s%s", describe(k), fmt.Sprintf(" (quote it: \"%s\")", k.Value))
			continue
		}
		elem := reflect.New(v.Type().Elem()).Elem()
		d.decode(val, elem, join(field, k.Value))
		m.SetMapIndex(reflect.ValueOf(k.Value).Convert(v.Type().Key()), elem)
	}
	v.Set(m)
}

func join(field, name string) string {
	if field == "" {
		return name
	}
	return field + "." + name
}

// structFields maps the JSON names of a model struct to field indexes.
type structFields struct {
	byName map[string]int
	names  []string
}

func (c typeCache) fieldsOf(t reflect.Type) *structFields {
	if f, ok := c[t]; ok {
		return f
	}
	sf := &structFields{byName: map[string]int{}}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = f.Name
		}
		sf.byName[name] = i
		sf.names = append(sf.names, name)
	}
	sort.Strings(sf.names)
	c[t] = sf
	return sf
}

// suggest returns the known name closest to s when it is close enough to be
// a likely typo (case or up to two edits), or "".
func suggest(s string, names []string) string {
	best, bestD := "", 3
	for _, n := range names {
		if strings.EqualFold(n, s) {
			return n
		}
		if d := editDistance(strings.ToLower(s), strings.ToLower(n)); d < bestD {
			best, bestD = n, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 99
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			c := prev[j-1]
			if a[i-1] != b[j-1] {
				c++
			}
			cur[j] = min(c, prev[j]+1, cur[j-1]+1)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
