package main

// agentrunner bots list, show, pause, resume, remove: the commands that read
// the registry or change a bot's status.

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/mattn/go-isatty"
	"github.com/spf13/cobra"

	"buko.app/agentrunner/runner"
)

func newBotsListCmd(g *globals) *cobra.Command {
	var (
		db     dbFlags
		output outputFlag
	)
	cmd := &cobra.Command{
		Use:   "list [-o table|json]",
		Short: "List the managed bots",
		Example: `  agentrunner bots list
  agentrunner bots list -o json | jq -r '.[] | select(.status != "active") | .handle'`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := output.check(); err != nil {
				return err
			}
			return withRegistry(cmd.Context(), g, &db, func(_ *pgxpool.Pool, reg *runner.Registry) error {
				bots, err := reg.List(cmd.Context())
				if err != nil {
					return err
				}
				return output.print(cmd.OutOrStdout(), bots, func(w io.Writer) error {
					if len(bots) == 0 {
						fmt.Fprintln(cmd.ErrOrStderr(), "no managed bots; add one with `agentrunner bots add --handle H < token.txt`")
						return nil
					}
					return table(w, "ID\tHANDLE\tSTATUS\tDELIVERY\tAGENT\tSHARD\tKEY\tADDED", func(tw io.Writer) {
						for _, b := range bots {
							fmt.Fprintf(tw, "%s\t@%s\t%s\t%s\t%s\t%d\tv%d\t%s\n", b.ID, b.Handle, b.Status, b.Delivery, b.Agent, b.Shard,
								b.KeyVersion, b.CreatedAt.UTC().Format("2006-01-02 15:04"))
						}
					})
				})
			})
		},
	}
	output.bind(cmd.Flags(), "table", "output format: table or json")
	db.bind(cmd.Flags())
	return cmd
}

func newBotsShowCmd(g *globals) *cobra.Command {
	var (
		db     dbFlags
		output outputFlag
	)
	cmd := &cobra.Command{
		Use:     "show BOT [-o text|json]",
		Short:   "Show one managed bot (never its token)",
		Example: "  agentrunner bots show @helper_bot\n  agentrunner bots show bot_01J8… -o json",
		Args:    exactlyOneBot,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := output.check(); err != nil {
				return err
			}
			return withRegistry(cmd.Context(), g, &db, func(_ *pgxpool.Pool, reg *runner.Registry) error {
				b, err := reg.Get(cmd.Context(), args[0])
				if err != nil {
					return registryError(err)
				}
				return output.print(cmd.OutOrStdout(), b, func(w io.Writer) error { return writeBot(w, b) })
			})
		},
	}
	output.bind(cmd.Flags(), "text", "output format: text or json")
	db.bind(cmd.Flags())
	return cmd
}

// writeBot writes b for people, one field a line.
func writeBot(w io.Writer, b runner.Bot) error {
	rotated := "never"
	if b.TokenRotatedAt != nil {
		rotated = b.TokenRotatedAt.UTC().Format(time.RFC3339)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
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
			return withRegistry(cmd.Context(), g, &db, func(_ *pgxpool.Pool, reg *runner.Registry) error {
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
			})
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
			return withRegistry(cmd.Context(), g, &db, func(_ *pgxpool.Pool, reg *runner.Registry) error {
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
			})
		},
	}
	cmd.Flags().BoolVarP(&yes, "yes", "y", false, "do not ask for confirmation")
	envFlag(cmd.Flags(), "yes", "AGENTRUNNER_ASSUME_YES")
	db.bind(cmd.Flags())
	return cmd
}
