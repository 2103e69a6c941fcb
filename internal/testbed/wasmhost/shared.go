package wasmhost

import (
	"errors"
	"sync"
)

// ErrCasMismatch is returned by SharedData.Set when the CAS given does not
// match the key's current CAS.
var ErrCasMismatch = errors.New("shared data: cas mismatch")

// SharedData is the key-value store that the VMs of one Host share
// (proxy_get_shared_data / proxy_set_shared_data), with Envoy's CAS rules:
// every successful Set gives the key a new non-zero CAS; Set with CAS 0
// always succeeds; Set with a non-zero CAS on an existing key succeeds only
// if it equals the key's current CAS. Keys cannot be deleted, as in Envoy.
// It is safe for concurrent use.
type SharedData struct {
	mu      sync.Mutex
	nextCas uint32
	entries map[string]sharedEntry
}

type sharedEntry struct {
	value []byte
	cas   uint32
}

func newSharedData() *SharedData {
	return &SharedData{entries: make(map[string]sharedEntry)}
}

// Get returns a copy of the value of key and its CAS.
func (d *SharedData) Get(key string) (value []byte, cas uint32, ok bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	e, ok := d.entries[key]
	if !ok {
		return nil, 0, false
	}
	return append([]byte(nil), e.value...), e.cas, true
}

// Set stores a copy of value under key if cas allows it (see SharedData).
func (d *SharedData) Set(key string, value []byte, cas uint32) error {
	if d.set(key, append([]byte(nil), value...), cas) != statusOK {
		return ErrCasMismatch
	}
	return nil
}

// Keys returns the number of keys stored.
func (d *SharedData) Keys() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.entries)
}

// set takes ownership of value.
func (d *SharedData) set(key string, value []byte, cas uint32) status {
	d.mu.Lock()
	defer d.mu.Unlock()
	if e, ok := d.entries[key]; ok && cas != 0 && cas != e.cas {
		return statusCasMismatch
	}
	d.nextCas++
	if d.nextCas == 0 {
		d.nextCas = 1
	}
	d.entries[key] = sharedEntry{value: value, cas: d.nextCas}
	return statusOK
}

// withValue runs f on the stored value of key (not a copy) under the lock.
func (d *SharedData) withValue(key string, f func(value []byte, cas uint32)) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	e, ok := d.entries[key]
	if ok {
		f(e.value, e.cas)
	}
	return ok
}

// sharedQueues implements proxy_register/resolve/enqueue/dequeue_shared_queue.
// A queue belongs to the root context that registered it last; enqueueing
// wakes that root context with proxy_on_queue_ready.
type sharedQueues struct {
	mu       sync.Mutex
	byName   map[string]uint32
	queues   []*sharedQueue
	maxItems int
}

type sharedQueue struct {
	name   string
	owner  *Worker
	rootID uint32
	items  [][]byte
}

func newSharedQueues(maxItems int) *sharedQueues {
	return &sharedQueues{byName: make(map[string]uint32), maxItems: maxItems}
}

// register returns the queue's id (1-based), creating it or moving its
// ownership to (owner, rootID).
func (q *sharedQueues) register(name string, owner *Worker, rootID uint32) uint32 {
	q.mu.Lock()
	defer q.mu.Unlock()
	if id, ok := q.byName[name]; ok {
		sq := q.queues[id-1]
		sq.owner, sq.rootID = owner, rootID
		return id
	}
	q.queues = append(q.queues, &sharedQueue{name: name, owner: owner, rootID: rootID})
	id := uint32(len(q.queues))
	q.byName[name] = id
	return id
}

func (q *sharedQueues) resolve(name string) (uint32, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	id, ok := q.byName[name]
	return id, ok
}

// enqueue appends value (owned by the queue from now on) and returns whom to
// notify.
func (q *sharedQueues) enqueue(id uint32, value []byte) (owner *Worker, rootID uint32, st status) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if id == 0 || int(id) > len(q.queues) {
		return nil, 0, statusNotFound
	}
	sq := q.queues[id-1]
	if len(sq.items) >= q.maxItems {
		return nil, 0, statusInternalFailure
	}
	sq.items = append(sq.items, value)
	return sq.owner, sq.rootID, statusOK
}

func (q *sharedQueues) dequeue(id uint32) ([]byte, status) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if id == 0 || int(id) > len(q.queues) {
		return nil, statusNotFound
	}
	sq := q.queues[id-1]
	if len(sq.items) == 0 {
		return nil, statusEmpty
	}
	v := sq.items[0]
	sq.items[0] = nil
	sq.items = sq.items[1:]
	return v, statusOK
}
