package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshguard/meshguard/controlplane/istiogen"
	"github.com/meshguard/meshguard/policies"
	"github.com/meshguard/meshguard/policies/source"
	"github.com/meshguard/meshguard/policies/wire"
)

func newIstioCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "istio",
		Short: "Wire meshguard into an Istio mesh",
	}
	cmd.AddCommand(newIstioGenerateCmd())
	return cmd
}

type istioGenerateFlags struct {
	files         []string
	bundle        string
	providerName  string
	providerMode  string
	service       string
	port          uint32
	timeout       time.Duration
	checkHeaders  []string
	wasmURL       string
	wasmSHA256    string
	pullPolicy    string
	pullSecret    string
	priority      int32
	requireMTLS   bool
	eventsCluster string
	eventsAuth    string
	bundleFrom    string
	targets       []string
	rootNamespace string
	outDir        string
	meshConfig    bool
}

func newIstioGenerateCmd() *cobra.Command {
	var f istioGenerateFlags
	cmd := &cobra.Command{
		Use:   "generate (-f POLICY_FILE_OR_DIR... | --bundle BUNDLE.json | --target ...) --wasm-url URL",
		Short: "Write the Istio resources that wire meshguard in",
		Long: `generate writes what a user applies to wire meshguard into Istio:

  * the meshConfig extension provider for the meshguard authz server
    (envoyExtAuthzGrpc, or envoyExtAuthzHttp with --provider-mode http;
    failOpen false), as istiod Helm values;
  * a CUSTOM AuthorizationPolicy (provider meshguard) per target, sending
    every request of the target's workloads to the authz server;
  * an EnvoyFilter per target that makes Istio's ext_authz filter send the
    pod's labels with each check;
  * a WasmPlugin (extensions.istio.io/v1alpha1) per target that loads the
    meshguard filter from --wasm-url, phase AUTHZ, failStrategy FAIL_CLOSE.
    Its filter fetches the policy bundle from the meshguard control plane
    through --events-cluster and follows every change (long poll); it
    denies every request until the first bundle arrives and keeps the last
    good one when the control plane cannot be reached. With --bundle-from
    embedded the pluginConfig holds a copy of the bundle instead, which a
    policy change does not reach until the objects are generated and
    applied again.

Targets default to every namespace the policies live in, or the whole mesh
when a policy lives in the root namespace. --target takes
NAMESPACE[/NAME][:LABEL=VALUE,...] to choose workloads by label; with
targets and filters that fetch their bundle, no policy input is needed.

Without --out-dir the resources are written to stdout (kubectl apply -f -)
and --mesh-config writes the extension provider instead. With --out-dir both
go to files: mesh-config.yaml and resources.yaml.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runIstioGenerate(cmd, &f)
		},
	}
	fl := cmd.Flags()
	fl.StringSliceVarP(&f.files, "file", "f", nil, "policy YAML files or directories (Istio AuthorizationPolicy and meshguard kinds)")
	fl.StringVar(&f.bundle, "bundle", "", "a policy bundle (JSON) instead of policy files")
	fl.StringVar(&f.providerName, "provider-name", istiogen.DefaultProviderName, "extension provider name")
	fl.StringVar(&f.providerMode, "provider-mode", istiogen.ModeGRPC, "ext_authz protocol: grpc or http")
	fl.StringVar(&f.service, "authz-service", "meshguard-authz.meshguard.svc.cluster.local", "authz server host as Istio knows it")
	fl.Uint32Var(&f.port, "authz-port", istiogen.DefaultPort, "authz server port")
	fl.DurationVar(&f.timeout, "timeout", istiogen.DefaultTimeout, "timeout of one check; on timeout the request is denied")
	fl.StringSliceVar(&f.checkHeaders, "include-request-headers", nil, "request headers sent to the check (http mode; default: authorization, x-forwarded-client-cert and meshguard's headers)")
	fl.StringVar(&f.wasmURL, "wasm-url", "", "URL of the filter module: oci://, https:// or file:// (required)")
	fl.StringVar(&f.wasmSHA256, "wasm-sha256", "", "SHA-256 of the module, hex")
	fl.StringVar(&f.pullPolicy, "wasm-pull-policy", "", "IfNotPresent or Always")
	fl.StringVar(&f.pullSecret, "wasm-pull-secret", "", "image pull secret for a private registry")
	fl.Int32Var(&f.priority, "wasm-priority", 0, "priority among AUTHZ-phase plugins (0: Istio's default)")
	fl.BoolVar(&f.requireMTLS, "require-mtls", true, "the filter denies requests that did not arrive over mTLS")
	fl.StringVar(&f.eventsCluster, "events-cluster", "outbound|8443||meshguard-controlplane.meshguard.svc.cluster.local", "Envoy cluster of the control plane: the filter sends events and fetches its bundle through it")
	fl.StringVar(&f.eventsAuth, "events-authority", "meshguard-controlplane.meshguard.svc.cluster.local", "authority of the requests to the control plane")
	fl.StringVar(&f.bundleFrom, "bundle-from", istiogen.BundleFromControlPlane, "where the filters take the policy bundle from: controlplane (fetched, follows changes) or embedded (a copy in the WasmPlugin)")
	fl.StringArrayVar(&f.targets, "target", nil, "NAMESPACE[/NAME][:LABEL=VALUE,...] to wire (repeatable)")
	fl.StringVar(&f.rootNamespace, "root-namespace", "", "Istio's root namespace (default: the policies' MeshSettings, else istio-system)")
	fl.StringVar(&f.outDir, "out-dir", "", "write mesh-config.yaml and resources.yaml into this directory")
	fl.BoolVar(&f.meshConfig, "mesh-config", false, "write the extension provider (istiod Helm values) to stdout instead of the resources")
	return cmd
}

func runIstioGenerate(cmd *cobra.Command, f *istioGenerateFlags) error {
	switch {
	case len(f.files) > 0 && f.bundle != "":
		return &exitError{code: 2, msg: "give policy files (-f) or --bundle, not both"}
	case len(f.files) == 0 && f.bundle == "" && (len(f.targets) == 0 || f.bundleFrom == istiogen.BundleFromEmbedded):
		return &exitError{code: 2, msg: "give policy files (-f) or --bundle (or, with filters that fetch their bundle, --target)"}
	}
	if f.outDir != "" && f.meshConfig {
		return &exitError{code: 2, msg: "--mesh-config writes to stdout; with --out-dir the mesh config goes to mesh-config.yaml"}
	}
	var b *policies.Bundle
	switch {
	case len(f.files) == 0 && f.bundle == "":
	case f.bundle != "":
		data, err := os.ReadFile(f.bundle)
		if err != nil {
			return err
		}
		if b, err = policies.DecodeBundle(data); err != nil {
			return &exitError{code: 1, msg: err.Error()}
		}
	default:
		set, diags, err := source.Load(f.files...)
		if err != nil {
			return &exitError{code: 2, msg: err.Error()}
		}
		if err := diags.Err(); err != nil {
			return &exitError{code: 1, msg: err.Error()}
		}
		b, diags, err = policies.NewBundle("", set)
		for _, d := range diags.Warnings() {
			fmt.Fprintln(cmd.ErrOrStderr(), d.String())
		}
		if err != nil {
			return &exitError{code: 1, msg: err.Error()}
		}
	}
	var targets []istiogen.Target
	for _, s := range f.targets {
		t, err := parseTarget(s)
		if err != nil {
			return &exitError{code: 2, msg: err.Error()}
		}
		targets = append(targets, t)
	}
	cfg := istiogen.Config{
		Bundle: b,
		Provider: istiogen.Provider{
			Name: f.providerName, Mode: f.providerMode, Service: f.service, Port: f.port, Timeout: f.timeout,
			IncludeRequestHeadersInCheck: f.checkHeaders,
		},
		Wasm: istiogen.Wasm{
			URL: f.wasmURL, SHA256: f.wasmSHA256, ImagePullPolicy: f.pullPolicy, ImagePullSecret: f.pullSecret,
			RequireMTLS:  f.requireMTLS,
			ControlPlane: wire.ControlPlane{Cluster: f.eventsCluster, Authority: f.eventsAuth, Path: wire.EventsPath},
			BundleFrom:   f.bundleFrom,
		},
		Targets:       targets,
		RootNamespace: f.rootNamespace,
	}
	if cmd.Flags().Changed("wasm-priority") {
		cfg.Wasm.Priority = &f.priority
	}
	out, err := istiogen.Generate(cfg)
	if err != nil {
		return err
	}
	res, err := out.ResourcesYAML()
	if err != nil {
		return err
	}
	mc, err := out.MeshConfigYAML()
	if err != nil {
		return err
	}
	header, note := "# Generated by meshguard istio generate.\n", "# The WasmPlugins' filters fetch the policy bundle from the control plane and follow its changes.\n"
	switch {
	case f.bundleFrom == istiogen.BundleFromEmbedded:
		header = fmt.Sprintf("# Generated by meshguard istio generate from bundle %s (%s).\n", b.Version, b.Hash)
		note = "# The WasmPlugins hold a copy of the bundle: after a policy change, generate and apply them again.\n"
	case b != nil:
		header = fmt.Sprintf("# Generated by meshguard istio generate, targets from bundle %s (%s).\n", b.Version, b.Hash)
	}
	switch {
	case f.outDir != "":
		if err := os.MkdirAll(f.outDir, 0o755); err != nil {
			return err
		}
		mcHeader := header + "# istiod Helm values: helm upgrade istiod istio/istiod -n istio-system --reuse-values -f mesh-config.yaml\n" +
			"# Helm replaces lists: if the mesh has other extensionProviders, list them here too.\n"
		if err := os.WriteFile(filepath.Join(f.outDir, "mesh-config.yaml"), append([]byte(mcHeader), mc...), 0o644); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(f.outDir, "resources.yaml"), append([]byte(header+note), res...), 0o644); err != nil {
			return err
		}
		fmt.Fprintf(cmd.ErrOrStderr(), "wrote %s and %s: %d AuthorizationPolicies, %d EnvoyFilters, %d WasmPlugins\n",
			filepath.Join(f.outDir, "mesh-config.yaml"), filepath.Join(f.outDir, "resources.yaml"), len(out.AuthorizationPolicies), len(out.EnvoyFilters), len(out.WasmPlugins))
		return nil
	case f.meshConfig:
		_, err = cmd.OutOrStdout().Write(append([]byte(header), mc...))
	default:
		_, err = cmd.OutOrStdout().Write(append([]byte(header+note), res...))
	}
	return err
}

// parseTarget reads NAMESPACE[/NAME][:LABEL=VALUE,...].
func parseTarget(s string) (istiogen.Target, error) {
	var t istiogen.Target
	scope, labels, hasLabels := strings.Cut(s, ":")
	t.Namespace, t.Name, _ = strings.Cut(scope, "/")
	if t.Namespace == "" {
		return t, fmt.Errorf("--target %q: no namespace", s)
	}
	if hasLabels {
		t.Selector = map[string]string{}
		for _, kv := range strings.Split(labels, ",") {
			k, v, ok := strings.Cut(kv, "=")
			if !ok || k == "" {
				return t, fmt.Errorf("--target %q: label %q is not LABEL=VALUE", s, kv)
			}
			t.Selector[k] = v
		}
	}
	return t, nil
}
