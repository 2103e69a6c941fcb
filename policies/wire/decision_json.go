package wire

import (
	"fmt"
	"time"
	"unsafe"

	"github.com/meshguard/meshguard/policies/internal/strictjson"
)

// The decoding table of Decision, written by hand (jsongen has no
// time.Time): policy replay and the control plane's intake decode millions
// of decision-log lines, and reflection-based decoding was most of their
// cost. TestDecodeDecisionMatchesEncodingJSON and FuzzDecodeDecision hold
// it to encoding/json with DisallowUnknownFields.
var (
	jsonDecisionJWT = &strictjson.Type{
		Name: "wire.DecisionJWT",
		Size: unsafe.Sizeof(DecisionJWT{}),
		New:  strictjson.New[DecisionJWT],
		Fields: []strictjson.Field{
			{Name: "issuer", Offset: unsafe.Offsetof(DecisionJWT{}.Issuer), Kind: strictjson.KString},
			{Name: "subject", Offset: unsafe.Offsetof(DecisionJWT{}.Subject), Kind: strictjson.KString},
			{Name: "principal", Offset: unsafe.Offsetof(DecisionJWT{}.Principal), Kind: strictjson.KString},
			{Name: "svid", Offset: unsafe.Offsetof(DecisionJWT{}.SVID), Kind: strictjson.KBool},
			{Name: "audiences", Offset: unsafe.Offsetof(DecisionJWT{}.Audiences), Kind: strictjson.KStrings},
			{Name: "presenter", Offset: unsafe.Offsetof(DecisionJWT{}.Presenter), Kind: strictjson.KString},
			{Name: "claims", Offset: unsafe.Offsetof(DecisionJWT{}.Claims), Kind: strictjson.KRaw},
			{Name: "claim_names", Offset: unsafe.Offsetof(DecisionJWT{}.ClaimNames), Kind: strictjson.KStrings},
		},
	}
	jsonDecisionBatch = &strictjson.Type{
		Name: "wire.DecisionBatch",
		Size: unsafe.Sizeof(DecisionBatch{}),
		Fields: []strictjson.Field{
			{Name: "reporter", Offset: unsafe.Offsetof(DecisionBatch{}.Reporter), Kind: strictjson.KString},
			{Name: "dropped", Offset: unsafe.Offsetof(DecisionBatch{}.Dropped), Kind: strictjson.KUint64},
			{Name: "decisions", Offset: unsafe.Offsetof(DecisionBatch{}.Decisions), Kind: strictjson.KStructs, Type: jsonDecision},
		},
	}
	jsonDecision = &strictjson.Type{
		Name: "wire.Decision",
		Size: unsafe.Sizeof(Decision{}),
		Grow: strictjson.Grow[Decision],
		Fields: []strictjson.Field{
			{Name: "time", Offset: unsafe.Offsetof(Decision{}.Time), Kind: strictjson.KCustom, Decode: decodeTime},
			{Name: "decision_id", Offset: unsafe.Offsetof(Decision{}.DecisionID), Kind: strictjson.KString},
			{Name: "request_id", Offset: unsafe.Offsetof(Decision{}.RequestID), Kind: strictjson.KString},
			{Name: "trace_id", Offset: unsafe.Offsetof(Decision{}.TraceID), Kind: strictjson.KString},
			{Name: "protocol", Offset: unsafe.Offsetof(Decision{}.Protocol), Kind: strictjson.KString},
			{Name: "source", Offset: unsafe.Offsetof(Decision{}.Source), Kind: strictjson.KString},
			{Name: "source_method", Offset: unsafe.Offsetof(Decision{}.SourceMethod), Kind: strictjson.KString},
			{Name: "peer", Offset: unsafe.Offsetof(Decision{}.Peer), Kind: strictjson.KString},
			{Name: "forwarded_client", Offset: unsafe.Offsetof(Decision{}.ForwardedClient), Kind: strictjson.KString},
			{Name: "mtls", Offset: unsafe.Offsetof(Decision{}.MTLS), Kind: strictjson.KBool},
			{Name: "source_ip", Offset: unsafe.Offsetof(Decision{}.SourceIP), Kind: strictjson.KString},
			{Name: "remote_ip", Offset: unsafe.Offsetof(Decision{}.RemoteIP), Kind: strictjson.KString},
			{Name: "destination_ip", Offset: unsafe.Offsetof(Decision{}.DestinationIP), Kind: strictjson.KString},
			{Name: "destination_port", Offset: unsafe.Offsetof(Decision{}.DestinationPort), Kind: strictjson.KUint32},
			{Name: "sni", Offset: unsafe.Offsetof(Decision{}.SNI), Kind: strictjson.KString},
			{Name: "destination", Offset: unsafe.Offsetof(Decision{}.Destination), Kind: strictjson.KString},
			{Name: "target_namespace", Offset: unsafe.Offsetof(Decision{}.TargetNamespace), Kind: strictjson.KString},
			{Name: "target_service", Offset: unsafe.Offsetof(Decision{}.TargetService), Kind: strictjson.KString},
			{Name: "target_gateway", Offset: unsafe.Offsetof(Decision{}.TargetGateway), Kind: strictjson.KString},
			{Name: "target_labels", Offset: unsafe.Offsetof(Decision{}.TargetLabels), Kind: strictjson.KStringMap},
			{Name: "target_resolved", Offset: unsafe.Offsetof(Decision{}.TargetResolved), Kind: strictjson.KBool},
			{Name: "method", Offset: unsafe.Offsetof(Decision{}.Method), Kind: strictjson.KString},
			{Name: "host", Offset: unsafe.Offsetof(Decision{}.Host), Kind: strictjson.KString},
			{Name: "path", Offset: unsafe.Offsetof(Decision{}.Path), Kind: strictjson.KString},
			{Name: "route", Offset: unsafe.Offsetof(Decision{}.Route), Kind: strictjson.KString},
			{Name: "scope", Offset: unsafe.Offsetof(Decision{}.Scope), Kind: strictjson.KString},
			{Name: "jwt", Offset: unsafe.Offsetof(Decision{}.JWT), Kind: strictjson.KPtrStruct, Type: jsonDecisionJWT},
			{Name: "jwt_svid", Offset: unsafe.Offsetof(Decision{}.JWTSVID), Kind: strictjson.KPtrStruct, Type: jsonDecisionJWT},
			{Name: "allowed", Offset: unsafe.Offsetof(Decision{}.Allowed), Kind: strictjson.KBool},
			{Name: "reason", Offset: unsafe.Offsetof(Decision{}.Reason), Kind: strictjson.KString},
			{Name: "mode", Offset: unsafe.Offsetof(Decision{}.Mode), Kind: strictjson.KString},
			{Name: "policy", Offset: unsafe.Offsetof(Decision{}.Policy), Kind: strictjson.KString},
			{Name: "rule", Offset: unsafe.Offsetof(Decision{}.Rule), Kind: strictjson.KString},
			{Name: "would_deny", Offset: unsafe.Offsetof(Decision{}.WouldDeny), Kind: strictjson.KBool},
			{Name: "audit", Offset: unsafe.Offsetof(Decision{}.Audit), Kind: strictjson.KBool},
			{Name: "audit_policy", Offset: unsafe.Offsetof(Decision{}.AuditPolicy), Kind: strictjson.KString},
			{Name: "bundle_version", Offset: unsafe.Offsetof(Decision{}.BundleVersion), Kind: strictjson.KString},
			{Name: "error", Offset: unsafe.Offsetof(Decision{}.Error), Kind: strictjson.KString},
			{Name: "latency_us", Offset: unsafe.Offsetof(Decision{}.LatencyMicros), Kind: strictjson.KInt64},
			{Name: "headers", Offset: unsafe.Offsetof(Decision{}.Headers), Kind: strictjson.KStringMap},
			{Name: "header_names", Offset: unsafe.Offsetof(Decision{}.HeaderNames), Kind: strictjson.KStrings},
		},
	}
)

