// Package bundlefeed serves the policy bundle over HTTP to the filters that
// fetch it (wire.BundleFetch: Istio WasmPlugins, whose configuration names
// the control plane instead of carrying the bundle).
//
// A request names the bundle its filter holds (If-None-Match: "<hash>").
// When the control plane serves another bundle it gets it at once (200,
// ETag "<hash>"); otherwise the request is held until the control plane
// publishes one or the wait the filter asked for ends (304): a long poll,
// so that a published change reaches every filter within one round trip,
// with one request per filter at a time and nothing written to Kubernetes.
// The body is encoded once per bundle and shared by every answer.
package bundlefeed

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/wire"
)

// Defaults of Options.
const (
	// DefaultMaxWait bounds how long a request is held. It stays under
	// the control plane's HTTP write timeout (30 s).
	DefaultMaxWait = 20 * time.Second
	// DefaultMaxWaiting bounds the requests held at once (a filter holds
	// one per Envoy worker); more are answered 503 and retried by the
	// filter after its delay.
	DefaultMaxWaiting = 100000
)

// Options configure a Feed.
type Options struct {
	// TrustDomain whose members may fetch the bundle (required unless
	// Insecure): the caller's client certificate must be an X509-SVID of
	// it, as for the events endpoint.
	TrustDomain spiffeid.TrustDomain
	// Insecure serves callers without client certificates (local use
	// only, like the control plane's --insecure-plaintext).
	Insecure   bool
	MaxWait    time.Duration
	MaxWaiting int
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Feed serves the current bundle. Create it with New, feed it with Publish
// (a policy store subscriber) and mount it at wire.BundlePath.
type Feed struct {
	opts Options
	log  *slog.Logger

	mu      sync.Mutex
	cur     *entry
	changed chan struct{} // closed and replaced on every Publish
	closed  chan struct{} // closed by Close
	once    sync.Once
	waiting int

	requests *prometheus.CounterVec
	held     prometheus.Gauge
	size     prometheus.Gauge
}

// entry is one published bundle, encoded once.
type entry struct {
	body          []byte
	hash, version string
}

// New returns a feed with no bundle: until the first Publish, requests
// are held (or answered 503 when they do not wait).
func New(opts Options) (*Feed, error) {
	if !opts.Insecure && opts.TrustDomain.IsZero() {
		return nil, errors.New("bundlefeed: a trust domain is required unless insecure")
	}
	if opts.MaxWait <= 0 {
		opts.MaxWait = DefaultMaxWait
	}
	if opts.MaxWaiting <= 0 {
		opts.MaxWaiting = DefaultMaxWaiting
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	f := &Feed{
		opts: opts, log: log,
		changed: make(chan struct{}),
		closed:  make(chan struct{}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshguard_controlplane_bundle_feed_requests_total",
			Help: "Bundle requests of filters by answer: sent (a bundle), not_modified (the wait ended unchanged), unavailable (no bundle yet), busy (too many held), unauthenticated, invalid.",
		}, []string{"result"}),
		held: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meshguard_controlplane_bundle_feed_waiting_requests",
			Help: "Bundle requests held until the bundle changes.",
		}),
		size: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meshguard_controlplane_bundle_feed_bundle_bytes",
			Help: "Size of the bundle the feed serves.",
		}),
	}
	if opts.Registerer != nil {
		for _, c := range []prometheus.Collector{f.requests, f.held, f.size} {
			if err := opts.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("bundlefeed: register metrics: %w", err)
			}
		}
	}
	return f, nil
}

// Publish makes b the bundle served and answers every held request whose
// filter holds another one. A bundle that cannot be encoded is logged and
// the previous one keeps being served.
func (f *Feed) Publish(b *policies.Bundle) {
	body, err := b.Encode()
	if err != nil {
		f.log.Error("bundle feed: encode bundle; serving the previous one", "version", b.Version, "error", err)
		return
	}
	f.mu.Lock()
	f.cur = &entry{body: body, hash: b.Hash, version: b.Version}
	close(f.changed)
	f.changed = make(chan struct{})
	f.mu.Unlock()
	f.size.Set(float64(len(body)))
}

// Close answers every held request at once (304, or 503 without a
// bundle), for a server shutting down: http.Server.Shutdown waits for
// handlers, and held requests would otherwise keep it for the whole wait.
// Requests that arrive later are not held.
func (f *Feed) Close() { f.once.Do(func() { close(f.closed) }) }

