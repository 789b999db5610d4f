package vault

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"

	"buko.app/agentrunner/internal/testsupport"
)

// seed stores n bots with tokens through s and returns the plaintexts.
func seed(t testing.TB, pool *pgxpool.Pool, s *Store, n int, tag string) []Plaintext {
	t.Helper()
	ctx := testCtx(t)
	items := makeItems(n, tag)
	ids := make([]string, n)
	for i, it := range items {
		ids[i] = it.BotID
	}
	insertBots(t, pool, ids)
	sealed, err := s.Cipher().Encrypt(ctx, items)
	if err != nil {
		t.Fatal(err)
	}
	for start := 0; start < n; start += 5000 {
		end := min(n, start+5000)
		var bots, cts []string
		for _, x := range sealed[start:end] {
			bots = append(bots, x.BotID)
			cts = append(cts, x.Ciphertext)
		}
		if _, err := pool.Exec(ctx, `INSERT INTO secret_vault (bot_id, ciphertext, key_ref) SELECT * FROM unnest($1::text[], $2::text[], array_fill($3::text, array[$4::int]))`,
			bots, cts, s.Cipher().KeyRef(), len(bots)); err != nil {
			t.Fatal(err)
		}
	}
	return items
}

func TestStoreLoadAndAudit(t *testing.T) {
	pool := testPool(t)
	for name, mk := range ciphers(t) {
		t.Run(name, func(t *testing.T) {
			ctx := testCtx(t)
			s := NewStore(pool, mk(t), zerolog.Nop(), nil)
			items := seed(t, pool, s, 5, "load"+name)
			ids := []string{items[0].BotID, items[1].BotID, "bot_missing"}

			var before int
			_ = pool.QueryRow(ctx, `SELECT count(*) FROM audit_log WHERE action = 'token.read'`).Scan(&before)
			toks, failed, err := s.Load(ctx, ids, SessionPurpose("runner:test"))
			if err != nil {
				t.Fatal(err)
			}
			if !toks[items[0].BotID].Equal(items[0].Token) || !toks[items[1].BotID].Equal(items[1].Token) {
				t.Fatal("wrong tokens")
			}
			if !errors.Is(failed["bot_missing"], ErrNotFound) || len(failed) != 1 {
				t.Fatalf("failed: %v", failed)
			}
			var after int
			_ = pool.QueryRow(ctx, `SELECT count(*) FROM audit_log WHERE action = 'token.read'`).Scan(&after)
			if after != before {
				t.Fatal("a live-session read was audited")
			}
			// A read for another purpose is audited, one row per bot.
			tok, err := s.LoadOne(ctx, items[2].BotID, Purpose{Actor: "cli:tester", Reason: "verify"})
			if err != nil || !tok.Equal(items[2].Token) {
				t.Fatalf("LoadOne: %v", err)
			}
			var actor, reason string
			err = pool.QueryRow(ctx, `SELECT actor, detail->>'reason' FROM audit_log WHERE action = 'token.read' AND bot_id = $1`, items[2].BotID).Scan(&actor, &reason)
			if err != nil || actor != "cli:tester" || reason != "verify" {
				t.Fatalf("audit row: %q %q %v", actor, reason, err)
			}
			// A row copied onto another bot does not decrypt.
			if _, err := pool.Exec(ctx, `UPDATE secret_vault SET ciphertext = (SELECT ciphertext FROM secret_vault WHERE bot_id = $1) WHERE bot_id = $2`,
				items[3].BotID, items[4].BotID); err != nil {
				t.Fatal(err)
			}
			if _, err := s.LoadOne(ctx, items[4].BotID, SessionPurpose("t")); !errors.Is(err, ErrCiphertext) {
				t.Fatalf("moved row: %v", err)
			}
			// A row sealed by another key is refused before any decrypt.
			if _, err := pool.Exec(ctx, `UPDATE secret_vault SET key_ref = 'local:kr_other' WHERE bot_id = $1`, items[3].BotID); err != nil {
				t.Fatal(err)
			}
			if _, err := s.LoadOne(ctx, items[3].BotID, SessionPurpose("t")); !errors.Is(err, ErrKeyMismatch) {
				t.Fatalf("other key: %v", err)
			}
			if _, err := s.Describe(ctx, "bot_missing"); !errors.Is(err, ErrNotFound) {
				t.Fatalf("describe missing: %v", err)
			}
			row, err := s.Describe(ctx, items[0].BotID)
			if err != nil || row.Version != 1 || row.KeyRef != s.Cipher().KeyRef() {
				t.Fatalf("describe: %+v %v", row, err)
			}
		})
	}
}

