package testsupport

// Reading metrics back from a registry in tests.

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// MetricValue sums the children of metric name in g: a counter's or gauge's
// value, a histogram's sample count. With label = name, value only the
// children carrying that label value count. A metric g does not have is 0.
func MetricValue(t testing.TB, g prometheus.Gatherer, name string, label ...string) float64 {
	t.Helper()
	if len(label) != 0 && len(label) != 2 {
		t.Fatalf("MetricValue: label is a name and a value, got %q", label)
	}
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if len(label) == 2 && !hasLabel(m, label[0], label[1]) {
				continue
			}
			switch {
			case m.Counter != nil:
				sum += m.Counter.GetValue()
			case m.Gauge != nil:
				sum += m.Gauge.GetValue()
			case m.Histogram != nil:
				sum += float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return sum
}

func hasLabel(m *dto.Metric, name, value string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == name && l.GetValue() == value {
			return true
		}
	}
	return false
}
