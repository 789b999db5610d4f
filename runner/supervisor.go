package runner

// The supervisor: it owns shards through Shards and keeps, for every active
// bot of those shards, exactly one session running in this process —
// reconciled when shards are claimed, when a bot changes (LISTEN/NOTIFY), and
// by a periodic full pass. Shard-owned writes (cursors, auth_failed) go
// through Shards.Fenced.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/sessions"
	"buko.app/agentrunner/vault"
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
	// TTL and Margin of the shard leases (see ShardsConfig).
	TTL, Margin time.Duration
	Client      *buko.Client
	Tokens      Tokens
	Handoff     sessions.Handoff

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
	status    *statusBook // per-bot session state for the admin page (admin_state.go)
}

type botRun struct {
	id       string
	lease    Lease
	delivery string
	sess     *sessions.Session
	cancel   context.CancelFunc // ends the session hard
}

type pendingCursor struct {
	lease Lease
	id    buko.UpdateID
}

// botRow is one bot as the reconcile sees it.
type botRow struct {
	id, status, delivery string
	shard                int
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
		Version: cfg.Version, AdminAddr: cfg.AdminAddr, Handler: s,
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

// ---- ShardHandler ----

// Acquired queues the newly claimed shards for a reconcile pass.
func (s *Supervisor) Acquired(_ context.Context, leases []Lease) {
	s.log.Debug().Ints("shards", leaseShards(leases)).Msg("acquired: reconcile queued")
	s.mu.Lock()
	s.newShards = append(s.newShards, leases...)
	s.mu.Unlock()
	s.kick()
}

// Lost stops every session of the shards, in parallel, within ctx; for a
// release or drain it then writes their last cursors while the leases are
// still held.
func (s *Supervisor) Lost(ctx context.Context, leases []Lease, reason string) {
	var runs, others []*botRun
	lost := map[Lease]bool{}
	for _, l := range leases {
		lost[l] = true
	}
	s.mu.Lock()
	for _, l := range leases {
		for _, b := range s.byShard[l.Shard] {
			if b.lease == l {
				runs = append(runs, b)
			}
		}
	}
	for _, b := range runs {
		s.detachLocked(b)
	}
	for b := range s.stopping {
		if lost[b.lease] && !slices.Contains(runs, b) {
			others = append(others, b) // being stopped by a reconcile: wait for it too
		}
	}
	s.mu.Unlock()
	start := time.Now()
	var wg sync.WaitGroup
	for _, b := range others {
		wg.Add(1)
		go func() { defer wg.Done(); s.stopSession(ctx, b) }()
	}
	s.stopAll(ctx, runs, reason)
	wg.Wait()
	if reason == LossReleased || reason == LossDrained {
		shards := map[int]bool{}
		for _, l := range leases {
			shards[l.Shard] = true
		}
		s.flushCursors(ctx, shards)
	}
	s.dropCursors(leases)
	for _, b := range runs {
		s.cfg.Tokens.Forget(b.id)
	}
	if len(runs) > 0 {
		ev := s.log.Debug()
		if reason == LossFenced || reason == LossStolen {
			ev = s.log.Warn()
		}
		ev.Str("reason", reason).Int("sessions", len(runs)).Ints("shards", leaseShards(leases)).
			Dur("took", time.Since(start)).Msg("stopped the sessions of lost shards")
	}
}

// stopAll drains runs (detached by the caller) in parallel within ctx and
// forgets them.
func (s *Supervisor) stopAll(ctx context.Context, runs []*botRun, reason string) {
	var wg sync.WaitGroup
	for _, b := range runs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.stopSession(ctx, b)
			s.cfg.Metrics.sessionStopped(reason)
			s.mu.Lock()
			delete(s.stopping, b)
			s.mu.Unlock()
		}()
	}
	wg.Wait()
}

// ---- reconcile ----

func (s *Supervisor) kick() {
	select {
	case s.work <- struct{}{}:
	default:
	}
}

