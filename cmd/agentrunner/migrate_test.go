package main

import (
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