// TestRewrapWhileDecrypting rotates the key and rewraps every row while other
// goroutines keep decrypting: no reader ever fails, every row ends at the new
// version with its token unchanged, and a re-run has nothing to do.
func TestRewrapWhileDecrypting(t *testing.T) {
	pool := testPool(t)
	for name, mk := range ciphers(t) {
		t.Run(name, func(t *testing.T) {
			ctx := testCtx(t)
			s := NewStore(pool, mk(t), zerolog.Nop(), nil)
			items := seed(t, pool, s, 2500, "rw"+name)
			byID := map[string]Token{}
			for _, it := range items {
				byID[it.BotID] = it.Token
			}
			if v, err := s.Cipher().RotateKey(ctx); err != nil || v != 2 {
				t.Fatalf("rotate: %d %v", v, err)
			}

			stop := make(chan struct{})
			var (
				wg    sync.WaitGroup
				reads atomic.Int64
				errMu sync.Mutex
				errs  []error
			)
			for g := range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					r := rand.New(rand.NewPCG(uint64(g), 7))
					for {
						select {
						case <-stop:
							return
						default:
						}
						ids := make([]string, 50)
						for i := range ids {
							ids[i] = items[r.IntN(len(items))].BotID
						}
						toks, failed, err := s.Load(ctx, ids, SessionPurpose("reader"))
						if err == nil && len(failed) > 0 {
							for _, e := range failed {
								err = e
							}
						}
						for id, tok := range toks {
							if !tok.Equal(byID[id]) {
								err = fmt.Errorf("bot %s: wrong token", id)
							}
						}
						if err != nil {
							errMu.Lock()
							errs = append(errs, err)
							errMu.Unlock()
							return
						}
						reads.Add(int64(len(toks)))
					}
				}()
			}
			var progress []int
			st, err := s.Rewrap(ctx, RewrapOptions{Actor: "test", BatchSize: 400, Progress: func(done, total int) {
				progress = append(progress, done)
			}})
			// Let the readers see the rewrapped rows too before stopping.
			testsupport.Within(t, "1000 reads", 30*time.Second, func() bool { return reads.Load() >= 1000 })
			close(stop)
			wg.Wait()
			if err != nil {
				t.Fatalf("rewrap: %v", err)
			}
			if len(errs) > 0 {
				t.Fatalf("a reader failed during rewrap: %v", errs[0])
			}
			t.Logf("%s: %+v; concurrent reads %d", name, st, reads.Load())
			if st.Rewrapped != 2500 || st.Failed != 0 || st.Version != 2 || st.Total != 2500 {
				t.Fatalf("stats: %+v", st)
			}
			if len(progress) != 7 || progress[len(progress)-1] != 2500 {
				t.Fatalf("progress calls: %v", progress)
			}
			var old int
			if err := pool.QueryRow(ctx, `SELECT count(*) FROM secret_vault WHERE bot_id LIKE $1 AND ciphertext NOT LIKE '%:v2:%'`, "bot_rw"+name+"%").Scan(&old); err != nil || old != 0 {
				t.Fatalf("%d rows not at v2 (%v)", old, err)
			}
			toks, failed, err := s.Load(ctx, []string{items[0].BotID, items[2499].BotID}, SessionPurpose("t"))
			if err != nil || len(failed) > 0 || !toks[items[2499].BotID].Equal(items[2499].Token) {
				t.Fatalf("after rewrap: %v %v", err, failed)
			}
			again, err := s.Rewrap(ctx, RewrapOptions{Actor: "test"})
			if err != nil || again.Rewrapped != 0 || again.Current != 2500 {
				t.Fatalf("re-run: %+v %v", again, err)
			}
			var audits int
			_ = pool.QueryRow(ctx, `SELECT count(*) FROM audit_log WHERE action = 'vault.rewrap' AND actor = 'test'`).Scan(&audits)
			if audits < 2 {
				t.Fatalf("rewrap runs audited: %d", audits)
			}
			_, _ = pool.Exec(ctx, `DELETE FROM bots WHERE id LIKE $1`, "bot_rw"+name+"%")
		})
	}
}

