package filtercore

import "github.com/meshguard/meshguard/policies/wire"

// eventBuffer is a bounded FIFO of events awaiting a flush. When full, new
// events are dropped and counted; the count travels in the next batch.
type eventBuffer struct {
	buf      []wire.Event
	max      int
	dropped  uint64 // since the last batch went out
	inflight bool
}

func (b *eventBuffer) add(e wire.Event) bool {
	if len(b.buf) >= b.max {
		b.dropped++
		return false
	}
	b.buf = append(b.buf, e)
	return true
}

// takeBatch removes up to n events and encodes them with the drop count.
func (b *eventBuffer) takeBatch(n int, reporter, version string) (body []byte, count int, dropped uint64) {
	if n > len(b.buf) {
		n = len(b.buf)
	}
	batch := wire.EventBatch{Reporter: reporter, BundleVersion: version, Dropped: b.dropped, Events: b.buf[:n]}
	body = batch.AppendJSON(nil)
	dropped = b.dropped
	b.dropped = 0
	rest := copy(b.buf, b.buf[n:])
	clear(b.buf[rest:])
	b.buf = b.buf[:rest]
	return body, n, dropped
}
