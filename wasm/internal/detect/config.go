package detect

import (
	"errors"
	"fmt"
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

func parseResponse(s string) (Response, error) {
	for i, n := range responseNames {
		if s == n {
			return Response(i), nil
		}
	}
	return 0, fmt.Errorf("response %q: want one of %s", s, strings.Join(responseNames[:], ", "))
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
// answers for its TrafficBaselines and may be nil. Every problem is
// reported at once. A set without AnomalyProfiles gets one built-in profile
// that runs every detector with the "log" response.
func NewConfig(set *policies.Set, edges EdgeOracle, t Tuning) (*Config, error) {
	var errs []error
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
		errs = append(errs, errors.New("detection capacity and edge cache are limited to 1048576"))
	}
	// First match by (namespace, name), as policies.Snapshot.AnomalyProfile.
	aps := sortedProfiles(set.AnomalyProfiles)
	if len(aps) == 0 {
		aps = []policies.AnomalyProfile{{
			Metadata: policies.ObjectMeta{Name: "default"},
			Spec: policies.AnomalyProfileSpec{
				Rate: &policies.RateDetector{}, Errors: &policies.ErrorDetector{},
				Enumeration: &policies.EnumerationDetector{}, Egress: &policies.EgressDetector{},
				Lateral: &policies.LateralDetector{},
			},
		}}
	}
	for i := range aps {
		p, perrs := compileProfile(&aps[i])
		errs = append(errs, perrs...)
		c.profiles = append(c.profiles, p)
	}
	for i := range set.RouteOverrides {
		ro := &set.RouteOverrides[i].Spec
		where := fmt.Sprintf("RouteOverride %s", qualified(set.RouteOverrides[i].Metadata))
		if ro.Route == "" {
			errs = append(errs, fmt.Errorf("%s: route is empty", where))
			continue
		}
		if _, dup := c.routes[ro.Route]; dup {
			errs = append(errs, fmt.Errorf("%s: route %q has more than one override", where, ro.Route))
			continue
		}
		rs := routeSettings{mode: ro.Mode, profile: -1}
		switch ro.Mode {
		case "", policies.ModeEnforce, policies.ModeDryRun, policies.ModeOff:
		default:
			errs = append(errs, fmt.Errorf("%s: mode %q: want enforce, dry-run or off", where, ro.Mode))
		}
		if a := ro.Anomaly; a != nil {
			if a.Profile != "" {
				rs.profile = slices.IndexFunc(c.profiles, func(p profile) bool { return p.name == a.Profile })
				if rs.profile < 0 {
					errs = append(errs, fmt.Errorf("%s: anomaly profile %q does not exist", where, a.Profile))
				}
			}
			if a.RateZ != nil {
				rs.rateZ = *a.RateZ
				if !(rs.rateZ > 0) {
					errs = append(errs, fmt.Errorf("%s: rateZ must be > 0", where))
				}
			}
			if a.MinRPS != nil {
				rs.minRPS = *a.MinRPS
				if !(rs.minRPS > 0) {
					errs = append(errs, fmt.Errorf("%s: minRps must be > 0", where))
				}
			}
			if a.ErrorRate != nil {
				rs.errorRatio = *a.ErrorRate
				if !(rs.errorRatio > 0 && rs.errorRatio <= 1) {
					errs = append(errs, fmt.Errorf("%s: errorRatio must be in (0, 1]", where))
				}
			}
			if a.Response != "" {
				r, err := parseResponse(a.Response)
				if err != nil {
					errs = append(errs, fmt.Errorf("%s: %w", where, err))
				}
				rs.response, rs.hasResp = r, true
			}
		}
		c.routes[ro.Route] = &rs
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("detection settings: %w", err)
	}
	return c, nil
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

func qualified(m policies.ObjectMeta) string {
	if m.Namespace == "" {
		return m.Name
	}
	return m.Namespace + "/" + m.Name
}

func parseDur(where, field, s string, def time.Duration, errs *[]error) time.Duration {
	if s == "" {
		return def
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		*errs = append(*errs, fmt.Errorf("%s: %s %q: want a positive Go duration", where, field, s))
		return def
	}
	return d
}

func ratio(where, field string, v, def float64, errs *[]error) float64 {
	if v == 0 {
		return def
	}
	if !(v > 0 && v <= 1) {
		*errs = append(*errs, fmt.Errorf("%s: %s must be in (0, 1]", where, field))
		return def
	}
	return v
}

func compileProfile(ap *policies.AnomalyProfile) (profile, []error) {
	var errs []error
	where := "AnomalyProfile " + qualified(ap.Metadata)
	s := &ap.Spec
	p := profile{name: ap.Metadata.Name}
	ws, werrs := parseIDPatterns(where+": workloads", s.Workloads)
	errs = append(errs, werrs...)
	p.workloads = ws
	for d := range p.responses {
		p.responses[d] = RespLog
	}
	for name, r := range s.Responses {
		d := slices.Index(detectorNames[:], name)
		if d < 0 {
			errs = append(errs, fmt.Errorf("%s: responses: unknown detector %q", where, name))
			continue
		}
		resp, err := parseResponse(r)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: responses[%s]: %w", where, name, err))
			continue
		}
		p.responses[d] = resp
	}
	p.quarantineFor = int64(parseDur(where, "quarantineFor", s.QuarantineFor, DefaultQuarantineFor, &errs))
	p.blockFor = int64(DefaultBlockFor)
	if r := s.Rate; r != nil {
		p.rate = true
		p.halfLife = parseDur(where, "rate.halfLife", r.HalfLife, DefaultHalfLife, &errs)
		p.alpha = 1 - math.Exp2(-float64(time.Second)/float64(p.halfLife))
		p.zScore, p.minRPS = r.ZScore, r.MinRPS
		if p.zScore == 0 {
			p.zScore = DefaultZScore
		}
		if p.minRPS == 0 {
			p.minRPS = DefaultMinRPS
		}
		if !(p.zScore > 0) || !(p.minRPS > 0) {
			errs = append(errs, fmt.Errorf("%s: rate.zScore and rate.minRps must be > 0", where))
		}
	}
	if e := s.Errors; e != nil {
		p.errors = true
		p.errWindow = int64(parseDur(where, "errors.window", e.Window, DefaultWindow, &errs))
		mr := e.MinRequests
		if mr == 0 {
			mr = DefaultMinRequests
		}
		if mr < 0 {
			errs = append(errs, fmt.Errorf("%s: errors.minRequests must be >= 0", where))
			mr = DefaultMinRequests
		}
		p.minRequests = uint32(mr)
		p.authR = ratio(where, "errors.authRatio", e.AuthRatio, DefaultAuthRatio, &errs)
		p.notFoundR = ratio(where, "errors.notFoundRatio", e.NotFoundRatio, DefaultNotFoundRatio, &errs)
		p.errR = ratio(where, "errors.errorRatio", e.ErrorRatio, DefaultErrorRatio, &errs)
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
		p.enumWindow = int64(parseDur(where, "enumeration.window", e.Window, DefaultWindow, &errs))
		mp, md := e.MaxPaths, e.MaxDestinations
		if mp == 0 {
			mp = DefaultMaxPaths
		}
		if md == 0 {
			md = DefaultMaxDestinations
		}
		if mp < 0 || md < 0 || mp > pathBits/2 || md > destBits/2 {
			errs = append(errs, fmt.Errorf("%s: enumeration.maxPaths must be in [1, %d] and maxDestinations in [1, %d]", where, pathBits/2, destBits/2))
		}
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
				errs = append(errs, fmt.Errorf("%s: egress.destinations: %q is neither a host name nor an IP address", where, d))
				continue
			}
			p.egressHosts[h] = struct{}{}
		}
		al, aerrs := parseIDPatterns(where+": egress.allowedIds", e.AllowedIDs)
		errs = append(errs, aerrs...)
		p.egressAllowed = al
	}
	if l := s.Lateral; l != nil {
		p.lateral = true
		n := l.MaxNewEdges
		if n == 0 {
			n = DefaultMaxNewEdges
		}
		if n < 0 {
			errs = append(errs, fmt.Errorf("%s: lateral.maxNewEdges must be >= 0", where))
		}
		p.maxNewEdges = uint32(max(n, 0))
	}
	return p, errs
}
