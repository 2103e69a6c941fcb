// Package requestauth validates end-user JWTs as Istio's RequestAuthentication
// says, at meshguard's authz server: what Envoy's jwt_authn filter does for
// the providers istiod configures from the RequestAuthentications of a
// workload (pilot/pkg/security/authn/policy_applier.go).
//
// For a request, every jwtRule that applies to its target (the policy
// package scopes them) names where tokens are and which issuer, audiences
// and key set they need. A request with no token at any of those places is
// not refused: it goes on without a request principal. A token found at
// one of them must be valid for a rule that reads that place and names its
// issuer (or names none): well formed, within its validity (60s of clock
// skew, as Envoy), of an allowed audience, and signed by a key of the rule's
// key set. Otherwise the request is refused, with Envoy's 401 (403 when
// the audiences are the only fault). meshguard is stricter than Envoy in
// three places: every token found must be valid (Envoy lets one valid
// token of one provider hide an invalid one at another provider's place),
// two different valid tokens are refused (Istio leaves the principal of
// such a request undefined), and tokens signed with HMAC or "none" are
// refused (an HMAC key is a secret every enforcement point would hold).
//
// A valid token is the request principal (policies.Attributes.JWT): its
// claims (the space-delimited ones split into lists, as Istio's filter
// configuration asks), iss, sub, aud and azp. The rule's outputs are
// returned as header changes for the upstream request: the payload and
// claim headers set (client-sent values of them always removed), and the
// token's header removed unless forwardOriginalToken.
package requestauth

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshguard/meshguard/policies"
)

// Limits on what a request can make the server do.
const (
	maxTokenBytes = 64 << 10
	maxTokens     = 16
	// clockSkew is Envoy's default leeway for exp and nbf.
	clockSkew = 60 * time.Second
)

// Config configures an Authenticator.
type Config struct {
	// Client fetches key sets; nil: NewHTTPClient(nil).
	Client *http.Client
	// Refresh is how often a fetched key set is fetched again (default
	// DefaultRefresh); MinRefetch the least time between two fetches of
	// one set (default DefaultMinRefetch); MaxKeySetBytes the largest
	// answer read (default DefaultMaxKeySetBytes).
	Refresh        time.Duration
	MinRefetch     time.Duration
	MaxKeySetBytes int64
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Log receives fetch failures; nil discards.
	Log *slog.Logger
	// Registerer receives the metrics; nil registers none.
	Registerer prometheus.Registerer
}

// Authenticator validates tokens. Safe for concurrent use; Close stops its
// fetches.
type Authenticator struct {
	client     *http.Client
	refresh    time.Duration
	minRefetch time.Duration
	maxBytes   int64
	now        func() time.Time
	log        *slog.Logger

	base    context.Context
	cancel  context.CancelFunc
	fetches sync.WaitGroup

	mu     sync.Mutex
	snap   *policies.Snapshot
	inline map[string]inlineKeys // by key set text
	remote map[string]*remote    // by URL

	fetchTotal  *prometheus.CounterVec
	unavailable prometheus.GaugeFunc
}

type inlineKeys struct {
	ks  *keySet
	err error
}

// New returns an Authenticator.
func New(cfg Config) (*Authenticator, error) {
	if cfg.Refresh < 0 || cfg.MinRefetch < 0 || cfg.MaxKeySetBytes < 0 {
		return nil, errors.New("requestauth: refresh, refetch interval and size limit must not be negative")
	}
	a := &Authenticator{
		client: cfg.Client, refresh: cfg.Refresh, minRefetch: cfg.MinRefetch, maxBytes: cfg.MaxKeySetBytes,
		now: cfg.Now, log: cfg.Log, inline: map[string]inlineKeys{}, remote: map[string]*remote{},
	}
	if a.client == nil {
		a.client = NewHTTPClient(nil)
	}
	if a.refresh == 0 {
		a.refresh = DefaultRefresh
	}
	if a.minRefetch == 0 {
		a.minRefetch = DefaultMinRefetch
	}
	if a.maxBytes == 0 {
		a.maxBytes = DefaultMaxKeySetBytes
	}
	if a.now == nil {
		a.now = time.Now
	}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	a.base, a.cancel = context.WithCancel(context.Background())
	a.fetchTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshguard_authz_jwks_fetches_total",
		Help: "Key set fetches of RequestAuthentication rules (jwksUri, OpenID discovery), by result (success, error).",
	}, []string{"result"})
	a.unavailable = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "meshguard_authz_jwks_unavailable",
		Help: "Key sets the serving policy names that have no keys (never fetched, or every fetch failed): their tokens are refused.",
	}, a.countUnavailable)
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{a.fetchTotal, a.unavailable} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("requestauth: register metrics: %w", err)
			}
		}
	}
	return a, nil
}

