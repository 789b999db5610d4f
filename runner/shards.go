package runner

// Ownership and fencing live here and nowhere else (docs/ownership.md): the
// runners heartbeat, the shard leases, fair share, release, self-fencing by a
// monotonic deadline, and Fenced, the one door through which every write that
// belongs to a shard goes.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
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

// Lease is one shard held at a fencing epoch. The epoch grows by one at every
// claim, so a lease names one tenure of one replica.
type Lease struct {
	Shard int
	Epoch int64
}

// ErrFenced is matched by errors.Is for every *FencedError.
var ErrFenced = errors.New("runner: fenced")

// ErrDuplicateRunner: another live process heartbeats with this runner id.
var ErrDuplicateRunner = errors.New("runner: duplicate runner id")

// FencedError refuses a shard-owned write: the lease is not (or no longer)
// held by this replica at that epoch.
type FencedError struct {
	Lease  Lease
	Reason string
}

func (e *FencedError) Error() string {
	return fmt.Sprintf("runner: shard %d epoch %d: fenced: %s", e.Lease.Shard, e.Lease.Epoch, e.Reason)
}

// Is makes errors.Is(err, ErrFenced) true.
func (e *FencedError) Is(target error) bool { return target == ErrFenced }

// ShardHandler is told of every change of the shards a replica holds. Its
// methods are called from several goroutines, for disjoint sets of leases.
type ShardHandler interface {
	// Acquired: the replica now holds leases; start the sessions of their bots.
	Acquired(ctx context.Context, leases []Lease)
	// Lost: stop every session of these shards and return once they have
	// stopped, or when ctx ends (then stop them hard). For LossFenced and
	// LossStolen ctx ends before anyone else can claim the shards. While Lost
	// runs for LossReleased or LossDrained the leases are still held, so the
	// final writes (cursors) pass the fence.
	Lost(ctx context.Context, leases []Lease, reason string)
}

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
	Version         string // shown in runners.version
	AdminAddr       string // shown in runners.admin_addr
	Handler         ShardHandler
	Logger          zerolog.Logger
	Metrics         *Metrics
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
	if c.ReleaseParallel <= 0 {
		c.ReleaseParallel = 4
	}
	return nil
}

type heldLease struct {
	epoch      int64
	validUntil time.Time // monotonic: last successful renew (send time) + TTL − margin
	leaving    bool      // being released: no new sessions, writes still pass
}

// Shards is one replica's membership and shard ownership. Run drives it;
// Holds and Fenced are the fencing check used by every shard-owned write.
type Shards struct {
	cfg         ShardsConfig
	log         zerolog.Logger
	incarnation string        // random per process (runners.incarnation)
	wake        chan struct{} // a peer announced a change: tick now
	poke        chan struct{} // deadlines changed: the watchdog recomputes

	mu       sync.Mutex
	runCtx   context.Context // Run's context, for jobs started by Drain
	n        int             // shards in the install
	held     map[int]*heldLease
	draining bool
	ready    bool        // the last heartbeat succeeded
	peers    int         // live, non-draining peers at the last heartbeat
	nextWake time.Time   // a peer's lease or heartbeat expires then: tick to take over
	stopping map[int]int // shards whose sessions are being stopped (count of jobs)
	jobs     sync.WaitGroup

	// afterFence, if set (tests only), runs in fenceExpired between leaving
	// the critical section and starting to stop the fenced shards' sessions.
	afterFence func(fenced []Lease)
}

// NewShards checks cfg and returns a replica's ownership; Run starts it.
func NewShards(cfg ShardsConfig) (*Shards, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	var nonce [12]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return nil, fmt.Errorf("runner: incarnation: %w", err)
	}
	return &Shards{
		incarnation: hex.EncodeToString(nonce[:]),
		cfg:         cfg,
		log:         cfg.Logger.With().Str("runner_id", cfg.RunnerID).Logger(),
		wake:        make(chan struct{}, 1),
		poke:        make(chan struct{}, 1),
		held:        map[int]*heldLease{},
		stopping:    map[int]int{},
	}, nil
}

// RunnerID is this replica's id.
func (s *Shards) RunnerID() string { return s.cfg.RunnerID }

