// Package wasmtest builds meshguard's proxy-wasm modules with the upstream Go
// toolchain for tests and benchmarks, and holds the suite that runs the
// filter's scenarios on the compiled module in the wazero proxy-wasm host
// (internal/testbed/wasmhost): the same bytes Envoy would load.
package wasmtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// SizeBudget is the most bytes the filter module may have, stripped as
// Build strips it (docs/wasm.md, "Module size"; WASM_BUDGET in mk/wasm.mk).
const SizeBudget = 4 << 20

// buildFlags are make wasm's WASM_FLAGS (mk/wasm.mk explains the gcflags).
var buildFlags = []string{"-buildmode=c-shared", "-trimpath",
	"-gcflags=fmt=-l", "-gcflags=github.com/meshguard/meshguard/policies/internal/strictjson=-l", "-ldflags=-s -w"}

// Packages of the modules, relative to the module root.
const (
	FilterPackage = "./wasm/filter"
	NoopPackage   = "./wasm/noop"
)

// Build compiles pkg (relative to the module root at root) into out as a
// WASI reactor, exactly as `make wasm` does. The go build cache makes
// repeated builds cheap.
func Build(root, pkg, out string) error {
	goBin, err := exec.LookPath("go")
	if err != nil {
		return fmt.Errorf("build %s: the go command is not on PATH: %w", pkg, err)
	}
	cmd := exec.Command(goBin, append(append([]string{"build"}, buildFlags...), "-o", out, pkg)...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm", "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build %s: %w: %s", pkg, err, b)
	}
	return nil
}

// ModuleRoot finds the directory holding go.mod above dir.
func ModuleRoot(dir string) (string, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod above %s", dir)
		}
		dir = parent
	}
}