// Close stops the fetches in flight and waits for them.
func (a *Authenticator) Close() {
	a.cancel()
	a.fetches.Wait()
}

func (a *Authenticator) countUnavailable() float64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, r := range a.remote {
		r.mu.Lock()
		if r.used && r.keys == nil {
			n++
		}
		r.mu.Unlock()
	}
	return float64(n)
}

func (a *Authenticator) fetched(uri string, err error) {
	if err != nil {
		a.fetchTotal.WithLabelValues("error").Inc()
		a.log.Warn("key set fetch failed; tokens that need it use the last keys fetched, or are refused without any",
			slog.String("url", uri), slog.String("error", err.Error()))
		return
	}
	a.fetchTotal.WithLabelValues("success").Inc()
}

// Run refreshes the fetched key sets until ctx is done. current, when not
// nil, is the serving snapshot: a new one is prepared (its key sets
// fetched) within a second of being served, before its first token.
func (a *Authenticator) Run(ctx context.Context, current func() *policies.Snapshot) {
	tick := time.NewTicker(min(a.refresh/2, 30*time.Second))
	defer tick.Stop()
	watch := time.NewTicker(time.Second)
	defer watch.Stop()
	for {
		if current != nil {
			if s := current(); s != nil {
				a.Prepare(s)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			a.refreshDue()
		case <-watch.C:
		}
	}
}

// refreshDue starts the fetches that are due: sets older than Refresh,
// and sets without keys.
func (a *Authenticator) refreshDue() {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.now()
	for _, r := range a.remote {
		r.mu.Lock()
		due := r.used && r.wait == nil && ((r.keys != nil && now.Sub(r.fetched) >= a.refresh && now.Sub(r.attempt) >= a.minRefetch) ||
			(r.keys == nil && now.Sub(r.attempt) >= a.minRefetch))
		if due {
			r.startLocked(a)
		}
		r.mu.Unlock()
	}
}

// Prepare reads the key sets snap names: inline ones are parsed, fetched
// ones start fetching (those no longer named are dropped). Authenticate
// calls it when the snapshot changes; a server may call it as soon as it
// loads one.
func (a *Authenticator) Prepare(snap *policies.Snapshot) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if snap == a.snap {
		return
	}
	a.snap = snap
	inline := map[string]inlineKeys{}
	for _, r := range a.remote {
		r.mu.Lock()
		r.used = false
		r.mu.Unlock()
	}
	for _, p := range snap.AllJWTProviders() {
		if p.JWKS != "" {
			if _, ok := inline[p.JWKS]; !ok {
				e, ok := a.inline[p.JWKS]
				if !ok {
					e.ks, e.err = parseKeySet([]byte(p.JWKS))
					if e.err != nil {
						a.log.Warn("an inline key set is unusable; its tokens are refused", slog.String("policy", p.Ref.Policy), slog.String("error", e.err.Error()))
					}
				}
				inline[p.JWKS] = e
			}
			continue
		}
		r := a.remoteLocked(p)
		if r == nil {
			continue
		}
		r.mu.Lock()
		r.used = true
		if r.keys == nil && r.wait == nil && r.attempt.IsZero() {
			r.startLocked(a)
		}
		r.mu.Unlock()
	}
	a.inline = inline
	for k, r := range a.remote {
		r.mu.Lock()
		if !r.used {
			delete(a.remote, k)
		}
		r.mu.Unlock()
	}
}

// remoteLocked is the fetched source of p, created when new; nil when p
// has no URL to fetch from. a.mu is held.
func (a *Authenticator) remoteLocked(p *policies.JWTProvider) *remote {
	uri, discovery := p.JWKSURI, false
	if uri == "" {
		uri, discovery = p.DiscoveryURL(), true
		if uri == "" {
			return nil
		}
	}
	k := uri
	if discovery {
		k = "discovery " + uri
	}
	r := a.remote[k]
	if r == nil {
		r = &remote{url: uri, discovery: discovery, timeout: p.Timeout}
		a.remote[k] = r
	}
	r.mu.Lock()
	r.timeout = max(r.timeout, p.Timeout)
	r.mu.Unlock()
	return r
}

// keys returns p's key set, and the fetched source it comes from (nil for
// an inline set).
func (a *Authenticator) keys(ctx context.Context, p *policies.JWTProvider) (*keySet, *remote, error) {
	if p.JWKS != "" {
		a.mu.Lock()
		e, ok := a.inline[p.JWKS]
		a.mu.Unlock()
		if !ok {
			e.ks, e.err = parseKeySet([]byte(p.JWKS))
		}
		return e.ks, nil, e.err
	}
	a.mu.Lock()
	r := a.remoteLocked(p)
	a.mu.Unlock()
	if r == nil {
		return nil, nil, fmt.Errorf("no jwks, no jwksUri, and issuer %q is not an http(s) URL to discover the key set from", p.Issuer)
	}
	ks, err := r.get(ctx, a)
	return ks, r, err
}

