package workflows

import (
	"errors"
	"maps"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.temporal.io/sdk/client"

	"buko.app/agentrunner/permanent"
)

// Metrics are the workflows package's Prometheus metrics. A nil *Metrics is a
// valid no-op. Labels never carry a bot, chat or user.
type Metrics struct {
	handoffs        *prometheus.CounterVec
	handoffSeconds  prometheus.Histogram
	apiCalls        *prometheus.CounterVec
	apiSeconds      *prometheus.HistogramVec
	agentCalls      *prometheus.CounterVec
	agentSeconds    *prometheus.HistogramVec
	quotaWaits      prometheus.Counter
	quotaDeferrals  prometheus.Counter
	busyRejections  prometheus.Counter
	replyLatency    prometheus.Histogram
	workflowCounter map[string]prometheus.Counter
	sdk             *sdkMetrics
}

// ReplySLOSeconds is the reply SLO's latency threshold: a bucket bound of
// agentrunner_workflows_reply_latency_seconds.
const ReplySLOSeconds = 5

// NewMetrics registers the metrics with reg; nil reg gives a no-op.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	if reg == nil {
		return nil
	}
	m := &Metrics{
		handoffs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "agentrunner_workflows_handoffs_total",
			Help: "Handoff attempts, by result: ok, transient, permanent, backlogged (held back: the chat's run is busy with its share), run_limit (Temporal refused for a per-run limit).",
		}, []string{"result"}),
		handoffSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "agentrunner_workflows_handoff_duration_seconds",
			Help:    "Time for one SignalWithStart handoff.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
		}),
		apiCalls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "agentrunner_workflows_bot_api_calls_total",
			Help: "Bot API calls made by activities, by method, result (ok, retry, rate_limited, rejected) and code (ok, a documented Bot API error code, network, other).",
		}, []string{"method", "result", "code"}),
		apiSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "agentrunner_workflows_bot_api_call_duration_seconds",
			Help:    "Duration of Bot API calls made by activities.",
			Buckets: prometheus.ExponentialBuckets(0.002, 2, 13),
		}, []string{"method"}),
		agentCalls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "agentrunner_workflows_agent_calls_total",
			Help: "Agent activity attempts, by agent kind and result (ok, retry, permanent).",
		}, []string{"agent", "result"}),
		agentSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "agentrunner_workflows_agent_duration_seconds",
			Help:    "Duration of agent activity attempts, by agent kind.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 14),
		}, []string{"agent"}),
		quotaWaits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "agentrunner_workflows_quota_waits_total",
			Help: "Bot API calls that waited in the worker for the bot's tier quota.",
		}),
		quotaDeferrals: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "agentrunner_workflows_quota_deferrals_total",
			Help: "Bot API calls handed back to Temporal to retry later because the tier quota needed a long wait.",
		}),
		busyRejections: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "agentrunner_workflows_bot_busy_total",
			Help: "Activity attempts deferred because their bot was at its per-bot concurrency bound.",
		}),
		replyLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "agentrunner_workflows_reply_latency_seconds",
			Help:    "Time from an update's receipt by its session to the first successful reply (message, photo or document) to it.",
			Buckets: []float64{0.25, 0.5, 1, 2, 3, ReplySLOSeconds, 7.5, 10, 15, 30, 60, 120, 300},
		}),
		workflowCounter: map[string]prometheus.Counter{},
		sdk:             newSDKMetrics(reg),
	}
	for name, help := range map[string]string{
		metricDuplicates:    "Updates a chat workflow dropped because their update_id was already processed.",
		metricProcessed:     "Updates chat workflows processed (agent run, actions done or failed).",
		metricAgentFailures: "Updates whose agent activity failed for good.",
		metricActionFailed:  "Agent actions (Bot API sends) that failed for good.",
		metricContinued:     "Chat workflow continue-as-new transitions.",
		metricIdleEnded:     "Chat workflows that ended after their quiet time.",
		metricCarryDeferred: "Continue-as-new transitions a chat workflow deferred because its pending backlog was over the carry bound.",
	} {
		c := prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
		m.workflowCounter[name] = c
		reg.MustRegister(c)
	}
	reg.MustRegister(m.handoffs, m.handoffSeconds, m.apiCalls, m.apiSeconds, m.agentCalls, m.agentSeconds,
		m.quotaWaits, m.quotaDeferrals, m.busyRejections, m.replyLatency)
	return m
}

