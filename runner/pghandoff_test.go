package runner

import (
	"context"
	"testing"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/migrations/pgtest"
	"buko.app/agentrunner/permanent"
)

func TestPGHandoffOnceAndPermanentErrors(t *testing.T) {
	pool := newPool(t, pgtest.New(t))
	h := NewPGHandoff(pool, "r1", nil)
	ctx := context.Background()
	u := buko.Update{UpdateID: "42", Message: &buko.Message{MessageID: "m1", Chat: buko.Chat{ID: "c1", Type: buko.ChatPrivate}, Text: "hi"}}
	for range 3 {
		if err := h.Handoff(ctx, "bot1", u); err != nil {
			t.Fatal(err)
		}
	}
	var rows, attempts int
	var chat, text string
	if err := pool.QueryRow(ctx, `SELECT count(*), max(attempts), max(chat_id), max(payload->'message'->>'text') FROM handoffs`).Scan(&rows, &attempts, &chat, &text); err != nil {
		t.Fatal(err)
	}
	if rows != 1 || attempts != 3 || chat != "c1" || text != "hi" {
		t.Fatalf("rows %d attempts %d chat %q text %q", rows, attempts, chat, text)
	}
	for name, c := range map[string]struct {
		bot string
		u   buko.Update
	}{
		"no bot":        {"", u},
		"no update id":  {"bot1", buko.Update{}},
		"bad update id": {"bot1", buko.Update{UpdateID: "007"}},
	} {
		if err := h.Handoff(ctx, c.bot, c.u); !permanent.Is(err) {
			t.Errorf("%s: err = %v, want a permanent error", name, err)
		}
	}
}
