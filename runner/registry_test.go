package runner

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/buko/sim"
	"buko.app/agentrunner/migrations/pgtest"
	"buko.app/agentrunner/vault"
)

type regFixture struct {
	pool  *pgxpool.Pool
	reg   *Registry
	store *vault.Store
	sim   *httptest.Server
	logs  *bytes.Buffer
}

func newRegFixture(t *testing.T) *regFixture {
	t.Helper()
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, pgtest.New(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	s := sim.New(sim.Options{})
	srv := httptest.NewServer(s)
	t.Cleanup(func() { s.Close(); srv.Close() })
	kr := vault.NewLocal(filepath.Join(t.TempDir(), "keyring"), nil)
	if err := kr.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	logs := &bytes.Buffer{}
	store := vault.NewStore(pool, kr, zerolog.New(logs), nil)
	reg := NewRegistry(RegistryConfig{Pool: pool, Store: store, Buko: buko.NewClient(srv.URL, nil), Logger: zerolog.New(logs)})
	return &regFixture{pool: pool, reg: reg, store: store, sim: srv, logs: logs}
}

func regCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// simBot creates a bot in the simulator and returns its id and token.
func (f *regFixture) simBot(t *testing.T, s sim.BotSettings) (string, vault.Token) {
	t.Helper()
	out, err := sim.NewControl(f.sim.URL, sim.ControlOptions{}).CreateBot(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := vault.ParseToken(out.Token)
	if err != nil {
		t.Fatal(err)
	}
	return out.BotID, tok
}

func (f *regFixture) simRotate(t *testing.T, botID string) vault.Token {
	t.Helper()
	raw, err := sim.NewControl(f.sim.URL, sim.ControlOptions{}).RotateToken(context.Background(), botID)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := vault.ParseToken(raw)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func (f *regFixture) count(t *testing.T, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := f.pool.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestShardOf(t *testing.T) {
	// FNV-1a 32 of "a" is 0xe40c292c; of "" the offset basis 0x811c9dc5.
	if got := ShardOf("a", 1<<31); got != 0xe40c292c%(1<<31) {
		t.Fatalf("ShardOf(a) = %d", got)
	}
	if got := ShardOf("", 128); got != 0x811c9dc5%128 {
		t.Fatalf("ShardOf('') = %d", got)
	}
	if ShardOf("x", 0) != 0 {
		t.Fatal("n = 0")
	}
	for _, id := range []string{"bot_1", "bot_01J8ABCDEF", "x"} {
		if s := ShardOf(id, 128); s < 0 || s >= 128 {
			t.Fatalf("out of range: %d", s)
		}
	}
}

func TestRegistryLifecycle(t *testing.T) {
	f := newRegFixture(t)
	ctx := regCtx(t)
	id, tok := f.simBot(t, sim.BotSettings{Handle: "helper_bot", DisplayName: "Helper"})

	listen, err := pgx.Connect(ctx, f.pool.Config().ConnString())
	if err != nil {
		t.Fatal(err)
	}
	defer listen.Close(context.Background())
	if _, err := listen.Exec(ctx, "LISTEN agentrunner_bots"); err != nil {
		t.Fatal(err)
	}

	b, err := f.reg.Add(ctx, AddRequest{Actor: "test", Handle: "@Helper_Bot", Agent: AgentEcho, AgentConfig: json.RawMessage(` { "a" : 1 } `), Token: tok})
	if err != nil {
		t.Fatalf("add: %v", err)
	}
	if b.ID != id || b.Handle != "helper_bot" || b.DisplayName != "Helper" || b.Status != StatusActive ||
		b.Delivery != DeliveryGateway || b.Shard != ShardOf(id, 128) || b.KeyVersion != 1 ||
		string(b.AgentConfig) != `{"a": 1}` || b.QuotaTier != "official" || b.KeyRef != f.store.Cipher().KeyRef() {
		t.Fatalf("added bot: %+v (config %s)", b, b.AgentConfig)
	}
	nctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	n, err := listen.WaitForNotification(nctx)
	cancel()
	if err != nil || !strings.Contains(n.Payload, id) {
		t.Fatalf("notification: %v %v", n, err)
	}
	got, err := f.store.LoadOne(ctx, id, vault.SessionPurpose("t"))
	if err != nil || !got.Equal(tok) {
		t.Fatalf("stored token: %v", err)
	}
	if f.count(t, `SELECT count(*) FROM audit_log WHERE action = 'bot.add' AND bot_id = $1 AND actor = 'test'`, id) != 1 {
		t.Fatal("add not audited")
	}

	for _, ref := range []string{id, "helper_bot", "@HELPER_BOT", " helper_bot "} {
		if g, err := f.reg.Get(ctx, ref); err != nil || g.ID != id {
			t.Fatalf("get %q: %v", ref, err)
		}
	}
	if _, err := f.reg.Get(ctx, "nobody"); !errors.Is(err, ErrBotNotFound) {
		t.Fatalf("get unknown: %v", err)
	}
	if _, err := f.reg.Get(ctx, " "); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("get empty: %v", err)
	}

	// Pause and resume, idempotently, each change audited.
	if b, ch, err := f.reg.Pause(ctx, "test", id); err != nil || !ch || b.Status != StatusPaused {
		t.Fatalf("pause: %v %v %+v", err, ch, b)
	}
	if _, ch, err := f.reg.Pause(ctx, "test", "helper_bot"); err != nil || ch {
		t.Fatalf("pause again: %v changed=%v", err, ch)
	}
	if b, ch, err := f.reg.Resume(ctx, "test", id); err != nil || !ch || b.Status != StatusActive {
		t.Fatalf("resume: %v %v", err, ch)
	}
	if f.count(t, `SELECT count(*) FROM audit_log WHERE action IN ('bot.pause','bot.resume') AND bot_id = $1`, id) != 2 {
		t.Fatal("pause/resume audit rows")
	}
	if _, _, err := f.reg.Pause(ctx, "test", "nobody"); !errors.Is(err, ErrBotNotFound) {
		t.Fatalf("pause unknown: %v", err)
	}

	// Rotate: the old token dies in Buko; the new one is verified and stored.
	if _, err := f.pool.Exec(ctx, `UPDATE bots SET status = 'auth_failed' WHERE id = $1`, id); err != nil {
		t.Fatal(err)
	}
	newTok := f.simRotate(t, id)
	if _, err := f.reg.RotateToken(ctx, "test", id, tok); !errors.Is(err, ErrTokenRejected) {
		t.Fatalf("rotate to the revoked token: %v", err)
	}
	_, otherTok := f.simBot(t, sim.BotSettings{Handle: "other_bot"})
	if _, err := f.reg.RotateToken(ctx, "test", id, otherTok); !errors.Is(err, ErrBotMismatch) {
		t.Fatalf("rotate to another bot's token: %v", err)
	}
	if _, err := f.reg.RotateToken(ctx, "test", "nobody", newTok); !errors.Is(err, ErrBotNotFound) {
		t.Fatalf("rotate unknown: %v", err)
	}
	b, err = f.reg.RotateToken(ctx, "test", "helper_bot", newTok)
	if err != nil {
		t.Fatalf("rotate: %v", err)
	}
	if b.TokenRotatedAt == nil || b.Status != StatusActive {
		t.Fatalf("after rotate: %+v", b)
	}
	if got, err := f.store.LoadOne(ctx, id, vault.SessionPurpose("t")); err != nil || !got.Equal(newTok) {
		t.Fatalf("rotated token: %v", err)
	}
	if f.count(t, `SELECT count(*) FROM audit_log WHERE action = 'bot.rotate-token' AND bot_id = $1`, id) != 1 {
		t.Fatal("rotation not audited")
	}

	list, err := f.reg.List(ctx)
	if err != nil || len(list) != 1 || list[0].ID != id {
		t.Fatalf("list: %v %+v", err, list)
	}

	// Remove takes the secret row with it; the audit trail stays.
	if _, err := f.reg.Remove(ctx, "test", id); err != nil {
		t.Fatal(err)
	}
	if f.count(t, `SELECT count(*) FROM bots`)+f.count(t, `SELECT count(*) FROM secret_vault`) != 0 {
		t.Fatal("rows left after remove")
	}
	if f.count(t, `SELECT count(*) FROM audit_log WHERE bot_id = $1`, id) != 5 {
		t.Fatal("audit trail lost")
	}
	if _, err := f.reg.Remove(ctx, "test", id); !errors.Is(err, ErrBotNotFound) {
		t.Fatalf("remove twice: %v", err)
	}
	if strings.Contains(f.logs.String(), tok.Reveal()) || strings.Contains(f.logs.String(), newTok.Reveal()) {
		t.Fatal("a token reached the logs")
	}
}

func TestRegistryAddRefusals(t *testing.T) {
	f := newRegFixture(t)
	ctx := regCtx(t)
	_, tok := f.simBot(t, sim.BotSettings{Handle: "good_bot"})
	_, unofficial := f.simBot(t, sim.BotSettings{Handle: "third_party", Official: new(bool), Tier: "pro"})
	_, dupTok := f.simBot(t, sim.BotSettings{Handle: "dup_handle"})
	if _, err := f.pool.Exec(ctx, `INSERT INTO bots (id, handle, shard) VALUES ('bot_elsewhere', 'DUP_handle', 0)`); err != nil {
		t.Fatal(err)
	}
	forged, _ := vault.ParseToken("bot_forged_token_value")

	cases := []struct {
		name string
		req  AddRequest
		want error
		msg  string
	}{
		{"rejected token", AddRequest{Handle: "good_bot", Token: forged}, ErrTokenRejected, "401"},
		{"not official", AddRequest{Handle: "third_party", Token: unofficial}, ErrNotOfficial, "not an official"},
		{"handle mismatch", AddRequest{Handle: "someone_else", Token: tok}, ErrHandleMismatch, "@good_bot"},
		{"handle taken", AddRequest{Handle: "dup_handle", Token: dupTok}, ErrAlreadyManaged, "bot_elsewhere"},
		{"bad agent", AddRequest{Handle: "good_bot", Agent: "shell", Token: tok}, ErrInvalidArgument, "agent"},
		{"bad delivery", AddRequest{Handle: "good_bot", Delivery: "carrier-pigeon", Token: tok}, ErrInvalidArgument, "delivery"},
		{"bad config", AddRequest{Handle: "good_bot", AgentConfig: json.RawMessage(`[1]`), Token: tok}, ErrInvalidArgument, "JSON object"},
		{"no handle", AddRequest{Handle: "@", Token: tok}, ErrInvalidArgument, "handle"},
		{"no token", AddRequest{Handle: "good_bot"}, ErrInvalidArgument, "token"},
	}
	for _, c := range cases {
		_, err := f.reg.Add(ctx, c.req)
		if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: got %v, want %v mentioning %q", c.name, err, c.want, c.msg)
		}
	}
	if n := f.count(t, `SELECT count(*) FROM bots`); n != 1 {
		t.Fatalf("partial rows: %d bots", n)
	}
	if n := f.count(t, `SELECT count(*) FROM secret_vault`) + f.count(t, `SELECT count(*) FROM audit_log`); n != 0 {
		t.Fatalf("partial rows: %d", n)
	}
	if _, err := f.reg.Add(ctx, AddRequest{Handle: "good_bot", Token: tok, Delivery: DeliveryPolling, Agent: AgentHTTP}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.reg.Add(ctx, AddRequest{Handle: "good_bot", Token: tok}); !errors.Is(err, ErrAlreadyManaged) {
		t.Fatalf("second add: %v", err)
	}
	// Buko unreachable: a clear error, nothing written.
	dead := NewRegistry(RegistryConfig{Pool: f.pool, Store: f.store, Buko: buko.NewClient("http://127.0.0.1:1", nil)})
	_, t2 := f.simBot(t, sim.BotSettings{Handle: "late_bot"})
	if _, err := dead.Add(ctx, AddRequest{Handle: "late_bot", Token: t2}); err == nil || !strings.Contains(err.Error(), "cannot verify") {
		t.Fatalf("unreachable Buko: %v", err)
	}
	for _, tk := range []vault.Token{tok, unofficial, dupTok, t2} {
		if strings.Contains(f.logs.String(), tk.Reveal()) {
			t.Fatal("a token reached the logs")
		}
	}
}

// TestRegistryAddIsAtomic: when any write of the add fails, nothing is left.
func TestRegistryAddIsAtomic(t *testing.T) {
	f := newRegFixture(t)
	ctx := regCtx(t)
	_, tok := f.simBot(t, sim.BotSettings{Handle: "atomic_bot"})
	if _, err := f.pool.Exec(ctx, `CREATE FUNCTION fail_audit() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN RAISE EXCEPTION 'audit is down'; END $$;
		CREATE TRIGGER fail_audit BEFORE INSERT ON audit_log FOR EACH ROW EXECUTE FUNCTION fail_audit();`); err != nil {
		t.Fatal(err)
	}
	if _, err := f.reg.Add(ctx, AddRequest{Handle: "atomic_bot", Token: tok}); err == nil || !strings.Contains(err.Error(), "audit is down") {
		t.Fatalf("want the audit failure, got %v", err)
	}
	if n := f.count(t, `SELECT count(*) FROM bots`) + f.count(t, `SELECT count(*) FROM secret_vault`); n != 0 {
		t.Fatalf("%d partial rows", n)
	}
}
