package filtercore

import (
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

// tally counts requests by key until the next report.
type tally struct {
	idx    map[tallyKey]int
	keys   []tallyKey
	counts []uint64
	last   int  // index of the last key counted, -1 for none
	over   bool // a key did not fit
}

func newTally() tally { return tally{idx: map[tallyKey]int{}, last: -1} }

func (t *tally) add(k tallyKey) {
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
	}
	t.counts[i]++
	t.last = i
}

// drain turns the counts into decision events in the buffer (dropped and
// counted when it is full) and starts over. It returns how many events were
// dropped.
func (t *tally) drain(b *eventBuffer, nowMillis int64, refString func(policies.RuleRef) string) (dropped uint64) {
	for i, k := range t.keys {
		detail := string(k.reason)
		if r := refString(k.ref); r != "" {
			detail += " " + r
		}
		e := wire.Event{Kind: wire.EventDecision, Source: k.source, Route: k.route, Response: k.outcome,
			Count: t.counts[i], UnixMillis: nowMillis, Detail: detail}
		if !b.add(e) {
			dropped++
		}
	}
	if t.over {
		dropped++
		b.dropped++
	}
	clear(t.idx)
	t.keys, t.counts, t.last, t.over = t.keys[:0], t.counts[:0], -1, false
	return dropped
}
