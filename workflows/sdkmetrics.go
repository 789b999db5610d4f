package workflows

import (
	"errors"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// The Temporal SDK's own metrics (task-queue latencies, poll and request
// failures, slots) are forwarded to Prometheus as agentrunner_<sdk name>, in
// base units: counters get _total, timers become histograms in _seconds.
// Vectors are registered on first use. Every vector has the same bounded
// label set (sdkLabels); tags outside it are dropped, and values that could
// grow without bound are folded: task queues other than the ones this process
// serves and workflow or activity types other than ours become "other".

// sdkLabels are the SDK tags kept as labels; all others are dropped.
func sdkLabels() []string {
	return []string{"namespace", "task_queue", "workflow_type", "activity_type", "operation",
		"poller_type", "worker_type", "status_code", "failure_reason"}
}

// sdkPrecreated are the SDK metrics registered up front (the alerts and the
// dashboard name them, so they exist before the SDK first emits them).
const (
	sdkWorkflowTaskScheduleToStart = "temporal_workflow_task_schedule_to_start_latency"
	sdkActivityScheduleToStart     = "temporal_activity_schedule_to_start_latency"
	sdkLongRequestFailure          = "temporal_long_request_failure"
	sdkRequestFailure              = "temporal_request_failure"
	sdkSlotsAvailable              = "temporal_worker_task_slots_available"
)

const sdkOther = "other"

// maxSDKLabelLen caps a forwarded label value.
const maxSDKLabelLen = 64

type sdkMetrics struct {
	reg prometheus.Registerer

	mu       sync.Mutex
	queues   map[string]bool
	counters map[string]*prometheus.CounterVec
	gauges   map[string]*prometheus.GaugeVec
	timers   map[string]*prometheus.HistogramVec
}

func newSDKMetrics(reg prometheus.Registerer) *sdkMetrics {
	s := &sdkMetrics{
		reg:      reg,
		queues:   map[string]bool{DefaultTaskQueue: true},
		counters: map[string]*prometheus.CounterVec{},
		gauges:   map[string]*prometheus.GaugeVec{},
		timers:   map[string]*prometheus.HistogramVec{},
	}
	s.counterVec(sdkLongRequestFailure)
	s.counterVec(sdkRequestFailure)
	s.timerVec(sdkWorkflowTaskScheduleToStart)
	s.timerVec(sdkActivityScheduleToStart)
	s.gaugeVec(sdkSlotsAvailable)
	return s
}

func (s *sdkMetrics) allowQueue(q string) {
	if q == "" {
		return
	}
	s.mu.Lock()
	s.queues[q] = true
	s.mu.Unlock()
}

// label returns the value to keep for tag k=v, or false to drop the tag.
func (s *sdkMetrics) label(k, v string) (string, bool) {
	switch k {
	case "task_queue":
		s.mu.Lock()
		ok := s.queues[v]
		s.mu.Unlock()
		if !ok && v != "none" {
			v = sdkOther // sticky and per-process control queues, or a foreign queue
		}
	case "workflow_type":
		if v != ChatWorkflowName && v != "none" {
			v = sdkOther
		}
	case "activity_type":
		switch v {
		case ActivityAgent, ActivitySendMessage, ActivitySendChatAction, ActivityEditMessageText,
			ActivityDeleteMessage, ActivitySendPhoto, ActivitySendDocument, "none":
		default:
			v = sdkOther
		}
	case "namespace", "operation", "poller_type", "worker_type", "status_code", "failure_reason":
		if len(v) > maxSDKLabelLen {
			v = sdkOther
		}
	default:
		return "", false
	}
	return v, true
}

// labels fills every label of sdkLabels from tags ("" when absent).
func labels(tags map[string]string) prometheus.Labels {
	out := prometheus.Labels{}
	for _, l := range sdkLabels() {
		out[l] = tags[l]
	}
	return out
}

// promName maps an SDK metric name to ours, or "" for a name not from the SDK.
func promName(name, suffix string) string {
	rest, ok := strings.CutPrefix(name, "temporal_")
	if !ok || rest == "" || strings.ContainsFunc(rest, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_')
	}) {
		return ""
	}
	return "agentrunner_temporal_" + rest + suffix
}

// register registers c, or returns the collector already registered under
// its name if that one has the same shape; nil if neither works.
func register[T prometheus.Collector](reg prometheus.Registerer, c T) (T, bool) {
	err := reg.Register(c)
	if err == nil {
		return c, true
	}
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if prev, ok := are.ExistingCollector.(T); ok {
			return prev, true
		}
	}
	var zero T
	return zero, false
}

func (s *sdkMetrics) counterVec(name string) *prometheus.CounterVec {
	return lazyVec(s, s.counters, name, "_total", func(n string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: n, Help: "Temporal SDK counter " + name + "."}, sdkLabels())
	})
}

func (s *sdkMetrics) gaugeVec(name string) *prometheus.GaugeVec {
	return lazyVec(s, s.gauges, name, "", func(n string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: n, Help: "Temporal SDK gauge " + name + "."}, sdkLabels())
	})
}

func (s *sdkMetrics) timerVec(name string) *prometheus.HistogramVec {
	return lazyVec(s, s.timers, name, "_seconds", func(n string) *prometheus.HistogramVec {
		return prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    n,
			Help:    "Temporal SDK timer " + name + ".",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, sdkLabels())
	})
}

// lazyVec returns the vector forwarding SDK metric name, registering it (as
// its Prometheus name with suffix) on first use. nil means not forwarded; that
// answer is cached too, so a refused name is not tried again.
func lazyVec[V interface {
	prometheus.Collector
	*prometheus.CounterVec | *prometheus.GaugeVec | *prometheus.HistogramVec
}](
	s *sdkMetrics, cache map[string]V, name, suffix string, mk func(promName string) V,
) V {
	s.mu.Lock()
	defer s.mu.Unlock()
	if v, ok := cache[name]; ok {
		return v
	}
	var v V
	if n := promName(name, suffix); n != "" {
		v, _ = register(s.reg, mk(n))
	}
	cache[name] = v
	return v
}

func (s *sdkMetrics) counter(name string, tags map[string]string) prometheus.Counter {
	if v := s.counterVec(name); v != nil {
		return v.With(labels(tags))
	}
	return nil
}

func (s *sdkMetrics) gauge(name string, tags map[string]string) prometheus.Gauge {
	if v := s.gaugeVec(name); v != nil {
		return v.With(labels(tags))
	}
	return nil
}

func (s *sdkMetrics) timer(name string, tags map[string]string) prometheus.Observer {
	if v := s.timerVec(name); v != nil {
		return v.With(labels(tags))
	}
	return nil
}
