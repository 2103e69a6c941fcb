package wasmhost

import (
	"sort"
	"sync"
	"sync/atomic"
)

// MetricType is the kind of a proxy-wasm metric.
type MetricType uint32

// Metric types, numbered as in the proxy-wasm ABI.
const (
	Counter   MetricType = 0
	Gauge     MetricType = 1
	Histogram MetricType = 2
)

func (t MetricType) String() string {
	switch t {
	case Counter:
		return "counter"
	case Gauge:
		return "gauge"
	case Histogram:
		return "histogram"
	}
	return "unknown"
}

// Metric is a snapshot of one metric defined by the guest.
type Metric struct {
	Name string
	Type MetricType
	// Value is the counter's or gauge's value. For a histogram it is the
	// number of recorded values.
	Value int64
	// Sum, Min and Max summarize a histogram's recorded values.
	Sum, Min, Max uint64
}

// Metrics holds the metrics the guest defines with proxy_define_metric.
// Like Envoy's stats they are host-wide: every VM that defines the same name
// and type gets the same metric. Reads on the request path take no lock.
type Metrics struct {
	mu     sync.Mutex // serializes definitions
	byName map[metricKey]uint32
	list   atomic.Pointer[[]*metric]
}

type metricKey struct {
	name string
	typ  MetricType
}

type metric struct {
	name  string
	typ   MetricType
	value atomic.Int64

	hmu           sync.Mutex
	sum, min, max uint64
}

func newMetrics() *Metrics {
	m := &Metrics{byName: make(map[metricKey]uint32)}
	m.list.Store(new([]*metric))
	return m
}

// define returns the metric's id (index+1).
func (m *Metrics) define(typ MetricType, name string) (uint32, status) {
	if typ > Histogram {
		return 0, statusBadArgument
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	k := metricKey{name: name, typ: typ}
	if id, ok := m.byName[k]; ok {
		return id, statusOK
	}
	old := *m.list.Load()
	next := make([]*metric, len(old)+1)
	copy(next, old)
	next[len(old)] = &metric{name: name, typ: typ}
	m.list.Store(&next)
	id := uint32(len(next))
	m.byName[k] = id
	return id, statusOK
}

func (m *Metrics) lookup(id uint32) *metric {
	l := *m.list.Load()
	if id == 0 || int(id) > len(l) {
		return nil
	}
	return l[id-1]
}

func (m *Metrics) increment(id uint32, offset int64) status {
	mt := m.lookup(id)
	switch {
	case mt == nil:
		return statusNotFound
	case mt.typ == Histogram:
		return statusBadArgument
	case mt.typ == Counter && offset <= 0:
		return statusBadArgument // Envoy accepts only positive counter increments
	}
	mt.value.Add(offset)
	return statusOK
}

func (m *Metrics) record(id uint32, v uint64) status {
	mt := m.lookup(id)
	if mt == nil {
		return statusNotFound
	}
	switch mt.typ {
	case Counter:
		mt.value.Add(int64(v))
	case Gauge:
		mt.value.Store(int64(v))
	case Histogram:
		mt.hmu.Lock()
		if mt.value.Load() == 0 || v < mt.min {
			mt.min = v
		}
		if v > mt.max {
			mt.max = v
		}
		mt.sum += v
		mt.value.Add(1)
		mt.hmu.Unlock()
	}
	return statusOK
}

func (m *Metrics) get(id uint32) (uint64, status) {
	mt := m.lookup(id)
	switch {
	case mt == nil:
		return 0, statusNotFound
	case mt.typ == Histogram:
		return 0, statusBadArgument
	}
	return uint64(mt.value.Load()), statusOK
}

func (mt *metric) snapshot() Metric {
	s := Metric{Name: mt.name, Type: mt.typ}
	if mt.typ == Histogram {
		mt.hmu.Lock()
		s.Value, s.Sum, s.Min, s.Max = mt.value.Load(), mt.sum, mt.min, mt.max
		mt.hmu.Unlock()
		return s
	}
	s.Value = mt.value.Load()
	return s
}

// Snapshot returns every metric, sorted by name then type.
func (m *Metrics) Snapshot() []Metric {
	l := *m.list.Load()
	out := make([]Metric, len(l))
	for i, mt := range l {
		out[i] = mt.snapshot()
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Name != out[j].Name {
			return out[i].Name < out[j].Name
		}
		return out[i].Type < out[j].Type
	})
	return out
}

// Get returns the metric named name of type typ.
func (m *Metrics) Get(name string, typ MetricType) (Metric, bool) {
	m.mu.Lock()
	id, ok := m.byName[metricKey{name: name, typ: typ}]
	m.mu.Unlock()
	if !ok {
		return Metric{}, false
	}
	return m.lookup(id).snapshot(), true
}

// Value returns the value of the counter or gauge named name, or 0.
func (m *Metrics) Value(name string) int64 {
	if mt, ok := m.Get(name, Counter); ok {
		return mt.Value
	}
	if mt, ok := m.Get(name, Gauge); ok {
		return mt.Value
	}
	return 0
}
