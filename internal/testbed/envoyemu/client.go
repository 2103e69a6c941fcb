package envoyemu

import (
	"net/http"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// OutboundClient is the caller side of the mesh where the caller's own
// proxy is not emulated: an HTTP client that, like an Envoy outbound
// cluster with an UpstreamTlsContext from SDS, presents the caller's
// X509-SVID and accepts only the destination's expected SPIFFE ID (secure
// naming). Calls that go through an emulated outbound listener use the
// proxy's generated cluster instead.
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
