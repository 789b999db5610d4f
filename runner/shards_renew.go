package runner

// The heartbeat, renewal and census of a replica: renewSQL, one statement
// that does all three, its named arguments and result, and tick, the round
// that runs it every TTL/3 and then rebalances.

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// The heartbeat, renewal and census in one statement. $2/$3 are the leases
// held (shard, epoch); a held lease that does not come back is lost. Leases
// that Postgres says are ours but that this process does not hold (fenced
// earlier, or a previous incarnation with the same id) are released.
const renewSQL = `
WITH hb AS (
	INSERT INTO runners AS r (id, heartbeat_at, draining, version, admin_addr, incarnation, liveness_key)
	VALUES ($1, now(), $5, $6, $7, $10, $11)
	-- draining is sticky within one process: the admin API may set it (drain-runner)
	ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(),
		draining = excluded.draining OR (r.draining AND r.incarnation = excluded.incarnation),
		version = excluded.version, admin_addr = excluded.admin_addr, incarnation = excluded.incarnation,
		-- the liveness connection registers its own key; a new process replaces a dead one's
		liveness_key = CASE WHEN r.incarnation = excluded.incarnation
			THEN coalesce(r.liveness_key, excluded.liveness_key) ELSE excluded.liveness_key END
	WHERE r.incarnation = excluded.incarnation OR r.heartbeat_at + $4 * interval '1 millisecond' <= now()
	RETURNING r.id, r.draining
), renewed AS (
	UPDATE shard_leases l SET expires_at = now() + $4 * interval '1 millisecond'
	FROM unnest($2::integer[], $3::bigint[]) AS h(shard, epoch)
	WHERE l.shard = h.shard AND l.epoch = h.epoch AND l.owner = $1 AND l.expires_at > now()
		AND EXISTS (SELECT 1 FROM hb)
	RETURNING l.shard
), orphans AS (
	UPDATE shard_leases SET owner = NULL, expires_at = now()
	WHERE owner = $1 AND NOT (shard = ANY($9::integer[])) AND EXISTS (SELECT 1 FROM hb)
	RETURNING shard
), gone AS (
	DELETE FROM runners WHERE id <> $1 AND heartbeat_at < now() - $8 * interval '1 millisecond'
	RETURNING id
)
SELECT
	coalesce((SELECT array_agg(shard) FROM renewed), '{}'::integer[]),
	(SELECT count(*) FROM orphans),
	(SELECT count(*) FROM runners WHERE id <> $1 AND NOT draining
		AND heartbeat_at + $4 * interval '1 millisecond' > now() AND NOT (id = ANY($12::text[]))),
	(SELECT extract(epoch FROM least(
		(SELECT min(expires_at) FROM shard_leases
			WHERE owner IS NOT NULL AND owner <> $1 AND expires_at > now()),
		(SELECT min(heartbeat_at + $4 * interval '1 millisecond') FROM runners
			WHERE id <> $1 AND NOT draining AND heartbeat_at + $4 * interval '1 millisecond' > now())
	) - now())::float8),
	(SELECT count(*) FROM gone),
	(SELECT count(*) FROM hb),
	coalesce((SELECT bool_or(draining) FROM hb), false)`

// renewArgs are the parameters of renewSQL, $1 to $12 in order.
type renewArgs struct {
	RunnerID    string   // $1
	Shards      []int32  // $2: the leases held, with Epochs
	Epochs      []int64  // $3
	TTLMillis   int64    // $4: lease and heartbeat TTL
	Draining    bool     // $5
	Version     string   // $6: runners.version
	AdminAddr   string   // $7: runners.admin_addr
	StaleMillis int64    // $8: age at which a dead runner's row is removed
	Keep        []int32  // $9: shards not to release as orphans (held or still stopping)
	Incarnation string   // $10
	LivenessKey *int32   // $11: the liveness key, for the row's first insert (nil: none yet)
	Dead        []string // $12: peers seen dead by their liveness locks: not counted live
}

// values lists the arguments in the statement's order.
func (a renewArgs) values() []any {
	return []any{a.RunnerID, a.Shards, a.Epochs, a.TTLMillis, a.Draining,
		a.Version, a.AdminAddr, a.StaleMillis, a.Keep, a.Incarnation, a.LivenessKey, a.Dead}
}

// renewResult is the one row renewSQL returns.
type renewResult struct {
	Renewed    []int32  // the held leases that were renewed; the others are lost
	Orphans    int      // leases Postgres held for this id that this process did not: released
	Peers      int      // live, non-draining peers
	NextExpiry *float64 // seconds until a peer's lease or heartbeat expires (nil: none)
	Gone       int      // long-dead runners removed
	Me         int      // 1 if the heartbeat was taken; 0: the id is another live process's
	DBDraining bool     // runners.draining is set for this replica
}

// dest lists the scan targets in the statement's column order.
func (r *renewResult) dest() []any {
	return []any{&r.Renewed, &r.Orphans, &r.Peers, &r.NextExpiry, &r.Gone, &r.Me, &r.DBDraining}
}

