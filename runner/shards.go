package runner

// Shards, one replica's membership and shard ownership, and Run, its loop.
// Ownership and fencing live in the shards*.go and lease.go files and nowhere
// else (docs/ownership.md): the runners heartbeat and the lease renewal
// (shards_renew.go), fair share, claim and release (shards_claim.go),
// self-fencing by a monotonic deadline and Fenced, the one door through
// which every write that belongs to a shard goes (shards_fence.go), and
// drain (shards_drain.go).

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// ErrDuplicateRunner: another live process heartbeats with this runner id.
var ErrDuplicateRunner = errors.New("runner: duplicate runner id")

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
	live     liveness    // the liveness lock (shards_liveness.go)
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
	if !s.cfg.NoLiveness {
		// The liveness lock lives in a context of its own: it is held until
		// shutdown has released every lease.
		lctx, stopLiveness := context.WithCancel(context.WithoutCancel(ctx))
		defer stopLiveness()
		var liveDone sync.WaitGroup
		liveDone.Add(1)
		go func() { defer liveDone.Done(); s.livenessLoop(lctx) }()
		defer func() { stopLiveness(); liveDone.Wait() }()
		s.awaitLiveness(ctx, s.cfg.TTL/3)
	}

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
