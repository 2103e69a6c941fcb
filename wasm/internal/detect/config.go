package detect

import (
	"errors"
	"math"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/meshguard/meshguard/policies"
)

// Detector names a detector; its String form is the wire.Event.Detector and
// metric label value.
type Detector uint8

// Detectors.
const (
	DetRate Detector = iota
	DetErrors
	DetEnumeration
	DetEgress
	DetLateral
	numDetectors
)

var detectorNames = [numDetectors]string{"rate", "errors", "enumeration", "egress", "lateral"}

func (d Detector) String() string {
	if d < numDetectors {
		return detectorNames[d]
	}
	return "unknown"
}

// Detectors lists every detector, for metric definition.
func Detectors() []Detector {
	return []Detector{DetRate, DetErrors, DetEnumeration, DetEgress, DetLateral}
}

// Response is what happens when a detector fires. Higher values are
// stronger; when several fire on one request the strongest applies.
type Response uint8

// Responses.
const (
	RespCount      Response = iota // metric only
	RespLog                        // metric, log line and event
	RespRateLimit                  // + answer 429 above the identity's learned rate for a while
	RespBlock                      // + answer 403 for a while
	RespQuarantine                 // + block on every worker and ask the control plane to quarantine
	numResponses
)

var responseNames = [numResponses]string{"count", "log", "rate-limit", "block", "quarantine"}

func (r Response) String() string {
	if r < numResponses {
		return responseNames[r]
	}
	return "unknown"
}

// Responses lists every response, for metric definition.
func Responses() []Response {
	return []Response{RespCount, RespLog, RespRateLimit, RespBlock, RespQuarantine}
}

func parseResponse(s string) (Response, bool) {
	for i, n := range responseNames {
		if s == n {
			return Response(i), true
		}
	}
	return 0, false
}

// Defaults, as documented in policies/model.go and docs/wasm.md.
const (
	DefaultHalfLife        = 30 * time.Second
	DefaultZScore          = 4.0
	DefaultMinRPS          = 5.0
	DefaultWindow          = 10 * time.Second
	DefaultMinRequests     = 20
	DefaultAuthRatio       = 0.5
	DefaultNotFoundRatio   = 0.5
	DefaultErrorRatio      = 0.8
	DefaultMaxPaths        = 50
	DefaultMaxDestinations = 10
	DefaultMaxNewEdges     = 3
	DefaultQuarantineFor   = 10 * time.Minute
	DefaultBlockFor        = time.Minute
	DefaultCapacity        = 4096
	DefaultEdgeCache       = 4096
	DefaultWarmup          = 10 // closed one-second buckets before the rate detector may fire
)

// DefaultRareMethods are methods legitimate service-to-service traffic
// rarely uses.
var defaultRareMethods = []string{"TRACE", "CONNECT", "OPTIONS", "PROPFIND", "TRACK", "DEBUG"}

// defaultEgress covers the Kubernetes API service names and the cloud
// metadata endpoints of AWS, GCP, Azure, Alibaba and OpenStack.
var defaultEgress = []string{
	"169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200",
	"metadata.google.internal", "metadata", "metadata.azure.internal",
	"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local",
}

// Tuning are knobs of the filter itself (not of a policy): from the plugin
// configuration. The zero value means defaults.
type Tuning struct {
	Capacity  int // per-identity records per VM
	EdgeCache int // edge cache slots per VM
	Warmup    int // seconds of history before the rate detector may fire
}

type profile struct {
	name      string
	workloads []policies.IDPattern // empty: every caller

	rate                    bool
	alpha, zScore, minRPS   float64
	halfLife                time.Duration
	errors                  bool
	errWindow               int64
	minRequests             uint32
	authR, notFoundR, errR  float64
	rareMethods             []string
	rareMax                 uint32
	enum                    bool
	enumWindow              int64
	maxPaths, maxDests      float64
	egress                  bool
	egressHosts             map[string]struct{}
	egressAddrs             []netip.Addr
	egressAllowed           []policies.IDPattern
	lateral                 bool
	maxNewEdges             uint32
	responses               [numDetectors]Response
	quarantineFor, blockFor int64
}

// routeSettings are a RouteOverride's anomaly overrides.
type routeSettings struct {
	mode       policies.Mode
	profile    int // -1: by caller
	rateZ      float64
	minRPS     float64
	errorRatio float64
	response   Response
	hasResp    bool
}

// Config is compiled detection configuration. Immutable; safe to share.
type Config struct {
	profiles []profile
	routes   map[string]*routeSettings
	edges    EdgeOracle
	baseline BaselineMode
	tuning   Tuning
}

