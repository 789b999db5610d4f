package runner

// The supervisor's shard-owned writes, each through Shards.Fenced: the acked
// update ids of the sessions, flushed to bot_cursors, and the auth_failed
// mark of a bot whose token Buko rejects.

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/vault"
)

type pendingCursor struct {
	lease Lease
	id    buko.UpdateID
}

func (s *Supervisor) noteAck(b *botRun, id buko.UpdateID) {
	s.mu.Lock()
	s.cursors[b.id] = pendingCursor{lease: b.lease, id: id}
	s.mu.Unlock()
}

func (s *Supervisor) dropCursors(leases []Lease) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, c := range s.cursors {
		for _, l := range leases {
			if c.lease == l {
				delete(s.cursors, id)
			}
		}
	}
}

func (s *Supervisor) cursorLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.CursorFlush)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.flushCursors(ctx, nil)
			s.flushStatus(ctx)
		}
	}
}

const cursorSQL = `
INSERT INTO bot_cursors AS c (bot_id, acked_update_id, shard, owner, epoch, updated_at)
SELECT u.bot_id, u.acked, $3, $4, $5, now()
FROM unnest($1::text[], $2::text[]) AS u(bot_id, acked)
JOIN bots b ON b.id = u.bot_id
ON CONFLICT (bot_id) DO UPDATE SET acked_update_id = excluded.acked_update_id,
	shard = excluded.shard, owner = excluded.owner, epoch = excluded.epoch, updated_at = now()
WHERE length(excluded.acked_update_id) > length(c.acked_update_id)
	OR (length(excluded.acked_update_id) = length(c.acked_update_id)
		AND excluded.acked_update_id COLLATE "C" > c.acked_update_id COLLATE "C")`

// flushCursors writes pending acked ids to bot_cursors, one fenced
// transaction per shard; only shards in only (nil: all) are written.
func (s *Supervisor) flushCursors(ctx context.Context, only map[int]bool) {
	s.mu.Lock()
	groups := map[Lease][]string{}
	for id, c := range s.cursors {
		if only != nil && !only[c.lease.Shard] {
			continue
		}
		groups[c.lease] = append(groups[c.lease], id)
	}
	batch := map[Lease][]pendingCursor{}
	for l, ids := range groups {
		for _, id := range ids {
			batch[l] = append(batch[l], s.cursors[id])
			delete(s.cursors, id)
		}
	}
	s.mu.Unlock()
	for l, ids := range groups {
		cs := batch[l]
		acked := make([]string, len(cs))
		for i, c := range cs {
			acked[i] = string(c.id)
		}
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		err := s.shards.Fenced(wctx, l, func(ctx context.Context, tx pgx.Tx) error {
			_, err := tx.Exec(ctx, cursorSQL, ids, acked, l.Shard, s.cfg.RunnerID, l.Epoch)
			return err
		})
		cancel()
		if err != nil {
			if errors.Is(err, ErrFenced) {
				s.log.Debug().Err(err).Int("bots", len(ids)).Msg("cursor write fenced off")
				continue
			}
			s.log.Warn().Err(err).Int("shard", l.Shard).Msg("cursor write failed; retrying later")
			s.mu.Lock()
			for i, id := range ids {
				if _, newer := s.cursors[id]; !newer {
					s.cursors[id] = cs[i]
				}
			}
			s.mu.Unlock()
		}
	}
}

// authFailed marks the bot auth_failed (a fenced write, audited) and forgets
// its session, which has already ended.
func (s *Supervisor) authFailed(b *botRun) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(s.runCtx), 10*time.Second)
	defer cancel()
	err := s.shards.Fenced(ctx, b.lease, func(ctx context.Context, tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE bots SET status = 'auth_failed', updated_at = now()
			WHERE id = $1 AND shard = $2 AND status = 'active'`, b.id, b.lease.Shard)
		if err != nil || tag.RowsAffected() == 0 {
			return err // (the bots trigger announces the change)
		}
		return vault.Audit(ctx, tx, vault.AuditEntry{
			Actor: "runner:" + s.cfg.RunnerID, Action: "bot.auth_failed", BotID: b.id,
			Detail: map[string]any{"shard": b.lease.Shard, "epoch": b.lease.Epoch},
		})
	})
	if err != nil {
		s.log.Warn().Err(err).Str("bot_id", b.id).Msg("could not mark the bot auth_failed")
	} else {
		s.log.Warn().Str("bot_id", b.id).Msg("bot marked auth_failed after repeated 401s; fix with `agentrunner bots rotate-token`")
	}
	s.mu.Lock()
	stop := s.bots[b.id] == b
	if stop {
		s.detachLocked(b)
	}
	s.mu.Unlock()
	if stop {
		sctx, cancel := context.WithTimeout(ctx, s.cfg.BotStopTimeout)
		defer cancel()
		s.stopAll(sctx, []*botRun{b}, StatusAuthFailed)
	}
}
