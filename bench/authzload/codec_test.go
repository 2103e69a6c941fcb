package main

import (
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

func TestStatusCodec(t *testing.T) {
	for _, code := range []int32{0, 7, 16} {
		in := &authv3.CheckResponse{
			Status: &rpcstatus.Status{Code: code, Message: "denied_by_policy"},
			HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
				Headers: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-meshguard-reason", Value: "denied_by_policy"}}},
				Body:    `{"reason":"denied_by_policy"}`,
			}},
			DynamicMetadata: &structpb.Struct{Fields: map[string]*structpb.Value{"reason": structpb.NewStringValue("r")}},
		}
		data, err := proto.Marshal(in)
		if err != nil {
			t.Fatal(err)
		}
		var out authv3.CheckResponse
		if err := (statusCodec{}).Unmarshal(data, &out); err != nil {
			t.Fatal(err)
		}
		if out.GetStatus().GetCode() != code {
			t.Errorf("code %d decoded as %d", code, out.GetStatus().GetCode())
		}
		if err := (statusCodec{}).Unmarshal(data[:len(data)-3], &out); err == nil {
			t.Error("a truncated response decoded without error")
		}
	}
}
