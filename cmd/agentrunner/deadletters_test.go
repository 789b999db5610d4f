package main

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"buko.app/agentrunner/runner"
	"buko.app/agentrunner/sessions"
	"buko.app/agentrunner/vault"
)

// The replay command hands off a dead letter that the current decoder reads
// ("the fix": numeric ids), marks it replayed, leaves one that still fails
// with its replay_error, and is idempotent; list shows both, never payloads.
func TestDeadLettersCommands(t *testing.T) {
	f := newCLIFix(t)
	botID, tok := f.simBot(t, map[string]any{"handle": "dl_bot"})
	f.mustRun(t, tok+"\n", append([]string{"bots", "add", "--handle", "@dl_bot", "--agent", "echo"}, f.full()...)...)
	keys := filepath.Join(t.TempDir(), "payload-keys.json")
	f.mustRun(t, "", append([]string{"codec", "new-key", "--id", "k1", "--payload-keys", keys}, keyringArgs(f)...)...)

	// Store two dead letters as a runner would, with the same keys.
	ctx := context.Background()
	u := &lazyUnwrapper{open: func(ctx context.Context) (vault.Cipher, error) {
		return vault.Open(ctx, vault.Config{Cipher: vault.KindLocal, Keyring: f.keyring})
	}}
	defer u.close()
	kr, err := (&temporalFlags{keysFile: keys}).loadKeys(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	store := runner.NewDeadLetterStore(f.pool, kr)
	for _, d := range []sessions.DeadLetter{
		{UpdateID: "900", ChatID: "c9", Reason: sessions.ReasonUndecodable, Error: "old decoder",
			Payload: []byte(`{"update_id":900,"message":{"message_id":3,"chat":{"id":"c9"},"text":"fixed now"}}`)},
		{UpdateID: "901", Reason: sessions.ReasonUndecodable, Error: "x",
			Payload: []byte(`{"update_id":"901","message":{"chat":{"id":"c9"},"text":7}}`)},
	} {
		if err := store.DeadLetter(ctx, botID, d); err != nil {
			t.Fatal(err)
		}
	}

	out := f.mustRun(t, "", append([]string{"dead-letters", "list", "--bot", "@dl_bot"}, f.db()...)...)
	if !strings.Contains(out, "900") || !strings.Contains(out, "901") || strings.Contains(out, "fixed now") {
		t.Fatalf("list:\n%s", out)
	}
	_, _, err = f.run(t, "", append([]string{"dead-letters", "replay"}, f.db()...)...)
	if !isUsage(err) || !strings.Contains(err.Error(), "--all") {
		t.Fatalf("replay without a selection: %v", err)
	}
	replay := append([]string{"dead-letters", "replay", "--all", "--handoff", "postgres", "--payload-keys", keys, "-o", "json"}, f.cipher()...)
	for i := 0; i < 2; i++ {
		out, _, err = f.run(t, "", replay...)
		if err == nil || !strings.Contains(err.Error(), "1 dead letters did not replay") {
			t.Fatalf("replay %d: %v\n%s", i, err, out)
		}
		var outcomes []runner.ReplayOutcome
		if err := json.Unmarshal([]byte(out), &outcomes); err != nil {
			t.Fatalf("replay -o json: %v\n%s", err, out)
		}
		// The first run replays 900; the second finds only 901 pending.
		want := 2 - i
		if len(outcomes) != want || outcomes[len(outcomes)-1].Replayed || !strings.Contains(outcomes[len(outcomes)-1].Error, "still does not decode") {
			t.Fatalf("replay %d outcomes %+v", i, outcomes)
		}
		if i == 0 && (!outcomes[0].Replayed || outcomes[0].UpdateID != "900") {
			t.Fatalf("outcomes %+v", outcomes)
		}
	}
	if n := f.count(t, `SELECT count(*) FROM handoffs WHERE bot_id = $1 AND payload->'message'->>'text' = 'fixed now'`, botID); n != 1 {
		t.Fatalf("handed off %d times", n)
	}
	out = f.mustRun(t, "", append([]string{"dead-letters", "list", "--replayed", "-o", "json"}, f.db()...)...)
	var views []runner.DeadLetterView
	if err := json.Unmarshal([]byte(out), &views); err != nil || len(views) != 2 || views[0].ReplayedAt == nil || views[1].ReplayedAt != nil || views[1].ReplayError == nil {
		t.Fatalf("list -o json: %v\n%s", err, out)
	}
	if strings.Contains(f.captured.String(), tok) || strings.Contains(f.captured.String(), "fixed now") {
		t.Fatal("a token or a payload was printed")
	}
}
