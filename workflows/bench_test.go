package workflows

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"go.temporal.io/sdk/client"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/internal/testsupport"
	"buko.app/agentrunner/permanent"
	"buko.app/agentrunner/sessions"
)

// Compile-time: *Handoff is a sessions.Handoff, and its permanent errors are
// what sessions looks for (permanent.Is).
var _ sessions.Handoff = (*Handoff)(nil)

func TestPermanentErrorsSatisfySessions(t *testing.T) {
	err := NewHandoff(nil, "q").Handoff(context.Background(), "bot", buko.Update{UpdateID: "1"})
	if !permanent.Is(err) {
		t.Fatalf("permanent.Is(%v) = false", err)
	}
}

// TestIntegrationGatewaySessionToReply runs the whole path: the simulator's
// Gateway, a real session, the Handoff, the workflow, the reply.
func TestIntegrationGatewaySessionToReply(t *testing.T) {
	e := newEnv(t)
	e.startWorker(WorkerOptions{})
	bot := e.newBot("gw_bot", "echo", nil)
	s := e.startSession(bot)
	defer func() { _ = s.Stop(context.Background()) }()
	user := e.newUser("Gina")
	chat := e.startChat(user, bot.ID)
	for i := 0; i < 5; i++ {
		e.say(chat, user, fmt.Sprintf("via gateway %d", i))
	}
	testsupport.Until(t, "six replies", waitLimit, func() (bool, string) {
		r := e.botReplies(chat)
		return len(r) == 6, fmt.Sprint(replyTexts(r))
	})
}

