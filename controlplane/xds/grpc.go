package xds

import (
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbacfilter "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	router "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshguard/meshguard/controlplane/mesh"
	"github.com/meshguard/meshguard/policies"
)

// GRPCListenerTemplate is the server listener resource name template that
// proxyless gRPC servers put in their bootstrap
// (server_listener_resource_name_template).
const GRPCListenerTemplate = "grpc/server?xds.resource.listening_address=%s"

// GRPCCertProvider is the certificate provider instance name that proxyless
// servers define in their bootstrap (a file_watcher plugin fed by the SPIFFE
// helper or the SPIRE agent).
const GRPCCertProvider = "meshguard"

// GRPCListenerName returns the listener resource name of a proxyless server
// listening on addr (host:port).
func GRPCListenerName(addr string) string { return fmt.Sprintf(GRPCListenerTemplate, addr) }

func grpcAddress(in mesh.Inbound) string {
	host := in.Address
	if host == "" {
		host = "0.0.0.0"
	}
	return net.JoinHostPort(host, strconv.FormatUint(uint64(in.Port), 10))
}

// grpcResources are the listeners of a proxyless gRPC server: mTLS through
// the bootstrap's certificate provider, RBAC compiled from the policies, and
// a non-forwarding route.
func (g *Generator) grpcResources(w *mesh.ValidWorkload, eb *EncodedBundle) (map[resource.Type][]types.Resource, error) {
	filters, err := compileRBAC(w, eb.Bundle, eb.patterns)
	if err != nil {
		return nil, err
	}
	rtr, err := marshalAny(&router.Router{})
	if err != nil {
		return nil, err
	}
	var httpFilters []*hcm.HttpFilter
	for i, f := range filters {
		cfg, err := marshalAny(f)
		if err != nil {
			return nil, err
		}
		httpFilters = append(httpFilters, &hcm.HttpFilter{
			Name:       fmt.Sprintf("envoy.filters.http.rbac.meshguard.%d", i),
			ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: cfg},
		})
	}
	httpFilters = append(httpFilters, &hcm.HttpFilter{Name: filterRouter, ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: rtr}})
	tlsCtx, err := marshalAny(&tlsv3.DownstreamTlsContext{
		RequireClientCertificate: wrapperspb.Bool(true),
		CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsCertificateProviderInstance: &tlsv3.CertificateProviderPluginInstance{InstanceName: GRPCCertProvider},
			ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
				CaCertificateProviderInstance: &tlsv3.CertificateProviderPluginInstance{InstanceName: GRPCCertProvider},
			}},
		},
	})
	if err != nil {
		return nil, err
	}
	out := map[resource.Type][]types.Resource{}
	for _, in := range w.Inbound {
		addr := grpcAddress(in)
		mgr, err := marshalAny(&hcm.HttpConnectionManager{
			StatPrefix: inboundName(in),
			RouteSpecifier: &hcm.HttpConnectionManager_RouteConfig{RouteConfig: &route.RouteConfiguration{
				Name: inboundName(in),
				VirtualHosts: []*route.VirtualHost{{
					Name:    inboundName(in),
					Domains: []string{"*"},
					Routes:  grpcRoutes(in),
				}},
			}},
			HttpFilters: httpFilters,
		})
		if err != nil {
			return nil, err
		}
		host, _, _ := net.SplitHostPort(addr)
		out[resource.ListenerType] = append(out[resource.ListenerType], &listener.Listener{
			Name:    GRPCListenerName(addr),
			Address: socketAddress(host, in.Port),
			FilterChains: []*listener.FilterChain{{
				Name:    inboundName(in),
				Filters: []*listener.Filter{{Name: filterHCM, ConfigType: &listener.Filter_TypedConfig{TypedConfig: mgr}}},
				TransportSocket: &core.TransportSocket{
					Name:       transportTLS,
					ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: tlsCtx},
				},
			}},
		})
	}
	return out, nil
}

