package wasmhost

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/tetratelabs/wazero"
)

// The tests run real proxy-wasm modules built here with the upstream Go
// toolchain (GOOS=wasip1 -buildmode=c-shared), so `go test` needs nothing
// prepared beforehand.
var (
	testModules = map[string][]byte{}
	// testCache shares compiled code between the Hosts the tests create.
	testCache wazero.CompilationCache
)

// ModuleForTest and CacheForTest give the external tests the filters built here.
func ModuleForTest(name string) []byte      { return testModules[name] }
func CacheForTest() wazero.CompilationCache { return testCache }

var filters = map[string]string{
	"noop":    "../../../wasm/noop",
	"abitest": "./testdata/abitest",
}

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "meshguard-wasmhost-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	for name, pkg := range filters {
		out := filepath.Join(dir, name+".wasm")
		if err := buildFilter(pkg, out); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n", name, err)
			return 1
		}
		b, err := os.ReadFile(out)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		testModules[name] = b
	}
	testCache = compilationCache()
	defer testCache.Close(context.Background())
	return m.Run()
}

func buildFilter(pkg, out string) error {
	cmd := exec.Command("go", "build", "-buildmode=c-shared", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm", "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%w: %s", err, b)
	}
	return nil
}

func testingProcs() int { return runtime.GOMAXPROCS(0) }

// compilationCache keeps wazero's compiled code on disk between test runs
// (compiling a Go-built module takes seconds, tens of seconds under -race):
// $MESHGUARD_WAZERO_CACHE, else the user cache directory, else memory.
func compilationCache() wazero.CompilationCache {
	dir := os.Getenv("MESHGUARD_WAZERO_CACHE")
	if dir == "" {
		if ucd, err := os.UserCacheDir(); err == nil {
			dir = filepath.Join(ucd, "meshguard", "wazero")
		}
	}
	if dir != "" {
		if c, err := wazero.NewCompilationCacheWithDir(dir); err == nil {
			return c
		}
	}
	return wazero.NewCompilationCache()
}
