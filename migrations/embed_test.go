package migrations_test

import (
	"context"
	"testing"
	"time"

	"buko.app/agentrunner/migrations"
	"buko.app/agentrunner/migrations/pgtest"
)

func TestUpStatusIdempotent(t *testing.T) {
	dsn := pgtest.NewEmpty(t)
	db, err := migrations.Open(dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	st, err := migrations.Status(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	if len(st) == 0 || st[0].Version != 1 || st[0].Applied {
		t.Fatalf("status before up: %+v", st)
	}
	applied, err := migrations.Up(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	if len(applied) != len(st) {
		t.Fatalf("applied %d of %d migrations", len(applied), len(st))
	}
	again, err := migrations.Up(ctx, db)
	if err != nil || len(again) != 0 {
		t.Fatalf("second up: %v, %+v", err, again)
	}
	st, err = migrations.Status(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st {
		if !s.Applied || s.AppliedAt.IsZero() {
			t.Errorf("not applied after up: %+v", s)
		}
	}
	var n int
	if err := db.QueryRowContext(ctx, `SELECT shard_count FROM cluster_settings`).Scan(&n); err != nil || n != 128 {
		t.Fatalf("cluster_settings: %d, %v", n, err)
	}
	for _, table := range []string{"bots", "secret_vault", "audit_log"} {
		if _, err := db.ExecContext(ctx, "SELECT 1 FROM "+table+" LIMIT 1"); err != nil {
			t.Errorf("table %s: %v", table, err)
		}
	}
}

func TestConcurrentUp(t *testing.T) {
	dsn := pgtest.NewEmpty(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	errs := make(chan error, 3)
	for range 3 {
		go func() {
			db, err := migrations.Open(dsn)
			if err != nil {
				errs <- err
				return
			}
			defer db.Close()
			_, err = migrations.Up(ctx, db)
			errs <- err
		}()
	}
	for range 3 {
		if err := <-errs; err != nil {
			t.Errorf("concurrent up: %v", err)
		}
	}
}

func TestOpenBadURL(t *testing.T) {
	if _, err := migrations.Open("postgres://[bad"); err == nil {
		t.Fatal("want an error for a malformed URL")
	}
}
