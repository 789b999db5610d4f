package main

// soak.go wires `agentrunner soak` (package soak): flags in, report out.

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"buko.app/agentrunner/soak"
)

func newSoakCmd(g *globals) *cobra.Command {
	cfg := soak.Defaults()
	var output, faults, jsonFile string
	var quietProgress bool
	cmd := &cobra.Command{
		Use:   "soak",
		Short: "Run the whole stack on this machine under load, break every dependency, check nothing is lost or doubled",
		Long: `Bring up a production-shaped stack on this machine — the Buko simulator, three
serve replicas and a separate worker (this binary), a Postgres cluster of its
own, a Temporal server on SQL persistence, and Vault Transit — drive chat
traffic, inject every fault on a seeded schedule, then check the invariants
from the simulator's records and print a report (docs/soak.md). Exits non-zero
when an invariant fails.

The tools come from ` + "`make services`" + `: source ~/.cache/agentrunner/run/services.env.`,
		Example: `  source ~/.cache/agentrunner/run/services.env
  agentrunner soak --duration 30m -o json --json-file soak.json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "text" && output != "json" {
				return usageError{fmt.Errorf("-o %q: want text or json", output)}
			}
			if faults != "" {
				cfg.Faults = strings.Split(faults, ",")
			}
			bin, err := os.Executable()
			if err != nil {
				return err
			}
			cfg.Bin, cfg.Log = bin, g.log.With().Str("component", "soak").Logger()
			if !quietProgress {
				cfg.Progress = cmd.ErrOrStderr()
			}
			rep, err := soak.Run(cmd.Context(), cfg)
			if err != nil && rep == nil {
				return err
			}
			if jsonFile != "" {
				f, ferr := os.Create(jsonFile)
				if ferr != nil {
					return ferr
				}
				ferr = rep.WriteJSON(f)
				if cerr := f.Close(); ferr == nil {
					ferr = cerr
				}
				if ferr != nil {
					return ferr
				}
			}
			if output == "json" {
				err = errors.Join(err, rep.WriteJSON(cmd.OutOrStdout()))
			} else {
				err = errors.Join(err, rep.WriteTable(cmd.OutOrStdout()))
			}
			if err == nil && !rep.Passed {
				err = errors.New("soak: an invariant failed (see the report)")
			}
			return err
		},
	}
	fs := cmd.Flags()
	fs.DurationVar(&cfg.Duration, "duration", cfg.Duration, "how long traffic runs; the faults are spread over it")
	fs.IntVar(&cfg.Bots, "bots", cfg.Bots, "bots")
	fs.IntVar(&cfg.Chats, "chats", cfg.Chats, "chats over all bots")
	fs.Float64Var(&cfg.Groups, "groups", cfg.Groups, "share of the chats that are groups")
	fs.Float64Var(&cfg.Rate, "rate", cfg.Rate, "user messages per second over all chats")
	fs.Uint64Var(&cfg.Seed, "seed", cfg.Seed, "seed of the fault schedule, the chat picks and the simulator's chaos")
	fs.DurationVar(&cfg.Quiet, "quiet", cfg.Quiet, "calm period after the last fault before goroutines and RSS are compared")
	fs.StringVar(&faults, "faults", "", "comma-separated faults to inject (default: all): "+strings.Join(soak.FaultNames(), ","))
	fs.DurationVar(&cfg.VaultOutage, "vault-outage", cfg.VaultOutage, "how long Vault stays stopped (at least 30s)")
	fs.DurationVar(&cfg.ChaosWindow, "chaos-window", cfg.ChaosWindow, "how long each simulator fault stays on")
	fs.DurationVar(&cfg.RecoveryLimit, "recovery-limit", cfg.RecoveryLimit, "the most a fault may take to heal")
	fs.DurationVar(&cfg.StartLimit, "start-limit", cfg.StartLimit, "the most the first start may take (every bot live, every /start answered)")
	fs.StringVar(&cfg.WorkDir, "work-dir", "", "folder for data and logs (default: a temporary one, removed after a passing run)")
	fs.StringVar(&cfg.PGBinDir, "pg-bin-dir", cfg.PGBinDir, "folder of initdb, pg_ctl and pg_dump")
	fs.StringVar(&cfg.TemporalPG, "temporal-pg", cfg.TemporalPG, "host:port of the Postgres (trust auth) that holds the Temporal server's databases")
	fs.StringVar(&cfg.TemporalServerBin, "temporal-server-bin", "", "temporal-server binary (deploy/dev/temporal-server.sh)")
	fs.StringVar(&cfg.TemporalSQLTool, "temporal-sql-tool", "", "temporal-sql-tool binary")
	fs.StringVar(&cfg.TemporalSchemaDir, "temporal-schema-dir", "", "the server module's schema/postgresql/v12 folder")
	fs.StringVar(&cfg.VaultBin, "vault-bin", "", "vault binary (deploy/dev/vault.sh)")
	fs.StringVarP(&output, "output", "o", "text", "report: text or json")
	fs.StringVar(&jsonFile, "json-file", "", "also write the JSON report to this file")
	fs.BoolVar(&quietProgress, "no-progress", false, "no progress line on stderr")
	envFlag(fs, "temporal-server-bin", "AGENTRUNNER_TEMPORAL_SERVER_BIN")
	envFlag(fs, "temporal-sql-tool", "AGENTRUNNER_TEMPORAL_SQL_TOOL_BIN")
	envFlag(fs, "temporal-schema-dir", "AGENTRUNNER_TEMPORAL_SCHEMA_DIR")
	envFlag(fs, "vault-bin", "AGENTRUNNER_VAULT_BIN")
	return cmd
}
