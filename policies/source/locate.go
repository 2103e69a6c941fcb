package source

import (
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// segment is one step of a field path: a mapping key or a list index.
type segment struct {
	key   string
	index int // -1 for a key
}

// parseFieldPath splits a field path such as
// `spec.rules[0].from[0].source.principals[1]` or
// `metadata.labels["app.kubernetes.io/name"]` into segments. Bracketed
// non-numbers are keys (quoted or not).
func parseFieldPath(field string) []segment {
	var segs []segment
	for i := 0; i < len(field); {
		switch field[i] {
		case '.':
			i++
		case '[':
			end := strings.IndexByte(field[i:], ']')
			if q := field[i+1:]; len(q) > 0 && q[0] == '"' {
				// a quoted key may contain ']' and '.'
				if unq, err := strconv.QuotedPrefix(q); err == nil {
					if s, err := strconv.Unquote(unq); err == nil {
						segs = append(segs, segment{key: s, index: -1})
						i += 1 + len(unq)
						if i < len(field) && field[i] == ']' {
							i++
						}
						continue
					}
				}
			}
			if end < 0 {
				segs = append(segs, segment{key: field[i+1:], index: -1})
				return segs
			}
			inner := field[i+1 : i+end]
			if n, err := strconv.Atoi(inner); err == nil && n >= 0 {
				segs = append(segs, segment{index: n})
			} else {
				segs = append(segs, segment{key: inner, index: -1})
			}
			i += end + 1
		default:
			j := i
			for j < len(field) && field[j] != '.' && field[j] != '[' {
				j++
			}
			segs = append(segs, segment{key: field[i:j], index: -1})
			i = j
		}
	}
	return segs
}

// resolveField returns the node that a field path names inside a document:
// for a scalar value the value itself, for a mapping or list value its key,
// for a list item the item. When the path goes further than the document
// (a required field that is missing), it returns the deepest node that
// exists, so that the diagnostic points at the enclosing object.
//
// Map keys containing dots (labels such as app.kubernetes.io/name) are found
// even when the path writes them with dots, by trying the longest run of
// segments that names an existing key.
func resolveField(root *yaml.Node, field string) *yaml.Node {
	return resolveSegments(root, parseFieldPath(field), true)
}

func resolveSegments(root *yaml.Node, segs []segment, top bool) *yaml.Node {
	at := root // what to point at
	cur := root
	viaKey := false
	for i := 0; i < len(segs); i++ {
		cur = deref(cur)
		if cur == nil {
			return at
		}
		s := segs[i]
		if s.index >= 0 {
			if cur.Kind != yaml.SequenceNode || s.index >= len(cur.Content) {
				return at
			}
			cur = cur.Content[s.index]
			at, viaKey = cur, false
			continue
		}
		if cur.Kind != yaml.MappingNode {
			return at
		}
		k, v, used := lookupJoined(cur, segs[i:])
		if k == nil {
			if top && i == 0 && s.key != "spec" && s.key != "metadata" && s.key != "apiVersion" && s.key != "kind" {
				// a path relative to spec ("rules[0]")
				if _, spec := lookup(cur, "spec"); spec != nil {
					return resolveSegments(spec, segs, false)
				}
			}
			return at
		}
		cur = v
		at, viaKey = k, true
		i += used - 1
	}
	if viaKey {
		if v := deref(cur); v != nil && v.Kind == yaml.ScalarNode {
			return v
		}
	}
	return at
}

// lookupJoined finds the key named by segs[0], or by segs[0..n] joined with
// dots for the longest n that names a key; it also searches merge sources.
func lookupJoined(m *yaml.Node, segs []segment) (k, v *yaml.Node, used int) {
	run := 0
	for run < len(segs) && segs[run].index < 0 {
		run++
	}
	for n := run; n >= 1; n-- {
		parts := make([]string, n)
		for i := range parts {
			parts[i] = segs[i].key
		}
		if k, v := lookupMerged(m, strings.Join(parts, ".")); k != nil {
			return k, v, n
		}
	}
	return nil, nil, 0
}

func lookupMerged(m *yaml.Node, key string) (k, v *yaml.Node) {
	if k, v := lookup(m, key); k != nil {
		return k, v
	}
	_, merge := lookup(m, "<<")
	merge = deref(merge)
	if merge == nil {
		return nil, nil
	}
	switch merge.Kind {
	case yaml.MappingNode:
		return lookup(merge, key)
	case yaml.SequenceNode:
		for _, item := range merge.Content {
			if k, v := lookup(item, key); k != nil {
				return k, v
			}
		}
	}
	return nil, nil
}
