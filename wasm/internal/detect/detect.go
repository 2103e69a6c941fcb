package detect

import (
	"math"
	"net/netip"

	"github.com/meshguard/meshguard/policies"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

const ways = 4 // table associativity

// Request is what the detectors see of one request. Strings are borrowed for
// the duration of the call only.
type Request struct {
	Now        int64 // unix nanoseconds
	Source     spiffeid.ID
	SourceAddr netip.Addr // keys callers without an identity
	Method     string
	Path       string
	Authority  string
	DestAddr   netip.Addr
	Route      string
	// Service is the destination service of the edge (the protected
	// workload's service for an inbound filter, the route's cluster for
	// an outbound one); empty: the :authority host.
	Service string
	// Outbound: the request is one the workload makes (Source is the
	// workload itself). Service is then what the distinct-destinations
	// count and the egress check see besides the :authority host, and
	// the baseline is asked about the edge on any route (the caller's
	// side does not know the destination's routes).
	Outbound bool
}

// Finding is one detector firing.
type Finding struct {
	Detector Detector
	Response Response // after route overrides; a dry-run route downgrades to log
	DryRun   bool     // the response would have limited or blocked
	Score    float64
	Count    uint64
	Detail   string // a constant: what tripped
}

// Edge is a service-graph edge seen for the first time (in this VM's cache).
type Edge struct {
	Report bool
	Known  bool
	Dest   string
	Mode   BaselineMode
}

// Verdict is the detectors' answer for a request.
type Verdict struct {
	// Status is 0 to continue, 403 or 429 to answer locally with Reason.
	Status   uint32
	Reason   policies.Reason
	Detector Detector
	DryRun   bool // Status would have been set but the route is in dry-run
	// Quarantine asks the caller to publish the identity's block to every
	// worker and to report it for mesh-wide quarantine.
	Quarantine    bool
	QuarantineFor int64
	Profile       string
	Edge          Edge
	Findings      [numDetectors + 2]Finding
	N             int
	Ref           Ref
}

func (v *Verdict) add(f Finding) {
	if v.N < len(v.Findings) {
		v.Findings[v.N] = f
		v.N++
	}
}

// Ref lets the response phase find the caller's record again.
type Ref struct {
	slot  int32
	key   uint64
	prof  int16
	mode  policies.Mode
	route string
}

// entry holds no pointers, so the garbage collector never scans the table;
// the caller's name for events lives in Engine.ids at the same index.
type entry struct {
	key      uint64 // 0: free
	lastSeen int64
	gen      uint32
	prof     int16

	// rate: one-second buckets folded into an EWMA of rate and variance
	sec, warm  int64
	cnt        uint32
	mean, vari float64
	rateFired  bool

	// errors
	errWin                      int64
	total, auth, nf, errs, rare uint32
	errFired                    uint8
	// enumeration and lateral
	enumWin        int64
	paths          [pathBits / 64]uint64
	dests          [destBits / 64]uint64
	nPaths, nDests uint16
	newEdges       uint32
	enumFired      uint8
	egressWin      int64

	// responses in force
	blockUntil, limitUntil int64
	blockDet               Detector
	limitRPS               float64
	limitSec               int64
	limitCnt               uint32
}

const (
	firedAuth = 1 << iota
	firedNotFound
	firedErrors
	firedRare
	firedPaths
	firedDests
	firedLateral
)

// Engine runs the detectors of one VM. Not safe for concurrent use: a
// proxy-wasm VM is single-threaded and each VM has its own Engine.
type Engine struct {
	cfg       *Config
	gen       uint32
	entries   []entry
	ids       []string // SPIFFE ID or caller address, by entry index
	sets      uint64
	edges     []edgeSlot
	used      int
	evictions uint64
}

// NewEngine returns an engine with cfg's capacity.
func NewEngine(cfg *Config) *Engine {
	e := &Engine{}
	e.SetConfig(cfg)
	return e
}

// SetConfig installs a new configuration. Per-identity history survives
// unless the capacity changed.
func (e *Engine) SetConfig(cfg *Config) {
	e.gen++
	e.cfg = cfg
	n := roundPow2(cfg.tuning.Capacity)
	if len(e.entries) != n {
		e.entries = make([]entry, n)
		e.ids = make([]string, n)
		e.sets = uint64(n / ways)
		e.used = 0
	}
	m := roundPow2(cfg.tuning.EdgeCache)
	if len(e.edges) != m {
		e.edges = make([]edgeSlot, m)
	}
}

func roundPow2(n int) int {
	p := ways
	for p < n {
		p <<= 1
	}
	return p
}

// Stats are gauges about the engine's state.
type Stats struct {
	Identities, Capacity int
	Evictions            uint64
}

// Stats returns the table occupancy.
func (e *Engine) Stats() Stats {
	return Stats{Identities: e.used, Capacity: len(e.entries), Evictions: e.evictions}
}

// IdentityKey is the hash that keys a caller: its SPIFFE ID, or its address
// when it has none.
func IdentityKey(id spiffeid.ID, addr netip.Addr) uint64 {
	var h uint64
	if !id.IsZero() {
		h = fnvString(fnvOffset, id.String())
	} else {
		b := addr.As16()
		h = fnvByte(fnvOffset, 1)
		for _, c := range b {
			h = fnvByte(h, c)
		}
	}
	return mix(h) | 1
}

func (e *Engine) lookup(key uint64, now int64) (int32, *entry, bool) {
	base := ((key >> 20) & (e.sets - 1)) * ways
	victim := -1
	for i := 0; i < ways; i++ {
		s := &e.entries[base+uint64(i)]
		if s.key == key {
			return int32(base) + int32(i), s, true
		}
		if s.key == 0 {
			if victim < 0 || e.entries[base+uint64(victim)].key != 0 {
				victim = i
			}
			continue
		}
		if victim < 0 || (e.entries[base+uint64(victim)].key != 0 && s.lastSeen < e.entries[base+uint64(victim)].lastSeen) {
			victim = i
		}
	}
	s := &e.entries[base+uint64(victim)]
	if s.key != 0 {
		e.evictions++
	} else {
		e.used++
	}
	*s = entry{key: key, lastSeen: now}
	return int32(base) + int32(victim), s, false
}

func (e *Engine) profileFor(ent *entry, src spiffeid.ID, route string) (int16, *routeSettings) {
	var rs *routeSettings
	if r, ok := e.cfg.routes[route]; ok {
		rs = r
		if r.profile >= 0 {
			return int16(r.profile), rs
		}
	}
	if ent.gen == e.gen {
		return ent.prof, rs
	}
	ent.gen = e.gen
	ent.prof = -1
	for i := range e.cfg.profiles {
		p := &e.cfg.profiles[i]
		if len(p.workloads) == 0 || matchAny(p.workloads, src) {
			ent.prof = int16(i)
			break
		}
	}
	return ent.prof, rs
}

// Observe runs the request-phase detectors for r and applies responses in
// force against its caller.
func (e *Engine) Observe(r *Request) Verdict {
	var v Verdict
	now := r.Now
	key := IdentityKey(r.Source, r.SourceAddr)
	slot, ent, found := e.lookup(key, now)
	if !found {
		if !r.Source.IsZero() {
			e.ids[slot] = r.Source.String()
		} else {
			e.ids[slot] = r.SourceAddr.String()
		}
	}
	ent.lastSeen = now
	pi, rs := e.profileFor(ent, r.Source, r.Route)
	mode := policies.ModeEnforce
	if rs != nil && rs.mode != "" {
		mode = rs.mode
	}
	v.Ref = Ref{slot: slot, key: key, prof: pi, mode: mode, route: r.Route}

	// Responses already in force.
	if ent.blockUntil > now {
		v.deny(mode, 403, policies.ReasonDeniedAnomaly, ent.blockDet)
	} else if ent.limitUntil > now {
		sec := now / 1e9
		if sec != ent.limitSec {
			ent.limitSec, ent.limitCnt = sec, 0
		}
		ent.limitCnt++
		if float64(ent.limitCnt) > ent.limitRPS {
			v.deny(mode, 429, policies.ReasonRateLimited, DetRate)
		}
	}

	// Lateral movement: known edges are one cache probe.
	service := r.Service
	host := lowerHost(hostOnly(r.Authority))
	if service == "" {
		service = host
	}
	bmode := e.cfg.baseline
	if bmode != BaselineNone && service != "" {
		route := r.Route
		if r.Outbound {
			route = "" // one edge per destination, whatever the route
		}
		h := edgeHash(e.ids[slot], service, route)
		es := &e.edges[(h>>20)&uint64(len(e.edges)-1)]
		if es.hash != h || es.gen != e.gen {
			*es = edgeSlot{hash: h, gen: e.gen, known: knownEdge(e.cfg.edges, r.Source, service, route, r.Outbound)}
		}
		if !es.reported && (!es.known || bmode == BaselineLearn) {
			es.reported = true
			v.Edge = Edge{Report: true, Known: es.known, Dest: service, Mode: bmode}
			if !es.known {
				ent.newEdges++
			}
		}
		if !es.known && bmode == BaselineEnforce {
			v.deny(mode, 403, policies.ReasonDeniedBaseline, DetLateral)
		}
	}

	if pi < 0 {
		return v
	}
	p := &e.cfg.profiles[pi]
	v.Profile = p.name

	if p.rate {
		z, minRPS := p.zScore, p.minRPS
		if rs != nil && rs.rateZ > 0 {
			z = rs.rateZ
		}
		if rs != nil && rs.minRPS > 0 {
			minRPS = rs.minRPS
		}
		e.rate(&v, ent, p, rs, now, z, minRPS)
	}
	if p.errors {
		e.rollErrors(ent, p, now)
		if isRare(p.rareMethods, r.Method) {
			ent.rare++
			if ent.rare >= p.rareMax && ent.errFired&firedRare == 0 {
				ent.errFired |= firedRare
				e.fire(&v, ent, p, rs, DetErrors, float64(ent.rare), uint64(ent.rare), "rare_methods", now)
			}
		}
	}
	if p.enum || p.lateral {
		w := p.enumWindow
		if w == 0 {
			w = int64(DefaultWindow)
		}
		if now-ent.enumWin >= w {
			ent.enumWin = now
			ent.paths, ent.dests = [pathBits / 64]uint64{}, [destBits / 64]uint64{}
			ent.nPaths, ent.nDests, ent.newEdges, ent.enumFired = 0, 0, 0, 0
			if v.Edge.Report && !v.Edge.Known {
				ent.newEdges = 1
			}
		}
	}
	if p.enum {
		if setBit(ent.paths[:], hashPath(r.Path)) {
			ent.nPaths++
			if n := linearCount(pathBits, int(ent.nPaths)); exceeds(n, p.maxPaths) && ent.enumFired&firedPaths == 0 {
				ent.enumFired |= firedPaths
				e.fire(&v, ent, p, rs, DetEnumeration, n, uint64(n+0.5), "distinct_paths", now)
			}
		}
		dest := host
		if r.Outbound {
			dest = service // the route's cluster, not what the caller wrote
		}
		if dest != "" && setBit(ent.dests[:], mix(fnvString(fnvOffset, dest))) {
			ent.nDests++
			if n := linearCount(destBits, int(ent.nDests)); exceeds(n, p.maxDests) && ent.enumFired&firedDests == 0 {
				ent.enumFired |= firedDests
				e.fire(&v, ent, p, rs, DetEnumeration, n, uint64(n+0.5), "distinct_destinations", now)
			}
		}
	}
	if p.lateral && bmode >= BaselineShadow && ent.newEdges > p.maxNewEdges && ent.enumFired&firedLateral == 0 {
		ent.enumFired |= firedLateral
		e.fire(&v, ent, p, rs, DetLateral, float64(ent.newEdges), uint64(ent.newEdges), "unknown_edges", now)
	}
	if p.egress && (e.sensitive(p, host, r.DestAddr) || (r.Outbound && service != host && e.sensitive(p, service, netip.Addr{}))) &&
		!matchAny(p.egressAllowed, r.Source) {
		w := p.enumWindow
		if w == 0 {
			w = int64(DefaultWindow)
		}
		if now-ent.egressWin >= w {
			ent.egressWin = now
			e.fire(&v, ent, p, rs, DetEgress, 1, 1, "sensitive_destination", now)
		} else {
			// Reported once per window; the response still holds for every call.
			e.respond(&v, ent, p, rs, DetEgress, effResponse(p, rs, DetEgress), now)
		}
	}
	return v
}

func (v *Verdict) deny(mode policies.Mode, status uint32, reason policies.Reason, d Detector) {
	if v.Status != 0 && (v.Status == 403 || status == 429) {
		return // keep the stronger answer
	}
	switch mode {
	case policies.ModeOff:
		return
	case policies.ModeDryRun:
		v.DryRun = true
		if v.Reason == "" {
			v.Reason, v.Detector = reason, d
		}
		return
	}
	v.Status, v.Reason, v.Detector = status, reason, d
}

func effResponse(p *profile, rs *routeSettings, d Detector) Response {
	if rs != nil && rs.hasResp {
		return rs.response
	}
	return p.responses[d]
}

func (e *Engine) fire(v *Verdict, ent *entry, p *profile, rs *routeSettings, d Detector, score float64, count uint64, detail string, now int64) {
	resp := effResponse(p, rs, d)
	f := Finding{Detector: d, Response: resp, Score: score, Count: count, Detail: detail}
	mode := v.Ref.mode
	if mode == policies.ModeOff {
		f.Response = RespCount
	} else if mode == policies.ModeDryRun && resp > RespLog {
		f.Response, f.DryRun = RespLog, true
	}
	v.add(f)
	e.respond(v, ent, p, rs, d, resp, now)
}

func (e *Engine) respond(v *Verdict, ent *entry, p *profile, rs *routeSettings, d Detector, resp Response, now int64) {
	mode := v.Ref.mode
	switch resp {
	case RespRateLimit:
		if mode == policies.ModeEnforce {
			w := p.errWindow
			if w == 0 {
				w = int64(DefaultWindow)
			}
			ent.limitUntil = now + w
			ent.limitRPS = e.limitFor(ent, p, rs)
			sec := now / 1e9
			if sec != ent.limitSec {
				ent.limitSec, ent.limitCnt = sec, 1
			}
			if float64(ent.limitCnt) > ent.limitRPS {
				v.deny(mode, 429, policies.ReasonRateLimited, d)
			}
		} else {
			v.deny(mode, 429, policies.ReasonRateLimited, d)
		}
	case RespBlock, RespQuarantine:
		dur := p.blockFor
		if resp == RespQuarantine {
			dur = p.quarantineFor
			if mode == policies.ModeEnforce {
				v.Quarantine, v.QuarantineFor = true, dur
			}
		}
		if mode == policies.ModeEnforce {
			ent.blockUntil, ent.blockDet = now+dur, d
		}
		v.deny(mode, 403, policies.ReasonDeniedAnomaly, d)
	}
}

// limitFor is the rate a rate-limited caller keeps: what the rate detector
// considers normal for it, never below the minimum-volume floor.
func (e *Engine) limitFor(ent *entry, p *profile, rs *routeSettings) float64 {
	minRPS, z := p.minRPS, p.zScore
	if minRPS == 0 {
		minRPS = DefaultMinRPS
	}
	if z == 0 {
		z = DefaultZScore
	}
	if rs != nil && rs.minRPS > 0 {
		minRPS = rs.minRPS
	}
	return max(minRPS, ent.mean+z*sd(ent))
}

// sd is the rate's standard deviation with a Poisson floor: a steady caller
// has a variance near zero, but arrivals jitter by about sqrt(mean).
func sd(ent *entry) float64 {
	return max(math.Sqrt(ent.vari), math.Sqrt(ent.mean), 1)
}

func (e *Engine) rate(v *Verdict, ent *entry, p *profile, rs *routeSettings, now int64, z, minRPS float64) {
	sec := now / 1e9
	if ent.sec == 0 {
		ent.sec = sec
	}
	if sec > ent.sec {
		gap := sec - ent.sec
		fold := func(x float64) {
			d := x - ent.mean
			ent.mean += p.alpha * d
			ent.vari = (1 - p.alpha) * (ent.vari + p.alpha*d*d)
		}
		fold(float64(ent.cnt))
		limit := int64(10 * p.halfLife / 1e9)
		if gap-1 > limit {
			// Idle for ten half-lives: the history is gone; start over.
			ent.mean, ent.vari, ent.warm = 0, 0, 0
		} else {
			for i := int64(1); i < gap; i++ {
				fold(0)
			}
			ent.warm += gap
		}
		ent.sec, ent.cnt, ent.rateFired = sec, 0, false
	} else if sec < ent.sec {
		return // clock went backwards; ignore the sample
	}
	ent.cnt++
	if ent.warm < int64(e.cfg.tuning.Warmup) || ent.rateFired {
		return
	}
	c := float64(ent.cnt)
	s := sd(ent)
	if c >= minRPS && c > ent.mean+z*s {
		ent.rateFired = true
		e.fire(v, ent, p, rs, DetRate, (c-ent.mean)/s, uint64(ent.cnt), "rate_zscore", now)
	}
}

func (e *Engine) rollErrors(ent *entry, p *profile, now int64) {
	if now-ent.errWin >= p.errWindow {
		ent.errWin = now
		ent.total, ent.auth, ent.nf, ent.errs, ent.rare, ent.errFired = 0, 0, 0, 0, 0, 0
	}
}

func isRare(ms []string, m string) bool {
	for _, x := range ms {
		if x == m {
			return true
		}
	}
	return false
}

// ObserveResponse runs the response-phase detectors (error ratios) for the
// request that Observe returned ref for. status is the HTTP status.
func (e *Engine) ObserveResponse(ref Ref, now int64, status int) Verdict {
	var v Verdict
	v.Ref = ref
	if ref.key == 0 || int(ref.slot) >= len(e.entries) || ref.prof < 0 || int(ref.prof) >= len(e.cfg.profiles) {
		return v
	}
	ent := &e.entries[ref.slot]
	if ent.key != ref.key {
		return v // evicted meanwhile
	}
	p := &e.cfg.profiles[ref.prof]
	v.Profile = p.name
	if !p.errors {
		return v
	}
	rs := e.cfg.routes[ref.route]
	e.rollErrors(ent, p, now)
	ent.total++
	switch {
	case status == 401 || status == 403:
		ent.auth++
		ent.errs++
	case status == 404:
		ent.nf++
		ent.errs++
	case status >= 400 && status <= 599:
		ent.errs++
	}
	if ent.total < p.minRequests {
		return v
	}
	t := float64(ent.total)
	errR := p.errR
	if rs != nil && rs.errorRatio > 0 {
		errR = rs.errorRatio
	}
	check := func(n uint32, thr float64, bit uint8, detail string) {
		if r := float64(n) / t; r >= thr && ent.errFired&bit == 0 {
			ent.errFired |= bit
			e.fire(&v, ent, p, rs, DetErrors, r, uint64(n), detail, now)
		}
	}
	check(ent.auth, p.authR, firedAuth, "auth_failures")
	check(ent.nf, p.notFoundR, firedNotFound, "not_found")
	check(ent.errs, errR, firedErrors, "error_ratio")
	return v
}

// Source returns the identity string recorded for a Ref (for events).
func (e *Engine) Source(ref Ref) string {
	if int(ref.slot) < len(e.entries) && e.entries[ref.slot].key == ref.key {
		return e.ids[ref.slot]
	}
	return ""
}

func (e *Engine) sensitive(p *profile, host string, dst netip.Addr) bool {
	if host != "" {
		if _, ok := p.egressHosts[host]; ok {
			return true
		}
	}
	if dst.IsValid() {
		d := dst.Unmap()
		for _, a := range p.egressAddrs {
			if a == d {
				return true
			}
		}
	}
	return false
}

// Key is the caller's identity key (see IdentityKey).
func (r Ref) Key() uint64 { return r.key }

// WantsStatus reports whether the response status of the request matters
// to a detector, so the filter can skip reading it otherwise.
func (e *Engine) WantsStatus(ref Ref) bool {
	return ref.key != 0 && ref.prof >= 0 && int(ref.prof) < len(e.cfg.profiles) && e.cfg.profiles[ref.prof].errors
}
