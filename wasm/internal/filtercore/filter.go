package filtercore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/meshguard/meshguard/internal/hostcall"
	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/wire"
	"github.com/meshguard/meshguard/wasm/internal/detect"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// SharedBlocklistKey is the one shared-data key the filter writes: the
// identities blocked by a quarantine response, so that every worker VM
// blocks them (Envoy cannot delete shared-data keys, so the key set is
// fixed and the value bounded).
const SharedBlocklistKey = "meshguard.blocklist.v1"

const (
	maxSharedBlocks = 256
	maxIDCache      = 1024
	maxInterned     = 1024
	maxConnCache    = 4096
	defaultReporter = "meshguard-wasm"
)

// VM is the state one proxy-wasm VM shares among its plugin contexts: the
// detectors, the event buffer, metrics and the identity cache.
type VM struct {
	host   Host
	m      *metrics
	engine *detect.Engine
	// out runs the detectors on the workload's own outbound requests: one
	// caller, so a small table of its own.
	out    *detect.Engine
	events eventBuffer
	ids    map[string]spiffeid.ID
	conns  map[uint64]*connInfo // by connection.id
	// Strings a request would otherwise allocate, kept once: route names
	// (from the host's scratch bytes) and rule references.
	routes map[string]string
	refs   map[policies.RuleRef]string
	// dirWarned: a listener without a traffic direction was logged.
	dirWarned bool
	// The last of each, checked before hashing: map lookups are a
	// measurable cost in a wasm VM, and consecutive requests mostly
	// repeat them.
	lastRoute string
	lastRef   struct {
		r policies.RuleRef
		s string
	}
	lastConn struct {
		key uint64
		c   *connInfo
	}
	blocks  map[uint64]int64 // identity key → unix nanos, from shared data
	pending []block          // local quarantines not yet published
	// own are the quarantines this VM published, until they expire: a
	// VM that wrote the key's first value (CAS 0, unconditional, Envoy's
	// rule) may have overwritten another VM's first value, so each sync
	// publishes again what of its own the shared list lacks.
	own     []block
	evicted uint64
	// Decisions counted until they are reported: denials and dry-run
	// would-denies every tick, allowed requests every allowReportNanos.
	urgent, allowed tally
	allowAt         int64
	// fetched is the last bundle a plugin of this VM fetched from the
	// control plane, so that a plugin configured anew (a changed WasmPlugin
	// or ECDS config) starts from it instead of denying until its own first
	// fetch.
	fetched *fetchedBundle
	// Scratch for the request being decided.
	attrs policies.Attributes
	hv    headerView
}

type block struct {
	key   uint64
	until int64
}

// NewVM defines the metrics and returns an empty VM.
func NewVM(h Host) *VM {
	return &VM{host: h, m: newMetrics(h), ids: map[string]spiffeid.ID{}, conns: map[uint64]*connInfo{},
		routes: map[string]string{}, refs: map[policies.RuleRef]string{}, events: eventBuffer{max: DefaultMaxEvents},
		urgent: newTally(), allowed: newTally()}
}

// Plugin is one plugin context: one configuration.
type Plugin struct {
	vm    *VM
	cfg   *Config
	fetch fetchState
}

// NewPlugin returns a plugin without configuration; it denies every
// request until Configure succeeds. Metrics are defined again: a proxy
// returns the existing metric for a name it knows, and a host that lost
// them (a restarted emulator) gets them back.
func (vm *VM) NewPlugin() *Plugin {
	vm.m.flush()
	vm.m = newMetrics(vm.host)
	return &Plugin{vm: vm}
}

// Configure parses and installs a configuration. On error the previous
// configuration (if any) stays in force and the error is logged.
// A configuration that fetches its bundle starts with the last bundle this
// VM fetched, if any, and starts fetching.
func (p *Plugin) Configure(data []byte) error {
	cfg, err := ParseConfig(data, p.vm.node())
	if err != nil {
		p.vm.m.configErr.Add(1)
		p.vm.host.Log(LevelCritical, "meshguard: invalid plugin configuration, refusing it: "+err.Error())
		return err
	}
	vm := p.vm
	vm.events.max = cfg.maxEvents
	vm.m.configOK.Add(1)
	if cfg.cluster == "" {
		vm.host.Log(LevelWarn, "meshguard: controlPlane.cluster is empty: events are counted as dropped, not sent")
	}
	if cfg.labelsWarning != "" {
		vm.host.Log(LevelWarn, "meshguard: "+cfg.labelsWarning)
	}
	p.fetch = fetchState{}
	if cfg.fetch == nil {
		p.install(cfg)
		return nil
	}
	p.cfg = cfg
	if f := vm.fetched; f != nil && f.from == cfg.fetchSource() {
		if next, err := cfg.withBundle(f.bundle); err == nil {
			p.install(next)
			p.fetch.etag = f.bundle.Hash
		}
	}
	if p.cfg.snap == nil {
		vm.host.Log(LevelWarn, "meshguard: no policy bundle yet: every request is denied ("+string(policies.ReasonDeniedNoPolicy)+") until the control plane sends one")
	}
	p.fetchBundle()
	return nil
}

