// Command abitest is a proxy-wasm filter that exercises every host function
// the Go SDK imports. The host's tests drive it with an "x-op" request header
// and check what it reports back in headers, metrics and shared data.
package main

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"time"

	pw "github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm"
	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm/types"
)

func main() {}

func init() { pw.SetVMContext(&vmContext{}) }

type vmContext struct{ types.DefaultVMContext }

func (*vmContext) OnVMStart(int) types.OnVMStartStatus {
	b, _ := pw.GetVMConfiguration()
	return types.OnVMStartStatus(string(b) != "refuse")
}

func (*vmContext) NewPluginContext(uint32) types.PluginContext { return &plugin{} }

type config struct {
	Fail        bool   `json:"fail"`
	Tag         string `json:"tag"`
	TickMillis  uint32 `json:"tickMillis"`
	TickCluster string `json:"tickCluster"`
}

type plugin struct {
	types.DefaultPluginContext
	cfg      config
	requests pw.MetricCounter
	inflight pw.MetricGauge
	sizes    pw.MetricHistogram
	ticks    pw.MetricCounter
	queued   pw.MetricCounter
	tickOK   pw.MetricCounter
	queueID  uint32
}

func (p *plugin) OnPluginStart(int) types.OnPluginStartStatus {
	b, err := pw.GetPluginConfiguration()
	if err == nil && len(b) > 0 {
		if err := json.Unmarshal(b, &p.cfg); err != nil {
			pw.LogErrorf("abitest: bad configuration: %v", err)
			return types.OnPluginStartStatusFailed
		}
	}
	if p.cfg.Fail {
		pw.LogError("abitest: configuration refused")
		return types.OnPluginStartStatusFailed
	}
	p.requests = pw.DefineCounterMetric("abitest_requests_total")
	p.inflight = pw.DefineGaugeMetric("abitest_inflight")
	p.sizes = pw.DefineHistogramMetric("abitest_request_headers")
	p.ticks = pw.DefineCounterMetric("abitest_ticks_total")
	p.queued = pw.DefineCounterMetric("abitest_queue_items_total")
	p.tickOK = pw.DefineCounterMetric("abitest_tick_calls_ok_total")
	if p.cfg.TickMillis > 0 {
		if err := pw.SetTickPeriodMilliSeconds(p.cfg.TickMillis); err != nil {
			pw.LogErrorf("abitest: tick: %v", err)
			return types.OnPluginStartStatusFailed
		}
	}
	id, err := pw.RegisterSharedQueue("abitest")
	if err != nil {
		pw.LogErrorf("abitest: queue: %v", err)
		return types.OnPluginStartStatusFailed
	}
	p.queueID = id
	pw.LogInfof("abitest: configured tag=%s", p.cfg.Tag)
	return types.OnPluginStartStatusOK
}

func (p *plugin) OnTick() {
	p.ticks.Increment(1)
	if p.cfg.TickCluster == "" {
		return
	}
	hs := [][2]string{{":method", "POST"}, {":path", "/events"}, {":authority", "control-plane"}}
	_, err := pw.DispatchHttpCall(p.cfg.TickCluster, hs, []byte("tick"), nil, 5000, func(_, bodySize, _ int) {
		if callHeader(":status") == "200" {
			p.tickOK.Increment(1)
		}
	})
	if err != nil {
		pw.LogErrorf("abitest: tick callout: %v", err)
	}
}

func (p *plugin) OnQueueReady(id uint32) {
	for {
		b, err := pw.DequeueSharedQueue(id)
		if err != nil {
			return
		}
		p.queued.Increment(1)
		_ = pw.SetSharedData("queue:last", b, 0)
	}
}

func (p *plugin) NewHttpContext(uint32) types.HttpContext { return &httpContext{p: p} }

type httpContext struct {
	types.DefaultHttpContext
	p  *plugin
	op string
}

func callHeader(key string) string {
	hs, _ := pw.GetHttpCallResponseHeaders()
	for _, h := range hs {
		if h[0] == key {
			return h[1]
		}
	}
	return ""
}

