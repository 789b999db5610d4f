package main

// agentrunner bots set-agent, migrate-secrets: a bot's agent kind and config,
// and re-sealing agent secrets sealed before they had their own binding.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"

	"buko.app/agentrunner/runner"
	"buko.app/agentrunner/vault"
	"buko.app/agentrunner/workflows"
	"buko.app/agentrunner/workflows/agents"
)

// ActionBotSetAgent is the audit_log action of bots set-agent.
const ActionBotSetAgent = "bot.set-agent"

// maxAgentConfig bounds an agent config read from a file or a flag.
const maxAgentConfig = 1 << 20

// checkAgent validates an agent kind and its config (nil: {}) as the worker
// will decode it, without resolving secrets. The error names the field.
func checkAgent(kind string, cfg json.RawMessage) error {
	reg := agents.Builtin()
	if _, ok := reg[kind]; !ok {
		return fmt.Errorf("--agent %q: want %s", kind, strings.Join(reg.Kinds(), ", "))
	}
	if len(bytes.TrimSpace(cfg)) == 0 {
		cfg = json.RawMessage(`{}`)
	}
	return reg.Check(kind, cfg)
}

// readAgentConfig reads --config: inline JSON, or @FILE (@- for stdin).
func readAgentConfig(cmd *cobra.Command, v string) (json.RawMessage, error) {
	var data []byte
	switch {
	case v == "@-":
		b, err := io.ReadAll(io.LimitReader(cmd.InOrStdin(), maxAgentConfig+1))
		if err != nil {
			return nil, fmt.Errorf("--config: read standard input: %w", err)
		}
		data = b
	case strings.HasPrefix(v, "@"):
		f, err := os.Open(v[1:])
		if err != nil {
			return nil, usageError{fmt.Errorf("--config: %w", err)}
		}
		defer f.Close()
		b, err := io.ReadAll(io.LimitReader(f, maxAgentConfig+1))
		if err != nil {
			return nil, fmt.Errorf("--config: read %s: %w", v[1:], err)
		}
		data = b
	default:
		data = []byte(v)
	}
	if len(data) > maxAgentConfig {
		return nil, usageError{fmt.Errorf("--config: more than %d bytes", maxAgentConfig)}
	}
	cfg, err := runner.CheckAgentConfig(data)
	if err != nil {
		return nil, usageError{fmt.Errorf("--config: %w", err)}
	}
	return cfg, nil
}

