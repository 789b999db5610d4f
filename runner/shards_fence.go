package runner

// Fencing: Holds, the one check of every shard-owned write, Fenced, the one
// door through which such writes go, and the watchdog that stops the sessions
// of a shard whose renew deadline passes (self-fencing by a monotonic clock).

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Holds is THE fencing check: nil only if this replica holds l's shard at l's
// epoch and the renew deadline has not passed. Every shard-owned write goes
// through Fenced, which calls it.
func (s *Shards) Holds(l Lease) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.holdsLocked(l, false)
}

// holdsUntil is Holds that also returns the lease's local deadline.
func (s *Shards) holdsUntil(l Lease) (time.Time, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.holdsLocked(l, false); err != nil {
		return time.Time{}, err
	}
	until := s.held[l.Shard].validUntil
	if d := s.livenessDeadlineLocked(); !d.IsZero() && d.Before(until) {
		until = d
	}
	return until, nil
}

// Active is Holds for starting work: it also refuses a lease being released.
func (s *Shards) Active(l Lease) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.holdsLocked(l, true) == nil
}

func (s *Shards) holdsLocked(l Lease, forStart bool) error {
	h, ok := s.held[l.Shard]
	switch {
	case !ok:
		return &FencedError{Lease: l, Reason: "shard not held"}
	case h.epoch != l.Epoch:
		return &FencedError{Lease: l, Reason: fmt.Sprintf("held at epoch %d", h.epoch)}
	case !time.Now().Before(h.validUntil):
		return &FencedError{Lease: l, Reason: "renew deadline passed"}
	case s.livenessExpiredLocked(time.Now()):
		return &FencedError{Lease: l, Reason: "liveness lock not confirmed in time"}
	case forStart && h.leaving:
		return &FencedError{Lease: l, Reason: "being released"}
	}
	return nil
}

// Fenced runs fn inside a transaction that first locks the lease row FOR KEY
// SHARE where owner = this replica, epoch = l.Epoch and the lease has not
// expired by Postgres's clock. While the transaction is open nobody can claim
// the shard (claims lock FOR UPDATE SKIP LOCKED, which conflicts with it),
// yet the renewal's UPDATE of expires_at does not wait for it (a non-key
// update conflicts only with FOR UPDATE and FOR NO KEY UPDATE): a fenced
// write stuck behind a row lock or a slow statement never holds a renewal
// up. The transaction runs on WritePool and is cancelled when the lease's
// local deadline passes. If the lease is not held so, fn does not run and
// the error is a *FencedError (errors.Is(err, ErrFenced)).
func (s *Shards) Fenced(ctx context.Context, l Lease, fn func(ctx context.Context, tx pgx.Tx) error) error {
	until, err := s.holdsUntil(l)
	if err != nil {
		s.cfg.Metrics.fencedWrite()
		return err
	}
	// Past the deadline the sessions of the shard are being stopped and the
	// lease may expire soon: an open transaction would keep peers from
	// claiming it after it has.
	ctx, cancel := context.WithDeadline(ctx, until)
	defer cancel()
	tx, err := s.cfg.WritePool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("runner: fenced write, shard %d: begin: %w", l.Shard, err)
	}
	defer func() { _ = tx.Rollback(context.Background()) }()
	var one int
	err = tx.QueryRow(ctx, `SELECT 1 FROM shard_leases
		WHERE shard = $1 AND owner = $2 AND epoch = $3 AND expires_at > now()
		FOR KEY SHARE`, l.Shard, s.cfg.RunnerID, l.Epoch).Scan(&one)
	if errors.Is(err, pgx.ErrNoRows) {
		s.cfg.Metrics.fencedWrite()
		return &FencedError{Lease: l, Reason: "lease not held in Postgres"}
	}
	if err != nil {
		return fmt.Errorf("runner: fenced write, shard %d: lock lease: %w", l.Shard, err)
	}
	if err := fn(ctx, tx); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("runner: fenced write, shard %d: commit: %w", l.Shard, err)
	}
	return nil
}

// stopMarked runs Handler.Lost in the background with a deadline of d (for
// fenced/stolen shards: before anyone else may claim them).
// The caller has already marked ls stopping (markStoppingLocked, in the
// critical section that removed them from held); the job unmarks them when
// Lost returns.
func (s *Shards) stopMarked(ctx context.Context, ls []Lease, reason string, d time.Duration) {
	s.jobs.Add(1)
	go func() {
		defer s.jobs.Done()
		defer s.markStopping(ls, -1)
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), d)
		defer cancel()
		s.cfg.Handler.Lost(sctx, ls, reason)
	}()
}

func (s *Shards) markStopping(ls []Lease, delta int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.markStoppingLocked(ls, delta)
}

func (s *Shards) markStoppingLocked(ls []Lease, delta int) {
	for _, l := range ls {
		s.stopping[l.Shard] += delta
		if s.stopping[l.Shard] <= 0 {
			delete(s.stopping, l.Shard)
		}
	}
}

// watchdog stops the sessions of every shard whose renew deadline passes:
// the self-fencing of docs/architecture.md §5. It needs no database.
func (s *Shards) watchdog(ctx context.Context) {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		s.mu.Lock()
		var next time.Time
		for _, h := range s.held {
			if next.IsZero() || h.validUntil.Before(next) {
				next = h.validUntil
			}
		}
		if d := s.livenessDeadlineLocked(); len(s.held) > 0 && !d.IsZero() && d.Before(next) {
			next = d
		}
		s.mu.Unlock()
		if !t.Stop() {
			select {
			case <-t.C:
			default:
			}
		}
		if !next.IsZero() {
			t.Reset(max(time.Until(next), 0))
		}
		select {
		case <-ctx.Done():
			return
		case <-s.poke:
		case <-t.C:
			s.fenceExpired(ctx)
		}
	}
}

func (s *Shards) fenceExpired(ctx context.Context) {
	now := time.Now()
	var fenced []Lease
	s.mu.Lock()
	byLiveness := s.livenessExpiredLocked(now)
	for shard, h := range s.held {
		if byLiveness || !now.Before(h.validUntil) {
			fenced = append(fenced, Lease{Shard: shard, Epoch: h.epoch})
			delete(s.held, shard)
		}
	}
	// In the same critical section: a shard leaves held and enters stopping
	// at once, so no tick ever sees it as neither (an orphan it would
	// release for a peer to claim while its sessions still run).
	s.markStoppingLocked(fenced, 1)
	nHeld := len(s.held)
	s.mu.Unlock()
	if len(fenced) == 0 {
		return
	}
	if s.afterFence != nil {
		s.afterFence(fenced)
	}
	s.cfg.Metrics.fencedSelf()
	s.cfg.Metrics.lost(LossFenced, len(fenced))
	s.cfg.Metrics.setLeases(nHeld)
	if byLiveness {
		// Peers may claim the shards LivenessStop (+ two scans) from now.
		s.log.Error().Ints("shards", leaseShards(fenced)).Dur("liveness_timeout", s.cfg.LivenessTimeout).
			Msg("self-fencing: the liveness lock was not confirmed in time; stopping every session before peers may take the shards")
		s.stopMarked(ctx, fenced, LossFenced, s.cfg.LivenessStop)
		return
	}
	s.log.Error().Ints("shards", leaseShards(fenced)).Dur("margin", s.cfg.Margin).
		Msg("self-fencing: no renew before the deadline; stopping the sessions of these shards before their leases expire")
	// The leases expire no earlier than margin from now: stop within most of it.
	s.stopMarked(ctx, fenced, LossFenced, s.cfg.Margin*3/4)
}
