package runner

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"

	"buko.app/agentrunner/internal/testsupport"
	"buko.app/agentrunner/migrations/pgtest"
	"buko.app/agentrunner/runner/runnertest"
)

const testTTL = 3 * time.Second

func newPool(t *testing.T, dsn string) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.ConnectTimeout = 2 * time.Second
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

func testLogger(t *testing.T) zerolog.Logger {
	if testing.Verbose() {
		return zerolog.New(zerolog.NewTestWriter(t)).With().Timestamp().Logger()
	}
	return zerolog.Nop()
}

// world checks, across the replicas of one test, that no shard is ever
// "running" (between Acquired and the end of Lost) on two replicas at once.
type world struct {
	mu      sync.Mutex
	running map[int]string // shard → replica
	errs    []string
}

func newWorld() *world {
	return &world{running: map[int]string{}}
}

func (w *world) check(t *testing.T) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, e := range w.errs {
		t.Error(e)
	}
}

// replica is a Shards plus the handler that records into world.
type replica struct {
	name   string
	w      *world
	sh     *Shards
	cancel context.CancelFunc
	done   chan error

	mu       sync.Mutex
	mine     map[int]int64 // running shard → epoch
	reasons  map[string]int
	lostWait time.Duration // simulated time to stop sessions
}

func (r *replica) Acquired(_ context.Context, ls []Lease) {
	r.w.mu.Lock()
	defer r.w.mu.Unlock()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, l := range ls {
		if other, ok := r.w.running[l.Shard]; ok && other != r.name {
			r.w.errs = append(r.w.errs, fmt.Sprintf("shard %d acquired by %s while running on %s", l.Shard, r.name, other))
		}
		r.w.running[l.Shard] = r.name
		r.mine[l.Shard] = l.Epoch
	}
}

func (r *replica) Lost(ctx context.Context, ls []Lease, reason string) {
	if r.lostWait > 0 {
		select {
		case <-time.After(r.lostWait):
		case <-ctx.Done():
		}
	}
	r.w.mu.Lock()
	defer r.w.mu.Unlock()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reasons[reason] += len(ls)
	for _, l := range ls {
		if e, ok := r.mine[l.Shard]; ok && e == l.Epoch {
			delete(r.mine, l.Shard)
			if r.w.running[l.Shard] == r.name {
				delete(r.w.running, l.Shard)
			}
		}
	}
}

func (r *replica) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.mine)
}

func (r *replica) reason(s string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.reasons[s]
}

func startReplica(t *testing.T, w *world, pool *pgxpool.Pool, name string, m *Metrics) *replica {
	t.Helper()
	return startReplicaWait(t, w, pool, name, m, 0)
}

// startReplicaWait starts a replica whose handler takes lostWait to stop a shard's sessions.
func startReplicaWait(t *testing.T, w *world, pool *pgxpool.Pool, name string, m *Metrics, lostWait time.Duration) *replica {
	t.Helper()
	return startReplicaConfig(t, w, ShardsConfig{Pool: pool, RunnerID: name, Metrics: m}, lostWait)
}

