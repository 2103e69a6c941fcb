// Package mesh reads the mesh description of a plain-Envoy fleet: which
// workloads exist, their SPIFFE IDs, the ports they serve, their routes and
// the upstreams they call, and where the authz server, the control plane, the
// SPIRE agent and the wasm module are. The control plane turns it, together
// with the policy bundle, into Envoy configuration.
//
// Files are decoded strictly (unknown fields are errors) into wire structs,
// then validated into the unexported-by-convention form that the xDS
// generator uses; every problem is reported at once.
package mesh

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"sigs.k8s.io/yaml"
)

// APIVersion and Kind of a mesh description file.
const (
	APIVersion = "meshguard.dev/v1alpha1"
	Kind       = "Mesh"
)

// maxFileSize bounds the size of a mesh description.
const maxFileSize = 16 << 20

// File is a mesh description as written.
type File struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Metadata   Metadata `json:"metadata"`
	Spec       Spec     `json:"spec"`
}

// Metadata names the mesh.
type Metadata struct {
	Name string `json:"name"`
}

// Spec is the mesh.
type Spec struct {
	// TrustDomain of the mesh's SPIFFE IDs.
	TrustDomain  string       `json:"trustDomain"`
	Authz        Endpoint     `json:"authz"`
	ControlPlane Endpoint     `json:"controlPlane"`
	SPIRE        SPIRE        `json:"spire,omitempty"`
	Wasm         Wasm         `json:"wasm"`
	Workloads    []Workload   `json:"workloads"`
	Defaults     HTTPDefaults `json:"defaults,omitempty"`
}

// Endpoint is a service Envoy reaches over mTLS.
type Endpoint struct {
	Address  string `json:"address"`
	Port     uint32 `json:"port"`
	SPIFFEID string `json:"spiffeID"`
	// Timeout of a call (Go duration); authz default 250ms, control plane 1s.
	Timeout string `json:"timeout,omitempty"`
}

// SPIRE is where the SPIRE agent's SDS API is.
type SPIRE struct {
	// SocketPath of the agent's Workload API (which serves SDS): where the
	// bootstrap's static spire_agent cluster points. The control plane
	// does not send that cluster (Envoy takes SDS only from a statically
	// defined cluster); it is checked and recorded here for the bootstrap.
	SocketPath string `json:"socketPath,omitempty"`
	// BundleSecret names the trust bundle secret; default the trust domain
	// ID (spiffe://td). SPIRE also serves "ROOTCA".
	BundleSecret string `json:"bundleSecret,omitempty"`
}

// Wasm is where Envoy loads the meshguard filter from: a local file or a
// remote URL with its sha256.
type Wasm struct {
	File   string `json:"file,omitempty"`
	URL    string `json:"url,omitempty"`
	SHA256 string `json:"sha256,omitempty"`
	// RequireMTLS makes the filter deny requests that did not arrive over mTLS.
	RequireMTLS bool `json:"requireMtls,omitempty"`
}

// HTTPDefaults tune generated listeners.
type HTTPDefaults struct {
	// PathNormalization: normalize_path and merge_slashes on (default true).
	PathNormalization *bool `json:"pathNormalization,omitempty"`
}

// Workload is one kind of Envoy-fronted service; every Envoy node whose
// node.cluster (or node.id) is "<name>.<namespace>" serves it. Several
// workloads of one namespace may share a SPIFFE ID (two Deployments of one
// service account, say catalog-v1 and catalog-v2) and differ in labels.
type Workload struct {
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
	SPIFFEID  string `json:"spiffeID"`
	// Labels are all the workload's labels (Istio selectors match them).
	// The control plane sends them with every route, so that the authz
	// server and the filter know them; nothing else may add to them.
	Labels map[string]string `json:"labels,omitempty"`
	// Service is the service name callers address (default Name).
	Service string `json:"service,omitempty"`
	// Proxyless marks a gRPC workload that consumes xDS itself (grpc-go);
	// it gets RBAC listeners instead of Envoy listeners.
	Proxyless bool `json:"proxyless,omitempty"`
	// DisableWasm leaves the meshguard wasm filter out of the node's
	// inbound listeners: ext_authz alone enforces (for proxies without a
	// wasm runtime). Envoy nodes only.
	DisableWasm bool       `json:"disableWasm,omitempty"`
	Inbound     []Inbound  `json:"inbound"`
	Upstreams   []Upstream `json:"upstreams,omitempty"`
}

