package runner

// The dead-letter store: the Postgres side of sessions.DeadLetterSink. A
// session hands it an update it could not hand off (undecodable, or refused
// for good) and acks past it only once the row exists. The raw bytes are
// sealed with the payload codec (the keys of Temporal payloads) and bound to
// their bot and update id; replay (agentrunner dead-letters replay) opens
// them, decodes them with the current decoder and hands them off again.
// See docs/sessions.md and docs/admin.md.

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	commonpb "go.temporal.io/api/common/v1"
	"google.golang.org/protobuf/proto"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/sessions"
	"buko.app/agentrunner/workflows/codec"
)

// Metadata of the sealed dead-letter payload (inside the encryption, so
// authenticated with it).
const (
	dlEncoding      = "binary/buko-update"
	dlMetaBot       = "dead-letter-bot-id"
	dlMetaUpdate    = "dead-letter-update-id"
	maxReplayErrLen = 300
)

// ErrDeadLetterNotFound: no dead letter with that id (and bot).
var ErrDeadLetterNotFound = errors.New("runner: no such dead letter")

// DeadLetterStore keeps dead letters in Postgres. It implements
// sessions.DeadLetterSink. Safe for concurrent use.
type DeadLetterStore struct {
	pool  *pgxpool.Pool
	codec *codec.Codec
}

var _ sessions.DeadLetterSink = (*DeadLetterStore)(nil)

// NewDeadLetterStore returns a store on pool sealing payloads with keys (the
// payload key file's keyring). keys may be nil for a store that only lists
// and counts (DeadLetter and Replay then fail).
func NewDeadLetterStore(pool *pgxpool.Pool, keys codec.KeyProvider) *DeadLetterStore {
	s := &DeadLetterStore{pool: pool}
	if keys != nil {
		s.codec = codec.New(keys)
	}
	return s
}

// DeadLetter stores d for botID. A second offer of the same (botID,
// UpdateID) is a no-op. It returns nil only once the row is committed.
func (s *DeadLetterStore) DeadLetter(ctx context.Context, botID string, d sessions.DeadLetter) error {
	if s.codec == nil {
		return errors.New("runner: dead letters: no payload keys configured")
	}
	sealed, err := s.seal(botID, d.UpdateID, d.Payload)
	if err != nil {
		return err
	}
	recv := d.ReceivedAt
	if recv.IsZero() {
		recv = time.Now()
	}
	_, err = s.pool.Exec(ctx, `
		INSERT INTO dead_letters (bot_id, update_id, chat_id, reason, error, payload, payload_bytes, received_at)
		VALUES ($1, NULLIF($2, ''), NULLIF($3, ''), $4, $5, $6, $7, $8)
		ON CONFLICT (bot_id, update_id) WHERE update_id IS NOT NULL DO NOTHING`,
		botID, string(d.UpdateID), buko.SanitizeText(d.ChatID, 200), buko.SanitizeText(d.Reason, 40), buko.SanitizeText(d.Error, maxReplayErrLen),
		sealed, len(d.Payload), recv)
	if err != nil {
		return fmt.Errorf("runner: store dead letter: %w", err)
	}
	return nil
}

// seal encodes raw as a payload (bound to its bot and update id by metadata
// inside the encryption) with the codec and returns the sealed payload's bytes.
func (s *DeadLetterStore) seal(botID string, id buko.UpdateID, raw []byte) ([]byte, error) {
	p := &commonpb.Payload{
		Metadata: map[string][]byte{
			codec.MetadataEncoding: []byte(dlEncoding),
			dlMetaBot:              []byte(botID),
			dlMetaUpdate:           []byte(id),
		},
		Data: raw,
	}
	out, err := s.codec.Encode([]*commonpb.Payload{p})
	if err != nil {
		return nil, fmt.Errorf("runner: seal dead letter: %w", err)
	}
	b, err := proto.Marshal(out[0])
	if err != nil {
		return nil, fmt.Errorf("runner: seal dead letter: %w", err)
	}
	return b, nil
}

