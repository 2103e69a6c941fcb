//go:build faults

package faults

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/protobuf/proto"
)

// rawCodec sends bytes as they are: a CheckRequest no client would encode.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return v.([]byte), nil }
func (rawCodec) Unmarshal(data []byte, v any) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

var _ encoding.Codec = rawCodec{}

// TestMalformedInput: garbage on the wire and requests a proxy would never
// send are denied (never allowed); the server stays up and ready.
func TestMalformedInput(t *testing.T) {
	fx := newFixture(t)
	path := fx.dir + "/policy.yaml"
	writeAtomic(t, path, wholePolicy)
	a := startAuthz(t, "malformed-authz", fx, []string{"--policy", path, "--decision-log", "off"}, nil, nil)
	waitReady(t, a, 20*time.Second)

	allowed, answered, rpcErrors := 0, 0, 0
	// Bytes that are not a CheckRequest, or barely one.
	for _, raw := range [][]byte{
		{0xff, 0xff, 0xff, 0xff, 0x0f}, {0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f}, {0x0a, 0x05, 0x0a, 0x03, 0x12, 0x01},
		[]byte(strings.Repeat("\x0a\x02\x0a\x00", 4096)), {},
	} {
		var out []byte
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err := a.conns[0].Invoke(ctx, "/envoy.service.auth.v3.Authorization/Check", raw, &out, grpc.ForceCodec(rawCodec{}))
		cancel()
		if err != nil {
			rpcErrors++
			continue
		}
		answered++
		var resp authv3.CheckResponse
		if err := proto.Unmarshal(out, &resp); err != nil || resp.GetStatus().GetCode() == 0 {
			allowed++
		}
	}
	// Requests a proxy would never send.
	huge := strings.Repeat("x", 300<<10)
	for _, req := range []*authv3.CheckRequest{
		{},
		{Attributes: &authv3.AttributeContext{}},
		mutate(func(r *authv3.CheckRequest) { r.Attributes.Destination = nil }),
		mutate(func(r *authv3.CheckRequest) {
			r.Attributes.Source.Principal = "spiffe://evil.example/ns/web/sa/frontend"
		}),
		mutate(func(r *authv3.CheckRequest) {
			r.Attributes.Source.Principal = "spiffe://" + td + "/ns/web/sa/frontend/../../admin"
		}),
		mutate(func(r *authv3.CheckRequest) { r.Attributes.Request.Http.Path = "/api/admin\x00/items" }),
		mutate(func(r *authv3.CheckRequest) { r.Attributes.Request.Http.Path = "/api/%61dmin" }),
		mutate(func(r *authv3.CheckRequest) { r.Attributes.Request.Http.Path = "/api/items/..%2fadmin" }),
		mutate(func(r *authv3.CheckRequest) { r.Attributes.Request.Http.Headers["x-big"] = huge }),
		mutate(func(r *authv3.CheckRequest) { r.Attributes.Request.Http.Path = "\xff\xfe/api/admin" }),
		mutate(func(r *authv3.CheckRequest) { r.Attributes.Request.Http.Headers["x-meshguard-source-id"] = apiID }),
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		resp, err := a.clients[0].Check(ctx, req)
		cancel()
		if err != nil {
			rpcErrors++
			continue
		}
		answered++
		if resp.GetStatus().GetCode() == 0 && !strings.HasPrefix(req.GetAttributes().GetRequest().GetHttp().GetPath(), "/api/items") {
			allowed++
		}
	}
	c := http.Client{Timeout: time.Second}
	health, err := c.Get("http://" + a.admin + "/healthz")
	up := err == nil && health.StatusCode == 200 && !a.p.exited()
	if health != nil {
		health.Body.Close()
	}
	ready, _ := readyz(a.admin)
	record(t, "malformed input (happy path)",
		"garbage and impossible requests never allowed; the server stays up and ready",
		allowed == 0 && up && ready == 200,
		"%d answered (all denied: %v), %d refused as RPC errors, %d allowed; up %v, /readyz %d",
		answered, allowed == 0, rpcErrors, allowed, up, ready)
}

func mutate(f func(*authv3.CheckRequest)) *authv3.CheckRequest {
	r := checkRequest("/api/items", "m")
	f(r)
	return r
}
