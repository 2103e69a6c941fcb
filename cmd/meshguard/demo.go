package main

import (
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshguard/meshguard/internal/testbed/demo"
)

// filterModuleName is what `make wasm` writes into bin/.
const filterModuleName = "meshguard-filter.wasm"

func newDemoCmd() *cobra.Command {
	var (
		duration    time.Duration
		spireSocket string
		policiesDir string
		noColor     bool
		wasmPath    string
		verbose     bool
		withConsole bool
		consoleAddr string
		hold        bool
	)
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run a small mesh on this machine and show meshguard stopping an attack",
		Long: `demo runs, in this one process and on loopback ports it picks itself, the
bookstore and payments mesh of the example policies: the authz server and
one sidecar per workload. The sidecars EMULATE Envoy (mTLS with SPIFFE
X509-SVIDs, meshguard's compiled wasm filter in a wazero proxy-wasm host,
ext_authz over gRPC); identities come from an in-process SPIFFE CA unless
--spire-socket points at a SPIFFE Workload API.

It plays legitimate traffic, then a compromised workload scans, probes
credentials and moves laterally, and shows live what was allowed, denied,
detected and quarantined, and why (reason codes, policy and rule). It ends
by itself with a summary; Ctrl-C stops it at any point.

The control plane's web console runs too (--console, on by default): the
demo prints its link, which signs in with an operator token, and a
read-only viewer token. With --hold the mesh keeps running, with legitimate
traffic, after the story, until Ctrl-C.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			wasm, err := readFilterModule(wasmPath)
			if err != nil {
				return err
			}
			fsys, paths, err := demoPolicies(policiesDir)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			tty := demo.IsTerminal(out)
			_, noColorEnv := os.LookupEnv("NO_COLOR")
			log := slog.New(slog.DiscardHandler)
			if verbose {
				log = slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: slog.LevelInfo}))
			}
			sum, err := demo.Run(cmd.Context(), demo.Options{
				Duration: duration, SpireSocket: spireSocket,
				Policies: fsys, PolicyPaths: paths, Wasm: wasm,
				Out: out, TTY: tty, Color: !noColor && !noColorEnv, Log: log,
				Console: withConsole, ConsoleAddr: consoleAddr, Hold: hold,
			})
			if err != nil {
				return err
			}
			fmt.Fprint(out, sum.Render())
			if sum.Incident != nil {
				// What `meshguard incident` prints, from the demo control
				// plane's record store.
				fmt.Fprintf(out, "\n$ meshguard incident %s\n", sum.Incident.Identity)
				if err := printTimeline(out, outTable, sum.Incident); err != nil {
					return err
				}
			}
			if sum.Interrupted {
				return &exitError{code: 130, msg: "demo: interrupted"}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.DurationVar(&duration, "duration", 30*time.Second, "how long the demo runs (at least 8s)")
	f.StringVar(&spireSocket, "spire-socket", "", "SPIFFE Workload API address (unix:///path/agent.sock); default: an in-process CA")
	f.StringVar(&policiesDir, "policies", "", "directory of policy files to use instead of the built-in examples")
	f.BoolVar(&noColor, "no-color", false, "no ANSI colours (also: NO_COLOR set)")
	f.StringVar(&wasmPath, "wasm", "", "compiled filter module (default: "+filterModuleName+" next to this executable, then bin/)")
	f.BoolVar(&verbose, "verbose", false, "also print the components' logs to stderr")
	f.BoolVar(&withConsole, "console", true, "serve the web console and print its link")
	f.StringVar(&consoleAddr, "console-addr", "127.0.0.1:0", "address of the web console (plain HTTP: keep it on loopback)")
	f.BoolVar(&hold, "hold", false, "keep the mesh running after the story until Ctrl-C, to look around in the console")
	return cmd
}

// readFilterModule finds the compiled wasm filter.
func readFilterModule(path string) ([]byte, error) {
	candidates := []string{path}
	if path == "" {
		candidates = nil
		if exe, err := os.Executable(); err == nil {
			candidates = append(candidates, filepath.Join(filepath.Dir(exe), filterModuleName))
		}
		candidates = append(candidates, filepath.Join("bin", filterModuleName))
	}
	for _, c := range candidates {
		b, err := os.ReadFile(c)
		if err == nil {
			return b, nil
		}
		if path != "" {
			return nil, fmt.Errorf("demo: read --wasm: %w", err)
		}
	}
	return nil, fmt.Errorf("demo: the wasm filter module %s was not found next to the executable or in bin/: run `make wasm` (or `make demo`), or pass --wasm", filterModuleName)
}

// demoPolicies returns the policy file system and the paths to load.
func demoPolicies(dir string) (fs.FS, []string, error) {
	if dir != "" {
		if _, err := os.Stat(dir); err != nil {
			return nil, nil, fmt.Errorf("demo: --policies: %w", err)
		}
		return os.DirFS(dir), []string{"."}, nil
	}
	return builtinPolicies()
}
