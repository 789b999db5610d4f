package runner

// The admin API's views of the fleet, read from Postgres (bots, shard_leases,
// bot_cursors, bot_status, runners) and merged with this replica's in-memory
// session state for the bots it runs (docs/admin.md).

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// BotView is one bot on the status page and in /api/v1/bots. It never holds
// a token (nor agent_config, which may hold an agent's credentials).
type BotView struct {
	ID       string `json:"id"`
	Handle   string `json:"handle"`
	Status   string `json:"status"` // bots.status: active, paused, disabled, auth_failed
	Delivery string `json:"delivery"`
	Agent    string `json:"agent"`
	Shard    int    `json:"shard"`
	// State is the session state: the owner's (live, backoff, ...), "paused"
	// etc. for a bot that is not active, "unowned" when no replica holds the
	// shard, "unknown" when the owner has not reported yet.
	State      string     `json:"state"`
	StateCause string     `json:"state_cause,omitempty"`
	StateSince *time.Time `json:"state_since,omitempty"`
	Owner      string     `json:"owner,omitempty"` // runner holding the shard's live lease
	Epoch      int64      `json:"epoch"`
	// The last update acknowledged to Buko, and when it was written.
	LastUpdateID string     `json:"last_update_id,omitempty"`
	LastUpdateAt *time.Time `json:"last_update_at,omitempty"`
	// AckAgeSeconds is the time since the last ack was recorded: Buko's
	// newest update id is not known here, so a true ack lag is not derivable.
	AckAgeSeconds *float64   `json:"ack_age_seconds,omitempty"`
	LastError     string     `json:"last_error,omitempty"`
	LastErrorAt   *time.Time `json:"last_error_at,omitempty"`
	// Source says where State came from: "memory" (this replica runs it),
	// "db" (reported by the owner), "" (nothing reported).
	Source string `json:"source,omitempty"`
}

// BotDetail is /api/v1/bots/{id}: the bot, and the recent errors and
// reconnect causes this replica saw (EventsFrom; empty if it never ran it).
type BotDetail struct {
	BotView
	Events     []BotEvent `json:"events"`
	EventsFrom string     `json:"events_from,omitempty"`
}

// RunnerView is one replica.
type RunnerView struct {
	ID          string    `json:"id"`
	StartedAt   time.Time `json:"started_at"`
	HeartbeatAt time.Time `json:"heartbeat_at"`
	Live        bool      `json:"live"`
	Draining    bool      `json:"draining"`
	Version     string    `json:"version"`
	AdminAddr   string    `json:"admin_addr"`
	Shards      int       `json:"shards"`
	Self        bool      `json:"self"`
}

// ShardView is one shard lease.
type ShardView struct {
	Shard     int        `json:"shard"`
	Owner     string     `json:"owner,omitempty"`
	Epoch     int64      `json:"epoch"`
	Live      bool       `json:"live"`
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
	ClaimedAt *time.Time `json:"claimed_at,omitempty"`
	Bots      int        `json:"bots"`
}

func isNoRows(err error) bool { return errors.Is(err, pgx.ErrNoRows) }

func (a *Admin) ttl() time.Duration {
	if a.cfg.Supervisor != nil {
		return a.cfg.Supervisor.Shards().TTL()
	}
	return DefaultLeaseTTL
}

const botsViewSQL = `
SELECT b.id, b.handle, b.status, b.delivery, b.agent, b.shard,
	CASE WHEN l.expires_at > now() THEN l.owner END, coalesce(l.epoch, 0),
	c.acked_update_id, c.updated_at, extract(epoch FROM now() - c.updated_at)::float8,
	s.state, s.cause, s.state_since, s.last_error, s.last_error_at, s.owner, s.epoch
FROM bots b
LEFT JOIN shard_leases l ON l.shard = b.shard
LEFT JOIN bot_cursors c ON c.bot_id = b.id
LEFT JOIN bot_status s ON s.bot_id = b.id
WHERE $1 = '' OR b.id = $1
ORDER BY lower(b.handle)`

