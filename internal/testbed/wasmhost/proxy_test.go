package wasmhost_test

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/meshguard/meshguard/internal/testbed/wasmhost"
)

func TestHandler(t *testing.T) {
	var seen http.Header
	var seenPath, seenBody string
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen = r.Header.Clone()
		seenPath = r.URL.RequestURI()
		b, _ := io.ReadAll(r.Body)
		seenBody = string(b)
		w.Header().Set("X-Backend", "1")
		_, _ = w.Write([]byte("backend says hi"))
	}))
	t.Cleanup(backend.Close)
	u, _ := url.Parse(backend.URL)
	h := newHost(t, "abitest", wasmhost.Config{VMs: 2})
	front := httptest.NewServer(h.Handler(wasmhost.ProxyConfig{
		Upstream: u,
		Properties: func(*http.Request) wasmhost.Properties {
			return wasmhost.Properties{}.SetString("xds.route_name", "r1")
		},
	}))
	t.Cleanup(front.Close)

	do := func(op, body string, hdr ...string) (*http.Response, string) {
		t.Helper()
		req, _ := http.NewRequest("POST", front.URL+"/p?q=1", strings.NewReader(body))
		req.Header.Set("x-op", op)
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := front.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}

	resp, body := do("body", "abc")
	if resp.StatusCode != 200 || body != "backend says hi world" || resp.Header.Get("X-Backend") != "1" ||
		resp.Header.Get("X-Upstream-Status") != "200" {
		t.Errorf("allowed: %d %q %v", resp.StatusCode, body, resp.Header)
	}
	if seenBody != ">ABC!" || seenPath != "/p?q=1" || seen.Get("X-Num-Headers") == "" {
		t.Errorf("backend saw path %q body %q headers %v", seenPath, seenBody, seen)
	}

	resp, body = do("deny", "")
	if resp.StatusCode != 403 || body != "denied" || resp.Header.Get("X-Reason") != "test-deny" {
		t.Errorf("denied: %d %q %v", resp.StatusCode, body, resp.Header)
	}

	do("props", "", "x-props", "xds.route_name,connection.mtls,source.address,request.protocol")
	if got := seen.Get("X-Prop-Xds.route_name"); got != hex.EncodeToString([]byte("r1")) {
		t.Errorf("xds.route_name = %q", got)
	}
	if got := seen.Get("X-Prop-Connection.mtls"); got != "00" {
		t.Errorf("connection.mtls over plaintext = %q, want false", got)
	}
	if got, _ := hex.DecodeString(seen.Get("X-Prop-Source.address")); !strings.HasPrefix(string(got), "127.0.0.1:") {
		t.Errorf("source.address = %q", got)
	}

	resp, _ = do("panic", "")
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("failed VM answered %d, want 503", resp.StatusCode)
	}
}

func TestConnectionPropertiesMTLS(t *testing.T) {
	spiffe, _ := url.Parse("spiffe://example.org/ns/prod/sa/api")
	leaf := &x509.Certificate{URIs: []*url.URL{spiffe}, DNSNames: []string{"api.prod"}, Subject: pkix.Name{CommonName: "api"}}
	r := httptest.NewRequest("GET", "https://svc/x", nil)
	r.TLS = &tls.ConnectionState{
		Version: tls.VersionTLS13, ServerName: "svc",
		PeerCertificates: []*x509.Certificate{leaf}, VerifiedChains: [][]*x509.Certificate{{leaf}},
	}
	p := wasmhost.ConnectionProperties(r)
	for k, want := range map[string]string{
		"connection.uri_san_peer_certificate": "spiffe://example.org/ns/prod/sa/api",
		"connection.dns_san_peer_certificate": "api.prod",
		"connection.requested_server_name":    "svc",
		"connection.tls_version":              "TLSv1.3",
		"connection.mtls":                     "\x01",
	} {
		if string(p[k]) != want {
			t.Errorf("%s = %q, want %q", k, p[k], want)
		}
	}
	// A certificate that was presented but not verified is not mTLS and its
	// SAN is not exposed.
	r.TLS.VerifiedChains = nil
	p = wasmhost.ConnectionProperties(r)
	if string(p["connection.mtls"]) != "\x00" || p["connection.uri_san_peer_certificate"] != nil {
		t.Errorf("unverified peer certificate exposed: %v", p)
	}
}