// install makes cfg, which holds a bundle, the plugin's configuration.
func (p *Plugin) install(cfg *Config) {
	p.cfg = cfg
	vm := p.vm
	if vm.engine == nil {
		vm.engine = detect.NewEngine(cfg.detect)
	} else {
		vm.engine.SetConfig(cfg.detect)
	}
	if cfg.detectOut != nil {
		if vm.out == nil {
			vm.out = detect.NewEngine(cfg.detectOut)
		} else {
			vm.out.SetConfig(cfg.detectOut)
		}
	}
	vm.host.Log(LevelInfo, "meshguard: loaded bundle "+cfg.snap.Version()+" ("+cfg.snap.Hash()+")")
	if cfg.selfReason != "" {
		vm.host.Log(LevelWarn, "meshguard: "+cfg.selfReason)
	}
}

// Done hands the batched counters to the host and stops fetching, for a
// plugin context that is going away.
func (p *Plugin) Done() {
	p.fetch.done = true
	p.vm.m.flush()
}

// node reads the Envoy node's identity and labels from the proxy.
func (vm *VM) node() Node {
	var n Node
	if v, ok := vm.host.Property(PropNodeCluster); ok {
		n.Cluster = string(v)
	}
	if v, ok := vm.host.Property(PropNodeID); ok {
		n.ID = string(v)
	}
	if v, ok := vm.host.Property(PropNodeLabels); !ok {
		n.LabelsErr = errors.New("node.metadata.LABELS is not set")
	} else if n.Labels, n.LabelsErr = hostcall.DecodeMap(v); n.LabelsErr != nil {
		n.LabelsErr = fmt.Errorf("node.metadata.LABELS is not a string map: %w", n.LabelsErr)
	}
	if v, ok := vm.host.Property(PropNodeNamespace); ok {
		n.Namespace = string(v)
	}
	if v, ok := vm.host.Property(PropNodeServiceAccount); ok {
		n.ServiceAccount = string(v)
	}
	return n
}

// TickMillis is the tick period the plugin wants.
func (p *Plugin) TickMillis() uint32 {
	if p.cfg == nil {
		return DefaultTickMillis
	}
	return p.cfg.tickMillis
}

// StreamState is the per-stream memory between request and response.
type StreamState struct {
	ref      detect.Ref
	observed bool
	replied  bool
	// outbound: a request the workload makes, to dest.
	outbound bool
	dest     string
}

// headerView serves policy header lookups from the request's header list.
// A header sent several times is its values joined with ',', in order, as
// Envoy presents it to its RBAC filter and to ext_authz (the host gives
// the filter each line apart); a header sent once costs no allocation.
type headerView struct{ h [][2]string }

func (v *headerView) Get(name string) (string, bool) {
	first := -1
	for i, kv := range v.h {
		if kv[0] != name {
			continue
		}
		if first < 0 {
			first = i
			continue
		}
		var b strings.Builder
		b.WriteString(v.h[first][1])
		for _, kv := range v.h[i:] {
			if kv[0] == name {
				b.WriteByte(',')
				b.WriteString(kv[1])
			}
		}
		return b.String(), true
	}
	if first < 0 {
		return "", false
	}
	return v.h[first][1], true
}

func hasPrefixFold(s, prefix string) bool {
	if len(s) < len(prefix) {
		return false
	}
	for i := 0; i < len(prefix); i++ {
		c := s[i]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != prefix[i] {
			return false
		}
	}
	return true
}

func parseAddr(b []byte, ok bool) (netip.Addr, uint32) {
	if !ok || len(b) == 0 {
		return netip.Addr{}, 0
	}
	ap, err := netip.ParseAddrPort(string(b))
	if err != nil {
		a, err := netip.ParseAddr(string(b))
		if err != nil {
			return netip.Addr{}, 0
		}
		return a.Unmap(), 0
	}
	return ap.Addr().Unmap(), uint32(ap.Port())
}

// connInfo is what the filter reads from connection-level properties. It
// is the same for every request of a connection, so it is read once per
// connection (Envoy never reuses a connection.id within a process) instead
// of with five host calls per request.
type connInfo struct {
	id           spiffeid.ID
	mtls         bool
	bad          policies.Reason
	srcIP, dstIP netip.Addr
	dstPort      uint32
	sni          string
	// outbound: the connection is the workload's own, to its sidecar's
	// outbound listener; dstName is its destination address, for a
	// cluster that names no service (a passthrough).
	outbound bool
	dstName  string
	// What the entry was read under: a configuration that changes them
	// reads the connection again.
	requireMTLS bool
	dir         direction
}

// current reports whether c was read under cfg's settings.
func (c *connInfo) current(cfg *Config) bool {
	return c != nil && c.requireMTLS == cfg.requireMTLS && c.dir == cfg.direction
}

