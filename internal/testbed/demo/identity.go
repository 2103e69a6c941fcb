package demo

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/meshguard/meshguard/internal/testbed/ca"
)

// bundles is what the authz server and the sidecars verify against.
type bundles interface {
	x509bundle.Source
	jwtbundle.Source
}

// identities hands out the demo workloads' SVIDs: from the in-process CA by
// default, or from a SPIFFE Workload API (SPIRE) with --spire-socket.
type identities interface {
	X509(id spiffeid.ID) (x509svid.Source, error)
	JWT(ctx context.Context, id spiffeid.ID, audience string) (string, error)
	Bundles() bundles
	Describe() string
	Close() error
}

// caIdentities issues SVIDs from internal/testbed/ca.
type caIdentities struct {
	ca  *ca.CA
	set *x509bundle.Set
	jwt *jwtbundle.Set
}

func newCAIdentities(td spiffeid.TrustDomain) (*caIdentities, error) {
	c, err := ca.New(td)
	if err != nil {
		return nil, err
	}
	return &caIdentities{ca: c, set: x509bundle.NewSet(c.X509Bundle()), jwt: jwtbundle.NewSet(c.JWTBundle())}, nil
}

func (c *caIdentities) X509(id spiffeid.ID) (x509svid.Source, error) {
	return c.ca.IssueX509SVID(id, time.Hour)
}

func (c *caIdentities) JWT(_ context.Context, id spiffeid.ID, audience string) (string, error) {
	return c.ca.IssueJWTSVID(id, []string{audience}, 5*time.Minute)
}

func (c *caIdentities) Bundles() bundles { return caBundles{c} }

func (c *caIdentities) Describe() string {
	return "in-process SPIFFE CA for trust domain " + c.ca.TrustDomain().Name() + " (no --spire-socket given)"
}

func (c *caIdentities) Close() error { return nil }

type caBundles struct{ c *caIdentities }

func (b caBundles) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return b.c.set.GetX509BundleForTrustDomain(td)
}

func (b caBundles) GetJWTBundleForTrustDomain(td spiffeid.TrustDomain) (*jwtbundle.Bundle, error) {
	return b.c.jwt.GetJWTBundleForTrustDomain(td)
}

// spireIdentities reads SVIDs from a Workload API. SPIRE must have an entry
// for each demo workload that matches this process (for example
// unix:uid:<uid> for every ID; docs/demo.md shows the commands); the
// Workload API then returns all of them and each sidecar picks its own.
type spireIdentities struct {
	addr    string
	client  *workloadapi.Client
	bundle  *workloadapi.BundleSource
	mu      sync.Mutex
	sources []*workloadapi.X509Source
}

func newSPIREIdentities(ctx context.Context, addr string) (*spireIdentities, error) {
	c, err := workloadapi.New(ctx, workloadapi.WithAddr(addr))
	if err != nil {
		return nil, fmt.Errorf("workload API %s: %w", addr, err)
	}
	bctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	bs, err := workloadapi.NewBundleSource(bctx, workloadapi.WithClient(c))
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("workload API %s: bundles: %w", addr, err)
	}
	return &spireIdentities{addr: addr, client: c, bundle: bs}, nil
}

func (s *spireIdentities) X509(id spiffeid.ID) (x509svid.Source, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	var found bool
	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClient(s.client),
		workloadapi.WithDefaultX509SVIDPicker(func(svids []*x509svid.SVID) *x509svid.SVID {
			for _, sv := range svids {
				if sv.ID == id {
					found = true
					return sv
				}
			}
			found = false
			return svids[0]
		}))
	if err != nil {
		return nil, fmt.Errorf("workload API: X509-SVID for %s: %w", id, err)
	}
	if _, err := src.GetX509SVID(); err != nil || !found {
		src.Close()
		return nil, fmt.Errorf("workload API %s serves no X509-SVID for %s to this process (register one, see docs/demo.md)", s.addr, id)
	}
	s.mu.Lock()
	s.sources = append(s.sources, src)
	s.mu.Unlock()
	return src, nil
}

func (s *spireIdentities) JWT(ctx context.Context, id spiffeid.ID, audience string) (string, error) {
	svid, err := s.client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: audience, Subject: id})
	if err != nil {
		return "", err
	}
	return svid.Marshal(), nil
}

func (s *spireIdentities) Bundles() bundles { return s.bundle }

func (s *spireIdentities) Describe() string { return "SPIFFE Workload API at " + s.addr }

func (s *spireIdentities) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for _, src := range s.sources {
		errs = append(errs, src.Close())
	}
	errs = append(errs, s.bundle.Close(), s.client.Close())
	return errors.Join(errs...)
}
