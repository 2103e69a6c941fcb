package main

import (
	"fmt"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// statusCodec is the load generator's client codec. Requests are encoded
// once, before the load (encodedRequest); of each CheckResponse only
// status.code is decoded (the
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
	if e, ok := v.(*encodedRequest); ok {
		return e.b, nil
	}
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

// checkStatusCode returns status.code of an encoded CheckResponse (0 when
// absent, as protobuf defaults it), checking that every field on the way is
// well formed.
func checkStatusCode(b []byte) (int32, error) {
	status, ok, err := lastField(b, fieldCheckStatus, protowire.BytesType)
	if err != nil || !ok {
		return 0, err
	}
	msg, _ := protowire.ConsumeBytes(status)
	code, ok, err := lastField(msg, fieldStatusCode, protowire.VarintType)
	if err != nil || !ok {
		return 0, err
	}
	v, _ := protowire.ConsumeVarint(code)
	return int32(v), nil
}

// lastField returns the encoded value of the last field num of wire type
// typ in the message b (the occurrence protobuf keeps for a scalar).
func lastField(b []byte, num protowire.Number, typ protowire.Type) ([]byte, bool, error) {
	var val []byte
	found := false
	for len(b) > 0 {
		n, t, l := protowire.ConsumeTag(b)
		if l < 0 {
			return nil, false, protowire.ParseError(l)
		}
		b = b[l:]
		vl := protowire.ConsumeFieldValue(n, t, b)
		if vl < 0 {
			return nil, false, protowire.ParseError(vl)
		}
		if n == num && t == typ {
			val, found = b[:vl], true
		}
		b = b[vl:]
	}
	return val, found, nil
}

// encodedRequest is a CheckRequest already in wire form.
type encodedRequest struct{ b []byte }

func encodeRequests(reqs []*authv3.CheckRequest) ([]*encodedRequest, error) {
	out := make([]*encodedRequest, len(reqs))
	for i, r := range reqs {
		b, err := proto.Marshal(r)
		if err != nil {
			return nil, err
		}
		out[i] = &encodedRequest{b}
	}
	return out, nil
}