// connection returns the connection's information, from the cache when
// the connection is known. A cached entry is never modified (a stale one
// is replaced), so requests share it without copying.
func (p *Plugin) connection(s Stream) *connInfo {
	vm := p.vm
	var key uint64
	if b, ok := s.Property(PropConnID); ok && len(b) == 8 {
		key = binary.LittleEndian.Uint64(b)
		if lc := &vm.lastConn; lc.key == key && lc.c.current(p.cfg) {
			return lc.c
		}
		if cached, ok := vm.conns[key]; ok && cached.current(p.cfg) {
			vm.lastConn.key, vm.lastConn.c = key, cached
			return cached
		}
	}
	c := &connInfo{requireMTLS: p.cfg.requireMTLS, dir: p.cfg.direction}
	var known bool
	switch c.outbound, known = p.direction(s); {
	case !known:
		c.bad = policies.ReasonDeniedInternal
		if !vm.dirWarned {
			vm.dirWarned = true
			vm.host.Log(LevelError, "meshguard: direction \"listener\" but the listener has no traffic_direction (listener_direction is neither INBOUND nor OUTBOUND): its requests are denied with "+string(policies.ReasonDeniedInternal))
		}
	case !c.outbound:
		c.id, c.mtls, c.bad = p.identity(s)
	}
	c.srcIP, _ = parseAddr(s.Property(PropSourceAddr))
	c.dstIP, c.dstPort = parseAddr(s.Property(PropDestAddr))
	if c.outbound {
		if c.dstIP.IsValid() {
			c.dstName = c.dstIP.String()
		}
	} else if sni, ok := s.Property(PropSNI); ok {
		c.sni = string(sni)
	}
	if key != 0 {
		if len(vm.conns) >= maxConnCache {
			clear(vm.conns)
		}
		vm.conns[key] = c
		vm.lastConn.key, vm.lastConn.c = key, c
	}
	return c
}

// direction tells whether the stream's requests are outbound; known is
// false when the configuration says to ask the listener and the listener
// does not say.
func (p *Plugin) direction(s Stream) (outbound, known bool) {
	switch p.cfg.direction {
	case dirInbound:
		return false, true
	case dirOutbound:
		return true, true
	}
	b, ok := s.Property(PropListenerDirection)
	if !ok || len(b) != 8 {
		return false, false
	}
	switch binary.LittleEndian.Uint64(b) {
	case listenerInbound:
		return false, true
	case listenerOutbound:
		return true, true
	}
	return false, false
}

// identity returns the caller's verified SPIFFE ID (zero when the
// connection has none) and whether the connection is mutual TLS; reason is
// set when the request must be denied.
func (p *Plugin) identity(s Stream) (id spiffeid.ID, mtls bool, reason policies.Reason) {
	san, ok := s.Property(PropURISANPeer)
	if ok && len(san) > 0 {
		if id, ok := p.vm.ids[string(san)]; ok {
			return id, true, ""
		}
		id, err := spiffeid.FromString(string(san))
		if err != nil || id.Path() == "" {
			// Malformed, or a trust domain's own ID, which names no
			// workload: not an SVID.
			return spiffeid.ID{}, true, policies.ReasonDeniedIdentity
		}
		if len(p.vm.ids) >= maxIDCache {
			clear(p.vm.ids)
		}
		p.vm.ids[id.String()] = id
		return id, true, ""
	}
	if b, ok := s.Property(PropMTLS); ok && len(b) == 1 && b[0] == 1 {
		mtls = true
	}
	if p.cfg.requireMTLS {
		if !mtls {
			return spiffeid.ID{}, false, policies.ReasonDeniedNoMTLS
		}
		// A client certificate without a URI SAN is not a SPIFFE identity.
		return spiffeid.ID{}, true, policies.ReasonDeniedIdentity
	}
	return spiffeid.ID{}, mtls, ""
}

// OnRequestHeaders decides the request, in the order the steps below read:
// the configuration, the request line, the route, the connection's
// identity, a quarantine block shared by the VMs, the policy decision, the
// detectors, and then either a local reply or the headers ext_authz reads.
// Every decision is counted for the control plane (decision events).
// It returns true to let the request continue, false when it answered
// locally.
func (p *Plugin) OnRequestHeaders(s Stream, st *StreamState) (cont bool) {
	defer p.recoverRequest(s, st, &cont)
	p.vm.m.requests.Add(1)
	cfg := p.cfg
	if cfg == nil || cfg.snap == nil {
		return p.deny(s, st, nil, "", "", nil, 403, policies.ReasonDeniedNoPolicy, policies.RuleRef{})
	}
	hdrs, err := s.RequestHeaders()
	if err != nil {
		return p.deny(s, st, cfg, "", "", nil, 403, policies.ReasonDeniedInternal, policies.RuleRef{})
	}
	rl := p.readRequestLine(hdrs)
	route := p.routeName(s)
	c := p.connection(s)
	if c.outbound {
		st.outbound = true
		return p.outboundRequest(s, st, cfg, c, hdrs, &rl, route)
	}
	if c.bad != "" {
		return p.deny(s, st, cfg, "", route, &rl, 403, c.bad, policies.RuleRef{})
	}
	now := p.vm.host.Now()
	if p.blocked(c, now) {
		return p.deny(s, st, cfg, c.id.String(), route, &rl, 403, policies.ReasonDeniedAnomaly, policies.RuleRef{Policy: "meshguard/quarantine-response"})
	}
	dec := p.decide(cfg, c, &rl, route, hdrs)
	v := p.observe(cfg, st, c, &rl, route, now)
	if !p.enforce(s, st, cfg, c, &rl, route, now, &dec, &v) {
		return false
	}
	if !p.stampForExtAuthz(s, st, cfg, c, hdrs, rl.spoofed, route, dec.Ref) {
		return false
	}
	if !dec.WouldDeny {
		p.vm.allowed.add(tallyKey{source: c.id.String(), route: route, outcome: OutcomeAllow, reason: dec.Reason, ref: dec.Ref}, rl.method, rl.path)
	}
	return true
}

