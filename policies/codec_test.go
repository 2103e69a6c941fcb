package policies_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"

	"github.com/meshguard/meshguard/examples"
	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/source"
)

// The bundle is decoded and hashed by generated code, not encoding/json
// (which the wasm filter cannot afford to link). These tests hold the two
// together: the same inputs accepted and refused, the same values decoded,
// the same bytes encoded.

// referenceDecode is how bundles were decoded with encoding/json.
func referenceDecode(data []byte) (policies.Bundle, error) {
	var b policies.Bundle
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&b); err != nil {
		return b, err
	}
	if dec.More() {
		return b, errTrailing
	}
	return b, nil
}

type constErr string

func (e constErr) Error() string { return string(e) }

const errTrailing = constErr("trailing data")

func checkCodec(t *testing.T, data []byte) {
	t.Helper()
	want, wantErr := referenceDecode(data)
	got, gotErr := policies.DecodeBundleJSON(data)
	if (wantErr == nil) != (gotErr == nil) {
		t.Fatalf("encoding/json error %v, generated decoder error %v\ninput: %q", wantErr, gotErr, data)
	}
	if wantErr != nil {
		return
	}
	if !reflect.DeepEqual(want, got) {
		t.Fatalf("decoded values differ\ninput: %q\nencoding/json: %#v\ngenerated:     %#v", data, want, got)
	}
	wantJSON, err := json.Marshal(&want.Set)
	if err != nil {
		t.Fatal(err)
	}
	if gotJSON := policies.EncodeSetJSON(&got.Set); !bytes.Equal(wantJSON, gotJSON) {
		t.Fatalf("encodings differ\njson.Marshal: %s\ngenerated:    %s", wantJSON, gotJSON)
	}
	wantJSON, err = json.Marshal(&want)
	if err != nil {
		t.Fatal(err)
	}
	if gotJSON, err := got.Encode(); err != nil || !bytes.Equal(wantJSON, gotJSON) {
		t.Fatalf("bundle encodings differ (error %v)\njson.Marshal: %s\nEncode:       %s", err, wantJSON, gotJSON)
	}
}

// fill sets every field reachable from v to a non-zero value, varied by
// seed, with strings and numbers that exercise the encoder's escaping and
// number formatting.
func fill(v reflect.Value, seed int) {
	strs := []string{"a<b>&c", "é\u2028\u2029\x01\x7f\"\\/\b\f\n\r\t", "spiffe://mesh.test/ns/a/sa/*", "\xff\xfeinvalid", "DENY"}
	floats := []float64{0.1, 3, 1e-7, 1e21, 123456789.125, -2.5e-10}
	switch v.Kind() {
	case reflect.String:
		v.SetString(strs[seed%len(strs)])
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int64:
		v.SetInt(int64(seed*7919 - 3))
	case reflect.Uint32, reflect.Uint64:
		v.SetUint(uint64(seed*104729 + 1))
	case reflect.Float64:
		v.SetFloat(floats[seed%len(floats)])
	case reflect.Pointer:
		v.Set(reflect.New(v.Type().Elem()))
		fill(v.Elem(), seed+1)
	case reflect.Slice:
		if v.Type().Elem().Kind() == reflect.Uint8 {
			return // json.RawMessage
		}
		v.Set(reflect.MakeSlice(v.Type(), 2, 2))
		for i := 0; i < 2; i++ {
			fill(v.Index(i), seed+i+1)
		}
	case reflect.Map:
		v.Set(reflect.MakeMap(v.Type()))
		for i := 0; i < 3; i++ {
			k, e := reflect.New(v.Type().Key()).Elem(), reflect.New(v.Type().Elem()).Elem()
			fill(k, seed+i)
			fill(e, seed+i+2)
			v.SetMapIndex(k, e)
		}
	case reflect.Struct:
		for i := 0; i < v.NumField(); i++ {
			if v.Type().Field(i).IsExported() {
				fill(v.Field(i), seed+i)
			}
		}
	}
}

