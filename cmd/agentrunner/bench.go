package main

// bench.go owns `agentrunner bench`: load measured from outside a running
// system through the simulator's control API, the way on-call checks a deploy
// (`bench echo`), and a capacity check of a simulator process (`bench gateway`).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/coder/websocket"
	"github.com/mattn/go-isatty"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/buko/sim"
	"buko.app/agentrunner/vault"
)

// benchCommon are the flags every bench subcommand shares.
type benchCommon struct {
	simURL         string
	adminTokenFile string
	output         string
	progress       string
	timeout        time.Duration
}

func newBenchCmd(g *globals) *cobra.Command {
	var bc benchCommon
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure a running system from outside, through the Buko simulator",
		Long: `Measure a running system from outside, as on-call would check a deploy.

Both subcommands talk to a Buko simulator (agentrunner sim, or the one inside
agentrunner dev) over HTTP: its control API (/sim/...) plays the users, and its
transcripts show what the bots answered. Nothing inside agentrunner is touched,
so the figures are what a user sees, end to end.

  echo     latency, losses and duplicates of a running echo bot
  gateway  Gateway delivery capacity of a simulator process (no agentrunner needed)

Results go to stdout (a table, or JSON with -o json); a progress bar goes to
stderr when it is a terminal. Runs leave their users, chats and bots in the
simulator (it has no delete): run against a dev or staging simulator.`,
		Args: noArgs,
	}
	pf := cmd.PersistentFlags()
	pf.StringVar(&bc.simURL, "sim-url", "http://127.0.0.1:8081", "base URL of the Buko simulator (agentrunner dev prints it)")
	pf.StringVar(&bc.adminTokenFile, "admin-token-file", "", "file holding the bearer token of a guarded control API (agentrunner sim --admin-token-file)")
	pf.StringVarP(&bc.output, "output", "o", "text", "output: text or json")
	pf.StringVar(&bc.progress, "progress", "auto", "progress bar on stderr: auto (when a terminal), always or never")
	pf.DurationVar(&bc.timeout, "timeout", 2*time.Minute, "echo: a message without a reply this long after it was sent is lost; gateway: the most to wait for deliveries and acks")
	envFlag(pf, "sim-url", "AGENTRUNNER_BENCH_SIM_URL")
	envFlag(pf, "admin-token-file", "AGENTRUNNER_BENCH_ADMIN_TOKEN_FILE")
	cmd.AddCommand(newBenchEchoCmd(g, &bc), newBenchGatewayCmd(g, &bc))
	return cmd
}

// validate checks the shared flags and returns the control-API client and
// whether to draw a progress bar.
func (bc *benchCommon) validate(cmd *cobra.Command) (*sim.Control, bool, error) {
	if bc.output != "text" && bc.output != "json" {
		return nil, false, usageError{fmt.Errorf("-o %q: want text or json", bc.output)}
	}
	if bc.timeout <= 0 {
		return nil, false, usageError{fmt.Errorf("--timeout %s: want a positive duration", bc.timeout)}
	}
	var bar bool
	switch bc.progress {
	case "auto":
		f, ok := cmd.ErrOrStderr().(*os.File)
		bar = ok && isatty.IsTerminal(f.Fd())
	case "always":
		bar = true
	case "never":
	default:
		return nil, false, usageError{fmt.Errorf("--progress %q: want auto, always or never", bc.progress)}
	}
	u, err := url.Parse(bc.simURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return nil, false, usageError{fmt.Errorf("--sim-url %q: want the simulator's base URL, like http://127.0.0.1:8081", bc.simURL)}
	}
	opts := sim.ControlOptions{UnauthorizedHint: "a guarded simulator: pass --admin-token-file", BaseName: "--sim-url"}
	if bc.adminTokenFile != "" {
		tok, err := readTokenFile("--admin-token-file", bc.adminTokenFile)
		if err != nil {
			return nil, false, err
		}
		opts.AdminToken = tok
	}
	return sim.NewControl(u.String(), opts), bar, nil
}

