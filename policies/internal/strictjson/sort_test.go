package strictjson

import (
	"math/rand/v2"
	"slices"
	"testing"
)

func TestSortStrings(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	alphabet := []string{"", "a", "b", "ab", "ba", "é", "\x00", "z", "aa"}
	for n := range 70 {
		for range 20 {
			s := make([]string, n)
			for i := range s {
				s[i] = alphabet[r.IntN(len(alphabet))] + alphabet[r.IntN(len(alphabet))]
			}
			want := slices.Clone(s)
			slices.Sort(want)
			SortStrings(s)
			if !slices.Equal(s, want) {
				t.Fatalf("SortStrings = %q, want %q", s, want)
			}
		}
	}
}
