// Package migrations owns agentrunner's Postgres schema: the goose SQL files in
// this folder, embedded into the binary, and the code that applies them
// (`agentrunner migrate up|status`, `make dev`, and every test database made by
// migrations/pgtest).
//
// Files are named NNNNN_what.sql and each carries `-- +goose Up` and
// `-- +goose Down` sections. 00001 (bots, secret_vault, audit_log,
// cluster_settings) belongs to the vault work; later issues add later files.
// Concurrent runs (several replicas starting at once) are serialized by a
// Postgres advisory lock held for the duration of a run.
package migrations

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" database/sql driver
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
)

//go:embed *.sql
var embedded embed.FS

// FS returns the embedded migration files.
func FS() fs.FS { return embedded }

// Open opens a database/sql handle on dsn through pgx, for Up and Status.
// It does not connect; the first query does.
func Open(dsn string) (*sql.DB, error) {
	if _, err := pgconn.ParseConfig(dsn); err != nil {
		return nil, fmt.Errorf("database URL: %w", err)
	}
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		return nil, fmt.Errorf("open database: %w", err)
	}
	return db, nil
}

// Applied is one migration that Up ran.
type Applied struct {
	Version  int64
	File     string
	Duration time.Duration
}

// State is one migration as Status sees it.
type State struct {
	Version   int64
	File      string
	Applied   bool
	AppliedAt time.Time // zero when pending
}

func provider(db *sql.DB) (*goose.Provider, error) {
	locker, err := lock.NewPostgresSessionLocker(
		lock.WithLockTimeout(1, 300), // probe every second, for up to five minutes
	)
	if err != nil {
		return nil, fmt.Errorf("migrations: lock: %w", err)
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, embedded,
		goose.WithSessionLocker(locker),
		goose.WithDisableGlobalRegistry(true),
		goose.WithLogger(quiet{}),
	)
	if err != nil {
		return nil, fmt.Errorf("migrations: %w", err)
	}
	return p, nil
}

// Up applies every pending migration, in order, each in its own transaction,
// and returns what it applied (nothing when the schema is current).
func Up(ctx context.Context, db *sql.DB) ([]Applied, error) {
	p, err := provider(db)
	if err != nil {
		return nil, err
	}
	res, err := p.Up(ctx)
	return applied(res, err)
}

// ErrShardCount means an installation was asked for a shard count other than
// the one it was installed with (bots.shard depends on it).
var ErrShardCount = errors.New("the shard count is fixed at install")

// UpWithShards is Up for an installation of shards shards (0 keeps whatever
// the database has, 128 on a fresh one). On a fresh database it applies the
// first migration, records the count in cluster_settings, then applies the
// rest, which create one lease row per shard. On an installed database it
// refuses a different count with ErrShardCount. Run it from one place at a
// time (the Helm hook Job); concurrent runs of the rest are serialized.
func UpWithShards(ctx context.Context, db *sql.DB, shards int) ([]Applied, error) {
	if shards <= 0 {
		return Up(ctx, db)
	}
	p, err := provider(db)
	if err != nil {
		return nil, err
	}
	out, err := applied(p.UpTo(ctx, 1))
	if err != nil {
		return out, err
	}
	var have int
	if err := db.QueryRowContext(ctx, `SELECT shard_count FROM cluster_settings`).Scan(&have); err != nil {
		return out, fmt.Errorf("migrations: read shard count: %w", err)
	}
	if have != shards {
		version, err := p.GetDBVersion(ctx)
		if err != nil {
			return out, fmt.Errorf("migrations: %w", err)
		}
		if version > 1 {
			return out, fmt.Errorf("%w: this database has %d shards, not %d", ErrShardCount, have, shards)
		}
		if _, err := db.ExecContext(ctx, `UPDATE cluster_settings SET shard_count = $1`, shards); err != nil {
			return out, fmt.Errorf("migrations: set shard count %d: %w", shards, err)
		}
	}
	rest, err := Up(ctx, db)
	return append(out, rest...), err
}

// applied turns goose's results into ours and names the file that failed.
func applied(res []*goose.MigrationResult, err error) ([]Applied, error) {
	var out []Applied
	for _, r := range res {
		if r == nil || r.Source == nil || r.Error != nil {
			continue
		}
		out = append(out, Applied{Version: r.Source.Version, File: base(r.Source.Path), Duration: r.Duration})
	}
	if err != nil {
		var pe *goose.PartialError
		if errors.As(err, &pe) && pe.Failed != nil && pe.Failed.Source != nil {
			return out, fmt.Errorf("migrations: %s failed: %w", base(pe.Failed.Source.Path), pe.Err)
		}
		return out, fmt.Errorf("migrations: up: %w", err)
	}
	return out, nil
}

// Status lists every embedded migration and whether the database has it.
func Status(ctx context.Context, db *sql.DB) ([]State, error) {
	p, err := provider(db)
	if err != nil {
		return nil, err
	}
	st, err := p.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("migrations: status: %w", err)
	}
	out := make([]State, 0, len(st))
	for _, s := range st {
		out = append(out, State{
			Version:   s.Source.Version,
			File:      base(s.Source.Path),
			Applied:   s.State == goose.StateApplied,
			AppliedAt: s.AppliedAt,
		})
	}
	return out, nil
}

func base(p string) string {
	for i := len(p) - 1; i >= 0; i-- {
		if p[i] == '/' {
			return p[i+1:]
		}
	}
	return p
}

// quiet discards goose's own log lines; callers report what Up returns.
type quiet struct{}

func (quiet) Printf(string, ...any) {}
func (quiet) Fatalf(string, ...any) {} // the Provider API returns errors instead
