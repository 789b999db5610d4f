package main

// agentrunner bots list, show, pause, resume, remove: the commands that read
// the registry or change a bot's status.

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/spf13/cobra"

	"buko.app/agentrunner/runner"
)

func newBotsListCmd(g *globals) *cobra.Command {
	var (
		db     dbFlags
		output string
	)
	cmd := &cobra.Command{
		Use:   "list [-o table|json]",
		Short: "List the managed bots",
		Example: `  agentrunner bots list
  agentrunner bots list -o json | jq -r '.[] | select(.status != "active") | .handle'`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return usageError{fmt.Errorf("-o %q: want table or json", output)}
			}
			pool, err := db.open(cmd.Context())
			if err != nil {
				return err
			}
			defer pool.Close()
			bots, err := runner.NewRegistry(runner.RegistryConfig{Pool: pool, Logger: g.log}).List(cmd.Context())
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if output == "json" {
				return encodeJSONIndent(out, bots)
			}
			if len(bots) == 0 {
				fmt.Fprintln(cmd.ErrOrStderr(), "no managed bots; add one with `agentrunner bots add --handle H < token.txt`")
				return nil
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tHANDLE\tSTATUS\tDELIVERY\tAGENT\tSHARD\tKEY\tADDED")
			for _, b := range bots {
				fmt.Fprintf(tw, "%s\t@%s\t%s\t%s\t%s\t%d\tv%d\t%s\n", b.ID, b.Handle, b.Status, b.Delivery, b.Agent, b.Shard,
					b.KeyVersion, b.CreatedAt.UTC().Format("2006-01-02 15:04"))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	envFlag(cmd.Flags(), "output", "AGENTRUNNER_OUTPUT")
	db.bind(cmd.Flags())
	return cmd
}

func newBotsShowCmd(g *globals) *cobra.Command {
	var (
		db     dbFlags
		output string
	)
	cmd := &cobra.Command{
		Use:     "show BOT [-o text|json]",
		Short:   "Show one managed bot (never its token)",
		Example: "  agentrunner bots show @helper_bot\n  agentrunner bots show bot_01J8… -o json",
		Args:    exactlyOneBot,
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "text" && output != "json" {
				return usageError{fmt.Errorf("-o %q: want text or json", output)}
			}
			pool, err := db.open(cmd.Context())
			if err != nil {
				return err
			}
			defer pool.Close()
			b, err := runner.NewRegistry(runner.RegistryConfig{Pool: pool, Logger: g.log}).Get(cmd.Context(), args[0])
			if err != nil {
				return registryError(err)
			}
			out := cmd.OutOrStdout()
			if output == "json" {
				return encodeJSONIndent(out, b)
			}
			rotated := "never"
			if b.TokenRotatedAt != nil {
				rotated = b.TokenRotatedAt.UTC().Format(time.RFC3339)
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			for _, kv := range [][2]string{
				{"id", b.ID}, {"handle", "@" + b.Handle}, {"display name", b.DisplayName}, {"status", b.Status},
				{"delivery", b.Delivery}, {"agent", b.Agent}, {"agent config", string(b.AgentConfig)},
				{"quota tier", b.QuotaTier}, {"shard", fmt.Sprint(b.Shard)},
				{"added", b.CreatedAt.UTC().Format(time.RFC3339)}, {"updated", b.UpdatedAt.UTC().Format(time.RFC3339)},
				{"token key", fmt.Sprintf("%s v%d", b.KeyRef, b.KeyVersion)}, {"token stored", b.TokenStoredAt.UTC().Format(time.RFC3339)},
				{"token rotated", rotated},
			} {
				fmt.Fprintf(tw, "%s:\t%s\n", kv[0], kv[1])
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output format: text or json")
	envFlag(cmd.Flags(), "output", "AGENTRUNNER_OUTPUT")
	db.bind(cmd.Flags())
	return cmd
}

func newBotsStatusCmd(g *globals, verb string) *cobra.Command {
	var db dbFlags
	short := map[string]string{
		"pause":  "Stop running a bot (its session ends; updates wait in Buko) until resume",
		"resume": "Run a paused, disabled or auth_failed bot again",
	}[verb]
	cmd := &cobra.Command{
		Use:     verb + " BOT",
		Short:   short,
		Example: "  agentrunner bots " + verb + " @helper_bot",
		Args:    exactlyOneBot,
		RunE: func(cmd *cobra.Command, args []string) error {
			pool, err := db.open(cmd.Context())
			if err != nil {
				return err
			}
			defer pool.Close()
			reg := runner.NewRegistry(runner.RegistryConfig{Pool: pool, Logger: g.log})
			op := reg.Pause
			if verb == "resume" {
				op = reg.Resume
			}
			b, changed, err := op(cmd.Context(), operator(), args[0])
			if err != nil {
				return registryError(fmt.Errorf("bots %s: %w", verb, err))
			}
			if changed {
				fmt.Fprintf(cmd.OutOrStdout(), "@%s (%s) is now %s\n", b.Handle, b.ID, b.Status)
			} else {
				fmt.Fprintf(cmd.OutOrStdout(), "@%s (%s) was already %s\n", b.Handle, b.ID, b.Status)
			}
			return nil
		},
	}
	db.bind(cmd.Flags())
	return cmd
}

func newBotsRemoveCmd(g *globals) *cobra.Command {
	var (
		db  dbFlags
		yes bool
	)
	cmd := &cobra.Command{
		Use:   "remove BOT [--yes]",
		Short: "Stop managing a bot and delete its stored token (the audit trail stays)",
		Long: `Stop managing a bot: its bots row and its encrypted token in secret_vault are
deleted in one transaction; audit_log keeps the history. Adding it again needs
the token again. On a terminal you are asked to confirm unless --yes is given.`,
		Example: "  agentrunner bots remove @helper_bot --yes",
		Args:    exactlyOneBot,
		RunE: func(cmd *cobra.Command, args []string) error {
			pool, err := db.open(cmd.Context())
			if err != nil {
				return err
			}
			defer pool.Close()
			reg := runner.NewRegistry(runner.RegistryConfig{Pool: pool, Logger: g.log})
			b, err := reg.Get(cmd.Context(), args[0])
			if err != nil {
				return registryError(err)
			}
			if f, ok := cmd.InOrStdin().(*os.File); ok && !yes && isatty.IsTerminal(f.Fd()) {
				fmt.Fprintf(cmd.ErrOrStderr(), "Remove @%s (%s) and delete its stored token? Type the handle to confirm: ", b.Handle, b.ID)
				line, _ := bufio.NewReader(f).ReadString('\n')
				if !strings.EqualFold(runner.NormalizeHandle(line), b.Handle) {
					return errors.New("not confirmed; nothing removed")
				}
			}
			if _, err := reg.Remove(cmd.Context(), operator(), b.ID); err != nil {
				return registryError(fmt.Errorf("bots remove: %w", err))
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed @%s (%s) and its stored token\n", b.Handle, b.ID)
			return nil
		},
	}
	cmd.Flags().BoolVarP(&yes, "yes", "y", false, "do not ask for confirmation")
	envFlag(cmd.Flags(), "yes", "AGENTRUNNER_ASSUME_YES")
	db.bind(cmd.Flags())
	return cmd
}
