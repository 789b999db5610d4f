package main

// agentrunner bots …: the operator's commands for managed bots.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/mattn/go-isatty"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"buko.app/agentrunner/runner"
	"buko.app/agentrunner/vault"
	"buko.app/agentrunner/workflows"
	"buko.app/agentrunner/workflows/agents"
)

// maxTokenInput bounds what is read from stdin or a token file.
const maxTokenInput = 64 << 10

func newBotsCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bots",
		Short: "Manage the bots agentrunner runs: add, list, show, pause, resume, remove, rotate-token, set-agent",
		Long: `Manage the managed bots: official Buko bots whose tokens agentrunner keeps
encrypted in secret_vault and whose updates it runs through an agent.

A BOT argument is a bot id (bot_…) or a handle (with or without @).

Tokens are never taken from a flag or an argument (they would end up in shell
history and in ps): they are read from standard input, or from --token-file.
Each change is one transaction and is written to audit_log.`,
		Example: `  # add a bot, its token piped in; prints the new bot's id
  agentrunner bots add --handle helper_bot --agent echo < token.txt

  # the same, typing the token at a hidden prompt
  agentrunner bots add --handle helper_bot

  agentrunner bots list
  agentrunner bots show @helper_bot -o json
  agentrunner bots pause helper_bot
  agentrunner bots rotate-token helper_bot < new-token.txt
  agentrunner bots set-agent helper_bot --agent http --config @agent.json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return usageError{errors.New("bots needs a subcommand; see agentrunner bots --help")}
		},
	}
	cmd.AddCommand(
		newBotsAddCmd(g), newBotsListCmd(g), newBotsShowCmd(g),
		newBotsStatusCmd(g, "pause"), newBotsStatusCmd(g, "resume"),
		newBotsRemoveCmd(g), newBotsRotateCmd(g), newBotsVerifyCmd(g), newBotsSetAgentCmd(g),
		newBotsMigrateSecretsCmd(g),
	)
	return cmd
}

// noArgs refuses arguments without echoing them (a token pasted onto the
// command line must not come back in an error).
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageError{fmt.Errorf("%s takes no arguments, got %d (tokens are read from standard input, never from the command line)", cmd.CommandPath(), len(args))}
	}
	return nil
}

// exactlyOneBot is cobra.ExactArgs(1) with a usage error that says what is missing.
func exactlyOneBot(cmd *cobra.Command, args []string) error {
	if len(args) != 1 {
		return usageError{fmt.Errorf("%s takes one BOT (a bot id or handle), got %d arguments", cmd.CommandPath(), len(args))}
	}
	return nil
}

// readToken reads one bot token from file, or from stdin (a hidden prompt
// when stdin is a terminal). Errors never contain the input.
func readToken(cmd *cobra.Command, file string) (vault.Token, error) {
	var (
		data []byte
		src  = "standard input"
		err  error
	)
	switch {
	case file != "":
		src = file
		f, oerr := os.Open(file)
		if oerr != nil {
			return vault.Token{}, usageError{fmt.Errorf("--token-file: %w", oerr)}
		}
		data, err = io.ReadAll(io.LimitReader(f, maxTokenInput+1))
		f.Close()
	default:
		in := cmd.InOrStdin()
		if f, ok := in.(*os.File); ok && isatty.IsTerminal(f.Fd()) {
			fmt.Fprint(cmd.ErrOrStderr(), "Bot token (input hidden): ")
			data, err = term.ReadPassword(int(f.Fd()))
			fmt.Fprintln(cmd.ErrOrStderr())
		} else {
			data, err = io.ReadAll(io.LimitReader(in, maxTokenInput+1))
		}
	}
	if err != nil {
		return vault.Token{}, fmt.Errorf("read the token from %s: %w", src, err)
	}
	if len(data) > maxTokenInput {
		return vault.Token{}, usageError{fmt.Errorf("%s holds more than %d bytes: that is not one token", src, maxTokenInput)}
	}
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), maxTokenInput+1)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			lines = append(lines, l)
		}
	}
	switch {
	case len(lines) == 0 && file == "":
		return vault.Token{}, usageError{errors.New("no token on standard input: pipe it in (e.g. `agentrunner bots add --handle H < token.txt`) or use --token-file FILE")}
	case len(lines) == 0:
		return vault.Token{}, usageError{fmt.Errorf("--token-file %s is empty", file)}
	case len(lines) > 1:
		return vault.Token{}, usageError{fmt.Errorf("%s holds %d lines: give exactly one token", src, len(lines))}
	}
	tok, err := vault.ParseToken(lines[0])
	if err != nil {
		return vault.Token{}, usageError{fmt.Errorf("the token from %s: %w", src, err)}
	}
	return tok, nil
}

// registryError turns registry errors the operator caused into usage errors
// where that is what they are (a bad argument), and keeps the rest.
func registryError(err error) error {
	if errors.Is(err, runner.ErrInvalidArgument) {
		return usageError{err}
	}
	return err
}

func newBotsAddCmd(g *globals) *cobra.Command {
	var (
		db                             dbFlags
		cf                             cipherFlags
		bf                             bukoFlags
		handle, agent, agentCfg, deliv string
		tokenFile                      string
	)
	cmd := &cobra.Command{
		Use:   "add --handle HANDLE [--agent echo|http|openai] [--agent-config FILE] [--delivery gateway|polling] < TOKEN",
		Short: "Start managing a bot: verify its token with Buko, store it encrypted, print the bot id",
		Long: `Start managing a bot. The token is read from standard input (or --token-file),
