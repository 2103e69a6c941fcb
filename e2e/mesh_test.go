//go:build e2e

package e2e

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshguard/meshguard/e2e/internal/spire"
)

// trustDomain is the example policies' trust domain (examples/policies).
var trustDomain = spiffeid.RequireTrustDomainFromString("cluster.local")

func sa(ns, name string) spiffeid.ID {
	return spiffeid.RequireFromPath(trustDomain, "/ns/"+ns+"/sa/"+name)
}

// TestE2E brings up the whole system once and runs the scenarios in order;
// each scenario logs a SCENARIO line with its outcome and duration.
func TestE2E(t *testing.T) {
	if testing.Short() {
		t.Skip("e2e: not in -short mode")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	logs := logDir(t)
	bins := binDir(t)
	suiteStart := time.Now()

	setup := time.Now()
	env, err := spire.Start(ctx, spire.Config{BinDir: bins, TrustDomain: trustDomain, LogDir: logs})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(env.Stop)
	t.Logf("SPIRE server and agent healthy in %v (Workload API %s)", time.Since(setup).Round(time.Millisecond), env.SocketAddr())

	wdir, err := os.MkdirTemp("", "mg-e2e-bin-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(wdir) })
	workloadBin := buildWorkload(t, wdir)

	ws := map[string]*workload{}
	for _, w := range []struct{ name, ns string }{
		{"frontend", "bookstore"}, {"catalog", "bookstore"}, {"reviews", "bookstore"},
	} {
		wl := &workload{name: w.name, id: sa(w.ns, w.name), path: linkBinary(t, workloadBin, wdir, w.name)}
		if err := env.Register(ctx, spire.Entry{ID: wl.id, Selectors: spire.WorkloadSelectors(wl.path)}); err != nil {
			t.Fatal(err)
		}
		ws[w.name] = wl
	}
	spiffeEnv := []string{"SPIFFE_ENDPOINT_SOCKET=" + env.SocketAddr()}
	for _, w := range ws {
		startWorkload(ctx, t, w, spiffeEnv, nil, logs)
	}
	t.Logf("setup done in %v", time.Since(suiteStart).Round(time.Millisecond))

	timed(t, "spire identities: one SVID per workload binary, mTLS between them", func(t *testing.T) {
		// startWorkload already checked that each process received exactly
		// its own SPIFFE ID; here the emulated sidecars talk mTLS and the
		// upstream app sees the caller's SPIFFE ID in XFCC.
		r := ws["frontend"].call(t, ws["catalog"], "/api/books", callOpts{})
		if r.Status != 200 || !strings.Contains(r.Body, "URI="+ws["frontend"].id.String()) {
			t.Fatalf("frontend → catalog: %+v", r)
		}
		r = ws["reviews"].call(t, ws["catalog"], "/api/books", callOpts{})
		if r.Status != 200 || !strings.Contains(r.Body, "URI="+ws["reviews"].id.String()) {
			t.Fatalf("reviews → catalog: %+v", r)
		}
	})
}
