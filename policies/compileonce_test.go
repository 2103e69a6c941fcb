package policies_test

import (
	"testing"

	"github.com/meshguard/meshguard/policies"
)

// A bundle compiles once: decoding validates it by compiling its set, and
// Compile hands that snapshot over instead of compiling it again. A literal
// bundle, which nothing has compiled, is compiled by Compile.
func TestCompileHandsOverTheDecodedSnapshot(t *testing.T) {
	_, b := examplesBundle(t)
	data, err := b.Encode()
	if err != nil {
		t.Fatal(err)
	}
	d, err := policies.DecodeBundle(data)
	if err != nil {
		t.Fatal(err)
	}
	first, err := policies.Compile(d)
	if err != nil {
		t.Fatal(err)
	}
	if allocs := testing.AllocsPerRun(10, func() { _, _ = policies.Compile(d) }); allocs != 0 {
		t.Errorf("Compile of a decoded bundle allocates %v times: it compiles again", allocs)
	}
	if again, _ := policies.Compile(d); again != first {
		t.Error("Compile of a decoded bundle returned a new snapshot")
	}
	if first.Version() != d.Version || first.Hash() != d.Hash {
		t.Errorf("snapshot %s %s, bundle %s %s", first.Version(), first.Hash(), d.Version, d.Hash)
	}
	lit := policies.Bundle{Format: d.Format, Version: d.Version, Hash: d.Hash, Set: d.Set}
	if allocs := testing.AllocsPerRun(2, func() { _, _ = policies.Compile(&lit) }); allocs == 0 {
		t.Error("Compile of a literal bundle did not compile")
	}
}