// Inbound is a port the workload's proxy listens on for mesh traffic.
type Inbound struct {
	Name string `json:"name"`
	Port uint32 `json:"port"`
	// AppPort is where the application listens on loopback (Envoy nodes).
	AppPort uint32 `json:"appPort,omitempty"`
	// Address the proxyless server listens on (grpc nodes; default 0.0.0.0).
	Address string  `json:"address,omitempty"`
	Routes  []Route `json:"routes,omitempty"`
}

// Route is one Envoy route of an inbound port.
type Route struct {
	Name   string `json:"name"`
	Prefix string `json:"prefix,omitempty"`
	Path   string `json:"path,omitempty"`
	// Upstream names an upstream of the workload to send to instead of the
	// local application.
	Upstream string `json:"upstream,omitempty"`
	// DisableExtAuthz skips the ext_authz call on this route (the wasm
	// filter still enforces). A RouteOverride policy can also set it.
	DisableExtAuthz bool `json:"disableExtAuthz,omitempty"`
}

// Upstream is a service the workload calls through its proxy.
type Upstream struct {
	Name     string `json:"name"`
	Address  string `json:"address"`
	Port     uint32 `json:"port"`
	SPIFFEID string `json:"spiffeID"`
	// ListenPort is the loopback port the application sends plain HTTP to.
	ListenPort uint32 `json:"listenPort"`
	// Service and Namespace name the destination as baselines and
	// detections do (the filter on the workload's outbound side reports
	// and checks edges to it). Default: the service and namespace of the
	// mesh's workloads with the upstream's SPIFFE ID when they agree, else
	// the address read as a Kubernetes service host (<svc>.<ns>.svc…), else
	// the address.
	Service   string `json:"service,omitempty"`
	Namespace string `json:"namespace,omitempty"`
}

// Mesh is a validated mesh description.
type Mesh struct {
	Name          string
	TrustDomain   spiffeid.TrustDomain
	Authz         Service
	ControlPlane  Service
	SPIRESocket   string
	BundleSecret  string
	Wasm          Wasm
	NormalizePath bool
	// Workloads sorted by key.
	Workloads []*ValidWorkload
	byKey     map[string]*ValidWorkload
}

// Service is a validated Endpoint.
type Service struct {
	Address string
	Port    uint32
	ID      spiffeid.ID
	Timeout time.Duration
}

// ValidWorkload is a validated Workload. Its identities are spiffeid.IDs,
// parsed once here.
type ValidWorkload struct {
	Key       string // name.namespace
	Name      string
	Namespace string
	ID        spiffeid.ID
	Labels    map[string]string
	// Service callers address (the workload's name unless set).
	Service     string
	Proxyless   bool
	DisableWasm bool
	Inbound     []Inbound
	Upstreams   []ValidUpstream
}

// ValidUpstream is a validated Upstream.
type ValidUpstream struct {
	Name       string
	Address    string
	Port       uint32
	ID         spiffeid.ID
	ListenPort uint32
	// Service and Namespace as the upstream names them (Upstream says how
	// they default).
	Service   string
	Namespace string
}

// Lookup returns the workload an xDS node serves: by node.cluster, then by
// node.id, both compared to "<name>.<namespace>".
func (m *Mesh) Lookup(nodeCluster, nodeID string) (*ValidWorkload, bool) {
	if w, ok := m.byKey[nodeCluster]; ok && nodeCluster != "" {
		return w, true
	}
	w, ok := m.byKey[nodeID]
	return w, ok
}

// DefaultSPIRESocket is the SPIRE agent socket Envoy-SPIRE deployments use.
const DefaultSPIRESocket = "/run/spire/sockets/agent.sock"

