// Package sessions owns the one live connection of each bot to Buko: a Session
// dials the Bot Gateway WebSocket (or long-polls getUpdates), keeps the socket
// alive, puts each update in a lane by chat, hands updates off durably through
// Handoff (one chat in order, chats in parallel, a bound on what is held in
// memory), acknowledges them cumulatively once they and every lower one are
// durable, and reconnects with backoff, token re-reads and a polling fallback.
//
// It knows nothing of shards, leases or Temporal: the runner starts and stops
// sessions, and the workflows package implements Handoff.
package sessions

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/rs/zerolog"

	"buko.app/agentrunner/buko"
)

// Handoff hands one update durably to the processing side; it returns nil only
// once the update is durable (Temporal holds it). workflows.Handoff implements it.
// It must honour ctx: the session cancels it when it is stopped hard.
type Handoff interface {
	Handoff(ctx context.Context, botID string, u buko.Update) error
}

// TokenSource resolves a bot's token; the vault token cache implements it.
// Invalidate drops a cached token so the next Token call reads it afresh.
type TokenSource interface {
	Token(ctx context.Context, botID string) (buko.Credential, error)
	Invalidate(botID string)
}

// Session is one bot's connection to Buko. It is created by Start and runs in
// the background until Stop, the Start context's end, or repeated
// authentication failures. All methods are safe for concurrent use.
type Session struct {
	cfg   Config
	log   zerolog.Logger
	m     *Metrics
	hc    *http.Client
	wsURL string

	runCtx    context.Context // ends on hard stop: handoffs and sockets are abandoned
	runCancel context.CancelFunc
	// acceptCtx ends when Stop is called (or runCtx ends): no new dial, poll or
	// backoff wait starts after it, and no new update is accepted.
	acceptCtx    context.Context
	acceptCancel context.CancelFunc

	kick     chan struct{} // Reconnect: skip the current backoff wait
	done     chan struct{} // the delivery loop has ended
	stopOnce sync.Once
	stopped  chan struct{} // Stop has finished
	stopErr  error

	stateMu sync.Mutex   // serializes transitions and OnState calls
	state   atomic.Int32 // a State
	cause   string

	bg       sync.WaitGroup // lanes and helper goroutines (polite closes)
	reportMu sync.Mutex     // serializes OnAcked; taken before mu

	mu         sync.Mutex
	w          window        // updates in memory, the watermark and the lanes
	wake       chan struct{} // closed (and cleared) on progress; nil when nobody waits
	conn       *gwConn       // the live Gateway socket, nil if none
	connAcked  buko.UpdateID // highest ack written on conn
	acking     bool          // one goroutine writes acks at a time
	pollCancel context.CancelFunc
	polled     bool // getUpdates delivered at some point (Stop confirms the offset)
	draining   bool

	unackableInFlight int               // id-less dead letters being stored (deadletter.go)
	unackableSeen     map[[32]byte]bool // digests of id-less dead letters stored
}

// Start validates cfg and starts the session in the background. It returns at
// once; progress is reported through OnState, OnAcked and OnAuthFailed. The
// session ends hard (no drain, no final ack) when ctx ends; use Stop to drain.
func Start(ctx context.Context, cfg Config) (*Session, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	hc := cfg.HTTPClient
	if hc == nil && cfg.Delivery == DeliveryGateway {
		hc = NewGatewayHTTPClient()
	}
	s := &Session{
		cfg:     cfg,
		log:     cfg.Logger,
		m:       cfg.Metrics,
		hc:      hc,
		wsURL:   cfg.Client.GatewayURL(),
		kick:    make(chan struct{}, 1),
		done:    make(chan struct{}),
		stopped: make(chan struct{}),

		unackableSeen: map[[32]byte]bool{},
	}
	s.w.init(cfg.Lanes)
	s.runCtx, s.runCancel = context.WithCancel(ctx)
	s.acceptCtx, s.acceptCancel = context.WithCancel(s.runCtx)
	go s.run(&loopState{cause: causeStartup}, 0)
	return s, nil
}

// Stop drains the session: it stops accepting updates (frames are still read so
// the socket stays alive; updates not accepted are never acked and the server
// redelivers them to the next owner), waits for the in-flight handoffs, sends
// the final ack (or confirms the polling offset) and closes the socket with
// 1000. ctx bounds the drain: when it ends, pending handoffs are cancelled and
// the session is torn down at once. Stop returns ctx's error in that case, and
// nil otherwise. It may be called more than once and from several goroutines.
func (s *Session) Stop(ctx context.Context) error {
	s.stopOnce.Do(func() {
		s.stopErr = s.drain(ctx)
		close(s.stopped)
	})
	select {
	case <-s.stopped:
		return s.stopErr
	case <-ctx.Done():
		// Another Stop is draining; the caller's patience ran out first.
		return fmt.Errorf("sessions: stop: %w", ctx.Err())
	}
}

