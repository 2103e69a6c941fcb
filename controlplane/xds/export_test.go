package xds

import (
	"time"

	rbacfilter "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"

	"github.com/meshguard/meshguard/controlplane/mesh"
)

// CompileRBAC exposes the proxyless RBAC translation and the
// approximations it makes to the tests of package xds_test.
func CompileRBAC(w *mesh.ValidWorkload, in mesh.Inbound, eb *EncodedBundle, now time.Time) ([]*rbacfilter.RBAC, []string) {
	return compileRBAC(w, in, eb, now)
}
