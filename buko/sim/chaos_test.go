package sim_test

import (
	"errors"
	"slices"
	"testing"

	"github.com/coder/websocket"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/buko/sim"
)

// outcomes runs n getMe calls and records each one's outcome.
func outcomes(t *testing.T, e *env, tok token, n int) []string {
	t.Helper()
	out := make([]string, n)
	for i := range out {
		_, err := e.api.GetMe(ctx(t), tok)
		var ae *buko.Error
		switch {
		case err == nil:
			out[i] = "ok"
		case errors.As(err, &ae):
			out[i] = ae.Code
		default:
			out[i] = "lost"
		}
	}
	return out
}

func TestChaosReplaysWithTheSameSeed(t *testing.T) {
	e := newEnv(t, sim.Options{})
	_, tok := e.bot(sim.BotSettings{})
	cfg := sim.ChaosConfig{Seed: 7, Rest5xxRate: 0.3, Rest429Rate: 0.2, ResponseLostRate: 0.1}
	echo, err := e.sc.SetChaos(ctx(e.t), cfg)
	e.must(err)
	if echo != cfg {
		t.Fatalf("PUT /sim/chaos answered %+v", echo)
	}
	first := outcomes(t, e, tok, 60)
	e.must(errOf(e.sc.SetChaos(ctx(e.t), cfg)))
	second := outcomes(t, e, tok, 60)
	if !slices.Equal(first, second) {
		t.Fatalf("same seed, different faults:\n%v\n%v", first, second)
	}
	for _, want := range []string{"ok", buko.CodeInternal, buko.CodeRateLimited, "lost"} {
		if !slices.Contains(first, want) {
			t.Fatalf("no %q among %v", want, first)
		}
	}
	cfg.Seed = 8
	e.must(errOf(e.sc.SetChaos(ctx(e.t), cfg)))
	if other := outcomes(t, e, tok, 60); slices.Equal(first, other) {
		t.Fatal("another seed gave the same faults")
	}
	st := e.stats().Chaos
	if st.Rest5xx == 0 || st.Rest429 == 0 || st.ResponseLost == 0 {
		t.Fatalf("chaos stats: %+v", st)
	}
	e.must(errOf(e.sc.SetChaos(ctx(e.t), sim.ChaosConfig{})))
	if got := outcomes(t, e, tok, 20); slices.ContainsFunc(got, func(s string) bool { return s != "ok" }) {
		t.Fatalf("chaos off: %v", got)
	}
	if code := e.ctl("PUT", "/sim/chaos", map[string]any{"rest_5xx_rate": 1.5}, nil); code != 400 {
		t.Fatalf("rate 1.5: HTTP %d", code)
	}
}

func TestChaosResponseLostStillActs(t *testing.T) {
	e := newEnv(t, sim.Options{})
	_, tok, _, chat := chatWithBot(e, sim.BotSettings{})
	e.must(errOf(e.sc.SetChaos(ctx(e.t), sim.ChaosConfig{Seed: 1, ResponseLostRate: 1})))
	_, err := e.api.SendMessage(ctx(t), tok, buko.SendMessageParams{ChatID: chat, Text: "did it post?"})
	var re *buko.RequestError
	if !errors.As(err, &re) {
		t.Fatalf("want a transport error, got %v", err)
	}
	e.must(errOf(e.sc.SetChaos(ctx(e.t), sim.ChaosConfig{})))
	tr, err := e.sc.Transcript(ctx(e.t), chat, "")
	e.must(err)
	if last := tr[len(tr)-1]; last.Text != "did it post?" || last.FromKind != "bot" {
		t.Fatalf("the lost call did not post: %+v", last)
	}
}

func TestChaosGateway(t *testing.T) {
	e := newEnv(t, sim.Options{})
	_, tok, u, chat := chatWithBot(e, sim.BotSettings{})

	e.must(errOf(e.sc.SetChaos(ctx(e.t), sim.ChaosConfig{Seed: 3, DuplicateDeliveryRate: 1})))
	e.say(chat, u, "twice")
	ws := e.connect(tok)
	a, b := ws.update(), ws.update()
	if a.UpdateID != b.UpdateID || a.Message.Text != "twice" {
		t.Fatalf("duplicate: %s %s", a.UpdateID, b.UpdateID)
	}
	ws.ack(a.UpdateID)
	ws.close()

	e.must(errOf(e.sc.SetChaos(ctx(e.t), sim.ChaosConfig{Seed: 3, DropConnectionRate: 1})))
	ws = e.connect(tok)
	e.say(chat, u, "never arrives")
	if code := ws.closed(); code != -1 && code != websocket.StatusAbnormalClosure {
		t.Fatalf("dropped socket close code %d", code)
	}
	st := e.stats().Chaos
	if st.Duplicated != 1 || st.DroppedConnection != 1 {
		t.Fatalf("chaos stats: %+v", st)
	}
	e.must(errOf(e.sc.SetChaos(ctx(e.t), sim.ChaosConfig{})))
	ws = e.connect(tok)
	if up := ws.update(); up.Message.Text != "never arrives" {
		t.Fatalf("after the drop: %q", up.Message.Text)
	}
}
