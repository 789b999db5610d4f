package runner

// Liveness bound to the replica's Postgres session (docs/ownership.md,
// "Liveness"): the liveness connection holds a session-level advisory lock
// under a key recorded in runners.liveness_key, and scans the peers' keys
// every LivenessScan. Postgres releases a lock when its backend ends, so a
// peer whose lock this connection has seen held and then missing for
// livenessGrace is dead: its shards may be claimed before their leases
// expire. The other half of the bargain: a replica whose own scan has not
// succeeded for LivenessTimeout stops every session (the liveness fence,
// shards_fence.go), unless Postgres itself was seen down or starting up
// since — then no peer connection that watched its lock survived, and no
// peer can count its absence.

import (
	"context"
	"errors"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// livenessLockClass is the first key of every liveness lock
// (pg_advisory_lock(int4, int4)): "agnt" in ASCII, so the locks of other
// software in the same database do not collide with ours.
const livenessLockClass = 1634168436

// liveness is a replica's own liveness as its Shards sees it (under Shards.mu).
type liveness struct {
	key       int32     // the key of the lock the current connection holds (0: none)
	confirmed time.Time // send time of the last scan that found the key registered (and so held)
	// exempt: since confirmed, Postgres was seen down or starting up, so every
	// backend that had watched our lock has ended; the liveness fence waits
	// until a new key is registered.
	exempt bool
	dead   map[string]int32 // peers whose lock has been missing for the grace: id → key
}

// livenessGrace is how long a peer's lock must be seen missing, on one
// connection that saw it held before, before its shards may be claimed: the
// peer's own liveness deadline, plus its stop budget, plus two scans for
// the difference between two machines' clocks and schedulers.
func (c *ShardsConfig) livenessGrace() time.Duration {
	return c.LivenessTimeout + c.LivenessStop + 2*c.LivenessScan
}

// livenessDeadlineLocked is when this replica's sessions must be stopped for
// want of a confirmed liveness lock (zero: no such deadline).
func (s *Shards) livenessDeadlineLocked() time.Time {
	if s.cfg.NoLiveness || s.live.exempt || s.live.confirmed.IsZero() {
		return time.Time{}
	}
	return s.live.confirmed.Add(s.cfg.LivenessTimeout)
}

// livenessExpiredLocked: the liveness deadline has passed at now.
func (s *Shards) livenessExpiredLocked(now time.Time) bool {
	d := s.livenessDeadlineLocked()
	return !d.IsZero() && !now.Before(d)
}

// livenessOK reports whether the liveness lock is confirmed with more than
// half of LivenessTimeout to spare: claims wait for it.
func (s *Shards) livenessOK() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cfg.NoLiveness {
		return true
	}
	d := s.livenessDeadlineLocked()
	return !d.IsZero() && time.Until(d) > s.cfg.LivenessTimeout/2
}

// livenessKey is the current key (0: none), for the runners row's first insert.
func (s *Shards) livenessKey() *int32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.live.key == 0 {
		return nil
	}
	k := s.live.key
	return &k
}

// deadPeers lists the peers seen dead and their keys, for the claim.
func (s *Shards) deadPeers() (ids []string, keys []int32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, k := range s.live.dead {
		ids = append(ids, id)
		keys = append(keys, k)
	}
	return ids, keys
}

// awaitLiveness waits, up to d, for the first confirmation of the liveness
// lock, so the first heartbeat (which peers answer by releasing shards to
// this replica) finds the replica able to claim.
func (s *Shards) awaitLiveness(ctx context.Context, d time.Duration) {
	if s.cfg.NoLiveness {
		return
	}
	deadline := time.Now().Add(d)
	t := time.NewTicker(s.cfg.LivenessScan / 2)
	defer t.Stop()
	for !s.livenessOK() && time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// livenessLoop keeps the liveness connection until ctx ends, reconnecting
// at once (then every 50 ms to 500 ms) when it breaks.
func (s *Shards) livenessLoop(ctx context.Context) {
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		connected, err := s.livenessSession(ctx)
		if ctx.Err() != nil {
			return
		}
		if connected {
			backoff = 50 * time.Millisecond
		}
		s.livenessDown(err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 500*time.Millisecond)
	}
}

