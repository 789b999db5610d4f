package sessions

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Frame kinds counted by agentrunner_sessions_frames_received_total{type}.
const (
	frameUpdate  = "update"
	framePing    = "ping"
	framePong    = "pong"
	frameAck     = "ack"
	frameUnknown = "unknown" // a well-formed frame of a type this version does not know
	frameInvalid = "invalid" // not a frame DecodeFrame accepts
	frameBinary  = "binary"  // a binary WebSocket message
)

// Metrics are the sessions' Prometheus metrics, shared by every session of a
// process. A nil *Metrics is valid and records nothing. No label carries a
// bot, chat or user id.
type Metrics struct {
	sessions     *prometheus.GaugeVec
	reconnects   *prometheus.CounterVec
	handoff      prometheus.Histogram
	handoffErrs  *prometheus.CounterVec
	frames       map[string]prometheus.Counter // fixed at construction; read-only after
	updates      prometheus.Counter
	duplicates   prometheus.Counter
	acks         prometheus.Counter
	lag          prometheus.Histogram
	pending      prometheus.Gauge
	backpressure prometheus.Counter
	authFailures prometheus.Counter
	pollErrors   *prometheus.CounterVec
	fallbacks    prometheus.Counter
	deadLetters  *prometheus.CounterVec
	dlFailures   prometheus.Counter
}

// NewMetrics creates the metrics and registers them with reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	const ns, sub = "agentrunner", "sessions"
	m := &Metrics{
		sessions: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "sessions",
			Help: "Sessions by state (connecting, live, polling, backoff, draining, auth_failed)."}, []string{"state"}),
		reconnects: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "reconnects_total",
			Help: "Gateway reconnects (a socket ended or an upgrade failed), by cause."}, []string{"cause"}),
		handoff: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "handoff_duration_seconds",
			Help: "Time from the start of an update's handoff to its success, retries included.",
			// 1 s is the ingest SLO's threshold (deploy/prometheus), so it is a bound.
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}}),
		handoffErrs: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "handoff_errors_total",
			Help: "Failed handoff attempts: retryable (retried) or permanent (kept as a dead letter)."}, []string{"kind"}),
		updates: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "updates_received_total",
			Help: "Updates received from the Gateway or getUpdates, duplicates included."}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "duplicates_dropped_total",
			Help: "Redelivered updates dropped because they were in memory or handed off already."}),
		acks: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "acks_sent_total",
			Help: "Cumulative acks written to the Gateway, and polling offsets that confirmed new updates."}),
		lag: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "ack_lag_seconds",
			Help:    "Per ack: time since receipt of the oldest update it newly covers.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2.5, 12)}),
		pending: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "pending_updates",
			Help: "Updates held in memory and not yet handed off, over all sessions."}),
		backpressure: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "backpressure_pauses_total",
			Help: "Times a session stopped reading because it held MaxPending updates."}),
		authFailures: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "auth_failures_total",
			Help: "401 answers to a Gateway upgrade or getUpdates."}),
		pollErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "poll_errors_total",
			Help: "Failed getUpdates calls, by cause."}, []string{"cause"}),
		fallbacks: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "polling_fallbacks_total",
			Help: "Times a gateway session fell back to polling because upgrades kept failing."}),
	}
	m.deadLetters = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "dead_letters_total",
		Help: "Updates kept as dead letters (stored before they were acked), by reason (undecodable, unreadable_frame, handoff_refused)."}, []string{"reason"})
	m.dlFailures = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "dead_letter_errors_total",
		Help: "Failed attempts to store a dead letter (the update stays unacked and is retried), and id-less ones dropped."})
	for _, r := range DeadLetterReasons() {
		m.deadLetters.WithLabelValues(r)
	}
	frames := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "frames_received_total",
		Help: "Gateway messages received, by frame type."}, []string{"type"})
	m.frames = map[string]prometheus.Counter{}
	for _, t := range []string{frameUpdate, framePing, framePong, frameAck, frameUnknown, frameInvalid, frameBinary} {
		m.frames[t] = frames.WithLabelValues(t)
	}
	for _, st := range metricStates() {
		m.sessions.WithLabelValues(st.String())
	}
	for _, k := range []string{"retryable", "permanent"} {
		m.handoffErrs.WithLabelValues(k)
	}
	if reg != nil {
		reg.MustRegister(m.sessions, m.reconnects, m.handoff, m.handoffErrs, frames, m.updates, m.duplicates,
			m.acks, m.lag, m.pending, m.backpressure, m.authFailures, m.pollErrors, m.fallbacks,
			m.deadLetters, m.dlFailures)
	}
	return m
}

func (m *Metrics) stateChange(from, to State) {
	if m == nil {
		return
	}
	if counted(from) {
		m.sessions.WithLabelValues(from.String()).Dec()
	}
	if counted(to) {
		m.sessions.WithLabelValues(to.String()).Inc()
	}
}

func counted(st State) bool { return st != stateNone && st != StateStopped }

func (m *Metrics) reconnect(cause string) {
	if m != nil {
		m.reconnects.WithLabelValues(cause).Inc()
	}
}

func (m *Metrics) handoffDone(d time.Duration) {
	if m != nil {
		m.handoff.Observe(d.Seconds())
	}
}

func (m *Metrics) handoffFailed(permanent bool) {
	if m == nil {
		return
	}
	if permanent {
		m.handoffErrs.WithLabelValues("permanent").Inc()
	} else {
		m.handoffErrs.WithLabelValues("retryable").Inc()
	}
}

func (m *Metrics) frame(kind string) {
	if m != nil {
		m.frames[kind].Inc()
	}
}

func (m *Metrics) updateReceived() {
	if m != nil {
		m.updates.Inc()
	}
}

func (m *Metrics) duplicate() {
	if m != nil {
		m.duplicates.Inc()
	}
}

func (m *Metrics) ackSent() {
	if m != nil {
		m.acks.Inc()
	}
}

func (m *Metrics) ackLag(d time.Duration) {
	if m != nil && d > 0 {
		m.lag.Observe(d.Seconds())
	}
}

func (m *Metrics) pendingAdd(n int) {
	if m != nil && n != 0 {
		m.pending.Add(float64(n))
	}
}

func (m *Metrics) paused() {
	if m != nil {
		m.backpressure.Inc()
	}
}

func (m *Metrics) authFailure() {
	if m != nil {
		m.authFailures.Inc()
	}
}

func (m *Metrics) pollError(cause string) {
	if m != nil {
		m.pollErrors.WithLabelValues(cause).Inc()
	}
}

func (m *Metrics) fallback() {
	if m != nil {
		m.fallbacks.Inc()
	}
}

func (m *Metrics) deadLettered(reason string) {
	if m != nil {
		m.deadLetters.WithLabelValues(reason).Inc()
	}
}

func (m *Metrics) deadLetterFailed() {
	if m != nil {
		m.dlFailures.Inc()
	}
}
