package fleettest

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"buko.app/agentrunner/buko/sim"
	"buko.app/agentrunner/internal/testsupport"
	"buko.app/agentrunner/runner/runnertest"
)

// Fleet benchmarks: real replica processes against the in-process simulator.
// Each run takes tens of seconds, so each benchmark runs once (b.N is 1 at
// the default -benchtime). Sizes and the lease TTL can be changed:
//
//	AGENTRUNNER_BENCH_BOTS  bots for cold start (10000) and takeover/rolling (3000)
//	AGENTRUNNER_BENCH_TTL   lease TTL of the replicas (15s, the production default)
//	AGENTRUNNER_BENCH_POLL  the rolling restart's polling of the simulator (100ms)
//	AGENTRUNNER_BENCH_PG    "own": a Postgres server of the benchmark's own
//	                        (initdb in a temporary directory, fsync off), not
//	                        the machine's, which other tests share
//
//	go test -run '^$' -bench Fleet -benchtime 1x ./runner/fleettest

func benchBots(b *testing.B, def int) int {
	if v := os.Getenv("AGENTRUNNER_BENCH_BOTS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			b.Fatalf("AGENTRUNNER_BENCH_BOTS=%q: want a positive integer", v)
		}
		return n
	}
	return def
}

// benchPoll is the rolling restart's polling interval of the simulator's
// bot list (AGENTRUNNER_BENCH_POLL, default 100 ms).
func benchPoll(b *testing.B) time.Duration {
	if v := os.Getenv("AGENTRUNNER_BENCH_POLL"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 10*time.Millisecond {
			b.Fatalf("AGENTRUNNER_BENCH_POLL=%q: want a duration of at least 10ms", v)
		}
		return d
	}
	return 100 * time.Millisecond
}

// benchEnv is the benchmark's Env, on its own Postgres server if
// AGENTRUNNER_BENCH_PG=own.
func benchEnv(b *testing.B) *runnertest.Env {
	switch v := os.Getenv("AGENTRUNNER_BENCH_PG"); v {
	case "":
		return runnertest.NewEnv(b, runnertest.EnvOptions{})
	case "own":
		pg := runnertest.StartPostgres(b)
		return runnertest.NewEnv(b, runnertest.EnvOptions{AdminURL: pg.AdminURL()})
	default:
		b.Fatalf("AGENTRUNNER_BENCH_PG=%q: want empty or own", v)
		return nil
	}
}

func benchTTL(b *testing.B) time.Duration {
	if v := os.Getenv("AGENTRUNNER_BENCH_TTL"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < time.Second {
			b.Fatalf("AGENTRUNNER_BENCH_TTL=%q: want a duration of at least 1s", v)
		}
		return d
	}
	return 15 * time.Second
}

// tracker polls the simulator's bot list and records, per bot, every
// transition between connected (≥ 1 socket) and not.
type tracker struct {
	env  *runnertest.Env
	stop chan struct{}
	done chan struct{}

	mu      sync.Mutex
	up      map[string]bool
	since   map[string]time.Time // when the bot was last seen going down
	gaps    []time.Duration      // closed down intervals
	worst   []gap                // the longest ones, for diagnosis
	maxOpen int
	polls   int
}

type gap struct {
	bot      string
	from, to time.Time
}

func track(env *runnertest.Env, every time.Duration) *tracker {
	tr := &tracker{env: env, stop: make(chan struct{}), done: make(chan struct{}),
		up: map[string]bool{}, since: map[string]time.Time{}}
	go func() {
		defer close(tr.done)
		for {
			views, err := tr.env.Control.Bots(context.Background())
			now := time.Now()
			if err == nil {
				tr.observe(now, views)
			}
			select {
			case <-tr.stop:
				return
			case <-time.After(every):
			}
		}
	}()
	return tr
}

func (tr *tracker) observe(now time.Time, views []sim.BotView) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.polls++
	for _, v := range views {
		tr.maxOpen = max(tr.maxOpen, v.GatewayOpen)
		isUp := v.GatewayOpen > 0
		was, known := tr.up[v.BotID]
		tr.up[v.BotID] = isUp
		switch {
		case known && was && !isUp:
			tr.since[v.BotID] = now
		case known && !was && isUp:
			if s, ok := tr.since[v.BotID]; ok {
				tr.gaps = append(tr.gaps, now.Sub(s))
				tr.worst = append(tr.worst, gap{bot: v.BotID, from: s, to: now})
				slices.SortFunc(tr.worst, func(a, b gap) int { return int(b.to.Sub(b.from) - a.to.Sub(a.from)) })
				if len(tr.worst) > 5 {
					tr.worst = tr.worst[:5]
				}
				delete(tr.since, v.BotID)
			}
		}
	}
}

func (tr *tracker) finish() {
	close(tr.stop)
	<-tr.done
}

