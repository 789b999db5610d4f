package vault

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"

	"buko.app/agentrunner/internal/testsupport"
)

// countingCipher is a real cipher that counts Decrypt calls and items, and
// can hold the first Decrypt until released (to pile misses up behind it).
type countingCipher struct {
	Cipher
	calls, items atomic.Int64
	hold         chan struct{} // nil: no hold
	holding      sync.Once
}

func (c *countingCipher) Decrypt(ctx context.Context, items []Sealed) ([]Token, error) {
	c.calls.Add(1)
	c.items.Add(int64(len(items)))
	if c.hold != nil {
		first := false
		c.holding.Do(func() { first = true })
		if first {
			select {
			case <-c.hold:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
	}
	return c.Cipher.Decrypt(ctx, items)
}

// A reconnect storm: N bots miss at once (twice each); they are decrypted in
// at most two Decrypt calls, each bot once.
func TestCacheStormIsBatched(t *testing.T) {
	pool := testPool(t)
	for name, mk := range ciphers(t) {
		t.Run(name, func(t *testing.T) {
			ctx := testCtx(t)
			cc := &countingCipher{Cipher: mk(t), hold: make(chan struct{})}
			s := NewStore(pool, cc, zerolog.Nop(), nil)
			const n = 200
			items := seed(t, pool, s, n, "storm"+name)
			c := NewCache(s, CacheOptions{Actor: "runner:storm"})
			var wg sync.WaitGroup
			for i := range 2 * n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					it := items[i%n]
					if got, err := c.Get(ctx, it.BotID); err != nil || !got.Equal(it.Token) {
						t.Errorf("get %s: %v", it.BotID, err)
					}
				}()
			}
			testsupport.Until(t, "misses queued", 30*time.Second, func() (bool, string) {
				got := c.Misses()
				return got >= 2*n, fmt.Sprintf("%d, want %d", got, 2*n)
			})
			close(cc.hold)
			wg.Wait()
			t.Logf("%d concurrent misses over %d bots: %d Decrypt calls, %d items, %d batches", 2*n, n, cc.calls.Load(), cc.items.Load(), c.Batches())
			if cc.calls.Load() > 2 {
				t.Fatalf("%d Decrypt calls for one storm, want at most 2", cc.calls.Load())
			}
			if cc.items.Load() != n {
				t.Fatalf("%d tokens decrypted for %d bots", cc.items.Load(), n)
			}
			if _, inval, calls := c.tracked(); inval != 0 || calls != 0 {
				t.Fatalf("left behind: %d marks, %d calls", inval, calls)
			}
		})
	}
}