// TTL is the lease TTL.
func (s *Shards) TTL() time.Duration { return s.cfg.TTL }

// Wake makes the replica heartbeat, renew and rebalance now (a peer joined,
// released shards or left).
func (s *Shards) Wake() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *Shards) pokeWatchdog() {
	select {
	case s.poke <- struct{}{}:
	default:
	}
}

// Held returns the leases this replica holds (including those being
// released), by shard.
func (s *Shards) Held() []Lease {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Lease, 0, len(s.held))
	for shard, h := range s.held {
		out = append(out, Lease{Shard: shard, Epoch: h.epoch})
	}
	slices.SortFunc(out, func(a, b Lease) int { return a.Shard - b.Shard })
	return out
}

// Ready reports whether the last heartbeat succeeded and the replica is not draining.
func (s *Shards) Ready() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ready && !s.draining
}

// Holds is THE fencing check: nil only if this replica holds l's shard at l's
// epoch and the renew deadline has not passed. Every shard-owned write goes
// through Fenced, which calls it.
func (s *Shards) Holds(l Lease) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.holdsLocked(l, false)
}

// holdsUntil is Holds that also returns the lease's local deadline.
func (s *Shards) holdsUntil(l Lease) (time.Time, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.holdsLocked(l, false); err != nil {
		return time.Time{}, err
	}
	return s.held[l.Shard].validUntil, nil
}

// Active is Holds for starting work: it also refuses a lease being released.
func (s *Shards) Active(l Lease) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.holdsLocked(l, true) == nil
}

func (s *Shards) holdsLocked(l Lease, forStart bool) error {
	h, ok := s.held[l.Shard]
	switch {
	case !ok:
		return &FencedError{Lease: l, Reason: "shard not held"}
	case h.epoch != l.Epoch:
		return &FencedError{Lease: l, Reason: fmt.Sprintf("held at epoch %d", h.epoch)}
	case !time.Now().Before(h.validUntil):
		return &FencedError{Lease: l, Reason: "renew deadline passed"}
	case forStart && h.leaving:
		return &FencedError{Lease: l, Reason: "being released"}
	}
	return nil
}

// Fenced runs fn inside a transaction that first locks the lease row FOR KEY
// SHARE where owner = this replica, epoch = l.Epoch and the lease has not
// expired by Postgres's clock. While the transaction is open nobody can claim
// the shard (claims lock FOR UPDATE SKIP LOCKED, which conflicts with it),
// yet the renewal's UPDATE of expires_at does not wait for it (a non-key
// update conflicts only with FOR UPDATE and FOR NO KEY UPDATE): a fenced
// write stuck behind a row lock or a slow statement never holds a renewal
// up. The transaction runs on WritePool and is cancelled when the lease's
// local deadline passes. If the lease is not held so, fn does not run and
// the error is a *FencedError (errors.Is(err, ErrFenced)).
func (s *Shards) Fenced(ctx context.Context, l Lease, fn func(ctx context.Context, tx pgx.Tx) error) error {
	until, err := s.holdsUntil(l)
	if err != nil {
		s.cfg.Metrics.fencedWrite()
		return err
	}
	// Past the deadline the sessions of the shard are being stopped and the
	// lease may expire soon: an open transaction would keep peers from
	// claiming it after it has.
	ctx, cancel := context.WithDeadline(ctx, until)
	defer cancel()
	tx, err := s.cfg.WritePool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("runner: fenced write, shard %d: begin: %w", l.Shard, err)
	}
	defer func() { _ = tx.Rollback(context.Background()) }()
	var one int
	err = tx.QueryRow(ctx, `SELECT 1 FROM shard_leases
		WHERE shard = $1 AND owner = $2 AND epoch = $3 AND expires_at > now()
		FOR KEY SHARE`, l.Shard, s.cfg.RunnerID, l.Epoch).Scan(&one)
	if errors.Is(err, pgx.ErrNoRows) {
		s.cfg.Metrics.fencedWrite()
		return &FencedError{Lease: l, Reason: "lease not held in Postgres"}
	}
	if err != nil {
		return fmt.Errorf("runner: fenced write, shard %d: lock lease: %w", l.Shard, err)
	}
	if err := fn(ctx, tx); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("runner: fenced write, shard %d: commit: %w", l.Shard, err)
	}
	return nil
}

