package sim_test

import (
	"testing"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/buko/sim"
)

// A raw update reaches getUpdates byte for byte, with its id filled in, and
// takes its place in the log (an offset past it confirms it).
func TestRawUpdate(t *testing.T) {
	e := newEnv(t, sim.Options{})
	botID, tok := e.bot(sim.BotSettings{})
	id, err := e.sc.RawUpdate(ctx(t), botID, `{"update_id":$ID,"message":{"message_id":7,"chat":{"id":"c"},"text":"n"}}`)
	e.must(err)
	if !buko.UpdateID(id).Valid() {
		t.Fatalf("answer %+v", id)
	}
	b, err := e.api.PollUpdates(ctx(t), tok, buko.GetUpdatesParams{})
	if err != nil {
		t.Fatal(err)
	}
	if len(b.Updates) != 1 || string(b.Updates[0].UpdateID) != id || b.Updates[0].Message.MessageID != "7" {
		t.Fatalf("batch %+v", b)
	}
	id, err = e.sc.RawUpdate(ctx(t), botID, `{"update_id":"$ID","message":"broken"}`)
	e.must(err)
	b, err = e.api.PollUpdates(ctx(t), tok, buko.GetUpdatesParams{Offset: b.Updates[0].UpdateID.Next()})
	if err != nil || len(b.Updates) != 0 || len(b.Undecodable) != 1 || string(b.Undecodable[0].UpdateID) != id {
		t.Fatalf("broken batch %+v, %v", b, err)
	}
	if e.ctl("POST", "/sim/bots/nobody/raw-updates", map[string]any{"raw": "{}"}, nil) != 404 {
		t.Fatal("unknown bot accepted")
	}
}