// recoverRequest fails closed on a bug too: a panic must deny this
// request, not trap the VM (which Envoy would turn into fail-open or a
// broken worker, depending on configuration).
func (p *Plugin) recoverRequest(s Stream, st *StreamState, cont *bool) {
	if r := recover(); r != nil {
		p.vm.host.Log(LevelCritical, fmt.Sprintf("meshguard: panic on the request path: %v", r))
		*cont = false
		if !st.replied {
			*cont = p.deny(s, st, p.cfg, "", "", nil, 403, policies.ReasonDeniedInternal, policies.RuleRef{})
		}
	}
}

// requestLine is what the filter reads of the request headers.
type requestLine struct {
	method, path, authority string
	// spoofed counts client-sent x-meshguard-* headers.
	spoofed int
}

// readRequestLine reads the pseudo-headers and counts the client-sent
// headers in meshguard's namespace (stripped before ext_authz).
func (p *Plugin) readRequestLine(hdrs [][2]string) requestLine {
	var rl requestLine
	for _, kv := range hdrs {
		switch kv[0] {
		case ":method":
			rl.method = kv[1]
		case ":path":
			rl.path = kv[1]
		case ":authority":
			rl.authority = kv[1]
		default:
			if hasPrefixFold(kv[0], wire.HeaderPrefix) {
				rl.spoofed++
			}
		}
	}
	if rl.spoofed > 0 {
		p.vm.m.stripped.Add(uint64(rl.spoofed))
	}
	return rl
}

// routeName is the Envoy route the request matched (xds.route_name).
func (p *Plugin) routeName(s Stream) string {
	b, _ := s.Property(PropRouteName)
	return p.vm.intern(b)
}

// blocked reports whether a quarantine response of any VM blocks the
// caller.
func (p *Plugin) blocked(c *connInfo, now int64) bool {
	vm := p.vm
	if len(vm.blocks) == 0 {
		return false
	}
	until, ok := vm.blocks[detect.IdentityKey(c.id, c.srcIP)]
	return ok && now < until
}

// decide evaluates the policy for the request.
func (p *Plugin) decide(cfg *Config, c *connInfo, rl *requestLine, route string, hdrs [][2]string) policies.Decision {
	vm := p.vm
	vm.hv = headerView{h: hdrs}
	// The attributes live in the VM, not on the stack, where they would
	// escape to the heap on every request.
	attrs := &vm.attrs
	*attrs = policies.Attributes{
		Peer: c.id, MTLS: c.mtls, SourceIP: c.srcIP, RemoteIP: c.srcIP,
		DestinationIP: c.dstIP, DestinationPort: c.dstPort, SNI: c.sni,
		Target: cfg.target, Method: rl.method, Host: rl.authority, Path: rl.path, Route: route,
		Headers: &vm.hv, JWTDeferred: cfg.extAuthz.Defers(route),
	}
	dec := cfg.snap.Decide(attrs)
	*attrs = policies.Attributes{}
	vm.hv = headerView{} // the headers may be scratch memory of this callback
	return dec
}

// observe runs the detectors on the request and reports what they found.
func (p *Plugin) observe(cfg *Config, st *StreamState, c *connInfo, rl *requestLine, route string, now int64) detect.Verdict {
	dr := detect.Request{Now: now, Source: c.id, SourceAddr: c.srcIP, Method: rl.method, Path: rl.path,
		Authority: rl.authority, DestAddr: c.dstIP, Route: route, Service: cfg.service}
	v := p.vm.engine.Observe(&dr)
	st.ref, st.observed = v.Ref, true
	p.report(p.vm.engine, &v, now, rl.method, route, cfg.service, false)
	return v
}

