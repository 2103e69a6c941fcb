//go:build !wasip1

package hostcall

import (
	"time"

	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm"
)

// RequestHeaders reads the request headers.
func RequestHeaders([][2]string) ([][2]string, error) { return proxywasm.GetHttpRequestHeaders() }

// Property reads a property.
func Property(path []string, _ string) ([]byte, bool) {
	v, err := proxywasm.GetProperty(path)
	return v, err == nil
}

// ResponseHeader reads one response header.
func ResponseHeader(name string) (string, bool) {
	v, err := proxywasm.GetHttpResponseHeader(name)
	return v, err == nil
}

// Now is the wall clock in unix nanoseconds.
func Now() int64 { return time.Now().UnixNano() }
