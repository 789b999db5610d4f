package soak

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/rs/zerolog"
)

// Config is one soak run. Zero fields take the defaults of Defaults.
type Config struct {
	Bin      string        // the agentrunner binary run as replicas and worker
	Duration time.Duration // how long traffic runs; the faults are spread over it
	Bots     int
	Chats    int     // private chats and groups, over all bots
	Groups   float64 // share of the chats that are groups
	Rate     float64 // user messages per second, over all chats
	Seed     uint64  // fault schedule, chat picks and simulator chaos
	Quiet    time.Duration
	Faults   []string // fault names (FaultNames); nil: all
	// VaultOutage is how long Vault stays stopped; ChaosWindow how long each
	// simulator fault stays on; RecoveryLimit the most a fault may take to heal.
	VaultOutage, ChaosWindow, RecoveryLimit time.Duration
	// StartLimit bounds the first start: every bot live and every /start
	// answered (thousands of chat workflows at once on a busy machine).
	StartLimit time.Duration
	Replicas   int
	LeaseTTL   time.Duration

	WorkDir  string // "" a temporary folder, removed unless KeepWorkDir
	KeepWork bool
	PGBinDir string // initdb and pg_ctl

	TemporalServerBin, TemporalSQLTool, TemporalSchemaDir string
	TemporalPG                                            string // host:port of the Postgres holding Temporal's databases
	TemporalShards                                        int
	VaultBin                                              string

	Progress io.Writer      // the progress line (nil: none)
	Log      zerolog.Logger // the soak's own events (faults, phases)
}

// Defaults fits this machine (2 cores, shared): 200 bots, 2,000 chats, 3
// messages a second (about 1 a minute per bot, 10 for the bots of the hot
// chats, far under the official tier's 120); the whole stack on SQL answered
// about 4 messages a second here under a load of 15.
func Defaults() Config {
	return Config{
		Duration: 10 * time.Minute, Bots: 200, Chats: 2000, Groups: 0.2, Rate: 3, Seed: 1,
		Quiet: 30 * time.Second, VaultOutage: 35 * time.Second, ChaosWindow: 20 * time.Second,
		RecoveryLimit: 3 * time.Minute, StartLimit: 15 * time.Minute, Replicas: 3, LeaseTTL: 10 * time.Second,
		PGBinDir: "/usr/lib/postgresql/15/bin", TemporalPG: "127.0.0.1:5432", TemporalShards: 4,
	}
}

// perBotMessagesPerMinute is the official tier's sendMessage quota (spec §10).
const perBotMessagesPerMinute = 120

func (c *Config) fill() {
	d := Defaults()
	set := func(dst *time.Duration, v time.Duration) {
		if *dst == 0 {
			*dst = v
		}
	}
	set(&c.Duration, d.Duration)
	set(&c.Quiet, d.Quiet)
	set(&c.VaultOutage, d.VaultOutage)
	set(&c.ChaosWindow, d.ChaosWindow)
	set(&c.RecoveryLimit, d.RecoveryLimit)
	set(&c.StartLimit, d.StartLimit)
	set(&c.LeaseTTL, d.LeaseTTL)
	for _, p := range []struct {
		dst *int
		v   int
	}{{&c.Bots, d.Bots}, {&c.Chats, d.Chats}, {&c.Replicas, d.Replicas}, {&c.TemporalShards, d.TemporalShards}} {
		if *p.dst == 0 {
			*p.dst = p.v
		}
	}
	if c.Rate == 0 {
		c.Rate = d.Rate
	}
	if c.Seed == 0 {
		c.Seed = d.Seed
	}
	if c.PGBinDir == "" {
		c.PGBinDir = d.PGBinDir
	}
	if c.TemporalPG == "" {
		c.TemporalPG = d.TemporalPG
	}
	if c.Faults == nil {
		c.Faults = FaultNames()
	}
}

// check refuses a configuration that cannot run, saying which setting.
func (c *Config) check() error {
	var errs []error
	if c.Bin == "" {
		errs = append(errs, errors.New("no agentrunner binary"))
	}
	if c.Bots < 1 || c.Chats < c.Bots {
		errs = append(errs, fmt.Errorf("--bots %d --chats %d: want at least one bot and one chat per bot", c.Bots, c.Chats))
	}
	if c.Groups < 0 || c.Groups > 1 {
		errs = append(errs, fmt.Errorf("--groups %g: want a share between 0 and 1", c.Groups))
	}
	if c.Rate <= 0 {
		errs = append(errs, fmt.Errorf("--rate %g: want a positive rate", c.Rate))
	} else if perBot := c.busiestBotPerMinute(); perBot > perBotMessagesPerMinute/2 {
		errs = append(errs, fmt.Errorf("--rate %g over %d bots and %d chats is %.0f replies a minute for the busiest bot: keep it under half the quota (%d)", c.Rate, c.Bots, c.Chats, perBot, perBotMessagesPerMinute/2))
	}
	if c.Duration < 30*time.Second {
		errs = append(errs, fmt.Errorf("--duration %s: want at least 30s", c.Duration))
	}
	if c.Replicas < 2 {
		errs = append(errs, fmt.Errorf("--replicas %d: want at least 2 (a takeover needs a peer)", c.Replicas))
	}
	if c.VaultOutage < 30*time.Second && slices.Contains(c.Faults, FaultVaultStop) {
		errs = append(errs, fmt.Errorf("--vault-outage %s: want at least 30s", c.VaultOutage))
	}
	for _, f := range c.Faults {
		if !slices.Contains(FaultNames(), f) {
			errs = append(errs, fmt.Errorf("--faults: unknown fault %q (known: %v)", f, FaultNames()))
		}
	}
	for name, p := range map[string]string{"--temporal-server-bin": c.TemporalServerBin, "--temporal-sql-tool": c.TemporalSQLTool, "--vault-bin": c.VaultBin,
		"--pg-bin-dir initdb": filepath.Join(c.PGBinDir, "initdb")} {
		if p == "" {
			errs = append(errs, fmt.Errorf("%s is not set (source ~/.cache/agentrunner/run/services.env after make services)", name))
		} else if _, err := os.Stat(p); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
		}
	}
	if c.TemporalSchemaDir == "" {
		errs = append(errs, errors.New("--temporal-schema-dir is not set (AGENTRUNNER_TEMPORAL_SCHEMA_DIR from services.env)"))
	}
	return errors.Join(errs...)
}

// busiestBotPerMinute is the reply rate of a bot with a hot chat (traffic
// sends a third of the messages to the first 1 % of the chats, one per bot).
func (c *Config) busiestBotPerMinute() float64 {
	hot := min(c.Bots, max(1, c.Chats/100))
	return c.Rate*60/float64(c.Bots) + c.Rate*60/3/float64(hot)
}
