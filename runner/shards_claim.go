package runner

// Claim and rebalance: fair share, claiming free or expired leases up to it,
// and release, for the shards above it and for a drain (their sessions
// stopped first, a few shards at a time, each released once stopped).

import (
	"context"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"
)

// fairShare is ceil(n / live).
func fairShare(n, live int) int {
	if live < 1 {
		live = 1
	}
	return int(math.Ceil(float64(n) / float64(live)))
}

func (s *Shards) rebalance(ctx context.Context, n, live int) error {
	fair := fairShare(n, live)
	s.mu.Lock()
	var keep []int
	for shard, h := range s.held {
		if !h.leaving {
			keep = append(keep, shard)
		}
	}
	s.mu.Unlock()
	s.log.Debug().Int("held", len(keep)).Int("fair", fair).Int("live", live).Msg("rebalance")
	switch {
	case len(keep) > fair:
		slices.Sort(keep)
		extra := keep[fair:] // give back the highest shards; claims take the lowest free ones
		s.release(ctx, extra, LossReleased)
		return nil
	case len(keep) < fair:
		if !s.livenessOK() {
			// Sessions started now could not be fenced by the liveness
			// deadline; the scan wakes the replica when its lock is confirmed.
			s.log.Debug().Msg("liveness lock not confirmed: not claiming")
			return nil
		}
		return s.claim(ctx, fair-len(keep))
	}
	return nil
}

const claimSQL = `
WITH c AS (
	SELECT shard, owner AS prev_owner, expires_at > now() AS early FROM shard_leases
	WHERE owner IS NULL OR expires_at <= now()
		-- a peer seen dead by its liveness lock ($4, $5), if its lock is
		-- still missing and its key unchanged (it did not come back)
		OR (owner = ANY($4::text[]) AND EXISTS (
			SELECT 1 FROM runners r JOIN unnest($4::text[], $5::integer[]) AS d(id, key) ON d.id = r.id
			WHERE r.id = shard_leases.owner AND r.liveness_key = d.key
				AND NOT EXISTS (SELECT 1 FROM pg_locks k
					WHERE k.locktype = 'advisory' AND k.classid = $6::oid AND k.objid = d.key::oid
						AND k.objsubid = 2 AND k.granted
						AND k.database = (SELECT oid FROM pg_database WHERE datname = current_database()))))
	ORDER BY shard
	LIMIT $2
	FOR UPDATE SKIP LOCKED
)
UPDATE shard_leases l
SET owner = $1, epoch = l.epoch + 1, expires_at = now() + $3 * interval '1 millisecond', claimed_at = now()
FROM c WHERE l.shard = c.shard
RETURNING l.shard, l.epoch, c.prev_owner, c.early`

