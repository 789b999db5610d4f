package runner

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/internal/testsupport"
	"buko.app/agentrunner/runner/runnertest"
	"buko.app/agentrunner/sessions"
	"buko.app/agentrunner/vault"
)

type testSupervisor struct {
	sup    *Supervisor
	cancel context.CancelFunc
	done   chan error
	m      *Metrics
	reg    *prometheus.Registry // m's and the sessions' metrics
}

// startSupervisor runs a supervisor on env with test timings; each opt
// changes its config before it starts.
func startSupervisor(t *testing.T, env *runnertest.Env, id string, opts ...func(*SupervisorConfig)) *testSupervisor {
	t.Helper()
	pool := newPool(t, env.DSN)
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	cfg := SupervisorConfig{
		Pool: pool, RunnerID: id, TTL: testTTL,
		Client:  buko.NewClient(env.SimURL, nil),
		Tokens:  vault.NewCache(vault.NewStore(pool, env.Store.Cipher(), testLogger(t), nil), vault.CacheOptions{Actor: "runner:" + id}),
		Handoff: NewPGHandoff(pool, id, m),
		Tune: func(c *sessions.Config) {
			c.BackoffBase = 50 * time.Millisecond
			c.BackoffMax = time.Second
			c.ReplacedBackoff = time.Second
		},
		ReconcileInterval: 5 * time.Second,
		CursorFlush:       200 * time.Millisecond,
		SessionMetrics:    sessions.NewMetrics(reg),
		Metrics:           m,
		Logger:            testLogger(t).With().Str("replica", id).Logger(),
	}
	for _, o := range opts {
		o(&cfg)
	}
	sup, err := NewSupervisor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ts := &testSupervisor{sup: sup, done: make(chan error, 1), m: m, reg: reg}
	ctx, cancel := context.WithCancel(context.Background())
	ts.cancel = cancel
	go func() { ts.done <- sup.Run(ctx) }()
	t.Cleanup(ts.stop)
	return ts
}

func (ts *testSupervisor) stop() {
	if ts.cancel == nil {
		return
	}
	ts.cancel()
	<-ts.done
	ts.cancel = nil
}

func (ts *testSupervisor) running() int { return len(ts.sup.Sessions()) }