// shardsEvent is the payload of a NOTIFY on ShardsChannel.
type shardsEvent struct {
	Runner string `json:"runner"`
	Event  string `json:"event"` // joined, released, left
}

func (s *Shards) event(name string) string {
	b, _ := json.Marshal(shardsEvent{Runner: s.cfg.RunnerID, Event: name})
	return string(b)
}

// Run heartbeats, renews, claims up to the fair share and releases above it,
// every TTL/3 and whenever Wake is called, until ctx ends; a watchdog stops
// the sessions of any shard whose renew deadline passes. When ctx ends Run
// stops what is still held (hard), releases it, removes the replica from
// runners and tells peers, then returns. Call Drain before cancelling ctx for
// a graceful exit.
func (s *Shards) Run(ctx context.Context) error {
	if err := s.loadShardCount(ctx); err != nil {
		return err
	}
	s.mu.Lock()
	s.runCtx = ctx
	s.mu.Unlock()
	s.log.Info().Int("shards", s.n).Dur("ttl", s.cfg.TTL).Dur("margin", s.cfg.Margin).Msg("ownership starting")

	var wdDone sync.WaitGroup
	wdDone.Add(1)
	go func() { defer wdDone.Done(); s.watchdog(ctx) }()

	interval := s.cfg.TTL / 3
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	expiry := time.NewTimer(time.Hour)
	defer expiry.Stop()
	joined := time.Time{}
	announced := false
	for {
		if err := s.tick(ctx, joined); err == nil && !announced {
			announced = true
			joined = time.Now()
			s.notify(ctx, "joined")
			if s.Peers() > 0 {
				// A fleet is running: fair share already counts it, so there
				// is no stampede to avoid; claim what is free at once (peers
				// release above their new fair share and tell us).
				joined = joined.Add(-s.cfg.Settle)
				continue
			}
		}
		s.mu.Lock()
		next := s.nextWake
		s.mu.Unlock()
		if !expiry.Stop() {
			select {
			case <-expiry.C:
			default:
			}
		}
		if !next.IsZero() {
			expiry.Reset(max(time.Until(next), 0))
		}
		var settle <-chan time.Time
		if announced && time.Since(joined) < s.cfg.Settle {
			settle = time.After(s.cfg.Settle - time.Since(joined))
		}
		select {
		case <-ctx.Done():
			s.shutdown()
			wdDone.Wait()
			return nil
		case <-ticker.C:
		case <-s.wake:
		case <-expiry.C:
		case <-settle:
		}
	}
}

// loadShardCount reads N, retrying while Postgres does not answer.
func (s *Shards) loadShardCount(ctx context.Context) error {
	var leases, configured int
	for {
		qctx, cancel := context.WithTimeout(ctx, s.cfg.TTL/3)
		err := s.cfg.Pool.QueryRow(qctx, `SELECT (SELECT count(*) FROM shard_leases),
			coalesce((SELECT shard_count FROM cluster_settings), -1)`).Scan(&leases, &configured)
		cancel()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return fmt.Errorf("runner: read shard count: %w", err)
		}
		s.log.Warn().Err(err).Msg("cannot read the shard count; retrying")
		select {
		case <-ctx.Done():
			return fmt.Errorf("runner: read shard count: %w", ctx.Err())
		case <-time.After(time.Second):
		}
	}
	if leases == 0 || leases != configured {
		return fmt.Errorf("runner: %d shard leases but cluster_settings.shard_count = %d: the install is inconsistent (shard_count is fixed at install)", leases, configured)
	}
	s.mu.Lock()
	s.n = leases
	s.mu.Unlock()
	return nil
}

