package console

import (
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshguard/meshguard/controlplane/api"
)

// FuzzParseDetail: a decision event's detail either reads as a reason code
// and a rule reference within their bounds, or is refused.
func FuzzParseDetail(f *testing.F) {
	for _, s := range []string{"", "allowed_by_policy", "denied_by_policy AuthorizationPolicy/ns/n#0", "denied x#y#z",
		"DENIED x", "denied_no_allow_match " + strings.Repeat("a", 600), "a b", " x", "denied\x00 y", "d <script>#<b>"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		reason, policy, rule, ok := parseDetail(s)
		if !ok {
			if reason != "" || policy != "" || rule != "" {
				t.Fatal("refused but returned parts")
			}
			return
		}
		if !reasonCode(reason) || len(policy)+len(rule) > maxRefLen || strings.Contains(rule, "#") {
			t.Fatalf("%q → %q %q %q", s, reason, policy, rule)
		}
	})
}

// FuzzObserve: whatever a reporter posts that the events endpoint
// accepts, the console keeps only SPIFFE IDs as nodes, keeps its bounds
// and never panics.
func FuzzObserve(f *testing.F) {
	f.Add("spiffe://cluster.local/ns/a/sa/b", `{"reporter":"x","events":[{"kind":"decision","source":"spiffe://cluster.local/ns/c/sa/d","response":"deny","detail":"denied_no_allow_match P#r","count":3,"unixMillis":1}]}`)
	f.Add("spiffe://cluster.local/ns/a/sa/b", `{"reporter":"x","events":[{"kind":"anomaly","source":"spiffe://x/<y>","detector":"rate","unixMillis":1},{"kind":"edge","source":"","destination":"<script>","detail":"unknown","unixMillis":1}]}`)
	f.Add("unauthenticated:spiffe://td/w", `{"reporter":"spiffe://td/w","events":[{"kind":"decision","source":"spiffe://td/w","response":"allow","detail":"allowed_no_policy","count":18446744073709551615,"unixMillis":1}]}`)
	f.Fuzz(func(t *testing.T, reporter, body string) {
		b, err := api.DecodeBatch([]byte(body))
		if err != nil {
			return
		}
		m := newModel(time.Now, 20, 40, nil)
		m.observe(reporter, b.Events)
		m.observe(reporter, b.Events)
		s := m.snapshot()
		if len(s.Nodes) > 20 || len(s.Edges) > 40 {
			t.Fatalf("%d nodes, %d edges", len(s.Nodes), len(s.Edges))
		}
		for _, n := range s.Nodes {
			if n.ID == Unauthenticated {
				continue
			}
			if _, err := spiffeid.FromString(n.ID); err != nil {
				t.Fatalf("node %q is not a SPIFFE ID", n.ID)
			}
		}
		for _, e := range s.Feed {
			for _, v := range []string{e.Route, e.Detail, e.Policy, e.Service} {
				if len(v) > maxRefLen || !utf8.ValidString(v) && utf8.ValidString(body) {
					t.Fatalf("feed field %q", v)
				}
			}
		}
		m.cut()
	})
}

// FuzzParseIdentity: the identity page takes a SPIFFE ID or the
// unauthenticated node, nothing else.
func FuzzParseIdentity(f *testing.F) {
	for _, s := range []string{"spiffe://cluster.local/ns/a/sa/b", Unauthenticated, hostileID, "spiffe://x/../y", "", "SPIFFE://X/Y"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, ok := parseIdentity(s)
		if !ok {
			return
		}
		if id == Unauthenticated {
			return
		}
		if _, err := spiffeid.FromString(id); err != nil || strings.ContainsAny(id, "<>\"'& ") {
			t.Fatalf("%q accepted as %q", s, id)
		}
	})
}
