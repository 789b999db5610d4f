package bench

// echo.go is the closed-loop echo scenario: chats that each send one message
// at a time to a running echo bot and await its reply.

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	"buko.app/agentrunner/buko/sim"
)

// Echo measures a running echo bot: Chats() bench users each open a private
// chat with it, and the chats send Messages messages between them in
// parallel, each chat one at a time: post, then poll the transcript every
// PollInterval until the bot's reply to that message (matched by
// reply_to_message_id) shows up, or the Env's Timeout passes.
type Echo struct {
	Bot          string // its handle (with or without @, any case) or its bot id
	Messages     int
	Concurrency  int // chats sending in parallel; see Chats
	PollInterval time.Duration
}

// Chats is how many chats a run opens: Concurrency, but no more than there
// are messages.
func (s Echo) Chats() int { return min(s.Concurrency, s.Messages) }

// EchoResult is what an Echo run reports (as JSON, as it is).
type EchoResult struct {
	SimURL          string         `json:"sim_url"`
	BotID           string         `json:"bot_id"`
	BotHandle       string         `json:"bot_handle"`
	Concurrency     int            `json:"concurrency"`
	TimeoutSeconds  float64        `json:"timeout_seconds"`
	Sent            int            `json:"sent"`
	Replied         int            `json:"replied"`    // first reply seen within the timeout
	Lost            int            `json:"lost"`       // no reply within the timeout
	Late            int            `json:"late"`       // of the lost, replied by the final check
	Duplicates      int            `json:"duplicates"` // replies beyond the first to one message
	ElapsedSeconds  float64        `json:"elapsed_seconds"`
	RepliesPerSec   float64        `json:"replies_per_second"`
	LatencyMS       LatencySummary `json:"latency_ms"`
	SimRateLimited  int64          `json:"sim_rate_limited"` // 429s the simulator gave during the run (all bots)
	GatewaySockets  int            `json:"gateway_sockets"`  // the bot's open sockets at the start
	PollIntervalSec float64        `json:"poll_interval_seconds"`
}

// UnknownBotError is FindBot's answer for a bot the simulator does not have.
type UnknownBotError struct {
	SimURL string
	Known  int // how many bots it has
}

func (e *UnknownBotError) Error() string {
	return fmt.Sprintf("the simulator at %s has no such bot (it has %d; list them with curl %s/sim/bots)", e.SimURL, e.Known, e.SimURL)
}

// FindBot resolves a handle (with or without @, any case) or a bot id; a bot
// the simulator does not have is an *UnknownBotError.
func FindBot(ctx context.Context, sc *sim.Control, ref string) (sim.BotView, error) {
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
	return sim.BotView{}, &UnknownBotError{SimURL: sc.BaseURL(), Known: len(bots)}
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

// Run runs the scenario: it finds the bot, opens the chats, drives the
// messages through them and tallies the transcripts.
func (s Echo) Run(ctx context.Context, env Env) (*EchoResult, error) {
	if s.Messages < 1 || s.Concurrency < 1 || s.PollInterval <= 0 || env.Timeout <= 0 {
		return nil, errors.New("bench echo: messages, concurrency, poll interval and timeout must be positive")
	}
	b, err := FindBot(ctx, env.Sim, s.Bot)
	if err != nil {
		return nil, err
	}
	if b.GatewayOpen == 0 {
		env.warn("@%s has no Gateway socket open at the simulator: unless it polls, is its runner up?", b.Handle)
	}
	st0, err := env.Sim.Stats(ctx)
	if err != nil {
		return nil, err
	}
	run := runID()
	chats := s.plan(run)
	if err := openEchoChats(ctx, env.Sim, b.BotID, run, chats); err != nil {
		return nil, err
	}
	elapsed, err := s.drive(ctx, env, chats)
	if err != nil {
		return nil, err
	}
	res := &EchoResult{
		SimURL: env.Sim.BaseURL(), BotID: b.BotID, BotHandle: b.Handle, Concurrency: len(chats),
		TimeoutSeconds: env.Timeout.Seconds(), ElapsedSeconds: elapsed.Seconds(),
		GatewaySockets: b.GatewayOpen, PollIntervalSec: s.PollInterval.Seconds(),
	}
	if err := res.tally(ctx, env.Sim, b.BotID, chats, elapsed); err != nil {
		return nil, err
	}
	st1, err := env.Sim.Stats(ctx)
	if err != nil {
		return nil, err
	}
	res.SimRateLimited = st1.RateLimited - st0.RateLimited
	return res, nil
}

// plan deals the run's messages round robin to its chats.
func (s Echo) plan(run string) []*echoChat {
	chats := make([]*echoChat, s.Chats())
	for i := range chats {
		chats[i] = &echoChat{lost: map[string]bool{}}
	}
	for i := range s.Messages {
		c := chats[i%len(chats)]
		c.texts = append(c.texts, fmt.Sprintf("bench %s message %d of %d", run, i+1, s.Messages))
	}
	return chats
}

// openEchoChats creates a bench user for each chat and starts its private
// chat with the bot, a few at a time.
func openEchoChats(ctx context.Context, sc *sim.Control, botID, run string, chats []*echoChat) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for i, c := range chats {
		g.Go(func() error {
			u, err := sc.CreateUser(gctx, fmt.Sprintf("bench %s user %d", run, i+1), "")
			if err != nil {
				return err
			}
			sch, err := sc.OpenPrivateChat(gctx, u.UserID, botID)
			if err != nil {
				return err
			}
			c.userID, c.chatID, c.startID = u.UserID, sch.ChatID, sch.MessageID
			return nil
		})
	}
	return g.Wait()
}