func add(k, v string) { _ = pw.AddHttpRequestHeader(k, v) }

func (c *httpContext) OnHttpRequestHeaders(n int, eos bool) types.Action {
	c.p.requests.Increment(1)
	c.p.inflight.Add(1)
	c.p.sizes.Record(uint64(n))
	c.op, _ = pw.GetHttpRequestHeader("x-op")
	add("x-num-headers", strconv.Itoa(n))
	add("x-eos", strconv.FormatBool(eos))
	add("x-tag", c.p.cfg.Tag)
	switch c.op {
	case "headers":
		v, _ := pw.GetHttpRequestHeader("X-Get")
		_ = pw.ReplaceHttpRequestHeader("x-got", v)
		_ = pw.AddHttpRequestHeader("x-multi", "b")
		joined, _ := pw.GetHttpRequestHeader("x-multi")
		add("x-multi-joined", joined)
		_ = pw.ReplaceHttpRequestHeader("x-replace", "new")
		_ = pw.RemoveHttpRequestHeader("x-remove")
		if _, err := pw.GetHttpRequestHeader("x-missing"); errors.Is(err, types.ErrorStatusNotFound) {
			add("x-missing", "not-found")
		}
		if _, err := pw.GetHttpResponseHeaders(); err != nil {
			add("x-response-headers", "unavailable")
		}
		if _, err := pw.GetHttpResponseHeader(":status"); err != nil {
			add("x-response-header-error", err.Error())
		}
		if _, err := pw.GetPluginConfiguration(); err != nil {
			add("x-plugin-config-error", err.Error())
		}
		hs, _ := pw.GetHttpRequestHeaders()
		add("x-count", strconv.Itoa(len(hs)))
	case "setall":
		_ = pw.ReplaceHttpRequestHeaders([][2]string{{":method", "GET"}, {":path", "/rewritten"}, {":authority", "svc"}, {"X-Only", "1"}})
	case "props":
		hv, _ := pw.GetHttpRequestHeader("x-props")
		for _, path := range strings.Split(hv, ",") {
			v, err := pw.GetProperty(strings.Split(path, "."))
			if err != nil {
				add("x-prop-"+path, "err:"+err.Error())
				continue
			}
			add("x-prop-"+path, hex.EncodeToString(v))
		}
		if err := pw.SetProperty([]string{"meshguard", "decision"}, []byte("allow")); err != nil {
			add("x-setprop", "err:"+err.Error())
		} else {
			v, _ := pw.GetProperty([]string{"meshguard", "decision"})
			add("x-setprop", string(v))
		}
		m, err := pw.GetPropertyMap([]string{"request", "headers"})
		if err == nil {
			add("x-request-headers-count", strconv.Itoa(len(m)))
		}
	case "deny":
		_ = pw.SendHttpResponse(403, [][2]string{{"X-Reason", "test-deny"}}, []byte("denied"), -1)
		return types.ActionPause
	case "callout":
		cluster, _ := pw.GetHttpRequestHeader("x-cluster")
		path, _ := pw.GetHttpRequestHeader("x-callout-path")
		hs := [][2]string{{":method", "POST"}, {":path", path}, {":authority", "authz"}, {"x-from", "abitest"}}
		_, err := pw.DispatchHttpCall(cluster, hs, []byte("ping"), nil, 5000, func(_, bodySize, _ int) {
			st := callHeader(":status")
			body, _ := pw.GetHttpCallResponseBody(0, bodySize)
			echo := callHeader("x-echo")
			if st == "" {
				st = "failed"
			}
			add("x-callout-status", st)
			add("x-callout-body", string(body))
			add("x-callout-echo", echo)
			if st == "403" {
				_ = pw.SendHttpResponse(403, nil, []byte("callout denied"), -1)
				return
			}
			_ = pw.ResumeHttpRequest()
		})
		if err != nil {
			add("x-callout-error", err.Error())
			return types.ActionContinue
		}
		return types.ActionPause
	case "shared-incr":
		for {
			v, cas, err := pw.GetSharedData("counter")
			n := 0
			if err == nil {
				n, _ = strconv.Atoi(string(v))
			}
			if err := pw.SetSharedData("counter", []byte(strconv.Itoa(n+1)), cas); err == nil {
				add("x-counter", strconv.Itoa(n+1))
				break
			} else if !errors.Is(err, types.ErrorStatusCasMismatch) {
				add("x-counter-error", err.Error())
				break
			}
		}
	case "shared-stale":
		_ = pw.SetSharedData("stale", []byte("1"), 0)
		_, cas, _ := pw.GetSharedData("stale")
		if err := pw.SetSharedData("stale", []byte("2"), cas); err != nil {
			add("x-first-set", err.Error())
		}
		if err := pw.SetSharedData("stale", []byte("3"), cas); errors.Is(err, types.ErrorStatusCasMismatch) {
			add("x-stale", "cas-mismatch")
		}
		v, _, _ := pw.GetSharedData("stale")
		add("x-stale-value", string(v))
	case "log":
		pw.LogWarnf("abitest: warn from %s", "stream")
		pw.LogDebug("abitest: debug from stream")
	case "queue":
		item, _ := pw.GetHttpRequestHeader("x-item")
		if err := pw.EnqueueSharedQueue(c.p.queueID, []byte(item)); err != nil {
			add("x-queue-error", err.Error())
		}
	case "metric-read":
		add("x-requests", strconv.FormatUint(c.p.requests.Value(), 10))
	case "time":
		add("x-now", strconv.FormatInt(time.Now().UnixNano(), 10))
	case "pause":
		return types.ActionPause
	case "panic":
		panic("abitest: panic on request")
	}
	return types.ActionContinue
}

