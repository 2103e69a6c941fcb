package wasmhost

import (
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// Collector exposes the guest's metrics to Prometheus: counters as counters,
// gauges as gauges, histograms as summaries (count and sum; Envoy's bucket
// boundaries are not reproduced). Characters Prometheus does not accept in
// names become '_'. constLabels are added to every series.
func (m *Metrics) Collector(constLabels prometheus.Labels) prometheus.Collector {
	return &collector{m: m, labels: constLabels}
}

type collector struct {
	m      *Metrics
	labels prometheus.Labels
}

// Describe sends nothing: the guest defines metrics at run time, so this is
// an unchecked collector.
func (c *collector) Describe(chan<- *prometheus.Desc) {}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	for _, mt := range c.m.Snapshot() {
		desc := prometheus.NewDesc(promName(mt.Name), "proxy-wasm "+mt.Type.String()+" defined by the filter", nil, c.labels)
		switch mt.Type {
		case Counter:
			ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, float64(mt.Value))
		case Gauge:
			ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, float64(mt.Value))
		case Histogram:
			ch <- prometheus.MustNewConstSummary(desc, uint64(mt.Value), float64(mt.Sum), nil)
		}
	}
}

func promName(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r == '_', r == ':', r >= '0' && r <= '9':
			return r
		}
		return '_'
	}, s)
}
