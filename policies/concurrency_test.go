package policies_test

import (
	"fmt"
	"sync"
	"testing"

	"github.com/meshguard/meshguard/internal/testbed/policygen"
	"github.com/meshguard/meshguard/policies"
)

// TestSwapUnderLoad: decisions run while snapshots swap; every decision
// comes from exactly one version (run with -race).
func TestSwapUnderLoad(t *testing.T) {
	set, m := policygen.Realistic(200, 1)
	reqs := policygen.Requests(&set, m, 512, 3)
	var snaps []*policies.Snapshot
	for i := 0; i < 4; i++ {
		b, _, err := policies.NewBundle(fmt.Sprintf("v%d", i), set)
		if err != nil {
			t.Fatal(err)
		}
		s, err := policies.Compile(b)
		if err != nil {
			t.Fatal(err)
		}
		snaps = append(snaps, s)
	}
	var e policies.Engine
	e.Swap(snaps[0])
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				d := e.Decide(&reqs[(i+w)%len(reqs)])
				if d.Version == "" {
					t.Errorf("decision without version: %+v", d)
					return
				}
			}
		}(w)
	}
	for i := 0; i < 2000; i++ {
		e.Swap(snaps[i%len(snaps)])
	}
	close(stop)
	wg.Wait()
}