// requestFull asks for a full pass.
func (s *Supervisor) requestFull() {
	s.mu.Lock()
	s.full = true
	s.mu.Unlock()
	s.kick()
}

// touch asks for a reconcile of individual bots (after notifications).
func (s *Supervisor) touch(ids ...string) {
	s.mu.Lock()
	for _, id := range ids {
		s.touched[id] = true
	}
	s.mu.Unlock()
	s.kick()
}

func (s *Supervisor) reconcileLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.ReconcileInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.requestFull()
			continue
		case <-s.work:
		}
		for ctx.Err() == nil {
			s.mu.Lock()
			full, shards, touched := s.full, s.newShards, s.touched
			s.full, s.newShards = false, nil
			if len(touched) > 0 {
				s.touched = map[string]bool{}
			} else {
				touched = nil
			}
			s.mu.Unlock()
			var err error
			switch {
			case full:
				err = s.reconcileFull(ctx)
			case len(shards) > 0:
				err = s.reconcileShards(ctx, shards)
			case len(touched) > 0:
				err = s.reconcileBots(ctx, touched)
			}
			if err != nil && ctx.Err() == nil {
				s.log.Warn().Err(err).Msg("reconcile failed; the next full pass retries")
				// Keep the work: a full pass covers it.
				s.mu.Lock()
				s.full = true
				s.mu.Unlock()
				select {
				case <-ctx.Done():
				case <-time.After(time.Second):
				}
				continue
			}
			if !full && len(shards) == 0 && len(touched) == 0 {
				break
			}
		}
	}
}

// reconcileFull makes the sessions match every active bot of every active lease.
func (s *Supervisor) reconcileFull(ctx context.Context) error {
	s.cfg.Metrics.reconciled("full")
	// Bots of every held shard, those being released included (their
	// sessions are Lost's to stop), but new sessions only on active leases.
	rows, err := s.queryBots(ctx, `SELECT id, status, delivery, shard FROM bots WHERE shard = ANY($1)`, leaseShardsInt32(s.shards.Held()))
	if err != nil {
		return err
	}
	byShard := map[int]Lease{}
	for _, l := range s.activeLeases() {
		byShard[l.Shard] = l
	}
	desired := map[string]botRow{}
	for _, r := range rows {
		if r.status == StatusActive {
			desired[r.id] = r
		}
	}
	var stop []*botRun
	s.mu.Lock()
	for id, b := range s.bots {
		if d, ok := desired[id]; !ok || d.delivery != b.delivery || s.shards.Holds(b.lease) != nil {
			stop = append(stop, b)
			s.detachLocked(b)
		}
	}
	s.mu.Unlock()
	s.stopBots(ctx, stop)
	return s.startBots(ctx, desired, byShard)
}

// reconcileShards starts the active bots of newly claimed shards.
func (s *Supervisor) reconcileShards(ctx context.Context, leases []Lease) error {
	s.cfg.Metrics.reconciled("shards")
	byShard := map[int]Lease{}
	for _, l := range leases {
		if s.shards.Active(l) {
			byShard[l.Shard] = l
		}
	}
	if len(byShard) == 0 {
		return nil
	}
	shards := make([]int32, 0, len(byShard))
	for sh := range byShard {
		shards = append(shards, int32(sh))
	}
	t0 := time.Now()
	rows, err := s.queryBots(ctx, `SELECT id, status, delivery, shard FROM bots WHERE shard = ANY($1) AND status = 'active'`, shards)
	if err != nil {
		return err
	}
	s.log.Debug().Int("shards", len(shards)).Int("bots", len(rows)).Dur("query", time.Since(t0)).Msg("reconcile claimed shards")
	desired := map[string]botRow{}
	for _, r := range rows {
		desired[r.id] = r
	}
	return s.startBots(ctx, desired, byShard)
}

