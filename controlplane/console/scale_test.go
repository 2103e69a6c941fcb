package console

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshguard/meshguard/internal/testbed/browser"
	"github.com/meshguard/meshguard/policies/wire"
)

// syntheticMesh is n workloads in namespaces of 50 and e distinct edges,
// reported through the events endpoint as the filters report them: each
// workload posts the decisions on its callers (mostly allowed, some
// denied, dry-run and anomalous).
func syntheticMesh(t *testing.T, p *plane, n, e int) (ids []spiffeid.ID, edges [][2]int) {
	t.Helper()
	rng := rand.New(rand.NewPCG(uint64(n), uint64(e)))
	for i := 0; i < n; i++ {
		ids = append(ids, idOf(fmt.Sprintf("/ns/team-%02d/sa/svc-%04d", i/50, i)))
	}
	seen := map[[2]int]bool{}
	byDst := map[int][]wire.Event{}
	for len(edges) < e {
		s, d := rng.IntN(n), rng.IntN(n)
		if s == d || seen[[2]int{s, d}] {
			continue
		}
		seen[[2]int{s, d}] = true
		edges = append(edges, [2]int{s, d})
		ev := decision(ids[s], "route-a", "allow", "allowed_by_policy AuthorizationPolicy/team/allow#0", uint64(1+rng.IntN(50)))
		switch r := rng.IntN(100); {
		case r < 5:
			ev.Response, ev.Detail = "deny", "denied_no_allow_match"
		case r < 8:
			ev.Response, ev.Detail = "dry-run", "denied_by_policy AuthorizationPolicy/team/tighten#0"
		case r < 9:
			ev = wire.Event{Kind: wire.EventAnomaly, Source: ids[s].String(), Detector: "rate", Response: "log", UnixMillis: 1}
		}
		byDst[d] = append(byDst[d], ev)
	}
	for d, evs := range byDst {
		p.post(ids[d], evs...)
	}
	return ids, edges
}

type scaleResult struct {
	workloads, edges           int
	firstPaint, build          time.Duration
	updateMedian, updateMax    time.Duration
	applyMax, filter, unfilter time.Duration
}

