package policies

import (
	"hash/maphash"
	"slices"
	"strings"
	"sync/atomic"
)

// A decision starts from the buckets that apply to its target workload, and
// finding them takes a namespace lookup, a label lookup per indexed label
// key, a selector lookup and a workload lookup. Targets are few and each
// receives many requests, so a snapshot keeps what it found for a target:
// its view, found again with one hash and a few comparisons.
//
// The views live in a fixed table of viewSets sets of viewWays slots,
// indexed by a hash of the target's SPIFFE ID (of its namespace when it has
// no ID). A slot is filled once, by a decision that finds no view for its
// target and a free slot in the target's set, and is never replaced: the
// table bounds a snapshot's memory and allocations whatever the traffic,
// and a target that finds its set full is decided on the uncached path,
// which gives the same answer. A new snapshot starts with an empty table.
const (
	viewSets = 2048
	viewWays = 2
)

// viewCache is a snapshot's table of target views. Views are immutable once
// stored; slots are read and filled atomically, so concurrent decisions
// share the table without a lock.
type viewCache struct {
	seed  maphash.Seed
	slots *[viewSets * viewWays]atomic.Pointer[targetView]
}

func newViewCache() viewCache {
	return viewCache{seed: maphash.MakeSeed(), slots: new([viewSets * viewWays]atomic.Pointer[targetView])}
}

// targetView is what applies to one target, and everything collect read to
// find it: a target is the view's when it agrees on all of it.
//
// What every lookup compares comes first, in one cache line.
type targetView struct {
	id, ns string // Target.ID, and Target.Namespace as given
	// labels holds every label key that a selector of the target's scopes
	// (the mesh's and its namespace's) names, with the target's value.
	labels []labelValue
	// byService: a scope of the target has targetRefs, so its buckets
	// depend on Service and Gateway.
	byService bool
	applicable
	service, gateway string
	// jwt are the target's RequestAuthentication rules (JWTProviders).
	jwt []*JWTProvider
}

type labelValue struct {
	key, value string
	present    bool
}

// of reports whether the view is t's.
func (v *targetView) of(t *Target) bool {
	if v.id != t.ID.String() || v.ns != t.Namespace {
		return false
	}
	if v.byService && (v.service != t.Service || v.gateway != t.Gateway) {
		return false
	}
	for i := range v.labels {
		l := &v.labels[i]
		if val, ok := t.Labels[l.key]; ok != l.present || val != l.value {
			return false
		}
	}
	return true
}

// hash places t in the table.
func (c *viewCache) hash(t *Target) uint64 {
	if c.slots == nil {
		return 0
	}
	k := t.ID.String()
	if k == "" {
		k = t.Namespace
	}
	return maphash.String(c.seed, k)
}

// set is the slots of the set at hash h. Slots fill in order and are never
// emptied: an empty slot is followed by empty slots only.
func (c *viewCache) set(h uint64) []atomic.Pointer[targetView] {
	i := int(h%viewSets) * viewWays
	return c.slots[i : i+viewWays]
}

// get returns t's view, or nil.
func (c *viewCache) get(h uint64, t *Target) *targetView {
	if c.slots == nil {
		return nil
	}
	set := c.set(h)
	for i := range set {
		v := set[i].Load()
		if v == nil {
			return nil
		}
		if v.of(t) {
			return v
		}
	}
	return nil
}

// put stores the view of t, whose buckets are bs (collected without a
// route), when its set has a free slot.
func (c *viewCache) put(h uint64, s *Snapshot, t *Target, bs []*bucket) {
	if c.slots == nil {
		return
	}
	set := c.set(h)
	if set[len(set)-1].Load() != nil {
		return // full: allocate nothing
	}
	v := s.newView(t, bs)
	for i := range set {
		// A decision for the same target may have stored it meanwhile.
		if set[i].CompareAndSwap(nil, v) || set[i].Load().of(t) {
			return
		}
	}
}

// newView is the view of t, whose buckets are bs, with what collect read
// of t.
func (s *Snapshot) newView(t *Target, bs []*bucket) *targetView {
	// v.bs stays empty: only explain reads it, and explain takes no view.
	v := &targetView{applicable: s.sum(bs, nil), id: t.ID.String(), ns: t.Namespace, jwt: providersOf(bs)}
	for act := range v.idx {
		v.merged[act] = merge(v.idx[act])
	}
	keys := s.mesh.labelKeys
	if ns, _ := targetNamespace(t); ns != "" {
		if sc := s.namespaces[ns]; sc != nil {
			keys = append(slices.Clip(keys), sc.labelKeys...)
			if len(sc.targets) > 0 {
				v.byService, v.service, v.gateway = true, t.Service, t.Gateway
			}
		}
	}
	for _, k := range keys {
		if slices.ContainsFunc(v.labels, func(l labelValue) bool { return l.key == k }) {
			continue
		}
		val, ok := t.Labels[k]
		v.labels = append(v.labels, labelValue{key: k, value: val, present: ok})
	}
	v.packKey()
	return v
}

// packKey copies the strings every lookup compares (the ID, the namespace,
// the label values) into one allocation, so that comparing them reads one
// or two cache lines, not one per request they came from.
func (v *targetView) packKey() {
	var b strings.Builder
	n := len(v.id) + len(v.ns)
	for i := range v.labels {
		n += len(v.labels[i].value)
	}
	b.Grow(n)
	b.WriteString(v.id)
	b.WriteString(v.ns)
	for i := range v.labels {
		b.WriteString(v.labels[i].value)
	}
	all := b.String()
	v.id, all = all[:len(v.id)], all[len(v.id):]
	v.ns, all = all[:len(v.ns)], all[len(v.ns):]
	for i := range v.labels {
		l := &v.labels[i]
		l.value, all = all[:len(l.value)], all[len(l.value):]
	}
}

// merge is the rules of idx in rule order, or nil when one of idx is
// indexed (scanning it whole would cost more than its index).
func merge(idx []*ruleIndex) []*crule {
	if len(idx) == 1 && idx[0].byPrincipal == nil {
		return idx[0].rules // shared by every view of the bucket
	}
	var out []*crule
	for _, ix := range idx {
		if ix.byPrincipal != nil {
			return nil
		}
		out = append(out, ix.rules...)
	}
	// A rule is in several buckets when its policy has several targetRefs:
	// once is enough.
	// An insertion sort: at most maxBuckets lists of at most smallIndex
	// rules, each in rule order (a generic sort would cost the wasm filter
	// kilobytes).
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j].ord < out[j-1].ord; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return slices.Compact(out)
}
