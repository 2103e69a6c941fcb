//go:build wasip1

package policies

// keySource, the check of a jwtRule's jwksUri and inline jwks
// (keysource_other.go), is not part of the wasm filter's compile: the
// filter never fetches keys nor verifies end-user tokens (it leaves
// requestPrincipals to the ext_authz server), so neither can change one of
// its decisions, and a bundle that fails them never reaches it (the
// control plane refuses to publish it). Their code, net/url's parser
// among it, is 80 KB of a module whose size is budgeted (docs/wasm.md,
// "Module size").
func (c *compiler) keySource(f, uriField, uri, jwks string) {}
