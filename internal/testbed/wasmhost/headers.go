package wasmhost

import "strings"

// pair is one header entry. Keys are stored lower-cased, as Envoy's header
// maps do.
type pair struct{ k, v string }

// headerMap is an ordered multi-map with Envoy's proxy-wasm semantics.
type headerMap []pair

func newHeaderMap(in [][2]string) headerMap {
	if len(in) == 0 {
		return nil
	}
	return appendHeaders(make(headerMap, 0, len(in)+4), in)
}

// appendHeaders appends in to m with lower-cased keys.
func appendHeaders(m headerMap, in [][2]string) headerMap {
	for _, kv := range in {
		m = append(m, pair{k: strings.ToLower(kv[0]), v: kv[1]})
	}
	return m
}

// get returns the first value of key. Envoy's proxy_get_header_map_value
// does the same for a header present more than once; a filter that must see
// every value (e.g. to catch a duplicated identity header) reads the pairs.
func (m headerMap) get(key string) (string, bool) {
	for _, p := range m {
		if p.k == key {
			return p.v, true
		}
	}
	return "", false
}

func (m *headerMap) add(key, value string) {
	*m = append(*m, pair{k: key, v: value})
}

// replace sets the first entry of key to value and removes the others, or
// adds key when absent.
func (m *headerMap) replace(key, value string) {
	out := (*m)[:0]
	done := false
	for _, p := range *m {
		if p.k == key {
			if done {
				continue
			}
			p.v, done = value, true
		}
		out = append(out, p)
	}
	if !done {
		out = append(out, pair{k: key, v: value})
	}
	*m = out
}

func (m *headerMap) remove(key string) {
	out := (*m)[:0]
	for _, p := range *m {
		if p.k != key {
			out = append(out, p)
		}
	}
	clear((*m)[len(out):])
	*m = out
}

func (m headerMap) export() [][2]string {
	if m == nil {
		return nil
	}
	out := make([][2]string, len(m))
	for i, p := range m {
		out[i] = [2]string{p.k, p.v}
	}
	return out
}