func TestSupervisorRunsEachBotOnceAndReconciles(t *testing.T) {
	env := runnertest.NewEnv(t, runnertest.EnvOptions{})
	bots := env.AddBots(t, 24, "sup")
	ids := runnertest.IDs(bots)

	a := startSupervisor(t, env, "a")
	b := startSupervisor(t, env, "b")
	testsupport.Within(t, "every bot live", 60*time.Second, func() bool {
		live, _ := env.Live(t, ids)
		return live == len(bots)
	})
	testsupport.Within(t, "the sessions split between a and b", 30*time.Second, func() bool {
		return a.running()+b.running() == len(bots) && a.running() > 0 && b.running() > 0
	})
	if st := env.Stats(t); st.MaxConcurrentGatewayPerBot != 1 {
		t.Fatalf("max_concurrent_gateway_per_bot = %d, want 1", st.MaxConcurrentGatewayPerBot)
	}

	// Every /start and every message is handed off once.
	for i, bot := range bots {
		env.Send(t, bot, fmt.Sprintf("hello %d", i))
	}
	testsupport.Within(t, "every message handed off", 60*time.Second, func() bool {
		got := env.HandedOffTexts(t)
		for i, bot := range bots {
			if got[bot.ID][fmt.Sprintf("hello %d", i)] != 1 || got[bot.ID]["/start"] != 1 {
				return false
			}
		}
		return true
	})
	// The cursors follow the acks.
	testsupport.Within(t, "bot_cursors written for every bot", 30*time.Second, func() bool {
		var n int
		if err := env.Pool.QueryRow(context.Background(), `SELECT count(*) FROM bot_cursors`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n == len(bots)
	})

	// Each cursor is the simulator's acked id for the bot.
	testsupport.Within(t, "bot_cursors equal to the acks Buko saw", 30*time.Second, func() bool {
		acked := map[string]string{}
		for _, v := range env.SimBots(t) {
			acked[v.BotID] = v.AckedUpdateID
		}
		rows, err := env.Pool.Query(context.Background(), `SELECT bot_id, acked_update_id FROM bot_cursors`)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		n := 0
		for rows.Next() {
			var id, cur string
			if err := rows.Scan(&id, &cur); err != nil {
				t.Fatal(err)
			}
			if acked[id] != cur {
				return false
			}
			n++
		}
		return n == len(bots)
	})

	reg := NewRegistry(RegistryConfig{Pool: env.Pool, Store: env.Store, Buko: buko.NewClient(env.SimURL, nil), Logger: testLogger(t)})
	ctx := context.Background()
	isLive := func(id string) bool {
		live, _ := env.Live(t, map[string]bool{id: true})
		return live == 1
	}
	measure := func(what string, cond func() bool) {
		t.Helper()
		start := time.Now()
		testsupport.Within(t, what, 20*time.Second, cond)
		t.Logf("%s: took %s", what, time.Since(start).Round(time.Millisecond))
	}

	target := bots[3]
	if _, _, err := reg.Pause(ctx, "test", target.ID); err != nil {
		t.Fatal(err)
	}
	measure("paused bot disconnected", func() bool { return !isLive(target.ID) })
	if _, _, err := reg.Resume(ctx, "test", target.ID); err != nil {
		t.Fatal(err)
	}
	measure("resumed bot live", func() bool { return isLive(target.ID) })
	if _, err := reg.Remove(ctx, "test", target.ID); err != nil {
		t.Fatal(err)
	}
	measure("removed bot disconnected", func() bool {
		return !isLive(target.ID) && a.running()+b.running() == len(bots)-1
	})

	// A new bot starts without waiting for a full pass.
	more := env.AddBots(t, 1, "late")
	measure("added bot live", func() bool { return isLive(more[0].ID) })

	// Drain b: every bot it ran is live on a, and nothing sent meanwhile is lost.
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var sendWG sync.WaitGroup
	sendWG.Add(1)
	go func() {
		defer sendWG.Done()
		for i, bot := range bots {
			if bot.ID == target.ID {
				continue
			}
			if err := env.SendErr(bot, fmt.Sprintf("during drain %d", i)); err != nil {
				t.Error(err)
			}
		}
	}()
	if err := b.sup.Drain(dctx); err != nil {
		t.Fatal(err)
	}
	b.stop()
	sendWG.Wait()
	testsupport.Within(t, "a runs every bot", 30*time.Second, func() bool { return a.running() == len(bots) })
	testsupport.Within(t, "every message sent during the drain handed off once", 60*time.Second, func() bool {
		got := env.HandedOffTexts(t)
		for i, bot := range bots {
			if bot.ID != target.ID && got[bot.ID][fmt.Sprintf("during drain %d", i)] != 1 {
				return false
			}
		}
		return true
	})
	if st := env.Stats(t); st.MaxConcurrentGatewayPerBot != 1 {
		t.Fatalf("max_concurrent_gateway_per_bot = %d, want 1", st.MaxConcurrentGatewayPerBot)
	}
	if got := testutil.ToFloat64(a.m.reconcilePasses.WithLabelValues("bot")) + testutil.ToFloat64(b.m.reconcilePasses.WithLabelValues("bot")); got < 1 {
		t.Fatalf("bot reconcile passes = %v", got)
	}
}

func TestSupervisorMarksAuthFailed(t *testing.T) {
	env := runnertest.NewEnv(t, runnertest.EnvOptions{})
	bots := env.AddBots(t, 2, "auth")
	a := startSupervisor(t, env, "a")
	testsupport.Within(t, "both bots live", 60*time.Second, func() bool {
		live, _ := env.Live(t, runnertest.IDs(bots))
		return live == 2
	})
	// The token changes at Buko but not in secret_vault: 4001, then 401s.
	if _, err := env.Control.RotateToken(context.Background(), bots[0].ID); err != nil {
		t.Fatal(err)
	}
	testsupport.Within(t, "the bot marked auth_failed", 60*time.Second, func() bool {
		var st string
		if err := env.Pool.QueryRow(context.Background(), `SELECT status FROM bots WHERE id = $1`, bots[0].ID).Scan(&st); err != nil {
			t.Fatal(err)
		}
		return st == StatusAuthFailed
	})
	testsupport.Within(t, "its session gone", 30*time.Second, func() bool { return a.running() == 1 })
	var audited int
	if err := env.Pool.QueryRow(context.Background(), `SELECT count(*) FROM audit_log WHERE bot_id = $1 AND action = 'bot.auth_failed'`, bots[0].ID).Scan(&audited); err != nil {
		t.Fatal(err)
	}
	if audited != 1 {
		t.Fatalf("audit rows for auth_failed: %d", audited)
	}
}

func TestShardOfAgreesWithFixtures(t *testing.T) {
	for _, id := range []string{"", "b1", "bot_123456", "ünïcode", "x"} {
		if ShardOf(id, 128) != runnertest.ShardOf(id, 128) {
			t.Fatalf("ShardOf(%q) differs between runner and runnertest", id)
		}
	}
}
