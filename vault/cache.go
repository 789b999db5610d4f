package vault

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"buko.app/agentrunner/buko"
)

// Cache defaults.
const (
	// DefaultCacheTTL is how long a decrypted token stays in memory.
	DefaultCacheTTL = 15 * time.Minute
	// DefaultBatchWindow is how long the first miss waits for others to
	// join its batch.
	DefaultBatchWindow = 5 * time.Millisecond
	// DefaultBatchMax bounds the bots of one batch load (the cipher chunks
	// it further into Transit calls).
	DefaultBatchMax = 1000
	// DefaultLoadTimeout bounds one batch load (query and decrypt).
	DefaultLoadTimeout = 30 * time.Second
)

// CacheOptions configures a Cache.
type CacheOptions struct {
	TTL   time.Duration    // default DefaultCacheTTL
	Actor string           // who reads, e.g. "runner:<id>"
	Now   func() time.Time // default time.Now
	// BatchWindow is how long a miss that starts a batch waits for more
	// misses to join it; 0: DefaultBatchWindow, negative: no wait. Misses
	// that arrive while a batch is loading join the next one whatever the
	// window.
	BatchWindow time.Duration
	BatchMax    int           // default DefaultBatchMax
	LoadTimeout time.Duration // default DefaultLoadTimeout
}

// Cache holds decrypted tokens in memory for the runner and the workers.
//
//   - Misses are batched: concurrent misses (a reconnect storm after the TTL)
//     gather into one Store load — one query and one Decrypt batch (Transit
//     batch_input) — while a batch is loading, the next gathers. Concurrent
//     misses for one bot share one load (single-flight per bot).
//   - Prefetch loads many bots with one batch (at shard claim).
//   - Invalidate (on a 401 from Buko, a rotation notice) marks a token
//     stale; the next lookup re-reads the row and decrypts only if its
//     ciphertext changed (a rotation, a rewrap). A bot looping on 401 with an
//     unchanged row costs one batched query per attempt, no decryption.
//   - Each token is dropped after its TTL whatever happens; expired entries
//     and the invalidation marks of bots nobody asks for are pruned as the
//     cache is used, so the maps do not grow with bots that left.
//
// It implements sessions.TokenSource and workflows.Tokens.
type Cache struct {
	store   *Store
	ttl     time.Duration
	actor   string
	now     func() time.Time
	metrics *Metrics
	window  time.Duration
	max     int
	timeout time.Duration

	mu        sync.Mutex
	entries   map[string]cacheEntry
	gen       uint64            // bumped by every Invalidate and load start
	invalAt   map[string]uint64 // gen of the bot's last Invalidate: a load begun before it must not install
	calls     map[string]*loadCall
	pending   []*loadCall
	loading   bool           // a batch goroutine runs
	active    map[uint64]int // start gens of loads in flight, for pruning invalAt
	nextPrune time.Time

	hits, misses, batches, decrypted, revalidated atomic.Uint64
}

type cacheEntry struct {
	tok   Token
	ct    string // the ciphertext tok was decrypted from
	exp   time.Time
	stale bool // invalidated: revalidate against the row before use
}

// loadCall is one bot's load, shared by every Get that joins it.
type loadCall struct {
	botID string
	start uint64 // c.gen when it was queued
	done  chan struct{}
	tok   Token
	err   error
}

