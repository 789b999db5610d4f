package sessions

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/buko/sim"
	"buko.app/agentrunner/internal/testsupport"
)

// The memory benchmark runs the simulator in a child process (this test
// binary, re-executed into TestSimProcess) so that only the sessions' memory
// is in this process.
const simProcessEnv = "SESSIONS_SIM_PROCESS"

// TestSimProcess is not a test: it is the simulator process of
// BenchmarkIdleSessions. It serves on 127.0.0.1:0, prints the address and
// runs until its stdin closes.
func TestSimProcess(t *testing.T) {
	if os.Getenv(simProcessEnv) != "1" {
		t.Skip("the benchmark's simulator process; runs only when re-executed by BenchmarkIdleSessions")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := sim.New(sim.Options{GatewayAttemptsPerMinute: 1000})
	srv := &http.Server{Handler: s, ReadHeaderTimeout: 30 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	fmt.Printf("ADDR http://%s\n", ln.Addr())
	_, _ = io.Copy(io.Discard, os.Stdin)
	s.Close()
	_ = srv.Close()
}

func startSimProcess(b *testing.B) string {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestSimProcess$", "-test.v")
	cmd.Env = append(os.Environ(), simProcessEnv+"=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = stdin.Close()
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if addr, ok := strings.CutPrefix(sc.Text(), "ADDR "); ok {
			go func() { _, _ = io.Copy(io.Discard, stdout) }()
			return addr
		}
	}
	b.Fatalf("simulator process gave no address: %v", sc.Err())
	return ""
}

type nopHandoff struct{}

func (nopHandoff) Handoff(context.Context, string, buko.Update) error { return nil }

// staticTokens is a TokenSource over a fixed map.
type staticTokens map[string]string

func (m staticTokens) Token(_ context.Context, botID string) (buko.Credential, error) {
	return testCred(m[botID]), nil
}
func (staticTokens) Invalidate(string) {}

type memSample struct {
	rss, heap, stack uint64
	goroutines       int
}

func sampleMem() memSample {
	for range 5 {
		runtime.GC()
	}
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return memSample{rss: testsupport.RSS(), heap: ms.HeapInuse, stack: ms.StackInuse, goroutines: runtime.NumGoroutine()}
}

// BenchmarkIdleSessions opens N idle Gateway sessions (SESSIONS_BENCH_N,
// default 500) in this process against a simulator in another process, lets
// them idle through server pings (SESSIONS_BENCH_IDLE, default 3 s), and
// reports memory per session. Run it alone:
//
//	SESSIONS_BENCH_N=20000 SESSIONS_BENCH_IDLE=25s go test -run '^$' -bench IdleSessions -benchtime 1x ./sessions
func BenchmarkIdleSessions(b *testing.B) {
	n := 500
	if v := os.Getenv("SESSIONS_BENCH_N"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 {
			b.Fatalf("SESSIONS_BENCH_N=%q", v)
		}
	}
	idle := 3 * time.Second
	if v := os.Getenv("SESSIONS_BENCH_IDLE"); v != "" {
		var err error
		if idle, err = time.ParseDuration(v); err != nil {
			b.Fatalf("SESSIONS_BENCH_IDLE=%q", v)
		}
	}
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil && uint64(n)+200 > lim.Cur {
		capped := int(lim.Cur) - 200
		b.Logf("SESSIONS_BENCH_N=%d exceeds the open-file limit %d: running %d sessions", n, lim.Cur, capped)
		n = capped
	}
	for range b.N {
		runIdleSessions(b, n, idle)
	}
}

func runIdleSessions(b *testing.B, n int, idle time.Duration) {
	addr := startSimProcess(b)
	client := buko.NewClient(addr, nil)
	tokens := make(staticTokens, n)
	botIDs := make([]string, n)
	toks := make([]string, n)
	{ // create the bots, 8 at a time
		var wg sync.WaitGroup
		var next atomic.Int64
		errs := make(chan error, 8)
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					i := int(next.Add(1) - 1)
					if i >= n {
						return
					}
					id, tok, err := createBotAt(addr)
					if err != nil {
						errs <- err
						return
					}
					botIDs[i], toks[i] = id, tok
				}
			}()
		}
		wg.Wait()
		close(errs)
		if err := <-errs; err != nil {
			b.Fatal(err)
		}
		for i, id := range botIDs {
			tokens[id] = toks[i]
		}
	}

	base := sampleMem()
	var live atomic.Int64
	metrics := NewMetrics(nil)
	hc := NewGatewayHTTPClient()
	sessions := make([]*Session, 0, n)
	start := time.Now()
	b.ResetTimer()
	const batch = 500
	for i := 0; i < n; i += batch {
		for _, id := range botIDs[i:min(i+batch, n)] {
			s, err := Start(context.Background(), Config{
				BotID: id, Client: client, Tokens: tokens, Handoff: nopHandoff{},
				Logger: zerolog.Nop(), Metrics: metrics, HTTPClient: hc,
				OnState: func(st State, _ string) {
					if st == StateLive {
						live.Add(1)
					}
				},
			})
			if err != nil {
				b.Fatal(err)
			}
			sessions = append(sessions, s)
		}
		want := int64(min(i+batch, n))
		testsupport.Until(b, "sessions live", 5*time.Minute, func() (bool, string) {
			n := live.Load()
			return n >= want, fmt.Sprintf("%d of %d sessions live", n, want)
		})
	}
	ramp := time.Since(start)
	time.Sleep(idle) // deliberate: the sessions idle through server pings for the measurement
	b.StopTimer()
	rssLive := testsupport.RSS() // as the process stands, before forcing a collection
	after := sampleMem()
	if path := os.Getenv("SESSIONS_BENCH_HEAPPROFILE"); path != "" {
		writeHeapProfile(b, path)
	}
	if got := live.Load(); got != int64(n) {
		b.Errorf("%d live transitions for %d sessions (reconnects while idle?)", got, n)
	}

	per := func(a, z uint64) float64 { return float64(int64(z)-int64(a)) / float64(n) }
	b.ReportMetric(per(base.rss, after.rss), "rss-B/session")
	b.ReportMetric(per(base.rss, rssLive), "rss-beforeGC-B/session")
	b.ReportMetric(per(base.heap, after.heap), "heap-B/session")
	b.ReportMetric(per(base.stack, after.stack), "stack-B/session")
	b.ReportMetric(float64(after.goroutines-base.goroutines)/float64(n), "goroutines/session")
	b.ReportMetric(ramp.Seconds(), "ramp-s")
	b.Logf("sessions=%d ramp=%v idle=%v rss %0.1f→%0.1f MiB (%0.1f before GC) heap %0.1f→%0.1f MiB stacks %0.1f→%0.1f MiB goroutines %d→%d",
		n, ramp.Round(time.Millisecond), idle, mib(base.rss), mib(after.rss), mib(rssLive), mib(base.heap), mib(after.heap),
		mib(base.stack), mib(after.stack), base.goroutines, after.goroutines)

	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for _, s := range sessions {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := s.Stop(ctx); err != nil {
				b.Error(err)
			}
		}()
	}
	wg.Wait()
}

func writeHeapProfile(b *testing.B, path string) {
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		b.Fatal(err)
	}
}

func mib(v uint64) float64 { return float64(v) / (1 << 20) }

func createBotAt(addr string) (string, string, error) {
	out, err := sim.NewControl(addr, sim.ControlOptions{}).CreateBot(context.Background(), sim.BotSettings{})
	if err != nil {
		return "", "", fmt.Errorf("create bot: %w", err)
	}
	return out.BotID, out.Token, nil
}
