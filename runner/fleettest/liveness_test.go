package fleettest

import (
	"context"
	"fmt"
	"maps"
	"net/url"
	"testing"
	"time"

	"buko.app/agentrunner/internal/testsupport"
	"buko.app/agentrunner/runner/runnertest"
)

// prodTTL is the production lease TTL: tests of the liveness lock use it, so
// a takeover that waited for the lease would be plain to see.
const prodTTL = 15 * time.Second

// leaseTable is every shard's owner and epoch.
func (f *fleet) leaseTable() map[int]string {
	f.t.Helper()
	rows, err := f.env.Pool.Query(context.Background(), `SELECT shard, coalesce(owner, ''), epoch FROM shard_leases`)
	if err != nil {
		f.t.Fatal(err)
	}
	defer rows.Close()
	out := map[int]string{}
	for rows.Next() {
		var shard int
		var owner string
		var epoch int64
		if err := rows.Scan(&shard, &owner, &epoch); err != nil {
			f.t.Fatal(err)
		}
		out[shard] = fmt.Sprintf("%s@%d", owner, epoch)
	}
	return out
}

// expiryOf is the earliest expiry of owner's leases.
func (f *fleet) expiryOf(owner string) time.Time {
	f.t.Helper()
	var at time.Time
	if err := f.env.Pool.QueryRow(context.Background(), `SELECT min(expires_at) FROM shard_leases WHERE owner = $1`, owner).Scan(&at); err != nil {
		f.t.Fatal(err)
	}
	return at
}

// claimedBefore fails the test unless every shard was last claimed before at
// (the victim's leases' expiry): the takeover did not wait for the lease.
func (f *fleet) claimedBefore(at time.Time) {
	f.t.Helper()
	var last time.Time
	if err := f.env.Pool.QueryRow(context.Background(), `SELECT max(claimed_at) FROM shard_leases`).Scan(&last); err != nil {
		f.t.Fatal(err)
	}
	if !last.Before(at) {
		f.t.Fatalf("the last claim was at %s, not before the victim's leases expired at %s", last.Format(time.RFC3339Nano), at.Format(time.RFC3339Nano))
	}
	f.t.Logf("the victim's shards were claimed %s before their leases expired", at.Sub(last).Round(time.Millisecond))
}

// livenessLocks counts the replicas whose registered liveness lock is held.
func (f *fleet) livenessLocks() int {
	f.t.Helper()
	var n int
	err := f.env.Pool.QueryRow(context.Background(), `SELECT count(*) FROM runners r JOIN pg_locks k
		ON k.locktype = 'advisory' AND k.classid = 1634168436 AND k.objsubid = 2 AND k.objid = r.liveness_key::oid AND k.granted`).Scan(&n)
	if err != nil {
		return -1
	}
	return n
}

