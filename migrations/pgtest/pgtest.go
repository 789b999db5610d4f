// Package pgtest gives each test its own freshly migrated Postgres database on
// the machine's server, and drops it when the test ends.
//
//	dsn := pgtest.New(t)
//
// The admin connection comes from $AGENTRUNNER_TEST_DATABASE_URL (default
// postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable, trust auth).
// When that server does not answer the test is skipped with a loud message, or
// fails under CI (internal/testsupport decides which).
package pgtest

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"buko.app/agentrunner/internal/testsupport"
	"buko.app/agentrunner/migrations"
)

// DefaultAdminURL is used when $AGENTRUNNER_TEST_DATABASE_URL is unset.
const DefaultAdminURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// AdminURL returns the admin DSN tests use.
func AdminURL() string {
	if v := os.Getenv("AGENTRUNNER_TEST_DATABASE_URL"); v != "" {
		return v
	}
	return DefaultAdminURL
}

// New creates a database named agentrunner_test_<random>, applies every
// migration, registers its removal (DROP DATABASE … WITH (FORCE)) with
// t.Cleanup, and returns its DSN.
func New(t testing.TB) string {
	t.Helper()
	return create(t, true)
}

// NewAt is New on the server of adminURL (an admin DSN) instead of AdminURL(),
// for tests that own a Postgres server (restarting it, say).
func NewAt(t testing.TB, adminURL string) string {
	t.Helper()
	return createAt(t, adminURL, true)
}

// NewEmpty is New without the migrations, for tests of the migrations themselves.
func NewEmpty(t testing.TB) string {
	t.Helper()
	return create(t, false)
}

func create(t testing.TB, migrate bool) string {
	t.Helper()
	return createAt(t, AdminURL(), migrate)
}

func createAt(t testing.TB, admin string, migrate bool) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		testsupport.Unavailable(t, "Postgres", fmt.Sprintf("cannot connect to %s: %v", redact(admin), err),
			"start it with `make services` (or deploy/dev/postgres.sh); set AGENTRUNNER_TEST_DATABASE_URL for another server")
		return ""
	}
	defer conn.Close(context.Background())

	name := "agentrunner_test_" + testsupport.RandHex(6)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatalf("pgtest: create database %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, admin)
		if err != nil {
			t.Errorf("pgtest: drop %s: connect: %v", name, err)
			return
		}
		defer c.Close(context.Background())
		if _, err := c.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
			t.Errorf("pgtest: drop database %s: %v", name, err)
		}
	})

	dsn, err := withDatabase(admin, name)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	if migrate {
		db, err := migrations.Open(dsn)
		if err != nil {
			t.Fatalf("pgtest: %v", err)
		}
		defer db.Close()
		if _, err := migrations.Up(ctx, db); err != nil {
			t.Fatalf("pgtest: migrate %s: %v", name, err)
		}
	}
	return dsn
}

// withDatabase returns dsn (URL or key=value form) pointing at database name.
func withDatabase(dsn, name string) (string, error) {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			return "", fmt.Errorf("admin URL: %w", err)
		}
		u.Path = "/" + name
		u.RawPath = ""
		return u.String(), nil
	}
	return dsn + " dbname=" + name, nil
}

// redact hides a password in dsn for messages.
func redact(dsn string) string {
	u, err := url.Parse(dsn)
	if err != nil || u.User == nil {
		return dsn
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), "xxx")
	}
	return u.String()
}
