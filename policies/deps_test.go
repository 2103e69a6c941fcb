package policies_test

import (
	"os/exec"
	"strings"
	"testing"
)

// The engine runs in the authz server, the wasm filter (GOOS=wasip1) and the
// CLI: it must not pull in gRPC, Kubernetes or go-control-plane, and it must
// build for wasip1.
func TestDependencies(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the go command")
	}
	out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}", "github.com/meshguard/meshguard/policies/...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	forbidden := []string{"google.golang.org/grpc", "k8s.io/", "sigs.k8s.io/controller-runtime", "github.com/envoyproxy/", "istio.io/", "google.golang.org/protobuf", "net/http"}
	for _, dep := range strings.Fields(string(out)) {
		for _, f := range forbidden {
			if strings.HasPrefix(dep, f) {
				t.Errorf("policies depends on %s", dep)
			}
		}
	}
	cmd := exec.Command("go", "build", "./...")
	cmd.Dir = "."
	cmd.Env = append(cmd.Environ(), "GOOS=wasip1", "GOARCH=wasm")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("GOOS=wasip1 go build ./policies/...: %v\n%s", err, out)
	}
}