func (s *Shards) claim(ctx context.Context, want int) error {
	cctx, cancel := context.WithTimeout(ctx, s.cfg.TTL/3)
	defer cancel()
	sent := time.Now()
	deadIDs, deadKeys := s.deadPeers()
	if deadIDs == nil {
		deadIDs, deadKeys = []string{}, []int32{}
	}
	rows, err := s.cfg.Pool.Query(cctx, claimSQL, s.cfg.RunnerID, want, s.cfg.TTL.Milliseconds(),
		deadIDs, deadKeys, livenessLockClass)
	if err != nil {
		return fmt.Errorf("runner: claim: %w", err)
	}
	var got []Lease
	free, takeover, early := 0, 0, 0
	var from []string
	for rows.Next() {
		var shard int32
		var epoch int64
		var prev *string
		var before bool
		if err := rows.Scan(&shard, &epoch, &prev, &before); err != nil {
			rows.Close()
			return fmt.Errorf("runner: claim: %w", err)
		}
		got = append(got, Lease{Shard: int(shard), Epoch: epoch})
		if prev == nil {
			free++
		} else {
			takeover++
			if before {
				early++
			}
			if !slices.Contains(from, *prev) {
				from = append(from, *prev)
			}
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		// The claim may or may not have committed; leases we do not record
		// are released by the next heartbeat (orphans) or expire.
		return fmt.Errorf("runner: claim: %w", err)
	}
	if len(got) == 0 {
		return nil
	}
	valid := sent.Add(s.cfg.TTL - s.cfg.Margin)
	s.mu.Lock()
	for _, l := range got {
		s.held[l.Shard] = &heldLease{epoch: l.Epoch, validUntil: valid}
	}
	nHeld := len(s.held)
	s.mu.Unlock()
	s.pokeWatchdog()
	s.cfg.Metrics.setLeases(nHeld)
	s.cfg.Metrics.claimed(free, takeover-early, early)
	ev := s.log.Info().Int("claimed", len(got)).Int("held", nHeld).Int("takeover", takeover).Int("dead_owner", early)
	if len(from) > 0 {
		ev = ev.Strs("from", from)
	}
	ev.Msg("claimed shards")
	s.jobs.Add(1)
	go func() {
		defer s.jobs.Done()
		s.cfg.Handler.Acquired(ctx, got)
	}()
	return nil
}

// release stops the sessions of shards (marked leaving first, so nothing new
// starts on them), then releases their leases and tells peers. It runs in the
// background so renewals go on meanwhile.
func (s *Shards) release(ctx context.Context, shards []int, reason string) {
	var ls []Lease
	s.mu.Lock()
	for _, shard := range shards {
		if h, ok := s.held[shard]; ok && !h.leaving {
			h.leaving = true
			ls = append(ls, Lease{Shard: shard, Epoch: h.epoch})
		}
	}
	s.mu.Unlock()
	if len(ls) == 0 {
		return
	}
	s.log.Info().Str("reason", reason).Ints("shards", leaseShards(ls)).Msg("releasing shards")
	s.jobs.Add(1)
	go func() {
		defer s.jobs.Done()
		start := time.Now()
		stopCtx, cancel := context.WithTimeout(ctx, s.cfg.StopTimeout)
		if reason == LossDrained {
			stopCtx, cancel = context.WithCancel(ctx) // the drain's caller bounds it
		}
		defer cancel()
		// Each shard is stopped on its own and released as soon as its
		// sessions have stopped (in batches of whatever finished together),
		// so a bot's gap does not include waiting for the slowest shard.
		done := make(chan Lease, len(ls))
		var wg sync.WaitGroup
		sem := make(chan struct{}, s.cfg.ReleaseParallel)
		for _, l := range ls {
			wg.Add(1)
			go func() {
				defer wg.Done()
				sem <- struct{}{}
				defer func() { <-sem }()
				s.cfg.Handler.Lost(stopCtx, []Lease{l}, reason)
				done <- l
			}()
		}
		go func() { wg.Wait(); close(done) }()
		for l := range done {
			batch := []Lease{l}
		more:
			for {
				select {
				case l2, ok := <-done:
					if !ok {
						break more
					}
					batch = append(batch, l2)
				default:
					break more
				}
			}
			s.releaseLeases(ctx, batch, reason)
		}
		s.log.Info().Str("reason", reason).Int("shards", len(ls)).Dur("took", time.Since(start)).Msg("released shards")
	}()
}

func (s *Shards) releaseAll(ctx context.Context, reason string) {
	s.mu.Lock()
	var all []int
	for shard, h := range s.held {
		if !h.leaving {
			all = append(all, shard)
		}
	}
	s.mu.Unlock()
	s.release(ctx, all, reason)
}

const releaseSQL = `
WITH rel AS (
	UPDATE shard_leases l SET owner = NULL, expires_at = now()
	FROM unnest($2::integer[], $3::bigint[]) AS h(shard, epoch)
	WHERE l.shard = h.shard AND l.epoch = h.epoch AND l.owner = $1
	RETURNING l.shard
)
SELECT (SELECT count(*) FROM rel), pg_notify('` + ShardsChannel + `', $4)`

// releaseLeases gives leases back in Postgres (after their sessions stopped)
// and forgets them. It uses a short context of its own so a hard stop still
// frees the shards for peers at once.
func (s *Shards) releaseLeases(ctx context.Context, ls []Lease, reason string) {
	shards := make([]int32, len(ls))
	epochs := make([]int64, len(ls))
	for i, l := range ls {
		shards[i], epochs[i] = int32(l.Shard), l.Epoch
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), max(s.cfg.TTL/3, 2*time.Second))
	defer cancel()
	var n int
	err := s.cfg.Pool.QueryRow(rctx, releaseSQL, s.cfg.RunnerID, shards, epochs, s.event("released")).Scan(&n, new(any))
	s.mu.Lock()
	for _, l := range ls {
		if h, ok := s.held[l.Shard]; ok && h.epoch == l.Epoch {
			delete(s.held, l.Shard)
		}
	}
	nHeld := len(s.held)
	s.mu.Unlock()
	s.pokeWatchdog()
	s.cfg.Metrics.setLeases(nHeld)
	s.cfg.Metrics.lost(reason, len(ls))
	if err != nil {
		s.log.Warn().Err(err).Ints("shards", leaseShards(ls)).Msg("release failed; the leases expire after their TTL")
		return
	}
	s.log.Debug().Str("reason", reason).Int("released", n).Int("held", nHeld).Msg("released a batch of shards")
}
