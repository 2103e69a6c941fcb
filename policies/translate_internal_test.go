package policies

import (
	"math/rand"
	"regexp"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// TestPeerRegexp: for every peer field, value, side and set of mesh trust
// domains, the expression matches exactly the peers the engine's matcher
// matches, over thousands of IDs built to meet the values often.
func TestPeerRegexp(t *testing.T) {
	tds := []string{"cluster.local", "mesh.test", "alias.test", "other.local", "foreign.example", "ns"}
	segs := []string{"ns", "sa", "prod", "web", "a", "b", "x.y", "prod2", "sa", "ns"}
	rng := rand.New(rand.NewSource(3))
	randomID := func() spiffeid.ID {
		var b strings.Builder
		b.WriteString("spiffe://" + tds[rng.Intn(len(tds))])
		switch rng.Intn(3) {
		case 0:
			b.WriteString("/ns/" + segs[rng.Intn(len(segs))] + "/sa/" + segs[rng.Intn(len(segs))])
		case 1:
			for range rng.Intn(7) {
				b.WriteString("/" + segs[rng.Intn(len(segs))])
			}
		default:
			b.WriteString("/ns/" + segs[rng.Intn(len(segs))])
			for range 1 + rng.Intn(4) {
				b.WriteString("/" + segs[rng.Intn(len(segs))])
			}
		}
		return spiffeid.RequireFromString(b.String())
	}
	values := map[PeerField][]string{
		PeerPrincipals: {"cluster.local/ns/prod/sa/web", "mesh.test/ns/prod/sa/web", "alias.test/ns/a/sa/b", "foreign.example/ns/prod/sa/web",
			"cluster.local/ns/prod/*", "mesh.test/ns/*", "*/sa/web", "*", "*.test/ns/prod/sa/web", "*.local/ns/prod/sa/web", "cluster.local/a/b",
			"mesh.test/ns/prod/sa/web/x", "spiffe://mesh.test/ns/a/sa/b", "foreign.example*", "*local/ns/a/sa/b", "other.local/ns/prod/sa/web"},
		PeerNamespaces:      {"prod", "pro*", "*od", "*", "ns", "sa", "a"},
		PeerServiceAccounts: {"prod/web", "web", "ns/sa", "a/b", "prod/sa"},
		PeerTrustDomains:    {"cluster.local", "mesh.test", "alias.test", "foreign.example", "*.test", "other*", "*", "ns"},
	}
	for _, local := range [][]string{{"cluster.local"}, {"mesh.test", "alias.test"}, {"mesh.test", "cluster.local"}} {
		s := &Snapshot{localTDs: local}
		ids := make([]spiffeid.ID, 4000)
		for i := range ids {
			ids[i] = randomID()
		}
		for field, vals := range values {
			for _, v := range vals {
				for _, deny := range []bool{false, true} {
					expr, err := s.PeerRegexp(field, v, "prod", deny)
					if err != nil {
						t.Fatalf("%s %q: %v", field, v, err)
					}
					re := regexp.MustCompile(expr)
					var f cfrom
					switch field {
					case PeerPrincipals:
						f.principals = principalSet{newPrincipalMatcher(strings.TrimPrefix(v, "spiffe://"), local)}
					case PeerNamespaces:
						f.namespaces = nsSet{newStrMatcher(v, false)}
					case PeerServiceAccounts:
						ns, sa, ok := strings.Cut(v, "/")
						if !ok {
							ns, sa = "prod", v
						}
						f.serviceAccounts = saSet{{ns: ns, sa: sa}}
					case PeerTrustDomains:
						f.trustDomains = tdSet{newTDMatcher(v, local)}
					}
					f.seal()
					for _, id := range ids {
						var p peerView
						p.init(id, local)
						want := f.matchPeer(&p, deny)
						if got := re.MatchString(id.String()); got != want {
							t.Fatalf("local %v, %s %q (deny %v) ~ %s: regexp %v, engine %v\n%s", local, field, v, deny, id, got, want, expr)
						}
					}
				}
			}
		}
	}
}

// FuzzPeerRegexp: for every value the expression is made of and every ID,
// expression and engine agree.
func FuzzPeerRegexp(f *testing.F) {
	f.Add(0, "cluster.local/ns/prod/sa/web", "spiffe://mesh.test/ns/prod/sa/web", false)
	f.Add(1, "pro*", "spiffe://td/ns/ns/prod/x", true)
	f.Add(2, "prod/web", "spiffe://td/ns/prod/x/sa/web/y", true)
	f.Add(3, "*.test", "spiffe://alias.test/a", false)
	fields := []PeerField{PeerPrincipals, PeerNamespaces, PeerServiceAccounts, PeerTrustDomains}
	local := []string{"mesh.test", "alias.test"}
	s := &Snapshot{localTDs: local}
	f.Fuzz(func(t *testing.T, field int, value, id string, deny bool) {
		pf := fields[uint(field)%uint(len(fields))]
		sid, err := spiffeid.FromString(id)
		if err != nil {
			return
		}
		expr, err := s.PeerRegexp(pf, value, "prod", deny)
		if err != nil {
			return
		}
		re, err := regexp.Compile(expr)
		if err != nil {
			t.Fatalf("%s: %v", expr, err)
		}
		var c cfrom
		switch pf {
		case PeerPrincipals:
			c.principals = principalSet{newPrincipalMatcher(strings.TrimPrefix(value, "spiffe://"), local)}
		case PeerNamespaces:
			c.namespaces = nsSet{newStrMatcher(value, false)}
		case PeerServiceAccounts:
			ns, sa, ok := strings.Cut(value, "/")
			if !ok {
				ns, sa = "prod", value
			}
			c.serviceAccounts = saSet{{ns: ns, sa: sa}}
		case PeerTrustDomains:
			c.trustDomains = tdSet{newTDMatcher(value, local)}
		}
		c.seal()
		var p peerView
		p.init(sid, local)
		if got, want := re.MatchString(sid.String()), c.matchPeer(&p, deny); got != want {
			t.Fatalf("%s %q (deny %v) ~ %s: regexp %v, engine %v (%s)", pf, value, deny, sid, got, want, expr)
		}
	})
}
