package wire

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
	"time"
)

func fullDecision() Decision {
	return Decision{
		Time: time.Date(2026, 3, 4, 5, 6, 7, 8, time.UTC), DecisionID: "id", RequestID: "req", TraceID: "0af7651916cd43dd8448eb211c80319c",
		Protocol: "grpc", Source: "spiffe://td/ns/a/sa/x", SourceMethod: "xfcc", Peer: "spiffe://td/ns/gw/sa/gw", ForwardedClient: "spiffe://td/ns/a/sa/x",
		MTLS: true, SourceIP: "10.0.0.1", RemoteIP: "192.0.2.7", DestinationIP: "10.0.0.2", DestinationPort: 8080, SNI: "api.td",
		Destination: "spiffe://td/ns/b/sa/y", TargetNamespace: "b", TargetService: "y", TargetGateway: "gw",
		TargetLabels: map[string]string{"app": "y"}, TargetResolved: true, Method: "POST", Host: "y.b:8080", Path: "/v1/\"x\\é", Route: "y-api", Scope: "b/y",
		JWT: &DecisionJWT{Subject: "spiffe://td/ns/a/sa/x", Principal: "iss/spiffe://td/ns/a/sa/x", Issuer: "iss", SVID: true, Audiences: []string{"a", "b"}, Presenter: "azp",
			Claims: RawJSON(`{"groups":["g1"],"tier":"gold"}`), ClaimNames: []string{"groups", "tier", "team"}},
		Allowed: true, Reason: "allowed_by_policy", Mode: "dry-run", Policy: "AuthorizationPolicy/b/y", Rule: "1", WouldDeny: true,
		Audit: true, AuditPolicy: "ap", BundleVersion: "3-abc", Error: "e", LatencyMicros: 17,
		Headers: map[string]string{"x-tenant": "t1"}, HeaderNames: []string{"x-tenant", "x-ticket"},
	}
}

// stdDecode is the reference: encoding/json, unknown fields refused.
func stdDecode(data []byte) (Decision, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var d Decision
	if err := dec.Decode(&d); err != nil {
		return d, err
	}
	if dec.More() {
		return d, errTrailing
	}
	return d, nil
}

var errTrailing = bytes.ErrTooLarge

func TestDecodeDecisionMatchesEncodingJSON(t *testing.T) {
	full := fullDecision()
	line, _ := json.Marshal(&full)
	for _, in := range []string{
		string(line),
		`{"time":"2026-01-02T03:04:05Z","decision_id":"d","protocol":"grpc","source_method":"none","allowed":false,"reason":"r","latency_us":0}`,
		`{"time":null,"decision_id":"d","jwt":null,"headers":null}`,
	} {
		var got Decision
		if err := DecodeDecision([]byte(in), &got); err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		want, err := stdDecode([]byte(in))
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s:\n got %+v\nwant %+v", in, got, want)
		}
	}
	for _, bad := range []string{`{"time":"yesterday"}`, `{"unknown":1}`, `{"decision_id":"d"} {}`, `{"destination_port":-1}`, `{"mtls":"yes"}`, ``} {
		var d Decision
		if err := DecodeDecision([]byte(bad), &d); err == nil {
			t.Errorf("%q decoded", bad)
		}
		if _, err := stdDecode([]byte(bad)); err == nil {
			t.Errorf("%q: encoding/json accepts it", bad)
		}
	}
	b, err := DecodeDecisionBatch([]byte(`{"dropped":3,"decisions":[` + string(line) + `,` + string(line) + `]}`))
	if err != nil || b.Dropped != 3 || len(b.Decisions) != 2 || !reflect.DeepEqual(b.Decisions[1], full) {
		t.Errorf("batch: %v %+v", err, b)
	}
}

// FuzzDecodeDecision: whatever the strict decoder accepts, encoding/json
// (with unknown fields refused) accepts too and reads the same.
func FuzzDecodeDecision(f *testing.F) {
	full := fullDecision()
	line, _ := json.Marshal(&full)
	f.Add(line)
	f.Add([]byte(`{"time":"2026-01-02T03:04:05.5+01:00","decision_id":"d","target_labels":{"a":"b"},"header_names":["x"]}`))
	f.Add([]byte(`{"jwt":{"audiences":null}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var got Decision
		if err := DecodeDecision(data, &got); err != nil {
			return
		}
		want, err := stdDecode(data)
		if err != nil {
			t.Fatalf("strict decoder accepted what encoding/json refuses (%v): %q", err, data)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%q:\n got %+v\nwant %+v", data, got, want)
		}
	})
}
