package vault

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/rs/zerolog"
)

// DB is what this package needs of Postgres. *pgxpool.Pool, *pgx.Conn and
// pgx.Tx all satisfy it, so writes can join a caller's transaction.
type DB interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Audit actions written by this package.
const (
	ActionTokenRead = "token.read"
	ActionRewrap    = "vault.rewrap"
	ActionRotateKey = "vault.rotate-key"
)

// AuditEntry is one audit_log row. Detail must not hold a token (a Token in
// it marshals redacted anyway).
type AuditEntry struct {
	Actor  string
	Action string
	BotID  string // "" for actions on no single bot
	Detail map[string]any
}

// Audit appends e to audit_log through q (a pool, or the caller's transaction).
func Audit(ctx context.Context, q DB, e AuditEntry) error {
	detail := []byte("{}")
	if len(e.Detail) > 0 {
		b, err := json.Marshal(e.Detail)
		if err != nil {
			return fmt.Errorf("audit %s: detail: %w", e.Action, err)
		}
		detail = b
	}
	var bot any
	if e.BotID != "" {
		bot = e.BotID
	}
	if _, err := q.Exec(ctx, `INSERT INTO audit_log (actor, action, bot_id, detail) VALUES ($1, $2, $3, $4)`,
		e.Actor, e.Action, bot, detail); err != nil {
		return fmt.Errorf("audit %s: %w", e.Action, err)
	}
	return nil
}

// Purpose says why tokens are read. Reads for a live session (the runner's
// cache, send activities) are not audited one by one; every other read is.
type Purpose struct {
	Actor  string // who reads: "runner:<id>", "cli:<user>@<host>"
	Reason string // what for: "session", "verify", …
	Live   bool   // a live session: not audited
}

// SessionPurpose is the purpose of the runner's own reads.
func SessionPurpose(actor string) Purpose {
	return Purpose{Actor: actor, Reason: "session", Live: true}
}

// Store reads and writes secret_vault rows through a Cipher.
type Store struct {
	db      DB
	cipher  Cipher
	log     zerolog.Logger
	metrics *Metrics
}

// NewStore returns a Store over db (normally a *pgxpool.Pool) and c.
func NewStore(db DB, c Cipher, log zerolog.Logger, m *Metrics) *Store {
	return &Store{db: db, cipher: c, log: log, metrics: m}
}

// Cipher returns the store's cipher.
func (s *Store) Cipher() Cipher { return s.cipher }

// DB returns the store's database handle.
func (s *Store) DB() DB { return s.db }

// Seal encrypts tok for botID. Do it before opening the transaction that
// writes the row (a Vault call should not hold a transaction open).
func (s *Store) Seal(ctx context.Context, botID string, tok Token) (Sealed, error) {
	out, err := s.cipher.Encrypt(ctx, []Plaintext{{BotID: botID, Token: tok}})
	if err != nil {
		var be *BatchError
		if errors.As(err, &be) && len(be.Failed) == 1 {
			return Sealed{}, be.Failed[0].Err
		}
		return Sealed{}, err
	}
	return out[0], nil
}

// Insert writes a new row for a new bot through q (the caller's transaction).
func (s *Store) Insert(ctx context.Context, q DB, row Sealed) error {
	_, err := q.Exec(ctx, `INSERT INTO secret_vault (bot_id, ciphertext, key_ref) VALUES ($1, $2, $3)`,
		row.BotID, row.Ciphertext, s.cipher.KeyRef())
	if err != nil {
		return fmt.Errorf("secret_vault insert: %w", err)
	}
	return nil
}

