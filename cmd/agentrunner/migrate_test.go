package main

import (
	"database/sql"
	"strings"
	"testing"

	"buko.app/agentrunner/migrations/pgtest"
)

func TestMigrateCommands(t *testing.T) {
	f := &cliFix{}
	dsn := pgtest.NewEmpty(t)
	out, errOut, err := f.run(t, "", "migrate", "status", "--database-url", dsn)
	if err != nil || !strings.Contains(out, "00001_bots_secret_vault_audit_log.sql") || !strings.Contains(out, "pending") ||
		!strings.Contains(errOut, "migrate up") {
		t.Fatalf("status before: %v\n%s\n%s", err, out, errOut)
	}
	out = f.mustRun(t, "", "migrate", "up", "--database-url", dsn)
	if !strings.Contains(out, "applied 00001_bots_secret_vault_audit_log.sql") {
		t.Fatalf("up: %q", out)
	}
	if out = f.mustRun(t, "", "migrate", "up", "--database-url", dsn); !strings.Contains(out, "schema is current") {
		t.Fatalf("up again: %q", out)
	}
	out, errOut, err = f.run(t, "", "migrate", "status", "--database-url", dsn)
	if err != nil || strings.Contains(out, "pending") || !strings.Contains(out, "applied") || errOut != "" {
		t.Fatalf("status after: %v\n%s\n%s", err, out, errOut)
	}
	// Through the environment, as in a container.
	t.Setenv("DATABASE_URL", dsn)
	if out = f.mustRun(t, "", "migrate", "status"); !strings.Contains(out, "applied") {
		t.Fatalf("status via DATABASE_URL: %q", out)
	}

	_, _, err = f.run(t, "", "migrate", "up", "--database-url", "postgres://nobody:secretpw@127.0.0.1:1/x?connect_timeout=5")
	if err == nil || !strings.Contains(err.Error(), "cannot connect to Postgres") || strings.Contains(err.Error(), "secretpw") {
		t.Fatalf("unreachable database: %v", err)
	}
	for _, args := range [][]string{{"migrate"}, {"migrate", "down"}, {"migrate", "up", "extra"}, {"migrate", "up", "--database-url", "::not a url"}} {
		if _, _, err := f.run(t, "", args...); err == nil || !isUsage(err) {
			t.Errorf("%v: want a usage error, got %v", args, err)
		}
	}
}

func TestMigrateUpShardsFixedAtInstall(t *testing.T) {
	f := &cliFix{}
	dsn := pgtest.NewEmpty(t)
	f.mustRun(t, "", "migrate", "up", "--database-url", dsn, "--shards", "16")
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var count, leases int
	if err := db.QueryRow(`SELECT shard_count, (SELECT count(*) FROM shard_leases) FROM cluster_settings`).Scan(&count, &leases); err != nil {
		t.Fatal(err)
	}
	if count != 16 || leases != 16 {
		t.Fatalf("shard_count %d, %d lease rows: want 16 and 16", count, leases)
	}
	// The same count again is a no-op; another is refused; none keeps what is there.
	f.mustRun(t, "", "migrate", "up", "--database-url", dsn, "--shards", "16")
	t.Setenv("AGENTRUNNER_SHARDS", "32")
	if _, _, err := f.run(t, "", "migrate", "up", "--database-url", dsn); err == nil || !strings.Contains(err.Error(), "fixed at install") {
		t.Fatalf("another shard count: want refused, got %v", err)
	}
	f.mustRun(t, "", "migrate", "up", "--database-url", dsn, "--shards", "0")
	if _, _, err := f.run(t, "", "migrate", "up", "--database-url", dsn, "--shards", "-1"); err == nil || !isUsage(err) {
		t.Fatalf("negative shards: want a usage error, got %v", err)
	}
}
