package demo

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"
)

// Kind classifies a line the demo prints.
type Kind int

// Kinds of lines.
const (
	KindInfo Kind = iota
	KindAllow
	KindDeny
	KindDryRun
	KindDetect
	KindQuarantine
	KindRelease
)

func (k Kind) label() string {
	switch k {
	case KindAllow:
		return "ALLOW"
	case KindDeny:
		return "DENY"
	case KindDryRun:
		return "DRY-RUN"
	case KindDetect:
		return "DETECT"
	case KindQuarantine:
		return "QUARANTINE"
	case KindRelease:
		return "RELEASE"
	}
	return "INFO"
}

// ANSI colours per kind.
func (k Kind) color() string {
	switch k {
	case KindAllow:
		return "\x1b[32m" // green
	case KindDeny:
		return "\x1b[31m" // red
	case KindDryRun:
		return "\x1b[33m" // yellow
	case KindDetect:
		return "\x1b[35m" // magenta
	case KindQuarantine:
		return "\x1b[1;41;97m" // bold white on red
	case KindRelease:
		return "\x1b[36m" // cyan
	}
	return "\x1b[2m"
}

const reset = "\x1b[0m"

// Counts are the running totals the progress display shows.
type Counts struct {
	Allowed, Denied, DryRun, Detected, Quarantined, Released int
}

// UI prints the demo live. On a terminal it keeps a progress line at the
// bottom, redrawn in place; otherwise it prints plain lines, with a progress
// line at most every progressEvery. It is safe for concurrent use.
type UI struct {
	mu       sync.Mutex
	w        io.Writer
	tty      bool
	color    bool
	start    time.Time
	total    time.Duration
	phase    string
	phaseN   int
	phases   int
	counts   Counts
	lastProg time.Time
	status   bool // a progress line is on screen (tty)
	started  bool
	// quiet caps how many ALLOW lines are printed per phase, so that
	// legitimate traffic does not drown the interesting lines.
	allowShown int
	allowCap   int
}

// NewUI returns a UI writing to w. tty selects the in-place progress line;
// color enables ANSI colours (only honoured with tty).
func NewUI(w io.Writer, tty, color bool, total time.Duration) *UI {
	return &UI{w: w, tty: tty, color: color && tty, start: time.Now(), total: total, allowCap: 6}
}

// IsTerminal reports whether w is a character device (a terminal).
func IsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// Start resets the clock and enables the progress display: call it when
// the timed part begins.
func (u *UI) Start() {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.start, u.started = time.Now(), true
}

// Phase announces phase i of n.
func (u *UI) Phase(i, n int, name, explain string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.phase, u.phaseN, u.phases, u.allowShown = name, i, n, 0
	u.clearStatus()
	bar := strings.Repeat("─", 8)
	if u.color {
		fmt.Fprintf(u.w, "\n\x1b[1m%s phase %d/%d: %s %s\x1b[0m\n", bar, i, n, name, bar)
	} else {
		fmt.Fprintf(u.w, "\n%s phase %d/%d: %s %s\n", bar, i, n, name, bar)
	}
	if explain != "" {
		fmt.Fprintf(u.w, "  %s\n", explain)
	}
	u.drawStatus(true)
}

// Line prints one event. For KindAllow only the first few per phase are
// printed (the counts include all of them).
func (u *UI) Line(k Kind, who, what, why string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	switch k {
	case KindAllow:
		u.counts.Allowed++
		u.allowShown++
		if u.allowShown > u.allowCap {
			if u.allowShown == u.allowCap+1 {
				u.printLine(KindInfo, "", "… further allowed requests are counted, not printed", "")
			}
			u.drawStatus(false)
			return
		}
	case KindDeny:
		u.counts.Denied++
	case KindDryRun:
		u.counts.DryRun++
	case KindDetect:
		u.counts.Detected++
	case KindQuarantine:
		u.counts.Quarantined++
	case KindRelease:
		u.counts.Released++
	}
	u.printLine(k, who, what, why)
}

// Info prints a plain message.
func (u *UI) Info(format string, args ...any) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.printLine(KindInfo, "", fmt.Sprintf(format, args...), "")
}

// Tick refreshes the progress display.
func (u *UI) Tick() {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.drawStatus(false)
}

// Counts returns the totals so far.
func (u *UI) Counts() Counts {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.counts
}

// Finish removes the progress line.
func (u *UI) Finish() {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.clearStatus()
}

// Raw prints text as is (the summary).
func (u *UI) Raw(s string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.clearStatus()
	fmt.Fprint(u.w, s)
}

func (u *UI) printLine(k Kind, who, what, why string) {
	u.clearStatus()
	el := time.Since(u.start).Seconds()
	label := fmt.Sprintf("%-10s", k.label())
	if u.color {
		label = k.color() + label + reset
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%6.1fs  %s", el, label)
	if who != "" {
		fmt.Fprintf(&b, " %-34s", who)
	}
	if what != "" {
		b.WriteString(" " + what)
	}
	if why != "" {
		if u.color {
			b.WriteString("  \x1b[2m" + why + reset)
		} else {
			b.WriteString("  — " + why)
		}
	}
	fmt.Fprintln(u.w, b.String())
	u.drawStatus(false)
}

func (u *UI) progress() string {
	el := time.Since(u.start)
	frac := 0.0
	if u.total > 0 {
		frac = min(float64(el)/float64(u.total), 1)
	}
	const width = 20
	filled := int(frac * width)
	bar := strings.Repeat("█", filled) + strings.Repeat("░", width-filled)
	c := u.counts
	return fmt.Sprintf("[%s] %4.0fs/%.0fs  phase %d/%d %-18s allowed %d · denied %d · dry-run %d · detected %d · quarantined %d",
		bar, el.Seconds(), u.total.Seconds(), u.phaseN, u.phases, u.phase, c.Allowed, c.Denied, c.DryRun, c.Detected, c.Quarantined)
}

func (u *UI) drawStatus(force bool) {
	if !u.started {
		return
	}
	if u.tty {
		line := u.progress()
		if u.color {
			line = "\x1b[7m" + line + reset
		}
		fmt.Fprint(u.w, "\r\x1b[2K"+line)
		u.status = true
		return
	}
	// Plain output: a progress line every few seconds at most.
	if force || time.Since(u.lastProg) >= 5*time.Second {
		u.lastProg = time.Now()
		fmt.Fprintln(u.w, "progress: "+u.progress())
	}
}

func (u *UI) clearStatus() {
	if u.tty && u.status {
		fmt.Fprint(u.w, "\r\x1b[2K")
		u.status = false
	}
}