// countUp returns how many of ids are connected at the last poll.
func (tr *tracker) countUp(ids map[string]bool) int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	n := 0
	for id := range ids {
		if tr.up[id] {
			n++
		}
	}
	return n
}

func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(p*float64(len(s))+0.5) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// handedOff counts the rows of the handoffs table.
func handedOff(b *testing.B, env *runnertest.Env) int {
	var n int
	if err := env.Pool.QueryRow(context.Background(), `SELECT count(*) FROM handoffs`).Scan(&n); err != nil {
		b.Fatal(err)
	}
	return n
}

// botsPerOwner counts the bots of each replica's shards.
func botsPerOwner(b *testing.B, env *runnertest.Env) map[string]int {
	rows, err := env.Pool.Query(context.Background(), `SELECT l.owner, count(*) FROM bots b
		JOIN shard_leases l ON l.shard = b.shard WHERE l.owner IS NOT NULL GROUP BY l.owner`)
	if err != nil {
		b.Fatal(err)
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var o string
		var n int
		if err := rows.Scan(&o, &n); err != nil {
			b.Fatal(err)
		}
		out[o] = n
	}
	return out
}

func maxOverMean(m map[string]int) float64 {
	if len(m) == 0 {
		return 0
	}
	total, high := 0, 0
	for _, n := range m {
		total += n
		high = max(high, n)
	}
	return float64(high) / (float64(total) / float64(len(m)))
}

// BenchmarkFleetColdStart: 3 replicas start at once with N bots (10,000)
// waiting; time until every bot has its Gateway socket. Also reports the
// balance (max/mean bots per replica) and replica RSS per session.
func BenchmarkFleetColdStart(b *testing.B) {
	n := benchBots(b, 10000)
	env := benchEnv(b)
	bots := env.AddBots(b, n, "cold")
	ids := runnertest.IDs(bots)
	f := newFleet(b, env, benchTTL(b))
	b.ResetTimer()
	start := time.Now()
	reps := []*replica{f.start("a", ""), f.start("b", ""), f.start("c", "")}
	testsupport.Within(b, "every bot live", 10*time.Minute, func() bool {
		live, _ := env.Live(b, ids)
		return live == n
	})
	cold := time.Since(start)
	b.StopTimer()
	testsupport.Within(b, "shards balanced", 2*time.Minute, func() bool { return balanced(f.owners(), "a", "b", "c") })
	per := botsPerOwner(b, env)
	var rssTotal int64
	for _, r := range reps {
		rssTotal += int64(testsupport.RSSOf(r.cmd.Process.Pid))
	}
	st := env.Stats(b)
	b.ReportMetric(cold.Seconds(), "s-to-all-live")
	b.ReportMetric(maxOverMean(per), "max/mean-bots")
	b.ReportMetric(float64(rssTotal)/float64(n)/1024, "KiB-RSS/session")
	b.ReportMetric(float64(st.MaxConcurrentGatewayPerBot), "max-sockets/bot")
	b.Logf("cold start: %d bots on 3 replicas live after %s; bots per replica %v (max/mean %.3f); replica RSS %.1f MiB total; max sockets per bot %d",
		n, cold.Round(time.Millisecond), per, maxOverMean(per), float64(rssTotal)/(1<<20), st.MaxConcurrentGatewayPerBot)
}

// BenchmarkFleetTakeover: 3 replicas hold N bots (3,000); one is killed
// with SIGKILL; per bot of the victim, the time from the kill until its
// Gateway socket is open again on a survivor (p50, p99, max).
func BenchmarkFleetTakeover(b *testing.B) {
	n := benchBots(b, 3000)
	ttl := benchTTL(b)
	env := benchEnv(b)
	bots := env.AddBots(b, n, "take")
	ids := runnertest.IDs(bots)
	f := newFleet(b, env, ttl)
	f.start("a", "")
	victim := f.start("b", "")
	f.start("c", "")
	f.allLive("every bot live", ids, 10*time.Minute)
	testsupport.Within(b, "shards balanced", 2*time.Minute, func() bool { return balanced(f.owners(), "a", "b", "c") })
	victims := f.botsOf("b")
	testsupport.Within(b, "the first updates handed off", 5*time.Minute, func() bool { return handedOff(b, env) >= n })

	b.ResetTimer()
	killed := time.Now()
	victim.kill9()
	back := map[string]time.Duration{}
	sawDown := map[string]bool{}
	deadline := killed.Add(ttl + 2*time.Minute)
	for len(back) < len(victims) && time.Now().Before(deadline) {
		views := env.SimBots(b)
		now := time.Since(killed)
		for _, v := range views {
			if !victims[v.BotID] {
				continue
			}
			if _, done := back[v.BotID]; done {
				continue
			}
			if v.GatewayOpen == 0 {
				sawDown[v.BotID] = true
			} else if sawDown[v.BotID] {
				back[v.BotID] = now
			}
		}
		time.Sleep(50 * time.Millisecond) // sampling interval of the measurement, bounded by its deadline
	}
	b.StopTimer()
	if len(back) < len(victims) {
		b.Fatalf("only %d of the victim's %d bots came back", len(back), len(victims))
	}
	ds := make([]time.Duration, 0, len(back))
	for _, d := range back {
		ds = append(ds, d)
	}
	p50, p99, worst := percentile(ds, .5), percentile(ds, .99), percentile(ds, 1)
	b.ReportMetric(p50.Seconds(), "s-p50")
	b.ReportMetric(p99.Seconds(), "s-p99")
	b.ReportMetric(worst.Seconds(), "s-max")
	b.Logf("takeover after kill -9 of 1 of 3 replicas (%d of %d bots, TTL %s): p50 %s, p99 %s, max %s (goal p99 <= TTL+2s = %s)",
		len(victims), n, ttl, p50.Round(time.Millisecond), p99.Round(time.Millisecond), worst.Round(time.Millisecond), ttl+2*time.Second)
}

