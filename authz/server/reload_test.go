package server

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshguard/meshguard/authz/loader"
	"github.com/meshguard/meshguard/authz/metrics"
	"github.com/meshguard/meshguard/policies"
)

// versionSet is version n of a policy: one policy named "gen-<n>" that
// ALLOWs the frontend when n is even and DENYs it when n is odd.
func versionSet(n int) policies.Set {
	action := "ALLOW"
	if n%2 == 1 {
		action = "DENY"
	}
	return policies.Set{AuthorizationPolicies: []policies.AuthorizationPolicy{{
		APIVersion: policies.APIVersionIstioV1, Kind: policies.KindAuthorizationPolicy,
		Metadata: policies.ObjectMeta{Name: fmt.Sprintf("gen-%d", n), Namespace: "shop"},
		Spec: policies.AuthorizationPolicySpec{Action: action, Rules: []policies.Rule{{
			From: []policies.RuleFrom{{Source: policies.Source{Principals: []string{"prod.example/ns/web/sa/frontend"}}}},
		}}},
	}}}
}

// TestHotReloadUnderLoad runs concurrent Checks over the real connection
// while the loader swaps policy versions every few milliseconds. Every
// answer must come from exactly one version: the version it reports, the
// policy it names and its verdict must agree. Zero errors.
func TestHotReloadUnderLoad(t *testing.T) {
	e := newEnv(t)
	l := loader.New(e.engine, slog.New(slog.NewTextHandler(io.Discard, nil)), metrics.New(prometheus.NewRegistry()))

	const versions = 150
	bundles := make([]*policies.Bundle, versions)
	for i := range bundles {
		bundles[i] = mustBundle(t, "v"+strconv.Itoa(i), versionSet(i))
	}
	if err := l.Apply("test", loader.Update{Bundle: bundles[0]}); err != nil {
		t.Fatal(err)
	}
	e.srv.MarkReady()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var (
		wg       sync.WaitGroup
		checks   atomic.Int64
		mismatch atomic.Int64
		errs     atomic.Int64
		seen     sync.Map
		firstBad atomic.Value
	)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				resp, err := e.client.Check(context.Background(), withPrincipal(get("/api/items", nil), idFrontend.String()))
				if err != nil {
					errs.Add(1)
					continue
				}
				checks.Add(1)
				md := resp.GetDynamicMetadata().GetFields()
				ver := md["bundle_version"].GetStringValue()
				n, err := strconv.Atoi(strings.TrimPrefix(ver, "v"))
				if err != nil || n < 0 || n >= versions {
					mismatch.Add(1)
					firstBad.CompareAndSwap(nil, fmt.Sprintf("unknown version %q", ver))
					continue
				}
				seen.Store(n, true)
				wantAllow := n%2 == 0
				allowed := resp.GetOkResponse() != nil
				policy := md["policy"].GetStringValue()
				if allowed != wantAllow || !strings.Contains(policy, fmt.Sprintf("/gen-%d", n)) {
					mismatch.Add(1)
					firstBad.CompareAndSwap(nil, fmt.Sprintf("version %s: allowed=%v policy=%q reason=%s", ver, allowed, policy, md["reason"].GetStringValue()))
				}
			}
		}()
	}
	for i := 1; i < versions; i++ {
		time.Sleep(3 * time.Millisecond)
		if err := l.Apply("test", loader.Update{Bundle: bundles[i]}); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(20 * time.Millisecond)
	cancel()
	wg.Wait()

	distinct := 0
	seen.Range(func(any, any) bool { distinct++; return true })
	t.Logf("%d checks across %d distinct versions", checks.Load(), distinct)
	if errs.Load() != 0 {
		t.Errorf("%d RPC errors", errs.Load())
	}
	if mismatch.Load() != 0 {
		t.Errorf("%d decisions did not match their version; first: %v", mismatch.Load(), firstBad.Load())
	}
	if distinct < 10 || checks.Load() < 100 {
		t.Errorf("the load did not overlap the swaps (%d checks, %d versions)", checks.Load(), distinct)
	}
}
