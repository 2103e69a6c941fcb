package server

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/meshguard/meshguard/authz/request"
	"github.com/meshguard/meshguard/internal/jsonw"
	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/wire"
)

// Check implements envoy.service.auth.v3.Authorization. It always answers
// with a CheckResponse (never a gRPC error), so that Envoy sees the reason.
func (s *Server) Check(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	start := time.Now()
	m, err := request.FromCheck(req, s.reqOpts)
	o := s.decideTraced(ctx, start.Add(s.timeout), m, err)
	s.record("grpc", &o, start)
	return s.checkResponse(&o), nil
}

// okAnswer holds every part of an OK CheckResponse, so that an answer is
// one allocation (plus the metadata map) instead of a dozen.
type okAnswer struct {
	resp   authv3.CheckResponse
	status rpcstatus.Status
	ok     authv3.CheckResponse_OkResponse
	http   authv3.OkHttpResponse
	opts   [2]corev3.HeaderValueOption
	hdrs   [2]corev3.HeaderValue
	list   [2]*corev3.HeaderValueOption
	md     answerMetadata
}

// answerMetadata is the dynamic metadata Struct and its per-request value.
type answerMetadata struct {
	st structpb.Struct
	id structpb.Value
	ik structpb.Value_StringValue
}

func (s *Server) checkResponse(o *outcome) *authv3.CheckResponse {
	if o.dec.Allowed {
		a := &okAnswer{}
		a.status.Code = int32(codes.OK)
		n := 0
		a.setHeader(&n, wire.HeaderDecisionID, o.decisionID)
		if !o.id.ID.IsZero() {
			a.setHeader(&n, wire.HeaderSourceID, o.id.ID.String())
		}
		a.http.Headers = a.list[:n]
		for _, kv := range o.set {
			a.http.Headers = append(a.http.Headers, overwrite(&corev3.HeaderValueOption{}, &corev3.HeaderValue{}, kv[0], kv[1]))
		}
		a.http.HeadersToRemove = o.remove
		a.ok.OkResponse = &a.http
		a.resp.Status = &a.status
		a.resp.HttpResponse = &a.ok
		a.resp.DynamicMetadata = s.metadata(o, &a.md)
		return &a.resp
	}
	a := &deniedAnswer{}
	a.status.Code, a.status.Message = int32(codes.PermissionDenied), string(o.dec.Reason)
	a.httpStatus.Code = typev3.StatusCode(httpStatus(o.dec.Reason))
	a.http.Status = &a.httpStatus
	for i, kv := range [3][2]string{{"content-type", "application/json"}, {wire.HeaderReason, string(o.dec.Reason)}, {wire.HeaderDecisionID, o.decisionID}} {
		a.list[i] = overwrite(&a.opts[i], &a.hdrs[i], kv[0], kv[1])
	}
	a.http.Headers = a.list[:]
	if o.authFail != nil {
		a.http.Headers = append(a.http.Headers, overwrite(&corev3.HeaderValueOption{}, &corev3.HeaderValue{}, "www-authenticate", wwwAuthenticate(o.mapped)))
	}
	a.http.Body = string(denyJSON(o))
	a.denied.DeniedResponse = &a.http
	a.resp.Status = &a.status
	a.resp.HttpResponse = &a.denied
	a.resp.DynamicMetadata = s.metadata(o, &a.md)
	return &a.resp
}

// deniedAnswer holds every part of a denying CheckResponse: one allocation
// (plus the body and the metadata map).
type deniedAnswer struct {
	resp       authv3.CheckResponse
	status     rpcstatus.Status
	denied     authv3.CheckResponse_DeniedResponse
	http       authv3.DeniedHttpResponse
	httpStatus typev3.HttpStatus
	opts       [3]corev3.HeaderValueOption
	hdrs       [3]corev3.HeaderValue
	list       [3]*corev3.HeaderValueOption
	md         answerMetadata
}

func (a *okAnswer) setHeader(n *int, k, v string) {
	i := *n
	a.list[i] = overwrite(&a.opts[i], &a.hdrs[i], k, v)
	*n = i + 1
}

// overwrite fills opt and hv as the header k: v, replacing any value.
func overwrite(opt *corev3.HeaderValueOption, hv *corev3.HeaderValue, k, v string) *corev3.HeaderValueOption {
	hv.Key, hv.Value = k, v
	opt.Header = hv
	opt.AppendAction = corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD
	return opt
}