// The heartbeat, renewal and census in one statement. $2/$3 are the leases
// held (shard, epoch); a held lease that does not come back is lost. Leases
// that Postgres says are ours but that this process does not hold (fenced
// earlier, or a previous incarnation with the same id) are released.
const renewSQL = `
WITH hb AS (
	INSERT INTO runners AS r (id, heartbeat_at, draining, version, admin_addr, incarnation)
	VALUES ($1, now(), $5, $6, $7, $10)
	-- draining is sticky within one process: the admin API may set it (drain-runner)
	ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(),
		draining = excluded.draining OR (r.draining AND r.incarnation = excluded.incarnation),
		version = excluded.version, admin_addr = excluded.admin_addr, incarnation = excluded.incarnation
	WHERE r.incarnation = excluded.incarnation OR r.heartbeat_at + $4 * interval '1 millisecond' <= now()
	RETURNING r.id, r.draining
), renewed AS (
	UPDATE shard_leases l SET expires_at = now() + $4 * interval '1 millisecond'
	FROM unnest($2::integer[], $3::bigint[]) AS h(shard, epoch)
	WHERE l.shard = h.shard AND l.epoch = h.epoch AND l.owner = $1 AND l.expires_at > now()
		AND EXISTS (SELECT 1 FROM hb)
	RETURNING l.shard
), orphans AS (
	UPDATE shard_leases SET owner = NULL, expires_at = now()
	WHERE owner = $1 AND NOT (shard = ANY($9::integer[])) AND EXISTS (SELECT 1 FROM hb)
	RETURNING shard
), gone AS (
	DELETE FROM runners WHERE id <> $1 AND heartbeat_at < now() - $8 * interval '1 millisecond'
	RETURNING id
)
SELECT
	coalesce((SELECT array_agg(shard) FROM renewed), '{}'::integer[]),
	(SELECT count(*) FROM orphans),
	(SELECT count(*) FROM runners WHERE id <> $1 AND NOT draining
		AND heartbeat_at + $4 * interval '1 millisecond' > now()),
	(SELECT extract(epoch FROM least(
		(SELECT min(expires_at) FROM shard_leases
			WHERE owner IS NOT NULL AND owner <> $1 AND expires_at > now()),
		(SELECT min(heartbeat_at + $4 * interval '1 millisecond') FROM runners
			WHERE id <> $1 AND NOT draining AND heartbeat_at + $4 * interval '1 millisecond' > now())
	) - now())::float8),
	(SELECT count(*) FROM gone),
	(SELECT count(*) FROM hb),
	coalesce((SELECT bool_or(draining) FROM hb), false)`

