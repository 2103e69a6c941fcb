package xds_test

// The differential test of the proxyless RBAC translation: policy sets —
// hand-picked edge cases, sets from internal/testbed/policygen and sets
// generated here over every field the translation handles — are published
// through the real xDS server to real grpc-go xDS servers, and real RPCs
// from callers holding real SPIFFE certificates are decided by grpc-go's own
// RBAC engine (google.golang.org/grpc/internal/xds/rbac, which no test can
// import: it runs in the servers). Every request is also decided by
// policies.Snapshot.Decide. Where the translation recorded no
// approximation for the workload the answers must be identical; where it
// did (conditions a proxyless server cannot see) RBAC must never allow what
// the engine denies.

import (
	"context"
	"encoding/pem"
	"fmt"
	"math/rand"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	xdscreds "google.golang.org/grpc/credentials/xds"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	grpcxds "google.golang.org/grpc/xds"
	"google.golang.org/protobuf/types/known/emptypb"
	"sigs.k8s.io/yaml"

	"github.com/meshguard/meshguard/controlplane/mesh"
	"github.com/meshguard/meshguard/controlplane/xds"
	"github.com/meshguard/meshguard/controlplane/xdsserver"
	"github.com/meshguard/meshguard/internal/testbed/ca"
	"github.com/meshguard/meshguard/internal/testbed/policygen"
	"github.com/meshguard/meshguard/policies"
)

const td = policygen.TrustDomain

// The workloads: three proxyless servers, two in ns-0 that share a tier
// label, one in ns-1; their IDs, names and app labels are policygen's.
const fixtureMesh = `
apiVersion: meshguard.dev/v1alpha1
kind: Mesh
metadata: {name: differential}
spec:
  trustDomain: prod.example
  authz: {address: 127.0.0.1, port: 9191, spiffeID: spiffe://prod.example/ns/meshguard/sa/authz}
  controlPlane: {address: 127.0.0.1, port: 8443, spiffeID: spiffe://prod.example/ns/meshguard/sa/cp}
  wasm: {file: /etc/meshguard/meshguard.wasm}
  workloads:
  - name: svc-0
    namespace: ns-0
    spiffeID: spiffe://prod.example/ns/ns-0/sa/svc-0
    labels: {app: svc-0, tier: web}
    proxyless: true
    inbound:
    - name: grpc
      port: %d
      address: 127.0.0.1
      routes:
      - {name: items, prefix: /api/v1/svc-0/items/}
      - {name: status, path: /api/v1/svc-0/status}
  - name: svc-1
    namespace: ns-0
    spiffeID: spiffe://prod.example/ns/ns-0/sa/svc-1
    labels: {app: svc-1, tier: web}
    proxyless: true
    inbound:
    - name: grpc
      port: %d
      address: 127.0.0.1
      routes:
      - {name: say, prefix: /helloworld.Greeter/}
  - name: svc-10
    namespace: ns-1
    spiffeID: spiffe://prod.example/ns/ns-1/sa/svc-10
    labels: {app: svc-10, tier: api}
    proxyless: true
    inbound: [{name: grpc, port: %d, address: 127.0.0.1}]
`

