package main

// agentrunner bots add, rotate-token, verify: the commands that take a bot's
// token (from stdin, a hidden prompt or --token-file, never a flag) or check it.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/mattn/go-isatty"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"buko.app/agentrunner/runner"
	"buko.app/agentrunner/vault"
)

// maxTokenInput bounds what is read from stdin or a token file.
const maxTokenInput = 64 << 10

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
