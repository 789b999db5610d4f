package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	historypb "go.temporal.io/api/history/v1"
	"go.temporal.io/api/temporalproto"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/buko/sim"
	"buko.app/agentrunner/internal/testsupport"
	"buko.app/agentrunner/vault"
	"buko.app/agentrunner/workflows"
	"buko.app/agentrunner/workflows/codec"
)

func needTemporal(t *testing.T) string {
	t.Helper()
	return testsupport.Getenv(t, "Temporal", "TEMPORAL_ADDRESS", testsupport.ServicesHint)
}

func TestCodecCommandsRejectBadUse(t *testing.T) {
	f := newCLIFix(t)
	keys := filepath.Join(t.TempDir(), "payload-keys.json")
	_, _, err := f.run(t, "", append([]string{"codec", "decode", "--payload-keys", keys}, keyringArgs(f)...)...)
	if !isUsage(err) || !strings.Contains(err.Error(), "codec new-key") {
		t.Errorf("decode without a key file: %v", err)
	}
	_, _, err = f.run(t, "", append([]string{"codec", "seal-secret"}, keyringArgs(f)...)...)
	if !isUsage(err) {
		t.Errorf("seal-secret without --bot-id: %v", err)
	}
	f.mustRun(t, "", append([]string{"codec", "new-key", "--id", "k1", "--payload-keys", keys}, keyringArgs(f)...)...)
	_, _, err = f.run(t, "", append([]string{"codec", "new-key", "--id", "k1", "--payload-keys", keys}, keyringArgs(f)...)...)
	if !isUsage(err) {
		t.Errorf("duplicate key id: %v", err)
	}
	if st, err := os.Stat(keys); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("key file mode: %v %v", st.Mode(), err)
	}
	_, _, err = f.run(t, "", "worker", "--max-concurrent-activities", "0")
	if !isUsage(err) {
		t.Errorf("worker with 0 slots: %v", err)
	}
}

