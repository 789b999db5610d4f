package runner

// The managed-bot registry: the bots table and its secret_vault rows as the
// operator changes them (agentrunner bots …). Every change is one
// transaction and audited; the triggers of migration 00002 announce it on
// NOTIFY channel agentrunner_bots.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/vault"
)

// Bot statuses (bots.status).
const (
	StatusActive     = "active"
	StatusPaused     = "paused"
	StatusDisabled   = "disabled"
	StatusAuthFailed = "auth_failed"
)

// Delivery modes (bots.delivery).
const (
	DeliveryGateway = "gateway"
	DeliveryPolling = "polling"
)

// Agent kinds (bots.agent).
const (
	AgentEcho   = "echo"
	AgentHTTP   = "http"
	AgentOpenAI = "openai"
)

// Audit actions written by the registry.
const (
	ActionBotAdd      = "bot.add"
	ActionBotPause    = "bot.pause"
	ActionBotResume   = "bot.resume"
	ActionBotRemove   = "bot.remove"
	ActionRotateToken = "bot.rotate-token"
)

// Registry errors; errors.Is works on everything the registry returns.
var (
	ErrBotNotFound     = errors.New("no such managed bot")
	ErrTokenRejected   = errors.New("token rejected by Buko")
	ErrNotOfficial     = errors.New("not an official bot")
	ErrHandleMismatch  = errors.New("handle does not match the token's bot")
	ErrAlreadyManaged  = errors.New("already managed")
	ErrBotMismatch     = errors.New("token belongs to another bot")
	ErrInvalidArgument = errors.New("invalid argument")
)

// Bot is one managed bot as the registry shows it (never its token).
type Bot struct {
	ID          string          `json:"id"`
	Handle      string          `json:"handle"`
	DisplayName string          `json:"display_name"`
	Status      string          `json:"status"`
	Delivery    string          `json:"delivery"`
	Agent       string          `json:"agent"`
	AgentConfig json.RawMessage `json:"agent_config"`
	QuotaTier   string          `json:"quota_tier"`
	Shard       int             `json:"shard"`
	CreatedAt   time.Time       `json:"created_at"`
	UpdatedAt   time.Time       `json:"updated_at"`
	// The secret_vault row's metadata.
	KeyRef         string     `json:"key_ref"`
	KeyVersion     int        `json:"key_version"`
	TokenStoredAt  time.Time  `json:"token_stored_at"`
	TokenRotatedAt *time.Time `json:"token_rotated_at,omitempty"`
}

// Verifier asks Buko who a token belongs to; *buko.Client implements it.
type Verifier interface {
	GetMe(ctx context.Context, cred buko.Credential) (*buko.Me, error)
}

// RegistryConfig wires a Registry.
type RegistryConfig struct {
	Pool   *pgxpool.Pool
	Store  *vault.Store // seals tokens with the configured cipher
	Buko   Verifier
	Logger zerolog.Logger
}

// Registry manages the bots table, the bots' secret_vault rows and the audit trail.
type Registry struct {
	pool  *pgxpool.Pool
	store *vault.Store
	buko  Verifier
	log   zerolog.Logger
}

// NewRegistry returns a registry.
func NewRegistry(cfg RegistryConfig) *Registry {
	return &Registry{pool: cfg.Pool, store: cfg.Store, buko: cfg.Buko, log: cfg.Logger}
}

// AddRequest describes a bot to start managing.
type AddRequest struct {
	Actor       string          // who, for audit_log
	Handle      string          // as the operator knows it; a leading @ is ignored
	Agent       string          // AgentEcho (default), AgentHTTP, AgentOpenAI
	AgentConfig json.RawMessage // a JSON object, default {}
	Delivery    string          // DeliveryGateway (default) or DeliveryPolling
	Token       vault.Token
}

// NormalizeHandle strips a leading @ and surrounding space.
func NormalizeHandle(h string) string { return strings.TrimPrefix(strings.TrimSpace(h), "@") }