func (m *Metrics) handoff(err error, d time.Duration) {
	if m == nil {
		return
	}
	res := "ok"
	var (
		backlogged *BackloggedError
		runLimit   *RunLimitError
	)
	switch {
	case err == nil:
	case permanent.Is(err):
		res = "permanent"
	case errors.As(err, &backlogged):
		res = "backlogged"
	case errors.As(err, &runLimit):
		res = "run_limit"
	default:
		res = "transient"
	}
	m.handoffs.WithLabelValues(res).Inc()
	m.handoffSeconds.Observe(d.Seconds())
}

func (m *Metrics) apiCall(method string, err error, d time.Duration) {
	if m == nil {
		return
	}
	m.apiCalls.WithLabelValues(method, resultOf(err), codeOf(err)).Inc()
	if d > 0 {
		m.apiSeconds.WithLabelValues(method).Observe(d.Seconds())
	}
}

func (m *Metrics) replied(d time.Duration) {
	if m != nil {
		m.replyLatency.Observe(max(d, 0).Seconds())
	}
}

func (m *Metrics) agentCall(kind, result string, d time.Duration) {
	if m == nil {
		return
	}
	m.agentCalls.WithLabelValues(kind, result).Inc()
	m.agentSeconds.WithLabelValues(kind).Observe(d.Seconds())
}

func (m *Metrics) quotaWait() {
	if m != nil {
		m.quotaWaits.Inc()
	}
}

func (m *Metrics) quotaDeferral() {
	if m != nil {
		m.quotaDeferrals.Inc()
	}
}

func (m *Metrics) busy() {
	if m != nil {
		m.busyRejections.Inc()
	}
}

// TemporalHandler adapts m to the SDK's metrics handler, for
// client.Options.MetricsHandler. It forwards this package's workflow counters
// (emitted replay-safely through workflow.GetMetricsHandler) and the SDK's own
// metrics, as agentrunner_temporal_* (see sdkmetrics.go). Nil m gives the
// SDK's no-op handler.
func (m *Metrics) TemporalHandler() client.MetricsHandler {
	if m == nil {
		return client.MetricsNopHandler
	}
	return temporalHandler{m: m}
}

// allowTaskQueue lets q appear as a task_queue label value of the SDK's metrics.
func (m *Metrics) allowTaskQueue(q string) {
	if m != nil {
		m.sdk.allowQueue(q)
	}
}

type temporalHandler struct {
	m    *Metrics
	tags map[string]string // bounded labels only (sdkLabels), values sanitized
}

func (h temporalHandler) WithTags(tags map[string]string) client.MetricsHandler {
	next := make(map[string]string, len(h.tags)+len(tags))
	maps.Copy(next, h.tags)
	for k, v := range tags {
		if v, ok := h.m.sdk.label(k, v); ok {
			next[k] = v
		}
	}
	return temporalHandler{m: h.m, tags: next}
}

func (h temporalHandler) Counter(name string) client.MetricsCounter {
	if c, ok := h.m.workflowCounter[name]; ok {
		return counterFunc(func(d int64) { c.Add(float64(d)) })
	}
	if c := h.m.sdk.counter(name, h.tags); c != nil {
		return counterFunc(func(d int64) {
			if d > 0 {
				c.Add(float64(d))
			}
		})
	}
	return client.MetricsNopHandler.Counter(name)
}

func (h temporalHandler) Gauge(name string) client.MetricsGauge {
	if g := h.m.sdk.gauge(name, h.tags); g != nil {
		return gaugeFunc(g.Set)
	}
	return client.MetricsNopHandler.Gauge(name)
}

func (h temporalHandler) Timer(name string) client.MetricsTimer {
	if o := h.m.sdk.timer(name, h.tags); o != nil {
		return timerFunc(func(d time.Duration) { o.Observe(max(d, 0).Seconds()) })
	}
	return client.MetricsNopHandler.Timer(name)
}

type counterFunc func(int64)

func (f counterFunc) Inc(d int64) { f(d) }

type gaugeFunc func(float64)

func (f gaugeFunc) Update(v float64) { f(v) }

type timerFunc func(time.Duration)

func (f timerFunc) Record(d time.Duration) { f(d) }
