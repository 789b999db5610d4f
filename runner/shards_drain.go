package runner

// Leaving: Drain, the graceful exit that releases every shard after its
// sessions drained, and shutdown, the hard stop when Run's context ends.

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Drain stops claiming, marks the replica draining (peers stop counting it),
// stops the sessions of every held shard within ctx, releases the leases and
// tells peers. It returns once nothing is held, or with ctx's error. Run must
// be running.
func (s *Shards) Drain(ctx context.Context) error {
	s.mu.Lock()
	s.draining = true
	runCtx := s.runCtx
	s.mu.Unlock()
	if runCtx == nil {
		return errors.New("runner: drain: Run is not running")
	}
	s.log.Info().Msg("draining: releasing every shard")
	// Peers must stop counting this replica before its shards come free, or
	// their fair share would not let them take the shards.
	hctx, cancel := context.WithTimeout(ctx, s.cfg.TTL/3)
	_, err := s.cfg.Pool.Exec(hctx, `UPDATE runners SET draining = true, heartbeat_at = now() WHERE id = $1`, s.cfg.RunnerID)
	cancel()
	if err == nil {
		s.releaseAll(runCtx, LossDrained)
	} else {
		s.log.Warn().Err(err).Msg("cannot mark this runner draining; the next heartbeat will")
	}
	s.Wake()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		s.mu.Lock()
		n := len(s.held)
		s.mu.Unlock()
		if n == 0 {
			s.jobs.Wait()
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("runner: drain: %d shards still held: %w", n, ctx.Err())
		case <-tick.C:
		}
	}
}

// shutdown runs when Run's context ends: whatever is still held is stopped
// hard and released, the runner row is removed, and peers are told.
func (s *Shards) shutdown() {
	s.mu.Lock()
	s.draining = true
	var rest []Lease
	for shard, h := range s.held {
		if !h.leaving {
			h.leaving = true
			rest = append(rest, Lease{Shard: shard, Epoch: h.epoch})
		}
	}
	s.mu.Unlock()
	bg := context.Background()
	if len(rest) > 0 {
		s.log.Warn().Int("shards", len(rest)).Msg("stopping without a drain: closing sessions hard")
		hard, cancel := context.WithCancel(bg)
		cancel()
		s.cfg.Handler.Lost(hard, rest, LossDrained)
		s.releaseLeases(bg, rest, LossDrained)
	}
	s.jobs.Wait()
	ctx, cancel := context.WithTimeout(bg, 2*time.Second)
	defer cancel()
	if _, err := s.cfg.Pool.Exec(ctx, `DELETE FROM runners WHERE id = $1`, s.cfg.RunnerID); err != nil {
		s.log.Warn().Err(err).Msg("could not remove this runner from runners")
	}
	s.notify(ctx, "left")
	s.mu.Lock()
	s.ready = false
	s.mu.Unlock()
}
