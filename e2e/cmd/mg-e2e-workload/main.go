// Command mg-e2e-workload is one workload of the end-to-end suite: an
// application behind an Envoy-EMULATING proxy (internal/testbed/envoyemu)
// that takes its whole configuration — listeners, routes, clusters, the
// ext_authz and wasm filters — from the control plane over ADS, as Envoy
// does, with its identity from the SPIFFE Workload API
// (SPIFFE_ENDPOINT_SOCKET). The
// suite runs one copy of this binary per workload, each at its own path, so
// that SPIRE's unix workload attestor (unix:path) gives each its own SVID.
//
// Besides the sidecar's inbound mTLS listener it serves a plain-HTTP driver
// API on loopback through which the test makes this workload call others
// (through its outbound mTLS client, as the app would through its sidecar),
// fetch JWT-SVIDs and report its current SVID.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/spiffe/go-spiffe/v2/spiffegrpc/grpccredentials"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"github.com/tetratelabs/wazero"
	"google.golang.org/grpc"

	"github.com/meshguard/meshguard/internal/testbed/envoyemu"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "mg-e2e-workload:", err)
		os.Exit(1)
	}
}

type options struct {
	name        string
	appAddr     string // where the application listens (the mesh's appPort)
	xdsAddr     string // control plane ADS address
	nodeCluster string // xDS node.cluster: <name>.<namespace>
	cpID        string // SPIFFE ID of the control plane
}

func run() error {
	var o options
	flag.StringVar(&o.name, "name", "", "workload name")
	flag.StringVar(&o.appAddr, "app-addr", "", "address the application listens on (127.0.0.1:<appPort> of the mesh description)")
	flag.StringVar(&o.xdsAddr, "xds", "", "control plane ADS address: the proxy's whole configuration comes from there")
	flag.StringVar(&o.nodeCluster, "node-cluster", "", "xDS node.cluster (<name>.<namespace> of the mesh description)")
	flag.StringVar(&o.cpID, "controlplane-id", "", "SPIFFE ID the control plane must present")
	flag.Parse()
	var errs []error
	for flagName, v := range map[string]string{"name": o.name, "app-addr": o.appAddr, "xds": o.xdsAddr, "node-cluster": o.nodeCluster, "controlplane-id": o.cpID} {
		if v == "" {
			errs = append(errs, fmt.Errorf("--%s is required", flagName))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	cpID, err := spiffeid.FromString(o.cpID)
	if err != nil {
		return fmt.Errorf("--controlplane-id: %w", err)
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})).With("workload", o.name)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	src, err := workloadapi.NewX509Source(ctx)
	if err != nil {
		return fmt.Errorf("x509 source: %w", err)
	}
	defer src.Close()
	svid, err := src.GetX509SVID()
	if err != nil {
		return err
	}

	app, err := startApp(o.name, o.appAddr)
	if err != nil {
		return err
	}
	defer app.Close()

	// The proxy: everything — listeners, routes, clusters, the ext_authz
	// filter and the wasm filter — comes from the control plane over ADS,
	// as generated. The connection to it is mTLS with the workload's SVID.
	cc, err := grpc.NewClient(o.xdsAddr, grpc.WithTransportCredentials(
		grpccredentials.MTLSClientCredentials(src, src, tlsconfig.AuthorizeID(cpID))))
	if err != nil {
		return err
	}
	defer cc.Close()
	rec := &recorder{}
	wcfg := envoyemu.WasmOptions{}
	if dir := os.Getenv("MG_E2E_WAZERO_CACHE"); dir != "" {
		// Shared on disk between the workload processes: compile once.
		if c, err := wazero.NewCompilationCacheWithDir(dir); err == nil {
			wcfg.CompilationCache = c
			defer c.Close(context.Background())
		}
	}
	node := &corev3.Node{Id: o.name + "-" + fmt.Sprint(os.Getpid()), Cluster: o.nodeCluster}
	proxy, err := envoyemu.Start(ctx, envoyemu.Config{Node: node, XDS: cc, SVIDs: src, Bundles: src,
		BindHost: "127.0.0.1", Wasm: wcfg, Name: o.name, OnOutcome: rec.add, Logger: log})
	if err != nil {
		return err
	}
	defer proxy.Close(context.Background())
	rctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	err = proxy.Ready(rctx)
	cancel()
	if err != nil {
		return err
	}
	inbound, ok := proxy.Listener(inboundListener)
	if !ok {
		return fmt.Errorf("the control plane gave no listener %s (listeners: %v)", inboundListener, proxy.Listeners())
	}

	drv := &driver{src: src, rec: rec, log: log, proxy: proxy}
	dl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	dsrv := &http.Server{Handler: drv.mux(), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = dsrv.Serve(dl) }()
	defer dsrv.Close()

	ready, _ := json.Marshal(map[string]string{"id": svid.ID.String(), "inbound": inbound, "driver": dl.Addr().String(), "app": o.appAddr})
	fmt.Printf("READY %s\n", ready)
	<-ctx.Done()
	return nil
}

