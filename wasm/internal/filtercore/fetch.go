package filtercore

import (
	"strconv"
	"strings"
	"time"

	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/wire"
)

// fetchState is a plugin's long poll of the control plane's bundle
// endpoint (wire.BundlePath). One request is in flight at a time; an
// answer (a new bundle, or "unchanged" at the end of the wait) sends the
// next one at once, so that a new bundle reaches the filter as soon as the
// control plane publishes it. A failed fetch is retried after a delay that
// doubles up to the configured maximum; the bundle in force, if any, keeps
// serving meanwhile.
type fetchState struct {
	inflight bool
	done     bool
	// etag is the hash of the last bundle received, installed or refused:
	// sent as If-None-Match, so that the control plane holds the request
	// until it serves another one.
	etag string
	// retryAt is when a fetch may be sent again after a failure (unix
	// nanos); backoff is the next delay (ms).
	retryAt int64
	backoff uint32
	// sentAt is when the request in flight was sent (unix nanos).
	sentAt int64
}

// minHeld is how long a request that comes back unchanged must have been
// held for the next one to be sent at once: an answer that did not wait (a
// server or proxy that ignores the long poll) paces the next request by
// the retry delay instead of looping.
const minHeld = int64(time.Second)

// fetchedBundle is a bundle fetched from the control plane, with where it
// came from.
type fetchedBundle struct {
	bundle *policies.Bundle
	from   string
}

// fetchSource names where a configuration fetches its bundle from.
func (c *Config) fetchSource() string {
	return c.cluster + "\x00" + c.authority + "\x00" + c.fetch.path
}

// fetchBundle sends the next bundle request unless one is in flight, the
// plugin is done, or a failure's delay has not passed.
func (p *Plugin) fetchBundle() {
	cfg, vm := p.cfg, p.vm
	f := &p.fetch
	if cfg == nil || cfg.fetch == nil || f.inflight || f.done {
		return
	}
	if f.retryAt != 0 && vm.host.Now() < f.retryAt {
		return
	}
	fc := cfg.fetch
	hdrs := [][2]string{
		{":method", "GET"},
		{":path", fc.path + "?" + wire.BundleWaitParam + "=" + strconv.FormatUint(uint64(fc.waitMillis), 10)},
		{":authority", cfg.authority},
		{"accept", "application/json"},
	}
	if f.etag != "" {
		hdrs = append(hdrs, [2]string{"if-none-match", `"` + f.etag + `"`})
	}
	f.inflight = true
	f.sentAt = vm.host.Now()
	err := vm.host.HTTPCall(cfg.cluster, hdrs, nil, fc.waitMillis+cfg.timeoutMillis, fc.maxBytes, func(r CallResponse) {
		f.inflight = false
		if f.done {
			return
		}
		p.bundleResponse(cfg, &r)
	})
	if err != nil {
		f.inflight = false
		p.fetchFailed(cfg, "dispatch to cluster "+cfg.cluster+": "+err.Error())
	}
}

// bundleResponse handles an answer of the bundle endpoint.
func (p *Plugin) bundleResponse(cfg *Config, r *CallResponse) {
	vm := p.vm
	f := &p.fetch
	switch {
	case r.Status == 304:
		vm.m.fetchUnchanged.Add(1)
		p.paceUnchanged(cfg)
	case r.Status == 200 && r.BodyTooLarge:
		p.bundleRefused(cfg, r, "bundle larger than "+strconv.Itoa(cfg.fetch.maxBytes)+" bytes (bundleFetch.maxBytes)")
		return
	case r.Status == 200 && p.holds(r):
		// The content in force (another replica's version of it, or back
		// from a refused bundle): nothing to load.
		vm.m.fetchUnchanged.Add(1)
		f.etag = p.cfg.snap.Hash()
		p.paceUnchanged(cfg)
	case r.Status == 200:
		b, err := policies.DecodeBundle(r.Body)
		if err != nil {
			p.bundleRefused(cfg, r, err.Error())
			return
		}
		next, err := p.cfg.withBundle(b)
		if err != nil {
			p.bundleRefused(cfg, r, err.Error())
			return
		}
		vm.m.fetchUpdated.Add(1)
		f.etag, f.retryAt, f.backoff = b.Hash, 0, 0
		vm.fetched = &fetchedBundle{bundle: b, from: cfg.fetchSource()}
		p.install(next)
	default:
		reason := "status " + strconv.Itoa(r.Status)
		if r.Status == 0 {
			reason = "no answer (reset, timeout or no healthy upstream)"
		}
		p.fetchFailed(cfg, reason)
		return
	}
	p.fetchBundle()
}

// paceUnchanged schedules the request after an unchanged answer: at once
// when the control plane held the last one, after the retry delay when it
// answered without waiting.
func (p *Plugin) paceUnchanged(cfg *Config) {
	f := &p.fetch
	f.backoff = 0
	f.retryAt = 0
	if now := p.vm.host.Now(); now-f.sentAt < minHeld {
		f.retryAt = now + int64(cfg.fetch.retryMillis)*1e6
	}
}

// holds reports whether the response's ETag is the hash of the bundle in
// force.
func (p *Plugin) holds(r *CallResponse) bool {
	etag, ok := r.Header("etag")
	return ok && p.cfg.snap != nil && strings.Trim(etag, `"`) == p.cfg.snap.Hash()
}

// bundleRefused keeps the bundle in force when the control plane sends one
// the filter cannot load. With the refused bundle's ETag the next request
// waits for the control plane to serve another; without one it waits for
// the retry delay.
func (p *Plugin) bundleRefused(cfg *Config, r *CallResponse, why string) {
	p.vm.m.fetchRefused.Add(1)
	p.vm.host.Log(LevelCritical, "meshguard: refusing the bundle from the control plane, "+p.keeping()+": "+why)
	if etag, ok := r.Header("etag"); ok && strings.Trim(etag, `"`) != "" {
		p.fetch.etag = strings.Trim(etag, `"`)
		p.fetch.retryAt, p.fetch.backoff = 0, 0
		p.fetchBundle()
		return
	}
	p.retryLater(cfg)
}

// fetchFailed keeps the bundle in force and retries later.
func (p *Plugin) fetchFailed(cfg *Config, why string) {
	p.vm.m.fetchFailed.Add(1)
	p.vm.host.Log(LevelWarn, "meshguard: fetch the bundle from the control plane: "+why+"; "+p.keeping())
	p.retryLater(cfg)
}

// keeping says what enforces meanwhile, for the log.
func (p *Plugin) keeping() string {
	if p.cfg == nil || p.cfg.snap == nil {
		return "no bundle yet: denying every request"
	}
	return "keeping bundle " + p.cfg.snap.Version()
}

// retryLater sets the next attempt after the current delay, with up to
// half of it as jitter so that proxies that lost the control plane
// together do not come back together, and doubles the delay.
func (p *Plugin) retryLater(cfg *Config) {
	f := &p.fetch
	if f.backoff == 0 {
		f.backoff = cfg.fetch.retryMillis
	}
	now := p.vm.host.Now()
	d := int64(f.backoff)/2 + now%(int64(f.backoff)/2+1)
	f.retryAt = now + d*1e6
	f.backoff = min(2*f.backoff, cfg.fetch.maxRetryMillis)
}