// NewCache returns an empty cache over s.
func NewCache(s *Store, o CacheOptions) *Cache {
	if o.TTL <= 0 {
		o.TTL = DefaultCacheTTL
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Actor == "" {
		o.Actor = "runner"
	}
	if o.BatchWindow == 0 {
		o.BatchWindow = DefaultBatchWindow
	}
	if o.BatchMax <= 0 {
		o.BatchMax = DefaultBatchMax
	}
	if o.LoadTimeout <= 0 {
		o.LoadTimeout = DefaultLoadTimeout
	}
	return &Cache{
		store: s, ttl: o.TTL, actor: o.Actor, now: o.Now, metrics: s.metrics,
		window: o.BatchWindow, max: o.BatchMax, timeout: o.LoadTimeout,
		entries: make(map[string]cacheEntry), invalAt: make(map[string]uint64),
		calls: make(map[string]*loadCall), active: make(map[uint64]int),
	}
}

// Token implements sessions.TokenSource: the bot's token as a buko.Credential.
func (c *Cache) Token(ctx context.Context, botID string) (buko.Credential, error) {
	t, err := c.Get(ctx, botID)
	if err != nil {
		return nil, err
	}
	return t, nil
}

// Get returns botID's token from memory, or loads it in the next batch.
func (c *Cache) Get(ctx context.Context, botID string) (Token, error) {
	now := c.now()
	c.mu.Lock()
	if e, ok := c.entries[botID]; ok && !e.stale && now.Before(e.exp) {
		c.mu.Unlock()
		c.hits.Add(1)
		c.metrics.cache(1, 0)
		return e.tok, nil
	}
	call, ok := c.calls[botID]
	if !ok || c.invalAt[botID] > call.start {
		// No load, or one begun before the last Invalidate: queue a new one.
		c.gen++
		call = &loadCall{botID: botID, start: c.gen, done: make(chan struct{})}
		c.calls[botID] = call
		c.active[call.start]++
		c.pending = append(c.pending, call)
		if !c.loading {
			c.loading = true
			go c.runBatches(context.WithoutCancel(ctx))
		}
	}
	c.misses.Add(1) // under mu: once Misses counts a Get, its call is queued
	c.mu.Unlock()
	c.metrics.cache(0, 1)
	select {
	case <-call.done:
		return call.tok, call.err
	case <-ctx.Done():
		return Token{}, fmt.Errorf("token of bot %s: %w", botID, ctx.Err())
	}
}

// runBatches loads the pending calls, batch after batch, until none is left.
func (c *Cache) runBatches(ctx context.Context) {
	if c.window > 0 {
		t := time.NewTimer(c.window)
		<-t.C
	}
	for {
		c.mu.Lock()
		if len(c.pending) == 0 {
			c.loading = false
			c.mu.Unlock()
			return
		}
		n := min(len(c.pending), c.max)
		batch := c.pending[:n:n]
		c.pending = c.pending[n:]
		if len(c.pending) == 0 {
			c.pending = nil
		}
		now := c.now()
		ids := make([]string, len(batch))
		prev := make(map[string]cacheEntry)
		known := make(map[string]string)
		for i, call := range batch {
			ids[i] = call.botID
			if e, ok := c.entries[call.botID]; ok && e.stale && now.Before(e.exp) {
				prev[call.botID], known[call.botID] = e, e.ct
			}
		}
		c.mu.Unlock()
		c.loadBatch(ctx, batch, ids, prev, known)
	}
}

// loadBatch loads one batch; prev holds the stale entries whose ciphertexts
// (known) are checked against the rows instead of decrypting again.
func (c *Cache) loadBatch(ctx context.Context, batch []*loadCall, ids []string, prev map[string]cacheEntry, known map[string]string) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	c.batches.Add(1)
	r, err := c.store.load(ctx, ids, SessionPurpose(c.actor), known)
	if err == nil {
		c.decrypted.Add(uint64(len(r.tokens)))
		c.revalidated.Add(uint64(len(r.unchanged)))
		c.metrics.cacheLoad(len(r.unchanged))
	}
	exp := c.now().Add(c.ttl)
	c.mu.Lock()
	for _, call := range batch {
		id := call.botID
		installable := c.invalAt[id] <= call.start
		switch {
		case err != nil:
			call.err = err
		case r.failed[id] != nil:
			call.err = r.failed[id]
		case r.unchanged[id]:
			e := prev[id]
			e.stale = false
			call.tok = e.tok
			if cur, ok := c.entries[id]; installable && (!ok || cur.ct == e.ct) {
				c.entries[id] = e // the TTL still counts from the decryption
			}
		default:
			call.tok = r.tokens[id]
			if installable {
				c.entries[id] = cacheEntry{tok: call.tok, ct: r.cts[id], exp: exp}
			}
		}
		if c.calls[id] == call {
			delete(c.calls, id)
		}
		if c.active[call.start]--; c.active[call.start] <= 0 {
			delete(c.active, call.start)
		}
		close(call.done)
	}
	c.maybePruneLocked(c.now())
	c.metrics.cacheSize(len(c.entries))
	c.mu.Unlock()
}

