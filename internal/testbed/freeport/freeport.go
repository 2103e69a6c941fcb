// Package freeport hands out loopback TCP ports for listeners a harness
// starts later (a subprocess, a proxy the control plane configures).
//
// A port the kernel picks for ":0" lies in Linux's ephemeral range
// (32768–60999), where it may become the source port of any process's
// outgoing connection between the probe and the bind. The ports handed out
// here lie below that range, are free when probed, and are never handed out
// twice by one process. Processes running side by side pick at random from
// 12,000 ports, so they rarely meet, and the probe catches most meetings.
package freeport

import (
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
)

const (
	low  = 20000
	span = 12000 // up to 31999, below the ephemeral range
)

var handedOut sync.Map

// Port is a loopback port free now.
func Port() (int, error) {
	for range 2000 {
		p := low + rand.IntN(span)
		if _, dup := handedOut.LoadOrStore(p, true); dup {
			continue
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			continue
		}
		_ = l.Close()
		return p, nil
	}
	return 0, fmt.Errorf("freeport: no free loopback port in %d-%d", low, low+span-1)
}

// Addr is "127.0.0.1:<Port()>".
func Addr() (string, error) {
	p, err := Port()
	if err != nil {
		return "", err
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(p)), nil
}

// T is the part of testing.TB that MustPort and MustAddr use.
type T interface {
	Helper()
	Fatal(args ...any)
}

// MustPort is Port for a test: it fails the test when no port is free.
func MustPort(t T) int {
	t.Helper()
	p, err := Port()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// MustAddr is Addr for a test.
func MustAddr(t T) string {
	t.Helper()
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(MustPort(t)))
}
