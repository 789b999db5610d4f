package deploy

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	dto "github.com/prometheus/client_model/go"

	"buko.app/agentrunner/runner"
	"buko.app/agentrunner/sessions"
	"buko.app/agentrunner/vault"
	"buko.app/agentrunner/workflows"
)

// family is one metric family the binary can export.
type family struct {
	name    string
	pkg     string // the package whose NewMetrics registers it; "" for client_golang's own collectors
	typ     dto.MetricType
	help    string
	labels  []string            // variable label names, sorted
	buckets []string            // histograms: the le values, as Prometheus exposes them, +Inf included
	known   map[string][]string // label -> values NewMetrics pre-creates (only labels it pre-creates)
}

// recorder is a Registerer that keeps what is registered, so the test can
// make every vector show a child.
type recorder struct {
	reg        *prometheus.Registry
	collectors []prometheus.Collector
}

func (r *recorder) Register(c prometheus.Collector) error {
	if err := r.reg.Register(c); err != nil {
		return err
	}
	r.collectors = append(r.collectors, c)
	return nil
}

func (r *recorder) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			panic(err)
		}
	}
}

func (r *recorder) Unregister(c prometheus.Collector) bool { return r.reg.Unregister(c) }

// touch makes a vector export one child by trying 0..12 label values.
func touch[T any](get func(...string) (T, error)) error {
	for n := 0; n <= 12; n++ {
		vals := make([]string, n)
		for i := range vals {
			vals[i] = "x"
		}
		if _, err := get(vals...); err == nil {
			return nil
		}
	}
	return errors.New("no label count between 0 and 12 fits")
}

// exported gathers every metric family the binary can export: each package's
// Metrics on a fresh registry, plus the Go and process collectors cmd registers.
func exported(t *testing.T) map[string]*family {
	t.Helper()
	out := map[string]*family{}
	pkgs := []struct {
		name string
		make func(prometheus.Registerer)
	}{
		{"sessions", func(r prometheus.Registerer) { sessions.NewMetrics(r) }},
		{"runner", func(r prometheus.Registerer) { runner.NewMetrics(r) }},
		{"workflows", func(r prometheus.Registerer) { workflows.NewMetrics(r) }},
		{"vault", func(r prometheus.Registerer) { vault.NewMetrics(r) }},
		{"", func(r prometheus.Registerer) {
			r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		}},
	}
	for _, p := range pkgs {
		rec := &recorder{reg: prometheus.NewRegistry()}
		p.make(rec)
		before, err := rec.reg.Gather()
		if err != nil {
			t.Fatalf("%s: gather: %v", p.name, err)
		}
		known := map[string]map[string][]string{}
		for _, mf := range before {
			for _, m := range mf.GetMetric() {
				for _, lp := range m.GetLabel() {
					if known[mf.GetName()] == nil {
						known[mf.GetName()] = map[string][]string{}
					}
					known[mf.GetName()][lp.GetName()] = append(known[mf.GetName()][lp.GetName()], lp.GetValue())
				}
			}
		}
		for _, c := range rec.collectors {
			var err error
			switch v := c.(type) {
			case *prometheus.CounterVec:
				err = touch(v.GetMetricWithLabelValues)
			case *prometheus.GaugeVec:
				err = touch(v.GetMetricWithLabelValues)
			case *prometheus.HistogramVec:
				err = touch(v.GetMetricWithLabelValues)
			case *prometheus.SummaryVec:
				err = touch(v.GetMetricWithLabelValues)
			}
			if err != nil {
				t.Fatalf("%s: cannot make %T show a child: %v", p.name, c, err)
			}
		}
		mfs, err := rec.reg.Gather()
		if err != nil {
			t.Fatalf("%s: gather: %v", p.name, err)
		}
		for _, mf := range mfs {
			f := &family{name: mf.GetName(), pkg: p.name, typ: mf.GetType(), help: mf.GetHelp(), known: known[mf.GetName()]}
			if len(mf.GetMetric()) == 0 {
				t.Fatalf("%s: family %s has no metric after touching every vector", p.name, f.name)
			}
			m := mf.GetMetric()[0]
			for _, lp := range m.GetLabel() {
				f.labels = append(f.labels, lp.GetName())
			}
			sort.Strings(f.labels)
			if h := m.GetHistogram(); h != nil {
				for _, b := range h.GetBucket() {
					f.buckets = append(f.buckets, formatLe(b.GetUpperBound()))
				}
				f.buckets = append(f.buckets, "+Inf")
			}
			if prev, dup := out[f.name]; dup {
				t.Fatalf("metric %s is registered by both %q and %q", f.name, prev.pkg, f.pkg)
			}
			out[f.name] = f
		}
	}
	if len(out) < 40 {
		t.Fatalf("gathered only %d metric families: the packages' NewMetrics registered less than expected", len(out))
	}
	return out
}

