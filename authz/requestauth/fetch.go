package requestauth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"sync"
	"syscall"
	"time"
)

// Key sets named by URI (jwksUri, or found by OpenID discovery) are fetched
// by the server that verifies the tokens, kept, and refreshed:
//
//   - a source is fetched when a policy set that names it is first used,
//     and again every Refresh; a refresh that fails keeps the last good
//     keys (retried no sooner than MinRefetch);
//   - a token whose kid (and alg) no key of the set fits makes the set be
//     fetched at once (no more than once per MinRefetch), so that a rotated
//     key is used on its first token;
//   - a source without keys (never fetched, or every fetch failed) refuses
//     the tokens that need it: a request waits for a fetch in flight at
//     most until its own deadline, then is refused (fail closed);
//   - a fetch is bounded in time (the rule's timeout, default 5s) and size
//     (MaxKeySetBytes), and never connects to a link-local or cloud
//     metadata address (nor to the configured blocked ranges), as istiod's
//     resolver refuses them.

// Defaults of Config.
const (
	DefaultRefresh        = 5 * time.Minute
	DefaultMinRefetch     = 30 * time.Second
	DefaultMaxKeySetBytes = 512 << 10
	// retryNoKeys is how soon a source without keys is fetched again after
	// a failure, when a token needs it.
	retryNoKeys = 2 * time.Second
)

// remote is one fetched key set source.
type remote struct {
	url       string // the jwksUri, or the OpenID discovery document
	discovery bool

	mu      sync.Mutex
	timeout time.Duration
	keys    *keySet
	fetched time.Time // last success
	attempt time.Time // last fetch started
	err     error     // last failure, nil after a success
	wait    chan struct{}
	used    bool // a snapshot in use names it
}

// get returns the source's keys: the last good ones when they exist (a
// stale set is refreshed in the background), else those of a fetch it
// waits for, bounded by ctx.
func (r *remote) get(ctx context.Context, a *Authenticator) (*keySet, error) {
	now := a.now()
	r.mu.Lock()
	if r.keys != nil {
		ks := r.keys
		if now.Sub(r.fetched) >= a.refresh && now.Sub(r.attempt) >= a.minRefetch {
			r.startLocked(a)
		}
		r.mu.Unlock()
		return ks, nil
	}
	var ch chan struct{}
	if r.wait != nil || now.Sub(r.attempt) >= retryNoKeys {
		ch = r.startLocked(a)
	}
	err := r.err
	r.mu.Unlock()
	if ch == nil {
		return nil, fmt.Errorf("key set %s unavailable: %w", r.url, err)
	}
	return r.await(ctx, ch)
}

// refetch fetches the set again because a token needs a key it lacks,
// unless it was fetched within MinRefetch; it returns the keys then held.
func (r *remote) refetch(ctx context.Context, a *Authenticator) (*keySet, error) {
	r.mu.Lock()
	if r.wait == nil && a.now().Sub(r.attempt) < a.minRefetch {
		ks, err := r.keys, r.err
		r.mu.Unlock()
		if ks == nil {
			return nil, err
		}
		return ks, nil
	}
	ch := r.startLocked(a)
	r.mu.Unlock()
	return r.await(ctx, ch)
}

func (r *remote) await(ctx context.Context, ch chan struct{}) (*keySet, error) {
	select {
	case <-ch:
	case <-ctx.Done():
		return nil, fmt.Errorf("key set %s: waiting for its fetch: %w", r.url, ctx.Err())
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.keys == nil {
		return nil, fmt.Errorf("key set %s unavailable: %w", r.url, r.err)
	}
	return r.keys, nil
}

// startLocked starts a fetch unless one runs, and returns the channel
// closed when it ends. r.mu is held.
func (r *remote) startLocked(a *Authenticator) chan struct{} {
	if r.wait != nil {
		return r.wait
	}
	ch := make(chan struct{})
	r.wait, r.attempt = ch, a.now()
	timeout := r.timeout
	a.fetches.Add(1)
	go func() {
		defer a.fetches.Done()
		ks, err := a.fetch(r.url, r.discovery, timeout)
		r.mu.Lock()
		if err == nil {
			r.keys, r.fetched, r.err = ks, a.now(), nil
		} else {
			r.err = err
		}
		r.wait = nil
		close(ch)
		r.mu.Unlock()
		a.fetched(r.url, err)
	}()
	return ch
}

// fetch reads a key set: from the discovery document's jwks_uri first when
// discovery is set.
func (a *Authenticator) fetch(uri string, discovery bool, timeout time.Duration) (*keySet, error) {
	ctx, cancel := context.WithTimeout(a.base, timeout)
	defer cancel()
	if discovery {
		body, err := a.get(ctx, uri)
		if err != nil {
			return nil, fmt.Errorf("OpenID discovery: %w", err)
		}
		var doc struct {
			JWKSURI string `json:"jwks_uri"`
		}
		if err := json.Unmarshal(body, &doc); err != nil {
			return nil, fmt.Errorf("OpenID discovery %s: not a JSON object with jwks_uri", uri)
		}
		u, err := url.Parse(doc.JWKSURI)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("OpenID discovery %s: jwks_uri %q is not an http(s) URL", uri, doc.JWKSURI)
		}
		uri = doc.JWKSURI
	}
	body, err := a.get(ctx, uri)
	if err != nil {
		return nil, err
	}
	ks, err := parseKeySet(body)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", uri, err)
	}
	return ks, nil
}

// get GETs uri, at most MaxKeySetBytes of a 2xx answer.
func (a *Authenticator) get(ctx context.Context, uri string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, uri, nil)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", uri, err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := a.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", uri, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, fmt.Errorf("GET %s: status %d", uri, resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, a.maxBytes+1))
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", uri, err)
	}
	if int64(len(body)) > a.maxBytes {
		return nil, fmt.Errorf("GET %s: the answer exceeds %d bytes", uri, a.maxBytes)
	}
	return body, nil
}

// NewHTTPClient returns the client key sets are fetched with: proxies from
// the environment, and a dialer that refuses link-local addresses (cloud
// instance metadata among them), the other well-known metadata addresses,
// and the blocked ranges, whatever name resolved to them and after every
// redirect.
func NewHTTPClient(blocked []netip.Prefix) *http.Client {
	d := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	d.ControlContext = func(_ context.Context, _, address string, _ syscall.RawConn) error {
		ap, err := netip.ParseAddrPort(address)
		if err != nil {
			return fmt.Errorf("key set fetch: dial %s: %w", address, err)
		}
		return checkDialAddr(ap.Addr(), blocked)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DialContext = d.DialContext
	tr.MaxResponseHeaderBytes = 64 << 10
	return &http.Client{Transport: tr}
}

// metadataAddrs are cloud metadata services outside the link-local range.
var metadataAddrs = []netip.Addr{
	netip.MustParseAddr("100.100.100.200"), // Alibaba Cloud
	netip.MustParseAddr("fd00:ec2::254"),   // AWS over IPv6
}

var errBlocked = errors.New("key set fetch: connection to a blocked address refused")

func checkDialAddr(ip netip.Addr, blocked []netip.Prefix) error {
	ip = ip.Unmap()
	if ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() {
		return fmt.Errorf("%w: %s is link-local", errBlocked, ip)
	}
	for _, m := range metadataAddrs {
		if ip == m {
			return fmt.Errorf("%w: %s is a cloud metadata address", errBlocked, ip)
		}
	}
	for _, p := range blocked {
		if p.Contains(ip) {
			return fmt.Errorf("%w: %s is in %s", errBlocked, ip, p)
		}
	}
	return nil
}
