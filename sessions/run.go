package sessions

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/rs/zerolog"

	"buko.app/agentrunner/buko"
)

// loopState is the delivery loop's memory across attempts. It is owned by
// one goroutine at a time (the loop hands it from goroutine to goroutine).
type loopState struct {
	attempt      int  // consecutive failures, for the backoff
	authFails    int  // consecutive 401s
	upgradeFails int  // consecutive failed upgrades that polling could work around
	fallback     bool // polling because the Gateway would not upgrade
	cause        string
}

// run is the session's delivery loop: dial and serve the Gateway, or poll,
// until Stop, the Start context's end, or repeated 401s.
//
// The loop is one goroutine at a time, but not always the same one: once a
// socket is open, the dialing goroutine starts a fresh goroutine to read it
// and returns, and when the socket ends the reader starts a fresh goroutine to
// back off and dial. Dialing grows a goroutine's stack to tens of KiB; a fresh
// reader blocked on an idle socket needs a few, and idle sockets are what a
// runner holds by the thousand.
func (s *Session) run(st *loopState, wait time.Duration) {
	if s.cfg.Delivery == DeliveryPolling {
		s.finish(s.poll(st) == pollAuthFailed)
		return
	}
	if !s.sleep(wait) {
		s.finish(false)
		return
	}
	for s.acceptCtx.Err() == nil {
		if st.fallback {
			switch s.poll(st) {
			case pollAuthFailed:
				s.finish(true)
				return
			case pollStopped:
				s.finish(false)
				return
			}
			st.cause = causeFallback // time to see whether the Gateway works again
		}
		s.setState(StateConnecting, st.cause)
		g, fail := s.dial()
		if fail != nil {
			if s.acceptCtx.Err() != nil {
				break
			}
			wait, final := s.dialFailed(st, fail)
			if final {
				s.finish(true)
				return
			}
			st.cause = fail.cause
			if st.fallback {
				continue
			}
			if !s.sleep(wait) {
				break
			}
			continue
		}
		if st.fallback {
			s.log.Info().Msg("gateway upgrades work again; leaving polling")
		}
		st.authFails, st.upgradeFails, st.fallback = 0, 0, false
		s.drainKick() // a Reconnect that led here is used up
		go s.read(st, g)
		return
	}
	s.finish(false)
}

// read serves one socket and then hands the loop to a fresh goroutine.
func (s *Session) read(st *loopState, g *gwConn) {
	end := s.serve(g)
	if s.acceptCtx.Err() != nil {
		s.finish(false)
		return
	}
	st.cause = end.cause
	if end.cause == causeAdmin {
		s.drainKick() // this Reconnect is being honoured; it must not cut a later wait short
	}
	go s.run(st, s.socketEnded(st, end))
}

// finish ends the delivery loop. After a hard stop (the Start context ended)
// it settles the session; after repeated 401s it calls OnAuthFailed, once
// done is closed, so the callback may call Stop.
func (s *Session) finish(authFailed bool) {
	if s.runCtx.Err() != nil && !s.isDraining() {
		// The Start context ended: stopped hard, nothing drained.
		s.settle()
		s.setState(StateStopped, causeContext)
	}
	close(s.done)
	if authFailed && s.cfg.OnAuthFailed != nil {
		s.cfg.OnAuthFailed()
	}
}

func (s *Session) isDraining() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.draining
}

// socketEnded logs and counts a socket's end and returns the wait before the next dial.
func (s *Session) socketEnded(st *loopState, end connEnd) time.Duration {
	s.m.reconnect(end.cause)
	ev := s.log.Info()
	if end.cause == causeCloseOther || end.cause == causeBadFrame || end.cause == causeServerError {
		ev = s.log.Warn()
	}
	ev = ev.Str("cause", end.cause).Dur("lived", end.lived)
	if end.code >= 0 {
		ev = ev.Int("close_code", int(end.code))
	}
	if end.err != nil && end.cause == causeNetwork {
		ev = ev.AnErr("reason", end.err)
	}
	ev.Msg("gateway socket ended; reconnecting")

	if end.lived >= s.cfg.StableAfter {
		st.attempt = 0
	}
	var wait time.Duration
	switch end.cause {
	case causeAdmin:
		st.attempt = 0
		return 0
	case causeTokenRevoked:
		// The token was rotated or revoked: read it afresh and dial soon.
		s.cfg.Tokens.Invalidate(s.cfg.BotID)
		wait = backoff(st.attempt, s.cfg.BackoffBase, s.cfg.BackoffMax)
		st.attempt++
	case causeReplaced:
		// Another connection took this bot over: do not fight it.
		wait = between(s.cfg.ReplacedBackoff/2, s.cfg.ReplacedBackoff)
		s.log.Warn().Dur("retry_in", wait).Msg("gateway connection replaced by another; backing off")
	default:
		wait = backoff(st.attempt, s.cfg.BackoffBase, s.cfg.BackoffMax)
		st.attempt++
	}
	s.setState(StateBackoff, end.cause)
	return wait
}