func (bc *benchCommon) newBar(w io.Writer, show bool, total int, what, unit string) *progressbar.ProgressBar {
	if !show {
		return nil
	}
	return progressbar.NewOptions(total,
		progressbar.OptionSetWriter(w),
		progressbar.OptionSetDescription(what),
		progressbar.OptionShowCount(),
		progressbar.OptionShowIts(),
		progressbar.OptionSetItsString(unit),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionSetWidth(30),
	)
}

func finishBar(w io.Writer, bar *progressbar.ProgressBar) {
	if bar != nil {
		_ = bar.Exit()
		fmt.Fprintln(w)
	}
}

// ---- the simulator's control API ----

// findBot resolves a handle (with or without @, any case) or a bot id.
func findBot(ctx context.Context, sc *sim.Control, ref string) (sim.BotView, error) {
	bots, err := sc.Bots(ctx)
	if err != nil {
		return sim.BotView{}, err
	}
	h := strings.TrimPrefix(ref, "@")
	for _, b := range bots {
		if b.BotID == ref || strings.EqualFold(b.Handle, h) {
			return b, nil
		}
	}
	return sim.BotView{}, usageError{fmt.Errorf("--bot %q: the simulator at %s has no such bot (it has %d; list them with curl %s/sim/bots)", ref, sc.BaseURL(), len(bots), sc.BaseURL())}
}

// ---- bench echo ----

// echoResult is what bench echo reports (-o json prints it as is).
type echoResult struct {
	SimURL          string        `json:"sim_url"`
	BotID           string        `json:"bot_id"`
	BotHandle       string        `json:"bot_handle"`
	Concurrency     int           `json:"concurrency"`
	TimeoutSeconds  float64       `json:"timeout_seconds"`
	Sent            int           `json:"sent"`
	Replied         int           `json:"replied"`    // first reply seen within the timeout
	Lost            int           `json:"lost"`       // no reply within the timeout
	Late            int           `json:"late"`       // of the lost, replied by the final check
	Duplicates      int           `json:"duplicates"` // replies beyond the first to one message
	ElapsedSeconds  float64       `json:"elapsed_seconds"`
	RepliesPerSec   float64       `json:"replies_per_second"`
	LatencyMS       latencySumary `json:"latency_ms"`
	SimRateLimited  int64         `json:"sim_rate_limited"` // 429s the simulator gave during the run (all bots)
	GatewaySockets  int           `json:"gateway_sockets"`  // the bot's open sockets at the start
	PollIntervalSec float64       `json:"poll_interval_seconds"`
}

type latencySumary struct {
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	Max  float64 `json:"max"`
	Mean float64 `json:"mean"`
}

func summarize(lat []time.Duration) latencySumary {
	if len(lat) == 0 {
		return latencySumary{}
	}
	s := slices.Clone(lat)
	slices.Sort(s)
	pct := func(p float64) float64 {
		i := int(math.Ceil(p*float64(len(s)))) - 1
		return ms(s[max(0, min(i, len(s)-1))])
	}
	var sum time.Duration
	for _, d := range s {
		sum += d
	}
	return latencySumary{P50: pct(0.50), P90: pct(0.90), P99: pct(0.99), Max: ms(s[len(s)-1]), Mean: ms(sum / time.Duration(len(s)))}
}

func ms(d time.Duration) float64 { return math.Round(float64(d)/float64(time.Millisecond)*100) / 100 }