func newBotsSetAgentCmd(g *globals) *cobra.Command {
	var (
		db          dbFlags
		kind, value string
	)
	cmd := &cobra.Command{
		Use:   "set-agent BOT --agent echo|http|openai [--config JSON|@FILE]",
		Short: "Change a bot's agent and its config without removing the bot",
		Long: `Change which agent answers a bot's messages, and its config, in place: the bot,
its token and its session stay. The config (inline JSON, @FILE, or @- for
standard input; default {}) is checked against the agent kind's schema first,
exactly as bots add does: an unknown field, a value of the wrong type, an
invalid URL or a secret reference that is not allowed is refused, naming the
field, and nothing is written.

The change is one transaction with an audit_log row (bot.set-agent); the
bots trigger notifies the runners, and the workers build the new agent for the
bot's next update.`,
		Example: `  agentrunner bots set-agent @helper_bot --agent echo
  agentrunner bots set-agent helper_bot --agent http --config @agent.json
  agentrunner bots set-agent helper_bot --agent openai --config '{"model":"gpt-4o-mini","api_key":"env:AGENTRUNNER_AGENT_SECRET_OPENAI"}'`,
		Args: exactlyOneBot,
		RunE: func(cmd *cobra.Command, args []string) error {
			if kind == "" {
				return usageError{errors.New("--agent is required: echo, http or openai")}
			}
			cfg := json.RawMessage(`{}`)
			if value != "" {
				c, err := readAgentConfig(cmd, value)
				if err != nil {
					return err
				}
				cfg = c
			}
			if err := checkAgent(kind, cfg); err != nil {
				return usageError{fmt.Errorf("bots set-agent: %w", err)}
			}
			return withRegistry(cmd.Context(), g, &db, func(pool *pgxpool.Pool, reg *runner.Registry) error {
				b, err := reg.Get(cmd.Context(), args[0])
				if err != nil {
					return registryError(err)
				}
				changed, from, err := setAgent(cmd.Context(), pool, operator(), b, kind, cfg)
				if err != nil {
					return fmt.Errorf("bots set-agent: %w", err)
				}
				if !changed {
					fmt.Fprintf(cmd.OutOrStdout(), "@%s (%s) already has agent %s with this config\n", b.Handle, b.ID, kind)
					return nil
				}
				g.log.Info().Str("bot_id", b.ID).Str("agent", kind).Str("from", from).Str("actor", operator()).Msg("bot agent changed")
				fmt.Fprintf(cmd.OutOrStdout(), "@%s (%s) now has agent %s (was %s)\n", b.Handle, b.ID, kind, from)
				return nil
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&kind, "agent", "", "agent kind: echo, http or openai (required)")
	f.StringVar(&value, "config", "", "the agent's config: a JSON object inline, @FILE, or @- for standard input (default {})")
	envFlag(f, "agent", "AGENTRUNNER_BOT_AGENT")
	envFlag(f, "config", "AGENTRUNNER_BOT_AGENT_CONFIG")
	db.bind(f)
	return cmd
}

// setAgent writes the agent and config of b with an audit row, in one
// transaction; changed is false (and nothing is written) when both are
// already so. from is the previous agent kind.
func setAgent(ctx context.Context, pool interface {
	Begin(context.Context) (pgx.Tx, error)
}, actor string, b runner.Bot, kind string, cfg json.RawMessage) (changed bool, from string, err error) {
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		var same bool
		err := tx.QueryRow(ctx, `SELECT agent, agent = $2 AND agent_config = $3::jsonb FROM bots WHERE id = $1 FOR UPDATE`,
			b.ID, kind, string(cfg)).Scan(&from, &same)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("%w: %s (removed meanwhile)", runner.ErrBotNotFound, b.ID)
		}
		if err != nil {
			return fmt.Errorf("read bot: %w", err)
		}
		if same {
			return nil
		}
		if _, err := tx.Exec(ctx, `UPDATE bots SET agent = $2, agent_config = $3::jsonb, updated_at = now() WHERE id = $1`,
			b.ID, kind, string(cfg)); err != nil {
			return fmt.Errorf("update bot: %w", err)
		}
		changed = true
		// The config is not copied into the audit trail: it may hold secret
		// references, and audit_log outlives the bot.
		return vault.Audit(ctx, tx, vault.AuditEntry{Actor: actor, Action: ActionBotSetAgent, BotID: b.ID,
			Detail: map[string]any{"handle": b.Handle, "from": from, "to": kind}})
	})
	return changed, from, err
}

// ActionBotMigrateSecrets is the audit_log action of bots migrate-secrets.
const ActionBotMigrateSecrets = "bot.migrate-secrets"

// agentSecretFields are the agent config fields holding secret references.
var agentSecretFields = []string{"secret", "api_key"}

