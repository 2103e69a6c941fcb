package main

import "io/fs"

// builtinPolicies are the example policies embedded in the binary.
func builtinPolicies() (fs.FS, []string, error) { return nil, nil, errNoBuiltin }
