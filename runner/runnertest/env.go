package runnertest

import (
	"context"
	"fmt"
	"hash/fnv"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"buko.app/agentrunner/buko/sim"
	"buko.app/agentrunner/migrations/pgtest"
	"buko.app/agentrunner/vault"
)

// Env is what a runner needs, for tests: the simulator on a loopback port, a
// freshly migrated database of its own, and a local keyring. Everything is
// torn down at test cleanup.
type Env struct {
	SimURL  string // the simulator's base URL (BUKO_API_URL)
	DSN     string // the test database
	Keyring string // the local keyring file (AGENTRUNNER_KEYRING)
	Pool    *pgxpool.Pool
	Store   *vault.Store
	Sim     *sim.Server
	// Control is the simulator's control API (the typed client).
	Control *sim.Control
}

// EnvOptions tune NewEnv.
type EnvOptions struct {
	Sim sim.Options
	// AdminURL, if set, is the admin DSN of the server the test database is
	// created on (a test's own server, StartPostgres); default pgtest's.
	AdminURL string
}

// NewEnv starts a simulator, creates a migrated database and a keyring.
func NewEnv(t testing.TB, o EnvOptions) *Env {
	t.Helper()
	var dsn string
	if o.AdminURL != "" {
		dsn = pgtest.NewAt(t, o.AdminURL)
	} else {
		dsn = pgtest.New(t)
	}
	s := sim.New(o.Sim)
	srv := httptest.NewServer(s)
	t.Cleanup(func() { s.Close(); srv.Close() })

	dir, err := os.MkdirTemp("", "agentrunner-keyring-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	keyring := filepath.Join(dir, "keyring")
	ctx := context.Background()
	cipher, err := vault.Open(ctx, vault.Config{Cipher: vault.KindLocal, Keyring: keyring})
	if err != nil {
		t.Fatalf("runnertest: keyring: %v", err)
	}
	t.Cleanup(func() { _ = cipher.Cleanup() })
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 64
	return &Env{
		SimURL: srv.URL, DSN: dsn, Keyring: keyring, Pool: pool, Sim: s,
		Store:   vault.NewStore(pool, cipher, zerolog.Nop(), nil),
		Control: sim.NewControl(srv.URL, sim.ControlOptions{HTTPClient: &http.Client{Timeout: 60 * time.Second, Transport: tr}}),
	}
}

// Bot is a managed bot of a test, with the user and private chat that talk to it.
type Bot struct {
	ID, Handle     string
	UserID, ChatID string
}

// shardOf mirrors runner.ShardOf (FNV-1a 32 of the id, mod n); runner's
// tests check that the two agree.
func shardOf(id string, n int) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(id))
	return int(h.Sum32() % uint32(n))
}

// ShardOf is the shard this package files a bot under (for runner's check).
func ShardOf(id string, n int) int { return shardOf(id, n) }

// AddBots creates n bots in the simulator (handles prefix0, prefix1, …) and
// makes them managed bots (active) in the database in one transaction, their
// tokens sealed with the keyring in one batch. Each bot also gets a user and
// a private chat, whose /start is the bot's first update.
func (e *Env) AddBots(t testing.TB, n int, prefix string) []Bot {
	t.Helper()
	ctx := context.Background()
	bots := make([]Bot, n)
	plain := make([]vault.Plaintext, n)
	var mu sync.Mutex
	var firstErr error
	parallel(n, 16, func(i int) {
		handle := fmt.Sprintf("%s%d", prefix, i)
		created, err := e.Control.CreateBot(ctx, sim.BotSettings{Handle: handle, DisplayName: handle})
		if err != nil {
			mu.Lock()
			firstErr = err
			mu.Unlock()
			return
		}
		tok, err := vault.ParseToken(created.Token)
		if err != nil {
			mu.Lock()
			firstErr = fmt.Errorf("bot %s: the simulator's token does not parse: %w", created.BotID, err)
			mu.Unlock()
			return
		}
		bots[i] = Bot{ID: created.BotID, Handle: handle}
		plain[i] = vault.Plaintext{BotID: created.BotID, Token: tok}
	})
	if firstErr != nil {
		t.Fatalf("runnertest: %v", firstErr)
	}
	sealed, err := e.Store.Cipher().Encrypt(ctx, plain)
	if err != nil {
		t.Fatalf("runnertest: seal tokens: %v", err)
	}
	err = pgx.BeginFunc(ctx, e.Pool, func(tx pgx.Tx) error {
		var shards int
		if err := tx.QueryRow(ctx, `SELECT shard_count FROM cluster_settings`).Scan(&shards); err != nil {
			return err
		}
		rows := make([][]any, n)
		for i, b := range bots {
			rows[i] = []any{b.ID, b.Handle, b.Handle, shardOf(b.ID, shards)}
		}
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"bots"}, []string{"id", "handle", "display_name", "shard"}, pgx.CopyFromRows(rows)); err != nil {
			return fmt.Errorf("copy bots: %w", err)
		}
		keyRef := e.Store.Cipher().KeyRef()
		srows := make([][]any, n)
		for i, s := range sealed {
			srows[i] = []any{s.BotID, s.Ciphertext, keyRef}
		}
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"secret_vault"}, []string{"bot_id", "ciphertext", "key_ref"}, pgx.CopyFromRows(srows)); err != nil {
			return fmt.Errorf("copy secret_vault: %w", err)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("runnertest: store bots: %v", err)
	}
	e.OpenChats(t, bots)
	return bots
}