// tick is one heartbeat-renew-rebalance round. joined is when the replica
// first heartbeated (zero before that).
func (s *Shards) tick(ctx context.Context, joined time.Time) error {
	s.mu.Lock()
	held := make([]Lease, 0, len(s.held))
	for shard, h := range s.held {
		held = append(held, Lease{Shard: shard, Epoch: h.epoch})
	}
	draining := s.draining
	// Shards whose sessions are still stopping stay ours in Postgres until
	// they have stopped: they are not released as orphans.
	keep := make([]int32, 0, len(held)+len(s.stopping))
	for shard := range s.stopping {
		keep = append(keep, int32(shard))
	}
	s.mu.Unlock()

	shards := make([]int32, len(held))
	epochs := make([]int64, len(held))
	for i, l := range held {
		shards[i], epochs[i] = int32(l.Shard), l.Epoch
	}
	keep = append(keep, shards...)
	var (
		renewed  []int32
		orphans  int
		peers    int
		nextExp  *float64
		gone     int
		me       int
		dbDrain  bool
		ttlMilli = s.cfg.TTL.Milliseconds()
	)
	rctx, cancel := context.WithTimeout(ctx, s.cfg.TTL/3)
	sent := time.Now()
	err := s.cfg.Pool.QueryRow(rctx, renewSQL, s.cfg.RunnerID, shards, epochs, ttlMilli, draining,
		s.cfg.Version, s.cfg.AdminAddr, staleRunnerAge.Milliseconds(), keep, s.incarnation).
		Scan(&renewed, &orphans, &peers, &nextExp, &gone, &me, &dbDrain)
	cancel()
	if err == nil && me == 0 {
		err = fmt.Errorf("%w: runner id %q is in use by another live process; this one takes no shards until that one stops heartbeating", ErrDuplicateRunner, s.cfg.RunnerID)
	}
	s.cfg.Metrics.renewed(time.Since(sent), err)
	if err != nil {
		s.mu.Lock()
		s.ready = false
		s.mu.Unlock()
		switch {
		case errors.Is(err, ErrDuplicateRunner):
			s.log.Error().Err(err).Msg("duplicate runner id")
		case ctx.Err() == nil:
			s.log.Warn().Err(err).Int("held", len(held)).Msg("heartbeat and renew failed; sessions stop at the fencing deadline unless a renew succeeds")
		}
		return err
	}

	if dbDrain && !draining {
		// An operator asked for a drain (admin API, drain-runner).
		s.log.Info().Msg("draining on request (runners.draining set): releasing every shard")
		s.mu.Lock()
		s.draining = true
		s.mu.Unlock()
		draining = true
	}
	ok := make(map[int]bool, len(renewed))
	for _, sh := range renewed {
		ok[int(sh)] = true
	}
	var lost []Lease
	s.mu.Lock()
	valid := sent.Add(s.cfg.TTL - s.cfg.Margin)
	for _, l := range held {
		h, still := s.held[l.Shard]
		if !still || h.epoch != l.Epoch {
			continue // fenced meanwhile
		}
		switch {
		case ok[l.Shard]:
			h.validUntil = valid
		case h.leaving:
			// Released meanwhile by the release job, which forgets it; if it
			// was lost instead, the watchdog fences it at its deadline.
		default:
			delete(s.held, l.Shard)
			lost = append(lost, l)
		}
	}
	s.markStoppingLocked(lost, 1) // with the delete, as in fenceExpired
	s.ready = true
	s.peers = peers
	s.nextWake = time.Time{}
	if nextExp != nil {
		// A peer's lease runs out then; if the peer is dead, take it over at once.
		s.nextWake = time.Now().Add(time.Duration(*nextExp*float64(time.Second)) + 50*time.Millisecond)
	}
	n := s.n
	nHeld := len(s.held)
	s.mu.Unlock()
	s.pokeWatchdog()
	s.cfg.Metrics.setLeases(nHeld)
	live := peers
	if !draining {
		live++
	}
	s.cfg.Metrics.setLive(live)
	if orphans > 0 {
		s.log.Info().Int("shards", orphans).Msg("released leases Postgres held for this runner id but this process did not")
		s.notify(ctx, "released")
	}
	if gone > 0 {
		s.log.Info().Int("runners", gone).Msg("removed long-dead runners")
	}
	if len(lost) > 0 {
		s.cfg.Metrics.lost(LossStolen, len(lost))
		s.log.Warn().Ints("shards", leaseShards(lost)).Msg("leases lost (expired or claimed by a peer); stopping their sessions")
		s.stopMarked(ctx, lost, LossStolen, s.cfg.Margin)
	}

	if draining {
		s.releaseAll(ctx, LossDrained)
		return nil
	}
	if joined.IsZero() || time.Since(joined) < s.cfg.Settle {
		return nil
	}
	return s.rebalance(ctx, n, live)
}

// fairShare is ceil(n / live).
func fairShare(n, live int) int {
	if live < 1 {
		live = 1
	}
	return int(math.Ceil(float64(n) / float64(live)))
}

func (s *Shards) rebalance(ctx context.Context, n, live int) error {
	fair := fairShare(n, live)
	s.mu.Lock()
	var keep []int
	for shard, h := range s.held {
		if !h.leaving {
			keep = append(keep, shard)
		}
	}
	s.mu.Unlock()
	s.log.Debug().Int("held", len(keep)).Int("fair", fair).Int("live", live).Msg("rebalance")
	switch {
	case len(keep) > fair:
		slices.Sort(keep)
		extra := keep[fair:] // give back the highest shards; claims take the lowest free ones
		s.release(ctx, extra, LossReleased)
		return nil
	case len(keep) < fair:
		return s.claim(ctx, fair-len(keep))
	}
	return nil
}

const claimSQL = `
WITH c AS (
	SELECT shard, owner AS prev_owner FROM shard_leases
	WHERE owner IS NULL OR expires_at <= now()
	ORDER BY shard
	LIMIT $2
	FOR UPDATE SKIP LOCKED
)
UPDATE shard_leases l
SET owner = $1, epoch = l.epoch + 1, expires_at = now() + $3 * interval '1 millisecond', claimed_at = now()
FROM c WHERE l.shard = c.shard
RETURNING l.shard, l.epoch, c.prev_owner`