// startReplicaConfig starts a replica from cfg (Pool, WritePool, RunnerID,
// Metrics); the TTL, handler and logger are the test's.
func startReplicaConfig(t *testing.T, w *world, cfg ShardsConfig, lostWait time.Duration) *replica {
	t.Helper()
	name := cfg.RunnerID
	r := &replica{name: name, w: w, mine: map[int]int64{}, reasons: map[string]int{}, done: make(chan error, 1), lostWait: lostWait}
	cfg.TTL, cfg.Handler = testTTL, r
	cfg.Logger = testLogger(t).With().Str("replica", name).Logger()
	sh, err := NewShards(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r.sh = sh
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() { r.done <- sh.Run(ctx) }()
	t.Cleanup(r.stop)
	return r
}

func (r *replica) stop() {
	if r.cancel == nil {
		return
	}
	r.cancel()
	<-r.done
	r.cancel = nil
}

func dbOwners(t *testing.T, pool *pgxpool.Pool) map[string]int {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT coalesce(owner, ''), count(*) FROM shard_leases
		WHERE owner IS NULL OR expires_at > now() GROUP BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for rows.Next() {
		var o string
		var n int
		if err := rows.Scan(&o, &n); err != nil {
			t.Fatal(err)
		}
		out[o] = n
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestShardsFairShareRebalanceAndDrain(t *testing.T) {
	dsn := pgtest.New(t)
	pool := newPool(t, dsn)
	w := newWorld()
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)

	a := startReplica(t, w, pool, "a", m)
	testsupport.Within(t, "a to hold all 128 shards", 30*time.Second, func() bool { return a.count() == 128 })

	b := startReplica(t, w, pool, "b", nil)
	testsupport.Within(t, "a and b to split 64/64", 30*time.Second, func() bool { return a.count() == 64 && b.count() == 64 })

	c := startReplica(t, w, pool, "c", nil)
	testsupport.Within(t, "a, b, c to hold 43/43/42 in some order", 30*time.Second, func() bool {
		n := []int{a.count(), b.count(), c.count()}
		return n[0]+n[1]+n[2] == 128 && max(n[0], n[1], n[2]) == 43 && min(n[0], n[1], n[2]) == 42
	})
	if got := dbOwners(t, pool); got["a"]+got["b"]+got["c"] != 128 {
		t.Fatalf("leases in Postgres: %v", got)
	}

	// Drain b: its shards go to a and c, well before a TTL would pass.
	dctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := b.sh.Drain(dctx); err != nil {
		t.Fatal(err)
	}
	if b.count() != 0 || b.reason(LossDrained) == 0 {
		t.Fatalf("b after drain: %d running, reasons %v", b.count(), b.reasons)
	}
	b.stop()
	testsupport.Within(t, "a and c to split 64/64 after b drained", 30*time.Second, func() bool { return a.count() == 64 && c.count() == 64 })
	var runners int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM runners`).Scan(&runners); err != nil {
		t.Fatal(err)
	}
	if runners != 2 {
		t.Fatalf("runners rows after b left: %d, want 2", runners)
	}
	if got := testutil.ToFloat64(m.leasesHeld); got != 64 {
		t.Fatalf("a's leases_held gauge = %v, want 64", got)
	}
	if got := testutil.ToFloat64(m.epochChanges.WithLabelValues("free")); got < 128 {
		t.Fatalf("a's epoch changes (free) = %v, want >= 128", got)
	}
	w.check(t)

	// Every claim bumped an epoch: 128 first claims plus the moves.
	var minEpoch int64
	if err := pool.QueryRow(context.Background(), `SELECT min(epoch) FROM shard_leases`).Scan(&minEpoch); err != nil {
		t.Fatal(err)
	}
	if minEpoch < 1 {
		t.Fatalf("min epoch %d, want >= 1", minEpoch)
	}
}

func TestFencedWrites(t *testing.T) {
	dsn := pgtest.New(t)
	pool := newPool(t, dsn)
	w := newWorld()
	a := startReplica(t, w, pool, "a", nil)
	testsupport.Within(t, "a to hold all shards", 30*time.Second, func() bool { return a.count() == 128 })
	ls := a.sh.Held()
	l := ls[0]
	ctx := context.Background()

	ran := false
	if err := a.sh.Fenced(ctx, l, func(ctx context.Context, tx pgx.Tx) error {
		ran = true
		_, err := tx.Exec(ctx, `SELECT 1`)
		return err
	}); err != nil || !ran {
		t.Fatalf("fenced write at the held epoch: ran=%v err=%v", ran, err)
	}

	stale := Lease{Shard: l.Shard, Epoch: l.Epoch - 1}
	err := a.sh.Fenced(ctx, stale, func(context.Context, pgx.Tx) error { t.Error("ran at a stale epoch"); return nil })
	var fe *FencedError
	if !errors.Is(err, ErrFenced) || !errors.As(err, &fe) || fe.Lease != stale {
		t.Fatalf("stale epoch: err = %v, want a *FencedError for %v", err, stale)
	}

	// Someone else takes the shard in Postgres (as after an expiry): the
	// database check refuses even though this process still thinks it holds it.
	if _, err := pool.Exec(ctx, `UPDATE shard_leases SET owner = 'intruder', epoch = epoch + 1 WHERE shard = $1`, l.Shard); err != nil {
		t.Fatal(err)
	}
	err = a.sh.Fenced(ctx, l, func(context.Context, pgx.Tx) error { t.Error("ran on a stolen lease"); return nil })
	if !errors.Is(err, ErrFenced) {
		t.Fatalf("stolen lease: err = %v, want ErrFenced", err)
	}
	// The next renew notices and stops the shard's sessions.
	testsupport.Within(t, "a to stop the stolen shard", 20*time.Second, func() bool { return a.reason(LossStolen) == 1 })
	if a.sh.Holds(l) == nil {
		t.Fatal("still holds the stolen lease")
	}
}

func TestSelfFencingBeforeExpiry(t *testing.T) {
	dsn := pgtest.New(t)
	direct := newPool(t, dsn)
	proxy := runnertest.NewProxy(t, "127.0.0.1:5432")
	cutOff := newPool(t, proxy.DSN(t, dsn))
	w := newWorld()
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)

	// Stopping sessions takes a moment.
	a := startReplicaWait(t, w, cutOff, "a", m, 100*time.Millisecond)
	testsupport.Within(t, "a to hold all shards", 30*time.Second, func() bool { return a.count() == 128 })
	b := startReplica(t, w, direct, "b", nil)
	testsupport.Within(t, "a and b to split", 30*time.Second, func() bool {
		return a.count() == 64 && b.count() == 64 && len(a.sh.Held()) == 64
	})
	aShards := a.sh.Held()

	proxy.Cut()
	testsupport.Within(t, "a to fence itself", 20*time.Second, func() bool { return a.count() == 0 && a.reason(LossFenced) >= 64 })
	if got := testutil.ToFloat64(m.selfFencing); got < 1 {
		t.Fatalf("self_fencing_total = %v", got)
	}
	testsupport.Within(t, "b to take over every shard", 30*time.Second, func() bool { return b.count() == 128 })
	w.check(t) // Acquired on b never overlapped a running shard on a

	// Restore: a comes back, and the fleet rebalances to 64/64 again.
	proxy.Restore()
	testsupport.Within(t, "a and b to split again", 30*time.Second, func() bool { return a.count() == 64 && b.count() == 64 })
	w.check(t)
	for _, l := range aShards {
		if a.sh.Holds(l) == nil {
			t.Fatalf("a holds shard %d at its pre-partition epoch %d", l.Shard, l.Epoch)
		}
	}
}

func TestFairShare(t *testing.T) {
	for _, c := range []struct{ n, live, want int }{
		{128, 1, 128}, {128, 2, 64}, {128, 3, 43}, {128, 0, 128}, {4, 3, 2}, {1, 5, 1},
	} {
		if got := fairShare(c.n, c.live); got != c.want {
			t.Errorf("fairShare(%d, %d) = %d, want %d", c.n, c.live, got, c.want)
		}
	}
}

func TestShardsConfigErrors(t *testing.T) {
	h := &replica{}
	for name, cfg := range map[string]ShardsConfig{
		"no pool":    {RunnerID: "x", Handler: h},
		"no id":      {Pool: &pgxpool.Pool{}, Handler: h},
		"no handler": {Pool: &pgxpool.Pool{}, RunnerID: "x"},
		"short ttl":  {Pool: &pgxpool.Pool{}, RunnerID: "x", Handler: h, TTL: 100 * time.Millisecond},
		"big margin": {Pool: &pgxpool.Pool{}, RunnerID: "x", Handler: h, TTL: 3 * time.Second, Margin: 2 * time.Second},
	} {
		if _, err := NewShards(cfg); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestDuplicateRunnerIDIsRefused(t *testing.T) {
	dsn := pgtest.New(t)
	pool := newPool(t, dsn)
	w := newWorld()
	first := startReplica(t, w, pool, "same", nil)
	testsupport.Within(t, "the first to hold every shard", 30*time.Second, func() bool { return first.count() == 128 })
	second := &replica{name: "same-2", w: w, mine: map[int]int64{}, reasons: map[string]int{}, done: make(chan error, 1)}
	sh, err := NewShards(ShardsConfig{Pool: pool, RunnerID: "same", TTL: testTTL, Handler: second, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	second.sh = sh
	ctx, cancel := context.WithCancel(context.Background())
	second.cancel = cancel
	go func() { second.done <- sh.Run(ctx) }()
	t.Cleanup(second.stop)

	// While the first heartbeats, the second takes nothing and says why.
	deadline := time.Now().Add(2 * testTTL)
	for time.Now().Before(deadline) {
		if second.count() != 0 || sh.Ready() {
			t.Fatalf("the duplicate holds %d shards (ready %v)", second.count(), sh.Ready())
		}
		if first.count() != 128 {
			t.Fatalf("the first lost shards to the duplicate: holds %d", first.count())
		}
		time.Sleep(50 * time.Millisecond) // deliberate negative check: sample for 2 TTLs that nothing moves
	}
	// Once the first is gone, the second takes over.
	first.stop()
	testsupport.Within(t, "the second to hold every shard", 30*time.Second, func() bool { return second.count() == 128 })
	w.check(t)
}

// TestSelfFencingKeepsTheShardUntilSessionsStop pauses fenceExpired right
// after it takes a shard out of held, before its sessions stop, and makes a
// tick run meanwhile: the shard must stay this replica's in Postgres (not
// released as an orphan), so no peer can claim it while its old sessions may
// still run.
func TestSelfFencingKeepsTheShardUntilSessionsStop(t *testing.T) {
	dsn := pgtest.New(t)
	pool := newPool(t, dsn)
	ctx := context.Background()
	w := newWorld()
	a := &replica{name: "a", w: w, mine: map[int]int64{}, reasons: map[string]int{}, done: make(chan error, 1)}
	sh, err := NewShards(ShardsConfig{Pool: pool, RunnerID: "a", TTL: testTTL, Handler: a, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	a.sh = sh
	paused := make(chan Lease, 1)
	resume := make(chan struct{})
	var victim Lease
	sh.afterFence = func(fenced []Lease) {
		for _, l := range fenced {
			if l == victim {
				paused <- l
				<-resume
			}
		}
	}
	rctx, cancel := context.WithCancel(ctx)
	a.cancel = cancel
	go func() { a.done <- sh.Run(rctx) }()
	t.Cleanup(a.stop)
	testsupport.Within(t, "a to hold all shards", 30*time.Second, func() bool { return a.count() == 128 })

	victim = sh.Held()[5] // read by afterFence only after the watchdog is poked below
	// Pass the victim's local deadline (its Postgres lease is still valid for
	// up to a TTL): the watchdog fences it and pauses in afterFence.
	expire := func() {
		sh.mu.Lock()
		if h := sh.held[victim.Shard]; h != nil && h.epoch == victim.Epoch {
			h.validUntil = time.Now().Add(-time.Millisecond)
		}
		sh.mu.Unlock()
		sh.pokeWatchdog()
	}
	expire()
	deadline := time.Now().Add(20 * time.Second)
	for entered := false; !entered; {
		select {
		case <-paused:
			entered = true
		case <-time.After(200 * time.Millisecond):
			if time.Now().After(deadline) {
				t.Fatal("fenceExpired never reached the pause")
			}
			expire() // a renew raced the forced deadline: force it again
		}
	}
	defer func() {
		select {
		case <-resume:
		default:
			close(resume)
		}
	}()

	// A full tick (heartbeat, renew, orphan release, rebalance) runs in the gap.
	var before time.Time
	if err := pool.QueryRow(ctx, `SELECT now()`).Scan(&before); err != nil {
		t.Fatal(err)
	}
	sh.Wake()
	testsupport.Within(t, "a tick during the pause", 10*time.Second, func() bool {
		var hb time.Time
		if err := pool.QueryRow(ctx, `SELECT heartbeat_at FROM runners WHERE id = 'a'`).Scan(&hb); err != nil {
			t.Fatal(err)
		}
		return hb.After(before)
	})
	// The old code released the shard in that tick's heartbeat statement (and
	// a claimed it back at a new epoch beside its old sessions).
	var owner *string
	var epoch int64
	if err := pool.QueryRow(ctx, `SELECT owner, epoch FROM shard_leases WHERE shard = $1`, victim.Shard).Scan(&owner, &epoch); err != nil {
		t.Fatal(err)
	}
	if owner == nil || *owner != "a" || epoch != victim.Epoch {
		o := "NULL"
		if owner != nil {
			o = *owner
		}
		t.Fatalf("while the sessions of shard %d (epoch %d) were still up, Postgres has owner %s epoch %d: released for a peer to claim", victim.Shard, victim.Epoch, o, epoch)
	}
	// A peer trying to claim it right now gets nothing (the lease is still a's and unexpired).
	var took int
	if err := pool.QueryRow(ctx, `WITH c AS (UPDATE shard_leases SET owner = 'peer', epoch = epoch + 1
		WHERE shard = $1 AND (owner IS NULL OR expires_at <= now()) RETURNING 1) SELECT count(*) FROM c`, victim.Shard).Scan(&took); err != nil {
		t.Fatal(err)
	}
	if took != 0 {
		t.Fatalf("a peer claimed shard %d while a's sessions of it were still running", victim.Shard)
	}

	close(resume)
	testsupport.Within(t, "a to stop the fenced shard's sessions", 10*time.Second, func() bool { return a.reason(LossFenced) == 1 })
	// Once they stopped, the shard is given back and a, alone, claims it again.
	testsupport.Within(t, "a to hold every shard again", 30*time.Second, func() bool {
		return a.count() == 128 && sh.Holds(victim) != nil
	})
	w.check(t)
}

// TestRenewalsOutliveStuckFencedWrites holds a row lock on bot_cursors in a
// test transaction and keeps more fenced writes of that row waiting than the
// fenced-write pool has connections, on the pools NewSupervisor builds: the
// renewals must keep succeeding and no shard may fence itself (before, the
// writers took every connection of the one pool and their FOR SHARE locks
// on shard_leases held the renewal's UPDATE, so every shard self-fenced).
func TestRenewalsOutliveStuckFencedWrites(t *testing.T) {
	dsn := pgtest.New(t)
	pool := newPool(t, dsn)
	ctx := context.Background()
	leasePool, writePool, err := newOwnershipPools(pool.Config())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(leasePool.Close)
	t.Cleanup(writePool.Close)
	m := NewMetrics(prometheus.NewRegistry())
	w := newWorld()
	a := startReplicaConfig(t, w, ShardsConfig{Pool: leasePool, WritePool: writePool, RunnerID: "a", Metrics: m}, 0)
	testsupport.Within(t, "a to hold all shards", 30*time.Second, func() bool { return a.count() == 128 })

	if _, err := pool.Exec(ctx, `INSERT INTO bots (id, handle, shard) VALUES ('bot_stuck', 'stuck', 0);
		INSERT INTO bot_cursors (bot_id, acked_update_id, shard, owner, epoch) VALUES ('bot_stuck', '1', 0, 'a', 1)`); err != nil {
		t.Fatal(err)
	}
	lock, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = lock.Rollback(ctx) }()
	if _, err := lock.Exec(ctx, `SELECT 1 FROM bot_cursors WHERE bot_id = 'bot_stuck' FOR UPDATE`); err != nil {
		t.Fatal(err)
	}

	// Writers on distinct shards, each retrying until the test ends (a
	// fenced write is cancelled at its lease's local deadline).
	wctx, stopWriters := context.WithCancel(ctx)
	var writers sync.WaitGroup
	var wrote sync.Map
	held := a.sh.Held()
	for i := 0; i < 2*writePoolConns+2; i++ {
		l := held[i]
		writers.Add(1)
		go func() {
			defer writers.Done()
			for wctx.Err() == nil {
				err := a.sh.Fenced(wctx, l, func(ctx context.Context, tx pgx.Tx) error {
					_, err := tx.Exec(ctx, `UPDATE bot_cursors SET updated_at = now() WHERE bot_id = 'bot_stuck'`)
					return err
				})
				if err == nil {
					wrote.Store(l.Shard, true)
					return
				}
				if errors.Is(err, ErrFenced) {
					return
				}
			}
		}()
	}
	defer func() { stopWriters(); writers.Wait() }()
	testsupport.Within(t, "the fenced writers to wait on the row lock", 20*time.Second, func() bool {
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n >= min(writePoolConns, leasePoolConns) // enough to take every connection of either pool
	})
	failedBefore := testutil.ToFloat64(m.renewFailures)

	// Three TTLs with the lock held: every renewal succeeds, nothing fences itself.
	end := time.Now().Add(3 * testTTL)
	for time.Now().Before(end) {
		if n := a.reason(LossFenced); n > 0 {
			t.Fatalf("%d shards fenced themselves while fenced writes waited on a row lock", n)
		}
		if f := testutil.ToFloat64(m.renewFailures) - failedBefore; f > 0 {
			t.Fatalf("%v renewals failed while fenced writes waited on a row lock", f)
		}
		if got := a.count(); got != 128 {
			t.Fatalf("a holds %d shards, want 128", got)
		}
		time.Sleep(50 * time.Millisecond) // deliberate negative check: sample for 3 TTLs that nothing fences

	}
	if got := testutil.ToFloat64(m.selfFencing); got != 0 {
		t.Fatalf("self_fencing_total = %v", got)
	}

	// The lock goes: the waiting writers get through, fenced as before.
	if err := lock.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	testsupport.Within(t, "the fenced writers to commit", 20*time.Second, func() bool {
		n := 0
		wrote.Range(func(any, any) bool { n++; return true })
		return n == 2*writePoolConns+2
	})
	w.check(t)
}
