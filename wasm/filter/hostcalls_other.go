//go:build !wasip1

package main

import (
	"time"

	"github.com/meshguard/meshguard/wasm/internal/filtercore"
	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm"
)

// Outside wasm (proxytest runs the glue natively) the SDK's calls stand
// in for hostcalls_wasip1.go.

func requestHeaders([][2]string) ([][2]string, error) { return proxywasm.GetHttpRequestHeaders() }

func property(p filtercore.Prop) ([]byte, bool) {
	v, err := proxywasm.GetProperty(p.Path)
	return v, err == nil
}

func responseHeader(name string) (string, bool) {
	v, err := proxywasm.GetHttpResponseHeader(name)
	return v, err == nil
}

func clock() int64 { return time.Now().UnixNano() }
