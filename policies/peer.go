package policies

import (
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Istio's peer fields (principals, namespaces, serviceAccounts, trustDomains,
// their not forms and the source.* conditions) match the mTLS peer only,
// and each has two readings of a SPIFFE ID:
//
//   - Istio's, as its translation to Envoy RBAC matches the peer's URI SAN
//     (pilot/pkg/security/authz/model): a namespace is ".*/ns/<ns>/.*"
//     anywhere in the ID, a service account
//     "spiffe://.+/ns/<ns>/(.+/|)sa/<sa>(/.+)?", and a principal's trust
//     domain is rewritten to the mesh's trust domain and its aliases when
//     the principal has exactly five parts;
//   - meshguard's: the Kubernetes form /ns/<ns>/sa/<sa> read by position,
//     and "cluster.local" (or any of the mesh's trust domains) in a policy
//     meaning every trust domain of the mesh, never a foreign one that
//     happens to share the name.
//
// As everywhere in the engine, a deny-side rule matches when either reading
// does, an allow-side rule only when both do.

// DefaultTrustDomain is Istio's default trust domain, and the name a policy
// uses for the mesh's own trust domain, whatever it is.
const DefaultTrustDomain = "cluster.local"

// peerView is what matching reads of the peer, computed once per decision
// (the Kubernetes reading on first use).
type peerView struct {
	id        spiffeid.ID
	uri       string // spiffe://td/path, as Envoy sees the URI SAN
	principal string // td/path: Istio's principal form
	td        string
	path      string
	local     bool // td is one of the mesh's trust domains

	kubeDone bool
	kubeOK   bool
	ns, sa   string // the Kubernetes reading, when kubeOK
}

func (p *peerView) init(id spiffeid.ID, local []string) {
	*p = peerView{id: id}
	if id.IsZero() {
		return
	}
	p.uri = id.String()
	p.principal = p.uri[len("spiffe://"):]
	p.td = id.TrustDomain().Name()
	p.path = p.principal[len(p.td):]
	p.local = containsString(local, p.td)
}

func (p *peerView) present() bool { return p.uri != "" }

// kube is the Kubernetes reading: namespace and service account of
// /ns/<ns>/sa/<sa> exactly.
func (p *peerView) kube() (ns, sa string, ok bool) {
	if !p.kubeDone {
		p.ns, p.sa, p.kubeOK = kubeIdentity(p.path)
		p.kubeDone = true
	}
	return p.ns, p.sa, p.kubeOK
}

// kubeIdentity reads a path of exactly /ns/<namespace>/sa/<serviceaccount>,
// each segment non-empty. Anything else has no namespace:
// "/ns/evil/sa/x/ns/foo/y" is not in foo by this reading.
func kubeIdentity(p string) (ns, sa string, ok bool) {
	if len(p) < len("/ns/x/sa/y") || p[:len("/ns/")] != "/ns/" {
		return "", "", false
	}
	i := len("/ns/")
	for i < len(p) && p[i] != '/' {
		i++
	}
	ns, rest := p[len("/ns/"):i], p[i:]
	if ns == "" || len(rest) < len("/sa/y") || rest[:len("/sa/")] != "/sa/" {
		return "", "", false
	}
	sa = rest[len("/sa/"):]
	if strings.IndexByte(sa, '/') >= 0 {
		return "", "", false
	}
	return ns, sa, true
}

// ----- principals -----

// principalMatcher is one Istio principal value ("td/ns/x/sa/y", with
// Istio's prefix and suffix wildcards).
type principalMatcher struct {
	m strMatcher // the value as written, against td/path
	// local: the value's trust domain names the mesh (cluster.local, or one
	// of the mesh's, or a "*suffix" wildcard that matches one of them); rest
	// then matches the peer's path when the peer's trust domain is the
	// mesh's.
	local bool
	rest  strMatcher
	// rewritten: Istio rewrites this value's trust domain to each of the
	// mesh's (it has exactly five '/'-separated parts), so that reading is
	// the only one of it.
	rewritten bool
	// wildTD: the trust domain is a "*suffix" wildcard that Istio, for a
	// five-part value, rewrites to the mesh's trust domains besides keeping
	// it as written; meshguard reads it as written only.
	wildTD bool
}

type principalSet []principalMatcher

func newPrincipalMatcher(v string, local []string) principalMatcher {
	pm := principalMatcher{m: newStrMatcher(v, false)}
	td, _, ok := strings.Cut(v, "/")
	if !ok {
		return pm // the trust domain is not named
	}
	five := strings.Count(v, "/") == 4
	switch {
	case strings.HasPrefix(td, "*"):
		// Istio's trustdomain.Bundle: a wildcard trust domain that matches
		// one of the mesh's is rewritten too (pilot/pkg/security/trustdomain).
		if !five || td == "*" || !slices.ContainsFunc(local, func(l string) bool { return strings.HasSuffix(l, td[1:]) }) {
			return pm
		}
		pm.local, pm.wildTD = true, true
	case td == DefaultTrustDomain || containsString(local, td):
		pm.local, pm.rewritten = true, five
	default:
		return pm
	}
	pm.rest = newStrMatcher(v[len(td):], false)
	return pm
}

// match: a deny-side rule takes either reading, an allow-side rule both.
func (m *principalMatcher) match(p *peerView, deny bool) bool {
	if !m.local {
		if m.m.kind == strExact {
			return p.principal == m.m.v
		}
		return m.m.match(p.principal)
	}
	if m.wildTD {
		// Istio: as written, or rewritten to each of the mesh's trust
		// domains; meshguard: as written.
		return m.m.match(p.principal) || (deny && p.local && m.rest.match(p.path))
	}
	loc := p.local && m.rest.match(p.path)
	if m.rewritten {
		return loc
	}
	lit := m.m.match(p.principal)
	if deny {
		return lit || loc
	}
	return lit && loc
}

func (s principalSet) match(p *peerView, deny bool) bool {
	for i := range s {
		if s[i].match(p, deny) {
			return true
		}
	}
	return false
}

// keys are the principals an exact set can match, for the rule index.
func (s principalSet) keys(local []string) ([]string, bool) {
	var out []string
	for i := range s {
		m := &s[i]
		if m.m.kind != strExact {
			return nil, false
		}
		out = append(out, m.m.v)
		if m.local {
			for _, td := range local {
				out = append(out, td+m.rest.v)
			}
		}
	}
	return out, len(out) > 0
}

// ----- trust domains -----

type tdKind uint8

const (
	tdLiteral      tdKind = iota // a foreign trust domain, or a wildcard
	tdMesh                       // one of the mesh's: means all of them
	tdClusterLocal               // cluster.local, which is not the mesh's
)

// tdMatcher is one trustDomains value (or source.trustDomain value).
type tdMatcher struct {
	m    strMatcher
	kind tdKind
}

type tdSet []tdMatcher

func newTDMatcher(v string, local []string) tdMatcher {
	m := tdMatcher{m: newStrMatcher(v, false)}
	switch {
	case containsString(local, v):
		m.kind = tdMesh
	case v == DefaultTrustDomain:
		m.kind = tdClusterLocal
	}
	return m
}

// match: Istio expands a mesh trust domain to all of them and reads
// cluster.local literally when it is not the mesh's; meshguard reads
// cluster.local as the mesh's. An allow-side rule needs both readings, so
// a foreign cluster.local never matches it; a deny-side rule takes either.
func (m *tdMatcher) match(p *peerView, deny bool) bool {
	switch m.kind {
	case tdMesh:
		return p.local
	case tdClusterLocal:
		return deny && (p.local || p.td == DefaultTrustDomain)
	}
	return m.m.match(p.td)
}

func (s tdSet) match(p *peerView, deny bool) bool {
	for i := range s {
		if s[i].match(p, deny) {
			return true
		}
	}
	return false
}

// ----- namespaces -----

// nsSet is a namespaces (or source.namespace) list. Allow side: the
// Kubernetes reading's namespace is in it (which implies Istio's reading).
// Deny side: Istio's reading, "/ns/<value>/" anywhere in the ID.
type nsSet strSet

func (s nsSet) match(p *peerView, deny bool) bool {
	if deny {
		for i := range s {
			if istioNamespace(p.uri, &s[i]) {
				return true
			}
		}
		return false
	}
	ns, _, ok := p.kube()
	return ok && strSet(s).match(ns)
}

// istioNamespace is Istio's regular expression ".*/ns/<value>/.*", where a
// '*' of the value is ".*", without a regular expression engine: "/ns/"
// followed by the value and a '/', or by the prefix of a "prefix*" value
// and later a '/', or by the suffix of a "*suffix" value and '/' later.
func istioNamespace(uri string, m *strMatcher) bool {
	i := strings.Index(uri, "/ns/")
	if i < 0 {
		return false
	}
	switch m.kind {
	case strExact:
		for i >= 0 {
			rest := uri[i+len("/ns/"):]
			if len(rest) > len(m.v) && rest[:len(m.v)] == m.v && rest[len(m.v)] == '/' {
				return true
			}
			// The next "/ns/" may overlap this one ("/ns/ns/<value>/").
			j := strings.Index(uri[i+1:], "/ns/")
			if j < 0 {
				return false
			}
			i += 1 + j
		}
		return false
	case strPrefix:
		// The leftmost "/ns/<prefix>" leaves the most room for a '/'.
		for i >= 0 {
			rest := uri[i+len("/ns/"):]
			if strings.HasPrefix(rest, m.v) {
				return strings.IndexByte(rest[len(m.v):], '/') >= 0
			}
			j := strings.Index(uri[i+1:], "/ns/")
			if j < 0 {
				return false
			}
			i += 1 + j
		}
		return false
	case strSuffix:
		rest := uri[i+len("/ns/"):]
		for {
			j := strings.Index(rest, m.v)
			if j < 0 {
				return false
			}
			if k := j + len(m.v); k < len(rest) && rest[k] == '/' {
				return true
			}
			rest = rest[j+1:]
		}
	}
	return strings.IndexByte(uri[i+len("/ns/"):], '/') >= 0 // "*"
}

// ----- service accounts -----

// saMatcher is one serviceAccounts value: "namespace/name", or "name" in
// the policy's namespace. No wildcards (as Istio).
type saMatcher struct{ ns, sa string }

type saSet []saMatcher

// match: allow side, the Kubernetes reading; deny side, Istio's regular
// expression.
func (s saSet) match(p *peerView, deny bool) bool {
	if deny {
		for i := range s {
			if istioServiceAccount(p.uri, s[i].ns, s[i].sa) {
				return true
			}
		}
		return false
	}
	ns, sa, ok := p.kube()
	if !ok {
		return false
	}
	for i := range s {
		if s[i].ns == ns && s[i].sa == sa {
			return true
		}
	}
	return false
}

// istioServiceAccount is Istio's "spiffe://.+/ns/<ns>/(.+/|)sa/<sa>(/.+)?"
// over the whole ID: after the scheme and at least one byte, "/ns/<ns>/",
// then "sa/<sa>" at a segment start (right away, or after at least one more
// byte and a '/'), then nothing or '/' and at least one byte.
func istioServiceAccount(uri, ns, sa string) bool {
	const scheme = "spiffe://"
	if len(uri) <= len(scheme) || uri[:len(scheme)] != scheme {
		return false
	}
	// The last place "sa/<sa>" may start: any later start needs a '/' that
	// a valid end excludes.
	last := -1
	for k := len(scheme) + 1; k+3+len(sa) <= len(uri); k++ {
		if uri[k-1] != '/' || uri[k:k+3] != "sa/" || uri[k+3:k+3+len(sa)] != sa {
			continue
		}
		if end := uri[k+3+len(sa):]; end == "" || (end[0] == '/' && len(end) > 1) {
			last = k
		}
	}
	if last < 0 {
		return false
	}
	// Any "/ns/<ns>/" after the first byte of the trust domain that ends at
	// j with last == j or last >= j+2.
	for i := len(scheme) + 1; i+len("/ns/")+len(ns)+1 <= len(uri); i++ {
		if uri[i:i+len("/ns/")] != "/ns/" || uri[i+len("/ns/"):i+len("/ns/")+len(ns)] != ns || uri[i+len("/ns/")+len(ns)] != '/' {
			continue
		}
		j := i + len("/ns/") + len(ns) + 1
		if last == j || last >= j+2 {
			return true
		}
	}
	return false
}