func (s *Shards) claim(ctx context.Context, want int) error {
	cctx, cancel := context.WithTimeout(ctx, s.cfg.TTL/3)
	defer cancel()
	sent := time.Now()
	rows, err := s.cfg.Pool.Query(cctx, claimSQL, s.cfg.RunnerID, want, s.cfg.TTL.Milliseconds())
	if err != nil {
		return fmt.Errorf("runner: claim: %w", err)
	}
	var got []Lease
	free, takeover := 0, 0
	var from []string
	for rows.Next() {
		var shard int32
		var epoch int64
		var prev *string
		if err := rows.Scan(&shard, &epoch, &prev); err != nil {
			rows.Close()
			return fmt.Errorf("runner: claim: %w", err)
		}
		got = append(got, Lease{Shard: int(shard), Epoch: epoch})
		if prev == nil {
			free++
		} else {
			takeover++
			if !slices.Contains(from, *prev) {
				from = append(from, *prev)
			}
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		// The claim may or may not have committed; leases we do not record
		// are released by the next heartbeat (orphans) or expire.
		return fmt.Errorf("runner: claim: %w", err)
	}
	if len(got) == 0 {
		return nil
	}
	valid := sent.Add(s.cfg.TTL - s.cfg.Margin)
	s.mu.Lock()
	for _, l := range got {
		s.held[l.Shard] = &heldLease{epoch: l.Epoch, validUntil: valid}
	}
	nHeld := len(s.held)
	s.mu.Unlock()
	s.pokeWatchdog()
	s.cfg.Metrics.setLeases(nHeld)
	s.cfg.Metrics.claimed(free, takeover)
	ev := s.log.Info().Int("claimed", len(got)).Int("held", nHeld).Int("takeover", takeover)
	if len(from) > 0 {
		ev = ev.Strs("from", from)
	}
	ev.Msg("claimed shards")
	s.jobs.Add(1)
	go func() {
		defer s.jobs.Done()
		s.cfg.Handler.Acquired(ctx, got)
	}()
	return nil
}

// release stops the sessions of shards (marked leaving first, so nothing new
// starts on them), then releases their leases and tells peers. It runs in the
// background so renewals go on meanwhile.
func (s *Shards) release(ctx context.Context, shards []int, reason string) {
	var ls []Lease
	s.mu.Lock()
	for _, shard := range shards {
		if h, ok := s.held[shard]; ok && !h.leaving {
			h.leaving = true
			ls = append(ls, Lease{Shard: shard, Epoch: h.epoch})
		}
	}
	s.mu.Unlock()
	if len(ls) == 0 {
		return
	}
	s.log.Info().Str("reason", reason).Ints("shards", leaseShards(ls)).Msg("releasing shards")
	s.jobs.Add(1)
	go func() {
		defer s.jobs.Done()
		start := time.Now()
		stopCtx, cancel := context.WithTimeout(ctx, s.cfg.StopTimeout)
		if reason == LossDrained {
			stopCtx, cancel = context.WithCancel(ctx) // the drain's caller bounds it
		}
		defer cancel()
		// Each shard is stopped on its own and released as soon as its
		// sessions have stopped (in batches of whatever finished together),
		// so a bot's gap does not include waiting for the slowest shard.
		done := make(chan Lease, len(ls))
		var wg sync.WaitGroup
		sem := make(chan struct{}, s.cfg.ReleaseParallel)
		for _, l := range ls {
			wg.Add(1)
			go func() {
				defer wg.Done()
				sem <- struct{}{}
				defer func() { <-sem }()
				s.cfg.Handler.Lost(stopCtx, []Lease{l}, reason)
				done <- l
			}()
		}
		go func() { wg.Wait(); close(done) }()
		for l := range done {
			batch := []Lease{l}
		more:
			for {
				select {
				case l2, ok := <-done:
					if !ok {
						break more
					}
					batch = append(batch, l2)
				default:
					break more
				}
			}
			s.releaseLeases(ctx, batch, reason)
		}
		s.log.Info().Str("reason", reason).Int("shards", len(ls)).Dur("took", time.Since(start)).Msg("released shards")
	}()
}

func (s *Shards) releaseAll(ctx context.Context, reason string) {
	s.mu.Lock()
	var all []int
	for shard, h := range s.held {
		if !h.leaving {
			all = append(all, shard)
		}
	}
	s.mu.Unlock()
	s.release(ctx, all, reason)
}

const releaseSQL = `
WITH rel AS (
	UPDATE shard_leases l SET owner = NULL, expires_at = now()
	FROM unnest($2::integer[], $3::bigint[]) AS h(shard, epoch)
	WHERE l.shard = h.shard AND l.epoch = h.epoch AND l.owner = $1
	RETURNING l.shard
)
SELECT (SELECT count(*) FROM rel), pg_notify('` + ShardsChannel + `', $4)`

// releaseLeases gives leases back in Postgres (after their sessions stopped)
// and forgets them. It uses a short context of its own so a hard stop still
// frees the shards for peers at once.
func (s *Shards) releaseLeases(ctx context.Context, ls []Lease, reason string) {
	shards := make([]int32, len(ls))
	epochs := make([]int64, len(ls))
	for i, l := range ls {
		shards[i], epochs[i] = int32(l.Shard), l.Epoch
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), max(s.cfg.TTL/3, 2*time.Second))
	defer cancel()
	var n int
	err := s.cfg.Pool.QueryRow(rctx, releaseSQL, s.cfg.RunnerID, shards, epochs, s.event("released")).Scan(&n, new(any))
	s.mu.Lock()
	for _, l := range ls {
		if h, ok := s.held[l.Shard]; ok && h.epoch == l.Epoch {
			delete(s.held, l.Shard)
		}
	}
	nHeld := len(s.held)
	s.mu.Unlock()
	s.pokeWatchdog()
	s.cfg.Metrics.setLeases(nHeld)
	s.cfg.Metrics.lost(reason, len(ls))
	if err != nil {
		s.log.Warn().Err(err).Ints("shards", leaseShards(ls)).Msg("release failed; the leases expire after their TTL")
		return
	}
	s.log.Debug().Str("reason", reason).Int("released", n).Int("held", nHeld).Msg("released a batch of shards")
}

