package runner

// Per-bot session state as this replica sees it, for the admin API and the
// status page (docs/admin.md): every session's OnState transitions are
// recorded here with a small bounded ring of recent errors and reconnect
// causes. Rows that changed are persisted to bot_status by the shard's owner
// through Shards.Fenced, at the cursor flush, so any replica can show the
// whole fleet.

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"buko.app/agentrunner/sessions"
)

// botEventRing is how many recent errors and reconnect causes are kept per bot.
const botEventRing = 20

// BotEvent is one recent error or reconnect cause of a bot.
type BotEvent struct {
	At    time.Time `json:"at"`
	Kind  string    `json:"kind"` // "error" or "reconnect"
	State string    `json:"state"`
	Cause string    `json:"cause"`
}

// BotLiveStatus is what this replica knows of one bot's session.
type BotLiveStatus struct {
	BotID       string     `json:"bot_id"`
	State       string     `json:"state"`
	Cause       string     `json:"cause"`
	Since       time.Time  `json:"since"`
	Shard       int        `json:"shard"`
	Epoch       int64      `json:"epoch"`
	LastError   string     `json:"last_error,omitempty"`
	LastErrorAt *time.Time `json:"last_error_at,omitempty"`
	Events      []BotEvent `json:"events"` // oldest first
}

type botStatus struct {
	BotLiveStatus
	dirty bool
	lease Lease
}

// statusBook holds the BotLiveStatus of the bots this process has run.
type statusBook struct {
	mu   sync.Mutex
	bots map[string]*botStatus
}

func newStatusBook() *statusBook { return &statusBook{bots: map[string]*botStatus{}} }

// record notes one state change of bot id's session under lease l.
func (sb *statusBook) record(id string, l Lease, st sessions.State, cause string) {
	now := time.Now()
	sb.mu.Lock()
	defer sb.mu.Unlock()
	b := sb.bots[id]
	if b == nil {
		b = &botStatus{BotLiveStatus: BotLiveStatus{BotID: id}}
		sb.bots[id] = b
	}
	b.State, b.Cause, b.Since, b.Shard, b.Epoch, b.lease = st.String(), cause, now, l.Shard, l.Epoch, l
	b.dirty = true
	kind := ""
	switch st {
	case sessions.StateBackoff, sessions.StateAuthFailed:
		kind = "error"
		b.LastError = cause
		at := now
		b.LastErrorAt = &at
	case sessions.StateConnecting:
		if cause != "start" {
			kind = "reconnect"
		}
	}
	if kind != "" {
		b.Events = append(b.Events, BotEvent{At: now, Kind: kind, State: st.String(), Cause: cause})
		if len(b.Events) > botEventRing {
			b.Events = slices.Delete(b.Events, 0, len(b.Events)-botEventRing)
		}
	}
}

// get returns a copy of bot id's status.
func (sb *statusBook) get(id string) (BotLiveStatus, bool) {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	b := sb.bots[id]
	if b == nil {
		return BotLiveStatus{}, false
	}
	out := b.BotLiveStatus
	out.Events = slices.Clone(b.Events)
	return out, true
}

// takeDirty returns the changed statuses grouped by lease and marks them clean.
func (sb *statusBook) takeDirty() map[Lease][]BotLiveStatus {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	out := map[Lease][]BotLiveStatus{}
	for _, b := range sb.bots {
		if b.dirty {
			b.dirty = false
			out[b.lease] = append(out[b.lease], b.BotLiveStatus)
		}
	}
	return out
}

// redirty marks statuses dirty again after a failed write (unless newer).
func (sb *statusBook) redirty(st []BotLiveStatus) {
	sb.mu.Lock()
	defer sb.mu.Unlock()
	for _, s := range st {
		if b := sb.bots[s.BotID]; b != nil && b.Since.Equal(s.Since) {
			b.dirty = true
		}
	}
}

const botStatusSQL = `
INSERT INTO bot_status AS s (bot_id, state, cause, state_since, last_error, last_error_at, shard, owner, epoch, updated_at)
SELECT u.bot_id, u.state, u.cause, u.since, u.last_error, u.last_error_at, $7, $8, $9, now()
FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::timestamptz[])
	AS u(bot_id, state, cause, since, last_error, last_error_at)
JOIN bots b ON b.id = u.bot_id
ON CONFLICT (bot_id) DO UPDATE SET state = excluded.state, cause = excluded.cause,
	state_since = excluded.state_since,
	last_error = CASE WHEN excluded.last_error <> '' THEN excluded.last_error ELSE s.last_error END,
	last_error_at = coalesce(excluded.last_error_at, s.last_error_at),
	shard = excluded.shard, owner = excluded.owner, epoch = excluded.epoch, updated_at = now()`

// flushStatus writes the changed bot statuses to bot_status, one fenced
// transaction per lease. Statuses of a lease no longer held are dropped.
func (s *Supervisor) flushStatus(ctx context.Context) {
	for l, sts := range s.status.takeDirty() {
		n := len(sts)
		ids, states, causes, errs := make([]string, n), make([]string, n), make([]string, n), make([]string, n)
		since, errAt := make([]time.Time, n), make([]*time.Time, n)
		for i, st := range sts {
			ids[i], states[i], causes[i], errs[i], since[i], errAt[i] = st.BotID, st.State, st.Cause, st.LastError, st.Since, st.LastErrorAt
		}
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		err := s.shards.Fenced(wctx, l, func(ctx context.Context, tx pgx.Tx) error {
			_, err := tx.Exec(ctx, botStatusSQL, ids, states, causes, since, errs, errAt, l.Shard, s.cfg.RunnerID, l.Epoch)
			return err
		})
		cancel()
		switch {
		case err == nil, errors.Is(err, ErrFenced):
		default:
			s.log.Debug().Err(err).Int("shard", l.Shard).Msg("bot status write failed; retrying later")
			s.status.redirty(sts)
		}
	}
}

// BotStatus is this replica's in-memory view of bot id's session, if it ran
// one since its shard was claimed.
func (s *Supervisor) BotStatus(id string) (BotLiveStatus, bool) { return s.status.get(id) }
