package request

import (
	"errors"
	"reflect"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/meshguard/meshguard/policies/wire"
)

// keptView is every field DecodeCheck keeps, with presence, read through
// the getters FromCheck uses.
type keptView struct {
	HasAttrs, HasSrc, HasDst, HasReq, HasHTTP, HasTLS, HasHdrMap bool
	Src, Dst                                                     peerView
	ID, Method, Path, Host                                       string
	Headers, Ext                                                 map[string]string
	HeaderMap                                                    [][3]string
	SNI                                                          string
}

type peerView struct {
	Principal, Certificate, Addr string
	Port                         uint32
	HasAddr, HasSock             bool
	Labels                       map[string]string
}

func viewPeer(p *authv3.AttributeContext_Peer, labels bool) peerView {
	v := peerView{Principal: p.GetPrincipal(), Certificate: p.GetCertificate(), HasAddr: p.GetAddress() != nil}
	if s := p.GetAddress().GetSocketAddress(); s != nil {
		v.HasSock, v.Addr, v.Port = true, s.GetAddress(), s.GetPortValue()
	}
	if labels {
		v.Labels = p.GetLabels()
	}
	return v
}

func view(r *authv3.CheckRequest) keptView {
	ac := r.GetAttributes()
	h := ac.GetRequest().GetHttp()
	v := keptView{
		HasAttrs: ac != nil, HasSrc: ac.GetSource() != nil, HasDst: ac.GetDestination() != nil,
		HasReq: ac.GetRequest() != nil, HasHTTP: h != nil, HasTLS: ac.GetTlsSession() != nil, HasHdrMap: h.GetHeaderMap() != nil,
		Src: viewPeer(ac.GetSource(), false), Dst: viewPeer(ac.GetDestination(), true),
		ID: h.GetId(), Method: h.GetMethod(), Path: h.GetPath(), Host: h.GetHost(),
		Headers: h.GetHeaders(), Ext: ac.GetContextExtensions(), SNI: ac.GetTlsSession().GetSni(),
	}
	for _, hv := range h.GetHeaderMap().GetHeaders() {
		v.HeaderMap = append(v.HeaderMap, [3]string{hv.GetKey(), hv.GetValue(), string(hv.GetRawValue())})
	}
	return v
}

// compareDecoders checks DecodeCheck against proto.Unmarshal on data: on
// anything the protobuf runtime accepts, the same kept fields and the same
// FromCheck result; and nothing refused that the runtime accepts.
func compareDecoders(t *testing.T, data []byte) {
	t.Helper()
	full := &authv3.CheckRequest{}
	errFull := proto.Unmarshal(data, full)
	part := &authv3.CheckRequest{}
	errPart := DecodeCheck(data, part)
	if errFull != nil {
		return // DecodeCheck may accept it when the fault is in a field it skips
	}
	if errPart != nil {
		t.Fatalf("DecodeCheck refused what proto.Unmarshal accepts: %v", errPart)
	}
	if a, b := view(full), view(part); !reflect.DeepEqual(a, b) {
		t.Fatalf("kept fields differ:\nproto:  %+v\ndecode: %+v", a, b)
	}
	for _, opts := range []Options{{}, {TrustRouteHeader: true}} {
		mf, ef := FromCheck(full, opts)
		mp, ep := FromCheck(part, opts)
		// (Which of two bad header names an error names follows map order.)
		if (ef == nil) != (ep == nil) || errors.Is(ef, ErrInvalid) != errors.Is(ep, ErrInvalid) {
			t.Fatalf("FromCheck errors differ: %v / %v", ef, ep)
		}
		if !reflect.DeepEqual(mf, mp) {
			t.Fatalf("FromCheck results differ:\n%+v\n%+v", mf, mp)
		}
	}
}

// realisticCheck is a CheckRequest shaped as Envoy sends one, with fields
// DecodeCheck skips (time, scheme, body, metadata) among the kept ones.
func realisticCheck() *authv3.CheckRequest {
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source: &authv3.AttributeContext_Peer{
			Address:     &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{Address: "10.0.0.7", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 41234}}}},
			Principal:   "spiffe://prod.example/ns/web/sa/frontend",
			Certificate: "-----BEGIN%20CERTIFICATE-----%0A",
			Labels:      map[string]string{"app": "web"},
			Service:     "web",
		},
		Destination: &authv3.AttributeContext_Peer{
			Address:   &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{Address: "10.0.0.9", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 8080}}}},
			Principal: "spiffe://prod.example/ns/shop/sa/api",
			Labels:    map[string]string{"app": "api", "version": "v2"},
		},
		Request: &authv3.AttributeContext_Request{
			Time: timestamppb.Now(),
			Http: &authv3.AttributeContext_HttpRequest{
				Id: "req-1", Method: "POST", Path: "/v1/orders?id=7", Host: "api.shop", Scheme: "https", Protocol: "HTTP/2", Size: 12,
				Body:    "{}",
				Headers: map[string]string{":authority": "api.shop", ":method": "POST", ":path": "/v1/orders?id=7", "x-meshguard-route": "spoof", "x-request-id": "req-1"},
			},
		},
		ContextExtensions: map[string]string{wire.ContextRoute: "orders", wire.ContextNamespace: "shop", ContextLabelPrefix + "app": "api"},
		TlsSession:        &authv3.AttributeContext_TLSSession{Sni: "api.shop"},
	}}
}

