package freeport

import (
	"net"
	"strconv"
	"testing"
)

func TestPortsAreDistinctBindableAndBelowTheEphemeralRange(t *testing.T) {
	seen := map[int]bool{}
	for range 200 {
		p := MustPort(t)
		if p < low || p >= 32768 {
			t.Fatalf("port %d outside %d-32767", p, low)
		}
		if seen[p] {
			t.Fatalf("port %d handed out twice", p)
		}
		seen[p] = true
	}
	a := MustAddr(t)
	l, err := net.Listen("tcp", a)
	if err != nil {
		t.Fatalf("the address handed out does not bind: %v", err)
	}
	defer l.Close()
	// A port in use is never handed out.
	_, ps, _ := net.SplitHostPort(a)
	busy, _ := strconv.Atoi(ps)
	handedOut.Delete(busy)
	for range 2000 {
		if MustPort(t) == busy {
			t.Fatalf("port %d is bound and was handed out", busy)
		}
	}
}
