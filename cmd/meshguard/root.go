package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/meshguard/meshguard/internal/buildinfo"
)

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "meshguard",
		Short: "Zero-trust authorization, anomaly and lateral-movement detection for Envoy meshes",
		Long: `meshguard checks every request in an Envoy or Istio mesh against who is
calling (a SPIFFE identity), what it asks for and how it behaves, and contains
a compromised workload mesh-wide.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(
		newVersionCmd(),
		newPolicyCmd(),
		newAuthzCmd(),
		newControlPlaneCmd(), newQuarantineCmd(), newBaselineCmd(),
		newEventsCmd(), newIncidentCmd(),
		newDemoCmd(),
		newIstioCmd(),
	)
	return root
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the meshguard version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintln(cmd.OutOrStdout(), "meshguard", buildinfo.String())
			return err
		},
	}
}

// exitCoder is an error that asks for a specific exit status (for example
// `policy lint` exits 1 when it finds errors).
type exitCoder interface {
	error
	ExitCode() int
}

type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }
func (e *exitError) ExitCode() int { return e.code }

func asExitCoder(err error, target *exitCoder) bool { return errors.As(err, target) }