// NewConfig compiles the detection settings of set: its AnomalyProfiles and
// RouteOverrides; edges (normally the snapshot compiled from the same set)
// answers for its TrafficBaselines and may be nil. A set without
// AnomalyProfiles gets one built-in profile, policies.DefaultAnomalyProfile,
// that runs every detector with the "log" response.
//
// The set must be one policies.Compile accepted: the policy compiler checks
// every field read here, and reports each problem with its object and
// field, before a bundle reaches a filter. What NewConfig still checks is a
// guard that fails closed should an unchecked set arrive: it names the
// first field out of range and refuses the whole configuration.
func NewConfig(set *policies.Set, edges EdgeOracle, t Tuning) (*Config, error) {
	c := &Config{routes: map[string]*routeSettings{}, tuning: t, edges: edges}
	if edges != nil {
		c.baseline = parseBaselineMode(edges.BaselineMode())
	}
	if c.tuning.Capacity <= 0 {
		c.tuning.Capacity = DefaultCapacity
	}
	if c.tuning.EdgeCache <= 0 {
		c.tuning.EdgeCache = DefaultEdgeCache
	}
	if c.tuning.Warmup <= 0 {
		c.tuning.Warmup = DefaultWarmup
	}
	if c.tuning.Capacity > 1<<20 || c.tuning.EdgeCache > 1<<20 {
		return nil, errors.New("detection capacity and edge cache are limited to 1048576")
	}
	var g guard
	// First match by (namespace, name), as policies.Snapshot.AnomalyProfile.
	aps := sortedProfiles(set.AnomalyProfiles)
	if len(aps) == 0 {
		aps = []policies.AnomalyProfile{{
			Metadata: policies.ObjectMeta{Name: policies.DefaultAnomalyProfile},
			Spec: policies.AnomalyProfileSpec{
				Rate: &policies.RateDetector{}, Errors: &policies.ErrorDetector{},
				Enumeration: &policies.EnumerationDetector{}, Egress: &policies.EgressDetector{},
				Lateral: &policies.LateralDetector{},
			},
		}}
	}
	for i := range aps {
		c.profiles = append(c.profiles, compileProfile(&aps[i], &g))
	}
	for i := range set.RouteOverrides {
		ro := &set.RouteOverrides[i].Spec
		_, dup := c.routes[ro.Route]
		g.check(ro.Route != "" && !dup, "RouteOverride spec.route")
		rs := routeSettings{mode: ro.Mode, profile: -1}
		switch ro.Mode {
		case "", policies.ModeEnforce, policies.ModeDryRun, policies.ModeOff:
		default:
			g.fail("RouteOverride spec.mode")
		}
		if a := ro.Anomaly; a != nil {
			if a.Profile != "" {
				// In a set without profiles every route has the built-in
				// one, whatever it names (the compiler warns).
				rs.profile = slices.IndexFunc(c.profiles, func(p profile) bool { return p.name == a.Profile })
				g.check(rs.profile >= 0 || len(set.AnomalyProfiles) == 0, "RouteOverride spec.anomaly.profile")
			}
			if a.RateZ != nil {
				rs.rateZ = *a.RateZ
				g.check(rs.rateZ > 0, "RouteOverride spec.anomaly.rateZ")
			}
			if a.MinRPS != nil {
				rs.minRPS = *a.MinRPS
				g.check(rs.minRPS > 0, "RouteOverride spec.anomaly.minRps")
			}
			if a.ErrorRate != nil {
				rs.errorRatio = *a.ErrorRate
				g.check(rs.errorRatio > 0 && rs.errorRatio <= 1, "RouteOverride spec.anomaly.errorRatio")
			}
			if a.Response != "" {
				var ok bool
				rs.response, ok = parseResponse(a.Response)
				g.check(ok, "RouteOverride spec.anomaly.response")
				rs.hasResp = true
			}
		}
		c.routes[ro.Route] = &rs
	}
	if g.bad != "" {
		return nil, errors.New("detection settings: " + g.bad + " is out of range; the policy compiler refuses this set (meshguard policy validate says why)")
	}
	return c, nil
}

// guard remembers the first field found out of range.
type guard struct{ bad string }

func (g *guard) fail(field string) {
	if g.bad == "" {
		g.bad = field
	}
}

func (g *guard) check(ok bool, field string) {
	if !ok {
		g.fail(field)
	}
}

// WithTuning returns the configuration with other tuning: the same
// profiles, routes and baseline for an engine of another size.
func (c *Config) WithTuning(t Tuning) *Config {
	out := *c
	if t.Capacity > 0 {
		out.tuning.Capacity = t.Capacity
	}
	if t.EdgeCache > 0 {
		out.tuning.EdgeCache = t.EdgeCache
	}
	if t.Warmup > 0 {
		out.tuning.Warmup = t.Warmup
	}
	return &out
}

// sortedProfiles returns the profiles ordered by (namespace, name), stably.
// An insertion sort over indexes: a set has a handful of profiles, and
// a generic sort of a struct this size is kilobytes of the module.
func sortedProfiles(ps []policies.AnomalyProfile) []policies.AnomalyProfile {
	order := make([]int, len(ps))
	for i := range order {
		order[i] = i
		for j := i; j > 0 && profileLess(&ps[order[j]], &ps[order[j-1]]); j-- {
			order[j], order[j-1] = order[j-1], order[j]
		}
	}
	out := make([]policies.AnomalyProfile, len(ps))
	for i, k := range order {
		out[i] = ps[k]
	}
	return out
}

