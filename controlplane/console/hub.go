package console

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// hub fans messages out to the open streams. Each stream has a bounded
// queue; the producer never waits: a stream whose queue is full is dropped
// (its page reconnects and starts again from a snapshot) and counted.
type hub struct {
	max, queue int

	mu      sync.Mutex
	clients map[*subscriber]struct{}

	gauge    prometheus.Gauge
	dropped  prometheus.Counter
	messages prometheus.Counter
	refused  prometheus.Counter
}

// subscriber is one stream's end of the hub.
type subscriber struct {
	ch   chan []byte
	gone chan struct{} // closed when the hub drops the subscriber
	once sync.Once
}

func newHub(max, queue int) *hub {
	return &hub{max: max, queue: queue, clients: map[*subscriber]struct{}{},
		gauge: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meshguard_console_streams",
			Help: "Live update streams open.",
		}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meshguard_console_stream_slow_dropped_total",
			Help: "Streams dropped because their client did not keep up (its queue was full or a write timed out).",
		}),
		messages: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meshguard_console_stream_messages_total",
			Help: "Updates queued to streams.",
		}),
		refused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meshguard_console_stream_refused_total",
			Help: "Streams refused because the maximum were open.",
		}),
	}
}

func (h *hub) collectors() []prometheus.Collector {
	return []prometheus.Collector{h.gauge, h.dropped, h.messages, h.refused}
}

// join adds a subscriber; false when the hub is full.
func (h *hub) join() (*subscriber, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.clients) >= h.max {
		h.refused.Inc()
		return nil, false
	}
	s := &subscriber{ch: make(chan []byte, h.queue), gone: make(chan struct{})}
	h.clients[s] = struct{}{}
	h.gauge.Set(float64(len(h.clients)))
	return s, true
}

// leave removes a subscriber that ended by itself.
func (h *hub) leave(s *subscriber) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.clients[s]; ok {
		delete(h.clients, s)
		h.gauge.Set(float64(len(h.clients)))
	}
	s.once.Do(func() { close(s.gone) })
}

// drop removes a subscriber that could not keep up. Call with h.mu held.
func (h *hub) drop(s *subscriber) {
	delete(h.clients, s)
	h.gauge.Set(float64(len(h.clients)))
	h.dropped.Inc()
	s.once.Do(func() { close(s.gone) })
}

// slow drops a subscriber whose write timed out.
func (h *hub) slow(s *subscriber) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.clients[s]; ok {
		h.drop(s)
	}
}

// broadcast queues msg to every subscriber without waiting.
func (h *hub) broadcast(msg []byte) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.clients {
		select {
		case s.ch <- msg:
			h.messages.Inc()
		default:
			h.drop(s)
		}
	}
}

func (h *hub) size() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.clients)
}
