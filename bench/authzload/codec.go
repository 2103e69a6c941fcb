package main

import (
	"fmt"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// statusCodec is the load generator's client codec. Requests are marshalled
// as usual; of each CheckResponse only status.code is decoded (the
// generator counts allowed and denied answers and needs nothing else). The
// generator shares the machine with the server under test, so decoding the
// headers and dynamic metadata of a richer answer would bill the server for
// the client's work. The wire format is still checked: a response that is
// not a well-formed CheckResponse is an error.
type statusCodec struct{}

// CheckResponse field numbers (envoy/service/auth/v3/external_auth.proto)
// and google.rpc.Status.code.
const (
	fieldCheckStatus = 1
	fieldStatusCode  = 1
)

func (statusCodec) Name() string { return "proto" }

func (statusCodec) Marshal(v any) ([]byte, error) {
	m, ok := v.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("statusCodec: %T is not a protobuf message", v)
	}
	return proto.Marshal(m)
}

func (statusCodec) Unmarshal(data []byte, v any) error {
	resp, ok := v.(*authv3.CheckResponse)
	if !ok {
		m, ok := v.(proto.Message)
		if !ok {
			return fmt.Errorf("statusCodec: %T is not a protobuf message", v)
		}
		return proto.Unmarshal(data, m)
	}
	code, err := checkStatusCode(data)
	if err != nil {
		return err
	}
	resp.Status = &rpcstatus.Status{Code: code}
	return nil
}

// checkStatusCode walks the top-level fields of an encoded CheckResponse
// and returns status.code (0 when absent, as protobuf defaults it).
func checkStatusCode(b []byte) (int32, error) {
	var code int32
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return 0, protowire.ParseError(n)
		}
		b = b[n:]
		if num == fieldCheckStatus && typ == protowire.BytesType {
			msg, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return 0, protowire.ParseError(n)
			}
			b = b[n:]
			c, err := statusCode(msg)
			if err != nil {
				return 0, err
			}
			code = c
			continue
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return 0, protowire.ParseError(n)
		}
		b = b[n:]
	}
	return code, nil
}

func statusCode(b []byte) (int32, error) {
	var code int32
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return 0, protowire.ParseError(n)
		}
		b = b[n:]
		if num == fieldStatusCode && typ == protowire.VarintType {
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return 0, protowire.ParseError(n)
			}
			b = b[n:]
			code = int32(v)
			continue
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return 0, protowire.ParseError(n)
		}
		b = b[n:]
	}
	return code, nil
}