// BenchmarkFleetRollingRestart: 3 replicas hold N bots (3,000); each replica
// in turn gets SIGTERM and is replaced by a new one. The simulator is polled
// every 100 ms; every interval in which a bot had no socket is a gap. Reports
// gap p50/p99/max and the bots' max sockets at once.
func BenchmarkFleetRollingRestart(b *testing.B) {
	n := benchBots(b, 3000)
	env := benchEnv(b)
	bots := env.AddBots(b, n, "roll")
	ids := runnertest.IDs(bots)
	f := newFleet(b, env, benchTTL(b))
	live := map[string]*replica{"a": f.start("a", ""), "b": f.start("b", ""), "c": f.start("c", "")}
	f.allLive("every bot live", ids, 10*time.Minute)
	testsupport.Within(b, "shards balanced", 2*time.Minute, func() bool { return balanced(f.owners(), "a", "b", "c") })

	// Steady state: every bot's first update (its /start) handed off, so the
	// drains below measure moving bots, not finishing a cold start.
	testsupport.Within(b, "the first updates handed off", 5*time.Minute, func() bool { return handedOff(b, env) >= n })
	tr := track(env, benchPoll(b))
	testsupport.Within(b, "the tracker to see every bot", time.Minute, func() bool { return tr.countUp(ids) == n })
	before := env.Stats(b)
	b.ResetTimer()
	start := time.Now()
	names := []string{"a", "b", "c"}
	for i, old := range names {
		r := live[old]
		r.term()
		if err := r.wait(b, 2*time.Minute); err != nil {
			b.Fatalf("replica %s after SIGTERM: %v", old, err)
		}
		delete(live, old)
		nu := fmt.Sprintf("%s%d", old, i+2)
		live[nu] = f.start(nu, "")
		var want []string
		for k := range live {
			want = append(want, k)
		}
		testsupport.Within(b, "balanced after replacing "+old, 5*time.Minute, func() bool { return balanced(f.owners(), want...) })
		testsupport.Within(b, "every bot live after replacing "+old, 5*time.Minute, func() bool { return tr.countUp(ids) == n })
	}
	took := time.Since(start)
	b.StopTimer()
	tr.finish()
	tr.mu.Lock()
	gaps := slices.Clone(tr.gaps)
	maxOpen := tr.maxOpen
	tr.mu.Unlock()
	p50, p99, worst := percentile(gaps, .5), percentile(gaps, .99), percentile(gaps, 1)
	b.ReportMetric(p50.Seconds(), "s-gap-p50")
	b.ReportMetric(p99.Seconds(), "s-gap-p99")
	b.ReportMetric(worst.Seconds(), "s-gap-max")
	b.ReportMetric(float64(len(gaps)), "gaps")
	b.Logf("rolling restart of 3 replicas with %d bots took %s: %d gaps seen (%s polls), p50 %s, p99 %s, max %s; max sockets per bot %d",
		n, took.Round(time.Millisecond), len(gaps), benchPoll(b), p50.Round(time.Millisecond), p99.Round(time.Millisecond), worst.Round(time.Millisecond), maxOpen)
	after := env.Stats(b)
	b.Logf("during the restarts: %d socket opens, %d upgrades refused for the connection limit (409), %d rate-limited",
		after.GatewayConnections-before.GatewayConnections, after.GatewayRejectedLimit-before.GatewayRejectedLimit,
		after.RateLimited-before.RateLimited)
	for _, g := range tr.worst {
		b.Logf("long gap: bot %s down %s from %s", g.bot, g.to.Sub(g.from).Round(time.Millisecond), g.from.UTC().Format("15:04:05.000"))
	}
	if st := env.Stats(b); st.MaxConcurrentGatewayPerBot != 1 {
		b.Fatalf("max_concurrent_gateway_per_bot = %d, want 1", st.MaxConcurrentGatewayPerBot)
	}
}
