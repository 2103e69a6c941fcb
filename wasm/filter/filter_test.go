package main

import (
	"encoding/binary"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/meshguard/meshguard/policies/wire"
	"github.com/meshguard/meshguard/wasm/internal/filtercore"
	"github.com/meshguard/meshguard/wasm/internal/scenario"
	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm/proxytest"
	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm/types"
)

// proxytestDriver runs the SDK glue (compiled natively) under proxytest's
// host emulator. proxytest's limits shape it: one emulator per process
// (global lock: tests here do not run in parallel), one plugin context per
// emulator (a new configuration is delivered with a new emulator around the
// same VM context, which is how ECDS reaches a VM: a new plugin context),
// and properties can be set but never removed.
type proxytestDriver struct {
	now    int64
	vmc    *vmContext
	host   proxytest.HostEmulator
	reset  func()
	seen   map[uint32]bool
	events []wire.Event
	props  map[string]bool
	good   []byte // last configuration that started
}

func newProxytestDriver(t *testing.T) scenario.Driver {
	d := &proxytestDriver{now: time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC).UnixNano()}
	t.Cleanup(func() {
		if d.reset != nil {
			d.reset()
		}
	})
	return d
}

func (d *proxytestDriver) emulator(cfg []byte) error {
	if d.reset != nil {
		d.reset()
	}
	opt := proxytest.NewEmulatorOption().WithVMContext(d.vmc).WithPluginConfiguration(cfg)
	d.host, d.reset = proxytest.NewHostEmulator(opt)
	d.seen, d.props = map[uint32]bool{}, map[string]bool{}
	if d.host.StartVM() != types.OnVMStartStatusOK {
		return errString("vm start failed")
	}
	if d.host.StartPlugin() != types.OnPluginStartStatusOK {
		return errString("plugin start failed")
	}
	return nil
}

type errString string

func (e errString) Error() string { return string(e) }

func (d *proxytestDriver) Start(t *testing.T, cfg []byte) error {
	d.vmc = newVMContext(func() int64 { return d.now })
	d.events = nil
	if err := d.emulator(cfg); err != nil {
		return err
	}
	d.good = cfg
	return nil
}

func (d *proxytestDriver) Reconfigure(t *testing.T, cfg []byte) error {
	old := d.vmc.vm
	err := d.emulator(cfg)
	if d.vmc.vm != old {
		t.Fatal("the VM state did not survive the new plugin context")
	}
	if err != nil {
		// Envoy keeps the previous plugin context when a new one fails to
		// start; proxytest cannot hold two, so put the last good one back.
		if rerr := d.emulator(d.good); rerr != nil {
			t.Fatalf("restore: %v", rerr)
		}
		return err
	}
	d.good = cfg
	return nil
}

func (d *proxytestDriver) setProp(t *testing.T, path string, v []byte) {
	if len(v) == 0 {
		if d.props[path] {
			t.Fatalf("proxytest cannot remove property %s; order the scenario so it is not needed", path)
		}
		return
	}
	d.props[path] = true
	if err := d.host.SetProperty(strings.Split(path, "."), v); err != nil {
		t.Fatal(err)
	}
}

func (d *proxytestDriver) Do(t *testing.T, r scenario.Request) scenario.Result {
	san := []byte(r.Source)
	mtls := []byte{0}
	if r.MTLS || r.Source != "" {
		mtls[0] = 1
	}
	d.setProp(t, "connection.uri_san_peer_certificate", san)
	d.setProp(t, "connection.mtls", mtls)
	d.setProp(t, "source.address", []byte(r.SourceAddr))
	d.setProp(t, "destination.address", []byte(r.DestAddr))
	d.setProp(t, "xds.route_name", []byte(r.Route))
	var dir []byte
	if r.Direction != 0 {
		dir = binary.LittleEndian.AppendUint64(nil, uint64(r.Direction))
	}
	d.setProp(t, "listener_direction", dir)
	d.setProp(t, "xds.cluster_name", []byte(r.Cluster))

	id := d.host.InitializeHttpContext()
	defer d.host.CompleteHttpContext(id)
	hdrs := append([][2]string{{":method", r.Method}, {":path", r.Path}, {":authority", r.Authority}, {":scheme", "http"}}, r.Headers...)
	action := d.host.CallOnRequestHeaders(id, hdrs, true)
	if lr := d.host.GetSentLocalResponse(id); lr != nil {
		if action != types.ActionPause {
			t.Fatal("local response without pausing the stream")
		}
		return scenario.Result{Status: int(lr.StatusCode), Headers: lr.Headers, Body: append([]byte(nil), lr.Data...)}
	}
	if action != types.ActionContinue {
		t.Fatalf("action %v without a local response", action)
	}
	up := d.host.GetCurrentRequestHeaders(id)
	status := r.Status
	if status == 0 {
		status = 200
	}
	d.host.CallOnResponseHeaders(id, [][2]string{{":status", strconv.Itoa(status)}}, true)
	return scenario.Result{Forwarded: true, Upstream: up}
}

