package sessions

import (
	"context"
	"time"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/permanent"
)

// receive files one delivered update: a new one goes to its chat's lane, a
// duplicate still in memory is dropped, and one at or below the watermark
// (handed off already; the server missed our ack) is dropped and re-acked.
func (s *Session) receive(u *buko.Update) { s.receiveEntry(u, nil) }

// receiveEntry is receive for an update, or (dl set) for the placeholder of
// an undecodable one: u then carries only its update_id, and its handoff is
// storing dl.
func (s *Session) receiveEntry(u *buko.Update, dl *DeadLetter) {
	s.m.updateReceived()
	s.mu.Lock()
	res, e := s.w.accept(u, time.Now(), s.draining)
	if res == acceptNew {
		if dl != nil {
			dl.ReceivedAt = e.recv
			e.dl = dl
		}
		s.dispatchLocked(e)
	}
	s.mu.Unlock()
	switch res {
	case acceptNew:
		s.m.pendingAdd(1)
	case acceptDuplicate:
		s.m.duplicate()
		s.log.Debug().Str("update_id", string(u.UpdateID)).Msg("duplicate update dropped (in memory)")
	case acceptOld:
		s.m.duplicate()
		s.log.Debug().Str("update_id", string(u.UpdateID)).Msg("duplicate update dropped (handed off already); re-acking")
		s.maybeAck()
	case acceptRefused:
		s.log.Debug().Str("update_id", string(u.UpdateID)).Msg("update not accepted while draining; left for redelivery")
	}
}

// dispatchLocked queues e on its chat's lane and starts the lane if idle.
func (s *Session) dispatchLocked(e *entry) {
	chat := e.u.ChatID()
	if e.dl != nil {
		chat = e.dl.ChatID // in its chat's order when the chat could be read
	}
	l := &s.w.lanes[laneOf(chat, len(s.w.lanes))]
	l.queue = append(l.queue, e)
	if !l.running {
		l.running = true
		s.bg.Add(1)
		go s.runLane(l)
	}
}

// runLane hands off l's queue in order and exits when it is empty.
func (s *Session) runLane(l *lane) {
	defer s.bg.Done()
	for {
		s.mu.Lock()
		if len(l.queue) == 0 || s.runCtx.Err() != nil {
			l.running = false
			s.mu.Unlock()
			return
		}
		e := l.queue[0]
		l.queue[0] = nil
		l.queue = l.queue[1:]
		if len(l.queue) == 0 {
			l.queue = nil
		}
		u, recv, dl := e.u, e.recv, e.dl
		s.mu.Unlock()
		var ok bool
		if dl != nil {
			ok = s.storeDeadLetter(*dl)
		} else {
			ok = s.handoff(u, recv)
		}
		if !ok {
			// Stopped hard: the update stays unacked and is redelivered to the next owner.
			s.mu.Lock()
			l.running = false
			s.mu.Unlock()
			return
		}
		s.complete(e)
	}
}

// handoff calls Handoff until it succeeds, or fails permanently and the update
// is stored as a dead letter, or the session is stopped hard (false: not
// acked). The context carries recv, the update's receipt time
// (buko.ReceivedAt), for reply-latency measurement downstream.
func (s *Session) handoff(u *buko.Update, recv time.Time) bool {
	start := time.Now()
	ctx := buko.WithReceivedAt(s.runCtx, recv)
	for attempt := 0; ; attempt++ {
		err := s.cfg.Handoff.Handoff(ctx, s.cfg.BotID, *u)
		if err == nil {
			s.m.handoffDone(time.Since(start))
			return true
		}
		if permanent.Is(err) {
			s.m.handoffFailed(true)
			s.log.Error().Err(err).Str("update_id", string(u.UpdateID)).
				Msg("handoff failed permanently; keeping the update as a dead letter")
			return s.storeDeadLetter(refusedLetter(u, recv, err))
		}
		if s.runCtx.Err() != nil {
			return false
		}
		s.m.handoffFailed(false)
		d := backoff(attempt, s.cfg.BackoffBase, s.cfg.BackoffMax)
		s.log.Warn().Err(err).Str("update_id", string(u.UpdateID)).Int("attempt", attempt+1).
			Dur("retry_in", d).Msg("handoff failed; retrying")
		if !sleepCtx(s.runCtx, d) {
			return false
		}
	}
}

// complete marks e handed off and acks if the watermark moved.
func (s *Session) complete(e *entry) {
	s.mu.Lock()
	advanced := s.w.complete(e)
	released := s.w.released
	s.broadcastLocked()
	s.mu.Unlock()
	if !released {
		s.m.pendingAdd(-1)
	}
	if advanced {
		s.maybeAck()
	}
}

// settle zeroes this session's share of the pending gauge when it ends.
func (s *Session) settle() {
	s.mu.Lock()
	n := s.w.release()
	s.mu.Unlock()
	s.m.pendingAdd(-n)
}

// maybeAck writes the watermark as a cumulative ack on the live socket if it is
// above what this socket has acked. Only one goroutine writes acks at a time;
// others that advance the watermark meanwhile are covered by its next round
// (coalescing).
func (s *Session) maybeAck() {
	s.mu.Lock()
	if s.acking {
		s.mu.Unlock()
		return
	}
	s.acking = true
	for {
		gc, id := s.conn, s.w.watermark
		if gc == nil || gc.ackFailed || id == "" || !s.connAcked.Less(id) {
			break
		}
		s.mu.Unlock()
		err := gc.write(buko.AckFrame(id))
		s.mu.Lock()
		if err != nil {
			gc.ackFailed = true // the reader sees the broken socket and reconnects
			break
		}
		s.m.ackSent()
		if gc == s.conn && s.connAcked.Less(id) {
			s.connAcked = id
		}
		s.mu.Unlock()
		s.report(id)
		s.mu.Lock()
	}
	s.acking = false
	s.broadcastLocked()
	s.mu.Unlock()
}

// flushAcks makes sure the watermark was written on the live socket, if any.
func (s *Session) flushAcks(ctx context.Context) {
	for {
		s.maybeAck()
		s.mu.Lock()
		gc := s.conn
		if gc == nil || gc.ackFailed || (!s.acking && !s.connAcked.Less(s.w.watermark)) {
			s.mu.Unlock()
			return
		}
		ch := s.waitChLocked()
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return
		}
	}
}

// confirmed records that a poll with offset id+1 succeeded: every id ≤ id is acked.
func (s *Session) confirmed(id buko.UpdateID) {
	if s.report(id) {
		s.m.ackSent()
	}
}

// report records that id was acked and tells OnAcked if it is new. Reports are
// serialized, so OnAcked sees strictly increasing ids.
func (s *Session) report(id buko.UpdateID) bool {
	s.reportMu.Lock()
	defer s.reportMu.Unlock()
	s.mu.Lock()
	isNew, lag := s.w.noteAcked(id, time.Now())
	s.mu.Unlock()
	if !isNew {
		return false
	}
	s.m.ackLag(lag)
	if s.cfg.OnAcked != nil {
		s.cfg.OnAcked(id)
	}
	return true
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