func grpcRoutes(in mesh.Inbound) []*route.Route {
	var routes []*route.Route
	for _, r := range in.Routes {
		m := &route.RouteMatch{}
		if r.Path != "" {
			m.PathSpecifier = &route.RouteMatch_Path{Path: r.Path}
		} else {
			m.PathSpecifier = &route.RouteMatch_Prefix{Prefix: r.Prefix}
		}
		routes = append(routes, &route.Route{Name: r.Name, Match: m, Action: &route.Route_NonForwardingAction{NonForwardingAction: &route.NonForwardingAction{}}})
	}
	return append(routes, &route.Route{
		Name:   inboundName(in) + "_default",
		Match:  &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
		Action: &route.Route_NonForwardingAction{NonForwardingAction: &route.NonForwardingAction{}},
	})
}

// compileRBAC translates the policies that apply to w into RBAC HTTP filters,
// in evaluation order: quarantine and DENY first, then ALLOW. It follows
// Istio's translation where a rule uses something an RBAC filter cannot check
// (request principals, JWT requirements, route names): such a DENY rule is
// kept without that condition (it denies more), such an ALLOW rule is dropped
// (it allows less). CUSTOM rules cannot consult their provider from a
// proxyless server and deny. AUDIT and dry-run/off rules do not change
// decisions and are left out.
//
// patterns are the bundle's workload patterns compiled once
// (compilePatterns); a pattern missing from it matches nothing.
func compileRBAC(w *mesh.ValidWorkload, b *policies.Bundle, patterns map[string]*regexp.Regexp) ([]*rbacfilter.RBAC, error) {
	c := &rbacCompiler{w: w, set: &b.Set, root: b.Set.Settings.RootNamespace, patterns: patterns}
	if c.root == "" {
		c.root = policies.DefaultRootNamespace
	}
	deny := map[string]*rbacv3.Policy{}
	allow := map[string]*rbacv3.Policy{}
	allowApplies := false

	var quarantined []*rbacv3.Principal
	for _, q := range b.Set.Quarantines {
		quarantined = append(quarantined, principalName(exact(q.Spec.Identity)))
	}
	if len(quarantined) > 0 {
		deny["meshguard/quarantine"] = &rbacv3.Policy{
			Permissions: []*rbacv3.Permission{anyPermission()},
			Principals:  quarantined,
		}
	}
	for i := range b.Set.AuthorizationPolicies {
		p := &b.Set.AuthorizationPolicies[i]
		if !c.istioApplies(p) {
			continue
		}
		name := "AuthorizationPolicy/" + p.Metadata.Namespace + "/" + p.Metadata.Name
		action := strings.ToUpper(p.Spec.Action)
		switch action {
		case "", "ALLOW":
			allowApplies = true
			for j, r := range p.Spec.Rules {
				if pol, ok := c.istioRule(r, false); ok {
					allow[fmt.Sprintf("%s[%d]", name, j)] = pol
				}
			}
		case "DENY", "CUSTOM":
			for j, r := range p.Spec.Rules {
				if pol, ok := c.istioRule(r, true); ok {
					deny[fmt.Sprintf("%s[%d]", name, j)] = pol
				}
			}
			if action == "CUSTOM" && len(p.Spec.Rules) == 0 {
				deny[name] = &rbacv3.Policy{Permissions: []*rbacv3.Permission{anyPermission()}, Principals: []*rbacv3.Principal{anyPrincipal()}}
			}
		}
	}
	for i := range b.Set.IdentityPolicies {
		p := &b.Set.IdentityPolicies[i]
		if !enforced(p.Spec.Mode) || !c.identityApplies(p.Metadata.Namespace, p.Spec.Workloads) {
			continue
		}
		name := "IdentityPolicy/" + p.Metadata.Namespace + "/" + p.Metadata.Name
		action := strings.ToUpper(p.Spec.Action)
		if action == "AUDIT" {
			continue
		}
		isDeny := action == "DENY"
		if !isDeny {
			allowApplies = true
		}
		for j, r := range p.Spec.Rules {
			if !enforced(r.Mode) {
				continue
			}
			ref := r.Name
			if ref == "" {
				ref = strconv.Itoa(j)
			}
			if pol, ok := c.identityRule(r, isDeny); ok {
				if isDeny {
					deny[name+"["+ref+"]"] = pol
				} else {
					allow[name+"["+ref+"]"] = pol
				}
			}
		}
	}
	for i := range b.Set.DefaultDenies {
		d := &b.Set.DefaultDenies[i]
		if enforced(d.Spec.Mode) && c.identityApplies(d.Metadata.Namespace, d.Spec.Workloads) {
			allowApplies = true
		}
	}
	var out []*rbacfilter.RBAC
	if len(deny) > 0 {
		out = append(out, &rbacfilter.RBAC{Rules: &rbacv3.RBAC{Action: rbacv3.RBAC_DENY, Policies: deny}})
	}
	if allowApplies {
		// An ALLOW filter with no policy denies everything: Istio's
		// allow-nothing, and what a DefaultDeny asks for.
		out = append(out, &rbacfilter.RBAC{Rules: &rbacv3.RBAC{Action: rbacv3.RBAC_ALLOW, Policies: allow}})
	}
	return out, nil
}

