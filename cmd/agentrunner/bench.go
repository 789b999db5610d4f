package main

// bench.go wires `agentrunner bench`: the flags of its subcommands around the
// scenarios of package bench (echo: a running echo bot measured from outside
// through the simulator's control API, the way on-call checks a deploy;
// gateway: a capacity check of a simulator process).

import (
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/spf13/cobra"

	"buko.app/agentrunner/bench"
	"buko.app/agentrunner/buko/sim"
)

// benchCommon are the flags every bench subcommand shares.
type benchCommon struct {
	simURL         string
	adminTokenFile string
	output         string
	progress       progressFlag
	timeout        time.Duration
}

func newBenchCmd(g *globals) *cobra.Command {
	var bc benchCommon
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure a running system from outside, through the Buko simulator",
		Long: `Measure a running system from outside, as on-call would check a deploy.

Both subcommands talk to a Buko simulator (agentrunner sim, or the one inside
agentrunner dev) over HTTP: its control API (/sim/...) plays the users, and its
transcripts show what the bots answered. Nothing inside agentrunner is touched,
so the figures are what a user sees, end to end.

  echo     latency, losses and duplicates of a running echo bot
  gateway  Gateway delivery capacity of a simulator process (no agentrunner needed)

Results go to stdout (a table, or JSON with -o json); a progress bar goes to
stderr when it is a terminal. Runs leave their users, chats and bots in the
simulator (it has no delete): run against a dev or staging simulator.`,
		Args: noArgs,
	}
	pf := cmd.PersistentFlags()
	pf.StringVar(&bc.simURL, "sim-url", "http://127.0.0.1:8081", "base URL of the Buko simulator (agentrunner dev prints it)")
	pf.StringVar(&bc.adminTokenFile, "admin-token-file", "", "file holding the bearer token of a guarded control API (agentrunner sim --admin-token-file)")
	pf.StringVarP(&bc.output, "output", "o", "text", "output: text or json")
	bc.progress.bind(pf)
	pf.DurationVar(&bc.timeout, "timeout", 2*time.Minute, "echo: a message without a reply this long after it was sent is lost; gateway: the most to wait for deliveries and acks")
	envFlag(pf, "sim-url", "AGENTRUNNER_BENCH_SIM_URL")
	envFlag(pf, "admin-token-file", "AGENTRUNNER_BENCH_ADMIN_TOKEN_FILE")
	cmd.AddCommand(newBenchEchoCmd(g, &bc), newBenchGatewayCmd(g, &bc))
	return cmd
}

// env checks the shared flags and returns the Env of a run whose control-API
// client pools conns connections; the caller closes the client's idle
// connections.
func (bc *benchCommon) env(cmd *cobra.Command, conns int) (bench.Env, error) {
	if bc.output != "text" && bc.output != "json" {
		return bench.Env{}, usageError{fmt.Errorf("-o %q: want text or json", bc.output)}
	}
	if bc.timeout <= 0 {
		return bench.Env{}, usageError{fmt.Errorf("--timeout %s: want a positive duration", bc.timeout)}
	}
	env := bench.Env{Timeout: bc.timeout, Warnings: cmd.ErrOrStderr()}
	show, err := bc.progress.show(cmd)
	if err != nil {
		return bench.Env{}, err
	}
	if show {
		env.Bar = func(total int, what, unit string) bench.Progress { return newBar(cmd.ErrOrStderr(), total, what, unit) }
	}
	u, err := url.Parse(bc.simURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return bench.Env{}, usageError{fmt.Errorf("--sim-url %q: want the simulator's base URL, like http://127.0.0.1:8081", bc.simURL)}
	}
	opts := sim.ControlOptions{UnauthorizedHint: "a guarded simulator: pass --admin-token-file", BaseName: "--sim-url", HTTPClient: bench.PooledClient(conns)}
	if bc.adminTokenFile != "" {
		tok, err := readTokenFile("--admin-token-file", bc.adminTokenFile)
		if err != nil {
			return bench.Env{}, err
		}
		opts.AdminToken = tok
	}
	env.Sim = sim.NewControl(u.String(), opts)
	return env, nil
}

