package main

// agentrunner dead-letters …: list the updates sessions kept aside because
// they could not be handed off, and replay them once a fix is deployed.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"

	"buko.app/agentrunner/runner"
	"buko.app/agentrunner/sessions"
	"buko.app/agentrunner/vault"
	"buko.app/agentrunner/workflows"
	"buko.app/agentrunner/workflows/codec"
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
		output   outputFlag
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
			if err := output.check(); err != nil {
				return err
			}
			return withRegistry(cmd.Context(), g, &db, func(pool *pgxpool.Pool, reg *runner.Registry) error {
				botID, err := resolveBot(cmd, reg, bot)
				if err != nil {
					return err
				}
				dls, err := runner.NewDeadLetterStore(pool, nil).List(cmd.Context(), runner.DeadLetterFilter{BotID: botID, Pending: !replayed, Limit: 100000})
				if err != nil {
					return err
				}
				return output.print(cmd.OutOrStdout(), dls, func(w io.Writer) error {
					if len(dls) == 0 {
						fmt.Fprintln(cmd.ErrOrStderr(), "no dead letters")
						return nil
					}
					return table(w, "ID\tBOT\tUPDATE\tCHAT\tREASON\tBYTES\tKEPT\tREPLAYED\tREPLAY ERROR", func(tw io.Writer) {
						for _, d := range dls {
							replayedAt := "-"
							if d.ReplayedAt != nil {
								replayedAt = d.ReplayedAt.UTC().Format("2006-01-02 15:04")
							}
							fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", d.ID, d.BotID, orDash(d.UpdateID), orDash(d.ChatID), d.Reason,
								d.PayloadBytes, d.CreatedAt.UTC().Format("2006-01-02 15:04"), replayedAt, orDash(d.ReplayError))
						}
					})
				})
			})
		},
	}
	f := cmd.Flags()
	output.bind(f, "table", "output format: table or json")
	f.StringVar(&bot, "bot", "", "only this bot's (a bot id or handle)")
	f.BoolVar(&replayed, "replayed", false, "include dead letters replayed already")
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
		output   outputFlag
		bot      string
		id       int64
		all      bool
		handoff  string
		progress progressFlag
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
			if err := output.check(); err != nil {
				return err
			}
			if err := checkReplaySelection(id, bot, all); err != nil {
				return err
			}
			show, err := progress.show(cmd)
			if err != nil {
				return err
			}
			show = show && (progress.mode != "auto" || !output.json()) // auto: a bar only above a table
			ctx := cmd.Context()
			return withRegistry(ctx, g, &db, func(pool *pgxpool.Pool, reg *runner.Registry) error {
				botID, err := resolveBot(cmd, reg, bot)
				if err != nil {
					return err
				}
				u := &lazyUnwrapper{open: func(ctx context.Context) (vault.Cipher, error) { return cf.open(ctx, g.log, nil) }}
				defer u.close()
				keys, err := tf.loadKeys(ctx, u)
				if err != nil {
					return err
				}
				h, closeHandoff, err := replayHandoff(ctx, g, &tf, handoff, pool, keys)
				if err != nil {
					return err
				}
				defer closeHandoff()
				store := runner.NewDeadLetterStore(pool, keys)
				todo, err := store.List(ctx, runner.DeadLetterFilter{BotID: botID, ID: id, Pending: id == 0, Limit: 1000000})
				if err != nil {
					return err
				}
				if id != 0 && len(todo) == 0 {
					return usageError{fmt.Errorf("no dead letter %d (see agentrunner dead-letters list)", id)}
				}
				var b *bar
				if show && len(todo) > 0 {
					b = newBar(cmd.ErrOrStderr(), len(todo), "replay", "updates")
				}
				r := replayAll(ctx, store, h, todo, b)
				if err := output.print(cmd.OutOrStdout(), r.outcomes, r.writeText); err != nil {
					return err
				}
				return r.err()
			})
		},
	}
	f := cmd.Flags()
	output.bind(f, "text", "output format: text or json (one outcome per dead letter)")
	f.StringVar(&bot, "bot", "", "replay this bot's pending dead letters (a bot id or handle)")
	f.Int64Var(&id, "id", 0, "replay this dead letter (its id in dead-letters list)")
	f.BoolVar(&all, "all", false, "replay every pending dead letter")
	f.StringVar(&handoff, "handoff", handoffTemporal, "where to hand off: temporal (chat workflows) or postgres (the handoffs table; tests)")
	progress.bind(f)
	envFlag(f, "progress", "AGENTRUNNER_PROGRESS")
	db.bind(f)
	cf.bind(f)
	tf.bind(f)
	return cmd
}

// checkReplaySelection wants exactly one of --id, --bot and --all.
func checkReplaySelection(id int64, bot string, all bool) error {
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
	return nil
}

// replayHandoff is where replayed updates go (--handoff); release frees it.
func replayHandoff(ctx context.Context, g *globals, tf *temporalFlags, handoff string, pool *pgxpool.Pool, keys codec.KeyProvider) (h sessions.Handoff, release func(), err error) {
	switch handoff {
	case handoffTemporal:
		tc, err := tf.dial(ctx, g.log, keys, nil)
		if err != nil {
			return nil, nil, err
		}
		return workflows.NewHandoff(tc, tf.taskQueue), tc.Close, nil
	case handoffPostgres:
		return runner.NewPGHandoff(pool, "dead-letters-replay", nil), func() {}, nil
	}
	return nil, nil, usageError{fmt.Errorf("--handoff %q: want %s or %s", handoff, handoffTemporal, handoffPostgres)}
}

// replayRun is what a replay did.
type replayRun struct {
	todo     int
	outcomes []runner.ReplayOutcome
	failed   int   // outcomes not replayed
	stopped  error // a failure that stopped the run
	took     time.Duration
}

// replayAll replays todo in order, stopping at the first error of the store.
func replayAll(ctx context.Context, store *runner.DeadLetterStore, h sessions.Handoff, todo []runner.DeadLetterView, b *bar) replayRun {
	start := time.Now()
	r := replayRun{todo: len(todo), outcomes: make([]runner.ReplayOutcome, 0, len(todo))}
	for _, d := range todo {
		o, err := store.Replay(ctx, h, d.ID)
		if err != nil {
			r.stopped = err
			break
		}
		if !o.Replayed {
			r.failed++
		}
		r.outcomes = append(r.outcomes, o)
		_ = b.Add(1)
	}
	_ = b.Exit()
	r.took = time.Since(start)
	return r
}

// writeText says which did not replay, then the count.
func (r replayRun) writeText(w io.Writer) error {
	for _, o := range r.outcomes {
		if !o.Replayed {
			fmt.Fprintf(w, "dead letter %d (bot %s, update %s): not replayed: %s\n", o.ID, o.BotID, dashIfEmpty(o.UpdateID), o.Error)
		}
	}
	_, err := fmt.Fprintf(w, "replayed %d of %d dead letters in %s; %d still pending\n",
		len(r.outcomes)-r.failed, r.todo, r.took.Round(time.Millisecond), r.failed+r.todo-len(r.outcomes))
	return err
}

// err is the run's exit status: it stopped, or some did not replay.
func (r replayRun) err() error {
	if r.stopped != nil {
		return fmt.Errorf("dead-letters replay: %w (run it again to continue)", r.stopped)
	}
	if r.failed > 0 {
		return fmt.Errorf("dead-letters replay: %d dead letters did not replay (reasons above and in replay_error)", r.failed)
	}
	return nil
}

func dashIfEmpty(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
