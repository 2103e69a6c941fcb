package wire_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"

	"github.com/meshguard/meshguard/policies/wire"
)

// The plugin configuration is decoded, and events and deny bodies are
// encoded, by generated code rather than encoding/json (which the wasm
// filter cannot afford to link). These tests hold the two together.

func referenceDecode(data []byte) (wire.FilterConfig, error) {
	var fc wire.FilterConfig
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&fc); err != nil {
		return fc, err
	}
	if dec.More() {
		return fc, errors.New("trailing data")
	}
	return fc, nil
}

func checkFilterConfig(t *testing.T, data []byte) {
	t.Helper()
	want, wantErr := referenceDecode(data)
	got, gotErr := wire.DecodeFilterConfig(data)
	if (wantErr == nil) != (gotErr == nil) {
		t.Fatalf("encoding/json error %v, generated decoder error %v\ninput: %q", wantErr, gotErr, data)
	}
	if wantErr == nil && !reflect.DeepEqual(want, got) {
		t.Fatalf("decoded values differ\ninput: %q\nencoding/json: %#v\ngenerated:     %#v", data, want, got)
	}
}

func filterConfigCorpus() [][]byte {
	full, _ := json.Marshal(wire.FilterConfig{
		Bundle:       wire.RawJSON(`{"format":"meshguard.dev/bundle/v1","set":{"settings":{}}}`),
		Workload:     wire.Workload{ID: "spiffe://mesh.test/ns/a/sa/b", Namespace: "a", Labels: map[string]string{"app": "b", "v": "1"}, Service: "b", Gateway: "g"},
		RequireMTLS:  true,
		ControlPlane: wire.ControlPlane{Cluster: "cp", Authority: "cp.local", Path: "/v1/events", TickMillis: 200, MaxBatch: 50, TimeoutMilli: 1000},
		Detection:    &wire.Detection{Capacity: 10, EdgeCache: 20, WarmupSeconds: 3, MaxEvents: 100},
	})
	out := [][]byte{full}
	for _, s := range []string{
		``, `null`, `{}`, `{}]`, `{} x`, `[]`, `{"bundle":null}`, `{"bundle":1}`, `{"bundle":"x"}`, `{"bundle":[1, {"a":null}] }`,
		`{"bundle":{},"bundle":{"a":1}}`, `{"bundle":{"a":}}`, `{"Bundle":{}}`, `{"bogus":1}`,
		`{"requireMtls":"true"}`, `{"requireMTLS":true}`, `{"requireMtls":null}`,
		`{"controlPlane":{"tickMillis":-1}}`, `{"controlPlane":{"tickMillis":4294967296}}`, `{"controlPlane":{"tickMillis":4294967295}}`,
		`{"controlPlane":{"maxBatch":1.5}}`, `{"controlPlane":{"timeoutMillis":1e3}}`, `{"controlPlane":null}`, `{"controlPlane":[]}`,
		`{"detection":null}`, `{"detection":{}}`, `{"detection":{"capacity":1},"detection":{"edgeCache":2}}`, `{"detection":{"maxEvents":-5}}`,
		`{"workload":{"labels":{"a":"b"},"labels":{"c":null}}}`, `{"workload":{"labels":null}}`, `{"workload":{"labels":[]}}`,
		`{"workload":{"id":"\ud800"}}`, `{"WORKLOAD":{"ID":"x"}}`,
		`{"workloads":{"a.ns":{"id":"spiffe://td/a","labels":{"app":"a"}},"b.ns":null}}`, `{"workloads":{"a.ns":{"id":"x"},"a.ns":{"service":"s"}}}`,
		`{"workloads":null}`, `{"workloads":{}}`, `{"workloads":[]}`, `{"workloads":{"a":1}}`, `{"workloads":{"a":{"bogus":1}}}`,
		`{"bundleFetch":{}}`, `{"bundleFetch":null}`, `{"bundleFetch":{"path":"/v1/bundle","waitMillis":20000,"retryMillis":1,"maxRetryMillis":2,"maxBytes":3}}`,
		`{"bundleFetch":{"waitMillis":-1}}`, `{"bundleFetch":{"maxBytes":1.5}}`, `{"bundleFetch":{"bogus":1}}`, `{"bundleFetch":[]}`,
		`{"Workloads":{"a":{"ID":"x"}}}`, `{"workloads":{"a":{"id":"x"}},"workloads":{"b":{}}}`, `{"workloads":{"a":{"labels":{"k":"v"}},"a":{}}}`,
	} {
		out = append(out, []byte(s))
	}
	// encoding/json's nesting limit: 10000 levels, the outer object counted.
	for _, depth := range []int{9999, 10000} {
		out = append(out, []byte(`{"bundle":`+strings.Repeat("[", depth)+strings.Repeat("]", depth)+`}`))
		out = append(out, []byte(`{"controlPlane":`+strings.Repeat(`{"a":`, depth)+"1"+strings.Repeat("}", depth)+`}`))
	}
	return out
}