// TestRewrapInterruptedAndRaced: a cancelled run reports how far it got and a
// re-run finishes; a row changed under rewrap (rotate-token) is left alone.
func TestRewrapInterruptedAndRaced(t *testing.T) {
	pool := testPool(t)
	ctx := testCtx(t)
	s := NewStore(pool, newTestLocal(t), zerolog.Nop(), nil)
	items := seed(t, pool, s, 300, "intr")
	if _, err := s.Cipher().RotateKey(ctx); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	st, err := s.Rewrap(cctx, RewrapOptions{Actor: "t", BatchSize: 100, Progress: func(done, _ int) {
		if done >= 100 {
			cancel()
		}
	}})
	if !errors.Is(err, context.Canceled) || st.Rewrapped != 100 {
		t.Fatalf("interrupted run: %+v %v", st, err)
	}
	if !strings.Contains(err.Error(), "100 of 300") {
		t.Fatalf("message: %v", err)
	}
	var complete string
	_ = pool.QueryRow(ctx, `SELECT detail->>'complete' FROM audit_log WHERE action = 'vault.rewrap' ORDER BY id DESC LIMIT 1`).Scan(&complete)
	if complete != "false" {
		t.Fatalf("audit of the interrupted run: complete=%q", complete)
	}
	// Race: rewrapBatch's compare-and-swap leaves a row that changed alone.
	row := Sealed{BotID: items[250].BotID}
	_ = pool.QueryRow(ctx, `SELECT ciphertext FROM secret_vault WHERE bot_id = $1`, row.BotID).Scan(&row.Ciphertext)
	newTok := mustToken(t, "bot_rotated_meanwhile")
	sealed, err := s.Seal(ctx, row.BotID, newTok)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Replace(ctx, pool, sealed); err != nil {
		t.Fatal(err)
	}
	n, changed, failed, err := s.rewrapBatch(ctx, []Sealed{row}, s.Cipher().KeyRef())
	if err != nil || n != 0 || changed != 1 || failed != 0 {
		t.Fatalf("raced row: n=%d changed=%d failed=%d %v", n, changed, failed, err)
	}
	got, err := s.LoadOne(ctx, row.BotID, SessionPurpose("t"))
	if err != nil || !got.Equal(newTok) {
		t.Fatalf("the rotated token was overwritten: %v", err)
	}
	st, err = s.Rewrap(ctx, RewrapOptions{Actor: "t", BatchSize: 100})
	if err != nil || st.Rewrapped != 199 || st.Current != 101 {
		t.Fatalf("re-run: %+v %v", st, err)
	}
	if err := s.Replace(ctx, pool, Sealed{BotID: "bot_nobody", Ciphertext: sealed.Ciphertext}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("replace missing: %v", err)
	}
}