// reconcileBots re-reads the named bots and starts or stops their sessions.
func (s *Supervisor) reconcileBots(ctx context.Context, touched map[string]bool) error {
	s.cfg.Metrics.reconciled("bot")
	ids := make([]string, 0, len(touched))
	for id := range touched {
		ids = append(ids, id)
	}
	rows, err := s.queryBots(ctx, `SELECT id, status, delivery, shard FROM bots WHERE id = ANY($1)`, ids)
	if err != nil {
		return err
	}
	found := map[string]botRow{}
	for _, r := range rows {
		found[r.id] = r
	}
	byShard := map[int]Lease{}
	for _, l := range s.activeLeases() {
		byShard[l.Shard] = l
	}
	desired := map[string]botRow{}
	var stop []*botRun
	s.mu.Lock()
	for _, id := range ids {
		r, ok := found[id]
		want := ok && r.status == StatusActive
		if want {
			if _, owned := byShard[r.shard]; !owned {
				want = false
			}
		}
		b := s.bots[id]
		if b != nil && (!ok || r.status != StatusActive || b.delivery != r.delivery || s.shards.Holds(b.lease) != nil) {
			stop = append(stop, b)
			s.detachLocked(b)
			b = nil
		}
		if want && b == nil {
			desired[id] = r
		}
	}
	s.mu.Unlock()
	s.stopBots(ctx, stop)
	return s.startBots(ctx, desired, byShard)
}

func (s *Supervisor) activeLeases() []Lease {
	var out []Lease
	for _, l := range s.shards.Held() {
		if s.shards.Active(l) {
			out = append(out, l)
		}
	}
	return out
}

func (s *Supervisor) queryBots(ctx context.Context, sql string, arg any) ([]botRow, error) {
	qctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	rows, err := s.writePool.Query(qctx, sql, arg)
	if err != nil {
		return nil, fmt.Errorf("runner: read bots: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (botRow, error) {
		var b botRow
		err := r.Scan(&b.id, &b.status, &b.delivery, &b.shard)
		return b, err
	})
	if err != nil {
		return nil, fmt.Errorf("runner: read bots: %w", err)
	}
	return out, nil
}

// detachLocked moves b from the running sessions to the stopping ones; the
// caller stops it (stopAll).
func (s *Supervisor) detachLocked(b *botRun) {
	delete(s.bots, b.id)
	if m := s.byShard[b.lease.Shard]; m != nil {
		delete(m, b.id)
		if len(m) == 0 {
			delete(s.byShard, b.lease.Shard)
		}
	}
	s.stopping[b] = true
}

// stopSession drains b's session within ctx; if ctx ends first (or another
// Stop with more patience is draining it), the session is ended hard, and
// stopSession returns once it is torn down.
func (s *Supervisor) stopSession(ctx context.Context, b *botRun) {
	defer b.cancel() // releases the session's context in every case
	if err := b.sess.Stop(ctx); err == nil {
		return
	}
	b.cancel()
	wctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := b.sess.Stop(wctx); err != nil {
		s.log.Warn().Err(err).Str("bot_id", b.id).Msg("session did not end after a hard stop")
	}
	s.log.Debug().Str("bot_id", b.id).Msg("session stopped hard")
}

// stopBots drains the sessions of bots that are no longer wanted here (paused,
// removed, moved), each within BotStopTimeout, and writes their cursors.
func (s *Supervisor) stopBots(ctx context.Context, runs []*botRun) {
	if len(runs) == 0 {
		return
	}
	sctx, cancel := context.WithTimeout(ctx, s.cfg.BotStopTimeout)
	defer cancel()
	s.stopAll(sctx, runs, "inactive")
	for _, b := range runs {
		s.cfg.Tokens.Forget(b.id)
		s.log.Info().Str("bot_id", b.id).Int("shard", b.lease.Shard).Msg("session stopped: bot not active here")
	}
}

