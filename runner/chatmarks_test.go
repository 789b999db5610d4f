package runner

import (
	"context"
	"testing"
	"time"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/migrations/pgtest"
)

func TestChatMarks(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool := newPool(t, pgtest.New(t))
	if _, err := pool.Exec(ctx, `INSERT INTO bots (id, handle, shard) VALUES ('bot_m', 'm_bot', 1), ('bot_n', 'n_bot', 2)`); err != nil {
		t.Fatal(err)
	}
	m := NewChatMarks(pool)
	get := func(bot, chat string) buko.UpdateID {
		t.Helper()
		id, err := m.LastHandled(ctx, bot, chat)
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	save := func(bot, chat string, id buko.UpdateID) {
		t.Helper()
		if err := m.SaveHandled(ctx, bot, chat, id); err != nil {
			t.Fatal(err)
		}
	}
	if id := get("bot_m", "c1"); id != "" {
		t.Fatalf("fresh chat has watermark %q", id)
	}
	// Only raised, never lowered; ids compare by length first (9 < 10).
	for _, step := range []struct {
		save, want buko.UpdateID
	}{{"9", "9"}, {"10", "10"}, {"9", "10"}, {"10", "10"}, {"11", "11"}, {"100", "100"}, {"99", "100"}} {
		save("bot_m", "c1", step.save)
		if id := get("bot_m", "c1"); id != step.want {
			t.Fatalf("after saving %s: %s, want %s", step.save, id, step.want)
		}
	}
	// Per chat and per bot.
	save("bot_m", "c2", "5")
	save("bot_n", "c1", "7")
	if a, b, c := get("bot_m", "c1"), get("bot_m", "c2"), get("bot_n", "c1"); a != "100" || b != "5" || c != "7" {
		t.Errorf("watermarks %s %s %s", a, b, c)
	}
	// Not an update id: refused (the table checks it too).
	if err := m.SaveHandled(ctx, "bot_m", "c1", "01"); err == nil {
		t.Error("saved a non-canonical update id")
	}
	if _, err := pool.Exec(ctx, `INSERT INTO chat_watermarks (bot_id, chat_id, last_update_id) VALUES ('bot_m', 'c3', 'x')`); err == nil {
		t.Error("the table took a non-numeric update id")
	}
	// A removed bot's watermarks go with it, and a late write for it is a no-op.
	if _, err := pool.Exec(ctx, `DELETE FROM bots WHERE id = 'bot_n'`); err != nil {
		t.Fatal(err)
	}
	save("bot_n", "c1", "8")
	if id := get("bot_n", "c1"); id != "" {
		t.Errorf("removed bot still has watermark %s", id)
	}
	var nilMarks *ChatMarks
	if _, err := nilMarks.LastHandled(ctx, "bot_m", "c1"); err == nil {
		t.Error("nil ChatMarks answered")
	}
}
