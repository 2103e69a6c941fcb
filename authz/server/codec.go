package server

import (
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/meshguard/meshguard/authz/request"
	"github.com/meshguard/meshguard/internal/grpccodec"
)

// checkCodec is the server's gRPC codec: CheckRequests are decoded by
// request.DecodeCheck (only the fields the server reads, a fraction of the
// protobuf runtime's cost), everything else by grpccodec.Codec.
type checkCodec struct{ grpccodec.Codec }

// Unmarshal implements encoding.Codec.
func (c checkCodec) Unmarshal(data []byte, v any) error {
	if m, ok := v.(*authv3.CheckRequest); ok {
		return request.DecodeCheck(data, m)
	}
	return c.Codec.Unmarshal(data, v)
}
