package sim_test

import (
	"testing"
	"time"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/buko/sim"
)

func TestQuotaMessagesPerMinuteAndDay(t *testing.T) {
	clock := newFakeClock(time.Date(2026, 3, 1, 10, 0, 10, 0, time.UTC))
	e := newEnv(t, sim.Options{Now: clock.Now})
	botID, tok := e.bot(sim.BotSettings{Handle: "quota_bot", Tier: "free"})
	u := e.user("Quinn")
	chat := e.start(u, botID)
	send := func() error {
		_, err := e.api.SendMessage(ctx(t), tok, buko.SendMessageParams{ChatID: chat, Text: "q"})
		return err
	}
	// Free: 20 messages per minute; photos and documents count too.
	for i := 0; i < 19; i++ {
		if err := send(); err != nil {
			t.Fatalf("message %d: %v", i+1, err)
		}
	}
	if _, err := e.api.SendDocument(ctx(t), tok, buko.SendMediaParams{ChatID: chat, FileName: "a.txt", MimeType: "text/plain", Data: []byte("a")}); err != nil {
		t.Fatal(err)
	}
	ae := wantCode(t, send(), 429, buko.CodeRateLimited)
	if ae.RetryAfter != 50*time.Second {
		t.Fatalf("retry_after = %v, want 50s (to the end of the minute)", ae.RetryAfter)
	}
	status, hdr, env := e.rawCall(tok, "sendMessage", "application/json", []byte(`{"chat_id":"`+chat+`","text":"q"}`))
	if status != 429 || env.RetryAfter != 50 || hdr.Get("Retry-After") != "50" || env.ErrorCode != 429 {
		t.Fatalf("raw 429: HTTP %d retry_after %d header %q", status, env.RetryAfter, hdr.Get("Retry-After"))
	}
	clock.Advance(49*time.Second + 500*time.Millisecond)
	if ae := wantCode(t, send(), 429, buko.CodeRateLimited); ae.RetryAfter != time.Second {
		t.Fatalf("half a second before the reset: retry_after %v, want 1s", ae.RetryAfter)
	}
	clock.Advance(500 * time.Millisecond)
	if err := send(); err != nil {
		t.Fatalf("new minute: %v", err)
	}

	// The day: 1,000 messages; 21 are used. Fill it minute by minute.
	sent := 21
	for sent < 1000 {
		clock.Advance(time.Minute)
		for i := 0; i < 20 && sent < 1000; i++ {
			if err := send(); err != nil {
				t.Fatalf("message %d of the day: %v", sent+1, err)
			}
			sent++
		}
	}
	clock.Advance(time.Minute)
	ae = wantCode(t, send(), 429, buko.CodeRateLimited)
	now := clock.Now()
	midnight := time.Date(now.Year(), now.Month(), now.Day()+1, 0, 0, 0, 0, time.UTC)
	if want := midnight.Sub(now); ae.RetryAfter != want {
		t.Fatalf("daily retry_after = %v, want %v", ae.RetryAfter, want)
	}
	clock.Set(midnight)
	if err := send(); err != nil {
		t.Fatalf("next day: %v", err)
	}
	if st := e.stats(); st.RateLimited != 4 {
		t.Fatalf("rate_limited = %d, want 4", st.RateLimited)
	}
}

func TestQuotaPollsAndChatActions(t *testing.T) {
	clock := newFakeClock(time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC))
	e := newEnv(t, sim.Options{Now: clock.Now})
	botID, tok := e.bot(sim.BotSettings{Handle: "poll_bot", Tier: "pro"})
	u := e.user("Pat")
	chat := e.start(u, botID)
	// Pro: 60 polls per minute.
	for i := 0; i < 60; i++ {
		if _, err := e.api.GetUpdates(ctx(t), tok, buko.GetUpdatesParams{}); err != nil {
			t.Fatalf("poll %d: %v", i+1, err)
		}
	}
	_, err := e.api.GetUpdates(ctx(t), tok, buko.GetUpdatesParams{})
	if ae := wantCode(t, err, 429, buko.CodeRateLimited); ae.RetryAfter != time.Minute {
		t.Fatalf("poll retry_after = %v", ae.RetryAfter)
	}
	// Pro: 180 chat actions per minute; no daily quota.
	for i := 0; i < 180; i++ {
		if err := e.api.SendChatAction(ctx(t), tok, chat, "typing"); err != nil {
			t.Fatalf("action %d: %v", i+1, err)
		}
	}
	wantCode(t, e.api.SendChatAction(ctx(t), tok, chat, "typing"), 429, buko.CodeRateLimited)
	// Messages have their own quota.
	if _, err := e.api.SendMessage(ctx(t), tok, buko.SendMessageParams{ChatID: chat, Text: "still fine"}); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Minute)
	if err := e.api.SendChatAction(ctx(t), tok, chat, "typing"); err != nil {
		t.Fatal(err)
	}
}