// decodeTime reads a time as time.Time's UnmarshalJSON does: null leaves
// it, otherwise an RFC 3339 string.
func decodeTime(d *strictjson.Decoder, p unsafe.Pointer) {
	if d.Null() {
		return
	}
	var s string
	d.String(&s, "time.Time")
	if d.Err() != nil {
		return
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		d.Fail(fmt.Errorf("parsing time %q: %w", s, err))
		return
	}
	*(*time.Time)(p) = t
}

// DecodeDecision decodes one recorded decision (a decision-log line)
// strictly: unknown fields and trailing data are errors, as with
// encoding/json's DisallowUnknownFields. Decode into a zero Decision (as
// with encoding/json, a map already in d is added to).
func DecodeDecision(data []byte, d *Decision) error {
	return strictjson.Decode(data, "the decision", func(dec *strictjson.Decoder) {
		dec.DecodeStruct(jsonDecision, unsafe.Pointer(d))
	})
}

// DecodeDecisionBatch decodes a DecisionBatch strictly (see DecodeDecision).
func DecodeDecisionBatch(data []byte) (*DecisionBatch, error) {
	var b DecisionBatch
	err := strictjson.Decode(data, "the decision batch", func(dec *strictjson.Decoder) {
		dec.DecodeStruct(jsonDecisionBatch, unsafe.Pointer(&b))
	})
	if err != nil {
		return nil, err
	}
	return &b, nil
}