func measureScale(t *testing.T, b *browser.Browser, n, e int) scaleResult {
	t.Helper()
	p := newPlane(t, planeOptions{tick: 250 * time.Millisecond})
	ids, edges := syntheticMesh(t, p, n, e)
	time.Sleep(300 * time.Millisecond) // one tick: the snapshot is what the page gets first anyway
	tab := signIn(t, b, p.url, p.viewTok)
	r := scaleResult{workloads: n, edges: e}
	got, err := browser.Eval[[]float64](tab, 10*time.Second, `[window.__mg.firstPaintMs, window.__mg.buildMs, window.__mg.nodes, window.__mg.edges]`)
	if err != nil {
		t.Fatal(err)
	}
	if int(got[2]) < n || int(got[3]) != e {
		t.Fatalf("the page has %v workloads and %v edges, want %d and %d", got[2], got[3], n, e)
	}
	r.firstPaint, r.build = ms(got[0]), ms(got[1])
	phases, err := browser.Eval[map[string]float64](tab, 5*time.Second, `window.__mg.phases()`)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("scale %d/%d phases since navigation (ms): %v", n, e, phases)

	// Update latency: a denial on an edge that only had allowed traffic,
	// from the POST to the first frame that draws the edge as denied.
	var lat []time.Duration
	rng := rand.New(rand.NewPCG(7, 7))
	for len(lat) < 5 {
		ed := edges[rng.IntN(len(edges))]
		src, dst := ids[ed[0]].String(), ids[ed[1]].String()
		cls, err := browser.Eval[string](tab, 5*time.Second, `window.__mg.edgeClass(`+jsString(src)+`, `+jsString(dst)+`)`)
		if err != nil || cls != "allow" {
			continue
		}
		waiting := make(chan float64, 1)
		go func() {
			v, err := browser.Eval[float64](tab, 10*time.Second, `window.__mg.when(() => window.__mg.edgeClass(`+jsString(src)+`, `+jsString(dst)+`).indexOf("deny") >= 0)`)
			if err != nil {
				v = -1
			}
			waiting <- v
		}()
		time.Sleep(50 * time.Millisecond) // the waiter is in place
		start := time.Now()
		p.post(ids[ed[1]], decision(ids[ed[0]], "route-a", "deny", "denied_no_allow_match", 1))
		painted := <-waiting
		if painted < 0 {
			t.Fatal("the denial never reached the page")
		}
		lat = append(lat, time.Duration((painted-float64(start.UnixNano())/1e6)*float64(time.Millisecond)))
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	r.updateMedian, r.updateMax = lat[len(lat)/2], lat[len(lat)-1]
	apply, err := browser.Eval[float64](tab, 5*time.Second, `window.__mg.lastApplyMs`)
	if err != nil {
		t.Fatal(err)
	}
	r.applyMax = ms(apply)
	f, err := browser.Eval[float64](tab, 20*time.Second, `window.__mg.timeFilter("team-03")`)
	if err != nil {
		t.Fatal(err)
	}
	r.filter = ms(f)
	// The filter shows team-03's edges and hides most of the rest.
	touching := 0
	for _, ed := range edges {
		if ed[0]/50 == 3 || ed[1]/50 == 3 {
			touching++
		}
	}
	visible, err := browser.Eval[int](tab, 10*time.Second, `window.__mg.drawnEdges()`)
	if err != nil || visible < touching || visible >= e {
		t.Errorf("%d edges visible under the namespace filter (%v); %d touch it, %d in all", visible, err, touching, e)
	}
	if f, err = browser.Eval[float64](tab, 20*time.Second, `window.__mg.timeFilter("")`); err != nil {
		t.Fatal(err)
	}
	r.unfilter = ms(f)
	pageClean(t, tab, p.url)
	return r
}

func ms(v float64) time.Duration { return time.Duration(v * float64(time.Millisecond)) }

// TestConsoleScale measures the console in headless Chromium with 1,000
// workloads and 10,000 edges, and with a tenth of that as the baseline of
// the same run: first paint (navigation to the graph drawn, the 440 KiB
// graph library and the snapshot included), the latency of an update (a
// denial posted to the events endpoint until the frame that draws it,
// through the console's 250 ms tick), and how long a namespace filter
// takes to draw. It prints the figures and their ratios; it asserts only
// that everything arrived (timing is not asserted: see `make
// bench-console`).
func TestConsoleScale(t *testing.T) {
	if testing.Short() {
		t.Skip("scale: loads 10,000 edges into Chromium")
	}
	b := browser.Start(t)
	// A first page warms the browser up, so that the baseline does not pay
	// for it.
	signIn(t, b, newPlane(t, planeOptions{}).url, testViewerToken)
	base := measureScale(t, b, 100, 1000)
	full := measureScale(t, b, 1000, 10000)
	for _, r := range []scaleResult{base, full} {
		t.Logf("scale %4d workloads %5d edges: first paint %v (graph build %v), update latency median %v max %v (last apply %v), namespace filter %v, clear filter %v",
			r.workloads, r.edges, r.firstPaint.Round(time.Millisecond), r.build.Round(time.Millisecond),
			r.updateMedian.Round(time.Millisecond), r.updateMax.Round(time.Millisecond), r.applyMax.Round(100*time.Microsecond),
			r.filter.Round(time.Millisecond), r.unfilter.Round(time.Millisecond))
	}
	ratio := func(a, b time.Duration) string { return fmt.Sprintf("%.2f", float64(a)/float64(b)) }
	t.Logf("scale ratio 10,000/1,000 edges: first paint ×%s, update median ×%s, filter ×%s",
		ratio(full.firstPaint, base.firstPaint), ratio(full.updateMedian, base.updateMedian), ratio(full.filter, base.filter))
}
