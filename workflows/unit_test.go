package workflows

import (
	"context"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"go.temporal.io/sdk/temporal"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/buko/sim"
	"buko.app/agentrunner/permanent"
	"buko.app/agentrunner/vault"
	"buko.app/agentrunner/workflows/agents"
)

func TestHandoffRejectsMalformedUpdatesPermanently(t *testing.T) {
	h := NewHandoff(nil, "q") // never reaches the client
	long := strings.Repeat("c", 1200)
	for name, tc := range map[string]struct {
		bot string
		u   buko.Update
	}{
		"no bot":       {"", textUpdate("1", "c", "x")},
		"slash in bot": {"a/b", textUpdate("1", "c", "x")},
		"bad id":       {"b", textUpdate("01", "c", "x")},
		"no id":        {"b", textUpdate("", "c", "x")},
		"unknown kind": {"b", buko.Update{UpdateID: "5"}},
		"long chat":    {"b", textUpdate("1", long, "x")},
	} {
		err := h.Handoff(context.Background(), tc.bot, tc.u)
		if err == nil || !permanent.Is(err) {
			t.Errorf("%s: want permanent, got %v", name, err)
		}
		var p interface{ Permanent() bool }
		if !errors.As(err, &p) {
			t.Errorf("%s: error lacks Permanent() for permanent.Is", name)
		}
	}
	if got := WorkflowID("bot_1", "spc_2"); got != "chat/bot_1/spc_2" {
		t.Errorf("workflow id %q", got)
	}
}

func TestQuotaWindowNeverExceeded(t *testing.T) {
	q := newQuotas(0) // never wait: report the delay
	now := time.Unix(1_000_000, 0)
	q.now = func() time.Time { return now }
	allowed := 0
	for i := 0; i < 100; i++ {
		d, err := q.wait(context.Background(), "b", TierFree, classMessage)
		if err != nil {
			t.Fatal(err)
		}
		if d == 0 {
			allowed++
		}
	}
	if allowed != 5 { // free: 20/min → burst 5 at once
		t.Errorf("burst allowed %d, want 5", allowed)
	}
	// Across a whole minute at most 20 messages pass.
	for s := 1; s <= 60; s++ {
		now = now.Add(time.Second)
		for {
			d, _ := q.wait(context.Background(), "b", TierFree, classMessage)
			if d > 0 {
				break
			}
			allowed++
		}
	}
	if allowed > 20 {
		t.Errorf("%d messages in 61 s on the free tier (20/min)", allowed)
	}
	// Chat actions have their own bucket; edits none.
	if d, _ := q.wait(context.Background(), "b", TierFree, classAction); d != 0 {
		t.Error("chat action blocked by the message quota")
	}
	if d, _ := q.wait(context.Background(), "b", TierFree, classFree); d != 0 {
		t.Error("edit blocked")
	}
	// A tier change takes effect.
	if d, _ := q.wait(context.Background(), "b", TierOfficial, classMessage); d != 0 {
		t.Error("official tier starts with a fresh bucket")
	}
}

func TestFairnessBound(t *testing.T) {
	f := newFairness(2)
	r1, ok1 := f.acquire("a")
	_, ok2 := f.acquire("a")
	_, ok3 := f.acquire("a")
	_, okB := f.acquire("b")
	if !ok1 || !ok2 || ok3 || !okB {
		t.Fatalf("acquire: %v %v %v %v", ok1, ok2, ok3, okB)
	}
	r1()
	r1() // idempotent
	if _, ok := f.acquire("a"); !ok {
		t.Fatal("slot not released")
	}
	if _, ok := f.acquire("a"); ok {
		t.Fatal("double release freed two slots")
	}
}

// activityEnv runs activities directly against the simulator.
func activityEnv(t *testing.T, tier string) (*Activities, *env, BotSpec, string) {
	t.Helper()
	s := sim.New(sim.Options{})
	srv := httptest.NewServer(s)
	t.Cleanup(func() { s.Close(); srv.Close() })
	e := &env{t: t, simURL: srv.URL, api: buko.NewClient(srv.URL, nil),
		tokens: &memTokens{m: map[string]vault.Token{}}, bots: &memBots{m: map[string]BotSpec{}}}
	bot := e.newBot("act_bot", "echo", nil)
	bot.Tier = tier
	e.bots.set(bot)
	_, err := e.control().PatchBot(context.Background(), bot.ID, sim.BotSettings{Tier: tier})
	e.must(err)
	u := e.newUser("Ann")
	chat := e.startChat(u, bot.ID)
	a := &Activities{bots: e.bots, tokens: e.tokens, api: e.api, quotas: newQuotas(time.Second), fair: newFairness(4),
		pool: newAgentPool(agents.Builtin(), agents.Env{Logger: zerolog.Nop()}), log: zerolog.Nop()}
	return a, e, bot, chat
}

func appError(t *testing.T, err error) *temporal.ApplicationError {
	t.Helper()
	var ae *temporal.ApplicationError
	if !errors.As(err, &ae) {
		t.Fatalf("want an application error, got %T %v", err, err)
	}
	return ae
}

