package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"buko.app/agentrunner/bench"
	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/buko/sim"
	"buko.app/agentrunner/internal/testsupport"
)

// benchSim is an in-process simulator for the bench commands.
func benchSim(t *testing.T, opts sim.Options) *httptest.Server {
	t.Helper()
	s := sim.New(opts)
	srv := httptest.NewServer(s)
	t.Cleanup(func() { s.Close(); srv.Close() })
	return srv
}

// runBench runs the CLI in-process and returns what it printed.
func runBench(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out, errb bytes.Buffer
	root := newRootCmd()
	root.SetArgs(args)
	root.SetOut(&out)
	root.SetErr(&errb)
	err = root.ExecuteContext(ctx)
	return out.String(), errb.String(), err
}

type testCred string

func (c testCred) Reveal() string { return string(c) }

// startEchoBot creates a bot in the simulator and plays it: a Gateway socket
// that answers every user message (not commands) with its text as a reply,
// twice when dup says so, then acks the update. It stops at test cleanup.
func startEchoBot(t *testing.T, simURL, handle string, dup func(text string) bool) (botID string) {
	t.Helper()
	cb, err := sim.NewControl(simURL, sim.ControlOptions{}).CreateBot(context.Background(), sim.BotSettings{Handle: handle})
	if err != nil {
		t.Fatalf("create bot: %v", err)
	}
	cred := testCred(cb.Token)
	api := buko.NewClient(simURL, nil)
	ctx, cancel := context.WithCancel(context.Background())
	conn, _, err := websocket.Dial(ctx, api.GatewayURL(), &websocket.DialOptions{HTTPHeader: buko.AuthHeader(cred)})
	if err != nil {
		cancel()
		t.Fatalf("echo bot dial: %v", err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			_, data, err := conn.Read(ctx)
			if err != nil {
				return
			}
			fr, err := buko.DecodeFrame(data)
			if err != nil {
				t.Errorf("echo bot: %v", err)
				return
			}
			switch fr.Type {
			case buko.FramePing:
				_ = conn.Write(ctx, websocket.MessageText, buko.PongFrame())
				continue
			case buko.FrameUpdate:
			default:
				continue
			}
			if m := fr.Update.Message; m != nil && m.Text != "" && !strings.HasPrefix(m.Text, "/") {
				replies := 1
				if dup != nil && dup(m.Text) {
					replies = 2
				}
				for range replies {
					if _, err := api.SendMessage(ctx, cred, buko.SendMessageParams{ChatID: m.Chat.ID, Text: m.Text, ReplyToMessageID: m.MessageID}); err != nil {
						if ctx.Err() == nil {
							t.Errorf("echo bot: sendMessage: %v", err)
						}
						return
					}
				}
			}
			if err := conn.Write(ctx, websocket.MessageText, buko.AckFrame(fr.Update.UpdateID)); err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() {
		_ = conn.Close(websocket.StatusNormalClosure, "")
		cancel()
		wg.Wait()
	})
	return cb.BotID
}

func TestBenchEcho(t *testing.T) {
	srv := benchSim(t, sim.Options{})
	botID := startEchoBot(t, srv.URL, "bench_echo_bot", nil)

	out, errOut, err := runBench(t, "bench", "echo", "--sim-url", srv.URL, "--bot", "@bench_echo_bot", "--messages", "30", "--concurrency", "3", "-o", "json")
	if err != nil {
		t.Fatalf("bench echo: %v\nstderr: %s", err, errOut)
	}
	var res bench.EchoResult
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("-o json does not parse: %v\n%s", err, out)
	}
	if res.Sent != 30 || res.Replied != 30 || res.Lost != 0 || res.Late != 0 || res.Duplicates != 0 || res.Concurrency != 3 {
		t.Fatalf("want 30 sent and replied, none lost or duplicated, over 3 chats: %+v", res)
	}
	if res.BotID != botID || res.BotHandle != "bench_echo_bot" || res.GatewaySockets != 1 {
		t.Fatalf("bot: %+v", res)
	}
	if res.LatencyMS.P50 <= 0 || res.LatencyMS.Max < res.LatencyMS.P99 || res.LatencyMS.P99 < res.LatencyMS.P50 {
		t.Fatalf("latency summary out of order: %+v", res.LatencyMS)
	}
	if strings.Contains(errOut, "warning") {
		t.Fatalf("unexpected warning: %s", errOut)
	}

	// By id, as a table; concurrency above the message count is clamped.
	out, errOut, err = runBench(t, "bench", "echo", "--sim-url", srv.URL+"/", "--bot", botID, "--messages", "4", "--concurrency", "9")
	if err != nil {
		t.Fatalf("bench echo (text): %v\nstderr: %s", err, errOut)
	}
	for _, want := range []string{"@bench_echo_bot (" + botID + ")", "4 messages over 4 chat(s)", "4 of 4 sent; lost 0 (late 0); duplicates 0", "p50 ", "p99 ", "replies/s", "sim 429s"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}

func TestBenchEchoCountsDuplicates(t *testing.T) {
	srv := benchSim(t, sim.Options{})
	// The first message of the run is answered twice; it is not the last
	// message of its chat, so the duplicate is in the transcript before the
	// chat's next message is answered.
	startEchoBot(t, srv.URL, "bench_dup_bot", func(text string) bool { return strings.Contains(text, " message 1 of ") })
	out, errOut, err := runBench(t, "bench", "echo", "--sim-url", srv.URL, "--bot", "bench_dup_bot", "--messages", "10", "--concurrency", "2", "-o", "json")
	if err == nil || isUsage(err) || !strings.Contains(err.Error(), "1 replies were duplicates") {
		t.Fatalf("want a run error naming the duplicate, got %v\nstderr: %s", err, errOut)
	}
	var res bench.EchoResult
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("the report must still print: %v\n%s", err, out)
	}
	if res.Sent != 10 || res.Replied != 10 || res.Lost != 0 || res.Duplicates != 1 {
		t.Fatalf("want 10 sent, 10 replied, 1 duplicate: %+v", res)
	}
}

