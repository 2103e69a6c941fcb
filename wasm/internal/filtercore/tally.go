package filtercore

import (
	"strings"

	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/wire"
)

// Outcomes of decision events (wire.Event.Response of a decision event).
const (
	OutcomeAllow  = "allow"
	OutcomeDeny   = "deny"
	OutcomeDryRun = "dry-run"
)

// Limits of the decision tallies.
const (
	// maxTallyKeys bounds the distinct (caller, route, outcome, reason,
	// rule) keys counted between two reports; requests of further keys
	// are not counted, and the report says at least one event was
	// dropped.
	maxTallyKeys = 512
	// allowReportNanos is how often allowed requests are reported:
	// they are traffic rates, not news. Denials and dry-run would-denies
	// go out on every tick.
	allowReportNanos = 5e9
	// maxExample bounds the example path (and method) a key keeps.
	maxExample = 256
)

// tallyKey is what a decision event aggregates over. Every string in it is
// held elsewhere for longer (the identity cache, the interned route, the
// compiled policy), so counting a request allocates nothing once its key
// is known.
type tallyKey struct {
	source  string
	route   string
	outcome string
	reason  policies.Reason
	ref     policies.RuleRef
}

// example is the first request counted under a key since the last report:
// its method and path (without the query), copied, at most maxExample
// bytes each.
type example struct{ method, path string }

// tally counts requests by key until the next report.
type tally struct {
	idx      map[tallyKey]int
	keys     []tallyKey
	counts   []uint64
	examples []example
	last     int  // index of the last key counted, -1 for none
	over     bool // a key did not fit
}

func newTally() tally { return tally{idx: map[tallyKey]int{}, last: -1} }

// add counts a request of key k; method and path are the request's, kept
// (copied: they may be the host's scratch memory) when k is new.
func (t *tally) add(k tallyKey, method, path string) {
	if t.last >= 0 && t.keys[t.last] == k {
		t.counts[t.last]++
		return
	}
	i, ok := t.idx[k]
	if !ok {
		if len(t.keys) >= maxTallyKeys {
			t.over = true
			return
		}
		i = len(t.keys)
		t.idx[k] = i
		t.keys = append(t.keys, k)
		t.counts = append(t.counts, 0)
		t.examples = append(t.examples, example{method: clipCopy(method), path: clipCopy(stripQuery(path))})
	}
	t.counts[i]++
	t.last = i
}

func stripQuery(p string) string {
	if i := strings.IndexAny(p, "?#"); i >= 0 {
		return p[:i]
	}
	return p
}

func clipCopy(s string) string {
	if len(s) > maxExample {
		s = s[:maxExample]
	}
	return strings.Clone(s)
}

// drain turns the counts into decision events in the buffer and starts
// over. Decision events take at most half the buffer, so that a flood of
// denied requests cannot crowd out the detections that get its source
// quarantined: beyond that (or in a full buffer) they are dropped and
// counted. It returns how many events were dropped.
func (t *tally) drain(b *eventBuffer, nowMillis int64, refString func(policies.RuleRef) string) (dropped uint64) {
	for i, k := range t.keys {
		if len(b.buf) >= b.max/2 {
			dropped++
			b.dropped++
			continue
		}
		detail := string(k.reason)
		if r := refString(k.ref); r != "" {
			detail += " " + r
		}
		e := wire.Event{Kind: wire.EventDecision, Source: k.source, Route: k.route, Response: k.outcome,
			Method: t.examples[i].method, Path: t.examples[i].path, Count: t.counts[i], UnixMillis: nowMillis, Detail: detail}
		if !b.add(e) {
			dropped++
		}
	}
	if t.over {
		dropped++
		b.dropped++
	}
	clear(t.idx)
	clear(t.examples)
	t.keys, t.counts, t.examples, t.last, t.over = t.keys[:0], t.counts[:0], t.examples[:0], -1, false
	return dropped
}