func (r AddRequest) check() (AddRequest, error) {
	r.Handle = NormalizeHandle(r.Handle)
	if r.Handle == "" {
		return r, fmt.Errorf("%w: a handle is required", ErrInvalidArgument)
	}
	if r.Agent == "" {
		r.Agent = AgentEcho
	}
	switch r.Agent {
	case AgentEcho, AgentHTTP, AgentOpenAI:
	default:
		return r, fmt.Errorf("%w: agent %q: want %s, %s or %s", ErrInvalidArgument, r.Agent, AgentEcho, AgentHTTP, AgentOpenAI)
	}
	if r.Delivery == "" {
		r.Delivery = DeliveryGateway
	}
	if r.Delivery != DeliveryGateway && r.Delivery != DeliveryPolling {
		return r, fmt.Errorf("%w: delivery %q: want %s or %s", ErrInvalidArgument, r.Delivery, DeliveryGateway, DeliveryPolling)
	}
	cfg, err := CheckAgentConfig(r.AgentConfig)
	if err != nil {
		return r, err
	}
	r.AgentConfig = cfg
	if r.Token.IsZero() {
		return r, fmt.Errorf("%w: no token", ErrInvalidArgument)
	}
	return r, nil
}

// CheckAgentConfig returns cfg compacted, or {} when empty; anything but a
// JSON object is an error.
func CheckAgentConfig(cfg json.RawMessage) (json.RawMessage, error) {
	if len(bytes.TrimSpace(cfg)) == 0 {
		return json.RawMessage(`{}`), nil
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(cfg, &obj); err != nil || obj == nil {
		return nil, fmt.Errorf("%w: agent config must be a JSON object", ErrInvalidArgument)
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, cfg); err != nil {
		return nil, fmt.Errorf("%w: agent config: %v", ErrInvalidArgument, err)
	}
	return buf.Bytes(), nil
}

// verify asks Buko about tok and checks it is an official bot.
func (r *Registry) verify(ctx context.Context, tok vault.Token) (*buko.Me, error) {
	me, err := r.buko.GetMe(ctx, tok)
	if err != nil {
		if buko.IsCode(err, buko.CodeUnauthorized) {
			return nil, fmt.Errorf("%w (getMe: 401 UNAUTHORIZED): the token is wrong, revoked or rotated", ErrTokenRejected)
		}
		return nil, fmt.Errorf("cannot verify the token with Buko (getMe): %w", err)
	}
	if me.ID == "" {
		return nil, fmt.Errorf("cannot verify the token with Buko: getMe returned no bot id")
	}
	if !me.Official {
		return nil, fmt.Errorf("%w: @%s (%s) is not an official Buko bot; only official bots can be managed agents", ErrNotOfficial, me.Handle, me.ID)
	}
	return me, nil
}

// Add verifies the token with Buko (getMe), refuses a rejected token, a bot
// that is not official, a handle that is not the token's, or a bot or handle
// already managed, then stores the bot, its sealed token and an audit row in
// one transaction.
func (r *Registry) Add(ctx context.Context, req AddRequest) (Bot, error) {
	req, err := req.check()
	if err != nil {
		return Bot{}, err
	}
	me, err := r.verify(ctx, req.Token)
	if err != nil {
		return Bot{}, err
	}
	if !strings.EqualFold(me.Handle, req.Handle) {
		return Bot{}, fmt.Errorf("%w: you said @%s but the token is @%s's (%s)", ErrHandleMismatch, req.Handle, me.Handle, me.ID)
	}
	if b, err := r.find(ctx, r.pool, me.ID, me.Handle); err == nil {
		if b.ID == me.ID {
			return Bot{}, fmt.Errorf("%w: bot %s (@%s) is already managed", ErrAlreadyManaged, b.ID, b.Handle)
		}
		return Bot{}, fmt.Errorf("%w: handle @%s is already managed as bot %s", ErrAlreadyManaged, b.Handle, b.ID)
	} else if !errors.Is(err, ErrBotNotFound) {
		return Bot{}, err
	}
	sealed, err := r.store.Seal(ctx, me.ID, req.Token)
	if err != nil {
		return Bot{}, fmt.Errorf("seal the token: %w", err)
	}
	err = pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		var n int
		if err := tx.QueryRow(ctx, `SELECT shard_count FROM cluster_settings`).Scan(&n); err != nil {
			return fmt.Errorf("read shard count: %w", schemaHint(err))
		}
		_, err := tx.Exec(ctx, `INSERT INTO bots (id, handle, display_name, delivery, agent, agent_config, quota_tier, shard)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
			me.ID, me.Handle, me.DisplayName, req.Delivery, req.Agent, string(req.AgentConfig), me.QuotaTier, ShardOf(me.ID, n))
		if err != nil {
			var pe *pgconn.PgError
			if errors.As(err, &pe) && pe.Code == "23505" {
				return fmt.Errorf("%w: bot %s or handle @%s (added concurrently)", ErrAlreadyManaged, me.ID, me.Handle)
			}
			return fmt.Errorf("insert bot: %w", schemaHint(err))
		}
		if err := r.store.Insert(ctx, tx, sealed); err != nil {
			return err
		}
		return r.audit(ctx, tx, req.Actor, ActionBotAdd, me.ID, map[string]any{
			"handle": me.Handle, "agent": req.Agent, "delivery": req.Delivery, "key_ref": r.store.Cipher().KeyRef(),
		})
	})
	if err != nil {
		return Bot{}, err
	}
	r.log.Info().Str("bot_id", me.ID).Str("handle", me.Handle).Str("actor", req.Actor).Msg("bot added")
	return r.Get(ctx, me.ID)
}

// RotateToken replaces a bot's token: Buko must say the new token is the same
// bot (getMe); the token is sealed again, rotated_at stamped, a bot in
// auth_failed becomes active, and the change is audited.
func (r *Registry) RotateToken(ctx context.Context, actor, ref string, tok vault.Token) (Bot, error) {
	b, err := r.Get(ctx, ref)
	if err != nil {
		return Bot{}, err
	}
	if tok.IsZero() {
		return Bot{}, fmt.Errorf("%w: no token", ErrInvalidArgument)
	}
	me, err := r.verify(ctx, tok)
	if err != nil {
		return Bot{}, err
	}
	if me.ID != b.ID {
		return Bot{}, fmt.Errorf("%w: the new token is for %s (@%s), not %s (@%s)", ErrBotMismatch, me.ID, me.Handle, b.ID, b.Handle)
	}
	sealed, err := r.store.Seal(ctx, b.ID, tok)
	if err != nil {
		return Bot{}, fmt.Errorf("seal the token: %w", err)
	}
	err = pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE bots SET updated_at = now(), display_name = $2, quota_tier = $3,
			status = CASE WHEN status = 'auth_failed' THEN 'active' ELSE status END WHERE id = $1`,
			b.ID, me.DisplayName, me.QuotaTier)
		if err != nil {
			return fmt.Errorf("update bot: %w", err)
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("%w: %s (removed meanwhile)", ErrBotNotFound, b.ID)
		}
		if err := r.store.Replace(ctx, tx, sealed); err != nil {
			if !errors.Is(err, vault.ErrNotFound) {
				return err
			}
			if err := r.store.Insert(ctx, tx, sealed); err != nil {
				return err
			}
		}
		return r.audit(ctx, tx, actor, ActionRotateToken, b.ID, map[string]any{
			"handle": b.Handle, "key_ref": r.store.Cipher().KeyRef(), "previous_status": b.Status,
		})
	})
	if err != nil {
		return Bot{}, err
	}
	r.log.Info().Str("bot_id", b.ID).Str("actor", actor).Msg("bot token rotated")
	return r.Get(ctx, b.ID)
}

