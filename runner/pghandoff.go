package runner

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/jackc/pgx/v5/pgxpool"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/permanent"
)

// PGHandoff is a sessions.Handoff that makes each update durable as one row
// of the handoffs table (migration 00002), keyed by (bot, update id): a
// redelivered update finds its row and only bumps attempts, so every update is
// held once and only once. It stands in for the Temporal handoff in dev and
// in tests (`agentrunner serve --handoff postgres`).
type PGHandoff struct {
	pool     *pgxpool.Pool
	runnerID string
	metrics  *Metrics
}

// NewPGHandoff returns a Postgres-backed handoff; runnerID is recorded on
// each row for diagnosis.
func NewPGHandoff(pool *pgxpool.Pool, runnerID string, m *Metrics) *PGHandoff {
	return &PGHandoff{pool: pool, runnerID: runnerID, metrics: m}
}

// Handoff stores u for botID; it returns nil once the row is committed.
// An update that cannot be stored whatever the retries (an invalid id) is a
// permanent error (package permanent).
func (h *PGHandoff) Handoff(ctx context.Context, botID string, u buko.Update) error {
	if botID == "" || !u.UpdateID.Valid() {
		h.metrics.handedOff("error")
		return permanent.Mark(fmt.Errorf("runner: handoff: bot %q update %.40q: invalid id", botID, string(u.UpdateID)))
	}
	payload, err := json.Marshal(u)
	if err != nil {
		h.metrics.handedOff("error")
		return permanent.Mark(fmt.Errorf("runner: handoff: encode update %s: %w", u.UpdateID, err))
	}
	var inserted bool
	err = h.pool.QueryRow(ctx, `INSERT INTO handoffs (bot_id, update_id, chat_id, payload, runner_id)
		VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (bot_id, update_id) DO UPDATE SET attempts = handoffs.attempts + 1
		RETURNING xmax = 0`, botID, string(u.UpdateID), u.ChatID(), payload, h.runnerID).Scan(&inserted)
	if err != nil {
		h.metrics.handedOff("error")
		return fmt.Errorf("runner: handoff: bot %s update %s: %w", botID, u.UpdateID, err)
	}
	if inserted {
		h.metrics.handedOff("new")
	} else {
		h.metrics.handedOff("duplicate")
	}
	return nil
}