func TestFilterConfigCodecMatchesEncodingJSON(t *testing.T) {
	corpus := filterConfigCorpus()
	for _, data := range corpus {
		checkFilterConfig(t, data)
	}
	r := rand.New(rand.NewPCG(3, 4))
	for i := 0; i < 3000; i++ {
		data := append([]byte(nil), corpus[r.IntN(len(corpus))]...)
		if len(data) == 0 {
			continue
		}
		j := r.IntN(len(data))
		switch r.IntN(3) {
		case 0:
			data[j] = "{}[]\",:0n-e\x00 x"[r.IntN(14)]
		case 1:
			data = append(data[:j], data[j+1:]...)
		default:
			data = append(data[:j], append([]byte{"{}[]\",:1"[r.IntN(8)]}, data[j:]...)...)
		}
		checkFilterConfig(t, data)
	}
}

func FuzzFilterConfigCodec(f *testing.F) {
	for _, data := range filterConfigCorpus() {
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) { checkFilterConfig(t, data) })
}

func TestEventEncodingMatchesJSONMarshal(t *testing.T) {
	batches := []wire.EventBatch{
		{Reporter: "r"},
		{Reporter: "spiffe://mesh.test/ns/a/sa/b", BundleVersion: "v<1>", Dropped: 3, Events: []wire.Event{}},
		{Reporter: "x", Events: []wire.Event{
			{Kind: wire.EventAnomaly, Detector: "rate", Source: "spiffe://a/b", Destination: "d&e", Route: "r", Method: "GET",
				Response: "log", Profile: "p", Score: 4.25, Count: 12, UnixMillis: 1700000000123, Detail: "z=\u2028 \x01 \xff"},
			{Kind: wire.EventEdge, Score: 1e21, UnixMillis: -1},
			{Kind: wire.EventDecision, Score: 1e-7},
			{Kind: wire.EventDecision, Score: math.SmallestNonzeroFloat64, Count: math.MaxUint64},
			{Kind: wire.EventDecision, Score: -0.000001, UnixMillis: math.MinInt64},
		}},
	}
	for _, b := range batches {
		want, err := json.Marshal(&b)
		if err != nil {
			t.Fatal(err)
		}
		if got := b.AppendJSON(nil); !bytes.Equal(got, want) {
			t.Errorf("event batch\ngot  %s\nwant %s", got, want)
		}
	}
	for _, d := range []wire.DenyBody{{Reason: "denied"}, {Reason: "a", Policy: "ns/p", Rule: "r#1", BundleVersion: "v1"}} {
		want, _ := json.Marshal(&d)
		if got := d.AppendJSON([]byte("prefix")); !bytes.Equal(got, append([]byte("prefix"), want...)) {
			t.Errorf("deny body\ngot  %s\nwant %s", got, want)
		}
	}
}