// formatLe formats a bucket bound as the text exposition does.
func formatLe(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }

// series is what a query may name: a family itself, or a histogram's or
// summary's _bucket/_count/_sum series.
type series struct {
	fam    *family
	suffix string // "", "_bucket", "_count", "_sum"
}

// targetLabels are added by Prometheus or the Kubernetes service discovery,
// not by the binary; queries may match or group by them.
var targetLabels = []string{"job", "instance", "namespace", "pod", "container", "service", "endpoint"}

func resolve(fams map[string]*family, name string) (series, bool) {
	if f, ok := fams[name]; ok {
		return series{fam: f}, true
	}
	for _, suf := range []string{"_bucket", "_count", "_sum"} {
		base, ok := strings.CutSuffix(name, suf)
		if !ok {
			continue
		}
		f, ok := fams[base]
		if !ok {
			continue
		}
		switch {
		case f.typ == dto.MetricType_HISTOGRAM, f.typ == dto.MetricType_SUMMARY && suf != "_bucket":
			return series{fam: f, suffix: suf}, true
		}
	}
	return series{}, false
}

// labelsOf lists the labels a series can carry.
func (s series) labelsOf() []string {
	ls := append(slices.Clone(s.fam.labels), targetLabels...)
	if s.suffix == "_bucket" {
		ls = append(ls, "le")
	}
	if s.fam.typ == dto.MetricType_SUMMARY && s.suffix == "" {
		ls = append(ls, "quantile")
	}
	return ls
}

// checkRef checks one metric reference of a query: the metric exists, its
// matchers name labels it has, le values are real buckets, and values of
// labels whose values NewMetrics pre-creates are among them.
func checkRef(fams map[string]*family, recorded map[string]bool, r ref) error {
	if strings.Contains(r.name, ":") {
		if !recorded[r.name] {
			return fmt.Errorf("%s is not recorded by any rule in deploy/prometheus", r.name)
		}
		return nil
	}
	if r.name == "up" {
		return nil
	}
	s, ok := resolve(fams, r.name)
	if !ok {
		return fmt.Errorf("%s is not a metric the binary exports", r.name)
	}
	for _, m := range r.matchers {
		if m.label == "__name__" {
			continue
		}
		if !slices.Contains(s.labelsOf(), m.label) {
			return fmt.Errorf("%s has no label %q (it has %v)", r.name, m.label, s.fam.labels)
		}
		if m.label == "le" && m.op == "=" && !slices.Contains(s.fam.buckets, m.value) {
			return fmt.Errorf("%s has no bucket le=%q (its buckets: %v)", r.name, m.value, s.fam.buckets)
		}
		known := s.fam.known[m.label]
		if len(known) == 0 {
			continue
		}
		for _, v := range literalValues(m) {
			if !slices.Contains(known, v) {
				return fmt.Errorf("%s{%s%s%q}: %q is not a value of %s (NewMetrics creates %v)", r.name, m.label, m.op, m.value, v, m.label, known)
			}
		}
	}
	return nil
}

