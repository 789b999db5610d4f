package vault

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the package's Prometheus series. A nil *Metrics is valid and
// records nothing. No series carries a bot id.
type Metrics struct {
	items         *prometheus.CounterVec   // cipher, op, result
	transitCalls  *prometheus.CounterVec   // op, result
	transitTime   *prometheus.HistogramVec // op
	logins        *prometheus.CounterVec   // method, result
	renewals      *prometheus.CounterVec   // result
	cacheHits     prometheus.Counter
	cacheMisses   prometheus.Counter
	cacheInval    prometheus.Counter
	cacheTokens   prometheus.Gauge
	cacheLoads    prometheus.Counter
	cacheReval    prometheus.Counter
	rewrappedRows prometheus.Counter
}

// NewMetrics registers the vault series with reg; a nil reg gives unregistered
// (still working) series.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		items: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "agentrunner_vault_cipher_items_total",
			Help: "Items sealed, opened or rewrapped, by cipher (transit, local), op and result (ok, error).",
		}, []string{"cipher", "op", "result"}),
		transitCalls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "agentrunner_vault_transit_requests_total",
			Help: "HTTP calls to Vault Transit, by op and result (ok, unavailable, denied, error).",
		}, []string{"op", "result"}),
		transitTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "agentrunner_vault_transit_request_duration_seconds",
			Help:    "Duration of calls to Vault Transit, by op.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"op"}),
		logins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "agentrunner_vault_logins_total",
			Help: "Vault logins, by auth method and result.",
		}, []string{"method", "result"}),
		renewals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "agentrunner_vault_token_renewals_total",
			Help: "Renewals of the runner's own Vault token, by result.",
		}, []string{"result"}),
		cacheHits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "agentrunner_vault_cache_hits_total",
			Help: "Token lookups answered from the in-memory cache.",
		}),
		cacheMisses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "agentrunner_vault_cache_misses_total",
			Help: "Token lookups that had to read and decrypt secret_vault.",
		}),
		cacheInval: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "agentrunner_vault_cache_invalidations_total",
			Help: "Cached tokens dropped on request (a 401 from Buko, a rotation).",
		}),
		cacheTokens: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "agentrunner_vault_cache_tokens",
			Help: "Tokens held in the in-memory cache.",
		}),
		cacheLoads: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "agentrunner_vault_cache_loads_total",
			Help: "Batch loads of the token cache (one secret_vault query and at most one Decrypt batch each).",
		}),
		cacheReval: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "agentrunner_vault_cache_revalidated_total",
			Help: "Invalidated tokens kept without decrypting because their secret_vault row had not changed.",
		}),
		rewrappedRows: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "agentrunner_vault_rewrapped_rows_total",
			Help: "secret_vault rows re-sealed under the newest key version.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.items, m.transitCalls, m.transitTime, m.logins, m.renewals,
			m.cacheHits, m.cacheMisses, m.cacheInval, m.cacheTokens, m.cacheLoads, m.cacheReval, m.rewrappedRows)
	}
	return m
}

func (m *Metrics) cipherItems(cipher, op string, total, failed int) {
	if m == nil {
		return
	}
	if ok := total - failed; ok > 0 {
		m.items.WithLabelValues(cipher, op, "ok").Add(float64(ok))
	}
	if failed > 0 {
		m.items.WithLabelValues(cipher, op, "error").Add(float64(failed))
	}
}

func (m *Metrics) transitCall(op, result string, d time.Duration) {
	if m == nil {
		return
	}
	m.transitCalls.WithLabelValues(op, result).Inc()
	m.transitTime.WithLabelValues(op).Observe(d.Seconds())
}

func (m *Metrics) login(method, result string) {
	if m != nil {
		m.logins.WithLabelValues(method, result).Inc()
	}
}

func (m *Metrics) renewal(result string) {
	if m != nil {
		m.renewals.WithLabelValues(result).Inc()
	}
}

func (m *Metrics) cache(hits, misses int) {
	if m == nil {
		return
	}
	m.cacheHits.Add(float64(hits))
	m.cacheMisses.Add(float64(misses))
}

func (m *Metrics) invalidated() {
	if m != nil {
		m.cacheInval.Inc()
	}
}

func (m *Metrics) cacheLoad(revalidated int) {
	if m == nil {
		return
	}
	m.cacheLoads.Inc()
	m.cacheReval.Add(float64(revalidated))
}

func (m *Metrics) cacheSize(n int) {
	if m != nil {
		m.cacheTokens.Set(float64(n))
	}
}

func (m *Metrics) rewrapped(n int) {
	if m != nil && n > 0 {
		m.rewrappedRows.Add(float64(n))
	}
}