// denyJSON is the deny body: {"reason","decision_id","policy","rule"}.
func denyJSON(o *outcome) []byte {
	b := make([]byte, 0, 128)
	b = append(b, '{')
	b = jsonw.Field(b, true, "reason", string(o.dec.Reason))
	b = jsonw.Field(b, false, "decision_id", o.decisionID)
	if o.dec.Ref.Policy != "" {
		b = jsonw.Field(b, false, "policy", o.dec.Ref.Policy)
	}
	if o.dec.Ref.Rule != "" {
		b = jsonw.Field(b, false, "rule", o.dec.Ref.Rule)
	}
	if o.authFail != nil {
		// What Envoy's jwt_authn filter answers: "Jwt is expired", ...
		b = jsonw.Field(b, false, "detail", o.authFail.Message)
	}
	return append(b, '}', '\n')
}

// metadata is the dynamic metadata Envoy puts under the ext_authz filter's
// namespace (envoy.filters.http.ext_authz) for access logs and later filters.
func (s *Server) metadata(o *outcome, md *answerMetadata) *structpb.Struct {
	f := make(map[string]*structpb.Value, 8)
	md.ik.StringValue = o.decisionID
	md.id.Kind = &md.ik
	f["decision_id"] = &md.id
	f["reason"] = s.values.get(string(o.dec.Reason))
	f["mode"] = s.values.get(mode(o.dec))
	if o.dec.Ref.Policy != "" {
		f["policy"] = s.values.get(o.dec.Ref.Policy)
		f["rule"] = s.values.get(o.dec.Ref.Rule)
	}
	if o.dec.WouldDeny {
		f["would_deny"] = trueValue
	}
	if o.dec.Audit {
		f["audit"] = trueValue
		f["audit_policy"] = s.values.get(o.dec.AuditRef.Policy)
	}
	if o.dec.Version != "" {
		f["bundle_version"] = s.values.get(o.dec.Version)
	}
	md.st.Fields = f
	return &md.st
}

var trueValue = structpb.NewBoolValue(true)

// valueCache shares immutable structpb string Values for the bounded
// strings of an answer (reason codes, modes, rule references, versions):
// responses are only marshalled, never modified, so one Value can appear in
// many. The cache stops growing at maxCachedValues.
type valueCache struct {
	m sync.Map // string -> *structpb.Value
	n atomic.Int64
}

const maxCachedValues = 1 << 14

func (c *valueCache) get(v string) *structpb.Value {
	if x, ok := c.m.Load(v); ok {
		return x.(*structpb.Value)
	}
	val := structpb.NewStringValue(v)
	if c.n.Load() < maxCachedValues {
		if _, loaded := c.m.LoadOrStore(v, val); !loaded {
			c.n.Add(1)
		}
	}
	return val
}

// recoverInterceptor turns a panic in any unary handler into an answer: a
// deny CheckResponse for Check, codes.Internal for anything else.
func (s *Server) recoverInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	defer func() {
		r := recover()
		if r == nil {
			return
		}
		s.log.Error("panic in gRPC handler", slog.String("method", info.FullMethod), slog.Any("panic", r))
		if _, ok := req.(*authv3.CheckRequest); ok {
			o := outcome{decisionID: s.newDecisionID(), dec: policies.Deny(policies.ReasonDeniedInternal)}
			resp, err = s.checkResponse(&o), nil
			return
		}
		resp, err = nil, status.Error(codes.Internal, "internal error")
	}()
	return handler(ctx, req)
}

// GRPCServerOptions are the options the server's gRPC server needs (the
// panic interceptor); add transport credentials to them.
func (s *Server) GRPCServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(s.recoverInterceptor),
		// CheckRequests decoded for what the server reads; answers
		// encoded with Envoy's generated marshalers (-tags vtprotobuf).
		grpc.ForceServerCodec(checkCodec{}),
	}
}

// Register registers the Authorization service, health and reflection.
// Health reports NOT_SERVING until the server is ready, and follows its
// readiness afterwards (see WatchReadiness).
func (s *Server) Register(g *grpc.Server) *health.Server {
	authv3.RegisterAuthorizationServer(g, s)
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	hs.SetServingStatus(authv3.Authorization_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_NOT_SERVING)
	healthpb.RegisterHealthServer(g, hs)
	reflection.Register(g)
	s.health.Store(hs)
	s.updateHealth()
	return hs
}