func newBenchEchoCmd(_ *globals, bc *benchCommon) *cobra.Command {
	var (
		bot          string
		messages     int
		concurrency  int
		pollInterval time.Duration
	)
	cmd := &cobra.Command{
		Use:   "echo --bot HANDLE_OR_ID",
		Short: "End-to-end latency, losses and duplicates of a running echo bot",
		Long: `End-to-end latency, losses and duplicates of a running echo bot, measured from
outside through the simulator, the way a user sees it.

It creates --concurrency bench users in the simulator, each starts a private
chat with the bot (POST /sim/chats/private), and the chats post --messages
messages between them in parallel (POST /sim/chats/{id}/messages), each chat
one at a time: post, then poll the transcript (GET /sim/chats/{id}/messages?after=)
every --poll-interval until the bot's reply to that message (matched by
reply_to_message_id) shows up, or --timeout passes. Latency is from just before
the post to the poll that saw the reply.

Reported: latency p50/p90/p99/max; replies vs sent; lost (no reply within
--timeout; "late" counts those that did get one by the end); duplicates (more
than one reply to one message, from a last look at every transcript);
throughput (replies per second over the run); and the 429s the simulator gave
meanwhile. The worker paces each bot's sends to its tier quota (a burst of a
quarter of the per-minute quota, then three quarters of it spread evenly;
official: 30 at once, then one every 0.67 s): a run that sends more than the
burst measures that pacing, not the system. Keep --messages within the burst
(and a minute apart) to measure the path, or spread load over several bots.

The exit status is 1 when a message was lost or answered twice (after the
report), 2 for bad flags or an unknown bot.`,
		Example: `  # terminal 1: the whole system, with the seeded @echo_bot
  make dev
  # terminal 2:
  agentrunner bench echo --sim-url http://127.0.0.1:8081 --bot echo_bot --messages 500 --concurrency 8
  agentrunner bench echo --bot @echo_bot --messages 100 -o json | jq .latency_ms

  # a guarded simulator
  agentrunner bench echo --sim-url https://sim.staging.example --admin-token-file sim-token --bot bot_0123456789ABCDEF`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if bot == "" {
				return usageError{errors.New("--bot is required: the handle (echo_bot or @echo_bot) or id of the bot to measure")}
			}
			if messages < 1 {
				return usageError{fmt.Errorf("--messages %d: want at least 1", messages)}
			}
			if concurrency < 1 || concurrency > 1000 {
				return usageError{fmt.Errorf("--concurrency %d: want 1..1000", concurrency)}
			}
			if pollInterval <= 0 {
				return usageError{fmt.Errorf("--poll-interval %s: want a positive duration", pollInterval)}
			}
			sc, showBar, err := bc.validate(cmd)
			if err != nil {
				return err
			}
			concurrency = min(concurrency, messages)
			sc = sc.WithHTTPClient(pooledClient(concurrency))
			defer sc.CloseIdleConnections()
			res, err := runBenchEcho(cmd.Context(), sc, bc, cmd.ErrOrStderr(), showBar, bot, messages, concurrency, pollInterval)
			if err != nil {
				return err
			}
			if err := printEcho(cmd.OutOrStdout(), bc.output, res); err != nil {
				return err
			}
			if res.Lost > 0 || res.Duplicates > 0 {
				return fmt.Errorf("bench echo: %d of %d messages got no reply within %s, %d replies were duplicates", res.Lost, res.Sent, bc.timeout, res.Duplicates)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&bot, "bot", "", "the bot to measure: its handle (with or without @) or its bot id")
	f.IntVar(&messages, "messages", 100, "messages to send in all")
	f.IntVar(&concurrency, "concurrency", 1, "chats sending in parallel (one bench user each), one message in flight per chat")
	f.DurationVar(&pollInterval, "poll-interval", 2*time.Millisecond, "how often each chat polls its transcript while waiting (the latency's resolution)")
	return cmd
}

// echoChat is one bench chat: its user, the messages it sends, what it saw.
type echoChat struct {
	userID, chatID string
	startID        string   // the /start message: the transcript after it is ours
	texts          []string // the messages this chat sends, in order
	sent           []string // their message ids
	latency        []time.Duration
	lost           map[string]bool
}

func runBenchEcho(ctx context.Context, sc *sim.Control, bc *benchCommon, stderr io.Writer, showBar bool, ref string, messages, concurrency int, poll time.Duration) (*echoResult, error) {
	b, err := findBot(ctx, sc, ref)
	if err != nil {
		return nil, err
	}
	if b.GatewayOpen == 0 {
		fmt.Fprintf(stderr, "warning: @%s has no Gateway socket open at the simulator: unless it polls, is its runner up?\n", b.Handle)
	}
	st0, err := sc.Stats(ctx)
	if err != nil {
		return nil, err
	}
	run := time.Now().UTC().Format("150405.000")
	chats := make([]*echoChat, concurrency)
	for i := range chats {
		chats[i] = &echoChat{lost: map[string]bool{}}
	}
	for i := range messages {
		c := chats[i%concurrency]
		c.texts = append(c.texts, fmt.Sprintf("bench %s message %d of %d", run, i+1, messages))
	}
	// Users and chats, a few at a time.
	setup, sctx := errgroup.WithContext(ctx)
	setup.SetLimit(8)
	for i, c := range chats {
		setup.Go(func() error {
			u, err := sc.CreateUser(sctx, fmt.Sprintf("bench %s user %d", run, i+1), "")
			if err != nil {
				return err
			}
			sch, err := sc.OpenPrivateChat(sctx, u.UserID, b.BotID)
			if err != nil {
				return err
			}
			c.userID, c.chatID, c.startID = u.UserID, sch.ChatID, sch.MessageID
			return nil
		})
	}
	if err := setup.Wait(); err != nil {
		return nil, err
	}

	bar := bc.newBar(stderr, showBar, messages, "bench echo", "msgs")
	start := time.Now()
	g, gctx := errgroup.WithContext(ctx)
	for _, c := range chats {
		g.Go(func() error { return c.run(gctx, sc, bc.timeout, poll, bar) })
	}
	err = g.Wait()
	elapsed := time.Since(start)
	finishBar(stderr, bar)
	if err != nil {
		return nil, err
	}

	res := &echoResult{
		SimURL: sc.BaseURL(), BotID: b.BotID, BotHandle: b.Handle, Concurrency: concurrency,
		TimeoutSeconds: bc.timeout.Seconds(), ElapsedSeconds: elapsed.Seconds(),
		GatewaySockets: b.GatewayOpen, PollIntervalSec: poll.Seconds(),
	}
	var lat []time.Duration
	for _, c := range chats {
		res.Sent += len(c.sent)
		res.Lost += len(c.lost)
		lat = append(lat, c.latency...)
		// A last look at the whole transcript: duplicates, and late replies.
		tr, err := sc.Transcript(ctx, c.chatID, c.startID)
		if err != nil {
			return nil, err
		}
		ours := make(map[string]int, len(c.sent))
		for _, id := range c.sent {
			ours[id] = 0
		}
		for _, m := range tr {
			if n, ok := ours[m.ReplyToMessageID]; ok && m.FromKind == "bot" && m.FromID == b.BotID {
				ours[m.ReplyToMessageID] = n + 1
			}
		}
		for id, n := range ours {
			if n > 1 {
				res.Duplicates += n - 1
			}
			if n > 0 && c.lost[id] {
				res.Late++
			}
		}
	}
	res.Replied = len(lat)
	res.LatencyMS = summarize(lat)
	if elapsed > 0 {
		res.RepliesPerSec = math.Round(float64(res.Replied)/elapsed.Seconds()*10) / 10
	}
	st1, err := sc.Stats(ctx)
	if err != nil {
		return nil, err
	}
	res.SimRateLimited = st1.RateLimited - st0.RateLimited
	return res, nil
}

// run sends the chat's messages one at a time, each awaiting its reply.
func (c *echoChat) run(ctx context.Context, sc *sim.Control, timeout, poll time.Duration, bar *progressbar.ProgressBar) error {
	cursor := c.startID
	replied := map[string]bool{}
	tick := time.NewTicker(poll)
	defer tick.Stop()
	for _, text := range c.texts {
		t0 := time.Now()
		id, err := sc.Say(ctx, c.chatID, c.userID, text)
		if err != nil {
			return err
		}
		c.sent = append(c.sent, id)
		deadline := t0.Add(timeout)
	wait:
		for {
			tr, err := sc.Transcript(ctx, c.chatID, cursor)
			if err != nil {
				return err
			}
			seen := time.Now()
			for _, m := range tr {
				cursor = m.MessageID
				if m.FromKind == "bot" && m.ReplyToMessageID == id && !replied[id] {
					replied[id] = true
					c.latency = append(c.latency, seen.Sub(t0))
				}
			}
			if replied[id] {
				break
			}
			if seen.After(deadline) {
				c.lost[id] = true
				break
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-tick.C:
			}
			continue wait
		}
		if bar != nil {
			_ = bar.Add(1)
		}
	}
	return nil
}

func printEcho(w io.Writer, format string, r *echoResult) error {
	if format == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "bot\t@%s (%s) at %s, %d Gateway socket(s) open\n", r.BotHandle, r.BotID, r.SimURL, r.GatewaySockets)
	fmt.Fprintf(tw, "load\t%d messages over %d chat(s), one in flight per chat; timeout %s\n", r.Sent, r.Concurrency, time.Duration(r.TimeoutSeconds*float64(time.Second)))
	fmt.Fprintf(tw, "replies\t%d of %d sent; lost %d (late %d); duplicates %d\n", r.Replied, r.Sent, r.Lost, r.Late, r.Duplicates)
	l := r.LatencyMS
	fmt.Fprintf(tw, "latency\tp50 %.1f ms  p90 %.1f ms  p99 %.1f ms  max %.1f ms  (mean %.1f ms)\n", l.P50, l.P90, l.P99, l.Max, l.Mean)
	fmt.Fprintf(tw, "throughput\t%.1f replies/s over %.2f s\n", r.RepliesPerSec, r.ElapsedSeconds)
	fmt.Fprintf(tw, "sim 429s\t%d", r.SimRateLimited)
	if r.SimRateLimited > 0 {
		fmt.Fprint(tw, " (a tier quota paced Bot API calls: latency includes the waits)")
	}
	fmt.Fprintln(tw)
	return tw.Flush()
}

