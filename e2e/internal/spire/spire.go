// Package spire runs a real SPIRE server and agent (v1.13.3, built by
// `make spire`) for the end-to-end suite: join-token node attestation, a
// sqlite datastore and every socket in a private temporary directory,
// loopback only. Workloads are registered by unix:uid and unix:path, so that
// each workload binary path is its own identity.
package spire

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/meshguard/meshguard/e2e/internal/proc"
	"github.com/meshguard/meshguard/internal/testbed/freeport"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// Config for Start.
type Config struct {
	// BinDir holds spire-server and spire-agent.
	BinDir string
	// TrustDomain, e.g. "e2e.meshguard.test".
	TrustDomain spiffeid.TrustDomain
	// LogDir receives the processes' logs.
	LogDir string
	// DefaultX509TTL is the server's default X509-SVID TTL.
	DefaultX509TTL time.Duration
}

// Env is a running SPIRE server and agent.
type Env struct {
	cfg       Config
	dir       string
	server    *proc.Process
	agent     *proc.Process
	serverAPI string // server API unix socket
	agentSock string // Workload API unix socket
	agentID   spiffeid.ID
}

// Start starts the server, generates a join token, starts the agent with it
// and waits until both are healthy. Stop must be called.
func Start(ctx context.Context, cfg Config) (_ *Env, err error) {
	for _, b := range []string{"spire-server", "spire-agent"} {
		if _, err := os.Stat(filepath.Join(cfg.BinDir, b)); err != nil {
			return nil, fmt.Errorf("spire: %s not built (run `make spire`): %w", b, err)
		}
	}
	if cfg.DefaultX509TTL == 0 {
		cfg.DefaultX509TTL = time.Hour
	}
	// Unix socket paths are limited to 108 bytes: keep the directory short.
	dir, err := os.MkdirTemp("", "mg-spire-")
	if err != nil {
		return nil, fmt.Errorf("spire: %w", err)
	}
	e := &Env{cfg: cfg, dir: dir,
		serverAPI: filepath.Join(dir, "server.sock"),
		agentSock: filepath.Join(dir, "agent.sock"),
	}
	defer func() {
		if err != nil {
			e.Stop()
		}
	}()
	port, err := freeport.Port()
	if err != nil {
		return nil, err
	}
	serverConf := fmt.Sprintf(`server {
  bind_address = "127.0.0.1"
  bind_port = "%d"
  socket_path = %q
  trust_domain = %q
  data_dir = %q
  log_level = "INFO"
  ca_ttl = "24h"
  default_x509_svid_ttl = %q
  default_jwt_svid_ttl = "5m"
}
plugins {
  DataStore "sql" {
    plugin_data {
      database_type = "sqlite3"
      connection_string = %q
    }
  }
  NodeAttestor "join_token" {
    plugin_data {}
  }
  KeyManager "memory" {
    plugin_data {}
  }
}
`, port, e.serverAPI, cfg.TrustDomain.Name(), filepath.Join(dir, "server-data"),
		cfg.DefaultX509TTL.String(), filepath.Join(dir, "datastore.sqlite3"))
	serverConfPath := filepath.Join(dir, "server.conf")
	if err := os.WriteFile(serverConfPath, []byte(serverConf), 0o600); err != nil {
		return nil, fmt.Errorf("spire: %w", err)
	}
	e.server, err = proc.Start(proc.Spec{Name: "spire-server", Path: filepath.Join(cfg.BinDir, "spire-server"),
		Args: []string{"run", "-config", serverConfPath}, LogDir: cfg.LogDir})
	if err != nil {
		return nil, err
	}
	if err := e.waitHealthy(ctx, "spire-server", "-socketPath", e.serverAPI); err != nil {
		return nil, err
	}

	e.agentID = spiffeid.RequireFromPath(cfg.TrustDomain, "/e2e/agent")
	out, err := e.ServerCLI(ctx, "token", "generate", "-ttl", "600", "-spiffeID", e.agentID.String())
	if err != nil {
		return nil, err
	}
	token, ok := strings.CutPrefix(strings.TrimSpace(out), "Token: ")
	if !ok || token == "" {
		return nil, fmt.Errorf("spire: unexpected token output %q", out)
	}
	agentConf := fmt.Sprintf(`agent {
  data_dir = %q
  log_level = "INFO"
  server_address = "127.0.0.1"
  server_port = "%d"
  socket_path = %q
  trust_domain = %q
  insecure_bootstrap = true
}
plugins {
  NodeAttestor "join_token" {
    plugin_data {}
  }
  KeyManager "memory" {
    plugin_data {}
  }
  WorkloadAttestor "unix" {
    plugin_data {
      discover_workload_path = true
    }
  }
}
`, filepath.Join(dir, "agent-data"), port, e.agentSock, cfg.TrustDomain.Name())
	agentConfPath := filepath.Join(dir, "agent.conf")
	if err := os.WriteFile(agentConfPath, []byte(agentConf), 0o600); err != nil {
		return nil, fmt.Errorf("spire: %w", err)
	}
	e.agent, err = proc.Start(proc.Spec{Name: "spire-agent", Path: filepath.Join(cfg.BinDir, "spire-agent"),
		Args: []string{"run", "-config", agentConfPath, "-joinToken", token}, LogDir: cfg.LogDir})
	if err != nil {
		return nil, err
	}
	if err := e.waitHealthy(ctx, "spire-agent", "-socketPath", e.agentSock); err != nil {
		return nil, err
	}
	return e, nil
}