// codecCorpus is every shape the decoder must agree on: a bundle with
// every field set, the examples, and hand-written edge cases.
func codecCorpus(t testing.TB) [][]byte {
	var out [][]byte
	for seed := 0; seed < 4; seed++ {
		var b policies.Bundle
		fill(reflect.ValueOf(&b).Elem(), seed)
		data, err := json.Marshal(&b)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, data)
	}
	_, b := examplesBundle(t)
	data, err := b.Encode()
	if err != nil {
		t.Fatal(err)
	}
	out = append(out, data)
	for _, s := range []string{
		``, ` `, `null`, `[]`, `"x"`, `1`, `{}`, `{} `, `{}]`, `{}}`, `{} {`, `{}x`, `{"format":"a"}{"version":"b"}`,
		`{"format":"a","format":"b"}`, `{"FORMAT":"a","Version":"v"}`, `{"unknown":1}`, `{"set":null}`, `{"set":{"settings":null}}`,
		`{"format":null}`, `{"format":1}`, `{"format":true}`, `{"format":{}}`, `{"format":[]}`, `{"format":"\u00e9\ud83d\ude00\ud800\udc00\ud800x\udc00"}`,
		"{\"format\":\"\xff\xc3\x28\"}", "{\"format\":\"a\x01\"}", `{"format":"\x"}`, `{"format":"\u12"}`, `{"format":"a`, `{"format"}`, `{"format":}`, `{"format":"a",}`,
		`{"set":{"anomalyProfiles":[{"spec":{"rate":{"zScore":1e2,"minRps":-0}}}]}}`,
		`{"set":{"anomalyProfiles":[{"spec":{"rate":{"zScore":1e400}}}]}}`,
		`{"set":{"anomalyProfiles":[{"spec":{"errors":{"minRequests":1.0}}}]}}`,
		`{"set":{"anomalyProfiles":[{"spec":{"errors":{"minRequests":1e2}}}]}}`,
		`{"set":{"anomalyProfiles":[{"spec":{"errors":{"minRequests":-0}}}]}}`,
		`{"set":{"anomalyProfiles":[{"spec":{"errors":{"minRequests":99999999999999999999}}}]}}`,
		`{"set":{"anomalyProfiles":[{"spec":{"errors":{"minRequests":01}}}]}}`,
		`{"set":{"anomalyProfiles":[{"spec":{"errors":{"minRequests":"1"}}}]}}`,
		`{"set":{"anomalyProfiles":[{"spec":{"errors":{"minRequests":null}}}]}}`,
		`{"set":{"anomalyProfiles":[{"spec":{"responses":{"a":"b","a":null,"c":"d"},"responses":{"e":"f"}}}]}}`,
		`{"set":{"anomalyProfiles":[{"spec":{"responses":{"a":1}}}]}}`,
		`{"set":{"anomalyProfiles":[{"spec":{"responses":null}}]}}`,
		`{"set":{"anomalyProfiles":[{"spec":{"rate":null,"errors":{},"lateral":{"maxNewEdges":2},"lateral":{}}}]}}`,
		`{"set":{"routeOverrides":[{"spec":{"anomaly":{"rateZ":null,"minRps":2,"minRps":null}}}]}}`,
		`{"set":{"routeOverrides":[{"spec":{"anomaly":{"rateZ":"x"}}}]}}`,
		`{"set":{"identityPolicies":[{"spec":{"mode":false}},{"spec":{"mode":true}}]}}`,
		`{"set":{"identityPolicies":[{"spec":{"mode":false}},{"spec":{"mode":"dry-run","mode":null}}]}}`,
		`{"set":{"identityPolicies":[{"spec":{"mode":5}}]}}`,
		`{"set":{"identityPolicies":[{"spec":{"mode":{}}}]}}`,
		`{"set":{"identityPolicies":[{"spec":{"mode":"a\u0062"}}]}}`,
		`{"set":{"identityPolicies":[{"spec":{"rules":[{"name":"a","from":[{"ids":["x"]}]},{"name":"b"}],"rules":[{"mode":"off"}]}}]}}`,
		`{"set":{"identityPolicies":[{"spec":{"rules":[{"name":"a"},{"name":"b"}],"rules":[],"rules":[{"mode":"off"}]}}]}}`,
		`{"set":{"identityPolicies":[{"spec":{"workloads":["a","b"],"workloads":["c"],"workloads":[null,null]}}]}}`,
		`{"set":{"identityPolicies":[{"spec":{"workloads":[]}}]}}`,
		`{"set":{"identityPolicies":[{"spec":{"workloads":null}}]}}`,
		`{"set":{"identityPolicies":[{"spec":{"workloads":[1]}}]}}`,
		`{"set":{"identityPolicies":[{"spec":{"rules":[{"jwt":{"claims":[{"name":"a","values":[]},{"name":"b"}]}}]}}]}}`,
		`{"set":{"identityPolicies":null,"quarantines":[],"defaultDenies":[{}]}}`,
		`{"set":{"authorizationPolicies":[{"metadata":{"labels":{"a":"b"},"labels":{"c":"d"},"annotations":{}}}]}}`,
		`{"set":{"authorizationPolicies":[{"spec":{"selector":{"matchLabels":{"a":"b"}},"selector":{"matchLabels":{"c":"d"}}}}]}}`,
		`{"set":{"authorizationPolicies":[{"Loc":{}}]}}`,
		`{"set":{"authorizationPolicies":[{"spec":{"rules":[{"from":[{"source":{"principals":["\u212a"]}}]}]}}]}}`,
		"{\"set\":{\"settings\":{\"trustDomain\":\"a\"}, \"s\u212aettings\":{}}}",
		`{"ſet":{},"hash":"x","HASH":"y","formaT":"z"}`,
		" \t\r\n{ \"format\" : \"a\" , \"set\" : { } } \n",
		`{"format":"a"`, `{"set":{"authorizationPolicies":[}}`, `{"set":{"authorizationPolicies":[{},]}}`,
		`{"set":{"authorizationPolicies":{}}}`, `{"set":[]}`, `{"set":"x"}`,
		`{"set":{"anomalyProfiles":[{"spec":{"rate":{"zScore":1.}}}]}}`, `{"set":{"anomalyProfiles":[{"spec":{"rate":{"zScore":.5}}}]}}`,
		`{"set":{"anomalyProfiles":[{"spec":{"rate":{"zScore":-}}}]}}`, `{"set":{"anomalyProfiles":[{"spec":{"rate":{"zScore":1e}}}]}}`,
		`{"set":{"anomalyProfiles":[{"spec":{"rate":{"zScore":1E+2}}}]}}`, `{"set":{"anomalyProfiles":[{"spec":{"rate":{"zScore":tru}}}]}}`,
		`{"set":{"anomalyProfiles":[{"spec":{"lateral":{"maxNewEdges":true}}}]}}`, `{"set":{"routeOverrides":[{"spec":{"allowUnsafePaths":"true"}}]}}`,
		`{"set":{"routeOverrides":[{"spec":{"allowUnsafePaths":null,"disableExtAuthz":true}}]}}`,
		`{"set":{"routeOverrides":[{"spec":{"unknown":{"deep":[1,2,{"x":null}]}}}]}}`,
	} {
		out = append(out, []byte(s))
	}
	return out
}

