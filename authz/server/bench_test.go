package server

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync/atomic"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/meshguard/meshguard/authz/decisionlog"
	"github.com/meshguard/meshguard/authz/identity"
	"github.com/meshguard/meshguard/authz/metrics"
	"github.com/meshguard/meshguard/authz/request"
	"github.com/meshguard/meshguard/authz/tracing"
	"github.com/meshguard/meshguard/internal/testbed/ca"
	"github.com/meshguard/meshguard/internal/testbed/policygen"
	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/wire"
)

// benchRequests are policygen's realistic requests as CheckRequests.
func benchRequests(b *testing.B, set *policies.Set, mesh policygen.Mesh) []*authv3.CheckRequest {
	attrs := policygen.Requests(set, mesh, 1000, 7)
	out := make([]*authv3.CheckRequest, len(attrs))
	for i, a := range attrs {
		h := map[string]string{":authority": a.Host, ":method": a.Method, ":path": a.Path, ":scheme": "http", "x-request-id": fmt.Sprint(i)}
		for k, v := range a.Headers.(policies.MapHeaders) {
			h[k] = v
		}
		ext := map[string]string{wire.ContextNamespace: a.Target.Namespace, wire.ContextService: a.Target.Service}
		for k, v := range a.Target.Labels {
			ext[request.ContextLabelPrefix+k] = v
		}
		out[i] = &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
			Source:            &authv3.AttributeContext_Peer{Principal: a.Peer.String(), Address: &corev3.Address{}},
			Destination:       &authv3.AttributeContext_Peer{Principal: a.Target.ID.String()},
			ContextExtensions: ext,
			Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
				Method: a.Method, Path: a.Path, Host: a.Host, Headers: h}},
		}}
	}
	return out
}

// realisticEngine is a 1,000-rule realistic policy set, the mesh it
// describes, the engine loaded with it and an identity resolver for its
// trust domain.
func realisticEngine(b *testing.B) (policies.Set, policygen.Mesh, *policies.Engine, *identity.Resolver) {
	b.Helper()
	set, mesh := policygen.Realistic(1000, 1)
	bundle, _, err := policies.NewBundle("bench", set)
	if err != nil {
		b.Fatal(err)
	}
	snap, err := policies.Compile(bundle)
	if err != nil {
		b.Fatal(err)
	}
	eng := &policies.Engine{}
	eng.Swap(snap)
	c, _ := ca.New(spiffeid.RequireTrustDomainFromString(policygen.TrustDomain))
	res, err := identity.New(identity.Config{Bundles: spiffebundle.NewSet(c.Bundle()), JWTAudiences: []string{"a"}})
	if err != nil {
		b.Fatal(err)
	}
	return set, mesh, eng, res
}

// BenchmarkCheck measures one Check in process (no transport) against a
// 1,000-rule realistic policy, with metrics and a sampled decision log,
// next to the engine's Decide alone on the same requests as the baseline.
func BenchmarkCheck(b *testing.B) {
	set, mesh, eng, res := realisticEngine(b)
	dl, _ := decisionlog.New(decisionlog.Config{W: io.Discard, AllowSampleRate: 0.01})
	srv, err := New(Config{Engine: eng, Identity: res, Log: slog.New(slog.DiscardHandler), Metrics: metrics.New(prometheus.NewRegistry()), DecisionLog: dl})
	if err != nil {
		b.Fatal(err)
	}
	reqs := benchRequests(b, &set, mesh)
	attrs := policygen.Requests(&set, mesh, 1000, 7)
	b.Run("engine-only", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			eng.Decide(&attrs[i%len(attrs)])
		}
	})
	b.Run("check", func(b *testing.B) {
		b.ReportAllocs()
		ctx := context.Background()
		for i := 0; b.Loop(); i++ {
			if _, err := srv.Check(ctx, reqs[i%len(reqs)]); err != nil {
				b.Fatal(err)
			}
		}
	})
	// wire: what the server does per request between the transport's
	// bytes in and bytes out: decode, Check, encode.
	var codec checkCodec
	wire := make([][]byte, len(reqs))
	for i, r := range reqs {
		if wire[i], err = proto.Marshal(r); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("wire", func(b *testing.B) {
		b.ReportAllocs()
		ctx := context.Background()
		for i := 0; b.Loop(); i++ {
			var req authv3.CheckRequest
			if err := codec.Unmarshal(wire[i%len(wire)], &req); err != nil {
				b.Fatal(err)
			}
			resp, _ := srv.Check(ctx, &req)
			if _, err := codec.Marshal(resp); err != nil {
				b.Fatal(err)
			}
		}
	})
}

