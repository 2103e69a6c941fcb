// Package spire pins the SPIRE server and agent used by meshguard's end-to-end
// tests. It is its own module so that `go test ./...` of the main module skips
// it; `make spire` builds the binaries into bin/.
package spire