// SocketAddr is the Workload API address for SPIFFE_ENDPOINT_SOCKET.
func (e *Env) SocketAddr() string { return "unix://" + e.agentSock }

// Dir is the private directory holding sockets, data and configs.
func (e *Env) Dir() string { return e.dir }

// Agent is the agent process (tests may kill it).
func (e *Env) Agent() *proc.Process { return e.agent }

// Entry is one workload registration.
type Entry struct {
	ID spiffeid.ID
	// Selectors, e.g. "unix:uid:1000", "unix:path:/tmp/x/frontend".
	Selectors []string
	// X509TTL and JWTTTL override the server defaults when non-zero.
	X509TTL time.Duration
	JWTTTL  time.Duration
}

// Register creates a registration entry under the agent.
func (e *Env) Register(ctx context.Context, en Entry) error {
	args := []string{"entry", "create", "-parentID", e.agentID.String(), "-spiffeID", en.ID.String()}
	for _, s := range en.Selectors {
		args = append(args, "-selector", s)
	}
	if en.X509TTL > 0 {
		args = append(args, "-x509SVIDTTL", strconv.Itoa(int(en.X509TTL/time.Second)))
	}
	if en.JWTTTL > 0 {
		args = append(args, "-jwtSVIDTTL", strconv.Itoa(int(en.JWTTTL/time.Second)))
	}
	_, err := e.ServerCLI(ctx, args...)
	return err
}

// WorkloadSelectors are the selectors that identify a process running the
// binary at path as the current user: unix:uid plus unix:path.
func WorkloadSelectors(path string) []string {
	return []string{"unix:uid:" + strconv.Itoa(os.Getuid()), "unix:path:" + path}
}

// ServerCLI runs `spire-server <args> -socketPath <api>` and returns stdout.
func (e *Env) ServerCLI(ctx context.Context, args ...string) (string, error) {
	args = append(args, "-socketPath", e.serverAPI)
	cmd := exec.CommandContext(ctx, filepath.Join(e.cfg.BinDir, "spire-server"), args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("spire: spire-server %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// WaitForX509 waits until the Workload API serves an X509-SVID with the
// given ID to the calling process (used to check registrations that match
// the test binary itself).
func (e *Env) WaitForX509(ctx context.Context, id spiffeid.ID) error {
	for {
		svids, err := workloadapi.FetchX509SVIDs(ctx, workloadapi.WithAddr(e.SocketAddr()))
		if err == nil {
			for _, s := range svids {
				if s.ID == id {
					return nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("spire: no X509-SVID for %s: %w (last error: %v)", id, ctx.Err(), err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (e *Env) waitHealthy(ctx context.Context, bin string, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	p := e.server
	if bin == "spire-agent" {
		p = e.agent
	}
	var last []byte
	for {
		if p.Exited() {
			return fmt.Errorf("spire: %s exited: %s", bin, p.Tail(20))
		}
		cmd := exec.CommandContext(ctx, filepath.Join(e.cfg.BinDir, bin), append([]string{"healthcheck"}, args...)...)
		out, err := cmd.CombinedOutput()
		if err == nil {
			return nil
		}
		last = out
		select {
		case <-ctx.Done():
			return fmt.Errorf("spire: %s not healthy: %w: %s\n%s", bin, ctx.Err(), last, p.Tail(20))
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// Stop stops the agent, then the server, and removes the directory.
func (e *Env) Stop() {
	if e.agent != nil {
		_ = e.agent.Stop(5 * time.Second)
	}
	if e.server != nil {
		_ = e.server.Stop(5 * time.Second)
	}
	_ = os.RemoveAll(e.dir)
}
