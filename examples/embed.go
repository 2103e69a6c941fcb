// Package examples holds meshguard's example policies, an Istio-style
// bookstore and payments mesh, and the policy tests that pin their meaning.
// They are also the demo's built-in policies.
//
//	meshguard policy lint examples/policies
//	meshguard policy test examples/policies --tests examples/tests
package examples

import (
	"embed"
	"io/fs"
)

//go:embed policies/*.yaml tests/*.yaml
var files embed.FS

// FS returns the examples as a file system with two directories: policies
// (read it with source.LoadFS(fsys, "policies")) and tests (read it with
// policytest.LoadFS(fsys, "tests")).
func FS() fs.FS { return files }