// A Postgres restart ends every replica's connections at once (every
// liveness lock vanishes together). Nobody may read that as dead peers: no
// shard changes owner or epoch, no session stops or fences itself. Then a
// kill -9 shows that the locks taken again after the restart still make a
// takeover fast.
func TestFleetPostgresRestartKeepsOwners(t *testing.T) {
	pg := runnertest.StartPostgres(t)
	env := runnertest.NewEnv(t, runnertest.EnvOptions{AdminURL: pg.AdminURL()})
	bots := env.AddBots(t, 30, "pgrs")
	ids := runnertest.IDs(bots)
	f := newFleet(t, env, prodTTL)
	reps := []*replica{f.start("a", ""), f.start("b", ""), f.start("c", "")}
	f.allLive("every bot live", ids, 90*time.Second)
	testsupport.Within(t, "shards balanced over a, b, c", 60*time.Second, func() bool { return balanced(f.owners(), "a", "b", "c") })
	testsupport.Within(t, "three liveness locks", 30*time.Second, func() bool { return f.livenessLocks() == 3 })
	before := f.leaseTable()
	st0 := env.Stats(t)

	// Down for longer than the liveness timeout and the grace together: had
	// the replicas not known that Postgres itself was down, they would fence
	// themselves, and peers would count them dead.
	took := pg.Restart(t, 3*time.Second)
	t.Logf("Postgres stopped (pg_ctl stop -m fast) and started again: unavailable for %s", took.Round(time.Millisecond))
	env.Pool.Reset() // the test's own connections died too
	testsupport.Within(t, "every replica to take its liveness lock again", 60*time.Second, func() bool { return f.livenessLocks() == 3 })
	// Give a peer that would wrongly count the vanished locks as dead
	// replicas time to act: twice the grace (2 s) and a heartbeat round.
	until := time.Now().Add(2*2000*time.Millisecond + prodTTL/3)
	testsupport.Within(t, "the grace and a heartbeat round to pass", time.Minute, func() bool { return time.Now().After(until) })
	after := f.leaseTable()
	if !maps.Equal(before, after) {
		moved := 0
		for shard, v := range before {
			if after[shard] != v {
				moved++
			}
		}
		t.Fatalf("%d of 128 shards changed owner or epoch across the Postgres restart", moved)
	}
	f.allLive("every bot live after the restart", ids, 30*time.Second)
	st1 := env.Stats(t)
	t.Logf("across the restart: %d Gateway socket opens (0: no session stopped), max sockets per bot %d",
		st1.GatewayConnections-st0.GatewayConnections, st1.MaxConcurrentGatewayPerBot)
	if st1.GatewayConnections != st0.GatewayConnections {
		t.Fatalf("%d sockets were opened across the restart: sessions stopped", st1.GatewayConnections-st0.GatewayConnections)
	}
	for _, r := range reps {
		if n := r.countLog("self-fencing"); n != 0 {
			t.Fatalf("replica %s fenced itself %d times across the restart", r.id, n)
		}
		if r.countLog("Postgres is down or restarting") == 0 {
			t.Fatalf("replica %s did not see Postgres down: the test did not exercise the exemption", r.id)
		}
	}

	// The new locks work: kill -9 of b, taken over long before its leases expire.
	victim := f.botsOf("b")
	expires := f.expiryOf("b")
	killed := time.Now()
	reps[1].kill9()
	_ = reps[1].wait(t, 30*time.Second)
	f.allLive("b's bots live on a and c", victim, 60*time.Second)
	t.Logf("b's %d bots live again %s after kill -9 (lease TTL %s)", len(victim), time.Since(killed).Round(time.Millisecond), prodTTL)
	testsupport.Within(t, "a and c to hold every shard", 60*time.Second, func() bool { return balanced(f.owners(), "a", "c") })
	f.claimedBefore(expires)
	if st := env.Stats(t); st.MaxConcurrentGatewayPerBot != 1 {
		t.Fatalf("max_concurrent_gateway_per_bot = %d, want 1", st.MaxConcurrentGatewayPerBot)
	}
}

// A slow database (every round trip of one replica 400 ms longer, through a
// proxy) is not a dead one: its liveness scans still confirm its lock within
// the liveness timeout, so it does not fence itself, and its peers, who see
// its lock held, take nothing.
func TestFleetSlowPostgresKeepsOwners(t *testing.T) {
	env := runnertest.NewEnv(t, runnertest.EnvOptions{})
	bots := env.AddBots(t, 20, "slow")
	ids := runnertest.IDs(bots)
	u, err := url.Parse(env.DSN)
	if err != nil {
		t.Fatal(err)
	}
	proxy := runnertest.NewProxy(t, u.Host)
	f := newFleet(t, env, prodTTL)
	a := f.start("a", proxy.DSN(t, env.DSN))
	f.start("b", "")
	f.allLive("every bot live", ids, 90*time.Second)
	testsupport.Within(t, "shards split between a and b", 60*time.Second, func() bool { return balanced(f.owners(), "a", "b") })
	before := f.leaseTable()
	st0 := env.Stats(t)

	proxy.SetDelay(200 * time.Millisecond)
	// Two heartbeat rounds and many graces.
	until := time.Now().Add(2 * prodTTL / 3)
	testsupport.Within(t, "two heartbeat rounds on a slow database", time.Minute, func() bool { return time.Now().After(until) })
	proxy.SetDelay(0)
	if after := f.leaseTable(); !maps.Equal(before, after) {
		t.Fatalf("shards changed owner or epoch while a's database was slow")
	}
	if n := a.countLog("self-fencing"); n != 0 {
		t.Fatalf("a fenced itself %d times on a slow database", n)
	}
	f.allLive("every bot live", ids, 30*time.Second)
	if st := env.Stats(t); st.GatewayConnections != st0.GatewayConnections || st.MaxConcurrentGatewayPerBot != 1 {
		t.Fatalf("%d sockets opened while the database was slow; max sockets per bot %d",
			st.GatewayConnections-st0.GatewayConnections, st.MaxConcurrentGatewayPerBot)
	}
}