never from the command line.

Before anything is stored, Buko is asked who the token belongs to (getMe), and
the bot is refused when Buko rejects the token, when the bot is not an official
Buko bot, when --handle is not the token's bot, or when the bot or its handle
is already managed. On success the bot, its encrypted token and an audit_log
row are written in one transaction, and the bot id is printed on stdout.

--agent-config is a JSON object handed to the agent (for http: its URL, for
openai: model and prompt…), stored in bots.agent_config. It is checked against
the agent kind's schema first: an unknown field, a value of the wrong type, an
invalid URL or a secret reference that is not allowed is refused, naming the
field (docs/agent-protocol.md). Change it later with bots set-agent.`,
		Example: `  agentrunner bots add --handle helper_bot < token.txt
  agentrunner bots add --handle helper_bot --agent http --agent-config agent.json --delivery polling --token-file token.txt
  BUKO_API_URL=http://127.0.0.1:8081 agentrunner bots add --handle sim_bot_1 < token.txt   # against the simulator`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if strings.TrimSpace(handle) == "" {
				return usageError{errors.New("--handle is required: the bot's Buko handle")}
			}
			var cfg json.RawMessage
			if agentCfg != "" {
				b, err := os.ReadFile(agentCfg)
				if err != nil {
					return usageError{fmt.Errorf("--agent-config: %w", err)}
				}
				if cfg, err = runner.CheckAgentConfig(b); err != nil {
					return usageError{fmt.Errorf("--agent-config %s: %w", agentCfg, err)}
				}
			}
			if err := checkAgent(agent, cfg); err != nil {
				if agentCfg == "" {
					return usageError{fmt.Errorf("--agent %s without --agent-config: %w", agent, err)}
				}
				return usageError{fmt.Errorf("--agent-config %s: %w", agentCfg, err)}
			}
			tok, err := readToken(cmd, tokenFile)
			if err != nil {
				return err
			}
			env, err := openRegistry(cmd.Context(), g.log, &db, &cf, &bf)
			if err != nil {
				return err
			}
			defer env.close()
			b, err := env.reg.Add(cmd.Context(), runner.AddRequest{
				Actor: operator(), Handle: handle, Agent: agent, AgentConfig: cfg, Delivery: deliv, Token: tok,
			})
			if err != nil {
				return registryError(fmt.Errorf("bots add: %w", err))
			}
			fmt.Fprintln(cmd.OutOrStdout(), b.ID)
			fmt.Fprintf(cmd.ErrOrStderr(), "added @%s (%s): agent %s, delivery %s, shard %d, token sealed by %s\n",
				b.Handle, b.ID, b.Agent, b.Delivery, b.Shard, b.KeyRef)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&handle, "handle", "", "the bot's Buko handle (required; checked against getMe)")
	f.StringVar(&agent, "agent", runner.AgentEcho, "agent that answers the bot's messages: echo, http or openai")
	f.StringVar(&agentCfg, "agent-config", "", "file with the agent's configuration, a JSON object")
	f.StringVar(&deliv, "delivery", runner.DeliveryGateway, "how updates arrive: gateway (WebSocket) or polling (getUpdates)")
	f.StringVar(&tokenFile, "token-file", "", "read the token from this file instead of standard input")
	envFlag(f, "handle", "AGENTRUNNER_BOT_HANDLE")
	envFlag(f, "agent", "AGENTRUNNER_BOT_AGENT")
	envFlag(f, "agent-config", "AGENTRUNNER_BOT_AGENT_CONFIG")
	envFlag(f, "delivery", "AGENTRUNNER_BOT_DELIVERY")
	envFlag(f, "token-file", "AGENTRUNNER_BOT_TOKEN_FILE")
	db.bind(f)
	cf.bind(f)
	bf.bind(f)
	return cmd
}

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

