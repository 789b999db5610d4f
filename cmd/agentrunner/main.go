// Command agentrunner is the one binary of agentrunner: the runner itself
// (serve, worker), the whole system on one machine (dev), the Buko simulator
// (sim), and the operator's tools (bots, vault, migrate, codec). Every setting is a flag and an environment variable; the
// flag wins (docs/architecture.md §10).
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"github.com/spf13/cobra"
)

func main() {
	// The one process-wide logging setting, made before anything runs; tests
	// that build the command tree in-process leave it alone.
	zerolog.TimeFieldFormat = time.RFC3339Nano
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := newRootCmd().ExecuteContext(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "agentrunner:", err)
		var ue usageError
		if errors.As(err, &ue) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// usageError marks a mistake in how the command was called (exit status 2).
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func newRootCmd() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:   "agentrunner",
		Short: "Runs Buko's managed agents: one gateway session per bot, every update durable in Temporal",
		Long: `agentrunner runs Buko's managed agents: official Buko bots whose tokens are kept
encrypted in secret_vault. A fleet of replicas shares the bots through shard
leases in Postgres; the owner of a bot holds its one Gateway session and hands
every update to a Temporal workflow before acknowledging it.

Every flag can also be set through the environment variable shown in its help;
a flag given on the command line wins.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if err := applyEnv(cmd); err != nil {
				return usageError{err}
			}
			return g.setupLogging(cmd.ErrOrStderr())
		},
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	g.bindLogFlags(root)
	root.AddCommand(
		newVersionCmd(),
		newSimCmd(g),
		newBotsCmd(g),
		newVaultCmd(g),
		newMigrateCmd(g),
		newServeCmd(g),
		newWorkerCmd(g),
		newCodecCmd(g),
		newDevCmd(g),
		newBenchCmd(g),
		newDeadLettersCmd(g),
		newHistoryCostCmd(g),
		newSoakCmd(g),
	)
	return root
}