// tick is one heartbeat-renew-rebalance round. joined is when the replica
// first heartbeated (zero before that).
func (s *Shards) tick(ctx context.Context, joined time.Time) error {
	s.mu.Lock()
	held := make([]Lease, 0, len(s.held))
	for shard, h := range s.held {
		held = append(held, Lease{Shard: shard, Epoch: h.epoch})
	}
	draining := s.draining
	// Shards whose sessions are still stopping stay ours in Postgres until
	// they have stopped: they are not released as orphans.
	keep := make([]int32, 0, len(held)+len(s.stopping))
	for shard := range s.stopping {
		keep = append(keep, int32(shard))
	}
	s.mu.Unlock()

	shards := make([]int32, len(held))
	epochs := make([]int64, len(held))
	for i, l := range held {
		shards[i], epochs[i] = int32(l.Shard), l.Epoch
	}
	keep = append(keep, shards...)
	args := renewArgs{
		RunnerID: s.cfg.RunnerID, Shards: shards, Epochs: epochs, TTLMillis: s.cfg.TTL.Milliseconds(),
		Draining: draining, Version: s.cfg.Version, AdminAddr: s.cfg.AdminAddr,
		StaleMillis: staleRunnerAge.Milliseconds(), Keep: keep, Incarnation: s.incarnation,
		LivenessKey: s.livenessKey(),
	}
	args.Dead, _ = s.deadPeers()
	if args.Dead == nil {
		args.Dead = []string{}
	}
	var res renewResult
	rctx, cancel := context.WithTimeout(ctx, s.cfg.TTL/3)
	sent := time.Now()
	err := s.cfg.Pool.QueryRow(rctx, renewSQL, args.values()...).Scan(res.dest()...)
	cancel()
	if err == nil && res.Me == 0 {
		err = fmt.Errorf("%w: runner id %q is in use by another live process; this one takes no shards until that one stops heartbeating", ErrDuplicateRunner, s.cfg.RunnerID)
	}
	s.cfg.Metrics.renewed(time.Since(sent), err)
	if err != nil {
		s.mu.Lock()
		s.ready = false
		s.mu.Unlock()
		switch {
		case errors.Is(err, ErrDuplicateRunner):
			s.log.Error().Err(err).Msg("duplicate runner id")
		case ctx.Err() == nil:
			s.log.Warn().Err(err).Int("held", len(held)).Msg("heartbeat and renew failed; sessions stop at the fencing deadline unless a renew succeeds")
		}
		return err
	}

	if res.DBDraining && !draining {
		// An operator asked for a drain (admin API, drain-runner).
		s.log.Info().Msg("draining on request (runners.draining set): releasing every shard")
		s.mu.Lock()
		s.draining = true
		s.mu.Unlock()
		draining = true
	}
	ok := make(map[int]bool, len(res.Renewed))
	for _, sh := range res.Renewed {
		ok[int(sh)] = true
	}
	var lost []Lease
	s.mu.Lock()
	valid := sent.Add(s.cfg.TTL - s.cfg.Margin)
	for _, l := range held {
		h, still := s.held[l.Shard]
		if !still || h.epoch != l.Epoch {
			continue // fenced meanwhile
		}
		switch {
		case ok[l.Shard]:
			h.validUntil = valid
		case h.leaving:
			// Released meanwhile by the release job, which forgets it; if it
			// was lost instead, the watchdog fences it at its deadline.
		default:
			delete(s.held, l.Shard)
			lost = append(lost, l)
		}
	}
	s.markStoppingLocked(lost, 1) // with the delete, as in fenceExpired
	s.ready = true
	s.peers = res.Peers
	s.nextWake = time.Time{}
	if res.NextExpiry != nil {
		// A peer's lease runs out then; if the peer is dead, take it over at once.
		s.nextWake = time.Now().Add(time.Duration(*res.NextExpiry*float64(time.Second)) + 50*time.Millisecond)
	}
	n := s.n
	nHeld := len(s.held)
	s.mu.Unlock()
	s.pokeWatchdog()
	s.cfg.Metrics.setLeases(nHeld)
	live := res.Peers
	if !draining {
		live++
	}
	s.cfg.Metrics.setLive(live)
	if res.Orphans > 0 {
		s.log.Info().Int("shards", res.Orphans).Msg("released leases Postgres held for this runner id but this process did not")
		s.notify(ctx, "released")
	}
	if res.Gone > 0 {
		s.log.Info().Int("runners", res.Gone).Msg("removed long-dead runners")
	}
	if len(lost) > 0 {
		s.cfg.Metrics.lost(LossStolen, len(lost))
		s.log.Warn().Ints("shards", leaseShards(lost)).Msg("leases lost (expired or claimed by a peer); stopping their sessions")
		s.stopMarked(ctx, lost, LossStolen, s.cfg.Margin)
	}

	if draining {
		s.releaseAll(ctx, LossDrained)
		return nil
	}
	if joined.IsZero() || time.Since(joined) < s.cfg.Settle {
		return nil
	}
	return s.rebalance(ctx, n, live)
}