func newBotsRotateCmd(g *globals) *cobra.Command {
	var (
		db        dbFlags
		cf        cipherFlags
		bf        bukoFlags
		tokenFile string
	)
	cmd := &cobra.Command{
		Use:   "rotate-token BOT < NEW_TOKEN",
		Short: "Replace a bot's stored token with a new one (verified by getMe)",
		Long: `Replace a bot's stored token after rotating it in Buko. The new token is read
from standard input (or --token-file); Buko must say it belongs to the same bot
(getMe). It is encrypted with the current key, rotated_at is stamped, a bot in
auth_failed becomes active again, and the change is written to audit_log.
Runners pick the new token up at once (their cached copy is dropped).`,
		Example: "  agentrunner bots rotate-token @helper_bot < new-token.txt",
		Args:    exactlyOneBot,
		RunE: func(cmd *cobra.Command, args []string) error {
			tok, err := readToken(cmd, tokenFile)
			if err != nil {
				return err
			}
			env, err := openRegistry(cmd.Context(), g.log, &db, &cf, &bf)
			if err != nil {
				return err
			}
			defer env.close()
			b, err := env.reg.RotateToken(cmd.Context(), operator(), args[0], tok)
			if err != nil {
				return registryError(fmt.Errorf("bots rotate-token: %w", err))
			}
			fmt.Fprintf(cmd.OutOrStdout(), "stored the new token of @%s (%s), sealed by %s v%d\n", b.Handle, b.ID, b.KeyRef, b.KeyVersion)
			return nil
		},
	}
	cmd.Flags().StringVar(&tokenFile, "token-file", "", "read the token from this file instead of standard input")
	envFlag(cmd.Flags(), "token-file", "AGENTRUNNER_BOT_TOKEN_FILE")
	db.bind(cmd.Flags())
	cf.bind(cmd.Flags())
	bf.bind(cmd.Flags())
	return cmd
}

func newBotsVerifyCmd(g *globals) *cobra.Command {
	var (
		db dbFlags
		cf cipherFlags
		bf bukoFlags
	)
	cmd := &cobra.Command{
		Use:   "verify BOT",
		Short: "Decrypt a bot's stored token and check it with Buko (getMe); audited",
		Long: `Decrypt a bot's stored token and ask Buko whether it still works and still
belongs to the bot. Useful after a key rotation and rewrap, or when a bot is in
auth_failed. The token is never shown; the read is written to audit_log.`,
		Example: "  agentrunner bots verify @helper_bot",
		Args:    exactlyOneBot,
		RunE: func(cmd *cobra.Command, args []string) error {
			env, err := openRegistry(cmd.Context(), g.log, &db, &cf, &bf)
			if err != nil {
				return err
			}
			defer env.close()
			b, err := env.reg.Get(cmd.Context(), args[0])
			if err != nil {
				return registryError(err)
			}
			tok, err := env.store.LoadOne(cmd.Context(), b.ID, vault.Purpose{Actor: operator(), Reason: "verify"})
			if err != nil {
				return fmt.Errorf("bots verify: decrypt the stored token of @%s: %w", b.Handle, err)
			}
			c, _ := bf.client()
			me, err := c.GetMe(cmd.Context(), tok)
			if err != nil {
				return fmt.Errorf("bots verify: the stored token of @%s does not work: %w", b.Handle, err)
			}
			if me.ID != b.ID {
				return fmt.Errorf("bots verify: the stored token of @%s belongs to %s (@%s)", b.Handle, me.ID, me.Handle)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "ok: the stored token of @%s (%s) works (sealed by %s v%d)\n", b.Handle, b.ID, b.KeyRef, b.KeyVersion)
			return nil
		},
	}
	db.bind(cmd.Flags())
	cf.bind(cmd.Flags())
	bf.bind(cmd.Flags())
	return cmd
}

func encodeJSONIndent(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// bots set-agent: change a managed bot's agent kind and config in place,
// checked against the kind's schema before anything is written.

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
			pool, err := db.open(cmd.Context())
			if err != nil {
				return err
			}
			defer pool.Close()
			b, err := runner.NewRegistry(runner.RegistryConfig{Pool: pool, Logger: g.log}).Get(cmd.Context(), args[0])
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