func enforced(m policies.Mode) bool { return m == "" || m == policies.ModeEnforce }

type rbacCompiler struct {
	w        *mesh.ValidWorkload
	set      *policies.Set
	root     string
	patterns map[string]*regexp.Regexp
}

func (c *rbacCompiler) istioApplies(p *policies.AuthorizationPolicy) bool {
	ns := p.Metadata.Namespace
	if ns != c.w.Namespace && ns != c.root {
		return false
	}
	refs := p.Spec.TargetRefs
	if p.Spec.TargetRef != nil {
		refs = append(refs, *p.Spec.TargetRef)
	}
	if len(refs) > 0 {
		for _, r := range refs {
			rns := r.Namespace
			if rns == "" {
				rns = ns
			}
			if r.Kind == "Service" && r.Name == c.w.Service && rns == c.w.Namespace {
				return true
			}
		}
		return false
	}
	if p.Spec.Selector == nil {
		return true
	}
	for k, v := range p.Spec.Selector.MatchLabels {
		if c.w.Labels[k] != v {
			return false
		}
	}
	return true
}

func (c *rbacCompiler) identityApplies(ns string, workloads []string) bool {
	if len(workloads) == 0 {
		return ns == c.w.Namespace || ns == c.root
	}
	for _, pat := range workloads {
		if re := c.patterns[pat]; re != nil && re.MatchString(c.w.ID.String()) {
			return true
		}
	}
	return false
}

// compilePatterns compiles the workload patterns of b's identity policies
// and default denies once for every node. A pattern that does not compile
// is left out and so matches no workload.
func compilePatterns(b *policies.Bundle) map[string]*regexp.Regexp {
	out := map[string]*regexp.Regexp{}
	add := func(pats []string) {
		for _, pat := range pats {
			if _, ok := out[pat]; ok {
				continue
			}
			if re, err := regexp.Compile(spiffePatternRegex(pat)); err == nil {
				out[pat] = re
			}
		}
	}
	for i := range b.Set.IdentityPolicies {
		add(b.Set.IdentityPolicies[i].Spec.Workloads)
	}
	for i := range b.Set.DefaultDenies {
		add(b.Set.DefaultDenies[i].Spec.Workloads)
	}
	return out
}

