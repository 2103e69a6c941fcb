package spool

import (
	"bytes"
	"context"
	"io"
	"time"
)

// Writer is an io.Writer in front of w through a spool: each Write (one
// log record, as slog's handlers write them) is copied and queued, never
// waited for, so that a logger on a request path cannot be held up by a
// slow or stalled stderr. A record that finds the buffer full is dropped
// and counted (the Drop policy, whatever Options says).
type Writer struct {
	s *Spool[[]byte]
}

// NewWriter starts a Writer in front of w.
func NewWriter(w io.Writer, opts Options) *Writer {
	opts.Overflow = Drop
	var buf []byte
	sink := SinkFunc[[]byte](func(batch [][]byte) error {
		buf = buf[:0]
		for _, b := range batch {
			buf = append(buf, b...)
		}
		_, err := w.Write(buf)
		if cap(buf) > 1<<20 {
			buf = nil
		}
		return err
	})
	s := New[[]byte](sink, opts)
	s.Start()
	return &Writer{s: s}
}

// Write queues a copy of p; it never blocks and never fails.
func (w *Writer) Write(p []byte) (int, error) {
	w.s.Put(bytes.Clone(p), time.Time{})
	return len(p), nil
}

// Close writes what is queued, until ctx ends.
func (w *Writer) Close(ctx context.Context) error { return w.s.Close(ctx) }

// Health reports the writer's state.
func (w *Writer) Health() Health { return w.s.Health() }
