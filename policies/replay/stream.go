package replay

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
	"time"

	"github.com/meshguard/meshguard/policies/wire"
)

// Window selects recorded requests by time; zero bounds are open.
type Window struct {
	Since, Until time.Time
}

func (w Window) has(t time.Time) bool {
	return (w.Since.IsZero() || !t.Before(w.Since)) && (w.Until.IsZero() || t.Before(w.Until))
}

// maxLine bounds one decision-log line.
const maxLine = 1 << 20

// ReplayJSONL replays the decision-log lines of r (JSON lines of
// wire.Decision) in the window, decoding and deciding on workers goroutines
// (default GOMAXPROCS). Blank lines are skipped; a line that is not a
// decision is counted as unreadable. It returns the first read error.
func (r *Replayer) ReplayJSONL(rd io.Reader, win Window, workers int, rep *Report) error {
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	type chunk struct{ lines [][]byte }
	chunks := make(chan chunk, 2*workers)
	parts := make([]*Report, workers)
	var wg sync.WaitGroup
	for i := range workers {
		parts[i] = r.NewReport()
		wg.Add(1)
		go func(p *Report) {
			defer wg.Done()
			var d wire.Decision
			for c := range chunks {
				for _, line := range c.lines {
					d = wire.Decision{}
					if err := wire.DecodeDecision(line, &d); err != nil || d.DecisionID == "" {
						p.Total++
						p.Skipped[SkipUnreadable]++
						continue
					}
					if !win.has(d.Time) {
						continue
					}
					r.Replay(&d, p)
				}
			}
		}(parts[i])
	}
	br := bufio.NewReaderSize(rd, 1<<20)
	var readErr error
	const perChunk = 512
	buf := make([]byte, 0, 512*perChunk)
	c := chunk{}
	for {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			// A line longer than the buffer: read the rest and count it.
			for errors.Is(err, bufio.ErrBufferFull) {
				_, err = br.ReadSlice('\n')
			}
			line = []byte("x") // unreadable
		}
		if t := bytes.TrimSpace(line); len(t) > 0 {
			if len(t) > maxLine {
				t = []byte("x")
			}
			if len(buf)+len(t) > cap(buf) {
				chunks <- c
				c = chunk{}
				buf = make([]byte, 0, max(512*perChunk, len(t)))
			}
			start := len(buf)
			buf = append(buf, t...)
			c.lines = append(c.lines, buf[start:len(buf):len(buf)])
			if len(c.lines) == perChunk {
				chunks <- c
				c = chunk{}
				buf = make([]byte, 0, 512*perChunk)
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				readErr = fmt.Errorf("replay: read: %w", err)
			}
			break
		}
	}
	if len(c.lines) > 0 {
		chunks <- c
	}
	close(chunks)
	wg.Wait()
	for _, p := range parts {
		rep.Merge(p)
	}
	return readErr
}