// inboundListener is the listener the e2e mesh description gives every
// workload (inbound port "http").
const inboundListener = "inbound_http"

// startApp runs the application on addr: it echoes who called it and
// answers /status/<code> with that code (the attack scenarios use it to
// produce 401s and 404s).
func startApp(name, addr string) (*http.Server, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		code := http.StatusOK
		if rest, ok := strings.CutPrefix(r.URL.Path, "/status/"); ok {
			fmt.Sscanf(rest, "%d", &code)
			if code < 200 || code > 599 {
				code = http.StatusBadRequest
			}
		}
		w.Header().Set("content-type", "application/json")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(map[string]string{
			"workload": name, "method": r.Method, "path": r.URL.RequestURI(),
			"source": r.Header.Get("x-meshguard-source-id"),
			"xfcc":   r.Header.Get("x-forwarded-client-cert"),
		})
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(l) }()
	return srv, nil
}

// recorder keeps the sidecar's recent outcomes for the driver API.
type recorder struct {
	mu  sync.Mutex
	out []envoyemu.Outcome
}

func (r *recorder) add(o envoyemu.Outcome) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.out) >= 10000 {
		r.out = r.out[1:]
	}
	r.out = append(r.out, o)
}

type driver struct {
	src   *workloadapi.X509Source
	rec   *recorder
	log   *slog.Logger
	proxy *envoyemu.Proxy

	mu      sync.Mutex
	clients map[string]*http.Client
	// serial is the SVID the clients' pooled connections were made with.
	serial string
}

// CallRequest asks the workload to call another one.
type CallRequest struct {
	URL      string              `json:"url"`    // https://<inbound>/path
	DestID   string              `json:"destId"` // expected SPIFFE ID of the destination
	Method   string              `json:"method,omitempty"`
	Headers  map[string][]string `json:"headers,omitempty"`
	JWTAud   string              `json:"jwtAudience,omitempty"` // fetch a JWT-SVID for this audience and send it as Bearer
	Bearer   string              `json:"bearer,omitempty"`      // send this token instead
	Count    int                 `json:"count,omitempty"`       // repeat (default 1)
	TimeoutS float64             `json:"timeoutSeconds,omitempty"`
	// Via names an upstream of the workload's mesh description: the call
	// goes through its sidecar's outbound listener (plain HTTP to
	// loopback; the sidecar makes the mTLS connection), as the
	// application's calls do, with URL's path. Empty: the app calls the
	// destination's inbound listener itself (around its sidecar).
	Via string `json:"via,omitempty"`
}

// CallResult is the answer of one call (the last of Count), plus the status
// histogram of all of them.
type CallResult struct {
	Status   int            `json:"status"`
	Reason   string         `json:"reason,omitempty"`
	Body     string         `json:"body,omitempty"`
	Error    string         `json:"error,omitempty"`
	Statuses map[string]int `json:"statuses"`
}

