package sim_test

// Capacity benchmarks of the simulator (docs/BENCHMARKS.md, "Simulator").
//
// BenchmarkGatewayDelivery: updates/s delivered end to end over real Gateway
// sockets to in-process clients that ack every update.
//
// BenchmarkGatewaySockets: memory per open idle socket and updates/s with N
// sockets open. The clients live in a child process (this test binary
// re-run with SIM_BENCH_CHILD=1), so the parent measures only the server,
// and each process stays within its own open-file limit. N comes from
// SIM_BENCH_SOCKETS (default 200); SIM_BENCH_UPDATES sets the updates pushed
// in the throughput phase (default 2000).

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/buko/sim"
	"buko.app/agentrunner/internal/testsupport"
)

func TestMain(m *testing.M) {
	if os.Getenv("SIM_BENCH_CHILD") == "1" {
		os.Exit(runSocketClients(os.Getenv("SIM_BENCH_URL")))
	}
	testsupport.Main(m) // fails the run when a test leaves a goroutine behind
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// direct calls the simulator's handler in process (no socket), for setup
// and for producing updates through the control API.
func direct(tb testing.TB, h http.Handler, method, path string, body, out any) {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req := httptest.NewRequest(method, path, rd)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		tb.Errorf("%s %s: HTTP %d %s", method, path, rec.Code, rec.Body.Bytes())
		return
	}
	if out != nil {
		if err := json.Unmarshal(rec.Body.Bytes(), out); err != nil {
			tb.Errorf("%s %s: %v", method, path, err)
		}
	}
}

func directStats(tb testing.TB, h http.Handler) sim.Stats {
	var st sim.Stats
	direct(tb, h, "GET", "/sim/stats", nil, &st)
	return st
}

// benchBot is a bot with a started private chat.
type benchBot struct {
	id, tok, user, chat string
}

func makeBots(tb testing.TB, h http.Handler, n, withChats int) []benchBot {
	out := make([]benchBot, n)
	var u struct {
		UserID string `json:"user_id"`
	}
	direct(tb, h, "POST", "/sim/users", map[string]any{"display_name": "Bench"}, &u)
	for i := range out {
		var b struct {
			BotID string `json:"bot_id"`
			Token string `json:"token"`
		}
		direct(tb, h, "POST", "/sim/bots", map[string]any{"handle": fmt.Sprintf("bench_%d", i)}, &b)
		out[i] = benchBot{id: b.BotID, tok: b.Token, user: u.UserID}
	}
	for i := 0; i < withChats && i < n; i++ {
		var c struct {
			ChatID string `json:"chat_id"`
		}
		direct(tb, h, "POST", "/sim/chats/private", map[string]any{"user_id": u.UserID, "bot_id": out[i].id}, &c)
		out[i].chat = c.ChatID
	}
	return out
}

// produce posts total user messages round-robin over the bots' chats from
// 8 goroutines.
func produce(tb testing.TB, h http.Handler, bots []benchBot, total int) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= total {
					return
				}
				b := bots[i%len(bots)]
				direct(tb, h, "POST", "/sim/chats/"+b.chat+"/messages", map[string]any{"user_id": b.user, "text": "bench " + strconv.Itoa(i)}, nil)
			}
		}()
	}
	wg.Wait()
}

// BenchmarkGatewayDelivery pushes b.N updates through the control API to
// SIM_BENCH_BOTS bots (default 100), each with one Gateway socket whose
// in-process client acks every update; it reports updates/s delivered.
func BenchmarkGatewayDelivery(b *testing.B) {
	nBots := envInt("SIM_BENCH_BOTS", 100)
	s := sim.New(sim.Options{})
	srv := httptest.NewServer(s)
	defer srv.Close()
	defer s.Close()
	bots := makeBots(b, s, nBots, nBots)
	wsURL := "ws" + strings.TrimPrefix(srv.URL, "http") + buko.GatewayPath

	var received atomic.Int64
	var wg sync.WaitGroup
	conns := make([]*websocket.Conn, nBots)
	for i, bt := range bots {
		dctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		c, _, err := websocket.Dial(dctx, wsURL, &websocket.DialOptions{HTTPHeader: buko.AuthHeader(token(bt.tok))})
		cancel()
		if err != nil {
			b.Fatalf("dial: %v", err)
		}
		conns[i] = c
		wg.Add(1)
		go func() {
			defer wg.Done()
			ackLoop(c, func() { received.Add(1) })
		}()
	}
	// The start updates (2 per bot) arrive first.
	testsupport.Within(b, "start updates", time.Minute, func() bool { return received.Load() == int64(2*nBots) })
	received.Store(0)

	b.ResetTimer()
	start := time.Now()
	produce(b, s, bots, b.N)
	testsupport.Within(b, "delivery", 10*time.Minute, func() bool { return received.Load() >= int64(b.N) })
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "updates/s")

	for _, c := range conns {
		_ = c.CloseNow()
	}
	wg.Wait()
}