// ---- bench gateway ----

// gatewayResult is what bench gateway reports.
type gatewayResult struct {
	SimURL                string  `json:"sim_url"`
	Sockets               int     `json:"sockets"`
	OpenSeconds           float64 `json:"open_seconds"`
	BytesPerSocket        int64   `json:"bytes_per_socket"` // this process: Go heap + goroutine stacks
	HeapBytesPerSocket    int64   `json:"heap_bytes_per_socket"`
	StackBytesPerSocket   int64   `json:"stack_bytes_per_socket"`
	GoroutinesPerSocket   float64 `json:"goroutines_per_socket"`
	Updates               int     `json:"updates"`
	Producers             int     `json:"producers"`
	PostSeconds           float64 `json:"post_seconds"`
	Delivered             int64   `json:"delivered"` // update frames this process received
	DeliveredSeconds      float64 `json:"delivered_seconds"`
	DeliveredPerSec       float64 `json:"delivered_per_second"`
	Acked                 int64   `json:"acked"` // the simulator's count of confirmed updates
	AckedSeconds          float64 `json:"acked_seconds"`
	AckedPerSec           float64 `json:"acked_per_second"`
	Redelivered           int64   `json:"redelivered"`
	SetupUpdatesDelivered int64   `json:"setup_updates_delivered"` // my_chat_member and /start of each chat
}