func (c *httpContext) OnHttpRequestBody(n int, eos bool) types.Action {
	if c.op != "body" {
		return types.ActionContinue
	}
	b, err := pw.GetHttpRequestBody(0, n)
	if err != nil {
		return types.ActionContinue
	}
	_ = pw.ReplaceHttpRequestBody([]byte(strings.ToUpper(string(b))))
	_ = pw.AppendHttpRequestBody([]byte("!"))
	_ = pw.PrependHttpRequestBody([]byte(">"))
	return types.ActionContinue
}

func (c *httpContext) OnHttpRequestTrailers(n int) types.Action {
	if c.op == "body" {
		_ = pw.AddHttpRequestTrailer("x-trailer-seen", strconv.Itoa(n))
	}
	return types.ActionContinue
}

func (c *httpContext) OnHttpResponseHeaders(n int, eos bool) types.Action {
	st, _ := pw.GetHttpResponseHeader(":status")
	_ = pw.AddHttpResponseHeader("x-upstream-status", st)
	_ = pw.AddHttpResponseHeader("x-op-echo", c.op)
	// Envoy no longer exposes the request's headers in the response phase.
	if _, err := pw.GetHttpRequestHeader("x-op"); err != nil {
		_ = pw.AddHttpResponseHeader("x-request-headers-in-response", err.Error())
	}
	if c.op == "deny-response" {
		_ = pw.SendHttpResponse(451, nil, []byte("late"), -1)
		return types.ActionPause
	}
	return types.ActionContinue
}

func (c *httpContext) OnHttpResponseBody(n int, eos bool) types.Action {
	if c.op == "body" {
		_ = pw.AppendHttpResponseBody([]byte(" world"))
	}
	return types.ActionContinue
}

func (c *httpContext) OnHttpStreamDone() {
	c.p.inflight.Add(-1)
	// proxy_on_log sees the request headers and the response headers.
	_, errReq := pw.GetHttpRequestHeader(":path")
	st, errResp := pw.GetHttpResponseHeader(":status")
	if errReq == nil && errResp == nil {
		_ = pw.SetSharedData("log:last-status", []byte(st), 0)
	}
}
