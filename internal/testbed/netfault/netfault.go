// Package netfault is a TCP proxy for fault tests that can partition the
// path silently: in the blackhole state it stops forwarding in both
// directions without closing anything, and accepts new connections that it
// never forwards, as a network partition or a vanished host looks to both
// ends (no FIN, no RST). It can also reset every connection at once.
package netfault

import (
	"net"
	"sync"
	"time"
)

// Proxy forwards connections from its address to a target.
type Proxy struct {
	lis    net.Listener
	target string

	mu     sync.Mutex
	holed  bool
	heal   chan struct{} // closed when the blackhole ends
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// Listen starts a proxy on a free loopback port forwarding to target.
func Listen(target string) (*Proxy, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{lis: lis, target: target, conns: map[net.Conn]struct{}{}, heal: make(chan struct{})}
	close(p.heal)
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is the proxy's address.
func (p *Proxy) Addr() string { return p.lis.Addr().String() }

// Blackhole stops forwarding, silently, until Heal.
func (p *Proxy) Blackhole() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.holed {
		p.holed = true
		p.heal = make(chan struct{})
	}
}

// Heal resumes forwarding; bytes held during the blackhole are delivered.
func (p *Proxy) Heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.holed {
		p.holed = false
		close(p.heal)
	}
}

// Reset closes every connection (both ends see the close at once).
func (p *Proxy) Reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		_ = c.Close()
	}
}

// Close stops the proxy and closes every connection.
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.closed = true
	if p.holed {
		p.holed = false
		close(p.heal)
	}
	for c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	err := p.lis.Close()
	p.wg.Wait()
	return err
}

func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		_ = c.Close()
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	_ = c.Close()
}

// gate blocks while the proxy is a blackhole; false when it closed.
func (p *Proxy) gate() bool {
	p.mu.Lock()
	heal, closed := p.heal, p.closed
	p.mu.Unlock()
	<-heal
	p.mu.Lock()
	defer p.mu.Unlock()
	return !closed && !p.closed
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		in, err := p.lis.Accept()
		if err != nil {
			return
		}
		if !p.track(in) {
			continue
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			defer p.untrack(in)
			// A connection made during a blackhole is accepted and held.
			if !p.gate() {
				return
			}
			out, err := net.DialTimeout("tcp", p.target, 5*time.Second)
			if err != nil {
				return
			}
			if !p.track(out) {
				return
			}
			defer p.untrack(out)
			done := make(chan struct{}, 2)
			go func() { p.pipe(out, in); done <- struct{}{} }()
			go func() { p.pipe(in, out); done <- struct{}{} }()
			<-done
		}()
	}
}

// pipe copies src to dst, holding every chunk while the proxy is a
// blackhole.
func (p *Proxy) pipe(dst, src net.Conn) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if !p.gate() {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return // EOF or a closed connection: close both ways
		}
	}
}