// literalValues lists the values a matcher names when it is an equality or a
// plain alternation (a|b|c); nil otherwise.
func literalValues(m matcher) []string {
	switch m.op {
	case "=", "!=":
		return []string{m.value}
	case "=~", "!~":
		parts := strings.Split(m.value, "|")
		for _, p := range parts {
			if p == "" || strings.ContainsAny(p, `.*+?()[]{}^$\`) {
				return nil
			}
		}
		return parts
	}
	return nil
}

// checkGrouping checks the labels an expression groups by exist on at least
// one of the series it names (or are target labels or le).
func checkGrouping(fams map[string]*family, refs []ref, grouping []string) error {
	have := append([]string{"le"}, targetLabels...)
	for _, r := range refs {
		if s, ok := resolve(fams, r.name); ok {
			have = append(have, s.labelsOf()...)
		}
	}
	for _, g := range grouping {
		if !slices.Contains(have, g) {
			return fmt.Errorf("groups by %q, which none of its metrics has", g)
		}
	}
	return nil
}

func TestExportedMetricsAreGathered(t *testing.T) {
	fams := exported(t)
	for _, want := range []string{
		"agentrunner_sessions_handoff_duration_seconds",
		"agentrunner_runner_leases_held",
		"agentrunner_workflows_bot_api_calls_total",
		"agentrunner_workflows_reply_latency_seconds",
		"agentrunner_temporal_activity_schedule_to_start_latency_seconds",
		"agentrunner_temporal_long_request_failure_total",
		"agentrunner_runner_active_bots",
		"agentrunner_runner_shards",
		"agentrunner_vault_cache_hits_total",
		"process_resident_memory_bytes",
	} {
		if _, ok := fams[want]; !ok {
			t.Errorf("%s not gathered", want)
		}
	}
	s, ok := resolve(fams, "agentrunner_sessions_handoff_duration_seconds_bucket")
	if !ok || s.suffix != "_bucket" || len(s.fam.buckets) < 2 {
		t.Errorf("histogram bucket series not resolved: %+v %v", s, ok)
	}
	if _, ok := resolve(fams, "agentrunner_runner_leases_held_count"); ok {
		t.Error("a gauge resolved a _count series")
	}
	t.Logf("%d metric families", len(fams))
}

// Unit words that are not base units (seconds, bytes) or that hide a ratio.
var nonBaseUnits = []string{"milliseconds", "millis", "ms", "microseconds", "us", "nanoseconds", "ns",
	"minutes", "mins", "hours", "days", "kilobytes", "kb", "megabytes", "mb", "gigabytes", "gb", "bits", "percent", "pct"}

// Words that name a time and so need _seconds.
var timeWords = []string{"duration", "latency", "lag", "delay", "elapsed", "age", "time", "timeout"}

func TestMetricNamesLint(t *testing.T) {
	for _, f := range exported(t) {
		if f.pkg == "" {
			continue // client_golang's Go and process collectors
		}
		// workflows forwards the Temporal SDK's own metrics as agentrunner_temporal_*.
		sdk := f.pkg == "workflows" && strings.HasPrefix(f.name, "agentrunner_temporal_")
		if !sdk && !strings.HasPrefix(f.name, "agentrunner_"+f.pkg+"_") {
			t.Errorf("%s (package %s): want the prefix agentrunner_%s_", f.name, f.pkg, f.pkg)
		}
		if strings.TrimSpace(f.help) == "" {
			t.Errorf("%s: no help text", f.name)
		}
		words := strings.Split(f.name, "_")
		counter := f.typ == dto.MetricType_COUNTER
		if counter != strings.HasSuffix(f.name, "_total") {
			t.Errorf("%s is a %s: counters, and only counters, end in _total", f.name, f.typ)
		}
		unitWords := strings.Split(strings.TrimSuffix(f.name, "_total"), "_")
		for _, w := range words {
			if slices.Contains(nonBaseUnits, w) {
				t.Errorf("%s: %q is not a base unit (use seconds or bytes, ratios 0..1)", f.name, w)
			}
			if slices.Contains(timeWords, w) && unitWords[len(unitWords)-1] != "seconds" {
				t.Errorf("%s names a time (%q) but does not end in _seconds", f.name, w)
			}
		}
		for _, l := range f.labels {
			switch {
			case slices.Contains([]string{"user_id", "chat_id", "update_id", "message_id", "token", "user", "chat"}, l):
				t.Errorf("%s: label %q is per user/chat/update or secret: never a label", f.name, l)
			case l == "bot_id" || l == "bot":
				if f.typ != dto.MetricType_GAUGE {
					t.Errorf("%s is a %s with label %q: per-bot labels only on bounded gauges", f.name, f.typ, l)
				}
			}
		}
	}
}
