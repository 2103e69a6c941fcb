package xds

import (
	"bytes"
	"encoding/json"
	"flag"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cache "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"

	"github.com/meshguard/meshguard/controlplane/mesh"
	"github.com/meshguard/meshguard/policies"
)

var update = flag.Bool("update", false, "rewrite testdata/out from the generator's output")

// goldenCase is one file of testdata/in.
type goldenCase struct {
	Mesh     mesh.File    `json:"mesh"`
	Policies policies.Set `json:"policies"`
}

func loadCase(t *testing.T, path string) (*mesh.Mesh, *EncodedBundle) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var c goldenCase
	if err := yaml.UnmarshalStrict(data, &c); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	m, err := c.Mesh.Validate()
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	b, _, err := policies.NewBundle("golden", c.Policies)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	eb, err := NewGenerator(m).Encode(b)
	if err != nil {
		t.Fatal(err)
	}
	return m, eb
}

// render turns snapshots into stable, indented JSON: nodes, types and
// resources sorted by name, protojson re-indented by encoding/json.
func render(t *testing.T, snaps map[string]*cache.Snapshot) []byte {
	t.Helper()
	out := map[string]map[string][]any{}
	for node, s := range snaps {
		byType := map[string][]any{}
		for i := range s.Resources {
			typ, err := cache.GetResponseTypeURL(types.ResponseType(i))
			if err != nil {
				continue
			}
			items := s.GetResources(typ)
			names := slices.Sorted(maps.Keys(items))
			for _, n := range names {
				data, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(items[n].(proto.Message))
				if err != nil {
					t.Fatal(err)
				}
				var v any
				if err := json.Unmarshal(data, &v); err != nil {
					t.Fatal(err)
				}
				byType[strings.TrimPrefix(typ, resource.APITypePrefix)] = append(byType[strings.TrimPrefix(typ, resource.APITypePrefix)], v)
			}
			if v := s.GetVersion(typ); v != "" {
				byType[strings.TrimPrefix(typ, resource.APITypePrefix)+"@version"] = []any{v}
			}
		}
		out[node] = byType
	}
	data, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return append(data, '\n')
}

func TestGolden(t *testing.T) {
	files, err := filepath.Glob("testdata/in/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden inputs: %v", err)
	}
	for _, in := range files {
		name := strings.TrimSuffix(filepath.Base(in), ".yaml")
		t.Run(name, func(t *testing.T) {
			m, eb := loadCase(t, in)
			g := NewGenerator(m)
			snaps := map[string]*cache.Snapshot{}
			for _, w := range m.Workloads {
				s, err := g.Snapshot(w, eb)
				if err != nil {
					t.Fatal(err)
				}
				snaps[w.Key] = s
			}
			bo, err := BundleOnly(eb)
			if err != nil {
				t.Fatal(err)
			}
			snaps["(authz server)"] = bo
			got := render(t, snaps)
			// Generation is deterministic: a second run gives the same bytes.
			snaps2 := map[string]*cache.Snapshot{"(authz server)": bo}
			for _, w := range m.Workloads {
				s, err := g.Snapshot(w, eb)
				if err != nil {
					t.Fatal(err)
				}
				snaps2[w.Key] = s
			}
			if !bytes.Equal(got, render(t, snaps2)) {
				t.Fatal("two generations of the same input differ")
			}
			out := filepath.Join("testdata", "out", name+".json")
			if *update {
				if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(out, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(out)
			if err != nil {
				t.Fatalf("%v (run go test ./controlplane/xds -run TestGolden -update)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s differs from the generator's output; review and run with -update.\n%s", out, firstDiff(want, got))
			}
		})
	}
}

func firstDiff(want, got []byte) string {
	wl := strings.Split(string(want), "\n")
	gl := strings.Split(string(got), "\n")
	for i := 0; i < len(wl) && i < len(gl); i++ {
		if wl[i] != gl[i] {
			return "line " + strconv.Itoa(i+1) + ":\n- " + wl[i] + "\n+ " + gl[i]
		}
	}
	return "lengths differ"
}