// Prefetch loads every bot of botIDs that is not fresh in memory with one
// Store load (one Decrypt batch; stale tokens whose row did not change are
// not decrypted again). Bots that failed are in failed (ErrNotFound,
// ErrCiphertext, …); err is for the whole call (ErrUnavailable, database).
func (c *Cache) Prefetch(ctx context.Context, botIDs []string) (failed map[string]error, err error) {
	now := c.now()
	c.mu.Lock()
	var missing []string
	seen := make(map[string]bool)
	known := make(map[string]string)
	for _, id := range botIDs {
		e, ok := c.entries[id]
		if ok && !e.stale && now.Before(e.exp) {
			continue
		}
		if seen[id] {
			continue
		}
		seen[id] = true
		if ok && e.stale && now.Before(e.exp) {
			known[id] = e.ct
		}
		missing = append(missing, id)
	}
	c.gen++
	start := c.gen
	if len(missing) > 0 {
		c.active[start]++
	}
	c.mu.Unlock()
	hits := len(botIDs) - len(missing)
	c.hits.Add(uint64(hits))
	c.misses.Add(uint64(len(missing)))
	c.metrics.cache(hits, len(missing))
	if len(missing) == 0 {
		return map[string]error{}, nil
	}
	c.batches.Add(1)
	r, err := c.store.load(ctx, missing, SessionPurpose(c.actor), known)
	exp := c.now().Add(c.ttl)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.active[start]--; c.active[start] <= 0 {
		delete(c.active, start)
	}
	if err != nil {
		return nil, err
	}
	c.decrypted.Add(uint64(len(r.tokens)))
	c.revalidated.Add(uint64(len(r.unchanged)))
	c.metrics.cacheLoad(len(r.unchanged))
	for id, t := range r.tokens {
		if c.invalAt[id] > start {
			continue // invalidated while loading
		}
		c.entries[id] = cacheEntry{tok: t, ct: r.cts[id], exp: exp}
	}
	for id := range r.unchanged {
		if e, ok := c.entries[id]; ok && e.ct == known[id] && c.invalAt[id] <= start {
			e.stale = false
			c.entries[id] = e
		}
	}
	c.maybePruneLocked(c.now())
	c.metrics.cacheSize(len(c.entries))
	return r.failed, nil
}

// Invalidate marks botID's token stale (after a 401, a rotation, or when the
// bot leaves this process): the next Get reads the row again, and decrypts
// only if the row changed. A load begun before the call does not install.
func (c *Cache) Invalidate(botID string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	c.invalAt[botID] = c.gen
	if e, ok := c.entries[botID]; ok {
		e.stale = true
		c.entries[botID] = e
	}
	c.metrics.invalidated()
	c.maybePruneLocked(c.now())
	c.metrics.cacheSize(len(c.entries))
}

// Forget drops botID's token from memory at once (the bot left this
// replica: its plaintext must not linger until the TTL). A load in flight
// for it does not install its result.
func (c *Cache) Forget(botID string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	c.invalAt[botID] = c.gen
	delete(c.entries, botID)
	c.maybePruneLocked(c.now())
	c.metrics.cacheSize(len(c.entries))
}

// Prune drops expired tokens from memory, and the invalidation marks no load
// in flight needs; it returns how many tokens it dropped. The cache also
// prunes itself as it is used (at most every TTL/4).
func (c *Cache) Prune() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.pruneLocked(c.now())
	c.metrics.cacheSize(len(c.entries))
	return n
}

func (c *Cache) maybePruneLocked(now time.Time) {
	if now.Before(c.nextPrune) {
		return
	}
	c.pruneLocked(now)
}

func (c *Cache) pruneLocked(now time.Time) int {
	c.nextPrune = now.Add(c.ttl / 4)
	n := 0
	for id, e := range c.entries {
		if !now.Before(e.exp) {
			delete(c.entries, id)
			n++
		}
	}
	// An invalidation mark matters only to loads begun before it.
	oldest := c.gen
	for start := range c.active {
		oldest = min(oldest, start)
	}
	for id, at := range c.invalAt {
		if len(c.active) == 0 || at <= oldest {
			delete(c.invalAt, id)
		}
	}
	return n
}

// Len is the number of tokens held (fresh, stale or not yet pruned).
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}

// tracked is the size of the cache's bookkeeping maps (for tests).
func (c *Cache) tracked() (entries, invalidations, calls int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries), len(c.invalAt), len(c.calls)
}

// String describes the cache without its contents (so %v of a Cache, in a log
// or an error, never reflects over tokens or races with its loads).
func (c *Cache) String() string {
	entries, _, calls := c.tracked()
	return fmt.Sprintf("vault.Cache{entries: %d, loading: %d}", entries, calls)
}

// Hits counts lookups answered from memory.
func (c *Cache) Hits() uint64 { return c.hits.Load() }

// Misses counts lookups that went to secret_vault.
func (c *Cache) Misses() uint64 { return c.misses.Load() }

// Batches counts Store loads (each one query and at most one Decrypt batch).
func (c *Cache) Batches() uint64 { return c.batches.Load() }

// Decrypted counts tokens decrypted.
func (c *Cache) Decrypted() uint64 { return c.decrypted.Load() }

// Revalidated counts stale tokens kept because their row had not changed.
func (c *Cache) Revalidated() uint64 { return c.revalidated.Load() }
