package runner

// Sessions: the supervisor as ShardHandler (Acquired, Lost) and the start and
// stop of one session per bot, each under the lease of its shard.

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/sessions"
	"buko.app/agentrunner/vault"
)

type botRun struct {
	id       string
	lease    Lease
	delivery string
	sess     *sessions.Session
	cancel   context.CancelFunc // ends the session hard
}

// Acquired queues the newly claimed shards for a reconcile pass.
func (s *Supervisor) Acquired(_ context.Context, leases []Lease) {
	s.log.Debug().Ints("shards", leaseShards(leases)).Msg("acquired: reconcile queued")
	s.mu.Lock()
	s.newShards = append(s.newShards, leases...)
	s.mu.Unlock()
	s.kick()
}

// Lost stops every session of the shards, in parallel, within ctx; for a
// release or drain it then writes their last cursors while the leases are
// still held.
func (s *Supervisor) Lost(ctx context.Context, leases []Lease, reason string) {
	var runs, others []*botRun
	lost := map[Lease]bool{}
	for _, l := range leases {
		lost[l] = true
	}
	s.mu.Lock()
	for _, l := range leases {
		for _, b := range s.byShard[l.Shard] {
			if b.lease == l {
				runs = append(runs, b)
			}
		}
	}
	for _, b := range runs {
		s.detachLocked(b)
	}
	for b := range s.stopping {
		if lost[b.lease] && !slices.Contains(runs, b) {
			others = append(others, b) // being stopped by a reconcile: wait for it too
		}
	}
	s.mu.Unlock()
	start := time.Now()
	var wg sync.WaitGroup
	for _, b := range others {
		wg.Add(1)
		go func() { defer wg.Done(); s.stopSession(ctx, b) }()
	}
	s.stopAll(ctx, runs, reason)
	wg.Wait()
	if reason == LossReleased || reason == LossDrained {
		shards := map[int]bool{}
		for _, l := range leases {
			shards[l.Shard] = true
		}
		s.flushCursors(ctx, shards)
	}
	s.dropCursors(leases)
	for _, b := range runs {
		s.cfg.Tokens.Forget(b.id)
	}
	if len(runs) > 0 {
		ev := s.log.Debug()
		if reason == LossFenced || reason == LossStolen {
			ev = s.log.Warn()
		}
		ev.Str("reason", reason).Int("sessions", len(runs)).Ints("shards", leaseShards(leases)).
			Dur("took", time.Since(start)).Msg("stopped the sessions of lost shards")
	}
}

// stopAll drains runs (detached by the caller) in parallel within ctx and
// forgets them.
func (s *Supervisor) stopAll(ctx context.Context, runs []*botRun, reason string) {
	var wg sync.WaitGroup
	for _, b := range runs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.stopSession(ctx, b)
			s.cfg.Metrics.sessionStopped(reason)
			s.mu.Lock()
			delete(s.stopping, b)
			s.mu.Unlock()
		}()
	}
	wg.Wait()
}

// detachLocked moves b from the running sessions to the stopping ones; the
// caller stops it (stopAll).
func (s *Supervisor) detachLocked(b *botRun) {
	delete(s.bots, b.id)
	if m := s.byShard[b.lease.Shard]; m != nil {
		delete(m, b.id)
		if len(m) == 0 {
			delete(s.byShard, b.lease.Shard)
		}
	}
	s.stopping[b] = true
}

// stopSession drains b's session within ctx; if ctx ends first (or another
// Stop with more patience is draining it), the session is ended hard, and
// stopSession returns once it is torn down.
func (s *Supervisor) stopSession(ctx context.Context, b *botRun) {
	defer b.cancel() // releases the session's context in every case
	if err := b.sess.Stop(ctx); err == nil {
		return
	}
	b.cancel()
	wctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := b.sess.Stop(wctx); err != nil {
		s.log.Warn().Err(err).Str("bot_id", b.id).Msg("session did not end after a hard stop")
	}
	s.log.Debug().Str("bot_id", b.id).Msg("session stopped hard")
}

