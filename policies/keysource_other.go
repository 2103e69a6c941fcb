//go:build !wasip1

package policies

import (
	"fmt"
	"net/url"
)

// keySource is the compile stage that checks where a jwtRule's keys come
// from: its jwksUri (an http(s) URL with a host) and its inline jwks (a
// well-formed key set). Only an enforcement point that fetches or verifies
// keys needs them; every build runs them but the wasm filter's
// (keysource_wasip1.go), so the control plane refuses to publish a bundle
// that fails them and the authz server refuses to load one.
func (c *compiler) keySource(f, uriField, uri, jwks string) {
	if uri != "" {
		if err := checkJWKSURI(uri); err != nil {
			c.errf(uriField, CodeInvalidValue, "%v", err)
		}
	}
	if jwks != "" {
		if err := checkKeySet(jwks); err != nil {
			c.errf(f+".jwks", CodeInvalidKeySet, "jwks: %v", err)
		}
	}
}

// checkJWKSURI is Istio's ParseJwksURI plus its CRD's limits: an http or
// https URL of at most 2048 bytes, with a host.
func checkJWKSURI(s string) error {
	if len(s) > maxJWKSURIBytes {
		return fmt.Errorf("jwksUri of %d bytes: at most %d", len(s), maxJWKSURIBytes)
	}
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("jwksUri %q is not a URL", s)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("jwksUri %q: URI scheme %q is not supported (http or https)", s, u.Scheme)
	}
	if u.Host == "" {
		return fmt.Errorf("jwksUri %q has no host", s)
	}
	return nil
}

// checkKeySet checks the structure of an inline JSON Web Key Set (RFC
// 7517): a JSON object whose "keys" is an array of key objects, each with
// a known "kty" and its public members as base64url strings. The
// cryptographic checks (points on their curve, key sizes) are the
// enforcement point's, which refuses a key that fails them.
func checkKeySet(jwks string) error {
	_, err := KeySetProblems([]byte(jwks))
	return err
}