// Pause stops the bot being run (its session ends at the next reconcile).
// changed is false when it was already paused.
func (r *Registry) Pause(ctx context.Context, actor, ref string) (b Bot, changed bool, err error) {
	return r.setStatus(ctx, actor, ref, StatusPaused, ActionBotPause)
}

// Resume makes a paused, disabled or auth_failed bot active again.
func (r *Registry) Resume(ctx context.Context, actor, ref string) (b Bot, changed bool, err error) {
	return r.setStatus(ctx, actor, ref, StatusActive, ActionBotResume)
}

func (r *Registry) setStatus(ctx context.Context, actor, ref, status, action string) (Bot, bool, error) {
	b, err := r.Get(ctx, ref)
	if err != nil {
		return Bot{}, false, err
	}
	changed := false
	err = pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		var prev string
		err := tx.QueryRow(ctx, `SELECT status FROM bots WHERE id = $1 FOR UPDATE`, b.ID).Scan(&prev)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("%w: %s", ErrBotNotFound, b.ID)
		}
		if err != nil {
			return fmt.Errorf("read bot: %w", err)
		}
		if prev == status {
			return nil
		}
		if _, err := tx.Exec(ctx, `UPDATE bots SET status = $2, updated_at = now() WHERE id = $1`, b.ID, status); err != nil {
			return fmt.Errorf("update bot: %w", err)
		}
		changed = true
		return r.audit(ctx, tx, actor, action, b.ID, map[string]any{"handle": b.Handle, "from": prev, "to": status})
	})
	if err != nil {
		return Bot{}, false, err
	}
	if changed {
		r.log.Info().Str("bot_id", b.ID).Str("status", status).Str("actor", actor).Msg("bot status changed")
	}
	b, err = r.Get(ctx, b.ID)
	return b, changed, err
}

