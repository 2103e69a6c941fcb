// Package console is the control plane's web console: a live service graph
// of the mesh (workloads as nodes, edges coloured by allowed, denied,
// dry-run and anomalous traffic, with rates), a live feed of denials,
// detections and quarantine changes, identity pages, quarantine and release
// for operators, and policy views with the engine's explain.
//
// It is served on the control plane's HTTP listener under /console/, next
// to the events endpoint and the admin API, and takes the events that
// endpoint accepts (ObserveEvents). Every request needs credentials: an
// operator's or viewer's client certificate (SPIFFE ID), a bearer token, or
// a session started with a token. Live updates go out as server-sent events,
// cut every tick and fanned out with a bounded queue per stream. The page's
// assets are embedded; it loads nothing from anywhere else.
package console

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/meshguard/meshguard/controlplane/record"
	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/wire"
)

// Path is where the console is served.
const Path = "/console/"

// Quarantiner is what the console needs of the quarantine manager: the calls
// the admin API makes, so that a quarantine or release from the console
// takes the same path and is audited the same way.
type Quarantiner interface {
	Quarantines() []Quarantine
	History() []QuarantineChange
	Quarantine(ctx context.Context, identity, reason, by string, d time.Duration) (Quarantine, error)
	Release(ctx context.Context, identity, reason, by string) error
}

// Errors a Quarantiner returns, which the console answers with their own
// status (errors.Is): 400, 404, 409 and 503; anything else is a 500.
var (
	ErrInvalid        = errors.New("invalid request")
	ErrNotQuarantined = errors.New("not quarantined")
	ErrLimit          = errors.New("too many identities quarantined")
	ErrUnavailable    = errors.New("the state store did not take the change; nothing changed")
)

// Timeline is the record store's account of an identity
// (controlplane/recordstore): its incident timeline, newest first, at most
// limit records. Optional: without one the identity page shows what the
// console saw.
type Timeline interface {
	IdentityTimeline(ctx context.Context, identity string, limit int) ([]record.Record, error)
}

// TimelineEntry is one line of an incident timeline.
type TimelineEntry struct {
	Time        time.Time `json:"time"`
	Kind        string    `json:"kind"`
	Action      string    `json:"action,omitempty"`
	Source      string    `json:"src,omitempty"`
	Destination string    `json:"dst,omitempty"`
	Route       string    `json:"route,omitempty"`
	Method      string    `json:"method,omitempty"`
	Path        string    `json:"path,omitempty"`
	Reason      string    `json:"reason,omitempty"`
	Policy      string    `json:"policy,omitempty"`
	Rule        string    `json:"rule,omitempty"`
	Count       uint64    `json:"count,omitempty"`
	By          string    `json:"by,omitempty"`
	Detail      string    `json:"detail,omitempty"`
}

// timelineEntries turns records into the page's lines.
func timelineEntries(recs []record.Record) []TimelineEntry {
	out := make([]TimelineEntry, len(recs))
	for i := range recs {
		r := &recs[i]
		out[i] = TimelineEntry{Time: r.Time, Kind: string(r.Kind), Action: r.Action, Source: r.Source, Destination: r.Destination,
			Route: r.Route, Method: r.Method, Path: r.Path, Reason: r.Reason, Policy: r.Policy, Rule: r.Rule, Count: r.Count, By: r.By,
			Detail: r.Detail}
	}
	return out
}

// Options configure the console.
type Options struct {
	Quarantines Quarantiner
	// Bundle returns the policy bundle being served (policy views,
	// explain); nil or a nil bundle: none yet.
	Bundle   func() *policies.Bundle
	Timeline Timeline
	// Workloads are shown before they send traffic (the mesh description).
	Workloads []Workload
	Auth      Auth
	// Tick is how often changes go out to the pages (default 250ms).
	Tick time.Duration
	// MaxStreams bounds the open live streams (default 64) and
	// StreamQueue the updates queued per stream before it is dropped as
	// too slow (default 64).
	MaxStreams, StreamQueue int
	// MaxNodes and MaxEdges bound the graph (default 10,000 and 50,000).
	MaxNodes, MaxEdges int
	Now                func() time.Time
	Logger             *slog.Logger
	Registerer         prometheus.Registerer
}

// Console serves the console. Run must be running for pages to get live
// updates.
type Console struct {
	opts  Options
	log   *slog.Logger
	auth  *authenticator
	model *model
	hub   *hub
	mux   *http.ServeMux
	sync  chan struct{}
	// stopped is closed when Run returns: open streams end then, so that
	// the listener's graceful shutdown does not wait for them.
	stopped  chan struct{}
	stopOnce sync.Once
	// logins limits failed logins (the tokens are 256-bit random values;
	// this keeps failures cheap and visible).
	logins *rate.Limiter

	bundle  atomic.Pointer[policies.Bundle]
	snapMu  sync.Mutex
	snapFor *policies.Bundle
	snap    *policies.Snapshot

	authFailures *prometheus.CounterVec
	loginsTotal  *prometheus.CounterVec
	actions      *prometheus.CounterVec
	dropped      prometheus.CounterFunc
}