// OpenChats gives each bot a user and a private chat (the /start update).
func (e *Env) OpenChats(t testing.TB, bots []Bot) {
	t.Helper()
	var mu sync.Mutex
	var firstErr error
	ctx := context.Background()
	parallel(len(bots), 16, func(i int) {
		b := &bots[i]
		var c sim.StartedChat
		u, err := e.Control.CreateUser(ctx, "user of "+b.Handle, "")
		if err == nil {
			c, err = e.Control.OpenPrivateChat(ctx, u.UserID, b.ID)
		}
		if err != nil {
			mu.Lock()
			firstErr = err
			mu.Unlock()
			return
		}
		b.UserID, b.ChatID = u.UserID, c.ChatID
	})
	if firstErr != nil {
		t.Fatalf("runnertest: %v", firstErr)
	}
}

// Send posts text from the bot's user in its private chat (one update).
func (e *Env) Send(t testing.TB, b Bot, text string) {
	t.Helper()
	if err := e.SendErr(b, text); err != nil {
		t.Fatalf("runnertest: %v", err)
	}
}

// SendErr is Send for goroutines: it returns the error.
func (e *Env) SendErr(b Bot, text string) error {
	_, err := e.Control.Say(context.Background(), b.ChatID, b.UserID, text)
	return err
}

// Stats returns the simulator's counters.
func (e *Env) Stats(t testing.TB) sim.Stats {
	t.Helper()
	st, err := e.Control.Stats(context.Background())
	if err != nil {
		t.Fatalf("runnertest: %v", err)
	}
	return st
}

// SimBots lists the simulator's bots with their open sockets and acks.
func (e *Env) SimBots(t testing.TB) []sim.BotView {
	t.Helper()
	out, err := e.Control.Bots(context.Background())
	if err != nil {
		t.Fatalf("runnertest: %v", err)
	}
	return out
}

// Live counts the bots of ids with at least one open Gateway socket, and
// reports the highest number of sockets any of them has.
func (e *Env) Live(t testing.TB, ids map[string]bool) (live, maxOpen int) {
	t.Helper()
	for _, v := range e.SimBots(t) {
		if ids != nil && !ids[v.BotID] {
			continue
		}
		if v.GatewayOpen > 0 {
			live++
		}
		maxOpen = max(maxOpen, v.GatewayOpen)
	}
	return live, maxOpen
}

// HandedOffTexts returns, per bot, how many rows of the handoffs table carry
// each message text (so a test can check "once and only once").
func (e *Env) HandedOffTexts(t testing.TB) map[string]map[string]int {
	t.Helper()
	rows, err := e.Pool.Query(context.Background(), `SELECT bot_id, coalesce(payload->'message'->>'text', '') FROM handoffs`)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]map[string]int{}
	for rows.Next() {
		var bot, text string
		if err := rows.Scan(&bot, &text); err != nil {
			t.Fatal(err)
		}
		if out[bot] == nil {
			out[bot] = map[string]int{}
		}
		out[bot][text]++
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// IDs returns the set of the bots' ids.
func IDs(bots []Bot) map[string]bool {
	m := make(map[string]bool, len(bots))
	for _, b := range bots {
		m[b.ID] = true
	}
	return m
}

// parallel runs f(0..n-1) on at most w goroutines.
func parallel(n, w int, f func(i int)) {
	var wg sync.WaitGroup
	next := make(chan int)
	for range min(w, max(n, 1)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				f(i)
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
}