// Load reads and validates a mesh description file.
func Load(path string) (*Mesh, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("mesh: %w", err)
	}
	if fi.Size() > maxFileSize {
		return nil, fmt.Errorf("mesh: %s is larger than %d bytes", path, maxFileSize)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("mesh: %w", err)
	}
	m, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("mesh: %s: %w", path, err)
	}
	return m, nil
}

// Parse decodes strictly and validates.
func Parse(data []byte) (*Mesh, error) {
	if len(data) > maxFileSize {
		return nil, fmt.Errorf("mesh description larger than %d bytes", maxFileSize)
	}
	var f File
	if err := yaml.UnmarshalStrict(data, &f); err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	return f.Validate()
}

var (
	dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	// routeName: Envoy route names end up in context extensions and metric
	// labels of the filter; keep them tame.
	routeName = regexp.MustCompile(`^[A-Za-z0-9]([-A-Za-z0-9_.]{0,126}[A-Za-z0-9])?$`)
	sha256Hex = regexp.MustCompile(`^[0-9a-f]{64}$`)
	hostname  = regexp.MustCompile(`^[A-Za-z0-9]([-A-Za-z0-9.]{0,251}[A-Za-z0-9])?$`)
)

// Validate checks every field and returns every problem at once.
func (f *File) Validate() (*Mesh, error) {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
	}
	if f.APIVersion != APIVersion {
		bad("apiVersion", "got %q, want %q", f.APIVersion, APIVersion)
	}
	if f.Kind != Kind {
		bad("kind", "got %q, want %q", f.Kind, Kind)
	}
	m := &Mesh{Name: f.Metadata.Name, byKey: map[string]*ValidWorkload{}, NormalizePath: true}
	if f.Metadata.Name == "" {
		bad("metadata.name", "required")
	}
	td, err := spiffeid.TrustDomainFromString(f.Spec.TrustDomain)
	if err != nil || f.Spec.TrustDomain == "" || strings.Contains(f.Spec.TrustDomain, "/") {
		bad("spec.trustDomain", "%q is not a trust domain name", f.Spec.TrustDomain)
	}
	m.TrustDomain = td
	m.Authz = validService("spec.authz", f.Spec.Authz, 250*time.Millisecond, bad)
	m.ControlPlane = validService("spec.controlPlane", f.Spec.ControlPlane, time.Second, bad)
	m.SPIRESocket = f.Spec.SPIRE.SocketPath
	if m.SPIRESocket == "" {
		m.SPIRESocket = DefaultSPIRESocket
	} else if !strings.HasPrefix(m.SPIRESocket, "/") {
		bad("spec.spire.socketPath", "must be an absolute path")
	}
	m.BundleSecret = f.Spec.SPIRE.BundleSecret
	if m.BundleSecret == "" && !td.IsZero() {
		m.BundleSecret = td.IDString()
	}
	m.Wasm = f.Spec.Wasm
	switch {
	case f.Spec.Wasm.File != "" && f.Spec.Wasm.URL != "":
		bad("spec.wasm", "set file or url, not both")
	case f.Spec.Wasm.File != "":
		if !strings.HasPrefix(f.Spec.Wasm.File, "/") {
			bad("spec.wasm.file", "must be an absolute path")
		}
	case f.Spec.Wasm.URL != "":
		u, err := url.Parse(f.Spec.Wasm.URL)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			bad("spec.wasm.url", "%q is not an http(s) URL", f.Spec.Wasm.URL)
		}
		if !sha256Hex.MatchString(f.Spec.Wasm.SHA256) {
			bad("spec.wasm.sha256", "a remote module needs its lowercase hex sha256")
		}
	default:
		bad("spec.wasm", "set file or url")
	}
	if f.Spec.Defaults.PathNormalization != nil {
		m.NormalizePath = *f.Spec.Defaults.PathNormalization
	}
	if len(f.Spec.Workloads) == 0 {
		bad("spec.workloads", "at least one workload is required")
	}
	ids := map[spiffeid.ID]*ValidWorkload{}
	for i := range f.Spec.Workloads {
		w := f.Spec.Workloads[i]
		field := fmt.Sprintf("spec.workloads[%d]", i)
		vw := &ValidWorkload{
			Key: w.Name + "." + w.Namespace, Name: w.Name, Namespace: w.Namespace,
			Labels: w.Labels, Service: w.Service, Proxyless: w.Proxyless, DisableWasm: w.DisableWasm, Inbound: w.Inbound,
		}
		if !dnsLabel.MatchString(w.Name) || len(w.Name) > 63 {
			bad(field+".name", "%q is not a DNS label", w.Name)
		}
		if !dnsLabel.MatchString(w.Namespace) || len(w.Namespace) > 63 {
			bad(field+".namespace", "%q is not a DNS label", w.Namespace)
		}
		if vw.Service == "" {
			vw.Service = w.Name
		} else if !dnsLabel.MatchString(vw.Service) {
			bad(field+".service", "%q is not a DNS label", w.Service)
		}
		id, err := spiffeid.FromString(w.SPIFFEID)
		switch {
		case err != nil:
			bad(field+".spiffeID", "%q: %v", w.SPIFFEID, err)
		case id.TrustDomain() != td:
			bad(field+".spiffeID", "%q is not in trust domain %q", w.SPIFFEID, f.Spec.TrustDomain)
		default:
			// One identity serves in one namespace: policies scope by it.
			if other, dup := ids[id]; dup && other.Namespace != w.Namespace {
				bad(field+".spiffeID", "%s is also the ID of workload %s in another namespace", id, other.Key)
			}
			ids[id] = vw
		}
		vw.ID = id
		if _, dup := m.byKey[vw.Key]; dup {
			bad(field, "workload %s is defined twice", vw.Key)
		}
		for k, v := range w.Labels {
			if k == "" || len(k) > 317 || len(v) > 63 {
				bad(field+".labels", "label %q=%q is not a Kubernetes label", k, v)
			}
		}
		upstreams := map[string]bool{}
		ports := map[uint32]string{}
		usePort := func(f string, p uint32) {
			if p == 0 || p > 65535 {
				bad(f, "port %d out of range", p)
				return
			}
			if other, dup := ports[p]; dup {
				bad(f, "port %d is also used by %s", p, other)
			}
			ports[p] = f
		}
		for j, u := range w.Upstreams {
			uf := fmt.Sprintf("%s.upstreams[%d]", field, j)
			if !dnsLabel.MatchString(u.Name) {
				bad(uf+".name", "%q is not a DNS label", u.Name)
			}
			if upstreams[u.Name] {
				bad(uf+".name", "upstream %q is defined twice", u.Name)
			}
			upstreams[u.Name] = true
			if !validHost(u.Address) {
				bad(uf+".address", "%q is not a host name or IP address", u.Address)
			}
			if u.Port == 0 || u.Port > 65535 {
				bad(uf+".port", "port %d out of range", u.Port)
			}
			uid, err := spiffeid.FromString(u.SPIFFEID)
			if err != nil {
				bad(uf+".spiffeID", "%q: %v", u.SPIFFEID, err)
			} else if uid.TrustDomain() != td {
				bad(uf+".spiffeID", "%q is not in trust domain %q", u.SPIFFEID, f.Spec.TrustDomain)
			}
			vw.Upstreams = append(vw.Upstreams, ValidUpstream{
				Name: u.Name, Address: u.Address, Port: u.Port, ID: uid, ListenPort: u.ListenPort,
				Service: u.Service, Namespace: u.Namespace,
			})
			if !w.Proxyless {
				usePort(uf+".listenPort", u.ListenPort)
			}
			if u.Service != "" && !dnsLabel.MatchString(u.Service) {
				bad(uf+".service", "%q is not a DNS label", u.Service)
			}
			if u.Namespace != "" && !dnsLabel.MatchString(u.Namespace) {
				bad(uf+".namespace", "%q is not a DNS label", u.Namespace)
			}
		}
		if w.Proxyless && w.DisableWasm {
			bad(field+".disableWasm", "a proxyless workload has no Envoy filters")
		}
		if len(w.Inbound) == 0 {
			bad(field+".inbound", "at least one inbound port is required")
		}
		inNames := map[string]bool{}
		routeNames := map[string]bool{}
		for j, in := range w.Inbound {
			inf := fmt.Sprintf("%s.inbound[%d]", field, j)
			if !dnsLabel.MatchString(in.Name) {
				bad(inf+".name", "%q is not a DNS label", in.Name)
			}
			if inNames[in.Name] {
				bad(inf+".name", "inbound %q is defined twice", in.Name)
			}
			inNames[in.Name] = true
			usePort(inf+".port", in.Port)
			if w.Proxyless {
				if in.AppPort != 0 {
					bad(inf+".appPort", "a proxyless workload has no separate application port")
				}
				if in.Address != "" && net.ParseIP(in.Address) == nil {
					bad(inf+".address", "%q is not an IP address", in.Address)
				}
			} else {
				if in.Address != "" {
					bad(inf+".address", "only proxyless workloads set an address")
				}
				usePort(inf+".appPort", in.AppPort)
				if len(in.Routes) == 0 {
					bad(inf+".routes", "at least one route is required")
				}
			}
			for k, r := range in.Routes {
				rf := fmt.Sprintf("%s.routes[%d]", inf, k)
				if !routeName.MatchString(r.Name) {
					bad(rf+".name", "%q is not a route name (letters, digits, - _ .; at most 128)", r.Name)
				}
				if routeNames[r.Name] {
					bad(rf+".name", "route %q is defined twice in the workload", r.Name)
				}
				routeNames[r.Name] = true
				switch {
				case (r.Prefix == "") == (r.Path == ""):
					bad(rf, "set exactly one of prefix and path")
				case r.Prefix != "" && !validPath(r.Prefix):
					bad(rf+".prefix", "%q must start with / and hold no control characters", r.Prefix)
				case r.Path != "" && !validPath(r.Path):
					bad(rf+".path", "%q must start with / and hold no control characters", r.Path)
				}
				if r.Upstream != "" && !upstreams[r.Upstream] {
					bad(rf+".upstream", "no upstream named %q", r.Upstream)
				}
				if w.Proxyless && (r.Upstream != "" || r.DisableExtAuthz) {
					bad(rf, "proxyless routes take neither upstream nor disableExtAuthz")
				}
			}
		}
		m.byKey[vw.Key] = vw
		m.Workloads = append(m.Workloads, vw)
	}
	sort.Slice(m.Workloads, func(i, j int) bool { return m.Workloads[i].Key < m.Workloads[j].Key })
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return m, nil
}

