package runner

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"buko.app/agentrunner/internal/testsupport"
	"buko.app/agentrunner/runner/runnertest"
)

func TestFleetGaugesReadOwnedShardsAtScrape(t *testing.T) {
	env := runnertest.NewEnv(t, runnertest.EnvOptions{})
	bots := env.AddBots(t, 6, "fleet")
	if _, err := env.Pool.Exec(context.Background(), `UPDATE bots SET status = 'paused' WHERE id = $1`, bots[0].ID); err != nil {
		t.Fatal(err)
	}

	// Before a source is set both gauges export 0.
	idle := NewMetrics(prometheus.NewRegistry())
	if testutil.ToFloat64(idle.fleet.shards) != 0 || testutil.CollectAndCount(idle.fleet) != 2 {
		t.Fatal("fleet gauges without a source")
	}
	var nilM *Metrics
	nilM.WatchFleet(env.Pool, nil) // nil-safe

	ts := startSupervisor(t, env, "a")
	NewAdmin(AdminConfig{Pool: env.Pool, Supervisor: ts.sup}) // wires WatchFleet
	var n int
	if err := env.Pool.QueryRow(context.Background(), `SELECT shard_count FROM cluster_settings`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	testsupport.Within(t, "a holds every shard", 30*time.Second, func() bool { return len(ts.sup.Shards().Held()) == n })
	scrape := func() (shards, active float64) {
		got, err := gatherOne(ts.m)
		if err != nil {
			t.Fatal(err)
		}
		return got["agentrunner_runner_shards"], got["agentrunner_runner_active_bots"]
	}
	if shards, active := scrape(); shards != float64(n) || active != 5 {
		t.Fatalf("shards %v active_bots %v, want %d and 5 (one of 6 paused)", shards, active, n)
	}
	// After a drain the replica holds nothing: no active bots are its.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := ts.sup.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	testsupport.Within(t, "a holds no shard", 30*time.Second, func() bool { return len(ts.sup.Shards().Held()) == 0 })
	if shards, active := scrape(); shards != float64(n) || active != 0 {
		t.Fatalf("after drain: shards %v active_bots %v, want %d and 0", shards, active, n)
	}
}

// gatherOne collects m's fleet gauges as a scrape would.
func gatherOne(m *Metrics) (map[string]float64, error) {
	reg := prometheus.NewRegistry()
	if err := reg.Register(m.fleet); err != nil {
		return nil, err
	}
	mfs, err := reg.Gather()
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf.GetMetric()[0].GetGauge().GetValue()
	}
	return out, nil
}