// ackLoop reads a client socket: it answers pings and acks every update.
func ackLoop(c *websocket.Conn, onUpdate func()) {
	ctx := context.Background()
	for {
		_, data, err := c.Read(ctx)
		if err != nil {
			return
		}
		f, err := buko.DecodeFrame(data)
		if err != nil {
			continue
		}
		var reply []byte
		switch f.Type {
		case buko.FrameUpdate:
			if onUpdate != nil {
				onUpdate()
			}
			reply = buko.AckFrame(f.Update.UpdateID)
		case buko.FramePing:
			reply = buko.PongFrame()
		default:
			continue
		}
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		err = c.Write(wctx, websocket.MessageText, reply)
		cancel()
		if err != nil {
			return
		}
	}
}

// memSample is the server process's memory after a full GC.
type memSample struct {
	heap, stack, rss uint64
	goroutines       int
}

func sampleMem() memSample {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return memSample{heap: ms.HeapAlloc, stack: ms.StackInuse, rss: testsupport.RSS(), goroutines: runtime.NumGoroutine()}
}

// BenchmarkGatewaySockets opens SIM_BENCH_SOCKETS idle Gateway sockets (one
// per bot) from a child process and reports the server's memory per socket,
// then pushes SIM_BENCH_UPDATES updates to up to 1,000 of those bots (the
// child acks each) and reports updates/s with all sockets open. Run it with
// -benchtime=1x: one iteration is the whole measurement.
func BenchmarkGatewaySockets(b *testing.B) {
	n := envInt("SIM_BENCH_SOCKETS", 200)
	total := envInt("SIM_BENCH_UPDATES", 2000)
	active := min(n, 1000)
	for i := 0; i < b.N; i++ {
		benchSockets(b, n, active, total)
	}
}

