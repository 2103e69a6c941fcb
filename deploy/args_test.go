package deploy_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

// meshguardBin is the real meshguard binary, built once by TestMain, whose
// --help the rendered container arguments are checked against.
var meshguardBin string

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "meshguard-deploy-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	meshguardBin = filepath.Join(dir, "meshguard")
	cmd := exec.Command("go", "build", "-o", meshguardBin, "./cmd/meshguard")
	cmd.Dir = ".."
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "go build ./cmd/meshguard: %v\n%s", err, out)
		return 1
	}
	code := m.Run()
	if err := stopAPIServer(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		code = 1
	}
	return code
}

// cliFlag is one flag as `meshguard <sub> --help` lists it.
type cliFlag struct {
	takesValue bool   // the help names a value type (string, duration, ...)
	usage      string // the help text
}

// helpFlagLine matches a cobra/pflag flag line: "  -h, --name type   usage".
var helpFlagLine = regexp.MustCompile(`^\s+(?:-\w, )?--([a-z0-9][a-z0-9-]*)(?: (\w+))?\s{2,}(.*)$`)

// subcommandFlags runs the real binary's --help for sub and parses its flags.
func subcommandFlags(t *testing.T, sub string) map[string]cliFlag {
	t.Helper()
	out, err := exec.Command(meshguardBin, sub, "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("meshguard %s --help: %v\n%s", sub, err, out)
	}
	flags := map[string]cliFlag{}
	for _, line := range strings.Split(string(out), "\n") {
		if m := helpFlagLine.FindStringSubmatch(line); m != nil {
			flags[m[1]] = cliFlag{takesValue: m[2] != "", usage: m[3]}
		}
	}
	if len(flags) < 5 {
		t.Fatalf("meshguard %s --help: parsed only %d flags from\n%s", sub, len(flags), out)
	}
	return flags
}

// TestHelpParser guards the parser the argument check relies on: flags with
// and without values are told apart, and a made-up flag is not found.
func TestHelpParser(t *testing.T) {
	for _, tt := range []struct {
		sub, flag string
		value     bool
	}{
		{"controlplane", "xds-addr", true},
		{"controlplane", "insecure-plaintext", false},
		{"authz", "admin-addr", true},
		{"authz", "no-jwt-svid", false},
	} {
		f, ok := subcommandFlags(t, tt.sub)[tt.flag]
		if !ok || f.takesValue != tt.value {
			t.Errorf("%s --%s: found %v, takes value %v", tt.sub, tt.flag, ok, f.takesValue)
		}
	}
	if _, ok := subcommandFlags(t, "controlplane")["watch-kubernetes"]; ok {
		t.Error("controlplane has --watch-kubernetes: update the chart and docs/deploy.md")
	}
}

// checkArgs: every container runs a meshguard subcommand with flags that
// subcommand defines, each value flag written --name=value; every container
// port is bound by a listen-address flag with the same port number; both
// probes point at the port of the flag that serves /healthz and /readyz.
func checkArgs(t *testing.T, objs []rendered) {
	t.Helper()
	helps := map[string]map[string]cliFlag{}
	n := 0
	for _, r := range objs {
		dep, ok := r.obj.(*appsv1.Deployment)
		if !ok {
			continue
		}
		for _, c := range dep.Spec.Template.Spec.Containers {
			n++
			if len(c.Args) == 0 || strings.HasPrefix(c.Args[0], "-") {
				t.Errorf("%s/%s: args %v do not start with a subcommand", dep.Name, c.Name, c.Args)
				continue
			}
			sub := c.Args[0]
			if helps[sub] == nil {
				helps[sub] = subcommandFlags(t, sub)
			}
			flags := helps[sub]
			addrs := map[string]int{} // flag name -> port it listens on
			for _, a := range c.Args[1:] {
				if !strings.HasPrefix(a, "--") {
					t.Errorf("%s/%s: argument %q is not a --flag", dep.Name, c.Name, a)
					continue
				}
				name, value, hasValue := strings.Cut(strings.TrimPrefix(a, "--"), "=")
				f, ok := flags[name]
				switch {
				case !ok:
					t.Errorf("%s/%s: meshguard %s has no flag --%s", dep.Name, c.Name, sub, name)
					continue
				case f.takesValue && !hasValue:
					t.Errorf("%s/%s: --%s needs --%s=value", dep.Name, c.Name, name, name)
					continue
				}
				if strings.HasSuffix(name, "-addr") && strings.HasPrefix(value, ":") {
					p, err := strconv.Atoi(value[1:])
					if err != nil {
						t.Errorf("%s/%s: %s: %v", dep.Name, c.Name, a, err)
						continue
					}
					addrs[name] = p
				}
			}
			// The flag whose help says it serves /healthz and /readyz.
			var health string
			for name, f := range flags {
				if strings.Contains(f.usage, "/healthz") && strings.Contains(f.usage, "/readyz") {
					health = name
				}
			}
			if health == "" {
				t.Fatalf("meshguard %s: no flag serves /healthz", sub)
			}
			healthPort, ok := addrs[health]
			if !ok {
				t.Errorf("%s/%s: --%s not set, so probes would rely on its default", dep.Name, c.Name, health)
			}
			bound := map[int]bool{}
			for _, p := range addrs {
				bound[p] = true
			}
			portByName := map[string]int32{}
			for _, p := range c.Ports {
				portByName[p.Name] = p.ContainerPort
				if !bound[int(p.ContainerPort)] {
					t.Errorf("%s/%s: container port %s (%d) is bound by no listen flag %v", dep.Name, c.Name, p.Name, p.ContainerPort, addrs)
				}
			}
			for name, p := range addrs {
				if !containsPort(c.Ports, p) {
					t.Errorf("%s/%s: --%s=:%d has no container port", dep.Name, c.Name, name, p)
				}
			}
			for what, pr := range map[string]*corev1.Probe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe} {
				if pr == nil || pr.HTTPGet == nil {
					t.Errorf("%s/%s: no HTTP %s probe", dep.Name, c.Name, what)
					continue
				}
				got := pr.HTTPGet.Port.IntVal
				if pr.HTTPGet.Port.StrVal != "" {
					got = portByName[pr.HTTPGet.Port.StrVal]
				}
				if int(got) != healthPort {
					t.Errorf("%s/%s: %s probe on port %v (%d), but --%s listens on %d", dep.Name, c.Name, what, pr.HTTPGet.Port.String(), got, health, healthPort)
				}
			}
			if ann := dep.Spec.Template.Annotations["prometheus.io/port"]; ann != "" && ann != strconv.Itoa(healthPort) {
				t.Errorf("%s: prometheus.io/port %s, but /metrics is on %d", dep.Name, ann, healthPort)
			}
			if !hasEnv(c.Env, "SPIFFE_ENDPOINT_SOCKET") {
				if _, ok := flags["spiffe-socket"]; ok {
					t.Errorf("%s/%s: no SPIFFE_ENDPOINT_SOCKET (the default of --spiffe-socket)", dep.Name, c.Name)
				}
			}
		}
	}
	if n == 0 {
		t.Error("no containers rendered")
	}
}

func containsPort(ports []corev1.ContainerPort, p int) bool {
	for _, cp := range ports {
		if int(cp.ContainerPort) == p {
			return true
		}
	}
	return false
}
