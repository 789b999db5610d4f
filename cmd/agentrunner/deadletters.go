package main

// agentrunner dead-letters …: list the updates sessions kept aside because
// they could not be handed off, and replay them once a fix is deployed.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"

	"buko.app/agentrunner/runner"
	"buko.app/agentrunner/sessions"
	"buko.app/agentrunner/vault"
	"buko.app/agentrunner/workflows"
)

func newDeadLettersCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "dead-letters",
		Short: "List and replay updates that could not be handed off (the dead_letters table)",
		Long: `A session never acknowledges an update it could not hand off without keeping
it first: an update that does not decode (a field of an unexpected shape, JSON
cut short), or one the chat workflows refused for good, is stored in the
dead_letters table of Postgres — its raw bytes encrypted with the payload keys
(the keys of Temporal payloads), never a token — and only then acked to Buko.

Once a fix is deployed (a decoder that reads them, a refusal that no longer
applies), replay them: each is decrypted, decoded with this binary's decoder
and handed to its chat workflow like a fresh update. Replay is idempotent: the
chat workflow drops an update_id it has already seen, and a dead letter marked
replayed is not handed off again. One that still fails keeps its row, with the
reason in replay_error.

The status page and GET /api/v1/dead-letters show the same rows;
agentrunner_runner_dead_letters_pending counts the ones not replayed
(alert AgentrunnerDeadLetters, deploy/runbooks/AgentrunnerDeadLetters.md).`,
		Example: `  # what is pending, per bot
  agentrunner dead-letters list
  agentrunner dead-letters list --bot @helper_bot -o json

  # after deploying the fix: replay one, one bot's, or all
  agentrunner dead-letters replay --id 42
  agentrunner dead-letters replay --bot @helper_bot
  agentrunner dead-letters replay --all -o json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return usageError{errors.New("dead-letters needs a subcommand: list or replay; see agentrunner dead-letters --help")}
		},
	}
	cmd.AddCommand(newDeadLettersListCmd(g), newDeadLettersReplayCmd(g))
	return cmd
}

// resolveBot turns a bot id or handle into the bot's id ("" stays "").
func resolveBot(cmd *cobra.Command, reg *runner.Registry, bot string) (string, error) {
	if bot == "" {
		return "", nil
	}
	b, err := reg.Get(cmd.Context(), bot)
	if err != nil {
		return "", registryError(err)
	}
	return b.ID, nil
}

func newDeadLettersListCmd(g *globals) *cobra.Command {
	var (
		db       dbFlags
		output   string
		bot      string
		replayed bool
	)
	cmd := &cobra.Command{
		Use:   "list [--bot BOT] [--replayed] [-o table|json]",
		Short: "List dead letters (never their payloads); pending ones unless --replayed",
		Long: `List the dead letters not replayed yet (with --replayed: all of them, replayed
ones too), oldest first: id, bot, update_id, chat, reason, when it was kept, and
the last replay error. Payloads are never shown: they hold user text and stay
encrypted. A missing update_id means the frame had none that could be read.`,
		Example: `  agentrunner dead-letters list
  agentrunner dead-letters list --bot @helper_bot --replayed -o json | jq '.[] | .reason'`,
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
			botID, err := resolveBot(cmd, runner.NewRegistry(runner.RegistryConfig{Pool: pool, Logger: g.log}), bot)
			if err != nil {
				return err
			}
			dls, err := runner.NewDeadLetterStore(pool, nil).List(cmd.Context(), runner.DeadLetterFilter{BotID: botID, Pending: !replayed, Limit: 100000})
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if output == "json" {
				return encodeJSONIndent(out, dls)
			}
			if len(dls) == 0 {
				fmt.Fprintln(cmd.ErrOrStderr(), "no dead letters")
				return nil
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tBOT\tUPDATE\tCHAT\tREASON\tBYTES\tKEPT\tREPLAYED\tREPLAY ERROR")
			for _, d := range dls {
				replayedAt := "-"
				if d.ReplayedAt != nil {
					replayedAt = d.ReplayedAt.UTC().Format("2006-01-02 15:04")
				}
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", d.ID, d.BotID, orDash(d.UpdateID), orDash(d.ChatID), d.Reason,
					d.PayloadBytes, d.CreatedAt.UTC().Format("2006-01-02 15:04"), replayedAt, orDash(d.ReplayError))
			}
			return tw.Flush()
		},
	}
	f := cmd.Flags()
	f.StringVarP(&output, "output", "o", "table", "output format: table or json")
	f.StringVar(&bot, "bot", "", "only this bot's (a bot id or handle)")
	f.BoolVar(&replayed, "replayed", false, "include dead letters replayed already")
	envFlag(f, "output", "AGENTRUNNER_OUTPUT")
	db.bind(f)
	return cmd
}

func orDash(s *string) string {
	if s == nil || *s == "" {
		return "-"
	}
	return *s
}

func newDeadLettersReplayCmd(g *globals) *cobra.Command {
	var (
		db       dbFlags
		cf       cipherFlags
		tf       temporalFlags
		output   string
		bot      string
		id       int64
		all      bool
		handoff  string
		progress string
	)
	cmd := &cobra.Command{
		Use:   "replay (--id N | --bot BOT | --all) [-o text|json]",
		Short: "Hand dead letters off again with this binary's decoder, and mark them replayed",
		Long: `Replay pending dead letters: each payload is decrypted with the payload keys,
decoded with this binary's decoder and handed to its chat workflow (Temporal,
as serve does). A dead letter that hands off is marked replayed; one that still
does not decode, or is refused again, keeps its row with the reason in
replay_error, and the command exits non-zero after trying the rest.