func TestActivitiesMapBotAPIErrors(t *testing.T) {
	a, e, bot, chat := activityEnv(t, TierOfficial)
	ctx := context.Background()
	res, err := a.SendMessage(ctx, ActionInput{BotID: bot.ID, ChatID: chat, Action: agents.Action{Type: agents.ActionSend, Text: "hi"}})
	if err != nil || res.MessageID == "" {
		t.Fatalf("send: %v %+v", err, res)
	}
	// 404: unknown chat, not retryable.
	_, err = a.SendMessage(ctx, ActionInput{BotID: bot.ID, ChatID: "spc_nope", Action: agents.Action{Type: agents.ActionSend, Text: "hi"}})
	if ae := appError(t, err); !ae.NonRetryable() {
		t.Errorf("404 retryable: %v", ae)
	}
	// 429 from chaos: retryable after retry_after.
	_, err = e.control().SetChaos(ctx, sim.ChaosConfig{Seed: 1, Rest429Rate: 1})
	e.must(err)
	_, err = a.SendMessage(ctx, ActionInput{BotID: bot.ID, ChatID: chat, Action: agents.Action{Type: agents.ActionSend, Text: "hi"}})
	ae := appError(t, err)
	if ae.NonRetryable() || ae.Type() != buko.CodeRateLimited || ae.NextRetryDelay() != time.Second {
		t.Errorf("429: type %s nonretryable %v delay %v", ae.Type(), ae.NonRetryable(), ae.NextRetryDelay())
	}
	// 5xx: retryable with the policy's back-off.
	_, err = e.control().SetChaos(ctx, sim.ChaosConfig{Seed: 1, Rest5xxRate: 1})
	e.must(err)
	_, err = a.SendChatAction(ctx, ActionInput{BotID: bot.ID, ChatID: chat, Action: agents.Action{Type: agents.ActionTyping}})
	if ae := appError(t, err); ae.NonRetryable() || ae.NextRetryDelay() != 0 {
		t.Errorf("5xx: %v", ae)
	}
	_, err = e.control().SetChaos(ctx, sim.ChaosConfig{})
	e.must(err)
	// 401 after a rotation: the cached token is dropped, the call retried.
	_, err = e.control().RotateToken(ctx, bot.ID)
	e.must(err)
	_, err = a.SendMessage(ctx, ActionInput{BotID: bot.ID, ChatID: chat, Action: agents.Action{Type: agents.ActionSend, Text: "hi"}})
	if ae := appError(t, err); ae.NonRetryable() || ae.Type() != ErrTypeUnauthorized || e.tokens.invalidated != 1 {
		t.Errorf("401: %v invalidated %d", ae, e.tokens.invalidated)
	}
	// Unknown bot and bad input: not retryable.
	_, err = a.SendMessage(ctx, ActionInput{BotID: "bot_unknown", ChatID: chat, Action: agents.Action{Type: agents.ActionSend, Text: "hi"}})
	if ae := appError(t, err); !ae.NonRetryable() || ae.Type() != ErrTypeBotUnknown {
		t.Errorf("unknown bot: %v", ae)
	}
	_, err = a.SendMessage(ctx, ActionInput{BotID: bot.ID, ChatID: chat, Action: agents.Action{Type: agents.ActionSend}})
	if ae := appError(t, err); !ae.NonRetryable() {
		t.Errorf("empty text: %v", ae)
	}
}

func TestActivitiesForbiddenAndTierQuota(t *testing.T) {
	a, e, bot, chat := activityEnv(t, TierFree)
	ctx := context.Background()
	// The free tier may not edit even its own message: 403 METHOD_NOT_ALLOWED_FOR_TIER, not retryable.
	own, err := a.SendMessage(ctx, ActionInput{BotID: bot.ID, ChatID: chat, Action: agents.Action{Type: agents.ActionSend, Text: "mine"}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = a.EditMessageText(ctx, ActionInput{BotID: bot.ID, ChatID: chat, Action: agents.Action{Type: agents.ActionEdit, MessageID: own.MessageID, Text: "x"}})
	if ae := appError(t, err); !ae.NonRetryable() || ae.Type() != buko.CodeMethodNotAllowedForTier {
		t.Errorf("edit on free tier: %v", ae)
	}
	// Free tier: 20 messages a minute. The worker never lets the 21st reach Buko.
	deferred := 0
	for i := 0; i < 25; i++ {
		_, err := a.SendMessage(ctx, ActionInput{BotID: bot.ID, ChatID: chat, Action: agents.Action{Type: agents.ActionSend, Text: "m"}})
		if err != nil {
			ae := appError(t, err)
			if ae.Type() != ErrTypeQuotaWait || ae.NextRetryDelay() <= 0 {
				t.Fatalf("send %d: %v", i, ae)
			}
			deferred++
		}
	}
	if deferred == 0 {
		t.Error("quota never deferred a send")
	}
	if st := e.stats(); st.RateLimited != 0 {
		t.Errorf("Buko answered 429 %d times: the client-side quota let too much through", st.RateLimited)
	}
}

// A call that waits for its quota in the worker is counted (the
// agentrunner_workflows_quota_waits_total metric hangs on onWait).
func TestQuotaWaitIsCounted(t *testing.T) {
	q := newQuotas(5 * time.Second)
	waits := 0
	q.onWait = func() { waits++ }
	for waits == 0 {
		d, err := q.wait(context.Background(), "b", TierOfficial, classMessage)
		if err != nil || d > 0 {
			t.Fatalf("a short wait was deferred (%v) or failed (%v)", d, err)
		}
	}
	if waits != 1 {
		t.Fatalf("waits %d, want 1", waits)
	}
}