// livenessDown records a broken or failed liveness connection: the peers'
// observations are gone with it, and evidence that Postgres was down or
// starting up exempts this replica from the liveness fence.
func (s *Shards) livenessDown(err error) {
	down := postgresWasDown(err)
	s.mu.Lock()
	s.live.key = 0
	s.live.dead = nil
	wasExempt := s.live.exempt
	if down && !s.live.confirmed.IsZero() {
		s.live.exempt = true
	}
	exempt := s.live.exempt
	s.mu.Unlock()
	s.pokeWatchdog()
	if exempt && !wasExempt {
		s.log.Warn().Err(err).Msg("liveness connection: Postgres is down or restarting; sessions keep running on their leases")
	} else {
		s.log.Debug().Err(err).Msg("liveness connection lost; reconnecting")
	}
}

// postgresWasDown: err proves that the Postgres server was not running, or
// was starting up or recovering from a crash, at some moment of the attempt:
// then every backend that existed before has ended. A refused connection
// counts (nothing listens: the postmaster is gone, and its backends exit
// when it does), as do the server's own "starting up" / "in recovery mode"
// refusals and a backend ended for a crash of another (57P02, crash
// recovery ends every backend). "Shutting down" does not: a smart shutdown
// keeps the other backends.
func postgresWasDown(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		return true
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch pe.Code {
		case "57P02": // crash_shutdown
			return true
		case "57P03": // cannot_connect_now
			return strings.Contains(pe.Message, "starting up") || strings.Contains(pe.Message, "recovery mode")
		}
	}
	return false
}

// livenessScanSQL confirms this replica's registration ($1, $2) and reports,
// for every peer with a fresh heartbeat ($3 ms) and a liveness key, whether
// its lock is held.
const livenessScanSQL = `
WITH held AS (
	SELECT k.objid FROM pg_locks k
	WHERE k.locktype = 'advisory' AND k.classid = $4::oid AND k.objsubid = 2 AND k.granted
		AND k.database = (SELECT oid FROM pg_database WHERE datname = current_database())
), peers AS (
	SELECT r.id, r.liveness_key AS key,
		EXISTS (SELECT 1 FROM held WHERE held.objid = r.liveness_key::oid) AS held
	FROM runners r
	WHERE r.id <> $1 AND r.liveness_key IS NOT NULL
		AND r.heartbeat_at + $3 * interval '1 millisecond' > now()
)
SELECT (SELECT liveness_key FROM runners WHERE id = $1 AND incarnation = $2),
	coalesce((SELECT array_agg(id ORDER BY id) FROM peers), '{}'::text[]),
	coalesce((SELECT array_agg(key ORDER BY id) FROM peers), '{}'::integer[]),
	coalesce((SELECT array_agg(held ORDER BY id) FROM peers), '{}'::boolean[])`

// peerWatch is what one liveness connection has seen of one peer's key.
type peerWatch struct {
	key          int32
	seenHeld     bool      // held at some scan of this connection
	missingSince time.Time // receive time of the first scan that found it missing since
}

