package main

import (
	"flag"
	"fmt"
	"os"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/meshguard/meshguard/authz/request"
	"github.com/meshguard/meshguard/internal/testbed/policygen"
	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/wire"
)

const seed = 42

// realisticBundle is the policy every measurement uses.
func realisticBundle(rules int) (*policies.Bundle, policygen.Mesh, error) {
	set, mesh := policygen.Realistic(rules, seed)
	b, _, err := policies.NewBundle("", set)
	if err != nil {
		return nil, mesh, fmt.Errorf("realistic bundle: %w", err)
	}
	return b, mesh, nil
}

// checkRequests turns policygen's realistic requests into CheckRequests as
// an Istio sidecar's ext_authz filter sends them, encoded once for the load.
func checkRequests(rules, n int) ([]*encodedRequest, error) {
	b, mesh, err := realisticBundle(rules)
	if err != nil {
		return nil, err
	}
	attrs := policygen.Requests(&b.Set, mesh, n, seed)
	out := make([]*authv3.CheckRequest, len(attrs))
	for i, a := range attrs {
		h := map[string]string{
			":authority": a.Host, ":method": a.Method, ":path": a.Path, ":scheme": "http",
			"x-request-id":      fmt.Sprintf("0b6c3a9e-%04d-4d1a-9a1e-0d3c8b1f2a77", i),
			"x-forwarded-proto": "http",
		}
		if mh, ok := a.Headers.(policies.MapHeaders); ok {
			for k, v := range mh {
				h[k] = v
			}
		}
		ext := map[string]string{
			wire.ContextNamespace: a.Target.Namespace,
			wire.ContextService:   a.Target.Service,
			wire.ContextRoute:     "default",
		}
		for k, v := range a.Target.Labels {
			ext[request.ContextLabelPrefix+k] = v
		}
		sock := func(ip string, port uint32) *corev3.Address {
			return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
				Address: ip, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}}
		}
		out[i] = &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
			Source:            &authv3.AttributeContext_Peer{Address: sock(a.SourceIP.String(), 40000+uint32(i%20000)), Principal: a.Peer.String()},
			Destination:       &authv3.AttributeContext_Peer{Address: sock("10.1.0.1", a.DestinationPort), Principal: a.Target.ID.String()},
			ContextExtensions: ext,
			Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
				Id: h["x-request-id"], Method: a.Method, Path: a.Path, Host: a.Host, Scheme: "http", Protocol: "HTTP/1.1", Headers: h,
			}},
		}}
	}
	return encodeRequests(out)
}

func bundleMain(args []string) error {
	fs := flag.NewFlagSet("bundle", flag.ExitOnError)
	rules := fs.Int("rules", 1000, "rules in the realistic policy")
	out := fs.String("out", "bundle.json", "output file")
	_ = fs.Parse(args)
	b, _, err := realisticBundle(*rules)
	if err != nil {
		return err
	}
	data, err := b.Encode()
	if err != nil {
		return err
	}
	return os.WriteFile(*out, data, 0o644)
}