func profileLess(a, b *policies.AnomalyProfile) bool {
	if a.Metadata.Namespace != b.Metadata.Namespace {
		return a.Metadata.Namespace < b.Metadata.Namespace
	}
	return a.Metadata.Name < b.Metadata.Name
}

// duration is a duration the compiler accepted, or def when unset.
func duration(v string, def time.Duration, g *guard, field string) time.Duration {
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		g.fail(field)
		return def
	}
	return d
}

// ratio is a ratio in (0, 1], or def when unset (0).
func ratio(v, def float64, g *guard, field string) float64 {
	if v == 0 {
		return def
	}
	g.check(v > 0 && v <= 1, field)
	return v
}

func compileProfile(ap *policies.AnomalyProfile, g *guard) profile {
	s := &ap.Spec
	p := profile{name: ap.Metadata.Name}
	p.workloads = parseIDPatterns(s.Workloads, g, "AnomalyProfile spec.workloads")
	for d := range p.responses {
		p.responses[d] = RespLog
	}
	for name, r := range s.Responses {
		d := slices.Index(detectorNames[:], name)
		resp, ok := parseResponse(r)
		if d < 0 || !ok {
			g.fail("AnomalyProfile spec.responses")
			continue
		}
		p.responses[d] = resp
	}
	p.quarantineFor = int64(duration(s.QuarantineFor, DefaultQuarantineFor, g, "AnomalyProfile spec.quarantineFor"))
	p.blockFor = int64(DefaultBlockFor)
	if r := s.Rate; r != nil {
		p.rate = true
		p.halfLife = duration(r.HalfLife, DefaultHalfLife, g, "AnomalyProfile spec.rate.halfLife")
		p.alpha = 1 - math.Exp2(-float64(time.Second)/float64(p.halfLife))
		p.zScore, p.minRPS = r.ZScore, r.MinRPS
		if p.zScore == 0 {
			p.zScore = DefaultZScore
		}
		if p.minRPS == 0 {
			p.minRPS = DefaultMinRPS
		}
		g.check(p.zScore > 0 && p.minRPS > 0, "AnomalyProfile spec.rate")
	}
	if e := s.Errors; e != nil {
		p.errors = true
		p.errWindow = int64(duration(e.Window, DefaultWindow, g, "AnomalyProfile spec.errors.window"))
		mr := e.MinRequests
		if mr == 0 {
			mr = DefaultMinRequests
		}
		g.check(mr > 0, "AnomalyProfile spec.errors.minRequests")
		p.minRequests = uint32(max(mr, 0))
		p.authR = ratio(e.AuthRatio, DefaultAuthRatio, g, "AnomalyProfile spec.errors.authRatio")
		p.notFoundR = ratio(e.NotFoundRatio, DefaultNotFoundRatio, g, "AnomalyProfile spec.errors.notFoundRatio")
		p.errR = ratio(e.ErrorRatio, DefaultErrorRatio, g, "AnomalyProfile spec.errors.errorRatio")
		p.rareMethods = defaultRareMethods
		if len(e.RareMethods) > 0 {
			p.rareMethods = make([]string, len(e.RareMethods))
			for i, m := range e.RareMethods {
				p.rareMethods[i] = strings.ToUpper(m)
			}
		}
		p.rareMax = max(3, p.minRequests/4)
	}
	if e := s.Enumeration; e != nil {
		p.enum = true
		p.enumWindow = int64(duration(e.Window, DefaultWindow, g, "AnomalyProfile spec.enumeration.window"))
		mp, md := e.MaxPaths, e.MaxDestinations
		if mp == 0 {
			mp = DefaultMaxPaths
		}
		if md == 0 {
			md = DefaultMaxDestinations
		}
		g.check(mp > 0 && md > 0 && mp <= policies.MaxEnumerationPaths && md <= policies.MaxEnumerationDestinations,
			"AnomalyProfile spec.enumeration")
		p.maxPaths, p.maxDests = float64(mp), float64(md)
	}
	if e := s.Egress; e != nil {
		p.egress = true
		dests := e.Destinations
		if len(dests) == 0 {
			dests = defaultEgress
		}
		p.egressHosts = map[string]struct{}{}
		for _, d := range dests {
			if a, err := netip.ParseAddr(d); err == nil {
				p.egressAddrs = append(p.egressAddrs, a.Unmap())
				p.egressHosts[a.Unmap().String()] = struct{}{}
				continue
			}
			h := strings.TrimSuffix(strings.ToLower(d), ".")
			if h == "" || strings.ContainsAny(h, "/: ") {
				g.fail("AnomalyProfile spec.egress.destinations")
				continue
			}
			p.egressHosts[h] = struct{}{}
		}
		p.egressAllowed = parseIDPatterns(e.AllowedIDs, g, "AnomalyProfile spec.egress.allowedIds")
	}
	if l := s.Lateral; l != nil {
		p.lateral = true
		n := l.MaxNewEdges
		if n == 0 {
			n = DefaultMaxNewEdges
		}
		g.check(n > 0, "AnomalyProfile spec.lateral.maxNewEdges")
		p.maxNewEdges = uint32(max(n, 0))
	}
	return p
}