func TestCache(t *testing.T) {
	pool := testPool(t)
	for name, mk := range ciphers(t) {
		t.Run(name, func(t *testing.T) {
			ctx := testCtx(t)
			reg := prometheus.NewRegistry()
			m := NewMetrics(reg)
			var logs bytes.Buffer
			s := NewStore(pool, mk(t), zerolog.New(&logs), m)
			items := seed(t, pool, s, 2500, "cache"+name)
			ids := make([]string, len(items))
			for i, it := range items {
				ids[i] = it.BotID
			}
			var now atomic.Int64
			now.Store(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
			clock := func() time.Time { return time.Unix(0, now.Load()) }
			c := NewCache(s, CacheOptions{TTL: time.Minute, Actor: "runner:t", Now: clock})

			failed, err := c.Prefetch(ctx, append(ids, "bot_nope"))
			if err != nil {
				t.Fatal(err)
			}
			if len(failed) != 1 || !errors.Is(failed["bot_nope"], ErrNotFound) {
				t.Fatalf("failed: %v", failed)
			}
			if c.Len() != 2500 || c.Misses() != 2501 || c.Hits() != 0 {
				t.Fatalf("after prefetch: len %d hits %d misses %d", c.Len(), c.Hits(), c.Misses())
			}
			cred, err := c.Token(ctx, ids[7])
			if err != nil || cred.Reveal() != items[7].Token.Reveal() {
				t.Fatalf("Token: %v", err)
			}
			if c.Hits() != 1 {
				t.Fatalf("hits %d", c.Hits())
			}
			// Prefetching again costs nothing.
			if _, err := c.Prefetch(ctx, ids[:10]); err != nil || c.Hits() != 11 {
				t.Fatalf("second prefetch: %v hits %d", err, c.Hits())
			}
			// A rotation in the database is not seen until Invalidate (the 401 path)...
			newTok := mustToken(t, "bot_new_after_401_"+name)
			sealed, err := s.Seal(ctx, ids[7], newTok)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Replace(ctx, pool, sealed); err != nil {
				t.Fatal(err)
			}
			if got, _ := c.Get(ctx, ids[7]); !got.Equal(items[7].Token) {
				t.Fatal("cache did not serve the cached token")
			}
			c.Invalidate(ids[7])
			if got, err := c.Get(ctx, ids[7]); err != nil || !got.Equal(newTok) {
				t.Fatalf("after invalidate: %v", err)
			}
			// ...or the TTL.
			now.Add(int64(2 * time.Minute))
			missesBefore := c.Misses()
			if _, err := c.Get(ctx, ids[8]); err != nil || c.Misses() != missesBefore+1 {
				t.Fatalf("after TTL: %v", err)
			}
			// The load pruned the 2499 expired tokens by itself.
			if n := c.Prune(); n != 0 || c.Len() != 1 {
				t.Fatalf("prune dropped %d more, %d left", n, c.Len())
			}
			if _, err := c.Get(ctx, "bot_nope"); !errors.Is(err, ErrNotFound) {
				t.Fatalf("unknown bot: %v", err)
			}
			// Concurrent misses for one bot share one load.
			c.Invalidate(ids[9])
			var wg sync.WaitGroup
			for range 8 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if got, err := c.Get(ctx, ids[9]); err != nil || !got.Equal(items[9].Token) {
						t.Errorf("concurrent get: %v", err)
					}
				}()
			}
			wg.Wait()
			if got := testutil.ToFloat64(m.cacheHits); got != float64(c.Hits()) {
				t.Errorf("metric hits %v != %d", got, c.Hits())
			}
			if got := testutil.ToFloat64(m.cacheMisses); got != float64(c.Misses()) {
				t.Errorf("metric misses %v != %d", got, c.Misses())
			}
			if n, err := testutil.GatherAndCount(reg); err != nil || n == 0 {
				t.Errorf("gather: %d %v", n, err)
			}
			if strings.Contains(logs.String(), "bot_") && strings.Contains(logs.String(), "secret") {
				t.Fatalf("logs mention a secret: %s", logs.String())
			}
		})
	}
}

// TestCacheOneBatch: prefetching 10,000 bots costs one query and ≤ 20 Transit calls.
func TestCacheOneBatch(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	pool := testPool(t)
	ctx := testCtx(t)
	tr, ct := newTestTransit(t)
	s := NewStore(pool, tr, zerolog.Nop(), nil)
	items := seed(t, pool, s, 10000, "big")
	ids := make([]string, len(items))
	for i, it := range items {
		ids[i] = it.BotID
	}
	c := NewCache(s, CacheOptions{})
	before := ct.calls.Load()
	failed, err := c.Prefetch(ctx, ids)
	if err != nil || len(failed) != 0 {
		t.Fatalf("%v %v", err, failed)
	}
	calls := ct.calls.Load() - before
	t.Logf("prefetch of 10,000 tokens: %d Transit calls", calls)
	if calls > 20 {
		t.Fatalf("%d calls", calls)
	}
	if got, _ := c.Get(ctx, ids[9999]); !got.Equal(items[9999].Token) {
		t.Fatal("wrong token")
	}
}