type trivialAuthz struct {
	authv3.UnimplementedAuthorizationServer
}

func (trivialAuthz) Check(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	return &authv3.CheckResponse{Status: &rpcstatus.Status{}, HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{}}}, nil
}

// BenchmarkGRPC runs the same realistic CheckRequests over loopback gRPC
// (plaintext, in process) against a trivial always-OK server and against
// meshguard's server: the ratio of the two ns/op is the cost of meshguard
// relative to the transport. `make bench-authz` measures the same with
// separate processes.
func BenchmarkGRPC(b *testing.B) {
	set, mesh := policygen.Realistic(1000, 1)
	bundle, _, _ := policies.NewBundle("bench", set)
	snap, err := policies.Compile(bundle)
	if err != nil {
		b.Fatal(err)
	}
	eng := &policies.Engine{}
	eng.Swap(snap)
	c, _ := ca.New(spiffeid.RequireTrustDomainFromString(policygen.TrustDomain))
	res, _ := identity.New(identity.Config{Bundles: spiffebundle.NewSet(c.Bundle()), JWTAudiences: []string{"a"}})
	dl, _ := decisionlog.New(decisionlog.Config{W: io.Discard, AllowSampleRate: 0.01})
	srv, _ := New(Config{Engine: eng, Identity: res, Log: slog.New(slog.DiscardHandler), Metrics: metrics.New(prometheus.NewRegistry()), DecisionLog: dl})
	reqs := benchRequests(b, &set, mesh)
	for _, tc := range []struct {
		name     string
		register func(*grpc.Server)
	}{
		{"trivial", func(g *grpc.Server) { authv3.RegisterAuthorizationServer(g, trivialAuthz{}) }},
		{"meshguard", func(g *grpc.Server) { srv.Register(g) }},
	} {
		b.Run(tc.name, func(b *testing.B) {
			g := grpc.NewServer(srv.GRPCServerOptions()...)
			tc.register(g)
			lis, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			go func() { _ = g.Serve(lis) }()
			defer g.Stop()
			conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			client := authv3.NewAuthorizationClient(conn)
			var n atomic.Int64
			b.ReportAllocs()
			b.SetParallelism(16)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := client.Check(context.Background(), reqs[n.Add(1)%int64(len(reqs))]); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// discard is a span exporter that drops what it is given: the cost
// measured is the SDK's and the server's, not a network's.
type discard struct{}

func (discard) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (discard) Shutdown(context.Context) error                             { return nil }

// BenchmarkCheckTracing is BenchmarkCheck's check with tracing off (the
// default: the server never touches the tracer), on for requests whose
// trace Envoy did not sample, and on for sampled ones, in the same run.
func BenchmarkCheckTracing(b *testing.B) {
	set, mesh, eng, res := realisticEngine(b)
	tr, err := tracing.New(tracing.Config{Exporter: discard{}})
	if err != nil {
		b.Fatal(err)
	}
	defer tr.Shutdown(context.Background())
	reqs := benchRequests(b, &set, mesh)
	withTrace := func(flags string) []*authv3.CheckRequest {
		out := make([]*authv3.CheckRequest, len(reqs))
		for i, r := range reqs {
			r = proto.Clone(r).(*authv3.CheckRequest)
			r.Attributes.Request.Http.Headers["traceparent"] = fmt.Sprintf("00-4bf92f3577b34da6a3ce929d0e0e%04x-00f067aa0ba902b7-%s", i, flags)
			out[i] = r
		}
		return out
	}
	for _, tc := range []struct {
		name   string
		tracer *tracing.Tracer
		reqs   []*authv3.CheckRequest
	}{
		{"off", nil, withTrace("01")},
		{"on-unsampled", tr, withTrace("00")},
		{"on-sampled", tr, withTrace("01")},
	} {
		dl, _ := decisionlog.New(decisionlog.Config{W: io.Discard, AllowSampleRate: 0.01})
		srv, err := New(Config{Engine: eng, Identity: res, Log: slog.New(slog.DiscardHandler), Metrics: metrics.New(prometheus.NewRegistry()), DecisionLog: dl, Tracer: tc.tracer})
		if err != nil {
			b.Fatal(err)
		}
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			ctx := context.Background()
			for i := 0; b.Loop(); i++ {
				if _, err := srv.Check(ctx, tc.reqs[i%len(tc.reqs)]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
