package main

import (
	"io/fs"

	"github.com/meshguard/meshguard/examples"
)

// builtinPolicies are the example policies embedded in the binary.
func builtinPolicies() (fs.FS, []string, error) { return examples.FS(), []string{"policies"}, nil }