// outboundRequest decides a request the workload itself makes, on its own
// sidecar, before it leaves the pod. The source is the workload (its
// configuration or its node say who it is, never the request); the
// destination is the service of the route's upstream cluster. What holds
// here: a quarantine of the workload (denied_quarantined), an enforced
// baseline without an edge to the destination (denied_unknown_edge), and
// the detectors' responses (denied_anomaly, rate_limited_anomaly).
// Authorization policies speak of the destination and are decided on its
// side. Client-sent x-meshguard-* headers are removed.
func (p *Plugin) outboundRequest(s Stream, st *StreamState, cfg *Config, c *connInfo, hdrs [][2]string, rl *requestLine, route string) bool {
	vm := p.vm
	vm.m.outRequests.Add(1)
	if c.bad != "" {
		return p.deny(s, st, cfg, "", route, rl, 403, c.bad, policies.RuleRef{})
	}
	if cfg.self.IsZero() || vm.out == nil {
		return p.deny(s, st, cfg, "", route, rl, 403, policies.ReasonDeniedIdentity, policies.RuleRef{Policy: "meshguard/outbound-identity"})
	}
	dest := p.destination(s, cfg, c)
	st.dest = dest
	now := vm.host.Now()
	if until, ok := vm.blocks[cfg.selfKey]; ok && now < until {
		return p.deny(s, st, cfg, "", route, rl, 403, policies.ReasonDeniedAnomaly, policies.RuleRef{Policy: "meshguard/quarantine-response"})
	}
	if ref, ok := cfg.snap.QuarantineRef(cfg.self, now); ok {
		return p.deny(s, st, cfg, "", route, rl, 403, policies.ReasonDeniedQuarantine, ref)
	}
	dr := detect.Request{Now: now, Source: cfg.self, Method: rl.method, Path: rl.path, Authority: rl.authority,
		DestAddr: c.dstIP, Route: route, Service: dest, Outbound: true}
	v := vm.out.Observe(&dr)
	st.ref, st.observed = v.Ref, true
	p.report(vm.out, &v, now, rl.method, route, dest, true)
	if v.Status != 0 {
		return p.deny(s, st, cfg, "", route, rl, v.Status, v.Reason, anomalyRef(&v))
	}
	if rl.spoofed > 0 {
		if err := s.ReplaceRequestHeaders(withoutMeshguardHeaders(hdrs, 0)); err != nil {
			return p.deny(s, st, cfg, "", route, rl, 403, policies.ReasonDeniedInternal, policies.RuleRef{})
		}
	}
	vm.m.decision(policies.ReasonAllowedNoPolicy)
	return true
}

// withoutMeshguardHeaders is hdrs without the headers in meshguard's
// namespace, with room for extra more.
func withoutMeshguardHeaders(hdrs [][2]string, extra int) [][2]string {
	clean := make([][2]string, 0, len(hdrs)+extra)
	for _, kv := range hdrs {
		if !hasPrefixFold(kv[0], wire.HeaderPrefix) {
			clean = append(clean, kv)
		}
	}
	return clean
}

// destination is the service an outbound request goes to: its upstream
// cluster's, as the configuration lists it, else as Istio names outbound
// clusters; else (a passthrough cluster) the connection's destination
// address.
func (p *Plugin) destination(s Stream, cfg *Config, c *connInfo) string {
	if b, ok := s.Property(PropClusterName); ok && len(b) > 0 {
		if d, ok := cfg.upstreams[string(b)]; ok {
			return d
		}
		// Interned, as route names are: parsing it then allocates nothing.
		if d := istioClusterService(p.vm.intern(b)); d != "" {
			return d
		}
	}
	return c.dstName
}

// istioClusterService reads an Istio outbound cluster name,
// outbound|<port>|<subset>|<host>, as its host's service; "" for another
// name (PassthroughCluster, BlackHoleCluster, ...).
func istioClusterService(name string) string {
	rest, ok := strings.CutPrefix(name, "outbound|")
	if !ok || strings.Count(rest, "|") != 2 {
		return ""
	}
	return serviceKey(rest[strings.LastIndexByte(rest, '|')+1:])
}

// serviceKey writes a host as baselines and the control plane name
// services: without a trailing dot, a Kubernetes service host
// (<svc>.<ns>.svc[.<cluster domain>]) as <svc>.<ns>. (Istio writes cluster
// hosts in lower case; the control plane and the baselines compare names
// without case.)
func serviceKey(h string) string {
	h = strings.TrimSuffix(h, ".")
	if i := strings.Index(h, ".svc"); i > 0 && (len(h) == i+4 || h[i+4] == '.') {
		return h[:i]
	}
	return h
}

// anomalyRef is the rule reference of a detector's denial.
func anomalyRef(v *detect.Verdict) policies.RuleRef {
	if v.Reason == policies.ReasonDeniedBaseline {
		return policies.RuleRef{Policy: "TrafficBaseline", Rule: v.Detector.String()}
	}
	return policies.RuleRef{Policy: "AnomalyProfile/" + v.Profile, Rule: v.Detector.String()}
}