// open reverses seal and checks the binding to botID and id.
func (s *DeadLetterStore) open(botID string, id buko.UpdateID, sealed []byte) ([]byte, error) {
	if s.codec == nil {
		return nil, errors.New("runner: dead letters: no payload keys configured")
	}
	var p commonpb.Payload
	if err := proto.Unmarshal(sealed, &p); err != nil {
		return nil, fmt.Errorf("runner: dead letter payload: %w", err)
	}
	if string(p.GetMetadata()[codec.MetadataEncoding]) != codec.EncodingEncrypted {
		return nil, errors.New("runner: dead letter payload is not encrypted; refusing it")
	}
	out, err := s.codec.Decode([]*commonpb.Payload{&p})
	if err != nil {
		return nil, fmt.Errorf("runner: open dead letter: %w", err)
	}
	md := out[0].GetMetadata()
	if string(md[codec.MetadataEncoding]) != dlEncoding || string(md[dlMetaBot]) != botID || string(md[dlMetaUpdate]) != string(id) {
		return nil, errors.New("runner: dead letter payload belongs to another bot or update; refusing it")
	}
	return out[0].GetData(), nil
}

// DeadLetterView is a dead letter as the admin API and the CLI list it:
// never its payload.
type DeadLetterView struct {
	ID           int64      `json:"id"`
	BotID        string     `json:"bot_id"`
	UpdateID     *string    `json:"update_id"`
	ChatID       *string    `json:"chat_id"`
	Reason       string     `json:"reason"`
	Error        string     `json:"error"`
	PayloadBytes int        `json:"payload_bytes"`
	ReceivedAt   time.Time  `json:"received_at"`
	CreatedAt    time.Time  `json:"created_at"`
	ReplayedAt   *time.Time `json:"replayed_at"`
	ReplayError  *string    `json:"replay_error"`
}

// DeadLetterFilter selects dead letters. Zero fields select everything.
type DeadLetterFilter struct {
	BotID   string
	ID      int64
	Pending bool // only those not replayed yet
	Limit   int  // 0: 1000
}

// List returns the dead letters f selects, oldest first.
func (s *DeadLetterStore) List(ctx context.Context, f DeadLetterFilter) ([]DeadLetterView, error) {
	limit := f.Limit
	if limit <= 0 {
		limit = 1000
	}
	rows, err := s.pool.Query(ctx, `
		SELECT id, bot_id, update_id, chat_id, reason, error, payload_bytes, received_at, created_at, replayed_at, replay_error
		FROM dead_letters
		WHERE ($1 = '' OR bot_id = $1) AND ($2 = 0 OR id = $2) AND (NOT $3 OR replayed_at IS NULL)
		ORDER BY id LIMIT $4`, f.BotID, f.ID, f.Pending, limit)
	if err != nil {
		return nil, fmt.Errorf("runner: list dead letters: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (DeadLetterView, error) {
		var v DeadLetterView
		err := r.Scan(&v.ID, &v.BotID, &v.UpdateID, &v.ChatID, &v.Reason, &v.Error, &v.PayloadBytes,
			&v.ReceivedAt, &v.CreatedAt, &v.ReplayedAt, &v.ReplayError)
		return v, err
	})
	if err != nil {
		return nil, fmt.Errorf("runner: list dead letters: %w", err)
	}
	if out == nil {
		out = []DeadLetterView{}
	}
	return out, nil
}

// PendingByBot counts the dead letters not replayed yet, per bot.
func (s *DeadLetterStore) PendingByBot(ctx context.Context) (map[string]int, error) {
	rows, err := s.pool.Query(ctx, `SELECT bot_id, count(*) FROM dead_letters WHERE replayed_at IS NULL GROUP BY bot_id`)
	if err != nil {
		return nil, fmt.Errorf("runner: count dead letters: %w", err)
	}
	out := map[string]int{}
	for rows.Next() {
		var id string
		var n int
		if err := rows.Scan(&id, &n); err != nil {
			rows.Close()
			return nil, fmt.Errorf("runner: count dead letters: %w", err)
		}
		out[id] = n
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("runner: count dead letters: %w", err)
	}
	return out, nil
}