// startBots starts a session for every bot of desired that has none, after
// loading their tokens in one batch. A bot starts only while its lease is
// active (checked under the lock that Lost takes).
func (s *Supervisor) startBots(ctx context.Context, desired map[string]botRow, leases map[int]Lease) error {
	var ids []string
	s.mu.Lock()
	for id := range desired {
		if s.bots[id] == nil {
			ids = append(ids, id)
		}
	}
	s.mu.Unlock()
	if len(ids) == 0 {
		return nil
	}
	slices.Sort(ids)
	start := time.Now()
	failed, err := s.cfg.Tokens.Prefetch(ctx, ids)
	s.cfg.Metrics.tokensLoaded(time.Since(start))
	s.log.Debug().Int("bots", len(ids)).Dur("took", time.Since(start)).Msg("tokens loaded")
	if err != nil {
		// Sessions load their tokens themselves (and retry); start them anyway.
		s.log.Warn().Err(err).Int("bots", len(ids)).Msg("batch token load failed; sessions will load their tokens one by one")
	}
	for id, ferr := range failed {
		s.log.Warn().Str("bot_id", id).Err(ferr).Msg("token load failed")
	}
	started := 0
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range ids {
		r := desired[id]
		l, ok := leases[r.shard]
		if !ok || s.bots[id] != nil || s.runCtx.Err() != nil || !s.shards.Active(l) {
			continue
		}
		if ferr := failed[id]; ferr != nil && errors.Is(ferr, vault.ErrNotFound) {
			continue // removed meanwhile: a notification follows
		}
		b := &botRun{id: id, lease: l, delivery: r.delivery}
		sctx, cancel := context.WithCancel(s.runCtx)
		sess, err := sessions.Start(sctx, s.sessionConfig(b))
		if err != nil {
			cancel()
			s.log.Error().Err(err).Str("bot_id", id).Msg("cannot start session")
			continue
		}
		b.cancel = cancel
		b.sess = sess
		s.bots[id] = b
		if s.byShard[l.Shard] == nil {
			s.byShard[l.Shard] = map[string]*botRun{}
		}
		s.byShard[l.Shard][id] = b
		s.cfg.Metrics.sessionStarted()
		started++
	}
	if started > 0 {
		s.log.Info().Int("sessions", started).Int("running", len(s.bots)).Dur("took", time.Since(start)).Msg("started sessions")
	}
	return nil
}

func (s *Supervisor) sessionConfig(b *botRun) sessions.Config {
	log := s.cfg.Logger.With().Str("runner_id", s.cfg.RunnerID).Str("bot_id", b.id).
		Int("shard", b.lease.Shard).Int64("epoch", b.lease.Epoch).Logger()
	cfg := sessions.Config{
		BotID:      b.id,
		Delivery:   b.delivery,
		Client:     s.cfg.Client,
		Tokens:     s.cfg.Tokens,
		Handoff:    s.cfg.Handoff,
		Logger:     log,
		Metrics:    s.cfg.SessionMetrics,
		HTTPClient: s.hc,
		OnAcked:    func(id buko.UpdateID) { s.noteAck(b, id) },
		OnAuthFailed: func() {
			s.bg.Add(1)
			go func() { defer s.bg.Done(); s.authFailed(b) }()
		},
		OnState: func(st sessions.State, cause string) {
			s.status.record(b.id, b.lease, st, cause)
			if st == sessions.StateLive {
				log.Debug().Msg("session live")
			} else if st == sessions.StateStopped {
				log.Debug().Str("cause", cause).Msg("session stopped")
			}
		},
	}
	cfg.DeadLetters = s.cfg.DeadLetters
	if s.cfg.Tune != nil {
		s.cfg.Tune(&cfg)
	}
	return cfg
}

// ---- shard-owned writes ----

func (s *Supervisor) noteAck(b *botRun, id buko.UpdateID) {
	s.mu.Lock()
	s.cursors[b.id] = pendingCursor{lease: b.lease, id: id}
	s.mu.Unlock()
}