func newBenchEchoCmd(_ *globals, bc *benchCommon) *cobra.Command {
	var s bench.Echo
	cmd := &cobra.Command{
		Use:   "echo --bot HANDLE_OR_ID",
		Short: "End-to-end latency, losses and duplicates of a running echo bot",
		Long: `End-to-end latency, losses and duplicates of a running echo bot, measured from
outside through the simulator, the way a user sees it.

It creates --concurrency bench users in the simulator, each starts a private
chat with the bot (POST /sim/chats/private), and the chats post --messages
messages between them in parallel (POST /sim/chats/{id}/messages), each chat
one at a time: post, then poll the transcript (GET /sim/chats/{id}/messages?after=)
every --poll-interval until the bot's reply to that message (matched by
reply_to_message_id) shows up, or --timeout passes. Latency is from just before
the post to the poll that saw the reply.

Reported: latency p50/p90/p99/max; replies vs sent; lost (no reply within
--timeout; "late" counts those that did get one by the end); duplicates (more
than one reply to one message, from a last look at every transcript);
throughput (replies per second over the run); and the 429s the simulator gave
meanwhile. The worker paces each bot's sends to its tier quota (a burst of a
quarter of the per-minute quota, then three quarters of it spread evenly;
official: 30 at once, then one every 0.67 s): a run that sends more than the
burst measures that pacing, not the system. Keep --messages within the burst
(and a minute apart) to measure the path, or spread load over several bots.

The exit status is 1 when a message was lost or answered twice (after the
report), 2 for bad flags or an unknown bot.`,
		Example: `  # terminal 1: the whole system, with the seeded @echo_bot
  make dev
  # terminal 2:
  agentrunner bench echo --sim-url http://127.0.0.1:8081 --bot echo_bot --messages 500 --concurrency 8
  agentrunner bench echo --bot @echo_bot --messages 100 -o json | jq .latency_ms

  # a guarded simulator
  agentrunner bench echo --sim-url https://sim.staging.example --admin-token-file sim-token --bot bot_0123456789ABCDEF`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkEchoFlags(s); err != nil {
				return err
			}
			env, err := bc.env(cmd, s.Chats())
			if err != nil {
				return err
			}
			defer env.Sim.CloseIdleConnections()
			res, err := s.Run(cmd.Context(), env)
			var unknown *bench.UnknownBotError
			if errors.As(err, &unknown) {
				return usageError{fmt.Errorf("--bot %q: %w", s.Bot, err)}
			} else if err != nil {
				return err
			}
			if err := bench.Write(cmd.OutOrStdout(), bc.output, res); err != nil {
				return err
			}
			if res.Lost > 0 || res.Duplicates > 0 {
				return fmt.Errorf("bench echo: %d of %d messages got no reply within %s, %d replies were duplicates", res.Lost, res.Sent, bc.timeout, res.Duplicates)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&s.Bot, "bot", "", "the bot to measure: its handle (with or without @) or its bot id")
	f.IntVar(&s.Messages, "messages", 100, "messages to send in all")
	f.IntVar(&s.Concurrency, "concurrency", 1, "chats sending in parallel (one bench user each), one message in flight per chat")
	f.DurationVar(&s.PollInterval, "poll-interval", 2*time.Millisecond, "how often each chat polls its transcript while waiting (the latency's resolution)")
	return cmd
}

// checkEchoFlags refuses what bench echo cannot run with.
func checkEchoFlags(s bench.Echo) error {
	if s.Bot == "" {
		return usageError{errors.New("--bot is required: the handle (echo_bot or @echo_bot) or id of the bot to measure")}
	}
	if s.Messages < 1 {
		return usageError{fmt.Errorf("--messages %d: want at least 1", s.Messages)}
	}
	if s.Concurrency < 1 || s.Concurrency > 1000 {
		return usageError{fmt.Errorf("--concurrency %d: want 1..1000", s.Concurrency)}
	}
	if s.PollInterval <= 0 {
		return usageError{fmt.Errorf("--poll-interval %s: want a positive duration", s.PollInterval)}
	}
	return nil
}

func newBenchGatewayCmd(_ *globals, bc *benchCommon) *cobra.Command {
	var s bench.Gateway
	cmd := &cobra.Command{
		Use:   "gateway",
		Short: "Gateway delivery capacity of a simulator process",
		Long: `Gateway delivery capacity of a simulator process: a quick check of what one
simulator can carry, with no agentrunner involved.

It creates --bots bots in the simulator (POST /sim/bots), opens one Gateway
socket for each from this process (GET /bot/ws, Authorization: Bot <token>),
starts a private chat of one bench user with each bot, then posts --updates
user messages round robin across the chats through the control API with
--concurrency producers, while every socket acks every update it receives.

Reported: the time to open the sockets and this process's memory per socket
(Go heap + goroutine stacks, after GC; the client's side, not the simulator's);
updates/s delivered (frames received here) and acked (the simulator's own count
of confirmed updates, GET /sim/stats), from the first post. The simulator's
figures for its own side are in docs/BENCHMARKS.md, section "Simulator".

The bots stay in the simulator (it has no delete). This process needs one file
descriptor per socket: mind ulimit -n for large --bots.`,
		Example: `  agentrunner sim --addr 127.0.0.1:8081 &
  agentrunner bench gateway --sim-url http://127.0.0.1:8081 --bots 100 --updates 20000
  agentrunner bench gateway --bots 1000 --updates 50000 -o json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if s.Bots < 1 || s.Bots > 100000 {
				return usageError{fmt.Errorf("--bots %d: want 1..100000", s.Bots)}
			}
			if s.Updates < 1 {
				return usageError{fmt.Errorf("--updates %d: want at least 1", s.Updates)}
			}
			if s.Producers < 1 || s.Producers > 1000 {
				return usageError{fmt.Errorf("--concurrency %d: want 1..1000", s.Producers)}
			}
			env, err := bc.env(cmd, s.Producers)
			if err != nil {
				return err
			}
			defer env.Sim.CloseIdleConnections()
			res, err := s.Run(cmd.Context(), env)
			if err != nil {
				return err
			}
			return bench.Write(cmd.OutOrStdout(), bc.output, res)
		},
	}
	f := cmd.Flags()
	f.IntVar(&s.Bots, "bots", 100, "bots to create, one Gateway socket each")
	f.IntVar(&s.Updates, "updates", 10000, "user messages to post across the bots' chats")
	f.IntVar(&s.Producers, "concurrency", 8, "control-API calls in flight while posting")
	return cmd
}