// ReplayOutcome is what replaying one dead letter did.
type ReplayOutcome struct {
	ID       int64  `json:"id"`
	BotID    string `json:"bot_id"`
	UpdateID string `json:"update_id,omitempty"`
	Replayed bool   `json:"replayed"`
	Error    string `json:"error,omitempty"`
}

// Replay opens the dead letter id, decodes it with the current decoder and
// hands it off through h. On success it is marked replayed; otherwise the
// reason is recorded in replay_error and the row stays pending. Handing off
// twice is harmless: the chat workflow drops an update_id it has seen. A
// dead letter replayed already is not handed off again (Replayed true).
// The returned error is for a failure to read or update the row; a replay
// that failed is an outcome, not an error.
func (s *DeadLetterStore) Replay(ctx context.Context, h sessions.Handoff, id int64) (ReplayOutcome, error) {
	var (
		botID    string
		updateID *string
		sealed   []byte
		replayed *time.Time
	)
	err := s.pool.QueryRow(ctx, `SELECT bot_id, update_id, payload, replayed_at FROM dead_letters WHERE id = $1`, id).
		Scan(&botID, &updateID, &sealed, &replayed)
	if errors.Is(err, pgx.ErrNoRows) {
		return ReplayOutcome{}, fmt.Errorf("%w: %d", ErrDeadLetterNotFound, id)
	}
	if err != nil {
		return ReplayOutcome{}, fmt.Errorf("runner: read dead letter %d: %w", id, err)
	}
	out := ReplayOutcome{ID: id, BotID: botID}
	var uid buko.UpdateID
	if updateID != nil {
		uid = buko.UpdateID(*updateID)
		out.UpdateID = *updateID
	}
	if replayed != nil {
		out.Replayed = true
		return out, nil
	}
	u, rerr := s.decode(botID, uid, sealed)
	if rerr == nil {
		out.UpdateID = string(u.UpdateID)
		rerr = h.Handoff(ctx, botID, u)
		if rerr != nil && ctx.Err() != nil {
			return out, fmt.Errorf("runner: replay dead letter %d: %w", id, ctx.Err())
		}
	}
	if rerr != nil {
		out.Error = buko.SanitizeText(rerr.Error(), maxReplayErrLen)
		if _, err := s.pool.Exec(ctx, `UPDATE dead_letters SET replay_error = $2 WHERE id = $1`, id, out.Error); err != nil {
			return out, fmt.Errorf("runner: record replay error of dead letter %d: %w", id, err)
		}
		return out, nil
	}
	if _, err := s.pool.Exec(ctx, `UPDATE dead_letters SET replayed_at = now(), replay_error = NULL WHERE id = $1`, id); err != nil {
		return out, fmt.Errorf("runner: mark dead letter %d replayed: %w", id, err)
	}
	out.Replayed = true
	return out, nil
}

// decode opens a payload and reads it as an update (a bare update, or a
// Gateway frame holding one) with the current decoder.
func (s *DeadLetterStore) decode(botID string, id buko.UpdateID, sealed []byte) (buko.Update, error) {
	raw, err := s.open(botID, id, sealed)
	if err != nil {
		return buko.Update{}, err
	}
	u, err := buko.DecodeUpdate(raw)
	if err != nil {
		f, ferr := buko.DecodeFrame(raw)
		if ferr != nil || f.Type != buko.FrameUpdate || f.Update == nil {
			return buko.Update{}, fmt.Errorf("still does not decode: %w", err)
		}
		u = *f.Update
	}
	if id != "" && u.UpdateID != id {
		return buko.Update{}, fmt.Errorf("decodes with update_id %s, not %s", u.UpdateID, id)
	}
	return u, nil
}
