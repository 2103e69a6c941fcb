//go:build e2e

package e2e

import (
	"io/fs"

	"github.com/meshguard/meshguard/examples"
)

// examplesPolicies is the examples' policies directory.
func examplesPolicies() fs.FS {
	sub, err := fs.Sub(examples.FS(), "policies")
	if err != nil {
		panic(err) // the embedded directory exists by construction
	}
	return sub
}
