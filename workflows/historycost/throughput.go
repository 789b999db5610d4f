package historycost

import (
	"context"
	"fmt"
	"math"
	"time"

	"golang.org/x/sync/errgroup"
)

// ThroughputResult is what Throughput measured.
type ThroughputResult struct {
	Chats          int     `json:"chats"`
	Messages       int     `json:"messages"` // sent and answered
	ElapsedSeconds float64 `json:"elapsed_seconds"`
	RepliesPerSec  float64 `json:"replies_per_second"` // updates processed: answered, not only handed off
}

// Throughput measures the end-to-end ceiling of the echo path: chats echo
// chats (a bot each, so no bot's send quota paces them), all at once, each
// sending messages one at a time, each answered before the next; the clock
// runs from the first message to the last reply seen. Settings as Run's
// (o.Agents, Quiet and Burst are not used).
func Throughput(ctx context.Context, o Options, chats, messages int) (ThroughputResult, error) {
	if chats < 1 || chats > 500 || messages < 1 || messages > 28 {
		return ThroughputResult{}, fmt.Errorf("historycost: throughput of %d chats × %d messages: want 1..500 chats of 1..28 messages", chats, messages)
	}
	o, err := o.withDefaults()
	if err != nil {
		return ThroughputResult{}, err
	}
	w, stop, err := start(o)
	if err != nil {
		return ThroughputResult{}, err
	}
	defer stop()
	type tchat struct {
		p              *poller
		userID, chatID string
	}
	cs := make([]tchat, chats)
	setup, sctx := errgroup.WithContext(ctx)
	setup.SetLimit(8)
	for i := range cs {
		setup.Go(func() error {
			cb, tok, user, sc, err := w.newChat(sctx, "echo", "load")
			if err != nil {
				return err
			}
			p := &poller{w: w, bot: cb.BotID, tok: tok}
			if err := p.handOff(sctx, 1); err != nil { // the greeting: the chain is running before the clock starts
				return err
			}
			if err := w.awaitReplies(sctx, sc.ChatID, 1); err != nil {
				return err
			}
			cs[i] = tchat{p: p, userID: user.UserID, chatID: sc.ChatID}
			return nil
		})
	}
	if err := setup.Wait(); err != nil {
		return ThroughputResult{}, err
	}
	cctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	begin := time.Now()
	g, gctx := errgroup.WithContext(cctx)
	for _, c := range cs {
		g.Go(func() error {
			for i := range messages {
				id, err := w.control.Say(gctx, c.chatID, c.userID, fmt.Sprintf("load %d", i+1))
				if err != nil {
					return err
				}
				if err := c.p.handOff(gctx, 1); err != nil {
					return err
				}
				if err := w.awaitReplyTo(gctx, c.chatID, id); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return ThroughputResult{}, err
	}
	el := time.Since(begin)
	return ThroughputResult{
		Chats: chats, Messages: chats * messages, ElapsedSeconds: math.Round(el.Seconds()*100) / 100,
		RepliesPerSec: math.Round(float64(chats*messages)/el.Seconds()*10) / 10,
	}, nil
}

// loadPoll is how often Throughput looks for a reply (the transcript after
// the message only, so a look costs the same however long the chat is).
const loadPoll = 10 * time.Millisecond

// awaitReplyTo waits for the bot's reply to message id.
func (w *world) awaitReplyTo(ctx context.Context, chatID, id string) error {
	for {
		tr, err := w.control.Transcript(ctx, chatID, id)
		if err != nil {
			return err
		}
		for _, m := range tr {
			if m.FromKind == "bot" && m.ReplyToMessageID == id {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no reply to %s: %w", id, ctx.Err())
		case <-time.After(loadPoll):
		}
	}
}
