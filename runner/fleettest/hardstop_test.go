package fleettest

import (
	"context"
	"errors"
	"os/exec"
	"testing"
	"time"

	"buko.app/agentrunner/internal/testsupport"
	"buko.app/agentrunner/runner/runnertest"
)

// stuckDrain starts one replica with the given drain timeout, waits until
// its bots are live, then makes its drain slow: the test holds an EXCLUSIVE
// lock on the handoffs table and sends an update, so that update's handoff
// (an INSERT) blocks and the drain waits for it. The returned function
// releases the lock.
func stuckDrain(t *testing.T, env *runnertest.Env, bots []runnertest.Bot, drainTimeout string) (*fleet, *replica, func()) {
	t.Helper()
	f := newFleet(t, env, testTTL)
	r := f.start("a", "", "AGENTRUNNER_DRAIN_TIMEOUT="+drainTimeout)
	f.allLive("every bot live", runnertest.IDs(bots), 90*time.Second)
	testsupport.Within(t, "the first updates handed off", 60*time.Second, func() bool {
		var n int
		err := env.Pool.QueryRow(context.Background(), `SELECT count(*) FROM handoffs`).Scan(&n)
		return err == nil && n >= len(bots)
	})

	ctx := context.Background()
	tx, err := env.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	unlocked := false
	unlock := func() {
		if !unlocked {
			unlocked = true
			_ = tx.Rollback(context.Background())
		}
	}
	t.Cleanup(unlock)
	if _, err := tx.Exec(ctx, `LOCK TABLE handoffs IN EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	env.Send(t, bots[0], "held by the lock")
	testsupport.Within(t, "a handoff blocked on the lock", 60*time.Second, func() bool {
		var n int
		err := env.Pool.QueryRow(ctx, `SELECT count(*) FROM pg_locks
			WHERE relation = 'handoffs'::regclass AND NOT granted`).Scan(&n)
		return err == nil && n > 0
	})
	return f, r, unlock
}

// exitCode is the replica's exit status (-1: killed by a signal, 0: clean).
func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

// After the stuck replica stopped hard: its leases were released (peers need
// not wait for a TTL), and the update it never acked reaches the next owner.
func checkHardStopLosesNothing(t *testing.T, env *runnertest.Env, f *fleet, unlock func()) {
	t.Helper()
	if owners := f.owners(); len(owners) != 0 {
		t.Fatalf("leases still held after the hard stop: %v", owners)
	}
	unlock()
	f.start("b", "")
	testsupport.Within(t, "the held update handed off by the next owner", 90*time.Second, func() bool {
		return anyText(env.HandedOffTexts(t), "held by the lock") == 1
	})
	if st := env.Stats(t); st.MaxConcurrentGatewayPerBot != 1 {
		t.Fatalf("max_concurrent_gateway_per_bot = %d, want 1", st.MaxConcurrentGatewayPerBot)
	}
}

func anyText(got map[string]map[string]int, text string) int {
	n := 0
	for _, texts := range got {
		n += texts[text]
	}
	return n
}

// A second SIGTERM ends a drain that is stuck on a handoff: the process
// exits at once with status 1 and says it stopped hard.
func TestFleetSecondSignalStopsHard(t *testing.T) {
	env := runnertest.NewEnv(t, runnertest.EnvOptions{})
	bots := env.AddBots(t, 3, "hard")
	// The drain timeout is far away: only the second signal can end it.
	f, a, unlock := stuckDrain(t, env, bots, "10m")

	a.term()
	testsupport.Within(t, "a to start draining", 60*time.Second, func() bool {
		return a.countLog(`"draining: releasing every shard"`) == 1
	})
	if a.exited() {
		t.Fatalf("a exited although a handoff was stuck: %v", a.err)
	}
	a.term()
	err := a.wait(t, 60*time.Second)
	if code := exitCode(err); code != 1 {
		t.Fatalf("a after the second SIGTERM: %v (exit status %d, want 1)", err, code)
	}
	if a.countLog(`"second signal: stopping hard"`) != 1 ||
		a.countLog("stopped hard: a second signal ended the drain") != 1 {
		t.Fatalf("a's log does not say it stopped hard on the second signal:\n%s", a.tail(10))
	}
	checkHardStopLosesNothing(t, env, f, unlock)
}

// AGENTRUNNER_DRAIN_TIMEOUT ends a drain that is stuck on a handoff: exit
// status 1, saying the timeout stopped it hard.
func TestFleetDrainTimeoutStopsHard(t *testing.T) {
	env := runnertest.NewEnv(t, runnertest.EnvOptions{})
	bots := env.AddBots(t, 3, "tmo")
	f, a, unlock := stuckDrain(t, env, bots, "1s")

	a.term()
	err := a.wait(t, 60*time.Second)
	if code := exitCode(err); code != 1 {
		t.Fatalf("a after SIGTERM with a stuck drain: %v (exit status %d, want 1)", err, code)
	}
	if a.countLog("stopped hard: the drain timeout (1s) ended the drain") != 1 {
		t.Fatalf("a's log does not say the drain timeout stopped it hard:\n%s", a.tail(10))
	}
	checkHardStopLosesNothing(t, env, f, unlock)
}