// istioRule translates one Istio rule. ok is false when the rule must be
// left out (an ALLOW rule with a condition RBAC cannot check).
func (c *rbacCompiler) istioRule(r policies.Rule, isDeny bool) (*rbacv3.Policy, bool) {
	var principals []*rbacv3.Principal
	for _, f := range r.From {
		var ids []*rbacv3.Principal
		s := f.Source
		// Not translated yet: request principals, service accounts and
		// trust domains. As in Istio, an ALLOW rule that cannot be checked
		// is left out and a DENY rule is checked without them (wider).
		if len(s.RequestPrincipals)+len(s.NotRequestPrincipals)+len(s.ServiceAccounts)+len(s.NotServiceAccounts)+
			len(s.TrustDomains)+len(s.NotTrustDomains) > 0 {
			if !isDeny {
				return nil, false
			}
		}
		ids = appendOr(ids, mapStrings(s.Principals, istioPrincipal), false)
		ids = appendOr(ids, mapStrings(s.NotPrincipals, istioPrincipal), true)
		ids = appendOr(ids, mapStrings(s.Namespaces, namespacePrincipal), false)
		ids = appendOr(ids, mapStrings(s.NotNamespaces, namespacePrincipal), true)
		ids = appendOr(ids, cidrPrincipals(s.IPBlocks, false), false)
		ids = appendOr(ids, cidrPrincipals(s.NotIPBlocks, false), true)
		ids = appendOr(ids, cidrPrincipals(s.RemoteIPBlocks, true), false)
		ids = appendOr(ids, cidrPrincipals(s.NotRemoteIPBlocks, true), true)
		principals = append(principals, andIDs(ids))
	}
	var perms []*rbacv3.Permission
	for _, t := range r.To {
		o := t.Operation
		var rules []*rbacv3.Permission
		rules = appendOrPerm(rules, mapPerm(o.Hosts, hostPermission), false)
		rules = appendOrPerm(rules, mapPerm(o.NotHosts, hostPermission), true)
		rules = appendOrPerm(rules, mapPerm(o.Ports, portPermission), false)
		rules = appendOrPerm(rules, mapPerm(o.NotPorts, portPermission), true)
		rules = appendOrPerm(rules, mapPerm(o.Methods, methodPermission), false)
		rules = appendOrPerm(rules, mapPerm(o.NotMethods, methodPermission), true)
		rules = appendOrPerm(rules, mapPerm(o.Paths, pathPermission), false)
		rules = appendOrPerm(rules, mapPerm(o.NotPaths, pathPermission), true)
		perms = append(perms, andRules(rules))
	}
	for _, w := range r.When {
		p, pr, ok := c.condition(w)
		if !ok {
			if !isDeny {
				return nil, false
			}
			continue
		}
		if p != nil {
			perms = []*rbacv3.Permission{andRules(append([]*rbacv3.Permission{orRules(perms)}, p))}
		}
		if pr != nil {
			principals = []*rbacv3.Principal{andIDs(append([]*rbacv3.Principal{orIDs(principals)}, pr))}
		}
	}
	return &rbacv3.Policy{Permissions: []*rbacv3.Permission{orRules(perms)}, Principals: []*rbacv3.Principal{orIDs(principals)}}, true
}

// condition translates the `when` keys RBAC can check.
func (c *rbacCompiler) condition(w policies.Condition) (*rbacv3.Permission, *rbacv3.Principal, bool) {
	values := func(f func(string) *rbacv3.Principal) *rbacv3.Principal {
		var ids []*rbacv3.Principal
		ids = appendOr(ids, mapStrings(w.Values, f), false)
		ids = appendOr(ids, mapStrings(w.NotValues, f), true)
		return andIDs(ids)
	}
	switch {
	case w.Key == "source.principal":
		return nil, values(istioPrincipal), true
	case w.Key == "source.namespace":
		return nil, values(namespacePrincipal), true
	case w.Key == "source.ip":
		var ids []*rbacv3.Principal
		ids = appendOr(ids, cidrPrincipals(w.Values, false), false)
		ids = appendOr(ids, cidrPrincipals(w.NotValues, false), true)
		return nil, andIDs(ids), true
	case w.Key == "destination.port":
		var rules []*rbacv3.Permission
		rules = appendOrPerm(rules, mapPerm(w.Values, portPermission), false)
		rules = appendOrPerm(rules, mapPerm(w.NotValues, portPermission), true)
		return andRules(rules), nil, true
	case strings.HasPrefix(w.Key, "request.headers[") && strings.HasSuffix(w.Key, "]"):
		h := strings.ToLower(w.Key[len("request.headers[") : len(w.Key)-1])
		f := func(v string) *rbacv3.Permission {
			return &rbacv3.Permission{Rule: &rbacv3.Permission_Header{Header: headerMatch(h, v)}}
		}
		var rules []*rbacv3.Permission
		rules = appendOrPerm(rules, mapPerm(w.Values, f), false)
		rules = appendOrPerm(rules, mapPerm(w.NotValues, f), true)
		return andRules(rules), nil, true
	}
	return nil, nil, false
}

