package soak

import (
	"context"
	"fmt"
	mrand "math/rand/v2"
	"syscall"
	"time"

	"buko.app/agentrunner/buko/sim"
)

// The faults, each injected once in the default run.
const (
	FaultReplicaKill     = "replica-kill9"
	FaultReplicaTerm     = "replica-sigterm"
	FaultWorkerKill      = "worker-kill9"
	FaultPostgres        = "postgres-restart"
	FaultTemporal        = "temporal-restart"
	FaultVaultStop       = "vault-stop"
	FaultSimDisconnects  = "sim-disconnects"
	FaultSim5xx          = "sim-5xx"
	FaultSim429          = "sim-429"
	FaultSimDuplicates   = "sim-duplicates"
	FaultSimSlowAPI      = "sim-slow-api"
	FaultSimLostResponse = "sim-lost-responses"
)

// FaultNames lists every fault.
func FaultNames() []string {
	return []string{FaultReplicaKill, FaultReplicaTerm, FaultWorkerKill, FaultPostgres, FaultTemporal, FaultVaultStop,
		FaultSimDisconnects, FaultSim5xx, FaultSim429, FaultSimDuplicates, FaultSimSlowAPI, FaultSimLostResponse}
}

// chaosOf is the simulator chaos a simulator fault turns on for its window.
// events is about how many Bot API calls and Gateway frames the window sees
// (messages a second × its length): rates are raised so that each window
// expects at least three faults, except lost responses, whose every hit is an
// ambiguous send: they expect half the run's budget of those (0.1 % of its
// messages, ambiguousLimit), spent in this one window.
func chaosOf(name string, seed uint64, events, runMessages float64) (sim.ChaosConfig, bool) {
	c := sim.ChaosConfig{Seed: seed}
	atLeast := func(base float64) float64 { return min(0.5, max(base, 3/max(1, events))) }
	switch name {
	case FaultSimDisconnects:
		c.DropConnectionRate = atLeast(0.02)
	case FaultSim5xx:
		c.Rest5xxRate = atLeast(0.1)
	case FaultSim429:
		c.Rest429Rate = atLeast(0.1) // RATE_LIMITED with retry_after 1
	case FaultSimDuplicates:
		c.DuplicateDeliveryRate = atLeast(0.1)
	case FaultSimSlowAPI:
		c.LatencyMS = 400
	case FaultSimLostResponse:
		c.ResponseLostRate = min(0.05, max(0.0005, ambiguousLimit/2*runMessages/max(1, events)))
	default:
		return c, false
	}
	return c, true
}

// faultRecord is one injected fault, as the report shows it.
type faultRecord struct {
	Name     string    `json:"name"`
	Target   string    `json:"target,omitempty"`
	At       time.Time `json:"at"`
	AtOffset float64   `json:"at_seconds"` // since traffic started
	Held     float64   `json:"held_seconds"`
	// RecoverySeconds: from the end of the fault until every bot was live
	// again and every message sent before that end had its reply.
	RecoverySeconds float64 `json:"recovery_seconds"`
	Recovered       bool    `json:"recovered"`
	During          during  `json:"during"`
	Error           string  `json:"error,omitempty"`
	healedAt        time.Time
}

// during is what the system did while the fault held.
type during struct {
	MinLiveBots    int   `json:"min_live_bots"`
	RepliesSent    int64 `json:"replies_sent"` // by bots, duplicates included
	UpdatesAcked   int64 `json:"updates_acked"`
	MaxPending     int   `json:"max_pending_updates"`
	MessagesTraded int   `json:"messages_sent_by_users"`
}

// schedule is the seeded order of the faults.
func schedule(names []string, seed uint64) []string {
	out := append([]string(nil), names...)
	rng := mrand.New(mrand.NewPCG(seed, 0xfa17))
	rng.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out
}

// inject performs one fault and holds it; it returns what it hit, the time
// the fault ended (the process restarted, the service back), and an error
// if a restart failed.
func (r *runState) inject(ctx context.Context, name string) (target string, err error) {
	s := r.s
	switch name {
	case FaultReplicaKill, FaultReplicaTerm:
		c := s.replicas[r.rng.IntN(len(s.replicas))]
		target = c.name
		if name == FaultReplicaKill {
			c.proc.kill9()
			r.hold(ctx, 3*time.Second) // a crashed pod is restarted after a moment
		} else {
			c.proc.signal(syscall.SIGTERM)
			if err := c.proc.wait(ctx, 40*time.Second); err != nil {
				c.proc.kill9()
				return target, fmt.Errorf("%s did not drain: %w", c.name, err)
			}
		}
		return target, c.proc.start()
	case FaultWorkerKill:
		s.worker.proc.kill9()
		r.hold(ctx, 3*time.Second)
		return "worker", s.worker.proc.start()
	case FaultPostgres:
		if err := s.pg.stop(ctx); err != nil {
			return "postgres", err
		}
		r.hold(ctx, 3*time.Second)
		return "postgres", s.pg.start(ctx)
	case FaultTemporal:
		s.temporal.proc.stop(30 * time.Second)
		r.hold(ctx, 3*time.Second)
		return "temporal", s.startTemporal(ctx)
	case FaultVaultStop:
		s.vault.proc.stop(10 * time.Second)
		r.hold(ctx, s.cfg.VaultOutage)
		return "vault", s.vault.start(ctx, transitMount, transitKey)
	}
	events := s.cfg.Rate * s.cfg.ChaosWindow.Seconds()
	cc, ok := chaosOf(name, s.cfg.Seed+uint64(len(r.faults)), events, s.cfg.Rate*s.cfg.Duration.Seconds())
	if !ok {
		return "", fmt.Errorf("unknown fault %q", name)
	}
	if _, err := s.control.SetChaos(ctx, cc); err != nil {
		return "simulator", err
	}
	r.hold(ctx, s.cfg.ChaosWindow)
	_, err = s.control.SetChaos(context.WithoutCancel(ctx), sim.ChaosConfig{})
	return "simulator", err
}

// hold waits d unless ctx ends.
func (r *runState) hold(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
