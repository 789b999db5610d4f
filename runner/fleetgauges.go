package runner

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
)

// fleetScrapeTimeout bounds the Postgres read behind one scrape.
const fleetScrapeTimeout = 2 * time.Second

// fleetGauges is the collector of agentrunner_runner_active_bots and
// agentrunner_runner_shards. They are read from Postgres when Prometheus
// scrapes (bounded by fleetScrapeTimeout), so they need no hook in the
// ownership loop; a failed read keeps the last values. Until WatchFleet gives
// it a source both read 0.
type fleetGauges struct {
	activeBots, shards prometheus.Gauge

	mu   sync.Mutex // serializes reads; guards read
	read func(ctx context.Context) (shards, active int, err error)
}

func newFleetGauges(activeBots, shards prometheus.Gauge) *fleetGauges {
	return &fleetGauges{activeBots: activeBots, shards: shards}
}

func (f *fleetGauges) Describe(ch chan<- *prometheus.Desc) {
	f.activeBots.Describe(ch)
	f.shards.Describe(ch)
}

func (f *fleetGauges) Collect(ch chan<- prometheus.Metric) {
	f.mu.Lock()
	if f.read != nil {
		ctx, cancel := context.WithTimeout(context.Background(), fleetScrapeTimeout)
		n, active, err := f.read(ctx)
		cancel()
		if err == nil {
			f.shards.Set(float64(n))
			f.activeBots.Set(float64(active))
		}
	}
	f.mu.Unlock()
	f.activeBots.Collect(ch)
	f.shards.Collect(ch)
}

// WatchFleet makes agentrunner_runner_active_bots and agentrunner_runner_shards
// read, at each scrape, the install's shard count and the active bots of the
// shards s holds (s.Held), from pool. Calling it again replaces the source.
func (m *Metrics) WatchFleet(pool *pgxpool.Pool, s *Shards) {
	if m == nil || pool == nil || s == nil {
		return
	}
	m.fleet.mu.Lock()
	m.fleet.read = func(ctx context.Context) (int, int, error) {
		return readFleet(ctx, pool, leaseShards(s.Held()))
	}
	m.fleet.mu.Unlock()
}

// readFleet returns the install's shard count and the active bots in shards.
func readFleet(ctx context.Context, pool *pgxpool.Pool, shards []int) (n, active int, err error) {
	if shards == nil {
		shards = []int{}
	}
	err = pool.QueryRow(ctx, `
		SELECT (SELECT shard_count FROM cluster_settings),
		       (SELECT count(*) FROM bots WHERE status = 'active' AND shard = ANY($1::int[]))`,
		shards).Scan(&n, &active)
	if err != nil {
		return 0, 0, fmt.Errorf("runner: fleet gauges: %w", err)
	}
	return n, active, nil
}
