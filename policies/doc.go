// Package policies is meshguard's policy model, compiler and decision engine.
//
// The pipeline is: documents (Istio AuthorizationPolicy and meshguard's own
// kinds, see model.go) are gathered into a Set, validated, serialized into a
// Bundle (the one format the control plane ships and every enforcement point
// loads), compiled once into an immutable Snapshot, and evaluated many times
// with Snapshot.Decide. An Engine holds the current Snapshot behind an atomic
// pointer so that snapshots swap without locks on the decision path.
//
// The package is pure Go with no I/O and no heavy dependencies: it is the same
// code in the ext_authz server, in the proxy-wasm filter (GOOS=wasip1) and in
// the CLI, so a decision is the same wherever it is taken. YAML files are read
// by the subpackage source.
package policies