// bots reads every bot (or the one with id only) and merges in-memory state.
func (a *Admin) bots(ctx context.Context, only string) ([]BotView, error) {
	rows, err := a.cfg.Pool.Query(ctx, botsViewSQL, only)
	if err != nil {
		return nil, fmt.Errorf("admin: read bots: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (BotView, error) {
		var (
			v                         BotView
			owner, upd, st, cause, le *string
			sOwner                    *string
			sEpoch                    *int64
			updAt, since, leAt        *time.Time
			age                       *float64
		)
		err := r.Scan(&v.ID, &v.Handle, &v.Status, &v.Delivery, &v.Agent, &v.Shard, &owner, &v.Epoch,
			&upd, &updAt, &age, &st, &cause, &since, &le, &leAt, &sOwner, &sEpoch)
		if err != nil {
			return v, err
		}
		v.LastUpdateAt, v.AckAgeSeconds = updAt, age
		if upd != nil {
			v.LastUpdateID = *upd
		}
		if owner != nil {
			v.Owner = *owner
		}
		if le != nil {
			v.LastError, v.LastErrorAt = *le, leAt
		}
		switch {
		case v.Status != StatusActive:
			v.State = v.Status
		case v.Owner == "":
			v.State = "unowned"
		case st != nil && sOwner != nil && *sOwner == v.Owner && sEpoch != nil && *sEpoch == v.Epoch:
			v.State, v.StateSince, v.Source = *st, since, "db"
			if cause != nil {
				v.StateCause = *cause
			}
		default:
			v.State = "unknown"
		}
		return v, nil
	})
	if err != nil {
		return nil, fmt.Errorf("admin: read bots: %w", err)
	}
	if sup := a.cfg.Supervisor; sup != nil {
		for i := range out {
			v := &out[i]
			if v.Status != StatusActive || v.Owner != a.cfg.RunnerID {
				continue
			}
			if st, ok := sup.BotStatus(v.ID); ok && st.Epoch == v.Epoch {
				since := st.Since
				v.State, v.StateCause, v.StateSince, v.Source = st.State, st.Cause, &since, "memory"
				if st.LastErrorAt != nil {
					v.LastError, v.LastErrorAt = st.LastError, st.LastErrorAt
				}
			}
		}
	}
	return out, nil
}

// filterBots keeps bots whose id or handle contains q (any case) and whose
// state or status equals state ("" keeps all).
func filterBots(bots []BotView, q, state string) []BotView {
	q, state = strings.ToLower(strings.TrimSpace(q)), strings.ToLower(strings.TrimSpace(state))
	if q == "" && state == "" {
		return bots
	}
	return slices.DeleteFunc(slices.Clone(bots), func(b BotView) bool {
		if q != "" && !strings.Contains(strings.ToLower(b.ID), q) && !strings.Contains(strings.ToLower(b.Handle), q) {
			return true
		}
		return state != "" && b.State != state && b.Status != state
	})
}

func (a *Admin) runners(ctx context.Context) ([]RunnerView, error) {
	rows, err := a.cfg.Pool.Query(ctx, `
		SELECT r.id, r.started_at, r.heartbeat_at, r.heartbeat_at + $1 * interval '1 millisecond' > now(),
			r.draining, r.version, r.admin_addr,
			(SELECT count(*) FROM shard_leases l WHERE l.owner = r.id AND l.expires_at > now())
		FROM runners r ORDER BY r.id`, a.ttl().Milliseconds())
	if err != nil {
		return nil, fmt.Errorf("admin: read runners: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (RunnerView, error) {
		var v RunnerView
		err := r.Scan(&v.ID, &v.StartedAt, &v.HeartbeatAt, &v.Live, &v.Draining, &v.Version, &v.AdminAddr, &v.Shards)
		v.Self = v.ID == a.cfg.RunnerID
		return v, err
	})
	if err != nil {
		return nil, fmt.Errorf("admin: read runners: %w", err)
	}
	return out, nil
}

func (a *Admin) shards(ctx context.Context) ([]ShardView, error) {
	rows, err := a.cfg.Pool.Query(ctx, `
		SELECT l.shard, l.owner, l.epoch, l.owner IS NOT NULL AND l.expires_at > now(),
			CASE WHEN l.expires_at > '-infinity' THEN l.expires_at END, l.claimed_at,
			(SELECT count(*) FROM bots b WHERE b.shard = l.shard)
		FROM shard_leases l ORDER BY l.shard`)
	if err != nil {
		return nil, fmt.Errorf("admin: read shards: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (ShardView, error) {
		var v ShardView
		var owner *string
		err := r.Scan(&v.Shard, &owner, &v.Epoch, &v.Live, &v.ExpiresAt, &v.ClaimedAt, &v.Bots)
		if owner != nil {
			v.Owner = *owner
		}
		return v, err
	})
	if err != nil {
		return nil, fmt.Errorf("admin: read shards: %w", err)
	}
	return out, nil
}