func (c *rbacCompiler) identityRule(r policies.IdentityRule, isDeny bool) (*rbacv3.Policy, bool) {
	if r.JWT != nil && !isDeny {
		return nil, false
	}
	var principals []*rbacv3.Principal
	for _, f := range r.From {
		var ids []*rbacv3.Principal
		ids = appendOr(ids, mapStrings(f.IDs, spiffePatternPrincipal), false)
		ids = appendOr(ids, mapStrings(f.NotIDs, spiffePatternPrincipal), true)
		ids = appendOr(ids, mapStrings(f.TrustDomains, func(td string) *rbacv3.Principal {
			return spiffePatternPrincipal("spiffe://" + strings.TrimPrefix(td, "spiffe://"))
		}), false)
		principals = append(principals, andIDs(ids))
	}
	var perms []*rbacv3.Permission
	for _, t := range r.To {
		if len(t.Routes) > 0 && !isDeny {
			// Route names are an Envoy notion the gRPC server does not
			// expose to its RBAC filter: an ALLOW limited to routes allows
			// nothing here.
			continue
		}
		var rules []*rbacv3.Permission
		rules = appendOrPerm(rules, mapPerm(t.Hosts, hostPermission), false)
		rules = appendOrPerm(rules, mapPerm(t.Ports, portPermission), false)
		rules = appendOrPerm(rules, mapPerm(t.Methods, methodPermission), false)
		rules = appendOrPerm(rules, mapPerm(t.NotMethods, methodPermission), true)
		rules = appendOrPerm(rules, mapPerm(t.Paths, pathPermission), false)
		rules = appendOrPerm(rules, mapPerm(t.NotPaths, pathPermission), true)
		perms = append(perms, andRules(rules))
	}
	if len(r.To) > 0 && len(perms) == 0 {
		return nil, false
	}
	for _, w := range r.When {
		p, pr, ok := c.condition(w)
		if !ok {
			if !isDeny {
				return nil, false
			}
			continue
		}
		if p != nil {
			perms = []*rbacv3.Permission{andRules(append([]*rbacv3.Permission{orRules(perms)}, p))}
		}
		if pr != nil {
			principals = []*rbacv3.Principal{andIDs(append([]*rbacv3.Principal{orIDs(principals)}, pr))}
		}
	}
	return &rbacv3.Policy{Permissions: []*rbacv3.Permission{orRules(perms)}, Principals: []*rbacv3.Principal{orIDs(principals)}}, true
}

// ----- building blocks -----

func anyPrincipal() *rbacv3.Principal {
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_Any{Any: true}}
}
func anyPermission() *rbacv3.Permission {
	return &rbacv3.Permission{Rule: &rbacv3.Permission_Any{Any: true}}
}

func principalName(m *matcher.StringMatcher) *rbacv3.Principal {
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_Authenticated_{Authenticated: &rbacv3.Principal_Authenticated{PrincipalName: m}}}
}

func exact(s string) *matcher.StringMatcher {
	return &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: s}}
}

func regexMatcher(re string) *matcher.StringMatcher {
	return &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_SafeRegex{SafeRegex: &matcher.RegexMatcher{Regex: re}}}
}

// istioPrincipal: Istio principals are SPIFFE IDs without the scheme, with
// an optional leading or trailing "*".
func istioPrincipal(p string) *rbacv3.Principal {
	switch {
	case p == "*":
		return principalName(&matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_SafeRegex{SafeRegex: &matcher.RegexMatcher{Regex: ".+"}}})
	case strings.HasSuffix(p, "*"):
		return principalName(&matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Prefix{Prefix: "spiffe://" + strings.TrimSuffix(p, "*")}})
	case strings.HasPrefix(p, "*"):
		return principalName(&matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Suffix{Suffix: strings.TrimPrefix(p, "*")}})
	}
	return principalName(exact("spiffe://" + p))
}