// dialFailed handles a failed upgrade. It returns the wait before the next
// attempt, and final when repeated 401s end the session.
func (s *Session) dialFailed(st *loopState, f *dialFailure) (wait time.Duration, final bool) {
	s.m.reconnect(f.cause)
	ev := s.log.Warn().Str("cause", f.cause)
	if f.status != 0 {
		ev = ev.Int("status", f.status)
	}
	if f.code != "" {
		ev = ev.Str("code", f.code)
	}
	if f.retryAfter > 0 {
		ev = ev.Dur("retry_after", f.retryAfter)
	}
	if f.status == 0 && f.err != nil {
		ev = ev.AnErr("reason", f.err)
	}
	ev.Msg("gateway upgrade failed")

	switch f.cause {
	case causeUnauthorized:
		if s.authFailed(st) {
			return 0, true
		}
		return backoff(st.authFails-1, s.cfg.BackoffBase, s.cfg.BackoffMax), false
	case causeRateLimited:
		wait = max(f.retryAfter, s.cfg.BackoffBase) + backoff(0, s.cfg.BackoffBase, s.cfg.BackoffMax)
		st.attempt++
	case causeUpgradeFailed:
		st.upgradeFails++
		if !st.fallback && st.upgradeFails >= s.cfg.FallbackAfter {
			st.fallback = true
			s.m.fallback()
			s.log.Warn().Int("failed_upgrades", st.upgradeFails).Msg("gateway keeps refusing to upgrade; falling back to polling")
		}
		if st.fallback {
			return 0, false
		}
		wait = backoff(st.attempt, s.cfg.BackoffBase, s.cfg.BackoffMax)
		st.attempt++
	default: // connection limit, network, token unavailable
		wait = backoff(st.attempt, s.cfg.BackoffBase, s.cfg.BackoffMax)
		st.attempt++
	}
	s.setState(StateBackoff, f.cause)
	return wait, false
}

// authFailed counts a 401: the cached token is dropped so the next attempt
// reads it afresh. It reports true (state auth_failed) once MaxAuthFailures
// 401s came in a row.
func (s *Session) authFailed(st *loopState) bool {
	s.m.authFailure()
	s.cfg.Tokens.Invalidate(s.cfg.BotID)
	st.authFails++
	if st.authFails < s.cfg.MaxAuthFailures {
		return false
	}
	s.log.Error().Int("failures", st.authFails).Msg("bot token refused repeatedly; giving up (auth_failed)")
	s.setState(StateAuthFailed, causeUnauthorized)
	return true
}

type pollResult int

const (
	pollStopped    pollResult = iota // Stop or hard stop
	pollAuthFailed                   // repeated 401s
	pollProbe                        // fallback: time to try the Gateway
)

// poll long-polls getUpdates with offset = watermark+1 (which confirms
// everything handed off) until stopped, or, as a fallback, until it is time
// to try the Gateway again (every GatewayRetry, on Reconnect, or at once on
// 409 GATEWAY_ACTIVE, which says some Gateway socket works).
func (s *Session) poll(st *loopState) pollResult {
	fallback := s.cfg.Delivery != DeliveryPolling
	cause := causePolling
	if fallback {
		cause = causeFallback
	}
	s.setState(StatePolling, cause)
	probeAt := time.Now().Add(s.cfg.GatewayRetry)
	attempt := 0
	idle := 0 // consecutive polls that returned only updates without an update_id
	limit := min(buko.MaxPollLimit, s.cfg.MaxPending)
	timeout := int(s.cfg.PollTimeout / time.Second)
	for {
		if s.acceptCtx.Err() != nil {
			return pollStopped
		}
		if fallback && !time.Now().Before(probeAt) {
			return pollProbe
		}
		// One batch at a time: polling again before everything was handed off
		// would fetch the same updates again (the offset cannot move past them).
		if !s.waitHandedOff(s.acceptCtx) {
			return pollStopped
		}
		cred, err := s.token(s.acceptCtx)
		if err != nil {
			s.m.pollError(causeTokenUnavail)
			s.log.Warn().Err(err).Msg("no token for polling")
			s.setState(StateBackoff, causeTokenUnavail)
			if !s.sleep(backoff(attempt, s.cfg.BackoffBase, s.cfg.BackoffMax)) {
				return pollStopped
			}
			attempt++
			continue
		}
		ctx, cancel := context.WithCancel(s.acceptCtx)
		s.mu.Lock()
		wm := s.w.watermark
		s.pollCancel = cancel
		s.mu.Unlock()
		var offset buko.UpdateID
		if wm != "" {
			offset = wm.Next()
		}
		batch, err := s.cfg.Client.PollUpdates(ctx, cred, buko.GetUpdatesParams{Offset: offset, Limit: limit, Timeout: timeout})
		kicked := ctx.Err() != nil
		cancel()
		s.mu.Lock()
		s.pollCancel = nil
		s.mu.Unlock()
		if err != nil {
			if s.acceptCtx.Err() != nil {
				return pollStopped
			}
			if kicked { // Reconnect
				s.drainKick()
				if fallback {
					return pollProbe
				}
				continue
			}
			wait, res, done := s.pollFailed(st, err, attempt, fallback)
			if done {
				return res
			}
			attempt++
			ok, kicked := s.sleepKick(wait)
			if !ok {
				return pollStopped
			}
			if fallback && kicked {
				return pollProbe
			}
			continue
		}
		attempt, st.authFails = 0, 0
		s.setState(StatePolling, cause)
		s.mu.Lock()
		s.polled = true
		s.mu.Unlock()
		if wm != "" {
			s.confirmed(wm)
		}
		if s.receiveBatch(batch) {
			// Only items without an update_id: the offset cannot pass them,
			// so the next poll returns them at once. Do not spin on them.
			idle++
			if ok, kicked := s.sleepKick(backoff(idle, s.cfg.BackoffBase, s.cfg.BackoffMax)); !ok {
				return pollStopped
			} else if fallback && kicked {
				return pollProbe
			}
		} else {
			idle = 0
		}
	}
}

