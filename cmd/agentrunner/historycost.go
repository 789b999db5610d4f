package main

// historycost.go owns `agentrunner history-cost`: what an update costs in
// Temporal history events and billable actions, counted from the histories
// of a real run (workflows/historycost).

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"buko.app/agentrunner/workflows/historycost"
)

func newHistoryCostCmd(g *globals) *cobra.Command {
	var (
		address, namespace, agentList, output string
		quiet, burst, loadChats, loadMessages int
		idle, timeout                         time.Duration
	)
	cmd := &cobra.Command{
		Use:   "history-cost",
		Short: "Count the Temporal history events and billable actions an update costs, from a real run",
		Long: `Count what an update costs in Temporal, from the histories of a real run.

For each agent (echo, and the http and openai agents against services this
command starts on 127.0.0.1) it plays two chats through an in-process Buko
simulator, the Handoff and a worker of its own on a fresh task queue of the
Temporal server at --temporal-address: a quiet chat (the /start greeting, then
--quiet messages, each answered before the next) and a busy chat (the greeting,
then --burst messages at once). It waits until each chat's workflow chain has
ended for quiet time (--idle), fetches every run's history (GetWorkflowHistory)
and counts its events by type and its billable actions (Temporal Cloud's
definition: docs/workflows.md, "Event budget"). Per update = the whole chain,
start and end included, divided by the updates handed off.

With --throughput-chats N it measures the end-to-end ceiling instead: N echo
chats (a bot each, so no bot's send quota paces them) send
--throughput-messages messages at once, each chat one at a time, each
answered before the next; updates/s processed = replies / elapsed.

Payloads are sealed with a random key of this run. The workflows stay in the
namespace until its retention ends: run it against a dev or test server.`,
		Example: `  source ~/.cache/agentrunner/run/services.env
  agentrunner history-cost
  agentrunner history-cost --agents echo --quiet 20 --burst 20 -o json
  agentrunner history-cost --throughput-chats 64 --throughput-messages 20`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "text" && output != "json" {
				return usageError{fmt.Errorf("-o %q: want text or json", output)}
			}
			c, err := historycost.Dial(cmd.Context(), address, namespace, g.log)
			if err != nil {
				return err
			}
			defer c.Close()
			if loadChats > 0 {
				tr, err := historycost.Throughput(cmd.Context(), historycost.Options{Client: c, IdleTimeout: idle, Timeout: timeout, Logger: g.log}, loadChats, loadMessages)
				if err != nil {
					return err
				}
				if output == "json" {
					return json.NewEncoder(cmd.OutOrStdout()).Encode(tr)
				}
				_, err = fmt.Fprintf(cmd.OutOrStdout(), "%d echo chats × %d messages, one at a time each: %d replied in %.2f s: %.1f updates/s processed\n",
					tr.Chats, loadMessages, tr.Messages, tr.ElapsedSeconds, tr.RepliesPerSec)
				return err
			}
			res, err := historycost.Run(cmd.Context(), historycost.Options{
				Client: c, Agents: strings.Split(agentList, ","), Quiet: quiet, Burst: burst,
				IdleTimeout: idle, Timeout: timeout, Logger: g.log,
			})
			if err != nil {
				return err
			}
			if output == "json" {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(res)
			}
			return historycost.WriteText(cmd.OutOrStdout(), res)
		},
	}
	f := cmd.Flags()
	f.StringVar(&address, "temporal-address", "127.0.0.1:7233", "Temporal frontend host:port")
	f.StringVar(&namespace, "temporal-namespace", "default", "Temporal namespace")
	f.StringVar(&agentList, "agents", "echo,http,openai", "agents to measure, comma-separated: echo, http, openai")
	f.IntVar(&quiet, "quiet", 20, "messages of the quiet chat, one at a time (at most 28)")
	f.IntVar(&burst, "burst", 20, "messages of the busy chat, all at once (at most 28)")
	f.DurationVar(&idle, "idle", 10*time.Second, "the chats' quiet time: each chain ends this long after its last update")
	f.DurationVar(&timeout, "timeout", 2*time.Minute, "the most one chat may take")
	f.IntVar(&loadChats, "throughput-chats", 0, "instead of counting: the end-to-end ceiling, with this many echo chats (a bot each) sending at once")
	f.IntVar(&loadMessages, "throughput-messages", 20, "with --throughput-chats: messages per chat, one at a time (at most 28)")
	f.StringVarP(&output, "output", "o", "text", "output: text or json")
	envFlag(f, "temporal-address", "TEMPORAL_ADDRESS")
	envFlag(f, "temporal-namespace", "TEMPORAL_NAMESPACE")
	return cmd
}
