package main

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"buko.app/agentrunner/buko/sim"
	"buko.app/agentrunner/runner"
	"buko.app/agentrunner/sessions"
	"buko.app/agentrunner/vault"
	"buko.app/agentrunner/workflows"
	"buko.app/agentrunner/workflows/codec"
)

// The replay command hands off a dead letter that the current decoder reads
// ("the fix": numeric ids), marks it replayed, leaves one that still fails
// with its replay_error, and is idempotent; list shows both, never payloads.
func TestDeadLettersCommands(t *testing.T) {
	f := newCLIFix(t)
	botID, tok := f.simBot(t, sim.BotSettings{Handle: "dl_bot"})
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

// Replay through Temporal (as production does): the dead letter becomes a
// signal to its chat workflow, which now exists; the row is marked replayed.
func TestDeadLettersReplayThroughTemporal(t *testing.T) {
	addr := needTemporal(t)
	f := newCLIFix(t)
	botID, tok := f.simBot(t, sim.BotSettings{Handle: "dlt_bot"})
	f.mustRun(t, tok+"\n", append([]string{"bots", "add", "--handle", "@dlt_bot", "--agent", "echo"}, f.full()...)...)
	keys := filepath.Join(t.TempDir(), "payload-keys.json")
	f.mustRun(t, "", append([]string{"codec", "new-key", "--id", "k1", "--payload-keys", keys}, keyringArgs(f)...)...)
	ctx := context.Background()
	ci, err := vault.Open(ctx, vault.Config{Cipher: vault.KindLocal, Keyring: f.keyring})
	if err != nil {
		t.Fatal(err)
	}
	defer ci.Cleanup()
	kr, err := codec.LoadKeyFile(ctx, keys, workflows.KeyUnwrapper{Cipher: ci})
	if err != nil {
		t.Fatal(err)
	}
	chat := fmt.Sprintf("spc_dl_%d", time.Now().UnixNano())
	if err := runner.NewDeadLetterStore(f.pool, kr).DeadLetter(ctx, botID, sessions.DeadLetter{UpdateID: "5", ChatID: chat,
		Reason: sessions.ReasonUndecodable, Error: "old decoder",
		Payload: []byte(`{"update_id":5,"message":{"message_id":1,"chat":{"id":"` + chat + `","type":"private"},"text":"via temporal"}}`)}); err != nil {
		t.Fatal(err)
	}
	queue := fmt.Sprintf("dead-letters-%d", time.Now().UnixNano())
	out := f.mustRun(t, "", append([]string{"dead-letters", "replay", "--bot", botID, "--temporal-address", addr,
		"--temporal-task-queue", queue, "--payload-keys", keys}, f.cipher()...)...)
	if !strings.Contains(out, "replayed 1 of 1") {
		t.Fatalf("replay: %s", out)
	}
	tc, err := workflows.Dial(ctx, workflows.DialOptions{Address: addr, Keys: kr, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	d, err := tc.DescribeWorkflow(ctx, workflows.WorkflowID(botID, chat), "")
	if err != nil || d.RawResponse.GetWorkflowExecutionInfo().GetTaskQueue() != queue {
		t.Fatalf("chat workflow after replay: %v, %v", d, err)
	}
	_ = tc.TerminateWorkflow(ctx, workflows.WorkflowID(botID, chat), "", "test done")
	if n := f.count(t, `SELECT count(*) FROM dead_letters WHERE replayed_at IS NOT NULL`); n != 1 {
		t.Fatalf("%d replayed rows", n)
	}
}
