package runner

// The durable per-chat dedupe watermark of the chat workflows: the highest
// update id each chat's workflow handled, in the chat_watermarks table
// (migrations/00005), so a redelivery after the workflow ended is dropped.

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/workflows"
)

// ChatMarks implements workflows.ChatMarks on the chat_watermarks table. It
// costs one query when a chat's workflow starts afresh and at most one when
// it ends for quiet time: nothing per update.
type ChatMarks struct {
	pool *pgxpool.Pool
}

var _ workflows.ChatMarks = (*ChatMarks)(nil)

// NewChatMarks reads and writes chat watermarks through pool.
func NewChatMarks(pool *pgxpool.Pool) *ChatMarks { return &ChatMarks{pool: pool} }

// LastHandled implements workflows.ChatMarks: "" when the chat has no watermark.
func (m *ChatMarks) LastHandled(ctx context.Context, botID, chatID string) (buko.UpdateID, error) {
	if m == nil || m.pool == nil {
		return "", errors.New("runner: chat marks have no database pool")
	}
	var id string
	err := m.pool.QueryRow(ctx, `SELECT last_update_id FROM chat_watermarks WHERE bot_id = $1 AND chat_id = $2`, botID, chatID).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read chat watermark of bot %s: %w", botID, err)
	}
	return buko.UpdateID(id), nil
}

// SaveHandled implements workflows.ChatMarks: it raises the watermark to id
// (update ids compare by length, then digit by digit) and never lowers it.
// A bot that is no longer in the bots table has nothing left to dedupe: the
// write is skipped.
func (m *ChatMarks) SaveHandled(ctx context.Context, botID, chatID string, id buko.UpdateID) error {
	if m == nil || m.pool == nil {
		return errors.New("runner: chat marks have no database pool")
	}
	if !id.Valid() {
		return fmt.Errorf("runner: chat watermark %q is not an update id", id)
	}
	_, err := m.pool.Exec(ctx, `
		INSERT INTO chat_watermarks (bot_id, chat_id, last_update_id) VALUES ($1, $2, $3)
		ON CONFLICT (bot_id, chat_id) DO UPDATE
		SET last_update_id = EXCLUDED.last_update_id, updated_at = now()
		WHERE length(chat_watermarks.last_update_id) < length(EXCLUDED.last_update_id)
		   OR (length(chat_watermarks.last_update_id) = length(EXCLUDED.last_update_id)
		       AND chat_watermarks.last_update_id COLLATE "C" < EXCLUDED.last_update_id COLLATE "C")`,
		botID, chatID, string(id))
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "23503" { // foreign_key_violation: the bot was removed
		return nil
	}
	if err != nil {
		return fmt.Errorf("save chat watermark of bot %s: %w", botID, err)
	}
	return nil
}