// Request is what Authenticate reads of a request.
type Request struct {
	// Headers by lowercase name, duplicates joined with ','.
	Headers HeaderGetter
	// Path is :path, query included.
	Path string
	// SVIDToken is the token the server's JWT-SVID path reads (empty: none).
	// A token equal to it that no rule's issuer claims is left to that path
	// instead of being refused as of an unknown issuer.
	SVIDToken string
}

// Result is a request Authenticate did not refuse.
type Result struct {
	// Token is the valid end-user token, nil when the request has none.
	Token *policies.JWT
	// SVIDTokenClaimed: Request.SVIDToken was validated as an end-user
	// token; the JWT-SVID path must not read it. SVIDTokenDeferred: it was
	// found where a rule reads tokens, of an issuer no rule names, and left
	// to the JWT-SVID path: if that path refuses it too, the request is
	// refused as Envoy refuses a token of an unknown issuer (UnknownIssuer).
	SVIDTokenClaimed  bool
	SVIDTokenDeferred bool
	// Set are headers to set on the upstream request (lowercase name,
	// value), replacing any value; Remove headers to remove from it.
	Set    [][2]string
	Remove []string
}

// Authenticate validates the tokens of a request for the providers that
// apply to its target (policies.Snapshot.JWTProviders of snap). A refused
// request has a Failure. ctx bounds waiting for a key set fetch.
func (a *Authenticator) Authenticate(ctx context.Context, snap *policies.Snapshot, ps []*policies.JWTProvider, req Request) (Result, *Failure) {
	var res Result
	if len(ps) == 0 {
		return res, nil
	}
	a.Prepare(snap)
	for _, p := range ps {
		if p.PayloadHeader != "" {
			res.Remove = appendOnce(res.Remove, p.PayloadHeader)
		}
		for _, ch := range p.ClaimHeaders {
			res.Remove = appendOnce(res.Remove, ch.Header)
		}
	}
	toks, overflow := extract(locations(ps), req.Headers, req.Path)
	if overflow {
		return Result{}, fail(statusTooMany).public(fmt.Sprintf("more than %d tokens", maxTokens))
	}
	type valid struct {
		f *found
		t *jwt
		p *policies.JWTProvider
	}
	var good []valid
	for i := range toks {
		f := &toks[i]
		where := f.loc.kind.String() + " " + f.loc.name
		t, bad := parseJWT(f.token)
		if bad != nil {
			return Result{}, bad.public(where)
		}
		var cands []*policies.JWTProvider
		for _, p := range f.loc.providers {
			if p.Issuer == "" || (t.hasIss && p.Issuer == t.iss) {
				cands = append(cands, p)
			}
		}
		if len(cands) == 0 {
			if f.token == req.SVIDToken {
				res.SVIDTokenDeferred = true
				continue // not an end-user token: the JWT-SVID path reads it
			}
			return Result{}, &Failure{Reason: policies.ReasonDeniedToken, Status: 401, Message: statusText[statusUnknownIssuer],
				Location: where, Err: fmt.Errorf("iss %q", t.iss)}
		}
		var first, firstOther *failure
		var ok *policies.JWTProvider
		for _, p := range cands {
			bad := a.check(ctx, t, p)
			if bad == nil {
				ok = p
				break
			}
			if first == nil {
				first = bad
			}
			if firstOther == nil && bad.st != statusAudience {
				firstOther = bad
			}
		}
		if ok == nil {
			if firstOther != nil {
				first = firstOther
			}
			return Result{}, first.public(where)
		}
		good = append(good, valid{f, t, ok})
	}
	if len(good) == 0 {
		return res, nil
	}
	for _, g := range good[1:] {
		if g.f.token != good[0].f.token {
			return Result{}, fail(statusSeveral).public(good[0].f.loc.kind.String() + " " + good[0].f.loc.name + " and " + g.f.loc.kind.String() + " " + g.f.loc.name)
		}
	}
	t, p := good[0].t, good[0].p
	res.Token = endUser(t, p)
	res.SVIDTokenClaimed = t.raw == req.SVIDToken && req.SVIDToken != ""
	if p.PayloadHeader != "" {
		res.Set = append(res.Set, [2]string{p.PayloadHeader, t.payloadB64})
	}
	for _, ch := range p.ClaimHeaders {
		if v, ok := claimHeaderValue(t.claims, ch.Claim); ok {
			res.Set = append(res.Set, [2]string{ch.Header, v})
		}
	}
	for _, g := range good {
		if g.f.loc.kind == locHeader && !g.p.Forward {
			res.Remove = appendOnce(res.Remove, g.f.loc.name)
		}
	}
	// A header both set and removed is set.
	res.Remove = slices.DeleteFunc(res.Remove, func(h string) bool {
		return slices.ContainsFunc(res.Set, func(s [2]string) bool { return s[0] == h })
	})
	return res, nil
}

