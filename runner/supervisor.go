package runner

// The supervisor: it owns shards through Shards and keeps, for every active
// bot of those shards, exactly one session running in this process —
// reconciled when shards are claimed, when a bot changes (LISTEN/NOTIFY), and
// by a periodic full pass. Shard-owned writes (cursors, auth_failed) go
// through Shards.Fenced. This file holds its config, construction and Run;
// the reconcile is in supervisor_reconcile.go, the start and stop of
// sessions in supervisor_sessions.go, the cursors in supervisor_cursors.go,
// LISTEN/NOTIFY in supervisor_notify.go and per-bot status in botstatus.go.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/sessions"
)

// Tokens is what the supervisor needs of the vault token cache
// (*vault.Cache): per-bot lookups for sessions, one batch load when shards
// are claimed, and Forget when a bot leaves this replica.
type Tokens interface {
	sessions.TokenSource
	Prefetch(ctx context.Context, botIDs []string) (failed map[string]error, err error)
	Forget(botID string)
}

// Defaults of SupervisorConfig.
const (
	DefaultReconcileInterval = 30 * time.Second
	DefaultBotStopTimeout    = 5 * time.Second
	DefaultCursorFlush       = time.Second
)

// SupervisorConfig wires a Supervisor.
type SupervisorConfig struct {
	Pool     *pgxpool.Pool
	RunnerID string
	// TTL and Margin of the shard leases, and the liveness timeout (see ShardsConfig).
	TTL, Margin, LivenessTimeout time.Duration
	Client                       *buko.Client
	Tokens                       Tokens
	Handoff                      sessions.Handoff

	// DeadLetters keeps what sessions cannot hand off before they ack it
	// (a *DeadLetterStore). nil: such updates are never acked (sessions.Config).
	DeadLetters sessions.DeadLetterSink

	// ReconcileInterval is the period of the full pass (default 30 s);
	// notifications make changes take effect at once.
	ReconcileInterval time.Duration
	// BotStopTimeout bounds the drain of one bot's session when the bot is
	// paused or removed (default 5 s).
	BotStopTimeout time.Duration
	// CursorFlush is how often acked update ids are written to bot_cursors (default 1 s).
	CursorFlush time.Duration
	// Tune, if set, adjusts each session's config before it starts (tests,
	// benchmarks).
	Tune           func(*sessions.Config)
	SessionMetrics *sessions.Metrics
	Metrics        *Metrics
	Logger         zerolog.Logger
	Version        string
	AdminAddr      string
}

// Supervisor runs the sessions of the bots of the shards this replica owns.
type Supervisor struct {
	cfg       SupervisorConfig
	log       zerolog.Logger
	shards    *Shards
	leasePool *pgxpool.Pool // the lease statements' own connections
	writePool *pgxpool.Pool // fenced writes and the reconcile's reads of bots
	hc        *http.Client

	runCtx context.Context // sessions live in it; set by Run

	mu      sync.Mutex
	bots    map[string]*botRun
	byShard map[int]map[string]*botRun
	// stopping holds sessions detached from bots/byShard whose Stop has not
	// returned yet: Lost waits for them too, so no session of a lost shard
	// outlives Lost, whoever began stopping it.
	stopping map[*botRun]bool
	cursors  map[string]pendingCursor
	// pending reconcile work, processed one batch at a time by the reconcile loop
	full      bool
	newShards []Lease
	touched   map[string]bool
	work      chan struct{}
	bg        sync.WaitGroup
	status    *statusBook // per-bot session state for the admin page (botstatus.go)
}

// NewSupervisor checks cfg and builds the supervisor and its Shards, with a
// small connection pool of their own for the lease statements (closed when
// Run returns; call Run).
func NewSupervisor(cfg SupervisorConfig) (*Supervisor, error) {
	if cfg.Client == nil || cfg.Tokens == nil || cfg.Handoff == nil {
		return nil, errors.New("runner: SupervisorConfig needs Client, Tokens and Handoff")
	}
	if cfg.ReconcileInterval <= 0 {
		cfg.ReconcileInterval = DefaultReconcileInterval
	}
	if cfg.BotStopTimeout <= 0 {
		cfg.BotStopTimeout = DefaultBotStopTimeout
	}
	if cfg.CursorFlush <= 0 {
		cfg.CursorFlush = DefaultCursorFlush
	}
	s := &Supervisor{
		cfg:      cfg,
		log:      cfg.Logger.With().Str("runner_id", cfg.RunnerID).Logger(),
		hc:       sessions.NewGatewayHTTPClient(),
		bots:     map[string]*botRun{},
		byShard:  map[int]map[string]*botRun{},
		stopping: map[*botRun]bool{},
		cursors:  map[string]pendingCursor{},
		touched:  map[string]bool{},
		work:     make(chan struct{}, 1),
		status:   newStatusBook(),
	}
	if cfg.Pool == nil {
		return nil, errors.New("runner: SupervisorConfig.Pool is nil")
	}
	leasePool, writePool, err := newOwnershipPools(cfg.Pool.Config())
	if err != nil {
		return nil, err
	}
	s.leasePool, s.writePool = leasePool, writePool
	sh, err := NewShards(ShardsConfig{
		Pool: leasePool, WritePool: writePool, RunnerID: cfg.RunnerID, TTL: cfg.TTL, Margin: cfg.Margin,
		LivenessTimeout: cfg.LivenessTimeout,
		Version:         cfg.Version, AdminAddr: cfg.AdminAddr, Handler: s,
		Logger: cfg.Logger, Metrics: cfg.Metrics,
	})
	if err != nil {
		leasePool.Close()
		writePool.Close()
		return nil, err
	}
	s.shards = sh
	// The fleet gauges (active bots of the shards held, shard count) read
	// Postgres at each scrape of this replica's metrics.
	cfg.Metrics.WatchFleet(cfg.Pool, sh)
	cfg.Metrics.WatchDeadLetters(cfg.Pool)
	return s, nil
}