// enforce answers a request the policy or a detector denies, and records
// a dry-run would-deny. It returns false when it answered.
func (p *Plugin) enforce(s Stream, st *StreamState, cfg *Config, c *connInfo, rl *requestLine, route string, now int64, dec *policies.Decision, v *detect.Verdict) bool {
	vm := p.vm
	if !dec.Allowed {
		vm.engine.ObserveResponse(v.Ref, now, 403) // denials feed the error detectors
		return p.deny(s, st, cfg, c.id.String(), route, rl, 403, dec.Reason, dec.Ref)
	}
	if dec.WouldDeny {
		vm.m.dryRun.Add(1)
		vm.urgent.add(tallyKey{source: c.id.String(), route: route, outcome: OutcomeDryRun, reason: dec.Reason, ref: dec.Ref}, rl.method, rl.path)
	}
	if v.Status != 0 {
		return p.deny(s, st, cfg, c.id.String(), route, rl, v.Status, v.Reason, anomalyRef(v))
	}
	vm.m.decision(dec.Reason)
	return true
}

// stampForExtAuthz stamps what ext_authz needs (Istio cannot pass
// per-route context to a CUSTOM provider) on a header map free of
// client-sent ones: added one by one when the client sent none (the common
// case: three cheap host calls), else written whole without them.
func (p *Plugin) stampForExtAuthz(s Stream, st *StreamState, cfg *Config, c *connInfo, hdrs [][2]string, spoofed int, route string, decRef policies.RuleRef) bool {
	ref := p.vm.refString(decRef)
	var err error
	if spoofed == 0 {
		err = s.AddRequestHeader(wire.HeaderRoute, route)
		if err == nil {
			err = s.AddRequestHeader(wire.HeaderPolicyRef, ref)
		}
		if err == nil {
			err = s.AddRequestHeader(wire.HeaderBundleVersion, cfg.snap.Version())
		}
	} else {
		clean := append(withoutMeshguardHeaders(hdrs, 3),
			[2]string{wire.HeaderRoute, route},
			[2]string{wire.HeaderPolicyRef, ref},
			[2]string{wire.HeaderBundleVersion, cfg.snap.Version()})
		err = s.ReplaceRequestHeaders(clean)
	}
	if err != nil {
		return p.deny(s, st, cfg, c.id.String(), route, nil, 403, policies.ReasonDeniedInternal, policies.RuleRef{})
	}
	return true
}

// intern returns b as a string, from a bounded cache of the few values a
// property such as the route name takes, so that reading it allocates
// nothing.
func (vm *VM) intern(b []byte) string {
	if string(b) == vm.lastRoute {
		return vm.lastRoute // most requests repeat the last route: no hashing
	}
	if s, ok := vm.routes[string(b)]; ok {
		vm.lastRoute = s
		return s
	}
	if len(vm.routes) >= maxInterned {
		clear(vm.routes)
	}
	s := string(b)
	vm.routes[s] = s
	vm.lastRoute = s
	return s
}

// refString is refString(r) from a bounded cache: rule references come
// from the compiled policy, a small set.
func (vm *VM) refString(r policies.RuleRef) string {
	if r == vm.lastRef.r {
		return vm.lastRef.s
	}
	s, ok := vm.refs[r]
	if !ok {
		if len(vm.refs) >= maxInterned {
			clear(vm.refs)
		}
		s = refString(r)
		vm.refs[r] = s
	}
	vm.lastRef.r, vm.lastRef.s = r, s
	return s
}

func refString(r policies.RuleRef) string {
	if r.Rule == "" {
		return r.Policy
	}
	return r.Policy + "#" + r.Rule
}

// deny answers the request locally and counts the denial for the control
// plane; source is the caller's SPIFFE ID, route the Envoy route and rl the
// request line, ""/nil when not known (yet).
func (p *Plugin) deny(s Stream, st *StreamState, cfg *Config, source, route string, rl *requestLine, status uint32, reason policies.Reason, ref policies.RuleRef) bool {
	p.vm.m.decision(reason)
	if !st.outbound {
		// Decision events speak of callers of this workload; the outbound
		// side's refusals are reported as its anomalies and edges.
		var method, path string
		if rl != nil {
			method, path = rl.method, rl.path
		}
		p.vm.urgent.add(tallyKey{source: source, route: route, outcome: OutcomeDeny, reason: reason, ref: ref}, method, path)
	}
	b := wire.DenyBody{Reason: string(reason), Policy: ref.Policy, Rule: ref.Rule}
	if cfg != nil {
		b.BundleVersion = cfg.Version()
	}
	body := b.AppendJSON(nil)
	st.replied = true
	err := s.SendLocalResponse(status, [][2]string{
		{wire.HeaderReason, string(reason)},
		{"content-type", "application/json"},
	}, body)
	if err != nil {
		p.vm.host.Log(LevelError, "meshguard: send local response: "+err.Error())
	}
	return false
}