func namespacePrincipal(ns string) *rbacv3.Principal {
	switch {
	case ns == "*":
		return principalName(regexMatcher(`spiffe://[^/]+/ns/[^/]+/.*`))
	case strings.HasSuffix(ns, "*"):
		return principalName(regexMatcher(`spiffe://[^/]+/ns/` + regexp.QuoteMeta(strings.TrimSuffix(ns, "*")) + `[^/]*/.*`))
	case strings.HasPrefix(ns, "*"):
		return principalName(regexMatcher(`spiffe://[^/]+/ns/[^/]*` + regexp.QuoteMeta(strings.TrimPrefix(ns, "*")) + `/.*`))
	}
	return principalName(regexMatcher(`spiffe://[^/]+/ns/` + regexp.QuoteMeta(ns) + `/.*`))
}

// spiffePatternRegex turns a meshguard SPIFFE ID pattern (exact ID,
// spiffe://td for the whole trust domain, or "*" globs within path
// segments) into an RE2 expression over the whole ID.
func spiffePatternRegex(p string) string {
	rest := strings.TrimPrefix(p, "spiffe://")
	td, path, hasPath := strings.Cut(rest, "/")
	var b strings.Builder
	b.WriteString("^spiffe://")
	b.WriteString(globSegment(td))
	if !hasPath {
		b.WriteString("/.+$")
		return b.String()
	}
	for _, seg := range strings.Split(path, "/") {
		b.WriteString("/")
		b.WriteString(globSegment(seg))
	}
	b.WriteString("$")
	return b.String()
}

func globSegment(s string) string {
	parts := strings.Split(s, "*")
	for i := range parts {
		parts[i] = regexp.QuoteMeta(parts[i])
	}
	return strings.Join(parts, "[^/]*")
}

func spiffePatternPrincipal(p string) *rbacv3.Principal {
	if !strings.Contains(p, "*") && strings.Count(strings.TrimPrefix(p, "spiffe://"), "/") > 0 {
		return principalName(exact(p))
	}
	return principalName(regexMatcher(spiffePatternRegex(p)))
}

func cidrPrincipals(blocks []string, remote bool) []*rbacv3.Principal {
	var out []*rbacv3.Principal
	for _, b := range blocks {
		pfx, err := netip.ParsePrefix(b)
		if err != nil {
			a, aerr := netip.ParseAddr(b)
			if aerr != nil {
				continue // validated by policies; unreachable for valid sets
			}
			pfx = netip.PrefixFrom(a, a.BitLen())
		}
		cr := &core.CidrRange{AddressPrefix: pfx.Addr().String(), PrefixLen: wrapperspb.UInt32(uint32(pfx.Bits()))}
		if remote {
			out = append(out, &rbacv3.Principal{Identifier: &rbacv3.Principal_RemoteIp{RemoteIp: cr}})
		} else {
			out = append(out, &rbacv3.Principal{Identifier: &rbacv3.Principal_DirectRemoteIp{DirectRemoteIp: cr}})
		}
	}
	return out
}

func headerMatch(name, v string) *route.HeaderMatcher {
	hm := &route.HeaderMatcher{Name: name}
	sm := &matcher.StringMatcher{}
	switch {
	case v == "*":
		hm.HeaderMatchSpecifier = &route.HeaderMatcher_PresentMatch{PresentMatch: true}
		return hm
	case strings.HasSuffix(v, "*"):
		sm.MatchPattern = &matcher.StringMatcher_Prefix{Prefix: strings.TrimSuffix(v, "*")}
	case strings.HasPrefix(v, "*"):
		sm.MatchPattern = &matcher.StringMatcher_Suffix{Suffix: strings.TrimPrefix(v, "*")}
	default:
		sm.MatchPattern = &matcher.StringMatcher_Exact{Exact: v}
	}
	hm.HeaderMatchSpecifier = &route.HeaderMatcher_StringMatch{StringMatch: sm}
	return hm
}