func (s *Session) drain(ctx context.Context) error {
	s.setState(StateDraining, "stop")
	s.mu.Lock()
	s.draining = true
	s.broadcastLocked()
	s.mu.Unlock()
	s.acceptCancel()

	var err error
	switch {
	case s.waitHandedOff(ctx):
		s.finalAck(ctx)
	case ctx.Err() != nil:
		err = fmt.Errorf("sessions: stop: drain: %w", ctx.Err())
	default:
		// The Start context ended first: the session is stopped hard already,
		// with nothing left to drain or ack.
	}
	s.runCancel()
	<-s.done
	s.bg.Wait()
	s.settle()
	s.setState(StateStopped, "stop")
	return err
}

// waitHandedOff waits until every accepted update was handed off, ctx ends or
// the session ended hard. It reports whether everything was handed off.
func (s *Session) waitHandedOff(ctx context.Context) bool {
	for {
		s.mu.Lock()
		if s.w.undone == 0 {
			s.mu.Unlock()
			return true
		}
		ch := s.waitChLocked()
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return false
		case <-s.runCtx.Done():
			return false
		}
	}
}

// finalAck sends the last ack on the live socket and closes it with 1000, or
// confirms the polling offset with one short getUpdates call.
func (s *Session) finalAck(ctx context.Context) {
	s.flushAcks(ctx)
	s.mu.Lock()
	gc := s.conn
	polled := s.polled
	wm := s.w.watermark
	needConfirm := wm != "" && s.w.lastAcked.Less(wm)
	s.mu.Unlock()
	if gc != nil {
		gc.closePolitely(ctx, websocket.StatusNormalClosure, "drain")
		return
	}
	if polled && needConfirm {
		s.confirmOffset(ctx, wm)
	}
}

// State reports the session's current state.
func (s *Session) State() State { return State(s.state.Load()) }

// Reconnect is the admin action: drop the socket (politely, with 1000) and dial
// again at once, skipping any backoff wait. A session polling as a fallback
// tries the Gateway at once. It does nothing once the session is stopping.
func (s *Session) Reconnect() {
	s.mu.Lock()
	if s.draining || s.runCtx.Err() != nil {
		s.mu.Unlock()
		return
	}
	select {
	case s.kick <- struct{}{}:
	default:
	}
	gc := s.conn
	if gc != nil {
		s.bg.Add(1) // under mu, before drain can reach bg.Wait
	}
	cancelPoll := s.pollCancel
	s.mu.Unlock()
	if cancelPoll != nil {
		cancelPoll()
	}
	if gc != nil {
		gc.abort(causeAdmin)
		go func() {
			defer s.bg.Done()
			gc.closePolitely(s.runCtx, websocket.StatusNormalClosure, "reconnect")
		}()
	}
}

// setState records a transition and reports it through OnState, in order
// (transitions are serialized). Once draining, only the stop transition is
// accepted; stopped is final.
func (s *Session) setState(st State, cause string) {
	s.stateMu.Lock()
	defer s.stateMu.Unlock()
	old := State(s.state.Load())
	switch {
	case old == StateStopped:
		return
	case old == StateDraining && st != StateStopped:
		return
	case old == st && s.cause == cause:
		return
	}
	s.state.Store(int32(st))
	s.cause = cause
	s.m.stateChange(old, st)
	s.log.Debug().Str("state", st.String()).Str("cause", cause).Msg("session state")
	if s.cfg.OnState != nil {
		s.cfg.OnState(st, cause)
	}
}

// sleep waits d, or less when Reconnect kicks. It reports false when the
// session stops accepting (Stop or hard stop).
func (s *Session) sleep(d time.Duration) bool {
	ok, _ := s.sleepKick(d)
	return ok
}

// sleepKick is sleep that also says whether Reconnect cut the wait short.
func (s *Session) sleepKick(d time.Duration) (ok, kicked bool) {
	if d <= 0 {
		return s.acceptCtx.Err() == nil, false
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true, false
	case <-s.kick:
		return true, true
	case <-s.acceptCtx.Done():
		return false, false
	}
}

// token reads the bot's credential.
func (s *Session) token(ctx context.Context) (buko.Credential, error) {
	cred, err := s.cfg.Tokens.Token(ctx, s.cfg.BotID)
	if err != nil {
		return nil, fmt.Errorf("sessions: token for bot: %w", err)
	}
	if cred == nil {
		return nil, errors.New("sessions: token source returned no credential")
	}
	return cred, nil
}

// waitChLocked returns a channel closed at the next progress broadcast.
func (s *Session) waitChLocked() <-chan struct{} {
	if s.wake == nil {
		s.wake = make(chan struct{})
	}
	return s.wake
}

func (s *Session) broadcastLocked() {
	if s.wake != nil {
		close(s.wake)
		s.wake = nil
	}
}