// New returns a console.
func New(opts Options) (*Console, error) {
	if opts.Quarantines == nil {
		return nil, errors.New("console: a quarantine manager is required")
	}
	if opts.Tick <= 0 {
		opts.Tick = 250 * time.Millisecond
	}
	if opts.MaxStreams <= 0 {
		opts.MaxStreams = 64
	}
	if opts.StreamQueue <= 0 {
		opts.StreamQueue = 64
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Bundle == nil {
		opts.Bundle = func() *policies.Bundle { return nil }
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	au, err := newAuthenticator(opts.Auth, opts.Now)
	if err != nil {
		return nil, err
	}
	c := &Console{
		opts: opts, log: log, auth: au,
		model:   newModel(opts.Now, opts.MaxNodes, opts.MaxEdges, opts.Workloads),
		hub:     newHub(opts.MaxStreams, opts.StreamQueue),
		mux:     http.NewServeMux(),
		sync:    make(chan struct{}, 1),
		stopped: make(chan struct{}),
		logins:  rate.NewLimiter(rate.Every(100*time.Millisecond), 20),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshguard_console_auth_failures_total",
			Help: "Console requests refused, by reason (unauthenticated, forbidden, csrf).",
		}, []string{"reason"}),
		loginsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshguard_console_logins_total",
			Help: "Console token logins, by result (ok, bad_token, limited, refused).",
		}, []string{"result"}),
		actions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshguard_console_actions_total",
			Help: "Quarantines and releases asked for in the console, by action and result.",
		}, []string{"action", "result"}),
	}
	c.dropped = prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "meshguard_console_events_ignored_total",
		Help: "Events the console did not draw: identities that are not SPIFFE IDs, unknown outcomes, a full graph.",
	}, func() float64 { return float64(c.model.droppedEvents()) })
	if opts.Registerer != nil {
		cs := append(c.hub.collectors(), c.authFailures, c.loginsTotal, c.actions, c.dropped)
		for _, col := range cs {
			if err := opts.Registerer.Register(col); err != nil {
				return nil, fmt.Errorf("console: register metrics: %w", err)
			}
		}
	}
	c.routes()
	c.syncQuarantines()
	return c, nil
}

// ObserveDecisions takes the decisions of a batch the decisions endpoint
// accepted from an authz server: its denials and dry-run would-denies
// join the graph and the feed.
func (c *Console) ObserveDecisions(_ string, ds []wire.Decision) {
	c.model.observeDecisions(ds)
}

// ObserveEvents takes a batch the events endpoint accepted; reporter is
// the authenticated reporter.
func (c *Console) ObserveEvents(reporter string, b *wire.EventBatch) {
	c.model.observe(reporter, b.Events)
}

// BundleChanged tells the console a new bundle is being served (a
// quarantine change is one). It does not block: the store calls it with its
// lock held.
func (c *Console) BundleChanged(b *policies.Bundle) {
	c.bundle.Store(b)
	c.resync()
}

// resync asks Run to read the quarantines again.
func (c *Console) resync() {
	select {
	case c.sync <- struct{}{}:
	default:
	}
}

// Run sends the changes to the pages every tick, and follows quarantine
// changes, until ctx is done; then it ends the open streams.
func (c *Console) Run(ctx context.Context) {
	t := time.NewTicker(c.opts.Tick)
	defer t.Stop()
	defer c.stopOnce.Do(func() { close(c.stopped) })
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.sync:
			c.syncQuarantines()
			if b := c.bundle.Load(); b != nil && c.model.newEdges() {
				if s := c.snapshotOf(b); s != nil {
					c.model.rebaseline(s)
				}
			}
		case <-t.C:
			c.flush()
		}
	}
}

// flush cuts the changes since the last tick and queues them to every
// stream.
func (c *Console) flush() {
	d, ok := c.model.cut()
	if !ok {
		return
	}
	msg, err := sseMessage("delta", d)
	if err != nil {
		c.log.Error("console: encode update", "error", err)
		return
	}
	c.hub.broadcast(msg)
}

func (c *Console) syncQuarantines() {
	c.model.syncQuarantines(c.opts.Quarantines.Quarantines(), c.opts.Quarantines.History())
}

// currentBundle is the bundle being served: the last one announced, else
// the one Options.Bundle returns.
func (c *Console) currentBundle() *policies.Bundle {
	if b := c.bundle.Load(); b != nil {
		return b
	}
	return c.opts.Bundle()
}

// snapshotOf compiles b once.
func (c *Console) snapshotOf(b *policies.Bundle) *policies.Snapshot {
	c.snapMu.Lock()
	defer c.snapMu.Unlock()
	if c.snapFor == b && c.snap != nil {
		return c.snap
	}
	s, err := policies.Compile(b)
	if err != nil {
		c.log.Error("console: compile bundle", "version", b.Version, "error", err)
		return nil
	}
	c.snapFor, c.snap = b, s
	return s
}

func sseMessage(event string, v any) ([]byte, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	msg := make([]byte, 0, len(data)+len(event)+16)
	msg = append(msg, "event: "...)
	msg = append(msg, event...)
	msg = append(msg, "\ndata: "...)
	msg = append(msg, data...) // JSON has no raw newlines
	msg = append(msg, "\n\n"...)
	return msg, nil
}
