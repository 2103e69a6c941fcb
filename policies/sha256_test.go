package policies

import (
	"crypto/sha256"
	"strings"
	"testing"
)

func TestSum256(t *testing.T) {
	for n := 0; n < 300; n++ {
		data := []byte(strings.Repeat("meshguard", 40)[:n])
		if got, want := sum256Portable(data), sha256.Sum256(data); got != want {
			t.Fatalf("len %d: %x, want %x", n, got, want)
		}
	}
}

func FuzzSum256(f *testing.F) {
	f.Add([]byte("abc"))
	f.Add(make([]byte, 119))
	f.Fuzz(func(t *testing.T, data []byte) {
		if got, want := sum256Portable(data), sha256.Sum256(data); got != want {
			t.Fatalf("%x, want %x", got, want)
		}
	})
}