// OnResponseHeaders feeds the response status to the error detectors.
func (p *Plugin) OnResponseHeaders(s Stream, st *StreamState) {
	defer func() {
		if r := recover(); r != nil {
			p.vm.host.Log(LevelCritical, fmt.Sprintf("meshguard: panic on the response path: %v", r))
		}
	}()
	engine := p.vm.engine
	if st.outbound {
		engine = p.vm.out
	}
	if !st.observed || st.replied || engine == nil || !engine.WantsStatus(st.ref) {
		return
	}
	sv, ok := s.ResponseHeader(":status")
	if !ok {
		return
	}
	code, err := strconv.Atoi(sv)
	if err != nil {
		return
	}
	now := p.vm.host.Now()
	v := engine.ObserveResponse(st.ref, now, code)
	dest := st.dest
	if !st.outbound && p.cfg != nil {
		dest = p.cfg.service
	}
	p.report(engine, &v, now, "", "", dest, st.outbound)
}

// report turns findings, edges and quarantine requests into metrics,
// events and shared blocks. dest is the destination the events name: the
// workload's own service on the inbound side, the service called on the
// outbound side, whose edges name no route (the destination's proxy
// matches it; the route here is the caller's).
func (p *Plugin) report(engine *detect.Engine, v *detect.Verdict, now int64, method, route, dest string, outbound bool) {
	vm := p.vm
	if v.N == 0 && !v.Edge.Report && !v.Quarantine {
		return
	}
	src := engine.Source(v.Ref)
	if v.Edge.Report {
		vm.m.edges.Add(1)
		detail := "known"
		if !v.Edge.Known {
			detail = "unknown"
		}
		edgeRoute := route
		if outbound {
			edgeRoute = ""
		}
		p.event(wire.Event{Kind: wire.EventEdge, Detector: detect.DetLateral.String(), Source: src,
			Destination: v.Edge.Dest, Route: edgeRoute, Method: method, UnixMillis: now / 1e6,
			Detail: detail + " baseline=" + v.Edge.Mode.String()})
	}
	for i := 0; i < v.N; i++ {
		f := &v.Findings[i]
		vm.m.anomalies[f.Detector][f.Response].Add(1)
		if f.Response == detect.RespCount {
			continue
		}
		resp := f.Response.String()
		if f.DryRun {
			resp = "dry-run"
		}
		e := wire.Event{Kind: wire.EventAnomaly, Detector: f.Detector.String(), Source: src, Destination: dest, Route: route,
			Method: method, Response: resp, Profile: v.Profile, Score: f.Score, Count: f.Count,
			UnixMillis: now / 1e6, Detail: f.Detail}
		if f.Response == detect.RespQuarantine && v.Quarantine {
			e.Detail += " quarantine_for=" + strconv.FormatInt(v.QuarantineFor/1e9, 10) + "s"
		}
		p.event(e)
		side := "inbound"
		if outbound {
			side = "outbound"
		}
		vm.host.Log(LevelWarn, fmt.Sprintf("meshguard: anomaly side=%s detector=%s source=%s destination=%s detail=%s score=%.2f response=%s", side, e.Detector, src, dest, f.Detail, f.Score, resp))
	}
	if v.Quarantine {
		b := block{key: v.Ref.Key(), until: now + v.QuarantineFor}
		if vm.blocks == nil {
			vm.blocks = map[uint64]int64{}
		}
		vm.blocks[b.key] = b.until
		vm.pending = append(vm.pending, b)
		if len(vm.pending) > maxSharedBlocks {
			vm.pending = vm.pending[len(vm.pending)-maxSharedBlocks:]
		}
		vm.own = append(vm.own, b) // a key twice is harmless: reassert reads each
		if len(vm.own) > maxSharedBlocks {
			vm.own = vm.own[1:]
		}
	}
}

func (p *Plugin) event(e wire.Event) {
	if !p.vm.events.add(e) {
		p.vm.m.dropped.Add(1)
	}
}

// OnTick flushes events, publishes and reads the shared blocklist and
// updates gauges.
func (p *Plugin) OnTick() {
	defer func() {
		if r := recover(); r != nil {
			p.vm.host.Log(LevelCritical, fmt.Sprintf("meshguard: panic on tick: %v", r))
			p.vm.events.inflight = false
		}
	}()
	vm := p.vm
	vm.m.flush()
	p.fetchBundle()
	if vm.engine != nil {
		st := vm.engine.Stats()
		vm.m.identities.Set(int64(st.Identities))
		if st.Evictions > vm.evicted {
			vm.m.evictions.Add(st.Evictions - vm.evicted)
			vm.evicted = st.Evictions
		}
	}
	p.syncBlocks()
	p.drainTallies()
	p.flush()
}

// drainTallies moves the counted decisions into the event buffer: the
// denials and would-denies on every tick, the allowed requests every
// allowReportNanos.
func (p *Plugin) drainTallies() {
	vm := p.vm
	now := vm.host.Now()
	n := vm.urgent.drain(&vm.events, now/1e6, vm.refString)
	if now >= vm.allowAt {
		n += vm.allowed.drain(&vm.events, now/1e6, vm.refString)
		vm.allowAt = now + allowReportNanos
	}
	if n > 0 {
		vm.m.dropped.Add(n)
	}
}

