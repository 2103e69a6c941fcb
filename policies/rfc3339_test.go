package policies

import (
	"math/rand/v2"
	"testing"
	"time"
)

func checkRFC3339(t *testing.T, s string) {
	t.Helper()
	want, err := time.Parse(time.RFC3339, s)
	got, ok := parseRFC3339Portable(s)
	if ok != (err == nil) {
		t.Fatalf("%q: parseRFC3339Portable ok=%v, time.Parse error %v", s, ok, err)
	}
	if ok && got != want.UnixNano() {
		t.Fatalf("%q: %d, time.Parse %d", s, got, want.UnixNano())
	}
}

var rfc3339Corpus = []string{
	"2026-03-01T00:00:00Z", "2026-03-01T23:59:59.123456789Z", "2026-03-01T23:59:59,5+02:00", "2026-03-01T1:02:03Z",
	"2024-02-29T12:00:00-07:30", "2023-02-29T12:00:00Z", "2026-13-01T00:00:00Z", "2026-00-10T00:00:00Z", "2026-04-31T00:00:00Z",
	"2026-03-01T24:00:00Z", "2026-03-01T12:60:00Z", "2026-03-01T12:00:60Z", "2026-03-01T12:00:00+24:60", "2026-03-01T12:00:00+25:00",
	"2026-03-01T12:00:00+02:61", "2026-03-01T12:00:00*02:00", "2026-03-01T12:00:00+0200", "2026-03-01t12:00:00Z", "2026-03-01T12:00:00z",
	"2026-03-01T12:00:00", "2026-03-01T12:00:00Zx", "2026-3-01T12:00:00Z", "2026-03-1T12:00:00Z", "0000-01-01T00:00:00Z",
	"9999-12-31T23:59:59.9999999999999Z", "1600-02-29T00:00:00Z", "1900-02-29T00:00:00Z", "2000-02-29T00:00:00Z", "1969-12-31T23:59:59.5Z",
	"2026-03-01T12:00:00.Z", "2026-03-01T12:00:00.1234567890123Z", "-026-03-01T12:00:00Z", "+026-03-01T12:00:00Z", "", "2026",
	"2026-03-01T12:00:00+-2:00", "2026-03-01T12:00:00+02:0a", "2026-03-01T12:0:00Z", "2026-03-01T012:00:00Z", "1677-09-21T00:12:43.145224192Z",
}

func TestParseRFC3339MatchesTimeParse(t *testing.T) {
	for _, s := range rfc3339Corpus {
		checkRFC3339(t, s)
	}
	r := rand.New(rand.NewPCG(5, 6))
	const alphabet = "0123456789-+:TZ.,t "
	for i := 0; i < 20000; i++ {
		b := []byte(rfc3339Corpus[r.IntN(len(rfc3339Corpus))])
		for k := 1 + r.IntN(3); k > 0 && len(b) > 0; k-- {
			j := r.IntN(len(b))
			switch r.IntN(3) {
			case 0:
				b[j] = alphabet[r.IntN(len(alphabet))]
			case 1:
				b = append(b[:j], b[j+1:]...)
			default:
				b = append(b[:j], append([]byte{alphabet[r.IntN(len(alphabet))]}, b[j:]...)...)
			}
		}
		checkRFC3339(t, string(b))
	}
}

func FuzzParseRFC3339(f *testing.F) {
	for _, s := range rfc3339Corpus {
		f.Add(s)
	}
	f.Fuzz(checkRFC3339)
}
