package demo

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshguard/meshguard/controlplane/console"
)

// demoConsole is the control plane's web console in the demo: served on
// loopback without TLS (like everything in the demo), with an operator and
// a viewer token made at start.
type demoConsole struct {
	c        *console.Console
	srv      *http.Server
	url      string
	operator string
	viewer   string
	cancel   context.CancelFunc
	done     chan struct{}
	unsub    func()
}

// startConsole starts the console on addr (default 127.0.0.1:0).
func (m *mesh) startConsole(addr string) (*demoConsole, error) {
	op, err := console.NewToken()
	if err != nil {
		return nil, err
	}
	view, err := console.NewToken()
	if err != nil {
		return nil, err
	}
	var workloads []console.Workload
	for _, w := range demoWorkloads {
		workloads = append(workloads, console.Workload{ID: w.id(trustDomain), Name: w.Name, Namespace: w.Namespace,
			Service: w.Service(), Labels: map[string]string{"app": w.Name}})
	}
	c, err := console.New(console.Options{
		Quarantines: console.Manager(m.qm), Bundle: m.store.Bundle, Workloads: workloads, Timeline: m.rec.store,
		Auth:   console.Auth{Operators: []spiffeid.ID{operatorID}, OperatorToken: op, ViewerToken: view},
		Logger: m.o.Log,
	})
	if err != nil {
		return nil, fmt.Errorf("demo: console: %w", err)
	}
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("demo: console listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle(console.Path, c)
	ctx, cancel := context.WithCancel(context.Background())
	dc := &demoConsole{c: c, operator: op, viewer: view, cancel: cancel, done: make(chan struct{}),
		url: "http://" + l.Addr().String() + console.Path,
		srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}}
	go func() { _ = dc.srv.Serve(l) }()
	go func() {
		defer close(dc.done)
		c.Run(ctx)
	}()
	// Quarantine changes are bundle changes: the console follows the store.
	dc.unsub = m.store.Subscribe(c.BundleChanged)
	return dc, nil
}

func (dc *demoConsole) close() {
	dc.unsub()
	_ = dc.srv.Close()
	dc.cancel()
	<-dc.done
}

// LoginURL is the link that signs in with the operator token (the token is
// in the fragment: browsers do not send it to the server).
func (dc *demoConsole) LoginURL() string { return dc.url + "login#token=" + dc.operator }
