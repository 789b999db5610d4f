package vault

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"

	"buko.app/agentrunner/buko"
)

// DefaultCacheTTL is how long a decrypted token stays in memory.
const DefaultCacheTTL = 15 * time.Minute

// CacheOptions configures a Cache.
type CacheOptions struct {
	TTL   time.Duration    // default DefaultCacheTTL
	Actor string           // who reads, e.g. "runner:<id>"
	Now   func() time.Time // default time.Now
}

// Cache holds decrypted tokens in memory for the runner and the workers: it
// loads many bots with one Decrypt batch (Prefetch, at shard claim), keeps
// each token for a TTL, and drops one on request (Invalidate, on a 401 from
// Buko, so the next lookup re-reads the row). Concurrent misses for one bot
// share one load. It implements sessions.TokenSource and workflows.Tokens.
type Cache struct {
	store   *Store
	ttl     time.Duration
	actor   string
	now     func() time.Time
	metrics *Metrics

	mu      sync.Mutex
	entries map[string]cacheEntry
	epochs  map[string]uint64 // bumped by Invalidate: a load begun before it must not install its result
	sf      singleflight.Group

	hits, misses atomic.Uint64
}

type cacheEntry struct {
	tok Token
	exp time.Time
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
	return &Cache{
		store: s, ttl: o.TTL, actor: o.Actor, now: o.Now, metrics: s.metrics,
		entries: make(map[string]cacheEntry), epochs: make(map[string]uint64),
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

// Get returns botID's token from memory, or loads it.
func (c *Cache) Get(ctx context.Context, botID string) (Token, error) {
	c.mu.Lock()
	e, ok := c.entries[botID]
	epoch := c.epochs[botID]
	if ok && c.now().Before(e.exp) {
		c.mu.Unlock()
		c.hits.Add(1)
		c.metrics.cache(1, 0)
		return e.tok, nil
	}
	c.mu.Unlock()
	c.misses.Add(1)
	c.metrics.cache(0, 1)
	v, err, _ := c.sf.Do(botID+"\x00"+strconv.FormatUint(epoch, 10), func() (any, error) {
		tok, err := c.store.LoadOne(ctx, botID, SessionPurpose(c.actor))
		if err != nil {
			return Token{}, err
		}
		c.install(map[string]Token{botID: tok}, map[string]uint64{botID: epoch})
		return tok, nil
	})
	if err != nil {
		return Token{}, err
	}
	return v.(Token), nil
}

// Prefetch loads every bot of botIDs that is not fresh in memory with one
// Store.Load (one Decrypt batch). Bots that failed are in failed (ErrNotFound,
// ErrCiphertext, …); err is for the whole call (ErrUnavailable, database).
func (c *Cache) Prefetch(ctx context.Context, botIDs []string) (failed map[string]error, err error) {
	now := c.now()
	c.mu.Lock()
	var missing []string
	epochs := make(map[string]uint64)
	for _, id := range botIDs {
		if e, ok := c.entries[id]; ok && now.Before(e.exp) {
			continue
		}
		if _, dup := epochs[id]; dup {
			continue
		}
		epochs[id] = c.epochs[id]
		missing = append(missing, id)
	}
	c.mu.Unlock()
	hits := len(botIDs) - len(missing)
	c.hits.Add(uint64(hits))
	c.misses.Add(uint64(len(missing)))
	c.metrics.cache(hits, len(missing))
	if len(missing) == 0 {
		return map[string]error{}, nil
	}
	toks, failed, err := c.store.Load(ctx, missing, SessionPurpose(c.actor))
	if err != nil {
		return nil, err
	}
	c.install(toks, epochs)
	return failed, nil
}

func (c *Cache) install(toks map[string]Token, epochs map[string]uint64) {
	exp := c.now().Add(c.ttl)
	c.mu.Lock()
	defer c.mu.Unlock()
	for id, t := range toks {
		if c.epochs[id] != epochs[id] {
			continue // invalidated while loading
		}
		c.entries[id] = cacheEntry{tok: t, exp: exp}
	}
	c.metrics.cacheSize(len(c.entries))
}

// Invalidate drops botID's token (after a 401, a rotation, or when the bot
// leaves this process); the next Get reads the row again.
func (c *Cache) Invalidate(botID string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.entries, botID)
	c.epochs[botID]++
	c.metrics.invalidated()
	c.metrics.cacheSize(len(c.entries))
}

// Prune drops expired tokens from memory and returns how many it dropped.
func (c *Cache) Prune() int {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for id, e := range c.entries {
		if !now.Before(e.exp) {
			delete(c.entries, id)
			n++
		}
	}
	c.metrics.cacheSize(len(c.entries))
	return n
}

// Len is the number of tokens held (fresh or not yet pruned).
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}

// Hits counts lookups answered from memory.
func (c *Cache) Hits() uint64 { return c.hits.Load() }

// Misses counts lookups that read secret_vault.
func (c *Cache) Misses() uint64 { return c.misses.Load() }
