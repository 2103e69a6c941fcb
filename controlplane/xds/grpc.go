package xds

import (
	"fmt"
	"net"
	"strconv"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	router "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshguard/meshguard/controlplane/mesh"
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
// the bootstrap's certificate provider, RBAC compiled from the policies
// (rbac.go), and a non-forwarding route.
func (g *Generator) grpcResources(w *mesh.ValidWorkload, eb *EncodedBundle) (map[resource.Type][]types.Resource, error) {
	rtr, err := marshalAny(&router.Router{})
	if err != nil {
		return nil, err
	}
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
		// Per port: route names, and so the RBAC of a rule on routes,
		// differ from port to port.
		filters, _ := compileRBAC(w, in, eb, g.now())
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

// grpcRoutes are the port's routes, in the order proxylessRoutes gives
// (which the RBAC's route conditions follow): every one non-forwarding.
func grpcRoutes(in mesh.Inbound) []*route.Route {
	var routes []*route.Route
	for _, r := range proxylessRoutes(in) {
		m := &route.RouteMatch{}
		if r.Path != "" {
			m.PathSpecifier = &route.RouteMatch_Path{Path: r.Path}
		} else {
			m.PathSpecifier = &route.RouteMatch_Prefix{Prefix: r.Prefix}
		}
		routes = append(routes, &route.Route{Name: r.Name, Match: m, Action: &route.Route_NonForwardingAction{NonForwardingAction: &route.NonForwardingAction{}}})
	}
	return routes
}