// pollFailed handles a failed getUpdates: the wait before the next poll, or a
// result that ends polling (done).
func (s *Session) pollFailed(st *loopState, err error, attempt int, fallback bool) (time.Duration, pollResult, bool) {
	var ae *buko.Error
	isAPI := errors.As(err, &ae)
	cause := causePollFailed
	switch {
	case isAPI && (ae.Code == buko.CodeUnauthorized || ae.Status == 401):
		cause = causeUnauthorized
	case isAPI && (ae.Code == buko.CodeRateLimited || ae.Status == 429):
		cause = causeRateLimited
	case isAPI && ae.Code == buko.CodeGatewayActive:
		cause = causeGatewayActive
	}
	s.m.pollError(cause)
	var ev *zerolog.Event
	if cause == causeGatewayActive || cause == causeRateLimited {
		ev = s.log.Info()
	} else {
		ev = s.log.Warn()
	}
	ev.Err(err).Str("cause", cause).Msg("getUpdates failed")

	wait := backoff(attempt, s.cfg.BackoffBase, s.cfg.BackoffMax)
	switch cause {
	case causeUnauthorized:
		if s.authFailed(st) {
			return 0, pollAuthFailed, true
		}
		wait = backoff(st.authFails-1, s.cfg.BackoffBase, s.cfg.BackoffMax)
	case causeRateLimited:
		wait = max(ae.RetryAfter, s.cfg.BackoffBase) + backoff(0, s.cfg.BackoffBase, s.cfg.BackoffMax)
	case causeGatewayActive:
		if fallback {
			return 0, pollProbe, true // some Gateway socket works: try it
		}
	}
	s.setState(StateBackoff, cause)
	return wait, 0, false
}

// drainKick consumes a pending Reconnect, if any.
func (s *Session) drainKick() {
	select {
	case <-s.kick:
	default:
	}
}

// confirmOffset confirms wm with one short getUpdates (Stop in polling mode).
// The updates it returns are not accepted: they stay for the next owner.
func (s *Session) confirmOffset(ctx context.Context, wm buko.UpdateID) {
	cred, err := s.token(ctx)
	if err != nil {
		s.log.Warn().Err(err).Msg("final offset not confirmed: no token")
		return
	}
	if _, err := s.cfg.Client.PollUpdates(ctx, cred, buko.GetUpdatesParams{Offset: wm.Next(), Limit: 1}); err != nil {
		s.log.Warn().Err(err).Msg("final offset not confirmed")
		return
	}
	s.confirmed(wm)
}

// receiveBatch files one getUpdates batch in id order, undecodable items
// included (they take their place in the window by id, kept as dead letters,
// then acked by the next offset: the bot never sticks on one). Order matters:
// an update filed after a higher one was handed off would be below the
// watermark, and dropped as a redelivery.
// It reports whether the batch held items and none with an update_id.
func (s *Session) receiveBatch(b buko.Batch) (onlyIDLess bool) {
	type item struct {
		u   *buko.Update
		bad *buko.Undecodable
	}
	items := make([]item, 0, len(b.Updates)+len(b.Undecodable))
	for i := range b.Updates {
		items = append(items, item{u: &b.Updates[i]})
	}
	for _, bad := range b.Undecodable {
		s.log.Warn().Str("update_id", string(bad.UpdateID)).Int("bytes", len(bad.Raw)).
			Msg("undecodable getUpdates item")
		items = append(items, item{bad: bad})
	}
	id := func(it item) buko.UpdateID {
		if it.u != nil {
			return it.u.UpdateID
		}
		return it.bad.UpdateID
	}
	slices.SortStableFunc(items, func(x, y item) int { return id(x).Compare(id(y)) })
	onlyIDLess = len(items) > 0
	for _, it := range items {
		if id(it) != "" {
			onlyIDLess = false
		}
		if it.u != nil {
			s.receive(it.u)
		} else {
			s.receiveUndecodable(it.bad)
		}
	}
	return onlyIDLess
}
