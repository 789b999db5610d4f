package main

// agentrunner migrate up|status: the embedded goose migrations.

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"buko.app/agentrunner/migrations"
)

func newMigrateCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "migrate",
		Short: "Apply or inspect the database schema (embedded migrations)",
		Long: `The Postgres schema (bots, secret_vault, audit_log, shard leases…) ships inside
the binary as numbered migrations. "migrate up" applies the pending ones, each
in its own transaction; concurrent runs wait for each other (advisory lock),
so every replica may run it at start. "migrate status" lists them.`,
		Example: `  agentrunner migrate up --database-url postgres://localhost:5432/agentrunner?sslmode=disable
  DATABASE_URL=… agentrunner migrate status`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return usageError{errors.New("migrate needs a subcommand: up or status")}
		},
	}
	cmd.AddCommand(newMigrateUpCmd(g), newMigrateStatusCmd())
	return cmd
}

func newMigrateUpCmd(g *globals) *cobra.Command {
	var (
		db     dbFlags
		shards int
	)
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Apply every pending migration",
		Long: `Apply every pending migration, each in its own transaction.

--shards sets the number of shards the bots are spread over. It is fixed when
the schema is first installed; later runs with another number are refused,
because every bot's shard is derived from it. Leave it unset to keep what the
database has (128 on a fresh install).`,
		Example: "  agentrunner migrate up\n  agentrunner migrate up --shards 256   # a fresh install only",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			sqldb, err := openSQL(cmd.Context(), &db)
			if err != nil {
				return err
			}
			defer sqldb.Close()
			if shards < 0 || shards > 65536 {
				return usageError{fmt.Errorf("--shards %d: want 1 to 65536 (or 0 to keep the installed count)", shards)}
			}
			applied, err := migrations.UpWithShards(cmd.Context(), sqldb, shards)
			for _, a := range applied {
				fmt.Fprintf(cmd.OutOrStdout(), "applied %s (%s)\n", a.File, a.Duration.Round(time.Millisecond))
			}
			if err != nil {
				return err
			}
			if len(applied) == 0 {
				fmt.Fprintln(cmd.OutOrStdout(), "schema is current; nothing to apply")
			}
			g.log.Debug().Int("applied", len(applied)).Msg("migrations done")
			return nil
		},
	}
	db.bind(cmd.Flags())
	cmd.Flags().IntVar(&shards, "shards", 0, "number of shards, fixed at install (0: keep the installed count; 128 on a fresh install)")
	envFlag(cmd.Flags(), "shards", "AGENTRUNNER_SHARDS")
	return cmd
}

func newMigrateStatusCmd() *cobra.Command {
	var db dbFlags
	cmd := &cobra.Command{
		Use:     "status",
		Short:   "List the migrations and whether each is applied",
		Example: "  agentrunner migrate status",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			sqldb, err := openSQL(cmd.Context(), &db)
			if err != nil {
				return err
			}
			defer sqldb.Close()
			st, err := migrations.Status(cmd.Context(), sqldb)
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "VERSION\tMIGRATION\tSTATE\tAPPLIED AT")
			pending := 0
			for _, s := range st {
				state, at := "pending", "-"
				if s.Applied {
					state, at = "applied", s.AppliedAt.UTC().Format(time.RFC3339)
				} else {
					pending++
				}
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\n", s.Version, s.File, state, at)
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			if pending > 0 {
				fmt.Fprintf(cmd.ErrOrStderr(), "%d pending: run `agentrunner migrate up`\n", pending)
			}
			return nil
		},
	}
	db.bind(cmd.Flags())
	return cmd
}

// openSQL opens the database/sql handle goose needs and checks that it answers.
func openSQL(ctx context.Context, db *dbFlags) (*sql.DB, error) {
	h, err := migrations.Open(db.url)
	if err != nil {
		return nil, usageError{fmt.Errorf("--database-url: %w", err)}
	}
	pctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := h.PingContext(pctx); err != nil {
		h.Close()
		return nil, fmt.Errorf("cannot connect to Postgres at %s (set --database-url or DATABASE_URL): %w", redactURL(db.url), err)
	}
	return h, nil
}