// benchSocket is one Gateway socket of bench gateway.
type benchSocket struct {
	conn   *websocket.Conn
	chatID string
}

func newBenchGatewayCmd(_ *globals, bc *benchCommon) *cobra.Command {
	var bots, updates, producers int
	cmd := &cobra.Command{
		Use:   "gateway",
		Short: "Gateway delivery capacity of a simulator process",
		Long: `Gateway delivery capacity of a simulator process: a quick check of what one
simulator can carry, with no agentrunner involved.

It creates --bots bots in the simulator (POST /sim/bots), opens one Gateway
socket for each from this process (GET /bot/ws, Authorization: Bot <token>),
starts a private chat of one bench user with each bot, then posts --updates
user messages round robin across the chats through the control API with
--concurrency producers, while every socket acks every update it receives.

Reported: the time to open the sockets and this process's memory per socket
(Go heap + goroutine stacks, after GC; the client's side, not the simulator's);
updates/s delivered (frames received here) and acked (the simulator's own count
of confirmed updates, GET /sim/stats), from the first post. The simulator's
figures for its own side are in docs/BENCHMARKS.md, section "Simulator".

The bots stay in the simulator (it has no delete). This process needs one file
descriptor per socket: mind ulimit -n for large --bots.`,
		Example: `  agentrunner sim --addr 127.0.0.1:8081 &
  agentrunner bench gateway --sim-url http://127.0.0.1:8081 --bots 100 --updates 20000
  agentrunner bench gateway --bots 1000 --updates 50000 -o json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if bots < 1 || bots > 100000 {
				return usageError{fmt.Errorf("--bots %d: want 1..100000", bots)}
			}
			if updates < 1 {
				return usageError{fmt.Errorf("--updates %d: want at least 1", updates)}
			}
			if producers < 1 || producers > 1000 {
				return usageError{fmt.Errorf("--concurrency %d: want 1..1000", producers)}
			}
			sc, showBar, err := bc.validate(cmd)
			if err != nil {
				return err
			}
			sc = sc.WithHTTPClient(pooledClient(producers))
			defer sc.CloseIdleConnections()
			res, err := runBenchGateway(cmd.Context(), sc, bc, cmd.ErrOrStderr(), showBar, bots, updates, producers)
			if err != nil {
				return err
			}
			return printGateway(cmd.OutOrStdout(), bc.output, res)
		},
	}
	f := cmd.Flags()
	f.IntVar(&bots, "bots", 100, "bots to create, one Gateway socket each")
	f.IntVar(&updates, "updates", 10000, "user messages to post across the bots' chats")
	f.IntVar(&producers, "concurrency", 8, "control-API calls in flight while posting")
	return cmd
}

func runBenchGateway(ctx context.Context, sc *sim.Control, bc *benchCommon, stderr io.Writer, showBar bool, nBots, nUpdates, producers int) (res *gatewayResult, err error) {
	st0, err := sc.Stats(ctx)
	if err != nil {
		return nil, err
	}
	run := time.Now().UTC().Format("150405.000")
	user, err := sc.CreateUser(ctx, "bench gateway "+run, "")
	if err != nil {
		return nil, err
	}
	tokens := make([]vault.Token, nBots)
	botIDs := make([]string, nBots)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(producers)
	for i := range nBots {
		g.Go(func() error {
			cb, err := sc.CreateBot(gctx, sim.BotSettings{DisplayName: fmt.Sprintf("bench gateway %s bot %d", run, i+1)})
			if err != nil {
				return err
			}
			tok, err := vault.ParseToken(cb.Token)
			if err != nil {
				return fmt.Errorf("simulator POST /sim/bots: %w", err)
			}
			tokens[i], botIDs[i] = tok, cb.BotID
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}

	// Memory of this process before any socket, then open them all.
	heap0, stack0, gor0 := memNow()
	wsURL := buko.NewClient(sc.BaseURL(), nil).GatewayURL()
	socks := make([]*benchSocket, nBots)
	var delivered, setupSeen atomic.Int64
	sockCtx, stopSocks := context.WithCancel(ctx)
	defer stopSocks()
	var readers sync.WaitGroup
	readErr := make(chan error, 1)
	defer func() {
		// Close politely, many at a time (each close awaits the server's).
		var closing errgroup.Group
		closing.SetLimit(64)
		for _, s := range socks {
			if s != nil {
				closing.Go(func() error { return s.conn.Close(websocket.StatusNormalClosure, "bench done") })
			}
		}
		_ = closing.Wait()
		stopSocks()
		readers.Wait()
	}()
	dialer := &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
	defer dialer.CloseIdleConnections()
	openStart := time.Now()
	g, gctx = errgroup.WithContext(ctx)
	g.SetLimit(producers)
	for i := range nBots {
		g.Go(func() error {
			conn, resp, err := websocket.Dial(gctx, wsURL, &websocket.DialOptions{HTTPClient: dialer, HTTPHeader: buko.AuthHeader(tokens[i])})
			if err != nil {
				if resp != nil {
					return fmt.Errorf("gateway dial for bot %s: HTTP %d: %w", botIDs[i], resp.StatusCode, err)
				}
				return fmt.Errorf("gateway dial for bot %s: %w", botIDs[i], err)
			}
			conn.SetReadLimit(buko.MaxFrameBytes)
			socks[i] = &benchSocket{conn: conn}
			readers.Add(1)
			go func() {
				defer readers.Done()
				// readAndAck returns only when the socket ends; an end we did not cause is an error.
				if err := readAndAck(sockCtx, conn, &delivered); sockCtx.Err() == nil {
					select {
					case readErr <- fmt.Errorf("gateway socket of bot %s: %w", botIDs[i], err):
					default:
					}
				}
			}()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	openTime := time.Since(openStart)
	heap1, stack1, gor1 := memNow()
	res = &gatewayResult{
		SimURL: sc.BaseURL(), Sockets: nBots, OpenSeconds: openTime.Seconds(),
		HeapBytesPerSocket:  (int64(heap1) - int64(heap0)) / int64(nBots),
		StackBytesPerSocket: (int64(stack1) - int64(stack0)) / int64(nBots),
		GoroutinesPerSocket: float64(gor1-gor0) / float64(nBots),
		Updates:             nUpdates, Producers: producers,
	}
	res.BytesPerSocket = res.HeapBytesPerSocket + res.StackBytesPerSocket

	// One chat per bot; each start delivers my_chat_member and /start.
	g, gctx = errgroup.WithContext(ctx)
	g.SetLimit(producers)
	for i := range nBots {
		g.Go(func() error {
			sch, err := sc.OpenPrivateChat(gctx, user.UserID, botIDs[i])
			if err != nil {
				return err
			}
			socks[i].chatID = sch.ChatID
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	deadline := time.Now().Add(bc.timeout)
	if err := awaitCount(ctx, deadline, readErr, func() (bool, error) { return delivered.Load() >= int64(2*nBots), nil }); err != nil {
		return nil, fmt.Errorf("waiting for the %d chat-start updates (seen %d): %w", 2*nBots, delivered.Load(), err)
	}
	setupSeen.Store(delivered.Load())
	res.SetupUpdatesDelivered = setupSeen.Load()
	// Their acks too, so that the load's acks are counted from here.
	var stMid sim.Stats
	if err := awaitCount(ctx, deadline, readErr, func() (bool, error) {
		var err error
		stMid, err = sc.Stats(ctx)
		return err == nil && stMid.Acked-st0.Acked >= setupSeen.Load(), err
	}); err != nil {
		return nil, fmt.Errorf("waiting for the simulator to count the chat-start acks: %w", err)
	}

	// The load: nUpdates messages round robin, producers in flight.
	bar := bc.newBar(stderr, showBar, nUpdates, "bench gateway", "updates")
	start := time.Now()
	var next atomic.Int64
	g, gctx = errgroup.WithContext(ctx)
	for range producers {
		g.Go(func() error {
			for {
				i := int(next.Add(1)) - 1
				if i >= nUpdates {
					return nil
				}
				s := socks[i%nBots]
				if _, err := sc.Say(gctx, s.chatID, user.UserID, fmt.Sprintf("bench %d", i+1)); err != nil {
					return err
				}
				if bar != nil {
					_ = bar.Add(1)
				}
			}
		})
	}
	if err := g.Wait(); err != nil {
		finishBar(stderr, bar)
		return nil, err
	}
	res.PostSeconds = time.Since(start).Seconds()
	finishBar(stderr, bar)
	deadline = time.Now().Add(bc.timeout)
	want := setupSeen.Load() + int64(nUpdates)
	if err := awaitCount(ctx, deadline, readErr, func() (bool, error) { return delivered.Load() >= want, nil }); err != nil {
		return nil, fmt.Errorf("waiting for %d deliveries (seen %d): %w", nUpdates, delivered.Load()-setupSeen.Load(), err)
	}
	dt := time.Since(start)
	res.Delivered = delivered.Load() - setupSeen.Load()
	res.DeliveredSeconds = dt.Seconds()
	res.DeliveredPerSec = math.Round(float64(res.Delivered) / dt.Seconds())
	var st1 sim.Stats
	if err := awaitCount(ctx, deadline, readErr, func() (bool, error) {
		var err error
		st1, err = sc.Stats(ctx)
		return err == nil && st1.Acked-stMid.Acked >= int64(nUpdates), err
	}); err != nil {
		return nil, fmt.Errorf("waiting for the simulator to count %d acks (counted %d): %w", nUpdates, st1.Acked-stMid.Acked, err)
	}
	at := time.Since(start)
	res.Acked = st1.Acked - stMid.Acked
	res.AckedSeconds = at.Seconds()
	res.AckedPerSec = math.Round(float64(res.Acked) / at.Seconds())
	res.Redelivered = st1.UpdatesRedelivered - st0.UpdatesRedelivered
	return res, nil
}

// readAndAck reads frames until the socket ends: it acks every update,
// answers pings, and counts updates.
func readAndAck(ctx context.Context, conn *websocket.Conn, n *atomic.Int64) error {
	for {
		typ, data, err := conn.Read(ctx)
		if err != nil {
			return err
		}
		if typ != websocket.MessageText {
			continue
		}
		fr, err := buko.DecodeFrame(data)
		if err != nil {
			return err
		}
		switch fr.Type {
		case buko.FrameUpdate:
			n.Add(1)
			if err := conn.Write(ctx, websocket.MessageText, buko.AckFrame(fr.Update.UpdateID)); err != nil {
				return err
			}
		case buko.FramePing:
			if err := conn.Write(ctx, websocket.MessageText, buko.PongFrame()); err != nil {
				return err
			}
		}
	}
}

// awaitCount polls done every 2 ms until it is true, a socket fails, ctx ends
// or the deadline passes.
func awaitCount(ctx context.Context, deadline time.Time, failed <-chan error, done func() (bool, error)) error {
	t := time.NewTicker(2 * time.Millisecond)
	defer t.Stop()
	for {
		ok, err := done()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("timed out (raise --timeout?)")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-failed:
			return err
		case <-t.C:
		}
	}
}

// memNow is this process's Go heap in use and goroutine stacks, after GC.
func memNow() (heap, stack uint64, goroutines int) {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc, m.StackInuse, runtime.NumGoroutine()
}

func printGateway(w io.Writer, format string, r *gatewayResult) error {
	if format == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "simulator\t%s\n", r.SimURL)
	fmt.Fprintf(tw, "sockets\t%d opened in %.2f s\n", r.Sockets, r.OpenSeconds)
	fmt.Fprintf(tw, "memory (this process)\t%d B per socket (heap %d B + stacks %d B), %.2f goroutines per socket\n", r.BytesPerSocket, r.HeapBytesPerSocket, r.StackBytesPerSocket, r.GoroutinesPerSocket)
	fmt.Fprintf(tw, "posted\t%d updates by %d producers in %.2f s\n", r.Updates, r.Producers, r.PostSeconds)
	fmt.Fprintf(tw, "delivered\t%d in %.2f s: %.0f updates/s\n", r.Delivered, r.DeliveredSeconds, r.DeliveredPerSec)
	fmt.Fprintf(tw, "acked (sim count)\t%d in %.2f s: %.0f updates/s\n", r.Acked, r.AckedSeconds, r.AckedPerSec)
	fmt.Fprintf(tw, "redelivered\t%d\n", r.Redelivered)
	return tw.Flush()
}

// pooledClient is an HTTP client for the control API whose idle pool fits
// conns concurrent calls.
func pooledClient(conns int) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = conns + 4
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}
