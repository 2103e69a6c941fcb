// Package proc runs the real binaries of the end-to-end suite as child
// processes: it captures their output to a log file (and optionally scans it
// for a line), stops them with SIGTERM then SIGKILL, and never leaves one
// running after the test that started it.
package proc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Spec describes a process to start.
type Spec struct {
	// Name labels the process in logs and errors; it also names the log file.
	Name string
	Path string
	Args []string
	// Env is added to the parent's environment.
	Env []string
	Dir string
	// LogDir receives <Name>.log with stdout and stderr.
	LogDir string
}

// Process is a started child process.
type Process struct {
	spec    Spec
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	waitErr error

	mu    sync.Mutex
	lines []string // every output line, for WaitForLine
	cond  *sync.Cond
}

// Start starts the process. Its output goes to LogDir/<Name>.log and is kept
// in memory for WaitForLine.
func Start(spec Spec) (*Process, error) {
	if spec.Name == "" || spec.Path == "" {
		return nil, errors.New("proc: name and path are required")
	}
	if spec.LogDir == "" {
		spec.LogDir = os.TempDir()
	}
	logPath := filepath.Join(spec.LogDir, spec.Name+".log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("proc: %s: open log: %w", spec.Name, err)
	}
	cmd := exec.Command(spec.Path, spec.Args...)
	cmd.Env = append(os.Environ(), spec.Env...)
	cmd.Dir = spec.Dir
	// Own process group, so that a stop reaches nothing else and a test
	// binary's ^C does not kill children before the cleanup stops them.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	p := &Process{spec: spec, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	p.cond = sync.NewCond(&p.mu)
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("proc: start %s: %w", spec.Name, err)
	}
	fmt.Fprintf(logf, "=== %s start pid=%d: %s %s\n", time.Now().Format(time.RFC3339Nano), cmd.Process.Pid, spec.Path, strings.Join(spec.Args, " "))
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64*1024), 1024*1024)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(logf, line)
			p.mu.Lock()
			if len(p.lines) < 100000 {
				p.lines = append(p.lines, line)
			}
			p.cond.Broadcast()
			p.mu.Unlock()
		}
		io.Copy(io.Discard, pr)
	}()
	go func() {
		p.waitErr = cmd.Wait()
		pw.Close()
		<-readDone
		fmt.Fprintf(logf, "=== %s exit: %v\n", time.Now().Format(time.RFC3339Nano), p.waitErr)
		logf.Close()
		p.mu.Lock()
		close(p.done)
		p.cond.Broadcast()
		p.mu.Unlock()
	}()
	return p, nil
}

// Name is the process's label.
func (p *Process) Name() string { return p.spec.Name }

// Pid is the process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// LogPath is the file holding the process's output.
func (p *Process) LogPath() string { return p.logPath }

// Exited reports whether the process has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// WaitForLine waits until an output line contains substr and returns it.
// It fails when the process exits first or ctx ends.
func (p *Process) WaitForLine(ctx context.Context, substr string) (string, error) {
	stop := context.AfterFunc(ctx, func() {
		p.mu.Lock()
		p.cond.Broadcast()
		p.mu.Unlock()
	})
	defer stop()
	p.mu.Lock()
	defer p.mu.Unlock()
	seen := 0
	for {
		for ; seen < len(p.lines); seen++ {
			if strings.Contains(p.lines[seen], substr) {
				return p.lines[seen], nil
			}
		}
		select {
		case <-p.done:
			return "", fmt.Errorf("proc: %s exited (%v) before printing %q; log: %s", p.spec.Name, p.waitErr, substr, p.logPath)
		default:
		}
		if err := ctx.Err(); err != nil {
			return "", fmt.Errorf("proc: %s: waiting for %q: %w; log: %s", p.spec.Name, substr, err, p.logPath)
		}
		p.cond.Wait()
	}
}

// Tail returns the last n output lines.
func (p *Process) Tail(n int) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	from := max(len(p.lines)-n, 0)
	return strings.Join(p.lines[from:], "\n")
}

// Stop sends SIGTERM to the process group, waits up to grace, then SIGKILLs.
// It returns the exit error of a process that had already exited by itself
// with a failure; a process ended by the signal is not an error.
func (p *Process) Stop(grace time.Duration) error {
	if p.Exited() {
		return nil
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
	return nil
}

// Kill sends SIGKILL to the process group and waits for the exit: a crash.
func (p *Process) Kill() {
	if p.Exited() {
		return
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
}