func TestBundleCodecMatchesEncodingJSON(t *testing.T) {
	for _, data := range codecCorpus(t) {
		checkCodec(t, data)
	}
}

// examplesBundle is the bundle of the example policies, and their set.
func examplesBundle(t testing.TB) (policies.Set, *policies.Bundle) {
	t.Helper()
	set, _, err := source.LoadFS(examples.FS(), "policies")
	if err != nil {
		t.Fatal(err)
	}
	b, _, err := policies.NewBundle("examples", set)
	if err != nil {
		t.Fatal(err)
	}
	return set, b
}

func TestNewBundleHashIsOverJSONMarshal(t *testing.T) {
	set, b := examplesBundle(t)
	raw, _ := json.Marshal(&set)
	if !strings.HasPrefix(b.Hash, "sha256:") || b.Hash != hashOf(raw) {
		t.Fatalf("hash %s, want sha256 over json.Marshal", b.Hash)
	}
	data, _ := b.Encode()
	if _, err := policies.DecodeBundle(data); err != nil {
		t.Fatal(err)
	}
}

func FuzzBundleCodec(f *testing.F) {
	// The large documents of the corpus slow the fuzzer's mutation and
	// minimization to a crawl; TestBundleCodecMutations covers them.
	for _, data := range codecCorpus(f) {
		if len(data) <= 1024 {
			f.Add(data)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) { checkCodec(t, data) })
}

func hashOf(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// TestBundleCodecMutations runs the comparison on a few thousand random
// mutations of the corpus, the deterministic counterpart of the fuzz
// target (which found a NUL byte after the value read as the end).
func TestBundleCodecMutations(t *testing.T) {
	corpus := codecCorpus(t)
	for _, data := range mutations(corpus, 3000) {
		checkCodec(t, data)
	}
}

// mutations derives n inputs from corpus by flipping, dropping and
// inserting bytes, JSON punctuation among them.
func mutations(corpus [][]byte, n int) [][]byte {
	r := rand.New(rand.NewPCG(1, 2))
	const punct = "{}[]\",:0n-e\x00 "
	out := make([][]byte, 0, n)
	for len(out) < n {
		data := append([]byte(nil), corpus[r.IntN(len(corpus))]...)
		for k := 1 + r.IntN(4); k > 0 && len(data) > 0; k-- {
			i := r.IntN(len(data))
			switch r.IntN(3) {
			case 0:
				data[i] = byte(r.IntN(256))
			case 1:
				data = append(data[:i], data[i+1:]...)
			default:
				data = append(data[:i], append([]byte{punct[r.IntN(len(punct))]}, data[i:]...)...)
			}
		}
		out = append(out, data)
	}
	return out
}
