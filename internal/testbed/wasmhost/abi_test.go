package wasmhost

import (
	"bytes"
	"context"
	"encoding/binary"
	"testing"
)

func TestPairsRoundTrip(t *testing.T) {
	for _, tc := range [][]pair{
		nil,
		{{":method", "GET"}},
		{{"a", ""}, {"", "b"}, {"x-multi", "1"}, {"x-multi", "2"}},
		{{"k", string([]byte{0, 1, 2})}},
	} {
		b := make([]byte, pairsSize(tc))
		encodePairs(b, tc)
		got, err := decodePairs(b)
		if err != nil {
			t.Fatalf("decode(%v): %v", tc, err)
		}
		if len(got) != len(tc) {
			t.Fatalf("decode(encode(%v)) = %v", tc, got)
		}
		for i := range tc {
			if got[i] != tc[i] {
				t.Errorf("pair %d = %v, want %v", i, got[i], tc[i])
			}
		}
	}
}

func TestDecodePairsMalformed(t *testing.T) {
	le := binary.LittleEndian
	for name, b := range map[string][]byte{
		"short count":         {1, 0},
		"count too large":     le.AppendUint32(nil, 1<<30),
		"size past end":       append(le.AppendUint32(le.AppendUint32(le.AppendUint32(nil, 1), 100), 0), 'a', 0, 0),
		"huge sizes overflow": append(le.AppendUint32(le.AppendUint32(le.AppendUint32(nil, 1), 0xffffffff), 0xffffffff), 0, 0),
		"missing terminators": append(le.AppendUint32(le.AppendUint32(le.AppendUint32(nil, 1), 1), 1), 'a', 'b'),
	} {
		if _, err := decodePairs(b); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// FuzzDecodePairs feeds the map parser, whose input comes from guest
// memory, arbitrary bytes: it must never panic, and what it accepts must
// re-encode to a map it decodes the same way.
func FuzzDecodePairs(f *testing.F) {
	seed := []pair{{":path", "/"}, {"x", "y"}}
	b := make([]byte, pairsSize(seed))
	encodePairs(b, seed)
	f.Add(b)
	f.Add([]byte{})
	f.Add([]byte{1, 0, 0, 0})
	f.Add(binary.LittleEndian.AppendUint32(nil, 0xffffffff))
	f.Fuzz(func(t *testing.T, in []byte) {
		pairs, err := decodePairs(in)
		if err != nil {
			return
		}
		out := make([]byte, pairsSize(pairs))
		encodePairs(out, pairs)
		again, err := decodePairs(out)
		if err != nil || len(again) != len(pairs) {
			t.Fatalf("re-decode: %v, %d vs %d pairs", err, len(again), len(pairs))
		}
		for i := range pairs {
			if again[i] != pairs[i] {
				t.Fatalf("pair %d changed: %v vs %v", i, again[i], pairs[i])
			}
		}
	})
}

func TestHeaderMap(t *testing.T) {
	base := func() headerMap {
		return newHeaderMap([][2]string{{"A", "1"}, {"b", "2"}, {"a", "3"}})
	}
	for _, tc := range []struct {
		name string
		op   func(*headerMap)
		want [][2]string
	}{
		{"lower-cased on input", func(*headerMap) {}, [][2]string{{"a", "1"}, {"b", "2"}, {"a", "3"}}},
		{"add appends", func(m *headerMap) { m.add("c", "4") }, [][2]string{{"a", "1"}, {"b", "2"}, {"a", "3"}, {"c", "4"}}},
		{"replace keeps first slot, drops others", func(m *headerMap) { m.replace("a", "x") }, [][2]string{{"a", "x"}, {"b", "2"}}},
		{"replace adds when absent", func(m *headerMap) { m.replace("z", "9") }, [][2]string{{"a", "1"}, {"b", "2"}, {"a", "3"}, {"z", "9"}}},
		{"remove drops all", func(m *headerMap) { m.remove("a") }, [][2]string{{"b", "2"}}},
		{"remove absent is no-op", func(m *headerMap) { m.remove("q") }, [][2]string{{"a", "1"}, {"b", "2"}, {"a", "3"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := base()
			tc.op(&m)
			got := m.export()
			if len(got) != len(tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Fatalf("got %v, want %v", got, tc.want)
				}
			}
		})
	}
	if v, ok := base().get("a"); !ok || v != "1" {
		t.Errorf("get of a repeated header = %q, want the first value as Envoy", v)
	}
	if _, ok := base().get("zz"); ok {
		t.Error("get of an absent key found something")
	}
}

func TestSharedDataCAS(t *testing.T) {
	d := newSharedData()
	if err := d.Set("k", []byte("a"), 12345); err != nil {
		t.Fatalf("first Set with any cas must succeed (key absent): %v", err)
	}
	_, cas, _ := d.Get("k")
	if cas == 0 {
		t.Fatal("cas 0 after Set")
	}
	if err := d.Set("k", []byte("b"), cas+1); err != ErrCasMismatch {
		t.Errorf("Set with wrong cas = %v", err)
	}
	if err := d.Set("k", []byte("b"), cas); err != nil {
		t.Errorf("Set with current cas = %v", err)
	}
	if err := d.Set("k", []byte("c"), cas); err != ErrCasMismatch {
		t.Errorf("Set with a stale cas = %v", err)
	}
	if err := d.Set("k", []byte("d"), 0); err != nil {
		t.Errorf("Set with cas 0 = %v", err)
	}
	v, _, _ := d.Get("k")
	v[0] = 'X' // Get returns a copy
	if v2, _, _ := d.Get("k"); !bytes.Equal(v2, []byte("d")) {
		t.Errorf("value = %q", v2)
	}
}

func TestMetricsRules(t *testing.T) {
	m := newMetrics()
	c, _ := m.define(Counter, "c")
	g, _ := m.define(Gauge, "g")
	hg, _ := m.define(Histogram, "h")
	if again, _ := m.define(Counter, "c"); again != c {
		t.Error("redefining a metric gave a new id")
	}
	for _, tc := range []struct {
		name string
		got  status
		want status
	}{
		{"counter +", m.increment(c, 2), statusOK},
		{"counter -", m.increment(c, -1), statusBadArgument},
		{"gauge -", m.increment(g, -5), statusOK},
		{"histogram increment", m.increment(hg, 1), statusBadArgument},
		{"record histogram", m.record(hg, 7), statusOK},
		{"record gauge", m.record(g, 42), statusOK},
		{"unknown id", m.increment(99, 1), statusNotFound},
		{"bad type", func() status { _, st := m.define(7, "x"); return st }(), statusBadArgument},
	} {
		if tc.got != tc.want {
			t.Errorf("%s: status %d, want %d", tc.name, tc.got, tc.want)
		}
	}
	if v, _ := m.get(c); v != 2 {
		t.Errorf("counter = %d", v)
	}
	if v, _ := m.get(g); v != 42 {
		t.Errorf("gauge = %d (record sets a gauge)", v)
	}
	if _, st := m.get(hg); st != statusBadArgument {
		t.Errorf("get on a histogram = %d", st)
	}
}

// BenchmarkNoopRequest is the host's cost per HTTP request through the no-op
// filter on one VM: seven guest callbacks plus the host's bookkeeping.
func BenchmarkNoopRequest(b *testing.B) {
	h := benchHost(b, 1)
	w := h.Worker(0)
	req := DefaultRequest(0)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := w.HandleRequest(ctx, req, nil); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(w.MemoryBytes())/(1<<20), "guest-MiB")
}

// BenchmarkNoopRawCallbacks is the baseline for BenchmarkNoopRequest: the
// same guest callbacks called directly through wazero, without streams,
// header maps or results. The ratio of the two is the host's overhead.
func BenchmarkNoopRawCallbacks(b *testing.B) {
	h := benchHost(b, 1)
	w := h.Worker(0)
	root := w.root.id
	steps := []struct {
		fn interface {
			CallWithStack(context.Context, []uint64) error
		}
	}{
		{w.fn.contextCreate}, {w.fn.requestHeaders}, {w.fn.responseHeaders},
		{w.fn.log}, {w.fn.done}, {w.fn.delete},
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		w.mu.Lock()
		id := uint64(w.newContextID())
		for i, st := range steps {
			w.stack[0], w.stack[1], w.stack[2] = id, 1, 1
			if i == 0 {
				w.stack[1] = uint64(root)
			}
			if err := st.fn.CallWithStack(w.ctx, w.stack); err != nil {
				b.Fatal(err)
			}
		}
		w.mu.Unlock()
	}
}

// BenchmarkNoopRequestParallel spreads requests over as many VMs as
// GOMAXPROCS, one goroutine per VM at a time.
func BenchmarkNoopRequestParallel(b *testing.B) {
	n := max(2, testingProcs())
	h := benchHost(b, n)
	req := DefaultRequest(0)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		w := h.Next()
		for pb.Next() {
			if _, err := w.HandleRequest(ctx, req, nil); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func benchHost(b *testing.B, vms int) *Host {
	b.Helper()
	h, err := New(context.Background(), testModules["noop"], Config{VMs: vms, CompilationCache: testCache})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { h.Close() })
	return h
}
