package policytest_test

import (
	"testing"

	"github.com/meshguard/meshguard/policies/policytest"
)

func FuzzParseCases(f *testing.F) {
	f.Add([]byte(casesSrc))
	f.Add([]byte("- name: a\n  request: {source: 'spiffe://td/ns/a/sa/b', headers: {A: b}, jwt: {subject: 'spiffe://td/x', claims: {a: {b: [1, c]}}}}\n  expect: {allowed: true}\n"))
	f.Add([]byte("- &a {name: x, expect: {allowed: true}}\n- *a\n"))
	f.Add([]byte("---\n~\n---\n[]\n"))
	f.Add([]byte("- name: a\n  request: {sourceIp: '::ffff:10.0.0.1', remoteIp: 'fe80::1%eth0', destinationPort: 99999999999}\n  expect: {mode: dry-run}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cases, err := policytest.Parse("fuzz.yaml", data)
		if err != nil {
			return
		}
		for _, c := range cases {
			if c.Name == "" || c.Line <= 0 {
				t.Fatalf("case without name or line: %+v", c)
			}
			if _, err := c.Attributes(); err != nil {
				t.Fatalf("a loaded case has bad attributes: %v", err)
			}
		}
	})
}
