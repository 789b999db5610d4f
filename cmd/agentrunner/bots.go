package main

// agentrunner bots …: the operator's commands for managed bots; this file
// holds the command group and what its subcommands share (argument checks,
// registry errors). The subcommands are in bots_token.go,
// bots_list.go and bots_agent.go.

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"buko.app/agentrunner/runner"
)

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

// registryError turns registry errors the operator caused into usage errors
// where that is what they are (a bad argument), and keeps the rest.
func registryError(err error) error {
	if errors.Is(err, runner.ErrInvalidArgument) {
		return usageError{err}
	}
	return err
}
