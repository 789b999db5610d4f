package soak

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"buko.app/agentrunner/buko/sim"
)

// Report is the soak's result, printed as a table or as JSON.
type Report struct {
	Passed         bool                    `json:"passed"`
	Config         map[string]any          `json:"config"`
	TrafficSeconds float64                 `json:"traffic_seconds"`
	DrainSeconds   float64                 `json:"drain_seconds"` // after traffic stopped, until every message had its reply
	DrainError     string                  `json:"drain_error,omitempty"`
	TrafficError   string                  `json:"traffic_error,omitempty"`
	Faults         []*faultRecord          `json:"faults"`
	Totals         totals                  `json:"totals"`
	Ambiguous      ambiguous               `json:"ambiguous_sends"`
	Invariants     []invariant             `json:"invariants"`
	Resources      map[string][2]resources `json:"resources"` // replica → [before faults, after quiet]
	Behaviour      map[string]string       `json:"behaviour_while_down"`
	Sim            sim.Stats               `json:"simulator"`
	WorkDir        string                  `json:"work_dir,omitempty"`
}

type totals struct {
	Accepted   int `json:"accepted_messages"`
	Replies    int `json:"answered_messages"`
	Lost       int `json:"lost"`
	Duplicates int `json:"unexplained_duplicates"`
}

type ambiguous struct {
	Count    int            `json:"count"`
	Share    float64        `json:"share"`
	Causes   map[string]int `json:"causes"`
	Examples []string       `json:"examples,omitempty"`
}

// invariant is one checked promise, with up to five examples of its failure.
type invariant struct {
	Name     string   `json:"name"`
	Passed   bool     `json:"passed"`
	Failures int      `json:"failures"`
	Examples []string `json:"examples,omitempty"`
}

func (inv *invariant) fail(example string) {
	inv.Failures++
	if len(inv.Examples) < 5 {
		inv.Examples = append(inv.Examples, example)
	}
}

func (r *Report) allPassed() bool {
	for _, inv := range r.Invariants {
		if !inv.Passed {
			return false
		}
	}
	return len(r.Invariants) > 0 && r.DrainError == "" && r.TrafficError == ""
}

// start is when traffic began (the first fault's time less its offset).
func (r *Report) start(faults []*faultRecord) time.Time {
	if len(faults) == 0 {
		return time.Time{}
	}
	return faults[0].At.Add(-time.Duration(faults[0].AtOffset * float64(time.Second)))
}

func reportConfig(c Config) map[string]any {
	return map[string]any{
		"duration": c.Duration.String(), "bots": c.Bots, "chats": c.Chats, "groups": c.Groups, "rate_per_second": c.Rate,
		"seed": c.Seed, "quiet": c.Quiet.String(), "faults": c.Faults, "vault_outage": c.VaultOutage.String(),
		"chaos_window": c.ChaosWindow.String(), "replicas": c.Replicas, "lease_ttl": c.LeaseTTL.String(),
		"temporal_history_shards": c.TemporalShards,
	}
}