// stopMarked runs Handler.Lost in the background with a deadline of d (for
// fenced/stolen shards: before anyone else may claim them).
// The caller has already marked ls stopping (markStoppingLocked, in the
// critical section that removed them from held); the job unmarks them when
// Lost returns.
func (s *Shards) stopMarked(ctx context.Context, ls []Lease, reason string, d time.Duration) {
	s.jobs.Add(1)
	go func() {
		defer s.jobs.Done()
		defer s.markStopping(ls, -1)
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), d)
		defer cancel()
		s.cfg.Handler.Lost(sctx, ls, reason)
	}()
}

func (s *Shards) markStopping(ls []Lease, delta int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.markStoppingLocked(ls, delta)
}

func (s *Shards) markStoppingLocked(ls []Lease, delta int) {
	for _, l := range ls {
		s.stopping[l.Shard] += delta
		if s.stopping[l.Shard] <= 0 {
			delete(s.stopping, l.Shard)
		}
	}
}

// watchdog stops the sessions of every shard whose renew deadline passes:
// the self-fencing of ARCHITECTURE.md §5. It needs no database.
func (s *Shards) watchdog(ctx context.Context) {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		s.mu.Lock()
		var next time.Time
		for _, h := range s.held {
			if next.IsZero() || h.validUntil.Before(next) {
				next = h.validUntil
			}
		}
		s.mu.Unlock()
		if !t.Stop() {
			select {
			case <-t.C:
			default:
			}
		}
		if !next.IsZero() {
			t.Reset(max(time.Until(next), 0))
		}
		select {
		case <-ctx.Done():
			return
		case <-s.poke:
		case <-t.C:
			s.fenceExpired(ctx)
		}
	}
}