func (p *Plugin) flush() {
	vm, cfg := p.vm, p.cfg
	if cfg == nil || vm.events.inflight || (len(vm.events.buf) == 0 && vm.events.dropped == 0) {
		return
	}
	if cfg.cluster == "" {
		n := len(vm.events.buf)
		vm.m.dropped.Add(uint64(n))
		vm.events.buf = vm.events.buf[:0]
		vm.events.dropped = 0
		return
	}
	reporter := cfg.workloadID
	if reporter == "" {
		reporter = defaultReporter
	}
	body, n, dropped := vm.events.takeBatch(cfg.maxBatch, reporter, cfg.Version())
	hdrs := [][2]string{
		{":method", "POST"}, {":path", cfg.path}, {":authority", cfg.authority},
		{"content-type", "application/json"},
	}
	vm.events.inflight = true
	err := vm.host.HTTPCall(cfg.cluster, hdrs, body, cfg.timeoutMillis, 0, func(r CallResponse) {
		vm.events.inflight = false
		if r.Status < 200 || r.Status > 299 {
			vm.m.dropped.Add(uint64(n))
			vm.events.dropped += uint64(n) + dropped
			return
		}
		vm.m.sent.Add(uint64(n))
	})
	if err != nil {
		vm.events.inflight = false
		vm.m.dropped.Add(uint64(n))
		vm.events.dropped += uint64(n) + dropped
		vm.host.Log(LevelWarn, "meshguard: dispatch events to cluster "+cfg.cluster+": "+err.Error())
	}
}

// syncBlocks merges this VM's quarantine blocks into the shared blocklist
// (compare-and-swap, a few attempts) and reloads the merged list.
func (p *Plugin) syncBlocks() {
	vm := p.vm
	now := vm.host.Now()
	for attempt := 0; attempt < 4; attempt++ {
		raw, cas, err := vm.host.SharedData(SharedBlocklistKey)
		if err != nil {
			raw, cas = nil, 0
		}
		list := decodeBlocks(raw, now)
		vm.reassert(list, now)
		if len(vm.pending) == 0 {
			vm.loadBlocks(list)
			return
		}
		for _, b := range vm.pending {
			list = upsertBlock(list, b)
		}
		list = keepLatest(list, maxSharedBlocks)
		if err := vm.host.SetSharedData(SharedBlocklistKey, encodeBlocks(list), cas); err != nil {
			vm.m.conflicts.Add(1)
			continue
		}
		vm.pending = vm.pending[:0]
		vm.loadBlocks(list)
		return
	}
}

// keepLatest keeps the n blocks that expire last (a generic sort of the
// list would be kilobytes of the module; it holds at most twice n).
func keepLatest(list []block, n int) []block {
	for len(list) > n {
		first := 0
		for i := range list {
			if list[i].until < list[first].until {
				first = i
			}
		}
		list[first] = list[len(list)-1]
		list = list[:len(list)-1]
	}
	return list
}

func (vm *VM) loadBlocks(list []block) {
	if len(list) == 0 && len(vm.blocks) == 0 {
		return
	}
	m := make(map[uint64]int64, len(list))
	for _, b := range list {
		m[b.key] = b.until
	}
	for _, b := range vm.pending {
		m[b.key] = max(m[b.key], b.until)
	}
	vm.blocks = m
}

// reassert drops this VM's expired quarantines and makes pending those of
// the others that the shared list lacks (or holds with an earlier expiry).
func (vm *VM) reassert(list []block, now int64) {
	kept := vm.own[:0]
	for _, b := range vm.own {
		if b.until <= now {
			continue
		}
		kept = append(kept, b)
		shared := false
		for _, s := range list {
			shared = shared || (s.key == b.key && s.until >= b.until)
		}
		for _, p := range vm.pending {
			shared = shared || p.key == b.key // already on its way
		}
		if !shared {
			vm.pending = append(vm.pending, b) // syncBlocks merges it into the list
		}
	}
	vm.own = kept
}

func upsertBlock(list []block, b block) []block {
	for i := range list {
		if list[i].key == b.key {
			list[i].until = max(list[i].until, b.until)
			return list
		}
	}
	return append(list, b)
}

func decodeBlocks(raw []byte, now int64) []block {
	var out []block
	for len(raw) >= 16 && len(out) < maxSharedBlocks {
		b := block{key: binary.LittleEndian.Uint64(raw), until: int64(binary.LittleEndian.Uint64(raw[8:]))}
		raw = raw[16:]
		if b.until > now {
			out = append(out, b)
		}
	}
	return out
}

func encodeBlocks(list []block) []byte {
	out := make([]byte, 16*len(list))
	for i, b := range list {
		binary.LittleEndian.PutUint64(out[16*i:], b.key)
		binary.LittleEndian.PutUint64(out[16*i+8:], uint64(b.until))
	}
	if len(out) == 0 {
		out = []byte{0} // empty values are not storable everywhere; one byte decodes to no entry
	}
	return out
}
