package runner

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/internal/testsupport"
	"buko.app/agentrunner/runner/runnertest"
	"buko.app/agentrunner/sessions"
	"buko.app/agentrunner/workflows/codec"
)

func testKeys(t *testing.T) *codec.Keyring {
	t.Helper()
	key, err := codec.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	kr, err := codec.NewKeyring("dl-test", map[string][]byte{"dl-test": key})
	if err != nil {
		t.Fatal(err)
	}
	return kr
}

// withDeadLetters makes a test supervisor's sessions keep dead letters in
// store, with short backoffs and polls.
func withDeadLetters(store *DeadLetterStore) func(*SupervisorConfig) {
	return func(c *SupervisorConfig) {
		c.DeadLetters = store
		c.Tune = func(c *sessions.Config) {
			c.BackoffBase = 20 * time.Millisecond
			c.BackoffMax = 200 * time.Millisecond
			c.PollTimeout = time.Second
		}
	}
}

func rawUpdate(t *testing.T, env *runnertest.Env, botID, raw string) buko.UpdateID {
	t.Helper()
	id, err := env.Control.RawUpdate(context.Background(), botID, raw)
	if err != nil {
		t.Fatal(err)
	}
	return buko.UpdateID(id)
}

func simAcked(t *testing.T, env *runnertest.Env, botID string) buko.UpdateID {
	t.Helper()
	for _, v := range env.SimBots(t) {
		if v.BotID == botID {
			return buko.UpdateID(v.AckedUpdateID)
		}
	}
	t.Fatalf("no sim bot %s", botID)
	return ""
}

// The whole path on real Postgres, for both deliveries: an update that does
// not decode is stored in dead_letters (encrypted, no token), the updates
// around it are handed off, the cursor moves past it only once the row
// exists; while Postgres refuses the insert nothing is acked past it.
func TestDeadLettersEndToEnd(t *testing.T) {
	for _, delivery := range []string{sessions.DeliveryGateway, sessions.DeliveryPolling} {
		t.Run(delivery, func(t *testing.T) {
			env := runnertest.NewEnv(t, runnertest.EnvOptions{})
			bots := env.AddBots(t, 1, "dl"+delivery[:1])
			b := bots[0]
			ctx := context.Background()
			if _, err := env.Pool.Exec(ctx, `UPDATE bots SET delivery = $1`, delivery); err != nil {
				t.Fatal(err)
			}
			// Postgres refuses dead letters until the trigger is dropped.
			if _, err := env.Pool.Exec(ctx, `
				CREATE FUNCTION refuse_dl() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused by test'; END $$;
				CREATE TRIGGER refuse_dl BEFORE INSERT ON dead_letters FOR EACH ROW EXECUTE FUNCTION refuse_dl();`); err != nil {
				t.Fatal(err)
			}
			keys := testKeys(t)
			store := NewDeadLetterStore(env.Pool, keys)
			reg := startSupervisor(t, env, "dl-a", withDeadLetters(store)).reg
			env.Send(t, b, "before")
			testsupport.Within(t, "before handed off", 60*time.Second, func() bool { return env.HandedOffTexts(t)[b.ID]["before"] == 1 })
			testsupport.Within(t, "before acked", 60*time.Second, func() bool { return simAcked(t, env, b.ID) != "" })
			bad := rawUpdate(t, env, b.ID, `{"update_id":"$ID","message":{"message_id":"5","chat":{"id":"`+b.ChatID+`"},"text":["private","words"]}}`)
			testsupport.Within(t, "dead letter store refused a few times", 60*time.Second, func() bool {
				return testsupport.MetricValue(t, reg, "agentrunner_sessions_dead_letter_errors_total") >= 3
			})
			if acked := simAcked(t, env, b.ID); !acked.Less(bad) {
				t.Fatalf("acked %s past %s while Postgres refused its dead letter", acked, bad)
			}
			if _, err := env.Pool.Exec(ctx, `DROP TRIGGER refuse_dl ON dead_letters`); err != nil {
				t.Fatal(err)
			}
			env.Send(t, b, "after")
			testsupport.Within(t, "after handed off", 60*time.Second, func() bool { return env.HandedOffTexts(t)[b.ID]["after"] == 1 })
			testsupport.Within(t, "acked past the dead letter", 60*time.Second, func() bool { return bad.Less(simAcked(t, env, b.ID)) })

			dls, err := store.List(ctx, DeadLetterFilter{BotID: b.ID})
			if err != nil {
				t.Fatal(err)
			}
			if len(dls) != 1 || dls[0].UpdateID == nil || *dls[0].UpdateID != string(bad) || dls[0].Reason != sessions.ReasonUndecodable ||
				dls[0].ChatID == nil || *dls[0].ChatID != b.ChatID || dls[0].ReplayedAt != nil {
				t.Fatalf("dead letters %+v", dls)
			}
			if got := testsupport.MetricValue(t, reg, "agentrunner_runner_dead_letters_pending"); got != 1 {
				t.Errorf("pending gauge %v", got)
			}
			if got := testsupport.MetricValue(t, reg, "agentrunner_sessions_dead_letters_total", "reason", sessions.ReasonUndecodable); got != 1 {
				t.Errorf("dead letters counted %v", got)
			}
			noSecretsInDeadLetters(t, env, botTokens(t, env, bots)[0], "private")
		})
	}
}