func (s *Shards) fenceExpired(ctx context.Context) {
	now := time.Now()
	var fenced []Lease
	s.mu.Lock()
	for shard, h := range s.held {
		if !now.Before(h.validUntil) {
			fenced = append(fenced, Lease{Shard: shard, Epoch: h.epoch})
			delete(s.held, shard)
		}
	}
	// In the same critical section: a shard leaves held and enters stopping
	// at once, so no tick ever sees it as neither (an orphan it would
	// release for a peer to claim while its sessions still run).
	s.markStoppingLocked(fenced, 1)
	nHeld := len(s.held)
	s.mu.Unlock()
	if len(fenced) == 0 {
		return
	}
	if s.afterFence != nil {
		s.afterFence(fenced)
	}
	s.cfg.Metrics.fencedSelf()
	s.cfg.Metrics.lost(LossFenced, len(fenced))
	s.cfg.Metrics.setLeases(nHeld)
	s.log.Error().Ints("shards", leaseShards(fenced)).Dur("margin", s.cfg.Margin).
		Msg("self-fencing: no renew before the deadline; stopping the sessions of these shards before their leases expire")
	// The leases expire no earlier than margin from now: stop within most of it.
	s.stopMarked(ctx, fenced, LossFenced, s.cfg.Margin*3/4)
}

// Drain stops claiming, marks the replica draining (peers stop counting it),
// stops the sessions of every held shard within ctx, releases the leases and
// tells peers. It returns once nothing is held, or with ctx's error. Run must
// be running.
func (s *Shards) Drain(ctx context.Context) error {
	s.mu.Lock()
	s.draining = true
	runCtx := s.runCtx
	s.mu.Unlock()
	if runCtx == nil {
		return errors.New("runner: drain: Run is not running")
	}
	s.log.Info().Msg("draining: releasing every shard")
	// Peers must stop counting this replica before its shards come free, or
	// their fair share would not let them take the shards.
	hctx, cancel := context.WithTimeout(ctx, s.cfg.TTL/3)
	_, err := s.cfg.Pool.Exec(hctx, `UPDATE runners SET draining = true, heartbeat_at = now() WHERE id = $1`, s.cfg.RunnerID)
	cancel()
	if err == nil {
		s.releaseAll(runCtx, LossDrained)
	} else {
		s.log.Warn().Err(err).Msg("cannot mark this runner draining; the next heartbeat will")
	}
	s.Wake()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		s.mu.Lock()
		n := len(s.held)
		s.mu.Unlock()
		if n == 0 {
			s.jobs.Wait()
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("runner: drain: %d shards still held: %w", n, ctx.Err())
		case <-tick.C:
		}
	}
}

// shutdown runs when Run's context ends: whatever is still held is stopped
// hard and released, the runner row is removed, and peers are told.
func (s *Shards) shutdown() {
	s.mu.Lock()
	s.draining = true
	var rest []Lease
	for shard, h := range s.held {
		if !h.leaving {
			h.leaving = true
			rest = append(rest, Lease{Shard: shard, Epoch: h.epoch})
		}
	}
	s.mu.Unlock()
	bg := context.Background()
	if len(rest) > 0 {
		s.log.Warn().Int("shards", len(rest)).Msg("stopping without a drain: closing sessions hard")
		hard, cancel := context.WithCancel(bg)
		cancel()
		s.cfg.Handler.Lost(hard, rest, LossDrained)
		s.releaseLeases(bg, rest, LossDrained)
	}
	s.jobs.Wait()
	ctx, cancel := context.WithTimeout(bg, 2*time.Second)
	defer cancel()
	if _, err := s.cfg.Pool.Exec(ctx, `DELETE FROM runners WHERE id = $1`, s.cfg.RunnerID); err != nil {
		s.log.Warn().Err(err).Msg("could not remove this runner from runners")
	}
	s.notify(ctx, "left")
	s.mu.Lock()
	s.ready = false
	s.mu.Unlock()
}

func (s *Shards) notify(ctx context.Context, event string) {
	nctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	if _, err := s.cfg.Pool.Exec(nctx, `SELECT pg_notify($1, $2)`, ShardsChannel, s.event(event)); err != nil {
		s.log.Debug().Err(err).Str("event", event).Msg("notify peers failed")
	}
}

// Peers reports the live, non-draining peers seen at the last heartbeat.
func (s *Shards) Peers() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peers
}

func leaseShards(ls []Lease) []int {
	out := make([]int, len(ls))
	for i, l := range ls {
		out[i] = l.Shard
	}
	slices.Sort(out)
	return out
}