func benchSockets(b *testing.B, n, active, total int) {
	b.StopTimer()
	s := sim.New(sim.Options{})
	srv := httptest.NewServer(s)
	defer srv.Close()
	defer s.Close()
	bots := makeBots(b, s, n, 0)
	base := sampleMem()

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "SIM_BENCH_CHILD=1", "SIM_BENCH_URL=ws"+strings.TrimPrefix(srv.URL, "http")+buko.GatewayPath)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		_ = stdin.Close() // the child closes its sockets and exits
		_ = cmd.Wait()
	}()
	// Tokens go to the child over a pipe: never through argv, env or files.
	go func() {
		w := bufio.NewWriter(stdin)
		for _, bt := range bots {
			w.WriteString(bt.tok + "\n")
		}
		w.WriteString("\n")
		w.Flush()
	}()
	start := time.Now()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		b.Fatalf("child: %v", err)
	}
	var opened, failed int
	if _, err := fmt.Sscanf(line, "ready %d %d", &opened, &failed); err != nil || failed > 0 {
		b.Fatalf("child: %q", line)
	}
	openTime := time.Since(start)
	testsupport.Within(b, "all sockets open", 5*time.Minute, func() bool { return directStats(b, s).GatewayOpen == int64(n) })
	// Idle: every writer has finished, one reader goroutine per socket is left.
	testsupport.Within(b, "idle sockets", 5*time.Minute, func() bool { return runtime.NumGoroutine() <= base.goroutines+n+8 })
	open := sampleMem()
	per := func(a, b uint64) float64 { return (float64(a) - float64(b)) / float64(n) }
	b.ReportMetric(per(open.heap, base.heap), "heap-B/socket")
	b.ReportMetric(per(open.stack, base.stack), "stack-B/socket")
	b.ReportMetric(per(open.heap+open.stack, base.heap+base.stack), "B/socket")
	b.ReportMetric(per(open.rss, base.rss), "rss-B/socket")
	b.ReportMetric(float64(open.goroutines-base.goroutines)/float64(n), "goroutines/socket")
	b.ReportMetric(openTime.Seconds(), "s-to-open")

	// Throughput with every socket open: start chats for `active` bots
	// (2 updates each), then push `total` messages; the child acks each.
	acked0 := directStats(b, s).Acked
	var u struct {
		UserID string `json:"user_id"`
	}
	direct(b, s, "POST", "/sim/users", map[string]any{"display_name": "Producer"}, &u)
	for i := 0; i < active; i++ {
		var c struct {
			ChatID string `json:"chat_id"`
		}
		direct(b, s, "POST", "/sim/chats/private", map[string]any{"user_id": u.UserID, "bot_id": bots[i].id}, &c)
		bots[i].chat, bots[i].user = c.ChatID, u.UserID
	}
	testsupport.Within(b, "start updates acked", 5*time.Minute, func() bool { return directStats(b, s).Acked-acked0 == int64(2*active) })
	acked1 := directStats(b, s).Acked
	b.StartTimer()
	t0 := time.Now()
	produce(b, s, bots[:active], total)
	testsupport.Within(b, "all updates acked", 10*time.Minute, func() bool { return directStats(b, s).Acked-acked1 >= int64(total) })
	elapsed := time.Since(t0)
	b.StopTimer()
	b.ReportMetric(float64(total)/elapsed.Seconds(), "updates/s")
	st := directStats(b, s)
	b.Logf("n=%d sockets: heap %.0f B/socket, stack %.0f B/socket, RSS %.0f B/socket, %.2f goroutines/socket; open in %v; %d updates to %d bots in %v (%.0f/s); server RSS %d MiB; gateway_open %d",
		n, per(open.heap, base.heap), per(open.stack, base.stack), per(open.rss, base.rss),
		float64(open.goroutines-base.goroutines)/float64(n), openTime.Round(time.Millisecond),
		total, active, elapsed.Round(time.Millisecond), float64(total)/elapsed.Seconds(), open.rss>>20, st.GatewayOpen)
}

// runSocketClients is the child process of BenchmarkGatewaySockets: it
// reads tokens from stdin (one per line, an empty line ends them), opens one
// socket per token, prints "ready <opened> <failed>", answers pings and acks
// updates until stdin closes, then closes its sockets.
func runSocketClients(url string) int {
	in := bufio.NewReader(os.Stdin)
	var toks []string
	for {
		line, err := in.ReadString('\n')
		line = strings.TrimSpace(line)
		if line == "" || err != nil {
			break
		}
		toks = append(toks, line)
	}
	conns := make([]*websocket.Conn, len(toks))
	var failed atomic.Int64
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: -1}}
	for i, tk := range toks {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			var c *websocket.Conn
			var err error
			for attempt := 0; attempt < 5; attempt++ {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				c, _, err = websocket.Dial(ctx, url, &websocket.DialOptions{HTTPHeader: buko.AuthHeader(token(tk)), HTTPClient: hc})
				cancel()
				if err == nil {
					break
				}
				time.Sleep(time.Duration(attempt+1) * 100 * time.Millisecond) // the child process's dial retry backoff
			}
			if err != nil {
				failed.Add(1)
				fmt.Fprintf(os.Stderr, "child: dial: %v\n", err)
				return
			}
			conns[i] = c
		}()
	}
	wg.Wait()
	var readers sync.WaitGroup
	for _, c := range conns {
		if c == nil {
			continue
		}
		readers.Add(1)
		go func() {
			defer readers.Done()
			ackLoop(c, nil)
		}()
	}
	fmt.Printf("ready %d %d\n", int64(len(toks))-failed.Load(), failed.Load())
	_, _ = io.Copy(io.Discard, in) // until the parent closes stdin
	for _, c := range conns {
		if c != nil {
			_ = c.CloseNow()
		}
	}
	readers.Wait()
	return 0
}