// drive runs every chat at once and returns how long they took.
func (s Echo) drive(ctx context.Context, env Env, chats []*echoChat) (time.Duration, error) {
	bar := env.bar(s.Messages, "bench echo", "msgs")
	start := time.Now()
	g, gctx := errgroup.WithContext(ctx)
	for _, c := range chats {
		g.Go(func() error { return c.run(gctx, env.Sim, env.Timeout, s.PollInterval, bar) })
	}
	err := g.Wait()
	elapsed := time.Since(start)
	_ = bar.Exit()
	return elapsed, err
}

// run sends the chat's messages one at a time, each awaiting its reply.
func (c *echoChat) run(ctx context.Context, sc *sim.Control, timeout, poll time.Duration, bar Progress) error {
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
		}
		_ = bar.Add(1)
	}
	return nil
}

// tally fills in the counts and the latency summary: what each chat saw
// while it ran, and a last look at every transcript for duplicates and late
// replies.
func (r *EchoResult) tally(ctx context.Context, sc *sim.Control, botID string, chats []*echoChat, elapsed time.Duration) error {
	var lat []time.Duration
	for _, c := range chats {
		r.Sent += len(c.sent)
		r.Lost += len(c.lost)
		lat = append(lat, c.latency...)
		tr, err := sc.Transcript(ctx, c.chatID, c.startID)
		if err != nil {
			return err
		}
		dups, late := countReplies(tr, botID, c.sent, c.lost)
		r.Duplicates += dups
		r.Late += late
	}
	r.Replied = len(lat)
	r.LatencyMS = Summarize(lat)
	if elapsed > 0 {
		r.RepliesPerSec = math.Round(float64(r.Replied)/elapsed.Seconds()*10) / 10
	}
	return nil
}

// countReplies reads a transcript for the bot's replies to the messages
// sent: the replies beyond the first to one message, and how many of the
// lost ones did get a reply.
func countReplies(tr []sim.TranscriptMessage, botID string, sent []string, lost map[string]bool) (duplicates, late int) {
	replies := make(map[string]int, len(sent))
	for _, id := range sent {
		replies[id] = 0
	}
	for _, m := range tr {
		if n, ok := replies[m.ReplyToMessageID]; ok && m.FromKind == "bot" && m.FromID == botID {
			replies[m.ReplyToMessageID] = n + 1
		}
	}
	for id, n := range replies {
		if n > 1 {
			duplicates += n - 1
		}
		if n > 0 && lost[id] {
			late++
		}
	}
	return duplicates, late
}