// Connections of the ownership pools (newOwnershipPools).
const (
	leasePoolConns = 3 // heartbeat+renew, claim or release, notify
	writePoolConns = 4 // fenced writes and the reconcile's reads of bots
)

// newOwnershipPools opens the two small pools of the ownership, copied from
// base: one for the lease statements only, one for fenced writes and the
// reconcile's reads. A busy replica (thousands of handoffs on the shared
// pool) never self-fences because its renewal waited for a connection, and
// neither do fenced writes stuck behind a slow database or a row lock
// (cursor and status flushes, auth_failed), which can take every connection
// of their own pool but none of the lease pool's. The reconcile's reads
// never queue behind handoffs or admin work on the shared pool either.
func newOwnershipPools(base *pgxpool.Config) (lease, write *pgxpool.Pool, err error) {
	lcfg := base.Copy()
	lcfg.MaxConns, lcfg.MinConns = leasePoolConns, 1
	if lease, err = pgxpool.NewWithConfig(context.Background(), lcfg); err != nil {
		return nil, nil, fmt.Errorf("runner: lease pool: %w", err)
	}
	wcfg := base.Copy()
	wcfg.MaxConns, wcfg.MinConns = writePoolConns, 1
	if write, err = pgxpool.NewWithConfig(context.Background(), wcfg); err != nil {
		lease.Close()
		return nil, nil, fmt.Errorf("runner: fenced-write pool: %w", err)
	}
	return lease, write, nil
}

// Shards is the supervisor's ownership (for status and tests).
func (s *Supervisor) Shards() *Shards { return s.shards }

// Ready reports whether the replica heartbeats and is not draining.
func (s *Supervisor) Ready() bool { return s.shards.Ready() }

// SessionInfo is one running session, for status pages and tests.
type SessionInfo struct {
	BotID string `json:"bot_id"`
	Shard int    `json:"shard"`
	Epoch int64  `json:"epoch"`
	State string `json:"state"`
}

// Sessions lists the sessions this replica runs, by bot id.
func (s *Supervisor) Sessions() []SessionInfo {
	s.mu.Lock()
	out := make([]SessionInfo, 0, len(s.bots))
	for _, b := range s.bots {
		out = append(out, SessionInfo{BotID: b.id, Shard: b.lease.Shard, Epoch: b.lease.Epoch, State: b.sess.State().String()})
	}
	s.mu.Unlock()
	slices.SortFunc(out, func(a, b SessionInfo) int { return strings.Compare(a.BotID, b.BotID) })
	return out
}

// Run supervises until ctx ends: ownership, notifications, reconcile passes
// and cursor writes. When ctx ends every session still running is stopped
// hard and the leases are released; call Drain first for a graceful exit.
func (s *Supervisor) Run(ctx context.Context) error {
	s.runCtx = ctx
	loops, stopLoops := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); s.listen(loops) }()
	go func() { defer wg.Done(); s.reconcileLoop(loops) }()
	go func() { defer wg.Done(); s.cursorLoop(loops) }()

	err := s.shards.Run(ctx) // returns after stopping and releasing what it held
	stopLoops()
	wg.Wait()
	s.bg.Wait()
	s.flushCursors(context.Background(), nil)
	s.leasePool.Close()
	s.writePool.Close()
	return err
}

// Drain stops taking shards, drains every session (in-flight handoffs
// finish, the final ack is sent, sockets close), writes the cursors, releases
// the leases and tells peers, within ctx.
func (s *Supervisor) Drain(ctx context.Context) error {
	return s.shards.Drain(ctx)
}

// RunnerID is this replica's id.
func (s *Supervisor) RunnerID() string { return s.cfg.RunnerID }

// Reconnect makes the session of bot id drop its socket and dial again, if
// this replica runs it.
func (s *Supervisor) Reconnect(id string) bool {
	s.mu.Lock()
	b := s.bots[id]
	s.mu.Unlock()
	if b == nil {
		return false
	}
	b.sess.Reconnect()
	return true
}
