package bench

// gateway.go is the Gateway capacity scenario: many bots, one socket each
// from this process, user messages posted round robin through the control
// API, every update acked.

import (
	"context"
	"errors"
	"fmt"
	"math"
	"runtime"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"buko.app/agentrunner/buko/sim"
	"buko.app/agentrunner/vault"
)

// Gateway measures the Gateway delivery capacity of a simulator process,
// with no agentrunner involved: it creates Bots bots, opens one Gateway
// socket for each from this process, starts a private chat of one bench user
// with each bot, then posts Updates user messages round robin across the
// chats with Producers calls in flight, while every socket acks every update
// it receives.
type Gateway struct {
	Bots, Updates, Producers int
}

// GatewayResult is what a Gateway run reports.
type GatewayResult struct {
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

// gatewayRun is the state of one Gateway run between its phases.
type gatewayRun struct {
	Gateway
	env    Env
	run    string
	userID string
	bots   []gatewayBot
	socks  *sockets
	res    *GatewayResult
	st0    sim.Stats // before anything
	stMid  sim.Stats // once the chat starts are acked
	setup  int64     // updates delivered by the chat starts
}

// gatewayBot is one bench bot with its socket's chat.
type gatewayBot struct {
	id     string
	token  vault.Token
	chatID string
}

// Run runs the scenario: bots, sockets, chats, the load, then the counts.
func (s Gateway) Run(ctx context.Context, env Env) (*GatewayResult, error) {
	if s.Bots < 1 || s.Updates < 1 || s.Producers < 1 || env.Timeout <= 0 {
		return nil, errors.New("bench gateway: bots, updates, producers and timeout must be positive")
	}
	r := &gatewayRun{Gateway: s, env: env, run: runID()}
	var err error
	if r.st0, err = env.Sim.Stats(ctx); err != nil {
		return nil, err
	}
	if err := r.createBots(ctx); err != nil {
		return nil, err
	}
	r.socks = newSockets(ctx)
	defer r.socks.close()
	for _, phase := range []func(context.Context) error{r.openSockets, r.openChats, r.awaitChatStarts, r.load} {
		if err := phase(ctx); err != nil {
			return nil, err
		}
	}
	return r.res, nil
}

// createBots creates the bench user and the bots in the simulator.
func (r *gatewayRun) createBots(ctx context.Context) error {
	sc := r.env.Sim
	user, err := sc.CreateUser(ctx, "bench gateway "+r.run, "")
	if err != nil {
		return err
	}
	r.userID = user.UserID
	r.bots = make([]gatewayBot, r.Bots)
	return r.eachBot(ctx, func(ctx context.Context, i int, b *gatewayBot) error {
		cb, err := sc.CreateBot(ctx, sim.BotSettings{DisplayName: fmt.Sprintf("bench gateway %s bot %d", r.run, i+1)})
		if err != nil {
			return err
		}
		tok, err := vault.ParseToken(cb.Token)
		if err != nil {
			return fmt.Errorf("simulator POST /sim/bots: %w", err)
		}
		b.token, b.id = tok, cb.BotID
		return nil
	})
}

// eachBot calls fn for every bot, Producers at a time.
func (r *gatewayRun) eachBot(ctx context.Context, fn func(ctx context.Context, i int, b *gatewayBot) error) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(r.Producers)
	for i := range r.bots {
		g.Go(func() error { return fn(gctx, i, &r.bots[i]) })
	}
	return g.Wait()
}

// openSockets opens one Gateway socket per bot and measures what they cost
// this process.
func (r *gatewayRun) openSockets(ctx context.Context) error {
	heap0, stack0, gor0 := memNow()
	wsURL := gatewayURL(r.env.Sim)
	start := time.Now()
	if err := r.eachBot(ctx, func(ctx context.Context, _ int, b *gatewayBot) error {
		return r.socks.dial(ctx, wsURL, b.id, b.token)
	}); err != nil {
		return err
	}
	openTime := time.Since(start)
	heap1, stack1, gor1 := memNow()
	n := int64(r.Bots)
	r.res = &GatewayResult{
		SimURL: r.env.Sim.BaseURL(), Sockets: r.Bots, OpenSeconds: openTime.Seconds(),
		HeapBytesPerSocket:  (int64(heap1) - int64(heap0)) / n,
		StackBytesPerSocket: (int64(stack1) - int64(stack0)) / n,
		GoroutinesPerSocket: float64(gor1-gor0) / float64(n),
		Updates:             r.Updates, Producers: r.Producers,
	}
	r.res.BytesPerSocket = r.res.HeapBytesPerSocket + r.res.StackBytesPerSocket
	return nil
}

