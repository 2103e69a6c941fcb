package main

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshguard/meshguard/controlplane/console"
	"github.com/meshguard/meshguard/controlplane/mesh"
	"github.com/meshguard/meshguard/controlplane/quarantine"
	"github.com/meshguard/meshguard/controlplane/store"
)

// consoleFlags configure the web console on --http-addr.
type consoleFlags struct {
	enabled         bool
	tokenFile       string
	viewerTokenFile string
	viewers         []string
}

func (f *consoleFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.BoolVar(&f.enabled, "console", true, "serve the web console at /console/ on --http-addr")
	fl.StringVar(&f.tokenFile, "console-token-file", "", "operator bearer token for the console (a mounted secret); created with a random token (mode 0600) when missing")
	fl.StringVar(&f.viewerTokenFile, "console-viewer-token-file", "", "read-only bearer token for the console; created with a random token (mode 0600) when missing")
	fl.StringSliceVar(&f.viewers, "console-viewer-id", nil, "SPIFFE ID allowed to view the console read-only, or a trust domain ID (spiffe://example.org) for all its members (repeatable)")
}

type consoleDeps struct {
	qm        *quarantine.Manager
	st        *store.Store
	mesh      *mesh.Mesh
	operators []spiffeid.ID
	log       *slog.Logger
	reg       prometheus.Registerer
	insecure  bool
	// timeline is the record store (nil: none).
	timeline console.Timeline
}

func (f *consoleFlags) build(d consoleDeps) (*console.Console, error) {
	var viewers []spiffeid.ID
	for _, s := range f.viewers {
		id, err := spiffeid.FromString(s)
		if err != nil {
			return nil, fmt.Errorf("--console-viewer-id %q: %w", s, err)
		}
		viewers = append(viewers, id)
	}
	opTok, err := readOrCreateToken(f.tokenFile)
	if err != nil {
		return nil, fmt.Errorf("--console-token-file: %w", err)
	}
	viewTok, err := readOrCreateToken(f.viewerTokenFile)
	if err != nil {
		return nil, fmt.Errorf("--console-viewer-token-file: %w", err)
	}
	var workloads []console.Workload
	if d.mesh != nil {
		for _, w := range d.mesh.Workloads {
			workloads = append(workloads, console.Workload{ID: w.ID, Name: w.Name, Namespace: w.Namespace, Service: w.Service, Labels: w.Labels})
		}
	}
	c, err := console.New(console.Options{
		Quarantines: console.Manager(d.qm), Bundle: d.st.Bundle, Workloads: workloads, Timeline: d.timeline,
		Auth:   console.Auth{Operators: d.operators, Viewers: viewers, OperatorToken: opTok, ViewerToken: viewTok},
		Logger: d.log, Registerer: d.reg,
	})
	if err != nil {
		return nil, err
	}
	switch {
	case opTok == "" && viewTok == "" && d.insecure:
		d.log.Warn("console: no --console-token-file and no TLS: nobody can sign in to the console")
	case opTok == "" && viewTok == "" && len(d.operators) == 0 && len(viewers) == 0:
		d.log.Warn("console: no token file, --admin-id or --console-viewer-id: nobody can sign in to the console")
	}
	d.log.Info("console serving at "+console.Path, "operator_token_file", f.tokenFile, "viewer_token_file", f.viewerTokenFile,
		"operators", len(d.operators), "viewers", len(viewers))
	return c, nil
}

// readOrCreateToken reads a token file, or creates it with a random token
// when it does not exist. The token is never logged.
func readOrCreateToken(path string) (string, error) {
	if path == "" {
		return "", nil
	}
	b, err := os.ReadFile(path)
	if err == nil {
		tok := strings.TrimSpace(string(b))
		if len(tok) < 16 {
			return "", fmt.Errorf("%s: the token must have at least 16 characters", path)
		}
		return tok, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	tok, err := console.NewToken()
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", err
	}
	fh, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", err
	}
	if _, err := fh.WriteString(tok + "\n"); err != nil {
		fh.Close()
		return "", err
	}
	return tok, fh.Close()
}