// noSecretsInDeadLetters: no column of any row holds the token or plaintext.
func noSecretsInDeadLetters(t *testing.T, env *runnertest.Env, secrets ...string) {
	t.Helper()
	rows, err := env.Pool.Query(context.Background(), `SELECT row_to_json(d)::text, payload FROM dead_letters d`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		var text string
		var payload []byte
		if err := rows.Scan(&text, &payload); err != nil {
			t.Fatal(err)
		}
		n++
		for _, s := range secrets {
			if strings.Contains(text, s) || bytes.Contains(payload, []byte(s)) {
				t.Errorf("dead_letters row holds %q", s)
			}
		}
	}
	if n == 0 {
		t.Fatal("no dead letters to check")
	}
}

// The store: a redelivery adds no row, payloads are sealed and bound to
// their bot and update, plaintext rows are refused, and replay hands off a
// dead letter the current decoder reads, once.
func TestDeadLetterStoreAndReplay(t *testing.T) {
	env := runnertest.NewEnv(t, runnertest.EnvOptions{})
	bots := env.AddBots(t, 2, "dls")
	ctx := context.Background()
	store := NewDeadLetterStore(env.Pool, testKeys(t))
	tok := botTokens(t, env, bots)[0]
	// "The fix": this payload decodes with the current decoder (numeric
	// ids); stored as if an older runner could not read it.
	fixed := []byte(`{"update_id":700,"message":{"message_id":7,"chat":{"id":"` + bots[0].ChatID + `"},"from":{"id":9},"text":"replay me"}}`)
	broken := []byte(`{"update_id":"701","message":{"chat":{"id":"c"},"text":{"still":"broken"}}}`)
	for i := 0; i < 2; i++ { // the second offer is a redelivery
		for _, d := range []sessions.DeadLetter{
			{UpdateID: "700", ChatID: bots[0].ChatID, Reason: sessions.ReasonUndecodable, Error: "old decoder failed", Payload: fixed},
			{UpdateID: "701", Reason: sessions.ReasonUndecodable, Error: "x", Payload: broken},
			{Reason: sessions.ReasonUnreadableFrame, Error: "no id", Payload: []byte(`{"type":"update","update":{"update_id":"702","message":{"chat":{"id":"c"},"text":"secretframetext"}}}`)},
		} {
			if d.UpdateID == "" && i == 1 {
				continue
			}
			if err := store.DeadLetter(ctx, bots[0].ID, d); err != nil {
				t.Fatal(err)
			}
		}
	}
	all, err := store.List(ctx, DeadLetterFilter{})
	if err != nil || len(all) != 3 {
		t.Fatalf("list %d rows, %v", len(all), err)
	}
	counts, err := store.PendingByBot(ctx)
	if err != nil || counts[bots[0].ID] != 3 || len(counts) != 1 {
		t.Fatalf("pending %v, %v", counts, err)
	}
	noSecretsInDeadLetters(t, env, tok, "replay me", "still", "secretframetext")

	// A payload moved to another bot's row does not open.
	if _, err := env.Pool.Exec(ctx, `UPDATE dead_letters SET bot_id = $1 WHERE update_id = '701'`, bots[1].ID); err != nil {
		t.Fatal(err)
	}
	h := NewPGHandoff(env.Pool, "replayer", nil)
	out, err := store.Replay(ctx, h, all[1].ID)
	if err != nil || out.Replayed || !strings.Contains(out.Error, "another bot") {
		t.Fatalf("swapped row: %+v, %v", out, err)
	}
	if _, err := env.Pool.Exec(ctx, `UPDATE dead_letters SET bot_id = $1 WHERE update_id = '701'`, bots[0].ID); err != nil {
		t.Fatal(err)
	}
	// Still broken: recorded, left pending.
	out, err = store.Replay(ctx, h, all[1].ID)
	if err != nil || out.Replayed || !strings.Contains(out.Error, "still does not decode") {
		t.Fatalf("broken: %+v, %v", out, err)
	}
	// Fixed: handed off and marked; again: not handed off twice.
	for i := 0; i < 2; i++ {
		out, err = store.Replay(ctx, h, all[0].ID)
		if err != nil || !out.Replayed || out.Error != "" || out.UpdateID != "700" {
			t.Fatalf("fixed (%d): %+v, %v", i, out, err)
		}
	}
	if n := env.HandedOffTexts(t)[bots[0].ID]["replay me"]; n != 1 {
		t.Fatalf("replayed update handed off %d times", n)
	}
	// A whole frame kept without an id replays through the frame decoder.
	out, err = store.Replay(ctx, h, all[2].ID)
	if err != nil || !out.Replayed || out.UpdateID != "702" {
		t.Fatalf("frame: %+v, %v", out, err)
	}
	pending, err := store.List(ctx, DeadLetterFilter{Pending: true})
	if err != nil || len(pending) != 1 || pending[0].ID != all[1].ID || pending[0].ReplayError == nil {
		t.Fatalf("pending after replay: %+v, %v", pending, err)
	}
	// A row whose payload is not encrypted is refused.
	if _, err := env.Pool.Exec(ctx, `UPDATE dead_letters SET payload = $1 WHERE id = $2`, []byte(`plain`), all[1].ID); err != nil {
		t.Fatal(err)
	}
	if out, _ := store.Replay(ctx, h, all[1].ID); out.Replayed || out.Error == "" {
		t.Fatalf("plaintext row: %+v", out)
	}
}

