package demo

import (
	"context"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshguard/meshguard/internal/testbed/ca"
	"github.com/meshguard/meshguard/internal/testbed/envoyemu"
)

// call is one scripted request.
type call struct {
	from, to string
	method   string
	path     string
	headers  map[string]string
	jwt      bool   // send the caller's JWT-SVID for the payments audience
	bearer   string // send this token instead
	// sidecar: through the caller's sidecar (its outbound listener to the
	// destination), as an application's calls go; otherwise the caller
	// connects to the destination itself, around its sidecar.
	sidecar bool
}

// legitimate is the normal traffic of the example mesh: every call is
// allowed by the example policies (one refund runs into a dry-run rule).
var legitimate = []call{
	{from: "istio-ingressgateway", to: "frontend", method: "GET", path: "/books/42"},
	{from: "istio-ingressgateway", to: "frontend", method: "POST", path: "/cart"},
	{from: "frontend", to: "catalog", method: "GET", path: "/api/books"},
	{from: "frontend", to: "reviews", method: "GET", path: "/api/reviews/42"},
	{from: "frontend", to: "orders", method: "POST", path: "/api/orders"},
	{from: "reviews", to: "catalog", method: "GET", path: "/api/books/42"},
	{from: "orders", to: "payments-api", method: "POST", path: "/v1/charges", jwt: true},
	{from: "payments-api", to: "ledger", method: "POST", path: "/v1/entries"},
	{from: "prometheus", to: "catalog", method: "GET", path: "/metrics"},
	{from: "support", to: "payments-api", method: "POST", path: "/v1/refunds", headers: map[string]string{"x-ticket-id": "SUP-1234"}},
	{from: "support", to: "payments-api", method: "POST", path: "/v1/refunds"},
}

// attackRound is what the compromised workload does in one round: a burst
// of path enumeration on the one service it may call (enough distinct paths
// within the detectors' window to stand out), credential probing on orders
// and on payments-api with a forged JWT-SVID — both straight to the
// destinations, around its own sidecar — and lateral movement to services
// it never talks to, through its sidecar, whose filter sees the fan-out on
// its outbound side.
func attackRound(round int, forged string) []call {
	var cs []call
	for i := 0; i < 60; i++ {
		n := round*60 + i
		p := scanPaths[n%len(scanPaths)]
		cs = append(cs, call{from: attacker, to: "catalog", method: "GET", path: fmt.Sprintf(p, n)})
	}
	for i := 0; i < 12; i++ {
		cs = append(cs, call{from: attacker, to: "orders", method: "POST", path: "/login",
			headers: map[string]string{"authorization": fmt.Sprintf("Basic %x", rand.Uint64())}})
	}
	for i := 0; i < 4; i++ {
		cs = append(cs, call{from: attacker, to: "payments-api", method: "POST", path: "/v1/charges", bearer: forged})
	}
	cs = append(cs,
		call{from: attacker, to: "orders", method: "GET", path: "/api/orders/1001", sidecar: true},
		call{from: attacker, to: "payments-api", method: "POST", path: "/v1/refunds", sidecar: true},
		call{from: attacker, to: "payments-api", method: "GET", path: "/v1/charges/1", sidecar: true},
		call{from: attacker, to: "ledger", method: "GET", path: "/v1/entries", sidecar: true},
		call{from: attacker, to: "frontend", method: "GET", path: "/checkout", sidecar: true},
	)
	return cs
}

var scanPaths = []string{
	"/api/books/%d", "/.env.%d", "/admin/%d", "/debug/pprof/%d", "/api/users/%d", "/wp-login-%d.php",
	"/api/books/%d/../../etc/passwd", "/actuator/env/%d", "/backup-%d.sql", "/api/v2/books/%d",
	"/.git/objects/%d", "/server-status/%d",
}

// player runs the scripted traffic.
type player struct {
	m       *mesh
	mu      sync.Mutex
	clients map[string]*http.Client
	jwts    map[string]string
}

func (p *player) client(from, to string, sidecar bool) (*http.Client, error) {
	key := fmt.Sprint(from, ">", to, sidecar)
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.clients[key]; ok {
		return c, nil
	}
	src, dst := p.m.nodes[from], p.m.nodes[to]
	if src == nil || dst == nil || dst.proxy == nil {
		return nil, fmt.Errorf("no route %s → %s", from, to)
	}
	c := envoyemu.OutboundClient(src.svids, p.m.ids.Bundles(), dst.id, 3*time.Second)
	if sidecar {
		// Plain HTTP to the sidecar's loopback listener; it makes the mTLS
		// connection.
		c = &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{}}
	}
	p.clients[key] = c
	return c, nil
}