func (d *driver) mux() *http.ServeMux {
	m := http.NewServeMux()
	m.HandleFunc("POST /call", d.call)
	m.HandleFunc("GET /svid", func(w http.ResponseWriter, r *http.Request) {
		s, err := d.src.GetX509SVID()
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		writeJSON(w, map[string]any{"id": s.ID.String(), "serial": s.Certificates[0].SerialNumber.String(),
			"notBefore": s.Certificates[0].NotBefore, "notAfter": s.Certificates[0].NotAfter})
	})
	m.HandleFunc("GET /jwt", func(w http.ResponseWriter, r *http.Request) {
		tok, err := d.fetchJWT(r.Context(), r.URL.Query().Get("aud"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		writeJSON(w, map[string]string{"token": tok})
	})
	m.HandleFunc("GET /outcomes", func(w http.ResponseWriter, r *http.Request) {
		d.rec.mu.Lock()
		out := append([]envoyemu.Outcome(nil), d.rec.out...)
		d.rec.mu.Unlock()
		writeJSON(w, out)
	})
	return m
}

func (d *driver) fetchJWT(ctx context.Context, aud string) (string, error) {
	if aud == "" {
		return "", errors.New("audience required")
	}
	s, err := workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: aud})
	if err != nil {
		return "", err
	}
	return s.Marshal(), nil
}

func (d *driver) client(dest string, timeout time.Duration) (*http.Client, error) {
	id, err := spiffeid.FromString(dest)
	if err != nil {
		return nil, fmt.Errorf("destId: %w", err)
	}
	key := dest + "|" + timeout.String()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.clients == nil {
		d.clients = map[string]*http.Client{}
	}
	// After a rotation, new connections present the new SVID: pooled ones
	// would keep presenting the old one until it expires, and the authz
	// server validates the peer certificate of every request.
	if s, err := d.src.GetX509SVID(); err == nil && s.Certificates[0].SerialNumber.String() != d.serial {
		d.serial = s.Certificates[0].SerialNumber.String()
		for _, c := range d.clients {
			c.CloseIdleConnections()
		}
	}
	c, ok := d.clients[key]
	if !ok {
		c = envoyemu.OutboundClient(d.src, d.src, id, timeout)
		d.clients[key] = c
	}
	return c, nil
}

func (d *driver) call(w http.ResponseWriter, r *http.Request) {
	var cr CallRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&cr); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	timeout := 5 * time.Second
	if cr.TimeoutS > 0 {
		timeout = time.Duration(cr.TimeoutS * float64(time.Second))
	}
	var c *http.Client
	var err error
	if cr.Via != "" {
		addr, ok := d.proxy.Listener("outbound_" + cr.Via)
		u, perr := url.Parse(cr.URL)
		if !ok || perr != nil {
			http.Error(w, fmt.Sprintf("no outbound listener for %q (listeners: %v), or bad url", cr.Via, d.proxy.Listeners()), http.StatusBadRequest)
			return
		}
		cr.URL = "http://" + addr + u.RequestURI()
		c = &http.Client{Timeout: timeout}
	} else if c, err = d.client(cr.DestID, timeout); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if cr.Method == "" {
		cr.Method = http.MethodGet
	}
	bearer := cr.Bearer
	if cr.JWTAud != "" {
		bearer, err = d.fetchJWT(r.Context(), cr.JWTAud)
		if err != nil {
			writeJSON(w, CallResult{Error: "fetch JWT-SVID: " + err.Error()})
			return
		}
	}
	res := CallResult{Statuses: map[string]int{}}
	for i := 0; i < max(cr.Count, 1); i++ {
		req, err := http.NewRequestWithContext(r.Context(), cr.Method, cr.URL, nil)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		for k, vs := range cr.Headers {
			for _, v := range vs {
				req.Header.Add(k, v)
			}
		}
		if bearer != "" {
			req.Header.Set("authorization", "Bearer "+bearer)
		}
		resp, err := c.Do(req)
		if err != nil {
			res.Status, res.Reason, res.Body, res.Error = 0, "", "", err.Error()
			res.Statuses["error"]++
			continue
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		res.Status, res.Reason, res.Body, res.Error = resp.StatusCode, resp.Header.Get("x-meshguard-reason"), string(body), ""
		res.Statuses[fmt.Sprint(resp.StatusCode)]++
	}
	writeJSON(w, res)
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("content-type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}
