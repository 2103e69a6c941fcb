package envoyemu

import (
	"fmt"
	"net/http"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffegrpc/grpccredentials"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
)

// OutboundClient is the caller side of the mesh: an HTTP client that, like
// an Envoy outbound cluster with an UpstreamTlsContext from SDS, presents
// the caller's X509-SVID and accepts only the destination's expected SPIFFE
// ID (secure naming).
func OutboundClient(svids x509svid.Source, bundles x509bundle.Source, dest spiffeid.ID, timeout time.Duration) *http.Client {
	tlsCfg := tlsconfig.MTLSClientConfig(svids, bundles, tlsconfig.AuthorizeID(dest))
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			TLSClientConfig:     tlsCfg,
			MaxIdleConnsPerHost: 16,
			IdleConnTimeout:     30 * time.Second,
			ForceAttemptHTTP2:   false,
		},
	}
}

// DialAuthz connects to the ext_authz server over gRPC mTLS, presenting the
// sidecar's X509-SVID and accepting only authzID, as Envoy's ext_authz
// cluster does with SDS certificates. The connection is lazy: a server that
// is down makes Check fail (and the sidecar deny), not DialAuthz.
func DialAuthz(addr string, svids x509svid.Source, bundles x509bundle.Source, authzID spiffeid.ID) (authv3.AuthorizationClient, *grpc.ClientConn, error) {
	creds := grpccredentials.MTLSClientCredentials(svids, bundles, tlsconfig.AuthorizeID(authzID))
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, nil, fmt.Errorf("envoyemu: dial authz %s: %w", addr, err)
	}
	return authv3.NewAuthorizationClient(cc), cc, nil
}