// do runs one call and returns the status (0 on a transport error).
func (p *player) do(ctx context.Context, c call) int {
	cl, err := p.client(c.from, c.to, c.sidecar)
	if err != nil {
		return 0
	}
	dst := p.m.nodes[c.to]
	url := "https://" + dst.inbound + c.path
	if c.sidecar {
		out, ok := p.m.nodes[c.from].outbound[c.to]
		if !ok {
			return 0
		}
		url = "http://" + out + c.path
	}
	req, err := http.NewRequestWithContext(ctx, c.method, url, nil)
	if err != nil {
		return 0
	}
	req.Host = dst.spec.Service()
	for k, v := range c.headers {
		req.Header.Set(k, v)
	}
	switch {
	case c.bearer != "":
		req.Header.Set("authorization", "Bearer "+c.bearer)
	case c.jwt:
		tok, err := p.m.ids.JWT(ctx, p.m.nodes[c.from].id, jwtAudience)
		if err == nil {
			req.Header.Set("authorization", "Bearer "+tok)
		}
	}
	resp, err := cl.Do(req)
	if err != nil {
		return 0
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// forgedJWT is a JWT-SVID for the attacker signed by a key the mesh does not
// trust (a CA the attacker made), with the payments audience.
func forgedJWT(id spiffeid.ID) string {
	c, err := ca.New(trustDomain)
	if err != nil {
		return "forged"
	}
	tok, err := c.IssueJWTSVID(id, []string{jwtAudience}, 5*time.Minute)
	if err != nil {
		return "forged"
	}
	return tok
}

// play runs the phases and returns the summary.
func (m *mesh) play(ctx context.Context) (*Summary, error) {
	m.ui.Start()
	start := time.Now()
	p := &player{m: m, clients: map[string]*http.Client{}, jwts: map[string]string{}}
	defer func() {
		for _, c := range p.clients {
			c.CloseIdleConnections()
		}
	}()
	tickCtx, stopTick := context.WithCancel(ctx)
	defer stopTick()
	go func() {
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-tickCtx.Done():
				return
			case <-t.C:
				m.ui.Tick()
			}
		}
	}()

	d := m.o.Duration
	legitEnd := start.Add(d * 30 / 100)
	attackEnd := start.Add(d * 75 / 100)
	end := start.Add(d)

	// Legitimate traffic runs all along, from every workload but the
	// attacker once the attack starts.
	var compromised, holding atomicBool
	var wg sync.WaitGroup
	legitCtx, stopLegit := context.WithCancel(ctx)
	defer stopLegit()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; legitCtx.Err() == nil; i++ {
			c := legitimate[i%len(legitimate)]
			if c.from == attacker && compromised.get() {
				continue
			}
			status := p.do(legitCtx, c)
			if legitCtx.Err() != nil {
				return
			}
			m.mu.Lock()
			m.sum.LegitRequests++
			if status >= 200 && status < 400 {
				m.sum.LegitAllowed++
			} else {
				m.sum.LegitDenied++
				m.sum.LegitDeniedCalls[fmt.Sprintf("%s → %s %s %s (%d)", c.from, c.to, c.method, c.path, status)]++
			}
			m.mu.Unlock()
			pause := 60 * time.Millisecond
			if holding.get() {
				pause = time.Second // keep the graph alive, quietly
			}
			sleep(legitCtx, pause)
		}
	}()

	m.ui.Phase(1, 4, "legitimate traffic", "the bookstore and payments services call each other as the example policies allow")
	sleep(ctx, time.Until(legitEnd))

	if ctx.Err() == nil {
		m.ui.Phase(2, 4, "attack", fmt.Sprintf("%s is compromised: it scans catalog, probes credentials on orders and payments-api with a forged JWT-SVID, and moves laterally", attacker))
		compromised.set(true)
		forged := forgedJWT(m.nodes[attacker].id)
		for round := 0; ctx.Err() == nil && time.Now().Before(attackEnd); round++ {
			calls := make(chan call)
			var aw sync.WaitGroup
			for w := 0; w < 4; w++ {
				aw.Add(1)
				go func() {
					defer aw.Done()
					for c := range calls {
						status := p.do(ctx, c)
						m.mu.Lock()
						m.sum.AttackRequests++
						if status >= 200 && status < 300 {
							m.sum.AttackSucceeded++
						} else if status == 403 || status == 429 || status == 0 {
							m.sum.AttackDenied++
						}
						m.mu.Unlock()
					}
				}()
			}
			for _, c := range attackRound(round, forged) {
				if c.sidecar {
					// The lateral moves go one at a time, in order, after
					// the scan: the fan-out its sidecar sees.
					continue
				}
				if ctx.Err() != nil || !time.Now().Before(attackEnd) {
					break
				}
				calls <- c
			}
			close(calls)
			aw.Wait()
			for _, c := range attackRound(round, forged) {
				if !c.sidecar || ctx.Err() != nil || !time.Now().Before(attackEnd) {
					continue
				}
				status := p.do(ctx, c)
				m.mu.Lock()
				m.sum.AttackRequests++
				if status >= 200 && status < 300 {
					m.sum.AttackSucceeded++
				} else if status == 403 || status == 429 || status == 0 {
					m.sum.AttackDenied++
				}
				m.mu.Unlock()
			}
			sleep(ctx, 300*time.Millisecond)
		}
	}

	if ctx.Err() == nil {
		m.ui.Phase(3, 4, "containment", fmt.Sprintf("%s tries its normal calls: quarantined identities are denied mesh-wide", attacker))
		for ctx.Err() == nil && time.Now().Before(start.Add(d*88/100)) {
			p.do(ctx, call{from: attacker, to: "catalog", method: "GET", path: "/api/books/7"})
			sleep(ctx, 250*time.Millisecond)
		}
	}
	if ctx.Err() == nil {
		m.ui.Phase(4, 4, "release", "an operator releases the quarantine; normal calls work again")
		m.release(ctx)
		// The released identity's calls are shown, not counted as
		// legitimate traffic: filters may still hold their own
		// short-lived block from the attack.
		for ctx.Err() == nil && time.Now().Before(end) {
			status := p.do(ctx, call{from: attacker, to: "catalog", method: "GET", path: "/api/books/7"})
			m.mu.Lock()
			m.sum.AfterRelease[fmt.Sprint(status)]++
			m.mu.Unlock()
			sleep(ctx, 400*time.Millisecond)
		}
	}
	held := false
	if m.o.Hold && ctx.Err() == nil {
		compromised.set(false)
		holding.set(true)
		where := ""
		if m.console != nil {
			where = ": the console is at " + m.console.url
		}
		m.ui.Info("the story is over; the mesh keeps running with legitimate traffic%s. Ctrl-C to stop.", where)
		<-ctx.Done()
		held = true
	}
	stopLegit()
	wg.Wait()
	m.ui.Finish()

	m.mu.Lock()
	defer m.mu.Unlock()
	sum := m.sum
	sum.Duration = time.Since(start)
	sum.Interrupted = ctx.Err() != nil && !held
	return &sum, nil
}

