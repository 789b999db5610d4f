package runner

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Reasons a replica stops holding a shard (the reason label of
// agentrunner_runner_leases_lost_total and of session stops).
const (
	LossReleased = "released" // above the fair share: handed to a peer
	LossDrained  = "drained"  // SIGTERM drain
	LossStolen   = "stolen"   // a renew found the lease no longer ours
	LossFenced   = "fenced"   // the monotonic deadline passed without a renew
)

// Metrics are the runner's Prometheus metrics. A nil *Metrics is valid and
// records nothing.
type Metrics struct {
	leasesHeld      prometheus.Gauge
	liveRunners     prometheus.Gauge
	epochChanges    *prometheus.CounterVec
	leasesLost      *prometheus.CounterVec
	renewSeconds    prometheus.Histogram
	renewFailures   prometheus.Counter
	selfFencing     prometheus.Counter
	fencedWrites    prometheus.Counter
	reconcilePasses *prometheus.CounterVec
	sessions        prometheus.Gauge
	sessionsStarted prometheus.Counter
	sessionsStopped *prometheus.CounterVec
	tokenBatch      prometheus.Histogram
	handoffs        *prometheus.CounterVec
	fleet           *fleetGauges // agentrunner_runner_active_bots and _shards (fleetgauges.go)

	deadLetters *deadLetterGauge // agentrunner_runner_dead_letters_pending (deadletter_metrics.go)
}

// NewMetrics registers the runner's metrics with reg; a nil reg yields a nil
// *Metrics (no-op).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	if reg == nil {
		return nil
	}
	m := &Metrics{
		leasesHeld: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "agentrunner_runner_leases_held",
			Help: "Shard leases this replica holds.",
		}),
		liveRunners: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "agentrunner_runner_live_runners",
			Help: "Live, non-draining replicas as of the last heartbeat (this one included unless draining).",
		}),
		epochChanges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "agentrunner_runner_epoch_changes_total",
			Help: "Shards claimed by this replica (each claim bumps the shard's fencing epoch), by whether the shard was free, taken over after its lease expired, or taken from a peer seen dead by its liveness lock before the lease expired.",
		}, []string{"kind"}),
		leasesLost: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "agentrunner_runner_leases_lost_total",
			Help: "Shards this replica stopped holding, by reason (released, drained, stolen, fenced).",
		}, []string{"reason"}),
		renewSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "agentrunner_runner_lease_renew_seconds",
			Help:    "Latency of the heartbeat-and-renew statement.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}),
		renewFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "agentrunner_runner_lease_renew_failures_total",
			Help: "Heartbeat-and-renew statements that failed (Postgres unreachable or slow).",
		}),
		selfFencing: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "agentrunner_runner_self_fencing_total",
			Help: "Times this replica stopped the sessions of shards whose renew deadline passed.",
		}),
		fencedWrites: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "agentrunner_runner_fenced_writes_total",
			Help: "Shard-owned writes refused because the lease was no longer held at its epoch.",
		}),
		reconcilePasses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "agentrunner_runner_reconcile_passes_total",
			Help: "Reconcile passes, by kind (full: every owned shard; shards: newly claimed shards; bot: one bot after a notification).",
		}, []string{"kind"}),
		sessions: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "agentrunner_runner_sessions",
			Help: "Bot sessions this replica runs.",
		}),
		sessionsStarted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "agentrunner_runner_sessions_started_total",
			Help: "Bot sessions started.",
		}),
		sessionsStopped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "agentrunner_runner_sessions_stopped_total",
			Help: "Bot sessions stopped, by reason (inactive, auth_failed, or a lease loss reason).",
		}, []string{"reason"}),
		tokenBatch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "agentrunner_runner_token_batch_seconds",
			Help:    "Time to load (decrypt) the tokens of a batch of bots before starting their sessions.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 12),
		}),
		handoffs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "agentrunner_runner_pg_handoffs_total",
			Help: "Updates written by the Postgres-backed Handoff, by result (new, duplicate, error).",
		}, []string{"result"}),
		fleet: newFleetGauges(
			prometheus.NewGauge(prometheus.GaugeOpts{
				Name: "agentrunner_runner_active_bots",
				Help: "Active bots (status active) in the shards this replica holds, read from Postgres at scrape time.",
			}),
			prometheus.NewGauge(prometheus.GaugeOpts{
				Name: "agentrunner_runner_shards",
				Help: "Shards in the install (N, fixed at install), read from Postgres at scrape time; 0 until known.",
			})),
	}
	reg.MustRegister(m.leasesHeld, m.liveRunners, m.epochChanges, m.leasesLost, m.renewSeconds,
		m.renewFailures, m.selfFencing, m.fencedWrites, m.reconcilePasses, m.sessions,
		m.sessionsStarted, m.sessionsStopped, m.tokenBatch, m.handoffs, m.fleet)
	m.deadLetters = newDeadLetterGauge()
	reg.MustRegister(m.deadLetters)
	for _, k := range []string{"free", "takeover"} {
		m.epochChanges.WithLabelValues(k)
	}
	for _, r := range []string{LossReleased, LossDrained, LossStolen, LossFenced} {
		m.leasesLost.WithLabelValues(r)
	}
	return m
}

func (m *Metrics) setLeases(n int) {
	if m != nil {
		m.leasesHeld.Set(float64(n))
	}
}

func (m *Metrics) setLive(n int) {
	if m != nil {
		m.liveRunners.Set(float64(n))
	}
}

func (m *Metrics) claimed(free, takeover, dead int) {
	if m != nil {
		m.epochChanges.WithLabelValues("free").Add(float64(free))
		m.epochChanges.WithLabelValues("takeover").Add(float64(takeover))
		m.epochChanges.WithLabelValues("dead").Add(float64(dead))
	}
}

func (m *Metrics) lost(reason string, n int) {
	if m != nil && n > 0 {
		m.leasesLost.WithLabelValues(reason).Add(float64(n))
	}
}

func (m *Metrics) renewed(d time.Duration, err error) {
	if m == nil {
		return
	}
	if err != nil {
		m.renewFailures.Inc()
		return
	}
	m.renewSeconds.Observe(d.Seconds())
}

func (m *Metrics) fencedSelf() {
	if m != nil {
		m.selfFencing.Inc()
	}
}

func (m *Metrics) fencedWrite() {
	if m != nil {
		m.fencedWrites.Inc()
	}
}

func (m *Metrics) reconciled(kind string) {
	if m != nil {
		m.reconcilePasses.WithLabelValues(kind).Inc()
	}
}

func (m *Metrics) sessionStarted() {
	if m != nil {
		m.sessionsStarted.Inc()
		m.sessions.Inc()
	}
}

func (m *Metrics) sessionStopped(reason string) {
	if m != nil {
		m.sessionsStopped.WithLabelValues(reason).Inc()
		m.sessions.Dec()
	}
}

func (m *Metrics) tokensLoaded(d time.Duration) {
	if m != nil {
		m.tokenBatch.Observe(d.Seconds())
	}
}

func (m *Metrics) handedOff(result string) {
	if m != nil {
		m.handoffs.WithLabelValues(result).Inc()
	}
}