// behaviour is what each component is designed to do while a dependency is
// down (docs/soak.md); the report's per-fault figures show it happening.
func behaviour() map[string]string {
	return map[string]string{
		FaultVaultStop:    "live sessions keep running on tokens cached in memory (token cache TTL 1h); the worker sends with its cached tokens; only a session that must open a token it does not hold (a replica started or a shard claimed during the outage) waits until Vault answers",
		FaultTemporal:     "sessions keep their sockets but stop acking: a handoff that Temporal does not record is retried with back-off and Buko keeps the updates; nothing is held that is not handed off; the worker's pollers reconnect",
		FaultPostgres:     "replicas keep their sessions while renewals retry within the lease TTL (a replica that cannot renew in time fences itself); cursor writes retry; the worker's activities that read bots or chat marks fail and are retried by Temporal",
		FaultWorkerKill:   "sessions keep handing off and acking (Temporal holds the updates); replies wait until a worker polls again; an activity that had sent but not completed is retried (an ambiguous send)",
		FaultReplicaKill:  "its sockets drop at once; its leases expire after the TTL and peers claim the shards and reconnect its bots; unacked updates are redelivered and deduped by the chat workflow",
		FaultReplicaTerm:  "it drains: finishes in-flight handoffs, acks, closes its sockets and releases its leases, so peers take over at once",
		"simulator chaos": "dropped sockets reconnect with back-off; 5xx and lost responses are retried; 429 waits retry_after; duplicate frames are dropped by the workflow's watermark; slow calls only slow replies",
	}
}

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteTable writes the report for people.
func (r *Report) WriteTable(w io.Writer) error {
	verdict := "PASS"
	if !r.Passed {
		verdict = "FAIL"
	}
	fmt.Fprintf(w, "soak %s: %d bots, %d chats, %.0f s of traffic at %v msg/s, seed %v\n\n",
		verdict, r.Config["bots"], r.Config["chats"], r.TrafficSeconds, r.Config["rate_per_second"], r.Config["seed"])
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "fault\ttarget\tat (s)\theld (s)\trecovery (s)\tmin live\treplies during\tacks during\tmax pending\t")
	for _, f := range r.Faults {
		rec := fmt.Sprintf("%.1f", f.RecoverySeconds)
		if !f.Recovered {
			rec = "NO: " + f.Error
		}
		fmt.Fprintf(tw, "%s\t%s\t%.0f\t%.1f\t%s\t%d\t%d\t%d\t%d\t\n", f.Name, f.Target, f.AtOffset, f.Held, rec,
			f.During.MinLiveBots, f.During.RepliesSent, f.During.UpdatesAcked, f.During.MaxPending)
	}
	_ = tw.Flush()
	fmt.Fprintf(w, "\nmessages accepted %d, answered %d, lost %d, unexplained duplicates %d; ambiguous sends %d (%.3f%%) %v\n",
		r.Totals.Accepted, r.Totals.Replies, r.Totals.Lost, r.Totals.Duplicates, r.Ambiguous.Count, r.Ambiguous.Share*100, r.Ambiguous.Causes)
	fmt.Fprintf(w, "drained %.1f s after traffic stopped; simulator: max sockets per bot %d, %d gateway connections, %d redelivered, chaos %+v\n\n",
		r.DrainSeconds, r.Sim.MaxConcurrentGatewayPerBot, r.Sim.GatewayConnections, r.Sim.UpdatesRedelivered, r.Sim.Chaos)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "replica\tsessions before\tafter\tgoroutines before\tafter\tRSS MiB before\tafter\t")
	names := make([]string, 0, len(r.Resources))
	for name := range r.Resources {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		ba := r.Resources[name]
		fmt.Fprintf(tw, "%s\t%.0f\t%.0f\t%.0f\t%.0f\t%.1f\t%.1f\t\n", name, ba[0].Sessions, ba[1].Sessions, ba[0].Goroutines, ba[1].Goroutines, ba[0].RSSBytes/(1<<20), ba[1].RSSBytes/(1<<20))
	}
	_ = tw.Flush()
	fmt.Fprintln(w)
	for _, inv := range r.Invariants {
		mark := "pass"
		if !inv.Passed {
			mark = "FAIL"
		}
		fmt.Fprintf(w, "[%s] %s\n", mark, inv.Name)
		for _, e := range inv.Examples {
			fmt.Fprintf(w, "         %s\n", e)
		}
	}
	for _, e := range []string{r.DrainError, r.TrafficError} {
		if e != "" {
			fmt.Fprintf(w, "[FAIL] %s\n", e)
		}
	}
	if r.WorkDir != "" {
		fmt.Fprintf(w, "\nlogs and data kept in %s\n", r.WorkDir)
	}
	_, err := fmt.Fprintln(w, strings.Repeat("-", 8))
	return err
}