// release ends the attacker's quarantine, if one is in place.
func (m *mesh) release(ctx context.Context) {
	entries := m.qm.List()
	if len(entries) == 0 {
		m.ui.Info("nothing to release: no quarantine is in place")
		return
	}
	for _, e := range entries {
		m.ui.Info("operator %s releases %s (quarantined by %s: %s)", operatorID, m.name(e.Identity), e.By, truncate(e.Reason, 80))
		if err := m.qm.Release(ctx, e.Identity, operatorID.String(), "released after investigation (demo)"); err != nil {
			m.ui.Info("release %s: %v", e.Identity, err)
		}
	}
}

type atomicBool struct {
	mu sync.Mutex
	v  bool
}

func (b *atomicBool) get() bool  { b.mu.Lock(); defer b.mu.Unlock(); return b.v }
func (b *atomicBool) set(v bool) { b.mu.Lock(); b.v = v; b.mu.Unlock() }

func sleep(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// Render formats the summary.
func (s *Summary) Render() string {
	var b strings.Builder
	fmt.Fprintf(&b, "\n──────── summary (%.1fs%s) ────────\n", s.Duration.Seconds(), map[bool]string{true: ", interrupted", false: ""}[s.Interrupted])
	fmt.Fprintf(&b, "legitimate requests : %d, allowed %d, denied %d\n", s.LegitRequests, s.LegitAllowed, s.LegitDenied)
	for _, k := range slices.Sorted(maps.Keys(s.LegitDeniedCalls)) {
		fmt.Fprintf(&b, "  - denied: %s ×%d\n", k, s.LegitDeniedCalls[k])
	}
	fmt.Fprintf(&b, "attack requests     : %d, denied %d, reached an app with 2xx %d\n", s.AttackRequests, s.AttackDenied, s.AttackSucceeded)
	fmt.Fprintf(&b, "blocked at the source (the caller's own sidecar): %d\n", s.BlockedAtSource)
	fmt.Fprintf(&b, "dry-run would-deny  : %d\n", s.DryRun)
	fmt.Fprintf(&b, "detections          : %d\n", len(s.Detections))
	seen := map[string]bool{}
	for _, d := range s.Detections {
		k := d.Detector + "|" + d.Source + "|" + d.Response
		if seen[k] {
			continue
		}
		seen[k] = true
		resp := d.Response
		if resp == "" {
			resp = "none, reported only" // e.g. an unknown edge in shadow mode
		}
		fmt.Fprintf(&b, "  - %s by %s (response %s)\n", d.Detector, d.Source, resp)
	}
	fmt.Fprintf(&b, "quarantined         : %s\n", listOrNone(s.Quarantined))
	fmt.Fprintf(&b, "denied while quarantined: %d\n", s.DeniedWhileQuarantined)
	fmt.Fprintf(&b, "released            : %s\n", listOrNone(s.Released))
	if len(s.AfterRelease) > 0 {
		fmt.Fprintf(&b, "attacker after release, by status:")
		for _, k := range slices.Sorted(maps.Keys(s.AfterRelease)) {
			fmt.Fprintf(&b, " %s=%d", k, s.AfterRelease[k])
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "decisions by reason :")
	for _, r := range slices.Sorted(maps.Keys(s.ByReason)) {
		fmt.Fprintf(&b, " %s=%d", r, s.ByReason[r])
	}
	b.WriteString("\n")
	return b.String()
}

func listOrNone(l []string) string {
	if len(l) == 0 {
		return "none"
	}
	return strings.Join(l, ", ")
}
