package wire

import (
	"slices"
	"time"

	"github.com/meshguard/meshguard/internal/jsonw"
)

// AppendJSON appends d as one JSON line (the decision-log line, and what a
// shipper sends): what json.Marshal writes (the tests compare the two),
// without reflection.
func (d *Decision) AppendJSON(b []byte) []byte {
	e := d
	b = append(b, '{')
	b = jsonw.Field(b, true, "time", e.Time.Format(time.RFC3339Nano))
	b = jsonw.Field(b, false, "decision_id", e.DecisionID)
	opt := func(name, v string) {
		if v != "" {
			b = jsonw.Field(b, false, name, v)
		}
	}
	opt("request_id", e.RequestID)
	opt("trace_id", e.TraceID)
	b = jsonw.Field(b, false, "protocol", e.Protocol)
	opt("source", e.Source)
	b = jsonw.Field(b, false, "source_method", e.SourceMethod)
	opt("peer", e.Peer)
	opt("forwarded_client", e.ForwardedClient)
	if e.MTLS {
		b = jsonw.Bool(b, "mtls", true)
	}
	opt("source_ip", e.SourceIP)
	opt("remote_ip", e.RemoteIP)
	opt("destination_ip", e.DestinationIP)
	if e.DestinationPort != 0 {
		b = jsonw.Int(b, "destination_port", int64(e.DestinationPort))
	}
	opt("sni", e.SNI)
	opt("destination", e.Destination)
	opt("target_namespace", e.TargetNamespace)
	opt("target_service", e.TargetService)
	opt("target_gateway", e.TargetGateway)
	b = appendMap(b, "target_labels", e.TargetLabels)
	if e.TargetResolved {
		b = jsonw.Bool(b, "target_resolved", true)
	}
	opt("method", e.Method)
	opt("host", e.Host)
	opt("path", e.Path)
	opt("route", e.Route)
	opt("scope", e.Scope)
	b = appendJWT(b, `,"jwt":{`, e.JWT)
	b = appendJWT(b, `,"jwt_svid":{`, e.JWTSVID)
	b = jsonw.Bool(b, "allowed", e.Allowed)
	b = jsonw.Field(b, false, "reason", e.Reason)
	opt("mode", e.Mode)
	opt("policy", e.Policy)
	opt("rule", e.Rule)
	if e.WouldDeny {
		b = jsonw.Bool(b, "would_deny", true)
	}
	if e.Audit {
		b = jsonw.Bool(b, "audit", true)
	}
	opt("audit_policy", e.AuditPolicy)
	opt("bundle_version", e.BundleVersion)
	opt("error", e.Error)
	b = jsonw.Int(b, "latency_us", e.LatencyMicros)
	b = appendMap(b, "headers", e.Headers)
	if len(e.HeaderNames) > 0 {
		b = appendStrings(append(b, `,"header_names":`...), e.HeaderNames)
	}
	return append(b, '}', '\n')
}

// appendJWT appends a recorded token as the field opened by open (nothing
// for nil).
func appendJWT(b []byte, open string, j *DecisionJWT) []byte {
	if j == nil {
		return b
	}
	b = append(b, open...)
	n := len(b)
	jopt := func(name, v string) {
		if v != "" {
			b = jsonw.Field(b, len(b) == n, name, v)
		}
	}
	sep := func() {
		if len(b) != n {
			b = append(b, ',')
		}
	}
	jopt("issuer", j.Issuer)
	jopt("subject", j.Subject)
	jopt("principal", j.Principal)
	if j.SVID {
		sep()
		b = append(b, `"svid":true`...)
	}
	if len(j.Audiences) > 0 {
		sep()
		b = appendStrings(append(b, `"audiences":`...), j.Audiences)
	}
	jopt("presenter", j.Presenter)
	if len(j.Claims) > 0 {
		sep()
		b = append(append(b, `"claims":`...), j.Claims...)
	}
	if len(j.ClaimNames) > 0 {
		sep()
		b = appendStrings(append(b, `"claim_names":`...), j.ClaimNames)
	}
	return append(b, '}')
}

// appendMap appends `,"name":{...}` with sorted keys, as encoding/json
// does; nothing for an empty map.
func appendMap(b []byte, name string, m map[string]string) []byte {
	if len(m) == 0 {
		return b
	}
	names := make([]string, 0, len(m))
	for k := range m {
		names = append(names, k)
	}
	slices.Sort(names)
	b = append(b, ',', '"')
	b = append(b, name...)
	b = append(b, `":{`...)
	for i, k := range names {
		b = jsonw.Field(b, i == 0, k, m[k])
	}
	return append(b, '}')
}

// appendStrings appends a JSON array of strings.
func appendStrings(b []byte, ss []string) []byte {
	b = append(b, '[')
	for i, s := range ss {
		if i > 0 {
			b = append(b, ',')
		}
		b = jsonw.String(b, s)
	}
	return append(b, ']')
}