// openChats starts one chat per bot; each start delivers my_chat_member and /start.
func (r *gatewayRun) openChats(ctx context.Context) error {
	return r.eachBot(ctx, func(ctx context.Context, _ int, b *gatewayBot) error {
		sch, err := r.env.Sim.OpenPrivateChat(ctx, r.userID, b.id)
		if err != nil {
			return err
		}
		b.chatID = sch.ChatID
		return nil
	})
}

// awaitChatStarts waits for the chat starts' updates and their acks, so
// that the load's are counted from here.
func (r *gatewayRun) awaitChatStarts(ctx context.Context) error {
	deadline := time.Now().Add(r.env.Timeout)
	want := int64(2 * r.Bots)
	if err := r.socks.await(ctx, deadline, func() (bool, error) { return r.socks.delivered.Load() >= want, nil }); err != nil {
		return fmt.Errorf("waiting for the %d chat-start updates (seen %d): %w", want, r.socks.delivered.Load(), err)
	}
	r.setup = r.socks.delivered.Load()
	r.res.SetupUpdatesDelivered = r.setup
	if err := r.socks.await(ctx, deadline, func() (bool, error) {
		var err error
		r.stMid, err = r.env.Sim.Stats(ctx)
		return err == nil && r.stMid.Acked-r.st0.Acked >= r.setup, err
	}); err != nil {
		return fmt.Errorf("waiting for the simulator to count the chat-start acks: %w", err)
	}
	return nil
}

// load posts the Updates messages round robin, Producers in flight, and
// waits for their deliveries and acks.
func (r *gatewayRun) load(ctx context.Context) error {
	bar := r.env.bar(r.Updates, "bench gateway", "updates")
	start := time.Now()
	var next atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	for range r.Producers {
		g.Go(func() error {
			for {
				i := int(next.Add(1)) - 1
				if i >= r.Updates {
					return nil
				}
				b := &r.bots[i%r.Bots]
				if _, err := r.env.Sim.Say(gctx, b.chatID, r.userID, fmt.Sprintf("bench %d", i+1)); err != nil {
					return err
				}
				_ = bar.Add(1)
			}
		})
	}
	err := g.Wait()
	posted := time.Since(start)
	_ = bar.Exit()
	if err != nil {
		return err
	}
	r.res.PostSeconds = posted.Seconds()
	return r.awaitLoad(ctx, start)
}

// awaitLoad waits until every posted update is delivered here and counted
// as acked by the simulator, and records how long each took from start.
func (r *gatewayRun) awaitLoad(ctx context.Context, start time.Time) error {
	deadline := time.Now().Add(r.env.Timeout)
	delivered := &r.socks.delivered
	want := r.setup + int64(r.Updates)
	if err := r.socks.await(ctx, deadline, func() (bool, error) { return delivered.Load() >= want, nil }); err != nil {
		return fmt.Errorf("waiting for %d deliveries (seen %d): %w", r.Updates, delivered.Load()-r.setup, err)
	}
	dt := time.Since(start)
	r.res.Delivered = delivered.Load() - r.setup
	r.res.DeliveredSeconds = dt.Seconds()
	r.res.DeliveredPerSec = math.Round(float64(r.res.Delivered) / dt.Seconds())
	var st1 sim.Stats
	if err := r.socks.await(ctx, deadline, func() (bool, error) {
		var err error
		st1, err = r.env.Sim.Stats(ctx)
		return err == nil && st1.Acked-r.stMid.Acked >= int64(r.Updates), err
	}); err != nil {
		return fmt.Errorf("waiting for the simulator to count %d acks (counted %d): %w", r.Updates, st1.Acked-r.stMid.Acked, err)
	}
	at := time.Since(start)
	r.res.Acked = st1.Acked - r.stMid.Acked
	r.res.AckedSeconds = at.Seconds()
	r.res.AckedPerSec = math.Round(float64(r.res.Acked) / at.Seconds())
	r.res.Redelivered = st1.UpdatesRedelivered - r.st0.UpdatesRedelivered
	return nil
}

// memNow is this process's Go heap in use and goroutine stacks, after GC.
func memNow() (heap, stack uint64, goroutines int) {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc, m.StackInuse, runtime.NumGoroutine()
}