func TestBenchEchoNoBotRunning(t *testing.T) {
	srv := benchSim(t, sim.Options{})
	if _, err := sim.NewControl(srv.URL, sim.ControlOptions{}).CreateBot(context.Background(), sim.BotSettings{Handle: "silent_bot"}); err != nil {
		t.Fatal(err)
	}
	// Nobody answers: every message is lost after the (short) timeout.
	out, errOut, err := runBench(t, "bench", "echo", "--sim-url", srv.URL, "--bot", "silent_bot", "--messages", "2", "--timeout", "50ms", "-o", "json")
	if err == nil || isUsage(err) || !strings.Contains(err.Error(), "2 of 2 messages got no reply") {
		t.Fatalf("want a run error naming the lost messages, got %v", err)
	}
	if !strings.Contains(errOut, "no Gateway socket open") {
		t.Errorf("want a warning that the bot has no socket, stderr: %s", errOut)
	}
	var res bench.EchoResult
	if err := json.Unmarshal([]byte(out), &res); err != nil || res.Lost != 2 || res.Replied != 0 {
		t.Fatalf("report: %v %+v", err, res)
	}
}

func TestBenchGateway(t *testing.T) {
	srv := benchSim(t, sim.Options{})
	out, errOut, err := runBench(t, "bench", "gateway", "--sim-url", srv.URL, "--bots", "5", "--updates", "200", "-o", "json")
	if err != nil {
		t.Fatalf("bench gateway: %v\nstderr: %s", err, errOut)
	}
	var res bench.GatewayResult
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("-o json does not parse: %v\n%s", err, out)
	}
	if res.Sockets != 5 || res.Updates != 200 || res.Delivered != 200 || res.Acked != 200 || res.SetupUpdatesDelivered != 10 || res.Redelivered != 0 {
		t.Fatalf("want 200 updates delivered and acked over 5 sockets: %+v", res)
	}
	// The sockets are closed when the command returns.
	testsupport.Until(t, "the run's sockets to close", 30*time.Second, func() (bool, string) {
		st, err := sim.NewControl(srv.URL, sim.ControlOptions{}).Stats(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return st.GatewayOpen == 0, fmt.Sprintf("%d sockets still open", st.GatewayOpen)
	})

	out, errOut, err = runBench(t, "bench", "gateway", "--sim-url", srv.URL, "--bots", "2", "--updates", "10")
	if err != nil {
		t.Fatalf("bench gateway (text): %v\nstderr: %s", err, errOut)
	}
	for _, want := range []string{"2 opened in", "B per socket", "delivered", "10 in", "updates/s", "acked (sim count)"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}

func TestBenchGuardedSim(t *testing.T) {
	srv := benchSim(t, sim.Options{AdminToken: "s3cret-admin"})
	_, _, err := runBench(t, "bench", "gateway", "--sim-url", srv.URL, "--bots", "1", "--updates", "1")
	if err == nil || isUsage(err) || !strings.Contains(err.Error(), "GET /sim/stats: HTTP 401") || !strings.Contains(err.Error(), "--admin-token-file") {
		t.Fatalf("want a 401 naming the call and the flag, got %v", err)
	}
	tok := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tok, []byte("s3cret-admin\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, err := runBench(t, "bench", "gateway", "--sim-url", srv.URL, "--admin-token-file", tok, "--bots", "1", "--updates", "3", "-o", "json")
	if err != nil {
		t.Fatalf("with the token: %v\nstderr: %s", err, errOut)
	}
	if strings.Contains(out+errOut, "s3cret-admin") {
		t.Fatal("the admin token was printed")
	}
}

func TestBenchBadInput(t *testing.T) {
	srv := benchSim(t, sim.Options{})
	notSim := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(notSim.Close)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + ln.Addr().String()
	ln.Close()
	emptyTok := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(emptyTok, nil, 0o600); err != nil {
		t.Fatal(err)
	}

	usage := []struct {
		name string
		args []string
		want string
	}{
		{"unknown bot", []string{"echo", "--sim-url", srv.URL, "--bot", "@nobody_bot"}, `--bot "@nobody_bot": the simulator at ` + srv.URL + ` has no such bot`},
		{"missing bot", []string{"echo", "--sim-url", srv.URL}, "--bot is required"},
		{"bad URL", []string{"echo", "--sim-url", "127.0.0.1:8081", "--bot", "x_bot"}, "--sim-url \"127.0.0.1:8081\": want the simulator's base URL"},
		{"bad URL scheme", []string{"gateway", "--sim-url", "ftp://127.0.0.1/"}, "want the simulator's base URL"},
		{"messages 0", []string{"echo", "--sim-url", srv.URL, "--bot", "x_bot", "--messages", "0"}, "--messages 0: want at least 1"},
		{"concurrency 0", []string{"echo", "--sim-url", srv.URL, "--bot", "x_bot", "--concurrency", "0"}, "--concurrency 0: want 1..1000"},
		{"timeout 0", []string{"echo", "--sim-url", srv.URL, "--bot", "x_bot", "--timeout", "0s"}, "--timeout 0s"},
		{"output", []string{"echo", "--sim-url", srv.URL, "--bot", "x_bot", "-o", "yaml"}, `-o "yaml": want text or json`},
		{"not a number", []string{"echo", "--sim-url", srv.URL, "--bot", "x_bot", "--messages", "many"}, "invalid argument"},
		{"bots 0", []string{"gateway", "--sim-url", srv.URL, "--bots", "0"}, "--bots 0"},
		{"updates -1", []string{"gateway", "--sim-url", srv.URL, "--updates", "-1"}, "--updates -1"},
		{"empty token file", []string{"gateway", "--sim-url", srv.URL, "--admin-token-file", emptyTok}, "is empty"},
		{"argument", []string{"echo", "extra"}, "takes no arguments"},
	}
	for _, tc := range usage {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := runBench(t, append([]string{"bench"}, tc.args...)...)
			if err == nil || !isUsage(err) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want a usage error containing %q, got %v", tc.want, err)
			}
		})
	}

	// Not usage mistakes but failures of the system measured: exit 1, naming the call.
	for _, tc := range []struct {
		name, url, want string
	}{
		{"nothing listening", closed, "simulator GET /sim/bots: "},
		{"not a simulator", notSim.URL, "simulator GET /sim/bots: HTTP 404"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := runBench(t, "bench", "echo", "--sim-url", tc.url, "--bot", "x_bot")
			if err == nil || isUsage(err) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want an error containing %q, got %v", tc.want, err)
			}
			var ce *sim.ControlError
			if tc.name == "not a simulator" && !errors.As(err, &ce) {
				t.Fatalf("want a *sim.ControlError, got %T", err)
			}
		})
	}
}

func TestBenchHelpTeaches(t *testing.T) {
	for _, args := range [][]string{{"bench", "--help"}, {"bench", "echo", "--help"}, {"bench", "gateway", "--help"}} {
		out, _, err := runBench(t, args...)
		if err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		if !strings.Contains(out, "--sim-url") || !strings.Contains(out, "AGENTRUNNER_BENCH_SIM_URL") {
			t.Errorf("%v lacks the --sim-url flag and its variable:\n%s", args, out)
		}
	}
	out, _, _ := runBench(t, "bench", "echo", "--help")
	for _, want := range []string{"make dev", "agentrunner bench echo --sim-url http://127.0.0.1:8081 --bot echo_bot --messages 500 --concurrency 8", "reply_to_message_id", "p50"} {
		if !strings.Contains(out, want) {
			t.Errorf("bench echo --help lacks %q", want)
		}
	}
}
