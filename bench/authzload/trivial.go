package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"github.com/meshguard/meshguard/internal/grpccodec"
)

// trivialServer answers every Check with OK and nothing else: the floor
// any ext_authz server is measured against.
type trivialServer struct {
	authv3.UnimplementedAuthorizationServer
}

func (trivialServer) Check(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	return &authv3.CheckResponse{
		Status:       &rpcstatus.Status{Code: int32(codes.OK)},
		HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{}},
	}, nil
}

func trivialMain(args []string) error {
	fs := flag.NewFlagSet("trivial", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:0", "listen address")
	_ = fs.Parse(args)
	lis, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	// The same codec as meshguard's server: the comparison is of the
	// servers' work, not of the transport.
	g := grpc.NewServer(grpc.ForceServerCodec(grpccodec.Codec{}))
	authv3.RegisterAuthorizationServer(g, trivialServer{})
	fmt.Printf("listening %s\n", lis.Addr())
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() { <-ctx.Done(); g.GracefulStop() }()
	return g.Serve(lis)
}