// A bot looping on 401: Invalidate + Get on an unchanged row does not
// decrypt again; a changed row, or the TTL, does.
func TestCacheInvalidateUnchangedRowDoesNotDecrypt(t *testing.T) {
	pool := testPool(t)
	for name, mk := range ciphers(t) {
		t.Run(name, func(t *testing.T) {
			ctx := testCtx(t)
			cc := &countingCipher{Cipher: mk(t)}
			m := NewMetrics(nil)
			s := NewStore(pool, cc, zerolog.Nop(), m)
			items := seed(t, pool, s, 2, "inval"+name)
			var now atomic.Int64
			now.Store(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
			clock := func() time.Time { return time.Unix(0, now.Load()) }
			c := NewCache(s, CacheOptions{TTL: time.Minute, Now: clock, BatchWindow: -1})
			id := items[0].BotID
			if got, err := c.Get(ctx, id); err != nil || !got.Equal(items[0].Token) {
				t.Fatalf("get: %v", err)
			}
			for range 20 {
				c.Invalidate(id)
				if got, err := c.Get(ctx, id); err != nil || !got.Equal(items[0].Token) {
					t.Fatalf("get after invalidate: %v", err)
				}
			}
			if d := cc.items.Load(); d != 1 {
				t.Fatalf("20 × Invalidate+Get on an unchanged row decrypted %d times, want 1", d)
			}
			if c.Revalidated() != 20 || testutil.ToFloat64(m.cacheReval) != 20 || testutil.ToFloat64(m.cacheLoads) != 21 {
				t.Fatalf("revalidated %d (metric %v), loads metric %v", c.Revalidated(), testutil.ToFloat64(m.cacheReval), testutil.ToFloat64(m.cacheLoads))
			}
			// The row changes (a rotation): decrypted again.
			newTok := mustToken(t, "bot_rotated_"+name+"_"+testsupport.RandHex(4))
			sealed, err := s.Seal(ctx, id, newTok)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Replace(ctx, pool, sealed); err != nil {
				t.Fatal(err)
			}
			c.Invalidate(id)
			if got, err := c.Get(ctx, id); err != nil || !got.Equal(newTok) {
				t.Fatalf("after rotation: %v", err)
			}
			if d := cc.items.Load(); d != 2 {
				t.Fatalf("rotation: %d decrypts, want 2", d)
			}
			// A revalidated token still expires at its TTL.
			c.Invalidate(id)
			_, _ = c.Get(ctx, id) // revalidated
			now.Add(int64(2 * time.Minute))
			if got, err := c.Get(ctx, id); err != nil || !got.Equal(newTok) || cc.items.Load() != 3 {
				t.Fatalf("after TTL: %v, %d decrypts", err, cc.items.Load())
			}
		})
	}
}

// Entries of bots nobody asks for any more, and invalidation marks, are
// pruned as the cache is used, without a call to Prune.
func TestCacheMapsArePruned(t *testing.T) {
	pool := testPool(t)
	ctx := testCtx(t)
	s := NewStore(pool, newTestLocal(t), zerolog.Nop(), nil)
	items := seed(t, pool, s, 60, "prune")
	var now atomic.Int64
	now.Store(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	clock := func() time.Time { return time.Unix(0, now.Load()) }
	c := NewCache(s, CacheOptions{TTL: time.Minute, Now: clock, BatchWindow: -1})
	ids := make([]string, len(items))
	for i, it := range items {
		ids[i] = it.BotID
	}
	if _, err := c.Prefetch(ctx, ids[:50]); err != nil {
		t.Fatal(err)
	}
	for i := range 1000 { // bots that left, or were never here
		c.Invalidate(fmt.Sprintf("bot_gone_%d", i))
	}
	if e, _, _ := c.tracked(); e != 50 {
		t.Fatalf("entries %d", e)
	}
	now.Add(int64(2 * time.Minute))
	if _, err := c.Get(ctx, ids[55]); err != nil {
		t.Fatal(err)
	}
	if e, inval, calls := c.tracked(); e != 1 || inval != 0 || calls != 0 {
		t.Fatalf("after the TTL: %d entries, %d invalidation marks, %d calls; want 1, 0, 0", e, inval, calls)
	}
}

// Forget (a bot left this replica) drops the plaintext at once, unlike
// Invalidate, which keeps it marked stale for a revalidation; the next Get
// loads the token again.
func TestCacheForgetDropsThePlaintext(t *testing.T) {
	pool := testPool(t)
	ctx := testCtx(t)
	cc := &countingCipher{Cipher: newTestLocal(t)}
	s := NewStore(pool, cc, zerolog.Nop(), nil)
	items := seed(t, pool, s, 2, "forget")
	c := NewCache(s, CacheOptions{TTL: time.Hour, BatchWindow: -1})
	for _, it := range items {
		if _, err := c.Get(ctx, it.BotID); err != nil {
			t.Fatal(err)
		}
	}
	c.Invalidate(items[1].BotID)
	c.Forget(items[0].BotID)
	if n := c.Len(); n != 1 {
		t.Fatalf("after Forget of one of two tokens the cache holds %d, want 1", n)
	}
	if got, err := c.Get(ctx, items[0].BotID); err != nil || !got.Equal(items[0].Token) {
		t.Fatalf("get after forget: %v", err)
	}
	if d := cc.items.Load(); d != 3 {
		t.Fatalf("decrypted %d times, want 3 (two loads, one after Forget)", d)
	}
}