func newBotsMigrateSecretsCmd(g *globals) *cobra.Command {
	var (
		db dbFlags
		cf cipherFlags
	)
	cmd := &cobra.Command{
		Use:   "migrate-secrets [BOT...]",
		Short: "Re-seal agent secrets sealed before they had their own binding (all bots, or those named)",
		Long: `Agent secrets (the sealed "secret" or "api_key" of an agent config) are bound
to agent-secret:<bot id>. Values sealed by earlier versions are bound to the
bare bot id, the binding of bot tokens, and the worker refuses them. This
command re-seals each such value into the agent-secret domain and writes the
new reference into the bot's agent config (one transaction and one audit_log
row per bot). A value that opens as the bot's own token (a secret_vault
ciphertext copied into the config) is never re-sealed: it is reported and the
command exits 1. Values already migrated and env: references are left alone.
The comparison with the token is an audited token read.`,
		Example: "  agentrunner bots migrate-secrets\n  agentrunner bots migrate-secrets @helper_bot",
		RunE: func(cmd *cobra.Command, args []string) error {
			env, err := openRegistry(cmd.Context(), g.log, &db, &cf, nil)
			if err != nil {
				return err
			}
			defer env.close()
			var bots []runner.Bot
			if len(args) == 0 {
				if bots, err = env.reg.List(cmd.Context()); err != nil {
					return err
				}
			}
			for _, ref := range args {
				b, err := env.reg.Get(cmd.Context(), ref)
				if err != nil {
					return registryError(err)
				}
				bots = append(bots, b)
			}
			var refused int
			for _, b := range bots {
				n, err := migrateBotSecrets(cmd.Context(), env, b)
				switch {
				case errors.Is(err, workflows.ErrTokenAsSecret):
					refused++
					fmt.Fprintf(cmd.ErrOrStderr(), "@%s (%s): %v\n", b.Handle, b.ID, err)
				case err != nil:
					return fmt.Errorf("bots migrate-secrets: @%s (%s): %w", b.Handle, b.ID, err)
				case n > 0:
					fmt.Fprintf(cmd.OutOrStdout(), "@%s (%s): re-sealed %d agent secret(s)\n", b.Handle, b.ID, n)
				}
			}
			if refused > 0 {
				return fmt.Errorf("bots migrate-secrets: %d bot(s) hold their own token in the agent config; fix them with bots set-agent", refused)
			}
			return nil
		},
	}
	db.bind(cmd.Flags())
	cf.bind(cmd.Flags())
	return cmd
}

// migrateBotSecrets re-seals the legacy sealed secrets of b's agent config
// and returns how many it re-sealed.
func migrateBotSecrets(ctx context.Context, env *registryEnv, b runner.Bot) (int, error) {
	var cfg map[string]json.RawMessage
	if err := json.Unmarshal(b.AgentConfig, &cfg); err != nil || cfg == nil {
		return 0, nil // not an object: nothing to migrate (the worker refuses it anyway)
	}
	var (
		tok     vault.Token
		changed int
	)
	for _, field := range agentSecretFields {
		var ref string
		if raw, ok := cfg[field]; !ok || json.Unmarshal(raw, &ref) != nil || ref == "" || strings.HasPrefix(ref, "env:") {
			continue
		}
		if tok.IsZero() {
			t, err := env.store.LoadOne(ctx, b.ID, vault.Purpose{Actor: operator(), Reason: "migrate-secrets"})
			if err != nil && !errors.Is(err, vault.ErrNotFound) {
				return 0, fmt.Errorf("read the bot's token to compare: %w", err)
			}
			tok = t
		}
		out, ch, err := workflows.ResealLegacySecret(ctx, env.cipher, b.ID, ref, tok)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", field, err)
		}
		if ch {
			cfg[field], _ = json.Marshal(out)
			changed++
		}
	}
	if changed == 0 {
		return 0, nil
	}
	newCfg, err := json.Marshal(cfg)
	if err != nil {
		return 0, err
	}
	err = pgx.BeginFunc(ctx, env.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE bots SET agent_config = $2::jsonb, updated_at = now() WHERE id = $1 AND agent_config = $3::jsonb`,
			b.ID, string(newCfg), string(b.AgentConfig))
		if err != nil {
			return fmt.Errorf("update bot: %w", err)
		}
		if tag.RowsAffected() == 0 {
			return errors.New("the agent config changed meanwhile; run the command again")
		}
		return vault.Audit(ctx, tx, vault.AuditEntry{Actor: operator(), Action: ActionBotMigrateSecrets, BotID: b.ID,
			Detail: map[string]any{"handle": b.Handle, "resealed": changed}})
	})
	if err != nil {
		return 0, err
	}
	return changed, nil
}