// GET /api/v1/dead-letters lists without payloads; the page shows the count.
func TestDeadLettersAdmin(t *testing.T) {
	env := runnertest.NewEnv(t, runnertest.EnvOptions{})
	bots := env.AddBots(t, 1, "dla")
	ctx := context.Background()
	store := NewDeadLetterStore(env.Pool, testKeys(t))
	if err := store.DeadLetter(ctx, bots[0].ID, sessions.DeadLetter{UpdateID: "42", ChatID: "c1", Reason: sessions.ReasonHandoffRefused,
		Error: "refused", Payload: []byte(`{"update_id":"42","message":{"text":"user words"}}`)}); err != nil {
		t.Fatal(err)
	}
	c := newAdminServer(t, env, nil, testAdminToken)
	c.expect("GET", "/api/v1/dead-letters", "", "", 401)
	body := c.expect("GET", "/api/v1/dead-letters?bot_id="+bots[0].ID, testAdminToken, "", 200)
	var out struct {
		DeadLetters []map[string]any `json:"dead_letters"`
		Pending     int              `json:"pending"`
	}
	if err := json.Unmarshal([]byte(body), &out); err != nil {
		t.Fatal(err)
	}
	if len(out.DeadLetters) != 1 || out.Pending != 1 || out.DeadLetters[0]["update_id"] != "42" || out.DeadLetters[0]["reason"] != "handoff_refused" {
		t.Fatalf("list %s", body)
	}
	if _, ok := out.DeadLetters[0]["payload"]; ok || strings.Contains(body, "user words") {
		t.Fatalf("payload in the list: %s", body)
	}
	c.expect("GET", "/api/v1/dead-letters?pending=maybe", testAdminToken, "", 400)
	page := c.expect("GET", "/", testAdminToken, "", 200)
	if !strings.Contains(page, `id="dead-letter-counts"`) || !strings.Contains(page, `data-bot-id="`+bots[0].ID+`"`) {
		t.Fatalf("page without the dead-letter count:\n%.2000s", page)
	}
}