// stopBots drains the sessions of bots that are no longer wanted here (paused,
// removed, moved), each within BotStopTimeout, and writes their cursors.
func (s *Supervisor) stopBots(ctx context.Context, runs []*botRun) {
	if len(runs) == 0 {
		return
	}
	sctx, cancel := context.WithTimeout(ctx, s.cfg.BotStopTimeout)
	defer cancel()
	s.stopAll(sctx, runs, "inactive")
	for _, b := range runs {
		s.cfg.Tokens.Forget(b.id)
		s.log.Info().Str("bot_id", b.id).Int("shard", b.lease.Shard).Msg("session stopped: bot not active here")
	}
}

// startBots starts a session for every bot of desired that has none, after
// loading their tokens in one batch. A bot starts only while its lease is
// active (checked under the lock that Lost takes).
func (s *Supervisor) startBots(ctx context.Context, desired map[string]botRow, leases map[int]Lease) error {
	var ids []string
	s.mu.Lock()
	for id := range desired {
		if s.bots[id] == nil {
			ids = append(ids, id)
		}
	}
	s.mu.Unlock()
	if len(ids) == 0 {
		return nil
	}
	slices.Sort(ids)
	start := time.Now()
	failed, err := s.cfg.Tokens.Prefetch(ctx, ids)
	s.cfg.Metrics.tokensLoaded(time.Since(start))
	s.log.Debug().Int("bots", len(ids)).Dur("took", time.Since(start)).Msg("tokens loaded")
	if err != nil {
		// Sessions load their tokens themselves (and retry); start them anyway.
		s.log.Warn().Err(err).Int("bots", len(ids)).Msg("batch token load failed; sessions will load their tokens one by one")
	}
	for id, ferr := range failed {
		s.log.Warn().Str("bot_id", id).Err(ferr).Msg("token load failed")
	}
	started := 0
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range ids {
		r := desired[id]
		l, ok := leases[r.shard]
		if !ok || s.bots[id] != nil || s.runCtx.Err() != nil || !s.shards.Active(l) {
			continue
		}
		if ferr := failed[id]; ferr != nil && errors.Is(ferr, vault.ErrNotFound) {
			continue // removed meanwhile: a notification follows
		}
		b := &botRun{id: id, lease: l, delivery: r.delivery}
		sctx, cancel := context.WithCancel(s.runCtx)
		sess, err := sessions.Start(sctx, s.sessionConfig(b))
		if err != nil {
			cancel()
			s.log.Error().Err(err).Str("bot_id", id).Msg("cannot start session")
			continue
		}
		b.cancel = cancel
		b.sess = sess
		s.bots[id] = b
		if s.byShard[l.Shard] == nil {
			s.byShard[l.Shard] = map[string]*botRun{}
		}
		s.byShard[l.Shard][id] = b
		s.cfg.Metrics.sessionStarted()
		started++
	}
	if started > 0 {
		s.log.Info().Int("sessions", started).Int("running", len(s.bots)).Dur("took", time.Since(start)).Msg("started sessions")
	}
	return nil
}

func (s *Supervisor) sessionConfig(b *botRun) sessions.Config {
	log := s.cfg.Logger.With().Str("runner_id", s.cfg.RunnerID).Str("bot_id", b.id).
		Int("shard", b.lease.Shard).Int64("epoch", b.lease.Epoch).Logger()
	cfg := sessions.Config{
		BotID:      b.id,
		Delivery:   b.delivery,
		Client:     s.cfg.Client,
		Tokens:     s.cfg.Tokens,
		Handoff:    s.cfg.Handoff,
		Logger:     log,
		Metrics:    s.cfg.SessionMetrics,
		HTTPClient: s.hc,
		OnAcked:    func(id buko.UpdateID) { s.noteAck(b, id) },
		OnAuthFailed: func() {
			s.bg.Add(1)
			go func() { defer s.bg.Done(); s.authFailed(b) }()
		},
		OnState: func(st sessions.State, cause string) {
			s.status.record(b.id, b.lease, st, cause)
			if st == sessions.StateLive {
				log.Debug().Msg("session live")
			} else if st == sessions.StateStopped {
				log.Debug().Str("cause", cause).Msg("session stopped")
			}
		},
	}
	cfg.DeadLetters = s.cfg.DeadLetters
	if s.cfg.Tune != nil {
		s.cfg.Tune(&cfg)
	}
	return cfg
}