// Replace stores a rotated token's row and stamps rotated_at; ErrNotFound if
// the bot has no row.
func (s *Store) Replace(ctx context.Context, q DB, row Sealed) error {
	tag, err := q.Exec(ctx, `UPDATE secret_vault SET ciphertext = $2, key_ref = $3, rotated_at = now() WHERE bot_id = $1`,
		row.BotID, row.Ciphertext, s.cipher.KeyRef())
	if err != nil {
		return fmt.Errorf("secret_vault update: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("bot %s: %w", row.BotID, ErrNotFound)
	}
	return nil
}

// Row is a secret_vault row without its ciphertext.
type Row struct {
	BotID     string
	KeyRef    string
	Version   int
	CreatedAt time.Time
	RotatedAt *time.Time
}

// Describe returns the metadata of botID's row (never the ciphertext).
func (s *Store) Describe(ctx context.Context, botID string) (Row, error) {
	var (
		r  Row
		ct string
	)
	err := s.db.QueryRow(ctx, `SELECT bot_id, ciphertext, key_ref, created_at, rotated_at FROM secret_vault WHERE bot_id = $1`, botID).
		Scan(&r.BotID, &ct, &r.KeyRef, &r.CreatedAt, &r.RotatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return Row{}, fmt.Errorf("bot %s: %w", botID, ErrNotFound)
	}
	if err != nil {
		return Row{}, fmt.Errorf("secret_vault read: %w", err)
	}
	r.Version = Sealed{Ciphertext: ct}.Version()
	return r, nil
}

// Load reads and decrypts the tokens of botIDs: one query and one Decrypt
// batch (chunked by the cipher). Per-bot failures (ErrNotFound,
// ErrKeyMismatch, ErrCiphertext) are in failed; err is for failures of the
// whole call (ErrUnavailable, the database, the audit write). Reads whose
// purpose is not a live session are written to audit_log first.
func (s *Store) Load(ctx context.Context, botIDs []string, p Purpose) (tokens map[string]Token, failed map[string]error, err error) {
	r, err := s.load(ctx, botIDs, p, nil)
	if err != nil {
		return nil, nil, err
	}
	return r.tokens, r.failed, nil
}

// loaded is the outcome of Store.load.
type loaded struct {
	tokens    map[string]Token
	cts       map[string]string // the ciphertext each token was decrypted from
	unchanged map[string]bool   // rows whose ciphertext is the known one: not decrypted
	failed    map[string]error
}

// load is Load that skips the decryption of rows whose ciphertext equals
// known[bot] (the one the caller already holds the plaintext of): those are
// reported unchanged. The cache revalidates invalidated tokens this way.
func (s *Store) load(ctx context.Context, botIDs []string, p Purpose, known map[string]string) (loaded, error) {
	r := loaded{
		tokens: make(map[string]Token, len(botIDs)), cts: make(map[string]string, len(botIDs)),
		unchanged: make(map[string]bool), failed: make(map[string]error),
	}
	if len(botIDs) == 0 {
		return r, nil
	}
	rows, err := s.db.Query(ctx, `SELECT bot_id, ciphertext, key_ref FROM secret_vault WHERE bot_id = ANY($1)`, botIDs)
	if err != nil {
		return loaded{}, fmt.Errorf("secret_vault read: %w", err)
	}
	found := make(map[string]bool, len(botIDs))
	var items []Sealed
	keyRef := s.cipher.KeyRef()
	for rows.Next() {
		var it Sealed
		var ref string
		if err := rows.Scan(&it.BotID, &it.Ciphertext, &ref); err != nil {
			rows.Close()
			return loaded{}, fmt.Errorf("secret_vault read: %w", err)
		}
		found[it.BotID] = true
		if ref != keyRef {
			r.failed[it.BotID] = fmt.Errorf("%w: sealed by %s, this process uses %s", ErrKeyMismatch, ref, keyRef)
			continue
		}
		if ct, ok := known[it.BotID]; ok && ct == it.Ciphertext {
			r.unchanged[it.BotID] = true
			continue
		}
		items = append(items, it)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return loaded{}, fmt.Errorf("secret_vault read: %w", err)
	}
	for _, id := range botIDs {
		if !found[id] {
			r.failed[id] = fmt.Errorf("bot %s: %w", id, ErrNotFound)
		}
	}
	if len(items) == 0 {
		return r, nil
	}
	if !p.Live {
		if err := s.auditReads(ctx, items, p); err != nil {
			return loaded{}, err
		}
	}
	toks, err := s.cipher.Decrypt(ctx, items)
	var be *BatchError
	if err != nil && !errors.As(err, &be) {
		return loaded{}, err
	}
	for i, it := range items {
		if be != nil {
			if ierr := be.Index(i); ierr != nil {
				r.failed[it.BotID] = ierr
				continue
			}
		}
		r.tokens[it.BotID] = toks[i]
		r.cts[it.BotID] = it.Ciphertext
	}
	return r, nil
}

// LoadOne is Load for one bot; its failure is the error.
func (s *Store) LoadOne(ctx context.Context, botID string, p Purpose) (Token, error) {
	toks, failed, err := s.Load(ctx, []string{botID}, p)
	if err != nil {
		return Token{}, err
	}
	if ferr := failed[botID]; ferr != nil {
		return Token{}, ferr
	}
	return toks[botID], nil
}

func (s *Store) auditReads(ctx context.Context, items []Sealed, p Purpose) error {
	ids := make([]string, len(items))
	for i, it := range items {
		ids[i] = it.BotID
	}
	detail, _ := json.Marshal(map[string]any{"reason": p.Reason})
	_, err := s.db.Exec(ctx, `INSERT INTO audit_log (actor, action, bot_id, detail)
		SELECT $1, $2, b, $3 FROM unnest($4::text[]) AS b`, p.Actor, ActionTokenRead, detail, ids)
	if err != nil {
		return fmt.Errorf("audit token reads: %w", err)
	}
	return nil
}
