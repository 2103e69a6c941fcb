package demo

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/meshguard/meshguard/authz/decisionlog"
	"github.com/meshguard/meshguard/internal/testbed/envoyemu"
	"github.com/meshguard/meshguard/policies"
)

// decisionMemo is the authz server's decision log writer in the demo: it
// keeps the last entries by request id so that the display can say which
// policy and rule decided each request.
type decisionMemo struct {
	mu    sync.Mutex
	max   int
	order []string
	byReq map[string]decisionlog.Entry
	buf   bytes.Buffer
}

func newDecisionMemo(max int) *decisionMemo {
	return &decisionMemo{max: max, byReq: make(map[string]decisionlog.Entry, max)}
}

// Write takes JSON lines.
func (d *decisionMemo) Write(p []byte) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.buf.Write(p)
	for {
		line, err := d.buf.ReadBytes('\n')
		if err != nil {
			// Incomplete line: keep it for the next write.
			rest := append([]byte(nil), line...)
			d.buf.Reset()
			d.buf.Write(rest)
			break
		}
		var e decisionlog.Entry
		if json.Unmarshal(line, &e) != nil || e.RequestID == "" {
			continue
		}
		if _, ok := d.byReq[e.RequestID]; !ok {
			d.order = append(d.order, e.RequestID)
		}
		d.byReq[e.RequestID] = e
		for len(d.order) > d.max {
			delete(d.byReq, d.order[0])
			d.order = d.order[1:]
		}
	}
	return len(p), nil
}

// get returns the entry of a request. The decision log is written by a
// goroutine of its own, so the entry of a request the authz server decided
// may arrive just after the answer: with wait, look again for a moment.
func (d *decisionMemo) get(reqID string, wait bool) (decisionlog.Entry, bool) {
	deadline := time.Now().Add(50 * time.Millisecond)
	for {
		d.mu.Lock()
		e, ok := d.byReq[reqID]
		d.mu.Unlock()
		if ok || !wait || time.Now().After(deadline) {
			return e, ok
		}
		time.Sleep(time.Millisecond)
	}
}

// onOutcome shows one request the sidecars handled.
func (m *mesh) onOutcome(o envoyemu.Outcome) {
	src := m.name(o.Source)
	who := src + " → " + o.Workload
	to, outbound := strings.CutPrefix(o.Listener, "outbound_")
	if outbound {
		// The workload's own request, on its sidecar's outbound side.
		src, who = o.Workload, o.Workload+" → "+to
	}
	what := o.Method + " " + truncate(o.Path, 40)
	// Only requests that got past the filter (allowed, or denied by
	// authz) can have an authz decision to wait for.
	// (An outbound listener has no ext_authz: its requests are decided at
	// their destination, under another request id.)
	e, haveDecision := m.dlog.get(o.RequestID, !outbound && (o.DeniedBy == "" || o.DeniedBy == envoyemu.DeniedByAuthz))
	reason := o.Reason
	if o.DeniedBy == envoyemu.DeniedAuthzError {
		// Envoy sends a bare 403 (status_on_error); count it apart from
		// the authz server's reason codes.
		reason = "ext_authz_error"
		haveDecision = false
	}
	ref := ""
	if haveDecision {
		if reason == "" {
			reason = string(e.Reason)
		}
		if e.Policy != "" {
			ref = e.Policy
			if e.Rule != "" {
				ref += " rule " + e.Rule
			}
		}
	}
	kind := KindAllow
	switch {
	case o.DeniedBy != "":
		kind = KindDeny
	case haveDecision && e.WouldDeny:
		kind = KindDryRun
	}
	why := reason
	if outbound && o.DeniedBy == "" {
		why = fmt.Sprintf("let out by its own sidecar; %s's side answered %d", to, o.Status)
	} else if o.DeniedBy == envoyemu.DeniedByFilter && outbound {
		why = fmt.Sprintf("%s (blocked at the source by its own sidecar: never left the pod)", reason)
		m.mu.Lock()
		m.sum.BlockedAtSource++
		m.mu.Unlock()
	} else if o.DeniedBy != "" {
		why = fmt.Sprintf("%s (denied by %s)", reason, deniedByLabel(o.DeniedBy))
	} else if kind == KindDryRun {
		why = fmt.Sprintf("%s: would deny, dry-run", reason)
	} else if o.Status >= 400 {
		why = fmt.Sprintf("%s, app answered %d", reason, o.Status)
	}
	if ref != "" {
		why += " · " + ref
	}
	m.mu.Lock()
	if reason != "" {
		m.sum.ByReason[reason]++
	}
	if kind == KindDryRun {
		m.sum.DryRun++
	}
	if policies.Reason(reason) == policies.ReasonDeniedQuarantine && src == attacker {
		m.sum.DeniedWhileQuarantined++
	}
	m.mu.Unlock()
	m.ui.Line(kind, who, what, why)
}

func deniedByLabel(s string) string {
	switch s {
	case envoyemu.DeniedByFilter:
		return "wasm filter"
	case envoyemu.DeniedByAuthz:
		return "authz"
	case envoyemu.DeniedAuthzError:
		return "ext_authz unavailable, fail closed"
	}
	return s
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-1] + "…"
}
