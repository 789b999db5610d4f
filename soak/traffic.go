package soak

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	mrand "math/rand/v2"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/buko/sim"
	"buko.app/agentrunner/runner"
	"buko.app/agentrunner/vault"
)

// chat is one conversation of the traffic: a private chat (one user) or a
// group (two users and the bot, addressed by mention so privacy mode lets
// the messages through).
type chat struct {
	id      string
	bot     *botRec
	users   []string
	group   bool
	startID string // the /start message of a private chat
	seq     int
}

type botRec struct {
	id, handle string
}

// sent is one user message the simulator accepted.
type sent struct {
	chat *chat
	id   string
	at   time.Time
}

// traffic holds the bots, chats and every accepted message.
type traffic struct {
	bots   []*botRec
	chats  []*chat
	tokens []string // every bot token, for the leak scan

	mu   sync.Mutex
	sent []sent
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// parallel runs f(0..n-1) on w goroutines and returns the first error.
func parallel(n, w int, f func(i int) error) error {
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	next := make(chan int)
	for range w {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := f(i); err != nil {
					mu.Lock()
					if first == nil {
						first = err
					}
					mu.Unlock()
				}
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	return first
}

// setupTraffic creates the bots in the simulator, registers them as managed
// bots (echo agent, tokens sealed by Vault Transit) and opens the chats.
func setupTraffic(ctx context.Context, s *stack) (*traffic, error) {
	cfg := s.cfg
	tr := &traffic{bots: make([]*botRec, cfg.Bots), tokens: make([]string, cfg.Bots)}
	pool, err := pgxpool.New(ctx, s.pg.dsn(appDB))
	if err != nil {
		return nil, err
	}
	defer pool.Close()
	cipher, err := vault.Open(ctx, vault.Config{Cipher: vault.KindTransit, Transit: vault.TransitConfig{
		Address: s.vault.addr(), Mount: transitMount, Key: transitKey, TokenFile: s.vault.tokenFile()}})
	if err != nil {
		return nil, fmt.Errorf("open transit: %w", err)
	}
	defer func() { _ = cipher.Cleanup() }()
	reg := runner.NewRegistry(runner.RegistryConfig{Pool: pool, Store: vault.NewStore(pool, cipher, zerolog.Nop(), nil),
		Buko: buko.NewClient(s.simURL, nil), Logger: zerolog.Nop()})
	tag := randHex(2)
	err = parallel(cfg.Bots, 8, func(i int) error {
		handle := fmt.Sprintf("soak%s_%d", tag, i)
		cb, err := s.control.CreateBot(ctx, sim.BotSettings{Handle: handle, DisplayName: "Soak " + handle})
		if err != nil {
			return err
		}
		tok, err := vault.ParseToken(cb.Token)
		if err != nil {
			return fmt.Errorf("bot %s: token does not parse: %w", cb.BotID, err)
		}
		if _, err := reg.Add(ctx, runner.AddRequest{Actor: "soak", Handle: handle, Agent: runner.AgentEcho, Token: tok}); err != nil {
			return fmt.Errorf("register %s: %w", cb.BotID, err)
		}
		tr.bots[i] = &botRec{id: cb.BotID, handle: handle}
		tr.tokens[i] = cb.Token
		return nil
	})
	if err != nil {
		return nil, err
	}
	// Chats: spread over the bots; the first share of each bot's are groups.
	tr.chats = make([]*chat, cfg.Chats)
	err = parallel(cfg.Chats, 8, func(i int) error {
		b := tr.bots[i%cfg.Bots]
		k := i / cfg.Bots // this bot's k-th chat
		perBot := (cfg.Chats + cfg.Bots - 1) / cfg.Bots
		c := &chat{bot: b, group: float64(k) < cfg.Groups*float64(perBot)}
		n := 1
		if c.group {
			n = 2
		}
		for j := range n {
			u, err := s.control.CreateUser(ctx, fmt.Sprintf("User %d.%d", i, j), "")
			if err != nil {
				return err
			}
			c.users = append(c.users, u.UserID)
		}
		if c.group {
			id, err := s.control.CreateGroup(ctx, fmt.Sprintf("soak group %d", i), c.users, []string{b.id})
			if err != nil {
				return err
			}
			c.id = id
		} else {
			sc, err := s.control.OpenPrivateChat(ctx, c.users[0], b.id)
			if err != nil {
				return err
			}
			c.id, c.startID = sc.ChatID, sc.MessageID
		}
		tr.chats[i] = c
		return nil
	})
	return tr, err
}

// say posts the next message of c and records it once the simulator accepted it.
func (tr *traffic) say(ctx context.Context, ctl *sim.Control, rng *mrand.Rand, c *chat) error {
	tr.mu.Lock()
	c.seq++
	seq := c.seq
	tr.mu.Unlock()
	user := c.users[rng.IntN(len(c.users))]
	text := fmt.Sprintf("soak %s #%d", c.id, seq)
	if c.group {
		text = "@" + c.bot.handle + " " + text
	}
	id, err := ctl.Say(ctx, c.id, user, text)
	if err != nil {
		return err
	}
	tr.mu.Lock()
	tr.sent = append(tr.sent, sent{chat: c, id: id, at: time.Now()})
	tr.mu.Unlock()
	return nil
}

func (tr *traffic) sentCount() int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return len(tr.sent)
}

// backlog counts the accepted messages sent before t that have no answered reply yet.
func (tr *traffic) backlog(rec *recorder, before time.Time) int {
	tr.mu.Lock()
	ss := append([]sent(nil), tr.sent...)
	tr.mu.Unlock()
	n := 0
	for _, m := range ss {
		if m.at.Before(before) && !rec.replied(msgKey{m.chat.id, m.id}) {
			n++
		}
	}
	return n
}

// drive sends messages at cfg.Rate until ctx ends, picking chats with the seeded rng.
func (tr *traffic) drive(ctx context.Context, ctl *sim.Control, rate float64, seed uint64, errs chan<- error) {
	rng := mrand.New(mrand.NewPCG(seed, 0x50a4))
	tick := time.NewTicker(time.Duration(float64(time.Second) / rate))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		// A third of the messages go to a few hot chats (one per bot at
		// most), so that order within a chat is tested on long runs of messages.
		c := tr.chats[rng.IntN(len(tr.chats))]
		if hot := min(len(tr.bots), max(1, len(tr.chats)/100)); rng.IntN(3) == 0 {
			c = tr.chats[rng.IntN(hot)]
		}
		if err := tr.say(ctx, ctl, rng, c); err != nil && ctx.Err() == nil {
			select {
			case errs <- err:
			default:
			}
		}
	}
}