// fixture is the control plane, the CA and the workloads' listening ports.
type fixture struct {
	t       *testing.T
	ca      *ca.CA
	mesh    *mesh.Mesh
	gen     *xds.Generator
	srv     *xdsserver.Server
	cpAddr  string
	dir     string
	ports   map[string]int // workload key → port
	round   int
	callers map[spiffeid.ID]credentials.TransportCredentials
	stop    []func() // the servers of the current set
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{t: t, dir: t.TempDir(), ports: map[string]int{}, callers: map[spiffeid.ID]credentials.TransportCredentials{}}
	var err error
	if f.ca, err = ca.New(spiffeid.RequireTrustDomainFromString(td)); err != nil {
		t.Fatal(err)
	}
	var ports []any
	for _, key := range []string{"svc-0.ns-0", "svc-1.ns-0", "svc-10.ns-1"} {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		f.ports[key] = l.Addr().(*net.TCPAddr).Port
		ports = append(ports, f.ports[key])
		l.Close()
	}
	if f.mesh, err = mesh.Parse([]byte(fmt.Sprintf(fixtureMesh, ports...))); err != nil {
		t.Fatal(err)
	}
	f.gen = xds.NewGenerator(f.mesh)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if f.srv, err = xdsserver.New(ctx, xdsserver.Options{Mesh: f.mesh}); err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	f.srv.Register(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.cpAddr = lis.Addr().String()
	done := make(chan struct{})
	go func() { defer close(done); _ = g.Serve(lis) }()
	t.Cleanup(func() { g.Stop(); <-done })

	// The servers' SVIDs and the trust bundle, as the SPIFFE helper would
	// write them for the bootstrap's file_watcher provider.
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.ca.Root().Raw})
	if err := os.WriteFile(filepath.Join(f.dir, "bundle.pem"), caPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, w := range f.mesh.Workloads {
		svid, err := f.ca.IssueX509SVID(w.ID, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		cert, key, err := svid.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		for name, data := range map[string][]byte{w.Key + ".pem": cert, w.Key + ".key": key} {
			if err := os.WriteFile(filepath.Join(f.dir, name), data, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	return f
}

// serve starts a grpc-go xDS server for w (a node it has never been, so
// that its first listener is the current one) and returns its address.
func (f *fixture) serve(w *mesh.ValidWorkload) string {
	t := f.t
	f.round++
	bootstrap := fmt.Sprintf(`{
  "xds_servers": [{"server_uri": %q, "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
  "node": {"id": "%s-%d", "cluster": %q},
  "server_listener_resource_name_template": %q,
  "certificate_providers": {%q: {"plugin_name": "file_watcher", "config": {
    "certificate_file": %q, "private_key_file": %q, "ca_certificate_file": %q, "refresh_interval": "600s"}}}
}`, f.cpAddr, w.Name, f.round, w.Key, xds.GRPCListenerTemplate, xds.GRPCCertProvider,
		filepath.Join(f.dir, w.Key+".pem"), filepath.Join(f.dir, w.Key+".key"), filepath.Join(f.dir, "bundle.pem"))
	creds, err := xdscreds.NewServerCredentials(xdscreds.ServerOptions{FallbackCreds: insecure.NewCredentials()})
	if err != nil {
		t.Fatal(err)
	}
	serving := make(chan error, 8)
	gs, err := grpcxds.NewGRPCServer(
		grpc.Creds(creds),
		grpcxds.BootstrapContentsForTesting([]byte(bootstrap)),
		grpcxds.ServingModeCallback(func(_ net.Addr, a grpcxds.ServingModeChangeArgs) {
			if a.Mode == connectivity.ServingModeServing {
				serving <- nil
			} else if a.Err != nil {
				serving <- a.Err
			}
		}),
		// Every method is served, so that requests can carry any path.
		grpc.UnknownServiceHandler(func(_ any, stream grpc.ServerStream) error {
			var in emptypb.Empty
			if err := stream.RecvMsg(&in); err != nil {
				return err
			}
			return stream.SendMsg(&emptypb.Empty{})
		}),
	)
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", f.ports[w.Key])
	var lis net.Listener
	for i := 0; ; i++ {
		if lis, err = net.Listen("tcp", addr); err == nil {
			break
		}
		if i == 50 {
			t.Fatalf("listen %s: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = gs.Serve(lis) }()
	t.Cleanup(func() { gs.Stop(); <-done })
	f.stop = append(f.stop, func() { gs.Stop(); <-done })
	select {
	case err := <-serving:
		if err != nil {
			t.Fatalf("%s not serving: %v", w.Key, err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("%s did not start serving", w.Key)
	}
	return addr
}

// creds are a caller's mTLS credentials (issued once per identity).
func (f *fixture) creds(id spiffeid.ID) credentials.TransportCredentials {
	if c, ok := f.callers[id]; ok {
		return c
	}
	svid, err := f.ca.IssueX509SVID(id, time.Hour)
	if err != nil {
		f.t.Fatal(err)
	}
	c := credentials.NewTLS(tlsconfig.MTLSClientConfig(svid, f.ca.X509Bundle(), tlsconfig.AuthorizeAny()))
	f.callers[id] = c
	return c
}

// request is one RPC and how the engine sees it.
type request struct {
	caller  spiffeid.ID
	path    string
	headers [][2]string // in the order sent; repeated names arrive joined
}

// outcome counts the requests of a set: decided alike by both, or denied
// by RBAC only where the translation approximated; and the workload
// translations with approximations.
type outcome struct {
	allowed, denied, failClosed, approxWorkloads int
}

func (o *outcome) add(x outcome) {
	o.allowed += x.allowed
	o.denied += x.denied
	o.failClosed += x.failClosed
	o.approxWorkloads += x.approxWorkloads
}

// run publishes set, serves every workload from it, sends every request of
// reqs (workload key → requests) and compares grpc-go's answers with the
// engine's. It returns how many requests went each way.
func (f *fixture) run(name string, set policies.Set, reqs map[string][]request, exact bool) (r outcome) {
	t := f.t
	b, _, err := policies.NewBundle(name, set)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	snap, err := policies.Compile(b)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	eb, err := f.gen.Encode(b)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if err := f.srv.Publish(b); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	f.srv.Wait()
	defer f.stopAll()
	for _, w := range f.mesh.Workloads {
		_, approx := xds.CompileRBAC(w, w.Inbound[0], eb, time.Now())
		if len(approx) > 0 {
			r.approxWorkloads++
			if exact {
				t.Errorf("%s: %s: approximations in a set that must translate exactly: %v", name, w.Key, approx)
			}
		}
		addr := f.serve(w)
		conns := map[spiffeid.ID]*grpc.ClientConn{}
		for _, rq := range reqs[w.Key] {
			conn := conns[rq.caller]
			if conn == nil {
				if conn, err = grpc.NewClient(addr, grpc.WithTransportCredentials(f.creds(rq.caller))); err != nil {
					t.Fatal(err)
				}
				defer conn.Close()
				conns[rq.caller] = conn
			}
			got := f.call(conn, rq)
			a := attributes(w, f.ports[w.Key], addr, rq)
			d := snap.Decide(&a)
			// A CUSTOM match is for its provider to decide, which a
			// proxyless server cannot ask: it denies.
			want := d.Allowed && d.Custom == ""
			switch {
			case got == want && got:
				r.allowed++
			case got == want:
				r.denied++
			case len(approx) > 0 && !got:
				// Denying more where the translation could not see is
				// the fail-closed side.
				r.failClosed++
			default:
				t.Errorf("%s: %s → %s %s headers %v: grpc-go RBAC allowed=%v, engine allowed=%v (%s %s, custom %q); approximations %v",
					name, rq.caller, w.Key, rq.path, rq.headers, got, d.Allowed && d.Custom == "", d.Reason, d.Ref.Policy, d.Custom, approx)
			}
		}
	}
	return r
}

func (f *fixture) stopAll() {
	for _, s := range f.stop {
		s()
	}
	f.stop = nil
}

// call sends one RPC: true when it went through, false when RBAC denied
// it; anything else fails the test.
func (f *fixture) call(conn *grpc.ClientConn, rq request) bool {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var kv []string
	for _, h := range rq.headers {
		kv = append(kv, h[0], h[1])
	}
	ctx = metadata.AppendToOutgoingContext(ctx, kv...)
	err := conn.Invoke(ctx, rq.path, &emptypb.Empty{}, &emptypb.Empty{})
	switch status.Code(err) {
	case codes.OK:
		return true
	case codes.PermissionDenied:
		return false
	}
	f.t.Fatalf("%s %s: %v", rq.caller, rq.path, err)
	return false
}

// attributes is the request as the engine sees it: what a proxyless
// server knows of it.
func attributes(w *mesh.ValidWorkload, port int, authority string, rq request) policies.Attributes {
	headers := policies.MapHeaders{}
	for _, h := range rq.headers {
		if v, ok := headers[h[0]]; ok {
			headers[h[0]] = v + "," + h[1]
		} else {
			headers[h[0]] = h[1]
		}
	}
	loopback := netip.MustParseAddr("127.0.0.1")
	return policies.Attributes{
		Peer: rq.caller, MTLS: true,
		SourceIP: loopback, DestinationIP: loopback, DestinationPort: uint32(port),
		Target:  policies.Target{ID: w.ID, Namespace: w.Namespace, Labels: w.Labels, Service: w.Service, Resolved: true},
		Method:  "POST",
		Host:    authority,
		Path:    rq.path,
		Route:   routeOf(w.Inbound[0], rq.path),
		Headers: headers,
	}
}

// routeOf is the route a proxyless server matches the path to: the first
// of the port's routes, then the default.
func routeOf(in mesh.Inbound, path string) string {
	for _, r := range in.Routes {
		if (r.Path != "" && r.Path == path) || (r.Prefix != "" && strings.HasPrefix(path, r.Prefix)) {
			return r.Name
		}
	}
	return "inbound_" + in.Name + "_default"
}

func id(s string) spiffeid.ID { return spiffeid.RequireFromString(s) }

// baseCallers are in every set's requests: workloads of both namespaces,
// callers of other namespaces, an ID without the namespace form, one with
// a segment more, and one of another trust domain.
var baseCallers = []spiffeid.ID{
	id("spiffe://prod.example/ns/ns-0/sa/svc-3"),
	id("spiffe://prod.example/ns/ns-0/sa/svc-7"),
	id("spiffe://prod.example/ns/ns-1/sa/svc-11"),
	id("spiffe://prod.example/ns/ops/sa/admin"),
	id("spiffe://prod.example/ns/ops/sa/intern"),
	id("spiffe://prod.example/legacy/batch"),
	id("spiffe://prod.example/ns/ns-0/sa/svc-3/extra"),
	id("spiffe://other.example/ns/ns-0/sa/svc-3"),
	id("spiffe://old.example/ns/ns-0/sa/svc-7"),
	id("spiffe://cluster.local/ns/ns-0/sa/svc-3"),
	id("spiffe://prod.example/ns/ns/ns-1/sa/svc-11"),
}

var basePaths = []string{
	"/api/v1/svc-0/items/42", "/api/v1/svc-0/status", "/API/V1/svc-0/items/42", "/helloworld.Greeter/SayHello",
	"/helloworld.Greeter/Admin", "/admin.Console/Reset", "/grpc.health.v1.Health/Check", "/api/v1/svc-1/orders/a/b",
}

var baseHeaders = [][][2]string{
	nil,
	{{"x-tenant", "shared"}},
	{{"x-tenant", "tenant-3"}},
	{{"x-tenant", "evil"}, {"x-tenant", " shared "}},
	{{"x-debug-override", "1"}},
	{{"x-tenant", ""}},
	// Readings of a duplicated header: the joined value matches an ALLOW
	// that one element does not; elements are trimmed (gRPC metadata is
	// printable ASCII: of what the engine trims, only spaces get here).
	{{"x-tenant", "tenant-3"}, {"x-tenant", "other"}},
	{{"x-tenant", "tenant-3"}, {"x-tenant", " tenant-4 "}},
	{{"x-tenant", "shared, shared"}},
	{{"x-tenant", "tenant-3,"}},
	{{"x-tenant", "tenant-3, ,tenant-4"}},
}

// interesting gathers from set the values its rules name — callers, paths,
// header names and values — instantiated as requests would carry them, so
// that requests meet the rules often.
func interesting(set *policies.Set) (callers []spiffeid.ID, paths []string, headers [][2]string) {
	addPath := func(v string) {
		switch {
		case v == "*":
			return
		case strings.Contains(v, "{"):
			v = strings.ReplaceAll(strings.ReplaceAll(v, "{**}", "x/y"), "{*}", "x")
		case strings.HasSuffix(v, "*"):
			v = strings.TrimSuffix(v, "*") + "Get"
		case strings.HasPrefix(v, "*"):
			v = "/pkg.Svc" + v[1:]
		}
		if strings.Count(v, "/") < 2 {
			// gRPC paths are /service/method: a server never sees
			// another; a prefix is extended into one.
			v += "/M"
		}
		if strings.HasPrefix(v, "/") && !strings.HasSuffix(v, "/") {
			paths = append(paths, v, strings.ToUpper(v))
		}
	}
	addCaller := func(v string) {
		v = strings.TrimPrefix(v, "spiffe://")
		v = strings.ReplaceAll(v, "**", "x/y")
		v = strings.ReplaceAll(v, "*", "x")
		if c, err := spiffeid.FromString("spiffe://" + v); err == nil {
			callers = append(callers, c)
		}
	}
	addHeader := func(key string, vals []string) {
		if !strings.HasPrefix(key, "request.headers[") {
			return
		}
		name := strings.ToLower(strings.TrimSuffix(strings.TrimPrefix(key, "request.headers["), "]"))
		for _, v := range vals {
			v = strings.Trim(v, "*")
			if v == "" {
				v = "v"
			}
			headers = append(headers, [2]string{name, v})
		}
	}
	for _, p := range set.AuthorizationPolicies {
		for _, r := range p.Spec.Rules {
			for _, fr := range r.From {
				for _, v := range fr.Source.Principals {
					addCaller(v)
				}
				for _, v := range fr.Source.NotPrincipals {
					addCaller(v)
				}
			}
			for _, to := range r.To {
				for _, v := range to.Operation.Paths {
					addPath(v)
				}
				for _, v := range to.Operation.NotPaths {
					addPath(v)
				}
			}
			for _, c := range r.When {
				addHeader(c.Key, append(append([]string(nil), c.Values...), c.NotValues...))
			}
		}
	}
	identity := func(rules []policies.IdentityRule) {
		for _, r := range rules {
			for _, fr := range r.From {
				for _, v := range append(append([]string(nil), fr.IDs...), fr.NotIDs...) {
					addCaller(strings.TrimPrefix(v, "spiffe://"))
				}
			}
			for _, to := range r.To {
				for _, v := range to.Paths {
					addPath(v)
				}
			}
			for _, c := range r.When {
				addHeader(c.Key, c.Values)
			}
		}
	}
	for _, p := range set.IdentityPolicies {
		identity(p.Spec.Rules)
	}
	for _, p := range set.RouteOverrides {
		identity(p.Spec.Rules)
	}
	for _, q := range set.Quarantines {
		addCaller(q.Spec.Identity)
	}
	return callers, paths, headers
}

// requests builds n random requests per workload for set, or, with n 0,
// every caller against every path (headers in turn).
func requests(rng *rand.Rand, set *policies.Set, m *mesh.Mesh, n int) map[string][]request {
	callers, paths, hdrs := interesting(set)
	callers = append(slices.Clone(baseCallers), callers...)
	for _, w := range m.Workloads {
		callers = append(callers, w.ID)
	}
	paths = append(slices.Clone(basePaths), paths...)
	headerSets := slices.Clone(baseHeaders)
	for i, h := range hdrs {
		headerSets = append(headerSets, [][2]string{h})
		if i > 0 {
			headerSets = append(headerSets, [][2]string{hdrs[i-1], h}, [][2]string{{h[0], "junk"}, h})
		}
	}
	out := map[string][]request{}
	for _, w := range m.Workloads {
		if n == 0 {
			k := 0
			for _, c := range callers {
				for _, p := range paths {
					out[w.Key] = append(out[w.Key], request{caller: c, path: p, headers: headerSets[k%len(headerSets)]})
					k++
				}
			}
			continue
		}
		for range n {
			out[w.Key] = append(out[w.Key], request{
				caller:  callers[rng.Intn(len(callers))],
				path:    paths[rng.Intn(len(paths))],
				headers: headerSets[rng.Intn(len(headerSets))],
			})
		}
	}
	return out
}

func setFromYAML(t *testing.T, docs string) policies.Set {
	t.Helper()
	var set policies.Set
	for _, doc := range strings.Split(docs, "\n---\n") {
		var kind struct {
			Kind string `json:"kind"`
		}
		if err := yaml.Unmarshal([]byte(doc), &kind); err != nil {
			t.Fatal(err)
		}
		var err error
		switch kind.Kind {
		case policies.KindAuthorizationPolicy:
			var p policies.AuthorizationPolicy
			err = yaml.UnmarshalStrict([]byte(doc), &p)
			set.AuthorizationPolicies = append(set.AuthorizationPolicies, p)
		case policies.KindIdentityPolicy:
			var p policies.IdentityPolicy
			err = yaml.UnmarshalStrict([]byte(doc), &p)
			set.IdentityPolicies = append(set.IdentityPolicies, p)
		case policies.KindDefaultDeny:
			var p policies.DefaultDeny
			err = yaml.UnmarshalStrict([]byte(doc), &p)
			set.DefaultDenies = append(set.DefaultDenies, p)
		case policies.KindRouteOverride:
			var p policies.RouteOverride
			err = yaml.UnmarshalStrict([]byte(doc), &p)
			set.RouteOverrides = append(set.RouteOverrides, p)
		case policies.KindMeshSettings:
			var p policies.MeshSettings
			err = yaml.UnmarshalStrict([]byte(doc), &p)
			set.Settings = p.Spec
		case policies.KindRequestAuthentication:
			var p policies.RequestAuthentication
			err = yaml.UnmarshalStrict([]byte(doc), &p)
			set.RequestAuthentications = append(set.RequestAuthentications, p)
		case policies.KindQuarantine:
			var p policies.Quarantine
			err = yaml.UnmarshalStrict([]byte(doc), &p)
			set.Quarantines = append(set.Quarantines, p)
		default:
			t.Fatalf("kind %q", kind.Kind)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	return set
}
