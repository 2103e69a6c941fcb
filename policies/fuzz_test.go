package policies

import (
	"net/url"
	"path"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// referenceReading is an independent oracle of how a lenient backend could
// read a path: unescape until stable, backslashes as slashes, ';' params
// dropped, cleaned, lower-cased.
func referenceReading(p string) string {
	if i := strings.IndexAny(p, "?#"); i >= 0 {
		p = p[:i]
	}
	for i := 0; i < 3; i++ {
		u, err := url.PathUnescape(p)
		if err != nil || u == p {
			break
		}
		p = u
	}
	p = strings.ReplaceAll(p, "\\", "/")
	segs := strings.Split(p, "/")
	for i, s := range segs {
		if j := strings.IndexByte(s, ';'); j >= 0 {
			segs[i] = s[:j]
		}
	}
	return strings.ToLower(path.Clean("/" + strings.Join(segs, "/")))
}

// FuzzPathNormalization: no path a lenient backend reads as /admin/... is
// ever allowed past a DENY on /admin and /admin/*, whatever the
// normalization setting; and normalization is idempotent.
func FuzzPathNormalization(f *testing.F) {
	for _, s := range []string{"/admin", "//admin", "/a/../admin", "/%2e%2e/admin", "/admin%2F", "/x\\..\\admin",
		"/..;/admin", "/admin%00", "/%252e/admin", "/ADMIN", "/public", "admin", "/a?b#c", "/%61dmin/x", "/./././admin"} {
		f.Add(s, uint8(0))
	}
	norms := []string{NormalizationBase, NormalizationMergeSlashes, NormalizationDecodeAndMergeSlashes}
	snaps := make([]*Snapshot, len(norms))
	for i, n := range norms {
		set := Set{Settings: MeshSettingsSpec{PathNormalization: n}}
		set.AuthorizationPolicies = []AuthorizationPolicy{{
			Metadata: ObjectMeta{Name: "deny-admin", Namespace: "shop"},
			Spec:     AuthorizationPolicySpec{Action: "DENY", Rules: []Rule{{To: []RuleTo{{Operation: Operation{Paths: []string{"/admin", "/admin/*"}}}}}}},
		}}
		s, diags := compileSet(&set)
		if diags.HasErrors() {
			f.Fatal(diags)
		}
		snaps[i] = s
	}
	src := spiffeid.RequireFromString("spiffe://td/ns/shop/sa/x")
	f.Fuzz(func(t *testing.T, p string, which uint8) {
		i := int(which) % len(norms)
		a := &Attributes{Peer: src, Method: "GET", Path: p, Target: Target{Namespace: "shop"}}
		d := snaps[i].Decide(a)
		ref := referenceReading(p)
		if d.Allowed && (ref == "/admin" || strings.HasPrefix(ref, "/admin/")) {
			t.Fatalf("%s: %q (read as %q) allowed past DENY: %+v", norms[i], p, ref, d)
		}
		v := viewPath(p, norms[i])
		// viewPath reads the path up to '?' or '#' in one pass: its readings
		// are those of the path cut there, even when it finds the path
		// clean and rewrites nothing.
		if cut := stripQuery(p); v.norm != normalizePath(cut, norms[i]) || v.alt != aggressivePath(cut) {
			t.Fatalf("%s: %q: readings %q, %q; of %q: %q, %q", norms[i], p, v.norm, v.alt, cut, normalizePath(cut, norms[i]), aggressivePath(cut))
		}
		if v.unsafe == "" {
			if again := normalizePath(v.norm, norms[i]); again != v.norm {
				t.Fatalf("%s: normalization not idempotent: %q -> %q -> %q", norms[i], p, v.norm, again)
			}
		}
	})
}

// referenceIDMatch matches a SPIFFE ID against a pattern segment by segment.
func referenceIDMatch(pattern, id string) bool {
	pt := strings.TrimPrefix(pattern, "spiffe://")
	it := strings.TrimPrefix(id, "spiffe://")
	ptd, ppath, phas := strings.Cut(pt, "/")
	itd, ipath, ihas := strings.Cut(it, "/")
	if ptd != itd {
		return false
	}
	if !phas {
		return true
	}
	if !ihas {
		return false
	}
	ps, is := strings.Split(ppath, "/"), strings.Split(ipath, "/")
	for i, s := range ps {
		if s == "**" && i == len(ps)-1 {
			return len(is) > i
		}
		if i >= len(is) || (s != "*" && s != is[i]) {
			return false
		}
	}
	return len(ps) == len(is)
}

// FuzzIDPattern checks the SPIFFE ID pattern parser and matcher against a
// reference matcher.
func FuzzIDPattern(f *testing.F) {
	seeds := [][2]string{
		{"spiffe://td/ns/*/sa/web", "spiffe://td/ns/shop/sa/web"},
		{"spiffe://td/ns/*/sa/web", "spiffe://td/ns/a/b/sa/web"},
		{"spiffe://td", "spiffe://td/x"},
		{"spiffe://td/ns/ops/**", "spiffe://td/ns/ops"},
		{"spiffe://td/a", "spiffe://td/a"},
		{"spiffe://td/*", "spiffe://other/x"},
		{"spiffe://TD/a", "spiffe://td/a"},
		{"spiffe://td/a/../b", "spiffe://td/b"},
	}
	for _, s := range seeds {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, pattern, id string) {
		p, err := parseIDPattern(pattern)
		if err != nil {
			return
		}
		sid, err := spiffeid.FromString(id)
		if err != nil {
			return
		}
		got := p.match(sid)
		if want := referenceIDMatch(pattern, sid.String()); got != want {
			t.Fatalf("pattern %q id %q: got %v, reference %v", pattern, id, got, want)
		}
	})
}