// TestWorkerCommandEndToEnd runs `agentrunner worker` in-process against
// Postgres, the simulator and the Temporal dev server: a bot added with
// `bots add` answers through the worker, the history holds only ciphertext,
// and `codec decode` opens it.
func TestWorkerCommandEndToEnd(t *testing.T) {
	addr := needTemporal(t)
	f := newCLIFix(t)
	dir := t.TempDir()
	keys := filepath.Join(dir, "payload-keys.json")
	f.mustRun(t, "", append([]string{"codec", "new-key", "--id", "k1", "--payload-keys", keys}, keyringArgs(f)...)...)
	kf, _ := os.ReadFile(keys)
	if !strings.Contains(string(kf), `"k1": "local:`) {
		t.Fatalf("key not wrapped by the keyring:\n%s", kf)
	}
	id, tok := f.simBot(t, sim.BotSettings{Handle: "worker_bot", DisplayName: "Worker Bot"})
	f.mustRun(t, tok+"\n", append([]string{"bots", "add", "--handle", "worker_bot", "--agent", "echo"}, f.full()...)...)

	queue := fmt.Sprintf("worker-cmd-%d", time.Now().UnixNano())
	tflags := []string{"--temporal-address", addr, "--temporal-task-queue", queue, "--payload-keys", keys, "--admin-addr", "127.0.0.1:0"}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		root := newRootCmd()
		root.SetArgs(append(append([]string{"worker"}, f.full()...), append(tflags, "--log-format", "json")...))
		root.SetOut(io.Discard)
		// Temporal's task goroutines may still log as Run returns: a
		// locked writer, not a bare bytes.Buffer.
		logs := &serveLog{}
		root.SetErr(logs)
		err := root.ExecuteContext(ctx)
		if strings.Contains(logs.String(), tok) {
			err = errors.Join(err, errors.New("the worker logged the bot token"))
		}
		done <- err
	}()
	// stopWorker ends the worker and waits for it. No other CLI run may
	// overlap the worker's: setupLogging sets a zerolog global.
	stopped := false
	stopWorker := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := testsupport.ReceiveWithin(t, "the worker to stop", time.Minute, done); err != nil {
			t.Errorf("worker: %v", err)
		}
	}
	t.Cleanup(stopWorker)

	// A user writes; the test plays the session: poll, hand off.
	sc := sim.NewControl(f.sim.URL, sim.ControlOptions{})
	u, err := sc.CreateUser(ctx, "Una", "una")
	if err != nil {
		t.Fatal(err)
	}
	c, err := sc.OpenPrivateChat(ctx, u.UserID, id)
	if err != nil {
		t.Fatal(err)
	}
	secretText := "a personal note " + fmt.Sprint(time.Now().UnixNano())
	if _, err := sc.Say(ctx, c.ChatID, u.UserID, secretText); err != nil {
		t.Fatal(err)
	}

	ci, err := vault.Open(ctx, vault.Config{Cipher: vault.KindLocal, Keyring: f.keyring})
	if err != nil {
		t.Fatal(err)
	}
	defer ci.Cleanup()
	kr, err := codec.LoadKeyFile(ctx, keys, workflows.KeyUnwrapper{Cipher: ci})
	if err != nil {
		t.Fatal(err)
	}
	tc, err := workflows.Dial(ctx, workflows.DialOptions{Address: addr, Keys: kr, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	h := workflows.NewHandoff(tc, queue)
	api := buko.NewClient(f.sim.URL, nil)
	cred, _ := vault.ParseToken(tok)
	var got int
	for deadline := time.Now().Add(time.Minute); got < 3 && time.Now().Before(deadline); {
		ups, err := api.GetUpdates(ctx, cred, buko.GetUpdatesParams{Timeout: 1})
		if err != nil {
			t.Fatal(err)
		}
		for _, up := range ups {
			if err := h.Handoff(ctx, id, up); err != nil {
				t.Fatal(err)
			}
			got++
		}
	}
	var replies []string
	testsupport.Until(t, "two bot replies", 2*time.Minute, func() (bool, string) {
		tr, err := sc.Transcript(ctx, c.ChatID, "")
		if err != nil {
			t.Fatal(err)
		}
		replies = replies[:0]
		for _, m := range tr {
			if m.FromKind == "bot" {
				replies = append(replies, m.Text)
			}
		}
		return len(replies) >= 2, fmt.Sprintf("bot replies %q", replies)
	})
	if !strings.Contains(replies[0], "Worker Bot") || replies[1] != secretText {
		t.Fatalf("replies %q", replies)
	}

	// The history is ciphertext; codec decode opens it.
	hist := &historypb.History{}
	it := tc.GetWorkflowHistory(ctx, workflows.WorkflowID(id, c.ChatID), "", false, 0)
	for it.HasNext() {
		ev, err := it.Next()
		if err != nil {
			t.Fatal(err)
		}
		hist.Events = append(hist.Events, ev)
	}
	data, err := temporalproto.CustomJSONMarshalOptions{}.Marshal(hist)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(data, []byte(secretText)) || bytes.Contains(data, []byte(tok)) {
		t.Fatal("history holds user text or the token in the clear")
	}
	stopWorker()
	histFile := filepath.Join(dir, "history.json")
	if err := os.WriteFile(histFile, data, 0o600); err != nil {
		t.Fatal(err)
	}
	out := f.mustRun(t, "", append([]string{"codec", "decode", histFile, "--payload-keys", keys}, keyringArgs(f)...)...)
	if !strings.Contains(out, secretText) {
		t.Fatal("codec decode did not reveal the user text")
	}
}

// keyringArgs are the cipher flags alone (codec commands take no database).
func keyringArgs(f *cliFix) []string { return []string{"--cipher", "local", "--keyring", f.keyring} }

// TestPayloadKeyThatDoesNotOpenNamesFileAndCipher: a key file wrapped by one
// keyring, opened with another, fails with an error that names the key file
// and the cipher, not the token store's "this bot".
func TestPayloadKeyThatDoesNotOpenNamesFileAndCipher(t *testing.T) {
	f := newCLIFix(t)
	keys := filepath.Join(t.TempDir(), "payload-keys.json")
	f.mustRun(t, "", append([]string{"codec", "new-key", "--id", "k1", "--payload-keys", keys}, keyringArgs(f)...)...)
	other := filepath.Join(t.TempDir(), "other-keyring")
	_, _, err := f.run(t, "{}", "codec", "decode", "--payload-keys", keys, "--cipher", "local", "--keyring", other)
	if err == nil {
		t.Fatal("a key wrapped by another keyring opened")
	}
	msg := err.Error()
	for _, want := range []string{keys, `"k1"`, "local cipher"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not name %s", msg, want)
		}
	}
	if strings.Contains(msg, "this bot") {
		t.Errorf("error %q speaks of a bot", msg)
	}
	if !errors.Is(err, vault.ErrCiphertext) {
		t.Errorf("error %q is not vault.ErrCiphertext", msg)
	}
}

// TestPayloadKeysFlagShowsAValueName: pflag takes the usage's backquoted word
// as the placeholder, so `serve --help` must show a value name there, not a
// command.
func TestPayloadKeysFlagShowsAValueName(t *testing.T) {
	for _, cmd := range []string{"serve", "worker", "codec new-key"} {
		root := newRootCmd()
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetErr(&out)
		root.SetArgs(append(strings.Fields(cmd), "--help"))
		if err := root.Execute(); err != nil {
			t.Fatalf("%s --help: %v", cmd, err)
		}
		var line string
		for l := range strings.Lines(out.String()) {
			if strings.Contains(l, "--payload-keys") {
				line = l
			}
		}
		if !strings.Contains(line, "--payload-keys file ") {
			t.Errorf("%s --help: the --payload-keys line is %q, want the placeholder file", cmd, line)
		}
	}
}