// Remove deletes the bot and (by cascade) its secret_vault row; the audit
// trail stays.
func (r *Registry) Remove(ctx context.Context, actor, ref string) (Bot, error) {
	b, err := r.Get(ctx, ref)
	if err != nil {
		return Bot{}, err
	}
	err = pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `DELETE FROM bots WHERE id = $1`, b.ID)
		if err != nil {
			return fmt.Errorf("delete bot: %w", err)
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("%w: %s", ErrBotNotFound, b.ID)
		}
		return r.audit(ctx, tx, actor, ActionBotRemove, b.ID, map[string]any{"handle": b.Handle})
	})
	if err != nil {
		return Bot{}, err
	}
	r.log.Info().Str("bot_id", b.ID).Str("actor", actor).Msg("bot removed")
	return b, nil
}

func (r *Registry) audit(ctx context.Context, tx pgx.Tx, actor, action, botID string, detail map[string]any) error {
	return vault.Audit(ctx, tx, vault.AuditEntry{Actor: actor, Action: action, BotID: botID, Detail: detail})
}

const botColumns = `b.id, b.handle, b.display_name, b.status, b.delivery, b.agent, b.agent_config, b.quota_tier,
	b.shard, b.created_at, b.updated_at, coalesce(s.key_ref, ''),
	coalesce(substring(split_part(s.ciphertext, ':', 2) FROM 2)::int, 0),
	coalesce(s.created_at, 'epoch'::timestamptz), s.rotated_at`

func scanBot(row pgx.Row) (Bot, error) {
	var (
		b   Bot
		cfg []byte
	)
	err := row.Scan(&b.ID, &b.Handle, &b.DisplayName, &b.Status, &b.Delivery, &b.Agent, &cfg, &b.QuotaTier,
		&b.Shard, &b.CreatedAt, &b.UpdatedAt, &b.KeyRef, &b.KeyVersion, &b.TokenStoredAt, &b.TokenRotatedAt)
	b.AgentConfig = cfg
	return b, err
}

// List returns every managed bot, by handle.
func (r *Registry) List(ctx context.Context) ([]Bot, error) {
	rows, err := r.pool.Query(ctx, `SELECT `+botColumns+` FROM bots b LEFT JOIN secret_vault s ON s.bot_id = b.id ORDER BY lower(b.handle)`)
	if err != nil {
		return nil, fmt.Errorf("list bots: %w", schemaHint(err))
	}
	defer rows.Close()
	out := []Bot{}
	for rows.Next() {
		b, err := scanBot(rows)
		if err != nil {
			return nil, fmt.Errorf("list bots: %w", err)
		}
		out = append(out, b)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list bots: %w", err)
	}
	return out, nil
}

// Get finds a bot by id or by handle (with or without @, any case).
func (r *Registry) Get(ctx context.Context, ref string) (Bot, error) {
	ref = strings.TrimSpace(ref)
	if ref == "" {
		return Bot{}, fmt.Errorf("%w: empty bot id or handle", ErrInvalidArgument)
	}
	return r.find(ctx, r.pool, ref, NormalizeHandle(ref))
}

func (r *Registry) find(ctx context.Context, q vault.DB, id, handle string) (Bot, error) {
	b, err := scanBot(q.QueryRow(ctx, `SELECT `+botColumns+` FROM bots b LEFT JOIN secret_vault s ON s.bot_id = b.id
		WHERE b.id = $1 OR lower(b.handle) = lower($2) ORDER BY (b.id = $1) DESC LIMIT 1`, id, handle))
	if errors.Is(err, pgx.ErrNoRows) {
		// The reference is not echoed: a token pasted by mistake must not come back in an error.
		return Bot{}, fmt.Errorf("%w (see `agentrunner bots list`)", ErrBotNotFound)
	}
	if err != nil {
		return Bot{}, fmt.Errorf("read bot: %w", schemaHint(err))
	}
	return b, nil
}

// schemaHint adds a hint when the tables are missing (migrations not run).
func schemaHint(err error) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "42P01" {
		return fmt.Errorf("%w (the schema is missing: run `agentrunner migrate up`)", err)
	}
	return err
}
