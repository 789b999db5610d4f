package runner

// The configuration of a replica's ownership (ShardsConfig), its defaults and
// the NOTIFY channels the replicas and the bots triggers speak on.

import (
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"
)

// Defaults of ShardsConfig.
const (
	DefaultLeaseTTL = 15 * time.Second
	// ShardsChannel is the NOTIFY channel on which replicas announce that they
	// joined, released shards, or left, so peers rebalance at once.
	ShardsChannel = "agentrunner_shards"
	// BotsChannel is the NOTIFY channel on which the triggers of migration
	// 00002 announce every change of a bot (and of its token), so the owner
	// of its shard reconciles at once.
	BotsChannel = "agentrunner_bots"
	// staleRunnerAge is how long a dead replica's row stays in runners.
	staleRunnerAge = time.Hour
)

// ShardsConfig configures a replica's ownership.
type ShardsConfig struct {
	// Pool for the lease statements (heartbeat and renew, claim, release,
	// notify). Give it connections of its own (NewSupervisor does), so
	// renewals never queue behind bulk work such as handoffs.
	Pool *pgxpool.Pool
	// WritePool is for the fenced writes (Fenced). Default Pool; give it
	// connections of its own (NewSupervisor does), so fenced writes stuck
	// behind a slow database or a row lock can never take the connections
	// renewals need (docs/ownership.md, "Slow database").
	WritePool *pgxpool.Pool
	RunnerID  string
	// TTL of a lease (and of a heartbeat). Every replica of a fleet must use
	// the same TTL. Renewals run every TTL/3. Default DefaultLeaseTTL.
	TTL time.Duration
	// Margin before the lease's expiry at which a replica that could not renew
	// stops its sessions: deadline = last successful renew + TTL − Margin,
	// measured on the monotonic clock. Default TTL/5, at least 200 ms.
	Margin time.Duration
	// Settle is how long a replica that joins while no peer is live waits
	// before its first claim, so that replicas starting together see each
	// other instead of the first one claiming everything. A replica that
	// finds live peers claims at once. Default min(TTL/3, 1 s).
	Settle time.Duration
	// StopTimeout bounds the stopping of the sessions of released shards
	// (rebalance). Default 10 s. Drain uses the drain context instead.
	StopTimeout time.Duration
	// ReleaseParallel is how many shards a release (rebalance or drain)
	// stops at once; each is released as soon as its sessions have stopped.
	// A small number keeps each bot's gap short: only the sessions of a few
	// shards contend for the CPU at a time, and the rest stay live until
	// their turn. Self-fencing stops everything at once. Default 4.
	ReleaseParallel int
	// LivenessTimeout: a replica whose liveness scan has not succeeded for
	// this long stops every session (unless Postgres was seen down since).
	// Peers take a replica's shards early once its liveness lock has been
	// missing for LivenessTimeout + LivenessStop + 2 × LivenessScan, so every
	// replica of a fleet must use the same values. Default 1.5 s.
	LivenessTimeout time.Duration
	// LivenessStop bounds the stop of the sessions at the liveness fence.
	// Default 300 ms.
	LivenessStop time.Duration
	// LivenessScan is the period of the liveness scan (own lock confirmed,
	// peers' locks watched). Default 100 ms.
	LivenessScan time.Duration
	// NoLiveness turns the liveness lock off: takeovers wait for the lease
	// (tests of the lease path only).
	NoLiveness bool
	Version    string // shown in runners.version
	AdminAddr  string // shown in runners.admin_addr
	Handler    ShardHandler
	Logger     zerolog.Logger
	Metrics    *Metrics
}

func (c *ShardsConfig) setDefaults() error {
	if c.Pool == nil {
		return errors.New("runner: ShardsConfig.Pool is nil")
	}
	if c.RunnerID == "" || len(c.RunnerID) > 200 {
		return fmt.Errorf("runner: runner id %q: want 1 to 200 characters", c.RunnerID)
	}
	if c.Handler == nil {
		return errors.New("runner: ShardsConfig.Handler is nil")
	}
	if c.WritePool == nil {
		c.WritePool = c.Pool
	}
	if c.TTL == 0 {
		c.TTL = DefaultLeaseTTL
	}
	if c.TTL < time.Second {
		return fmt.Errorf("runner: lease TTL %s: want at least 1s", c.TTL)
	}
	if c.Margin == 0 {
		c.Margin = max(c.TTL/5, 200*time.Millisecond)
	}
	if c.Margin <= 0 || c.Margin >= c.TTL/2 {
		return fmt.Errorf("runner: fencing margin %s: want more than 0 and less than TTL/2 (%s)", c.Margin, c.TTL/2)
	}
	if c.Settle == 0 {
		c.Settle = min(c.TTL/3, time.Second)
	}
	if c.StopTimeout == 0 {
		c.StopTimeout = 10 * time.Second
	}
	if c.LivenessTimeout == 0 {
		c.LivenessTimeout = 1500 * time.Millisecond
	}
	if c.LivenessStop == 0 {
		c.LivenessStop = 300 * time.Millisecond
	}
	if c.LivenessScan == 0 {
		c.LivenessScan = 100 * time.Millisecond
	}
	if c.LivenessTimeout < 0 || c.LivenessStop < 0 || c.LivenessScan <= 0 || c.LivenessScan >= c.LivenessTimeout/2 {
		return fmt.Errorf("runner: liveness timeout %s, stop %s, scan %s: want positive values and a scan shorter than half the timeout",
			c.LivenessTimeout, c.LivenessStop, c.LivenessScan)
	}
	if c.ReleaseParallel <= 0 {
		c.ReleaseParallel = 4
	}
	return nil
}