func (e *env) startSession(bot BotSpec) *sessions.Session {
	e.t.Helper()
	s, err := sessions.Start(context.Background(), sessions.Config{
		BotID: bot.ID, Client: e.api, Tokens: e.tokens, Handoff: e.handoff, Logger: zerolog.Nop(),
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return s
}

// BenchmarkIngest compares the Handoff with a bare SignalWithStart loop on the
// same server in the same run. "bare" is a client without codec calling
// SignalWithStartWorkflow directly; "handoff" is the production path
// (validation, codec, options, metrics). 16 goroutines stand for a runner's
// lanes, 64 chats per side get the signals, and no worker runs: only ingest
// is measured. The two sides alternate in chunks of 100 updates, in ABBA
// order, so drift of a shared machine and of the dev server's store hits both
// alike; b.N updates go through each side.
//
//	go test ./workflows -run '^$' -bench Ingest -benchtime 3000x
func BenchmarkIngest(b *testing.B) {
	ns := testNamespace(b)
	addr := temporalAddress(b)
	bare, err := client.Dial(client.Options{HostPort: addr, Namespace: ns, Logger: NewLogger(zerolog.Nop())})
	if err != nil {
		b.Fatal(err)
	}
	defer bare.Close()
	opts, err := ClientOptions(DialOptions{Address: addr, Namespace: ns, Keys: testKeys(b), Logger: zerolog.Nop(), Metrics: NewMetrics(prometheus.NewRegistry())})
	if err != nil {
		b.Fatal(err)
	}
	coded, err := client.Dial(opts)
	if err != nil {
		b.Fatal(err)
	}
	defer coded.Close()
	const (
		chats   = 64
		workers = 16
		chunk   = 100
	)
	queue := "bench-ingest-" + testsupport.RandHex(4)
	h := NewHandoff(coded, queue).WithMetrics(NewMetrics(prometheus.NewRegistry()))
	var seq atomic.Int64
	send := func(mode string) error {
		n := seq.Add(1)
		bot := "bot_bench_" + mode
		chat := fmt.Sprintf("chat%d", n%chats)
		u := buko.Update{UpdateID: buko.UpdateID(fmt.Sprint(n)), Message: &buko.Message{
			MessageID: fmt.Sprint(n), Chat: buko.Chat{ID: chat, Type: buko.ChatPrivate}, Text: "benchmark message text",
		}}
		if mode == "handoff" {
			return h.Handoff(context.Background(), bot, u)
		}
		id := WorkflowID(bot, chat)
		_, err := bare.SignalWithStartWorkflow(context.Background(), id, SignalUpdate, u,
			client.StartWorkflowOptions{ID: id, TaskQueue: queue}, ChatWorkflowName, ChatInput{BotID: bot, ChatID: chat})
		return err
	}
	runChunk := func(mode string, n int) time.Duration {
		var left atomic.Int64
		left.Store(int64(n))
		var wg sync.WaitGroup
		start := time.Now()
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for left.Add(-1) >= 0 {
					if err := send(mode); err != nil {
						b.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		return time.Since(start)
	}
	var spent = map[string]time.Duration{}
	b.ResetTimer()
	for done, round := 0, 0; done < b.N; round++ {
		n := min(chunk, b.N-done)
		order := []string{"bare", "handoff"}
		if round%2 == 1 {
			order = []string{"handoff", "bare"}
		}
		for _, mode := range order {
			spent[mode] += runChunk(mode, n)
		}
		done += n
	}
	b.StopTimer()
	bareRate := float64(b.N) / spent["bare"].Seconds()
	handoffRate := float64(b.N) / spent["handoff"].Seconds()
	b.ReportMetric(bareRate, "bare_updates/s")
	b.ReportMetric(handoffRate, "handoff_updates/s")
	b.ReportMetric(100*handoffRate/bareRate, "handoff_%_of_bare")
	for _, mode := range []string{"bare", "handoff"} {
		terminateAll(b, bare, "bot_bench_"+mode, chats)
	}
}

func terminateAll(b *testing.B, c client.Client, bot string, chats int) {
	for i := 0; i < chats; i++ {
		_ = c.TerminateWorkflow(context.Background(), WorkflowID(bot, fmt.Sprintf("chat%d", i)), "", "benchmark done")
	}
}

// BenchmarkEchoLatency measures a user's message in the simulator to the echo
// bot's reply in the simulator, through real Gateway sessions, the Handoff,
// the worker and the Bot API. Messages go one at a time, round robin over 8
// bots (so the official tier's quota never paces them).
//
//	go test ./workflows -run '^$' -bench EchoLatency -benchtime 200x
func BenchmarkEchoLatency(b *testing.B) {
	e := newEnv(b)
	e.startWorker(WorkerOptions{})
	type pair struct {
		bot        BotSpec
		chat, user string
	}
	var ps []pair
	for i := 0; i < 8; i++ {
		bot := e.newBot(fmt.Sprintf("lat_bot_%d", i), "echo", nil)
		s := e.startSession(bot)
		defer func() { _ = s.Stop(context.Background()) }()
		u := e.newUser(fmt.Sprintf("Lat%d", i))
		c := e.startChat(u, bot.ID)
		ps = append(ps, pair{bot, c, u})
	}
	for _, p := range ps { // the greetings
		testsupport.Until(b, "greeting", waitLimit, func() (bool, string) { return len(e.botReplies(p.chat)) == 1, "" })
	}
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		p := ps[i%len(ps)]
		want := len(e.botReplies(p.chat)) + 1
		start := time.Now()
		e.say(p.chat, p.user, fmt.Sprintf("latency probe %d", i))
		for len(e.botReplies(p.chat)) < want {
			if time.Since(start) > 2*time.Minute {
				b.Fatal("no reply within 2 minutes")
			}
			time.Sleep(time.Millisecond) // a latency measurement: poll at 1 ms resolution
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	pct := func(p float64) time.Duration { return lat[min(len(lat)-1, int(p*float64(len(lat))))] }
	b.ReportMetric(float64(pct(0.50).Microseconds())/1000, "p50_ms")
	b.ReportMetric(float64(pct(0.99).Microseconds())/1000, "p99_ms")
	b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, "max_ms")
}