func (s *Supervisor) dropCursors(leases []Lease) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, c := range s.cursors {
		for _, l := range leases {
			if c.lease == l {
				delete(s.cursors, id)
			}
		}
	}
}

func (s *Supervisor) cursorLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.CursorFlush)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.flushCursors(ctx, nil)
			s.flushStatus(ctx)
		}
	}
}

const cursorSQL = `
INSERT INTO bot_cursors AS c (bot_id, acked_update_id, shard, owner, epoch, updated_at)
SELECT u.bot_id, u.acked, $3, $4, $5, now()
FROM unnest($1::text[], $2::text[]) AS u(bot_id, acked)
JOIN bots b ON b.id = u.bot_id
ON CONFLICT (bot_id) DO UPDATE SET acked_update_id = excluded.acked_update_id,
	shard = excluded.shard, owner = excluded.owner, epoch = excluded.epoch, updated_at = now()
WHERE length(excluded.acked_update_id) > length(c.acked_update_id)
	OR (length(excluded.acked_update_id) = length(c.acked_update_id)
		AND excluded.acked_update_id COLLATE "C" > c.acked_update_id COLLATE "C")`

// flushCursors writes pending acked ids to bot_cursors, one fenced
// transaction per shard; only shards in only (nil: all) are written.
func (s *Supervisor) flushCursors(ctx context.Context, only map[int]bool) {
	s.mu.Lock()
	groups := map[Lease][]string{}
	for id, c := range s.cursors {
		if only != nil && !only[c.lease.Shard] {
			continue
		}
		groups[c.lease] = append(groups[c.lease], id)
	}
	batch := map[Lease][]pendingCursor{}
	for l, ids := range groups {
		for _, id := range ids {
			batch[l] = append(batch[l], s.cursors[id])
			delete(s.cursors, id)
		}
	}
	s.mu.Unlock()
	for l, ids := range groups {
		cs := batch[l]
		acked := make([]string, len(cs))
		for i, c := range cs {
			acked[i] = string(c.id)
		}
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		err := s.shards.Fenced(wctx, l, func(ctx context.Context, tx pgx.Tx) error {
			_, err := tx.Exec(ctx, cursorSQL, ids, acked, l.Shard, s.cfg.RunnerID, l.Epoch)
			return err
		})
		cancel()
		if err != nil {
			if errors.Is(err, ErrFenced) {
				s.log.Debug().Err(err).Int("bots", len(ids)).Msg("cursor write fenced off")
				continue
			}
			s.log.Warn().Err(err).Int("shard", l.Shard).Msg("cursor write failed; retrying later")
			s.mu.Lock()
			for i, id := range ids {
				if _, newer := s.cursors[id]; !newer {
					s.cursors[id] = cs[i]
				}
			}
			s.mu.Unlock()
		}
	}
}