func mustMarshal(t testing.TB, m proto.Message) []byte {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// field appends one length-delimited field.
func field(b []byte, num protowire.Number, payload []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, payload)
}

func decodeCases(t testing.TB) map[string][]byte {
	real := mustMarshal(t, realisticCheck())
	headerMap := mustMarshal(t, &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
		Method: "GET", Path: "/",
		HeaderMap: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{{Key: "x-a", Value: "1"}, {Key: "X-A", RawValue: []byte("2")}, {Key: ":authority", Value: "h"}}},
	}}}})
	attrs := func(ac *authv3.AttributeContext) []byte { return mustMarshal(t, ac) }
	peerWith := func(a *corev3.Address) []byte {
		return attrs(&authv3.AttributeContext{Source: &authv3.AttributeContext_Peer{Address: a}})
	}
	sock := &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{Address: "10.1.1.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 9}}}}
	pipe := &corev3.Address{Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: "/tmp/s"}}}
	named := &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{Address: "10.1.1.2", PortSpecifier: &corev3.SocketAddress_NamedPort{NamedPort: "http"}}}}
	invalidBody := mustMarshal(t, &authv3.AttributeContext_HttpRequest{Method: "GET", Path: "/"})
	invalidBody = field(invalidBody, 11, []byte("\xff\xfe"))       // body: a string field DecodeCheck skips
	wrongType := protowire.AppendTag(nil, 4, protowire.VarintType) // principal sent as a varint
	wrongType = protowire.AppendVarint(wrongType, 7)
	return map[string][]byte{
		"realistic": real,
		// attributes twice: the runtime merges the two messages.
		"merged attributes": field(field(nil, 1, attrs(&authv3.AttributeContext{Source: &authv3.AttributeContext_Peer{Principal: "spiffe://a/x"}, ContextExtensions: map[string]string{"k": "1"}})),
			1, attrs(&authv3.AttributeContext{Source: &authv3.AttributeContext_Peer{Certificate: "c"}, ContextExtensions: map[string]string{"k": "2", "j": "3"}})),
		"header map":           headerMap,
		"socket then pipe":     field(nil, 1, append(peerWith(sock), peerWith(pipe)...)),
		"pipe then socket":     field(nil, 1, append(peerWith(pipe), peerWith(sock)...)),
		"socket merged":        field(nil, 1, append(peerWith(sock), peerWith(named)...)),
		"named port":           field(nil, 1, peerWith(named)),
		"invalid utf8 skipped": field(nil, 1, field(nil, 4, field(nil, 2, invalidBody))),
		"invalid utf8 kept":    field(nil, 1, field(nil, 4, field(nil, 2, field(nil, 2, []byte("G\xffT"))))), // the method
		"wrong wire type":      field(nil, 1, field(nil, 1, wrongType)),
		"unknown fields":       append(append(protowire.AppendVarint(protowire.AppendTag(nil, 99, protowire.VarintType), 1), protowire.AppendFixed64(protowire.AppendTag(nil, 98, protowire.Fixed64Type), 5)...), real...),
		"truncated":            real[:len(real)-3],
		"empty":                nil,
		"zero field number":    {0x02, 0x00},
		"overlong length":      {0x0a, 0xff, 0x01},
		"empty map entry":      field(nil, 1, field(nil, 10, nil)),
		"group in attributes":  field(nil, 1, protowire.AppendTag(protowire.AppendTag(nil, 7, protowire.StartGroupType), 7, protowire.EndGroupType)),
		"unmatched end group":  field(nil, 1, protowire.AppendTag(nil, 7, protowire.EndGroupType)),
	}
}

func TestDecodeCheckMatchesProto(t *testing.T) {
	for name, data := range decodeCases(t) {
		t.Run(name, func(t *testing.T) { compareDecoders(t, data) })
	}
}

func TestDecodeCheckRefusesInvalidKeptFields(t *testing.T) {
	cases := decodeCases(t)
	for _, name := range []string{"invalid utf8 kept", "truncated", "zero field number", "overlong length", "unmatched end group"} {
		if err := DecodeCheck(cases[name], &authv3.CheckRequest{}); err == nil {
			t.Errorf("%s: accepted", name)
		}
		if err := proto.Unmarshal(cases[name], &authv3.CheckRequest{}); err == nil {
			t.Errorf("%s: the protobuf runtime accepts it too: not a refusal case", name)
		}
	}
	// A fault in a skipped field is not one DecodeCheck looks at.
	if err := DecodeCheck(cases["invalid utf8 skipped"], &authv3.CheckRequest{}); err != nil {
		t.Errorf("invalid UTF-8 in the (unread) body refused: %v", err)
	}
}

func FuzzDecodeCheck(f *testing.F) {
	for _, data := range decodeCases(f) {
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) { compareDecoders(t, data) })
}

func BenchmarkDecodeCheck(b *testing.B) {
	data := mustMarshal(b, realisticCheck())
	b.Run("proto.Unmarshal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := proto.Unmarshal(data, &authv3.CheckRequest{}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("DecodeCheck", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := DecodeCheck(data, &authv3.CheckRequest{}); err != nil {
				b.Fatal(err)
			}
		}
	})
}
