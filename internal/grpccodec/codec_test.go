package grpccodec

import (
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

func TestRoundTrip(t *testing.T) {
	in := &authv3.CheckResponse{
		Status: &rpcstatus.Status{Code: 7, Message: "denied_by_policy"},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Headers: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-meshguard-reason", Value: "denied_by_policy"}}},
			Body:    `{"reason":"denied_by_policy"}`,
		}},
		DynamicMetadata: &structpb.Struct{Fields: map[string]*structpb.Value{"reason": structpb.NewStringValue("denied_by_policy")}},
	}
	var c Codec
	data, err := c.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	out := &authv3.CheckResponse{}
	if err := c.Unmarshal(data, out); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(in, out) {
		t.Fatalf("round trip changed the message:\n%v\n%v", in, out)
	}
	if _, err := c.Marshal("not a message"); err == nil {
		t.Error("marshalled a non-message")
	}
}
