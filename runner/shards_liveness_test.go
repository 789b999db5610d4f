package runner

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"buko.app/agentrunner/internal/testsupport"
	"buko.app/agentrunner/migrations/pgtest"
	"buko.app/agentrunner/runner/runnertest"
)

// terminateLiveness ends the backend that holds the liveness lock of runner
// id, as Postgres does when it notices a dead client, and returns how many
// it ended.
func terminateLiveness(t *testing.T, dsn, id string) int {
	t.Helper()
	pool := newPool(t, dsn)
	var n int
	err := pool.QueryRow(context.Background(), `SELECT count(pg_terminate_backend(k.pid)) FROM pg_locks k
		JOIN runners r ON r.liveness_key::oid = k.objid
		WHERE r.id = $1 AND k.locktype = 'advisory' AND k.classid = $2::oid AND k.objsubid = 2 AND k.granted
			AND k.database = (SELECT oid FROM pg_database WHERE datname = current_database())`,
		id, livenessLockClass).Scan(&n)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// The dangerous case of the liveness lock: a's lock is released while a is
// alive (its backend ended) and a cannot reach Postgres to take a new one (a
// partition). b sees the lock missing and takes a's shards before their
// leases expire; a must have stopped its sessions first (the liveness
// fence), which the world checks.
func TestLivenessFenceBeforePeerTakesOver(t *testing.T) {
	dsn := pgtest.New(t)
	direct := newPool(t, dsn)
	proxy := runnertest.NewProxy(t, "127.0.0.1:5432")
	cutOff := newPool(t, proxy.DSN(t, dsn))
	w := newWorld()
	ma := NewMetrics(prometheus.NewRegistry())
	mb := NewMetrics(prometheus.NewRegistry())
	a := startReplicaConfig(t, w, ShardsConfig{Pool: cutOff, RunnerID: "a", Metrics: ma}, 100*time.Millisecond)
	b := startReplicaConfig(t, w, ShardsConfig{Pool: direct, RunnerID: "b", Metrics: mb}, 0)
	testsupport.Within(t, "a and b to split", 30*time.Second, func() bool {
		return a.count() == 64 && b.count() == 64 && len(a.sh.Held()) == 64
	})
	var expires time.Time
	proxy.Cut()
	if err := direct.QueryRow(context.Background(), `SELECT min(expires_at) FROM shard_leases WHERE owner = 'a'`).Scan(&expires); err != nil {
		t.Fatal(err)
	}
	if n := terminateLiveness(t, dsn, "a"); n != 1 {
		t.Fatalf("terminated %d liveness backends of a, want 1", n)
	}
	testsupport.Within(t, "b to take over every shard", 30*time.Second, func() bool { return b.count() == 128 })
	var claimedAt time.Time
	if err := direct.QueryRow(context.Background(), `SELECT max(claimed_at) FROM shard_leases WHERE owner = 'b'`).Scan(&claimedAt); err != nil {
		t.Fatal(err)
	}
	if !claimedAt.Before(expires) {
		t.Fatalf("b claimed a's shards at %s, not before their leases expired at %s", claimedAt, expires)
	}
	t.Logf("b took a's shards %s before their leases expired", expires.Sub(claimedAt).Round(time.Millisecond))
	if got := testutil.ToFloat64(mb.epochChanges.WithLabelValues("dead")); got != 64 {
		t.Fatalf("b's epoch changes of kind dead = %v, want 64", got)
	}
	if a.count() != 0 || a.reason(LossFenced) < 64 {
		t.Fatalf("a runs %d shards, fenced %d", a.count(), a.reason(LossFenced))
	}
	w.check(t) // b never acquired a shard while it still ran on a

	proxy.Restore()
	testsupport.Within(t, "a and b to split again", 30*time.Second, func() bool { return a.count() == 64 && b.count() == 64 })
	w.check(t)
}

// A liveness backend ended while its replica can still reach Postgres (an
// administrator's pg_terminate_backend, a server-side timeout): the replica
// takes a new key at once, and nothing moves.
func TestLivenessReconnectKeepsShards(t *testing.T) {
	dsn := pgtest.New(t)
	pool := newPool(t, dsn)
	w := newWorld()
	a := startReplica(t, w, pool, "a", nil)
	b := startReplica(t, w, pool, "b", nil)
	testsupport.Within(t, "a and b to split", 30*time.Second, func() bool { return a.count() == 64 && b.count() == 64 })
	before := a.sh.Held()
	key := func() (k int32) {
		if err := pool.QueryRow(context.Background(), `SELECT coalesce(liveness_key, 0) FROM runners WHERE id = 'a'`).Scan(&k); err != nil {
			t.Fatal(err)
		}
		return k
	}
	for i := 0; i < 3; i++ {
		old := key()
		if n := terminateLiveness(t, dsn, "a"); n != 1 {
			t.Fatalf("round %d: terminated %d liveness backends of a, want 1", i, n)
		}
		testsupport.Within(t, "a to hold a new liveness lock", 10*time.Second, func() bool {
			var held bool
			err := pool.QueryRow(context.Background(), `SELECT EXISTS (SELECT 1 FROM pg_locks k JOIN runners r
				ON r.liveness_key::oid = k.objid WHERE r.id = 'a' AND k.classid = $1::oid AND k.granted)`, livenessLockClass).Scan(&held)
			return err == nil && held && key() != old
		})
	}
	// Longer than b's grace: had a not come back, b would have claimed by now.
	deadline := time.Now().Add(2 * a.sh.cfg.livenessGrace())
	testsupport.Within(t, "the grace to pass", 30*time.Second, func() bool { return time.Now().After(deadline) })
	after := a.sh.Held()
	if fmt.Sprint(before) != fmt.Sprint(after) {
		t.Fatalf("a's leases changed: %v → %v", before, after)
	}
	if a.reason(LossFenced) != 0 || b.count() != 64 {
		t.Fatalf("a fenced %d shards; b holds %d", a.reason(LossFenced), b.count())
	}
	w.check(t)
}

func TestPostgresWasDown(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{errors.New("boom"), false},
		{fmt.Errorf("dial: %w", syscall.ECONNREFUSED), true},
		{&pgconn.PgError{Code: "57P03", Message: "the database system is starting up"}, true},
		{&pgconn.PgError{Code: "57P03", Message: "the database system is in recovery mode"}, true},
		{&pgconn.PgError{Code: "57P03", Message: "the database system is shutting down"}, false},
		{&pgconn.PgError{Code: "57P01", Message: "terminating connection due to administrator command"}, false},
		{fmt.Errorf("scan: %w", &pgconn.PgError{Code: "57P02"}), true},
		{context.DeadlineExceeded, false},
	} {
		if got := postgresWasDown(c.err); got != c.want {
			t.Errorf("postgresWasDown(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
