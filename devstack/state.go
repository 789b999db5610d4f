package devstack

// state.go makes the local state a first dev run needs: the database and
// the payload key file.

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/rs/zerolog"

	"buko.app/agentrunner/vault"
	"buko.app/agentrunner/workflows"
	"buko.app/agentrunner/workflows/codec"
)

// EnsureDatabase creates the database of dbURL when it is missing, and
// returns the URL to use. Running as root with no user in the URL, it falls
// back to the user postgres (the default role of a distribution's Postgres)
// and the URL it returns says so.
func EnsureDatabase(ctx context.Context, dbURL string, log zerolog.Logger) (string, error) {
	u, err := url.Parse(dbURL)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		shown := dbURL
		if err == nil {
			shown = u.Redacted()
		}
		return "", &SettingError{fmt.Errorf("--database-url %q: want a postgres:// URL", shown)}
	}
	name := u.Path
	if len(name) > 0 && name[0] == '/' {
		name = name[1:]
	}
	if name == "" {
		return "", &SettingError{errors.New("--database-url: name a database")}
	}
	hadUser := u.User != nil
	admin, err := connectAdmin(ctx, u, log)
	if err != nil {
		return "", fmt.Errorf("cannot connect to Postgres at %s (start it with `make services`, or set DATABASE_URL): %w", u.Redacted(), err)
	}
	defer func() { _ = admin.Close(context.Background()) }()
	var exists bool
	if err := admin.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, name).Scan(&exists); err != nil {
		return "", fmt.Errorf("look up database %s: %w", name, err)
	}
	if !exists {
		if _, err := admin.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
			return "", fmt.Errorf("create database %s: %w", name, err)
		}
		log.Info().Str("database", name).Msg("database created")
	}
	if !hadUser && u.User != nil {
		return u.String(), nil // the user postgres, set by connectAdmin
	}
	return dbURL, nil
}

// connectAdmin connects to the database postgres of the server of u; as
// root with no user in u it tries the user postgres too and, when that
// works, sets it in u.
func connectAdmin(ctx context.Context, u *url.URL, log zerolog.Logger) (*pgx.Conn, error) {
	connect := func(u url.URL) (*pgx.Conn, error) {
		u.Path = "/postgres"
		cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		return pgx.Connect(cctx, u.String())
	}
	admin, err := connect(*u)
	if err != nil && u.User == nil && os.Geteuid() == 0 {
		alt := *u
		alt.User = url.User("postgres")
		if c, err2 := connect(alt); err2 == nil {
			log.Info().Msg("connecting to Postgres as user postgres (running as root, no user in DATABASE_URL)")
			*u = alt
			return c, nil
		}
	}
	return admin, err
}

// EnsurePayloadKeys creates the payload key file at path, its key wrapped
// by the cipher, if it is missing.
func EnsurePayloadKeys(ctx context.Context, path string, ci vault.Cipher, log zerolog.Logger) error {
	if _, err := os.Stat(path); err == nil {
		return nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("payload key file: %w", err)
	}
	key, err := codec.GenerateKey()
	if err != nil {
		return err
	}
	wrapped, err := workflows.WrapCodecKey(ctx, ci, key)
	if err != nil {
		return fmt.Errorf("wrap the payload key: %w", err)
	}
	id := "k" + time.Now().UTC().Format("20060102T150405")
	if err := codec.WriteKeyFile(path, codec.KeyFile{Current: id, Keys: map[string]string{id: wrapped}}); err != nil {
		return fmt.Errorf("payload key file: %w", err)
	}
	log.Info().Str("file", path).Msg("payload key file created")
	return nil
}