// UnknownIssuer is the refusal of a token found where a rule reads tokens
// whose issuer no rule names (as Envoy's jwt_authn filter answers it),
// for a token the JWT-SVID path refused too (Result.SVIDTokenDeferred).
func UnknownIssuer(err error) *Failure {
	return &Failure{Reason: policies.ReasonDeniedToken, Status: 401, Message: statusText[statusUnknownIssuer],
		Location: "the JWT-SVID header", Err: err}
}

// check validates t for provider p: validity in time, audience, signature.
func (a *Authenticator) check(ctx context.Context, t *jwt, p *policies.JWTProvider) *failure {
	now := a.now().Unix()
	if now < 0 {
		now = 0
	}
	skew := uint64(clockSkew / time.Second)
	if uint64(now)+skew < t.nbf {
		return fail(statusNotYetValid)
	}
	if t.exp != 0 && uint64(now) > t.exp+skew {
		return fail(statusExpired)
	}
	if !audienceAllowed(p.Audiences, t.aud) {
		return fail(statusAudience)
	}
	ks, r, err := a.keys(ctx, p)
	if err != nil {
		return &failure{st: statusKeysUnavailable, detail: err.Error()}
	}
	bad := t.verify(ks)
	if bad != nil && bad.st == statusKidAlgMismatch && r != nil {
		// A key the set lacks: perhaps rotated in since it was fetched.
		if ks2, err := r.refetch(ctx, a); err == nil && ks2 != ks {
			bad = t.verify(ks2)
		}
	}
	return bad
}

// audienceAllowed is jwt_verify_lib's CheckAudience: no configured
// audience allows any; otherwise one of the token's must be configured,
// both compared without an http:// or https:// scheme and a trailing '/'.
func audienceAllowed(allowed, aud []string) bool {
	if len(allowed) == 0 {
		return true
	}
	for _, x := range aud {
		x = sanitizeAudience(x)
		for _, y := range allowed {
			if sanitizeAudience(y) == x {
				return true
			}
		}
	}
	return false
}

func sanitizeAudience(a string) string {
	if a == "" {
		return a
	}
	if strings.HasPrefix(a, "http://") {
		a = a[len("http://"):]
	} else if strings.HasPrefix(a, "https://") {
		a = a[len("https://"):]
	}
	return strings.TrimSuffix(a, "/")
}

// endUser is the engine's view of a valid token: its claims with the
// provider's space-delimited claims split into lists of words.
func endUser(t *jwt, p *policies.JWTProvider) *policies.JWT {
	claims := t.claims
	for _, name := range p.SpaceDelimited {
		s, ok := claims[name].(string)
		if !ok {
			continue
		}
		var words []any
		for w := range strings.SplitSeq(s, " ") {
			if w != "" {
				words = append(words, w)
			}
		}
		if len(words) > 0 {
			claims[name] = words
		}
	}
	j := &policies.JWT{Issuer: t.iss, Subject: t.sub, Audiences: t.aud, Claims: claims}
	j.Principal = t.sub
	if t.hasIss {
		j.Principal = t.iss + "/" + t.sub
	}
	j.Presenter, _ = claims["azp"].(string)
	return j
}

// claimHeaderValue is the header value Envoy writes for a claim (by a
// dotted path): a string as is, a number as an integer when it is one, a
// boolean as true or false, an object or list as base64 of its JSON. An
// empty string, a missing claim, or a value a header cannot carry gives
// none.
func claimHeaderValue(claims map[string]any, name string) (string, bool) {
	var cur any = claims
	for part := range strings.SplitSeq(name, ".") {
		m, ok := cur.(map[string]any)
		if !ok {
			return "", false
		}
		if cur, ok = m[part]; !ok {
			return "", false
		}
	}
	var v string
	switch x := cur.(type) {
	case string:
		v = x
	case float64:
		if _, frac := math.Modf(x); x >= 0 && x < math.MaxUint64 && frac == 0 {
			v = strconv.FormatUint(uint64(x), 10)
		} else {
			v = strconv.FormatFloat(x, 'f', 6, 64)
		}
	case bool:
		v = strconv.FormatBool(x)
	case map[string]any, []any:
		b, err := json.Marshal(x)
		if err != nil {
			return "", false
		}
		v = base64.StdEncoding.EncodeToString(b)
	}
	if v == "" || strings.ContainsAny(v, "\r\n\x00") {
		return "", false
	}
	return v, true
}

func appendOnce(list []string, s string) []string {
	if slices.Contains(list, s) {
		return list
	}
	return append(list, s)
}