// livenessSession connects, takes a fresh key and its lock, registers the
// key, and scans until an error; connected reports that it got as far as
// a connection.
func (s *Shards) livenessSession(ctx context.Context) (connected bool, err error) {
	cctx, cancel := context.WithTimeout(ctx, s.cfg.LivenessTimeout)
	conn, err := pgx.ConnectConfig(cctx, s.cfg.Pool.Config().ConnConfig.Copy())
	cancel()
	if err != nil {
		return false, err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = conn.Close(cctx)
	}()
	var key int32
	for key == 0 {
		var got bool
		qctx, cancel := context.WithTimeout(ctx, s.cfg.LivenessTimeout)
		err := conn.QueryRow(qctx, `SELECT k, pg_try_advisory_lock($1, k)
			FROM (SELECT nextval('runner_liveness_keys')::integer AS k) n`, livenessLockClass).Scan(&key, &got)
		cancel()
		if err != nil {
			return true, err
		}
		if !got {
			key = 0 // held by someone else (the sequence cycled): take the next
		}
	}
	// Registering makes the key observable: if this replica was exempt, its
	// deadline runs from now on (a peer may watch the new key from here).
	sent := time.Now()
	s.mu.Lock()
	s.live.key = key
	if s.live.exempt {
		s.live.exempt = false
		s.live.confirmed = sent
	}
	s.mu.Unlock()
	s.pokeWatchdog()
	register := func() error {
		qctx, cancel := context.WithTimeout(ctx, s.cfg.LivenessTimeout)
		defer cancel()
		// Before the first heartbeat there is no row: insert one that does
		// not count as live (its heartbeat a TTL old), so the key is
		// confirmed before the first claim; the heartbeat takes it over.
		_, err := conn.Exec(qctx, `INSERT INTO runners AS r (id, heartbeat_at, incarnation, liveness_key)
			VALUES ($2, now() - $4 * interval '1 millisecond', $3, $1)
			ON CONFLICT (id) DO UPDATE SET liveness_key = excluded.liveness_key
			WHERE r.incarnation = excluded.incarnation`,
			key, s.cfg.RunnerID, s.incarnation, s.cfg.TTL.Milliseconds())
		return err
	}
	if err := register(); err != nil {
		return true, err
	}
	s.log.Debug().Int32("liveness_key", key).Msg("liveness lock held")

	watch := map[string]*peerWatch{}
	grace := s.cfg.livenessGrace()
	tick := time.NewTicker(s.cfg.LivenessScan)
	defer tick.Stop()
	for {
		var mine *int32
		var ids []string
		var keys []int32
		var held []bool
		sent := time.Now()
		qctx, cancel := context.WithTimeout(ctx, s.cfg.LivenessTimeout)
		err := conn.QueryRow(qctx, livenessScanSQL, s.cfg.RunnerID, s.incarnation,
			s.cfg.TTL.Milliseconds(), livenessLockClass).Scan(&mine, &ids, &keys, &held)
		cancel()
		if err != nil {
			return true, err
		}
		recv := time.Now()
		if took := recv.Sub(sent); took > s.cfg.LivenessTimeout/3 {
			s.log.Warn().Dur("took", took).Dur("liveness_timeout", s.cfg.LivenessTimeout).
				Msg("slow liveness scan: the replica fences itself if no scan completes within the liveness timeout")
		}
		dead := map[string]int32{}
		seen := make(map[string]bool, len(ids))
		for i, id := range ids {
			seen[id] = true
			w := watch[id]
			if w == nil || w.key != keys[i] {
				w = &peerWatch{key: keys[i]}
				watch[id] = w
			}
			switch {
			case held[i]:
				w.seenHeld, w.missingSince = true, time.Time{}
			case w.seenHeld && w.missingSince.IsZero():
				w.missingSince = recv
			}
			if w.seenHeld && !w.missingSince.IsZero() && recv.Sub(w.missingSince) >= grace {
				dead[id] = w.key
			}
		}
		for id := range watch {
			if !seen[id] {
				delete(watch, id)
			}
		}
		registered := mine != nil && *mine == key
		if !registered {
			// The runners row was another incarnation's (the heartbeat
			// takes it over once it is stale), or held another key:
			// register again; the next scan confirms.
			if err := register(); err != nil {
				return true, err
			}
		}
		s.mu.Lock()
		d := s.livenessDeadlineLocked()
		wasOK := !d.IsZero() && time.Until(d) > s.cfg.LivenessTimeout/2
		first := registered && !wasOK
		if registered {
			s.live.confirmed = sent
			s.live.exempt = false
		}
		newDead := false
		for id := range dead {
			if _, ok := s.live.dead[id]; !ok {
				newDead = true
			}
		}
		s.live.dead = dead
		s.mu.Unlock()
		s.pokeWatchdog()
		if first {
			s.Wake() // claims wait for a confirmed liveness lock
		}
		if newDead {
			ev := s.log.Info()
			for id, k := range dead {
				ev = ev.Int32(id, k)
			}
			ev.Dur("grace", grace).Msg("peers' liveness locks missing for the grace: taking over their shards")
			s.Wake()
		}
		select {
		case <-ctx.Done():
			return true, ctx.Err()
		case <-tick.C:
		}
	}
}
