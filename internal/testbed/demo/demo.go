// Package demo is `meshguard demo`: on one machine, with nothing installed,
// it runs a small mesh — the bookstore and payments workloads of the example
// policies, each behind an Envoy-EMULATING sidecar (internal/testbed/envoyemu) that
// runs meshguard's compiled wasm filter in the wazero host and calls the
// authz server over gRPC mTLS — plays legitimate traffic, then an attack by
// a compromised workload (scanning, credential probing, lateral movement),
// and shows live what was allowed, denied, detected and quarantined, and why.
//
// Everything runs in this process on loopback ports picked at start:
// identities from an in-process SPIFFE CA (internal/testbed/ca) or, with
// SpireSocket, from a SPIFFE Workload API.
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshguard/meshguard/controlplane/recordstore"
)

// Options configure Run.
type Options struct {
	// Duration of the whole demo (default 30s; at least 8s).
	Duration time.Duration
	// SpireSocket is a Workload API address (unix:///path); empty: an
	// in-process CA.
	SpireSocket string
	// Policies is the policy file system and PolicyPaths the files or
	// directories in it to load.
	Policies    fs.FS
	PolicyPaths []string
	// Wasm is the compiled meshguard filter module.
	Wasm []byte
	// Out receives the live display; TTY selects the in-place progress
	// line, Color ANSI colours.
	Out   io.Writer
	TTY   bool
	Color bool
	// Log receives the components' own logs (default: discarded).
	Log *slog.Logger
	// Console serves the control plane's web console on ConsoleAddr
	// (default 127.0.0.1:0) and prints its link with an operator token.
	Console     bool
	ConsoleAddr string
	// Hold keeps the mesh running, with legitimate traffic, after the
	// story until ctx is cancelled, so that a person can look around.
	Hold bool
}

// Summary is what happened.
type Summary struct {
	Duration    time.Duration
	Interrupted bool
	// Legitimate traffic (every workload except the attacker, and the
	// attacker before it was compromised).
	LegitRequests, LegitAllowed, LegitDenied int
	// LegitDeniedCalls counts denied legitimate requests by
	// "caller → workload METHOD path".
	LegitDeniedCalls map[string]int
	// The attacker's requests during the attack, and how many reached an
	// application with a 2xx answer.
	AttackRequests, AttackDenied, AttackSucceeded int
	// DryRun counts requests allowed only because the denying rule was in
	// dry-run.
	DryRun int
	// Detections are the anomaly events the filters reported.
	Detections []Detection
	// Quarantined and Released list identities, in order.
	Quarantined []string
	Released    []string
	// AfterRelease counts the released attacker's calls by HTTP status.
	AfterRelease map[string]int
	// DeniedWhileQuarantined counts the attacker's requests denied with
	// denied_quarantined.
	DeniedWhileQuarantined int
	// BlockedAtSource counts requests a workload's own sidecar stopped on
	// its outbound side, before they left the pod.
	BlockedAtSource int
	// ByReason counts every decision by reason code.
	ByReason map[string]int
	// Incident is the record store's timeline of the first quarantined
	// identity (what `meshguard incident` prints), nil without one.
	Incident *recordstore.Timeline
	// DecisionLog is the authz server's decision log (JSON lines, at most
	// 64 MiB), for `meshguard policy replay`.
	DecisionLog []byte
}

// Detection is one anomaly report.
type Detection struct {
	Detector, Source, Destination, Response, Detail string
}

// trustDomain of the example policies.
var trustDomain = spiffeid.RequireTrustDomainFromString("cluster.local")

// attacker is the workload the demo compromises.
const attacker = "reviews"

// Run runs the demo until it ends or ctx is cancelled (an interrupted run
// returns its summary so far with Interrupted set and no error).
func Run(ctx context.Context, o Options) (*Summary, error) {
	if o.Duration == 0 {
		o.Duration = 30 * time.Second
	}
	if o.Duration < 8*time.Second {
		return nil, fmt.Errorf("demo: --duration must be at least 8s, got %v", o.Duration)
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Policies == nil || len(o.PolicyPaths) == 0 {
		return nil, errors.New("demo: no policies")
	}
	if len(o.Wasm) == 0 {
		return nil, errors.New("demo: no wasm filter module")
	}
	m, err := start(ctx, o)
	if err != nil {
		return nil, err
	}
	defer m.stop()
	sum, err := m.play(ctx)
	if sum != nil {
		m.finishRecords(sum)
	}
	return sum, err
}
