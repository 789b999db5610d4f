package runner

// agentrunner_runner_dead_letters_pending: the dead letters of the whole install not
// replayed yet, read from Postgres when Prometheus scrapes (like the fleet
// gauges); every replica reports the same fleet-wide number, so alerts take
// max() over replicas. The counter of dead letters stored is the sessions
// package's agentrunner_sessions_dead_letters_total{reason}.

import (
	"context"
	"fmt"
	"sync"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
)

type deadLetterGauge struct {
	pending prometheus.Gauge

	mu   sync.Mutex // serializes reads; guards read
	read func(ctx context.Context) (int, error)
}

func newDeadLetterGauge() *deadLetterGauge {
	return &deadLetterGauge{pending: prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "agentrunner_runner_dead_letters_pending",
		Help: "Dead letters of the whole install not replayed yet (dead_letters rows with replayed_at NULL), read from Postgres at scrape time.",
	})}
}

func (g *deadLetterGauge) Describe(ch chan<- *prometheus.Desc) { g.pending.Describe(ch) }

func (g *deadLetterGauge) Collect(ch chan<- prometheus.Metric) {
	g.mu.Lock()
	if g.read != nil {
		ctx, cancel := context.WithTimeout(context.Background(), fleetScrapeTimeout)
		n, err := g.read(ctx)
		cancel()
		if err == nil {
			g.pending.Set(float64(n))
		}
	}
	g.mu.Unlock()
	g.pending.Collect(ch)
}

// WatchDeadLetters makes agentrunner_runner_dead_letters_pending read the count of
// pending dead letters from pool at each scrape.
func (m *Metrics) WatchDeadLetters(pool *pgxpool.Pool) {
	if m == nil || m.deadLetters == nil || pool == nil {
		return
	}
	m.deadLetters.mu.Lock()
	m.deadLetters.read = func(ctx context.Context) (int, error) {
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM dead_letters WHERE replayed_at IS NULL`).Scan(&n); err != nil {
			return 0, fmt.Errorf("runner: dead letters gauge: %w", err)
		}
		return n, nil
	}
	m.deadLetters.mu.Unlock()
}