// ServeHTTP answers GET wire.BundlePath?wait=<ms> with If-None-Match.
func (f *Feed) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		f.fail(w, http.StatusMethodNotAllowed, "invalid", "GET only")
		return
	}
	if !f.opts.Insecure {
		if err := f.authenticate(r); err != nil {
			f.fail(w, http.StatusUnauthorized, "unauthenticated", "a client SVID of the mesh's trust domain is required")
			return
		}
	}
	req, err := ParseRequest(r.URL.Query(), r.Header.Values("If-None-Match"))
	if err != nil {
		f.fail(w, http.StatusBadRequest, "invalid", err.Error())
		return
	}
	wait := min(req.Wait, f.opts.MaxWait)
	var timer <-chan time.Time
	held := false
	defer func() {
		if held {
			f.mu.Lock()
			f.waiting--
			f.mu.Unlock()
			f.held.Dec()
		}
	}()
	for {
		f.mu.Lock()
		cur, changed := f.cur, f.changed
		switch {
		case cur != nil && cur.hash != req.Holds:
			f.mu.Unlock()
			f.send(w, cur)
			return
		case wait == 0 || isClosed(f.closed):
			f.mu.Unlock()
			f.unchanged(w, cur)
			return
		case !held && f.waiting >= f.opts.MaxWaiting:
			f.mu.Unlock()
			w.Header().Set("Retry-After", "1")
			f.fail(w, http.StatusServiceUnavailable, "busy", "too many bundle requests waiting")
			return
		}
		if !held {
			held = true
			f.waiting++
			f.held.Inc()
			t := time.NewTimer(wait)
			defer t.Stop()
			timer = t.C
		}
		f.mu.Unlock()
		select {
		case <-changed:
		case <-timer:
			f.unchanged(w, cur)
			return
		case <-f.closed:
		case <-r.Context().Done():
			return
		}
	}
}

func isClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// authenticate checks that the caller presented an X509-SVID of the trust
// domain (the TLS layer verified it against the trust bundle).
func (f *Feed) authenticate(r *http.Request) error {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return errors.New("no client certificate")
	}
	id, err := x509svid.IDFromCert(r.TLS.PeerCertificates[0])
	if err != nil {
		return err
	}
	if id.TrustDomain() != f.opts.TrustDomain {
		return fmt.Errorf("%s is not of trust domain %s", id, f.opts.TrustDomain)
	}
	return nil
}

func (f *Feed) send(w http.ResponseWriter, e *entry) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("ETag", `"`+e.hash+`"`)
	h.Set(wire.HeaderBundleVersion, e.version)
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Length", strconv.Itoa(len(e.body)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(e.body)
	f.requests.WithLabelValues("sent").Inc()
}

// unchanged answers a request whose wait ended: 304 with the bundle it
// holds, or 503 when there is no bundle yet.
func (f *Feed) unchanged(w http.ResponseWriter, cur *entry) {
	if cur == nil {
		w.Header().Set("Retry-After", "1")
		f.fail(w, http.StatusServiceUnavailable, "unavailable", "no policy bundle yet")
		return
	}
	w.Header().Set("ETag", `"`+cur.hash+`"`)
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusNotModified)
	f.requests.WithLabelValues("not_modified").Inc()
}

func (f *Feed) fail(w http.ResponseWriter, status int, result, msg string) {
	f.requests.WithLabelValues(result).Inc()
	http.Error(w, msg, status)
}

// Request is what a bundle request asks.
type Request struct {
	// Holds is the hash of the bundle the filter holds (If-None-Match),
	// empty for none.
	Holds string
	// Wait is how long the request may be held.
	Wait time.Duration
}

// maxETag bounds the If-None-Match value: a bundle hash is 71 bytes.
const maxETag = 128

// ParseRequest reads the wait parameter (milliseconds, at most
// wire.MaxBundleWaitMillis) and the If-None-Match header (one entity tag,
// strong or weak). Anything else is an error.
func ParseRequest(query map[string][]string, ifNoneMatch []string) (Request, error) {
	var req Request
	for k := range query {
		if k != wire.BundleWaitParam {
			return req, fmt.Errorf("unknown parameter %q", k)
		}
	}
	switch ws := query[wire.BundleWaitParam]; len(ws) {
	case 0:
	case 1:
		ms, err := strconv.ParseUint(ws[0], 10, 32)
		if err != nil || ms > wire.MaxBundleWaitMillis {
			return req, fmt.Errorf("%s=%q: want milliseconds, 0..%d", wire.BundleWaitParam, ws[0], wire.MaxBundleWaitMillis)
		}
		req.Wait = time.Duration(ms) * time.Millisecond
	default:
		return req, fmt.Errorf("%s given %d times", wire.BundleWaitParam, len(ws))
	}
	switch len(ifNoneMatch) {
	case 0:
		return req, nil
	case 1:
	default:
		return req, errors.New("If-None-Match given more than once")
	}
	v := strings.TrimSpace(ifNoneMatch[0])
	v = strings.TrimPrefix(v, "W/")
	if len(v) > maxETag || len(v) < 2 || v[0] != '"' || v[len(v)-1] != '"' {
		return req, errors.New(`If-None-Match: want one entity tag, "<bundle hash>"`)
	}
	v = v[1 : len(v)-1]
	for i := 0; i < len(v); i++ {
		// RFC 9110 etagc: no quotes, no controls, no spaces.
		if c := v[i]; c == '"' || c <= ' ' || c == 0x7f {
			return req, errors.New("If-None-Match: invalid entity tag")
		}
	}
	req.Holds = v
	return req, nil
}
