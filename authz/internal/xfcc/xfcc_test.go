package xfcc

import (
	"reflect"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    []Element
		wantErr string
	}{
		{
			name: "envoy documented example",
			in:   `By=http://frontend.lyft.com;Hash=468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688;Subject="/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=Test Client";URI=http://testclient.lyft.com`,
			want: []Element{{
				By:      []string{"http://frontend.lyft.com"},
				Hash:    "468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688",
				Subject: "/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=Test Client",
				URI:     []string{"http://testclient.lyft.com"},
			}},
		},
		{
			name: "two elements and DNS",
			in:   `By=spiffe://td/gw;URI=spiffe://td/a;DNS=a.example;DNS=b.example,By=spiffe://td/b;Hash=ab;URI=spiffe://td/gw`,
			want: []Element{
				{By: []string{"spiffe://td/gw"}, URI: []string{"spiffe://td/a"}, DNS: []string{"a.example", "b.example"}},
				{By: []string{"spiffe://td/b"}, Hash: "ab", URI: []string{"spiffe://td/gw"}},
			},
		},
		{
			name: "quoted value with separators and escaped quote",
			in:   `Subject="CN=a,O=\"x;y\"";URI=spiffe://td/a`,
			want: []Element{{Subject: `CN=a,O="x;y"`, URI: []string{"spiffe://td/a"}}},
		},
		{
			name: "keys are case-insensitive and spaces around pairs are ignored",
			in:   ` by=spiffe://td/gw ; uri=spiffe://td/a `,
			want: []Element{{By: []string{"spiffe://td/gw"}, URI: []string{"spiffe://td/a"}}},
		},
		{name: "empty", in: ``, wantErr: "empty element"},
		{name: "trailing comma", in: `URI=spiffe://td/a,`, wantErr: "empty element"},
		{name: "unknown key", in: `URI=spiffe://td/a;Evil=1`, wantErr: "unknown key"},
		{name: "unterminated quote", in: `Subject="CN=a;URI=spiffe://td/a`, wantErr: "unterminated"},
		{name: "garbage after quote", in: `Subject="a"b;URI=x`, wantErr: "unexpected"},
		{name: "quote in unquoted value", in: `URI=spiffe://td/"a"`, wantErr: "unexpected"},
		{name: "equals in unquoted value", in: `URI=a=b`, wantErr: "unexpected"},
		{name: "key without value", in: `URI`, wantErr: "key without value"},
		{name: "empty key", in: `=x`, wantErr: "empty key"},
		{name: "duplicate hash", in: `Hash=a;Hash=b`, wantErr: "duplicate Hash"},
		{name: "invalid utf-8", in: "URI=spiffe://td/\xff", wantErr: "UTF-8"},
		{name: "oversized", in: "URI=" + strings.Repeat("a", MaxHeaderBytes), wantErr: "exceeds"},
		{name: "too many elements", in: strings.Repeat("URI=a,", MaxElements) + "URI=a", wantErr: "more than"},
		{name: "too many pairs", in: strings.Repeat("DNS=a;", MaxPairs) + "DNS=a", wantErr: "more than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Parse(%q) error = %v, want containing %q", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.in, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("Parse(%q) =\n%#v\nwant\n%#v", tt.in, got, tt.want)
			}
		})
	}
}

// FuzzParse checks that Parse never panics, respects its limits, and that a
// header rebuilt from its result (every value quoted) parses to the same
// elements.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		`By=http://frontend.lyft.com;Hash=468e;Subject="/C=US/CN=Test Client";URI=http://testclient.lyft.com`,
		`By=spiffe://td/gw;URI=spiffe://td/a;DNS=a,By=spiffe://td/b;URI=spiffe://td/gw`,
		`Subject="CN=a,O=\"x;y\"";URI=spiffe://td/a`,
		`Cert="-----BEGIN%20CERTIFICATE-----%0A";Chain="x"`,
		`URI=a,`, `"`, `=`, `;;`, `URI="\\"`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		els, err := Parse(s)
		if err != nil {
			return
		}
		if len(els) == 0 || len(els) > MaxElements {
			t.Fatalf("Parse(%q) returned %d elements", s, len(els))
		}
		again, err := Parse(format(els))
		if err != nil {
			t.Fatalf("re-parse of %q (from %q): %v", format(els), s, err)
		}
		if !reflect.DeepEqual(normalize(els), normalize(again)) {
			t.Fatalf("round trip of %q changed %#v into %#v", s, els, again)
		}
	})
}

func format(els []Element) string {
	q := func(v string) string {
		return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(v) + `"`
	}
	var parts []string
	for _, el := range els {
		var kv []string
		for _, v := range el.By {
			kv = append(kv, "By="+q(v))
		}
		for k, v := range map[string]string{"Hash": el.Hash, "Cert": el.Cert, "Chain": el.Chain, "Subject": el.Subject} {
			if v != "" {
				kv = append(kv, k+"="+q(v))
			}
		}
		for _, v := range el.URI {
			kv = append(kv, "URI="+q(v))
		}
		for _, v := range el.DNS {
			kv = append(kv, "DNS="+q(v))
		}
		if len(kv) == 0 {
			kv = append(kv, `DNS=""`)
		}
		parts = append(parts, strings.Join(kv, ";"))
	}
	return strings.Join(parts, ",")
}

// normalize maps an element with only empty fields to the one format emits.
func normalize(els []Element) []Element {
	out := make([]Element, len(els))
	for i, el := range els {
		if reflect.DeepEqual(el, Element{}) {
			el = Element{DNS: []string{""}}
		}
		out[i] = el
	}
	return out
}