// authFailed marks the bot auth_failed (a fenced write, audited) and forgets
// its session, which has already ended.
func (s *Supervisor) authFailed(b *botRun) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(s.runCtx), 10*time.Second)
	defer cancel()
	err := s.shards.Fenced(ctx, b.lease, func(ctx context.Context, tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE bots SET status = 'auth_failed', updated_at = now()
			WHERE id = $1 AND shard = $2 AND status = 'active'`, b.id, b.lease.Shard)
		if err != nil || tag.RowsAffected() == 0 {
			return err // (the bots trigger announces the change)
		}
		return vault.Audit(ctx, tx, vault.AuditEntry{
			Actor: "runner:" + s.cfg.RunnerID, Action: "bot.auth_failed", BotID: b.id,
			Detail: map[string]any{"shard": b.lease.Shard, "epoch": b.lease.Epoch},
		})
	})
	if err != nil {
		s.log.Warn().Err(err).Str("bot_id", b.id).Msg("could not mark the bot auth_failed")
	} else {
		s.log.Warn().Str("bot_id", b.id).Msg("bot marked auth_failed after repeated 401s; fix with `agentrunner bots rotate-token`")
	}
	s.mu.Lock()
	stop := s.bots[b.id] == b
	if stop {
		s.detachLocked(b)
	}
	s.mu.Unlock()
	if stop {
		sctx, cancel := context.WithTimeout(ctx, s.cfg.BotStopTimeout)
		defer cancel()
		s.stopAll(sctx, []*botRun{b}, StatusAuthFailed)
	}
}

// ---- notifications ----

// botEvent is a NOTIFY payload on BotsChannel: the registry sends the bare
// bot id; the triggers of migration 00002 send this JSON.
type botEvent struct {
	Op    string `json:"op"`
	BotID string `json:"bot_id"`
	Shard *int   `json:"shard"`
}

func (s *Supervisor) onBotNotification(payload string) {
	ev := botEvent{BotID: payload}
	if strings.HasPrefix(payload, "{") {
		if err := json.Unmarshal([]byte(payload), &ev); err != nil {
			s.log.Debug().Err(err).Msg("unreadable bots notification; full pass")
			s.requestFull()
			return
		}
	}
	if ev.BotID == "" {
		return
	}
	if ev.Op == "token" {
		s.cfg.Tokens.Invalidate(ev.BotID)
		return
	}
	if ev.Op == OpReconnect { // the admin API of another replica (admin.go)
		s.Reconnect(ev.BotID)
		return
	}
	if ev.Shard != nil {
		// Only the owner of the shard (or the runner of the bot) cares.
		s.mu.Lock()
		_, running := s.bots[ev.BotID]
		s.mu.Unlock()
		if !running && !s.holdsShard(*ev.Shard) {
			return
		}
	}
	s.touch(ev.BotID)
}

func (s *Supervisor) holdsShard(shard int) bool {
	for _, l := range s.shards.Held() {
		if l.Shard == shard {
			return true
		}
	}
	return false
}

// listen keeps one connection LISTENing on the bots and shards channels,
// reconnecting (and asking for a full pass, since notifications may have been
// missed) whenever it breaks.
func (s *Supervisor) listen(ctx context.Context) {
	first := true
	for ctx.Err() == nil {
		err := s.listenOnce(ctx, first)
		first = false
		if ctx.Err() != nil {
			return
		}
		s.log.Warn().Err(err).Msg("notification connection lost; reconnecting")
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

func (s *Supervisor) listenOnce(ctx context.Context, first bool) error {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	conn, err := pgx.ConnectConfig(cctx, s.cfg.Pool.Config().ConnConfig.Copy())
	cancel()
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = conn.Close(cctx)
	}()
	if _, err := conn.Exec(ctx, `LISTEN `+BotsChannel+`; LISTEN `+ShardsChannel); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	if !first {
		s.requestFull()
		s.shards.Wake()
	}
	idle := max(s.cfg.TTL, 5*time.Second)
	for {
		wctx, cancel := context.WithTimeout(ctx, idle)
		n, err := conn.WaitForNotification(wctx)
		cancel()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			if !errors.Is(err, context.DeadlineExceeded) {
				return fmt.Errorf("wait: %w", err)
			}
			// Quiet for a while: make sure the connection still answers.
			pctx, cancel := context.WithTimeout(ctx, max(s.cfg.TTL/3, time.Second))
			err := conn.Ping(pctx)
			cancel()
			if err != nil {
				return fmt.Errorf("ping: %w", err)
			}
			continue
		}
		switch n.Channel {
		case BotsChannel:
			s.onBotNotification(n.Payload)
		case ShardsChannel:
			var ev shardsEvent
			if json.Unmarshal([]byte(n.Payload), &ev) == nil && ev.Runner == s.cfg.RunnerID {
				continue
			}
			s.shards.Wake()
		}
	}
}
