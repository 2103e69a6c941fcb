package policies_test

import (
	"fmt"
	"testing"

	"github.com/meshguard/meshguard/internal/testbed/policygen"
	"github.com/meshguard/meshguard/policies"
)

func compileRealistic(b *testing.B, rules int) (*policies.Snapshot, []policies.Attributes) {
	b.Helper()
	set, m := policygen.Realistic(rules, 1)
	s := compileSet(b, "", set)
	if m.Services > 256 {
		m.Services = 256 // the same traffic for every set size: see bench/policybench
	}
	return s, policygen.Requests(&set, m, 4096, 2)
}

// BenchmarkDecide measures one decision against realistic sets of 10, 1,000
// and 100,000 rules (see internal/testbed/policygen for the mix).
func BenchmarkDecide(b *testing.B) {
	for _, rules := range []int{10, 1000, 100000} {
		b.Run(fmt.Sprintf("rules=%d", rules), func(b *testing.B) {
			s, reqs := compileRealistic(b, rules)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				s.Decide(&reqs[i&4095])
			}
		})
	}
}

// BenchmarkCompile measures compiling a set of about 10,000 policies. The
// bundle is a literal each time: one from NewBundle or DecodeBundle already
// holds its snapshot.
func BenchmarkCompile(b *testing.B) {
	set, _ := policygen.Realistic(10000*policygen.RulesPerService*4/5, 1)
	bu, _, err := policies.NewBundle("", set)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(len(set.AuthorizationPolicies)+len(set.IdentityPolicies)), "policies")
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		lit := policies.Bundle{Format: bu.Format, Version: bu.Version, Hash: bu.Hash, Set: bu.Set}
		if _, err := policies.Compile(&lit); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkLoadBundle is what every enforcement point does with a bundle it
// receives: decode it (format, hash, validation) and compile it into a
// snapshot. Sizes: 1,000 rules and about 10,000 policies.
func BenchmarkLoadBundle(b *testing.B) {
	for _, rules := range []int{1000, 10000 * policygen.RulesPerService * 4 / 5} {
		set, _ := policygen.Realistic(rules, 1)
		bu, _, err := policies.NewBundle("", set)
		if err != nil {
			b.Fatal(err)
		}
		data, err := bu.Encode()
		if err != nil {
			b.Fatal(err)
		}
		b.Run(fmt.Sprintf("rules=%d", rules), func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				d, err := policies.DecodeBundle(data)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := policies.Compile(d); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