func hostPermission(h string) *rbacv3.Permission {
	return &rbacv3.Permission{Rule: &rbacv3.Permission_Header{Header: headerMatch(":authority", h)}}
}

func methodPermission(m string) *rbacv3.Permission {
	return &rbacv3.Permission{Rule: &rbacv3.Permission_Header{Header: headerMatch(":method", m)}}
}

func portPermission(p string) *rbacv3.Permission {
	n, err := strconv.ParseUint(p, 10, 16)
	if err != nil {
		// Validated by policies; a port that does not parse matches nothing.
		return &rbacv3.Permission{Rule: &rbacv3.Permission_NotRule{NotRule: anyPermission()}}
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_DestinationPort{DestinationPort: uint32(n)}}
}

func pathPermission(p string) *rbacv3.Permission {
	sm := &matcher.StringMatcher{}
	switch {
	case p == "*":
		sm.MatchPattern = &matcher.StringMatcher_Prefix{Prefix: "/"}
	case strings.HasSuffix(p, "*"):
		sm.MatchPattern = &matcher.StringMatcher_Prefix{Prefix: strings.TrimSuffix(p, "*")}
	case strings.HasPrefix(p, "*"):
		sm.MatchPattern = &matcher.StringMatcher_Suffix{Suffix: strings.TrimPrefix(p, "*")}
	default:
		sm.MatchPattern = &matcher.StringMatcher_Exact{Exact: p}
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_UrlPath{UrlPath: &matcher.PathMatcher{Rule: &matcher.PathMatcher_Path{Path: sm}}}}
}

func mapStrings(in []string, f func(string) *rbacv3.Principal) []*rbacv3.Principal {
	out := make([]*rbacv3.Principal, 0, len(in))
	for _, s := range in {
		out = append(out, f(s))
	}
	return out
}

func mapPerm(in []string, f func(string) *rbacv3.Permission) []*rbacv3.Permission {
	out := make([]*rbacv3.Permission, 0, len(in))
	for _, s := range in {
		out = append(out, f(s))
	}
	return out
}

// appendOr appends the OR of alts (negated when not is set) to ids; nothing
// when alts is empty (the field was not given).
func appendOr(ids, alts []*rbacv3.Principal, not bool) []*rbacv3.Principal {
	if len(alts) == 0 {
		return ids
	}
	p := orIDs(alts)
	if not {
		p = &rbacv3.Principal{Identifier: &rbacv3.Principal_NotId{NotId: p}}
	}
	return append(ids, p)
}

func appendOrPerm(rules, alts []*rbacv3.Permission, not bool) []*rbacv3.Permission {
	if len(alts) == 0 {
		return rules
	}
	p := orRules(alts)
	if not {
		p = &rbacv3.Permission{Rule: &rbacv3.Permission_NotRule{NotRule: p}}
	}
	return append(rules, p)
}

// orIDs: empty means "anyone" (a rule without from).
func orIDs(ids []*rbacv3.Principal) *rbacv3.Principal {
	switch len(ids) {
	case 0:
		return anyPrincipal()
	case 1:
		return ids[0]
	}
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_OrIds{OrIds: &rbacv3.Principal_Set{Ids: ids}}}
}

func andIDs(ids []*rbacv3.Principal) *rbacv3.Principal {
	switch len(ids) {
	case 0:
		return anyPrincipal()
	case 1:
		return ids[0]
	}
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_AndIds{AndIds: &rbacv3.Principal_Set{Ids: ids}}}
}

func orRules(rules []*rbacv3.Permission) *rbacv3.Permission {
	switch len(rules) {
	case 0:
		return anyPermission()
	case 1:
		return rules[0]
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_OrRules{OrRules: &rbacv3.Permission_Set{Rules: rules}}}
}

func andRules(rules []*rbacv3.Permission) *rbacv3.Permission {
	switch len(rules) {
	case 0:
		return anyPermission()
	case 1:
		return rules[0]
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_AndRules{AndRules: &rbacv3.Permission_Set{Rules: rules}}}
}
