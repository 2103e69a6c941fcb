// Package grpccodec is a gRPC codec that marshals messages with their
// vtprotobuf-generated MarshalVTStrict (built with -tags vtprotobuf) when they have one (go-control-plane
// generates it for Envoy's types, CheckResponse included) and falls back to
// the reflection-based protobuf runtime otherwise. Unmarshalling always uses
// the protobuf runtime. Servers opt in with grpc.ForceServerCodec; nothing
// is registered globally.
package grpccodec

import (
	"fmt"

	"google.golang.org/protobuf/proto"
)

// Codec implements google.golang.org/grpc/encoding.Codec.
type Codec struct{}

type vtMarshaler interface {
	MarshalVTStrict() ([]byte, error)
}

// Marshal implements encoding.Codec.
func (Codec) Marshal(v any) ([]byte, error) {
	if m, ok := v.(vtMarshaler); ok {
		return m.MarshalVTStrict()
	}
	m, ok := v.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("grpccodec: %T is not a protobuf message", v)
	}
	return proto.Marshal(m)
}

// Unmarshal implements encoding.Codec.
func (Codec) Unmarshal(data []byte, v any) error {
	m, ok := v.(proto.Message)
	if !ok {
		return fmt.Errorf("grpccodec: %T is not a protobuf message", v)
	}
	return proto.Unmarshal(data, m)
}

// Name implements encoding.Codec: the content subtype stays "proto".
func (Codec) Name() string { return "proto" }