func (d *proxytestDriver) Tick(t *testing.T) {
	for round := 0; round < 100; round++ {
		d.host.Tick()
		pending := false
		for _, c := range d.host.GetCalloutAttributesFromContext(proxytest.PluginContextID) {
			if d.seen[c.CalloutID] {
				continue
			}
			d.seen[c.CalloutID] = true
			pending = true
			if c.Upstream != scenario.Cluster {
				t.Fatalf("events sent to cluster %q", c.Upstream)
			}
			var b wire.EventBatch
			if err := json.Unmarshal(c.Body, &b); err != nil {
				t.Fatalf("event batch: %v", err)
			}
			d.events = append(d.events, b.Events...)
			d.host.CallOnHttpCallResponse(c.CalloutID, [][2]string{{":status", "200"}}, nil, nil)
		}
		if !pending {
			return
		}
	}
}

func (d *proxytestDriver) Sleep(dur time.Duration) { d.now += int64(dur) }

func (d *proxytestDriver) Events(*testing.T) []wire.Event { return d.events }

func TestScenariosProxytest(t *testing.T) { scenario.Run(t, newProxytestDriver) }

// TestMetricsProxytest checks the proxy-wasm metrics the glue defines.
func TestMetricsProxytest(t *testing.T) {
	d := newProxytestDriver(t).(*proxytestDriver)
	if err := d.Start(t, scenario.Config(t, scenario.Options{})); err != nil {
		t.Fatal(err)
	}
	ok := scenario.Request{Source: scenario.Web, SourceAddr: "10.0.0.7:1", DestAddr: "10.0.0.9:8080", Route: "orders-admin",
		Method: "GET", Path: "/x", Authority: "orders", Headers: [][2]string{{"x-meshguard-route", "forged"}}}
	d.Do(t, ok)
	// Request-path counters are batched in the VM and reach the host on
	// the next tick.
	if got, _ := d.host.GetCounterMetric("meshguard_wasm_requests_total"); got != 0 {
		t.Errorf("requests counted before a tick: %d", got)
	}
	d.Tick(t)
	for name, want := range map[string]uint64{
		"meshguard_wasm_requests_total":                             1,
		"meshguard_wasm_decisions_total.reason.denied_by_policy":    1,
		"meshguard_wasm_spoofed_headers_stripped_total":             1,
		"meshguard_wasm_config_loads_total.result.ok":               1,
		"meshguard_wasm_anomalies_total.detector.rate.response.log": 0,
	} {
		got, err := d.host.GetCounterMetric(name)
		if err != nil || got != want {
			t.Errorf("%s = %d (%v), want %d", name, got, err, want)
		}
	}
	var _ filtercore.Level // the glue's only dependency besides the SDK
}

// TestInvalidConfigLogsProxytest checks the refusal is explained in the log.
func TestInvalidConfigLogsProxytest(t *testing.T) {
	d := newProxytestDriver(t).(*proxytestDriver)
	if err := d.Start(t, []byte(`{"bundle":{"format":"nope"}}`)); err == nil {
		t.Fatal("accepted")
	}
	logs := strings.Join(d.host.GetCriticalLogs(), "\n")
	if !strings.Contains(logs, "invalid plugin configuration") || !strings.Contains(logs, "nope") {
		t.Fatalf("critical log does not explain the refusal: %q", logs)
	}
}