Run it after the fix is deployed, with the same --payload-keys file and token
cipher as the runners (the keys may be wrapped by it). It is safe to run twice
or to interrupt: an update handed off twice is dropped by its chat workflow,
and replayed rows are skipped.

Say which: --id N (one), --bot BOT (one bot's pending ones) or --all.`,
		Example: `  agentrunner dead-letters replay --id 42
  agentrunner dead-letters replay --bot @helper_bot --payload-keys /etc/agentrunner/payload-keys.json
  agentrunner dead-letters replay --all -o json | jq '.[] | select(.replayed | not)'`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "text" && output != "json" {
				return usageError{fmt.Errorf("-o %q: want text or json", output)}
			}
			n := 0
			for _, set := range []bool{id != 0, bot != "", all} {
				if set {
					n++
				}
			}
			if n != 1 {
				return usageError{errors.New("say which dead letters to replay: exactly one of --id N, --bot BOT or --all")}
			}
			if id < 0 {
				return usageError{fmt.Errorf("--id %d: want a positive id (see agentrunner dead-letters list)", id)}
			}
			showBar := false
			switch progress {
			case "auto":
				f, ok := cmd.ErrOrStderr().(*os.File)
				showBar = ok && isatty.IsTerminal(f.Fd()) && output == "text"
			case "always":
				showBar = true
			case "never":
			default:
				return usageError{fmt.Errorf("--progress %q: want auto, always or never", progress)}
			}
			ctx := cmd.Context()
			pool, err := db.open(ctx)
			if err != nil {
				return err
			}
			defer pool.Close()
			botID, err := resolveBot(cmd, runner.NewRegistry(runner.RegistryConfig{Pool: pool, Logger: g.log}), bot)
			if err != nil {
				return err
			}
			u := &lazyUnwrapper{open: func(ctx context.Context) (vault.Cipher, error) { return cf.open(ctx, g.log, nil) }}
			defer u.close()
			keys, err := tf.loadKeys(ctx, u)
			if err != nil {
				return err
			}
			var h sessions.Handoff
			switch handoff {
			case handoffTemporal:
				tc, err := tf.dial(ctx, g.log, keys, nil)
				if err != nil {
					return err
				}
				defer tc.Close()
				h = workflows.NewHandoff(tc, tf.taskQueue)
			case handoffPostgres:
				h = runner.NewPGHandoff(pool, "dead-letters-replay", nil)
			default:
				return usageError{fmt.Errorf("--handoff %q: want %s or %s", handoff, handoffTemporal, handoffPostgres)}
			}
			store := runner.NewDeadLetterStore(pool, keys)
			todo, err := store.List(ctx, runner.DeadLetterFilter{BotID: botID, ID: id, Pending: id == 0, Limit: 1000000})
			if err != nil {
				return err
			}
			if id != 0 && len(todo) == 0 {
				return usageError{fmt.Errorf("no dead letter %d (see agentrunner dead-letters list)", id)}
			}
			var bar *progressbar.ProgressBar
			if showBar && len(todo) > 0 {
				bar = progressbar.NewOptions(len(todo),
					progressbar.OptionSetWriter(cmd.ErrOrStderr()),
					progressbar.OptionSetDescription("replay"),
					progressbar.OptionShowCount(),
					progressbar.OptionShowIts(),
					progressbar.OptionSetItsString("updates"),
					progressbar.OptionThrottle(100*time.Millisecond),
					progressbar.OptionSetWidth(30),
				)
			}
			start := time.Now()
			outcomes := make([]runner.ReplayOutcome, 0, len(todo))
			failed := 0
			var runErr error
			for _, d := range todo {
				o, err := store.Replay(ctx, h, d.ID)
				if err != nil {
					runErr = err
					break
				}
				if !o.Replayed {
					failed++
				}
				outcomes = append(outcomes, o)
				if bar != nil {
					_ = bar.Add(1)
				}
			}
			if bar != nil {
				_ = bar.Exit()
				fmt.Fprintln(cmd.ErrOrStderr())
			}
			out := cmd.OutOrStdout()
			if output == "json" {
				if err := encodeJSONIndent(out, outcomes); err != nil {
					return err
				}
			} else {
				for _, o := range outcomes {
					if !o.Replayed {
						fmt.Fprintf(out, "dead letter %d (bot %s, update %s): not replayed: %s\n", o.ID, o.BotID, dashIfEmpty(o.UpdateID), o.Error)
					}
				}
				fmt.Fprintf(out, "replayed %d of %d dead letters in %s; %d still pending\n",
					len(outcomes)-failed, len(todo), time.Since(start).Round(time.Millisecond), failed+len(todo)-len(outcomes))
			}
			if runErr != nil {
				return fmt.Errorf("dead-letters replay: %w (run it again to continue)", runErr)
			}
			if failed > 0 {
				return fmt.Errorf("dead-letters replay: %d dead letters did not replay (reasons above and in replay_error)", failed)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&output, "output", "o", "text", "output format: text or json (one outcome per dead letter)")
	f.StringVar(&bot, "bot", "", "replay this bot's pending dead letters (a bot id or handle)")
	f.Int64Var(&id, "id", 0, "replay this dead letter (its id in dead-letters list)")
	f.BoolVar(&all, "all", false, "replay every pending dead letter")
	f.StringVar(&handoff, "handoff", handoffTemporal, "where to hand off: temporal (chat workflows) or postgres (the handoffs table; tests)")
	f.StringVar(&progress, "progress", "auto", "progress bar on stderr: auto (when a terminal), always or never")
	envFlag(f, "output", "AGENTRUNNER_OUTPUT")
	envFlag(f, "progress", "AGENTRUNNER_PROGRESS")
	db.bind(f)
	cf.bind(f)
	tf.bind(f)
	return cmd
}

func dashIfEmpty(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