func validService(field string, e Endpoint, defTimeout time.Duration, bad func(string, string, ...any)) Service {
	s := Service{Address: e.Address, Port: e.Port, Timeout: defTimeout}
	if !validHost(e.Address) {
		bad(field+".address", "%q is not a host name or IP address", e.Address)
	}
	if e.Port == 0 || e.Port > 65535 {
		bad(field+".port", "port %d out of range", e.Port)
	}
	id, err := spiffeid.FromString(e.SPIFFEID)
	if err != nil {
		bad(field+".spiffeID", "%q: %v", e.SPIFFEID, err)
	}
	s.ID = id
	if e.Timeout != "" {
		d, err := time.ParseDuration(e.Timeout)
		if err != nil || d <= 0 || d > time.Minute {
			bad(field+".timeout", "%q is not a duration between 0 and 1m", e.Timeout)
		} else {
			s.Timeout = d
		}
	}
	return s
}

func validHost(h string) bool {
	if net.ParseIP(h) != nil {
		return true
	}
	return hostname.MatchString(h)
}

func validPath(p string) bool {
	if !strings.HasPrefix(p, "/") || len(p) > 1024 {
		return false
	}
	for _, c := range p {
		if c < 0x21 || c == 0x7f || c == '?' || c == '#' {
			return false
		}
	}
	return true
}
