package sessions

import (
	"sort"
	"time"

	"buko.app/agentrunner/buko"
)

// entry is one accepted update, from receipt until the watermark covers it.
type entry struct {
	id   buko.UpdateID
	u    *buko.Update // nil once handed off
	recv time.Time
	done bool
	dl   *DeadLetter // set for an undecodable update: its "handoff" is storing this
}

// lane hands off its queue in order; its goroutine exists only while it has work.
type lane struct {
	queue   []*entry
	running bool
}

// window is the ack window of one bot: the updates held in memory in id order,
// the watermark below which everything was handed off, and the lanes. It is
// guarded by Session.mu.
type window struct {
	pending   []*entry      // accepted, sorted by id, not yet covered by the watermark
	undone    int           // accepted and not yet handed off
	watermark buko.UpdateID // it and every lower accepted id were handed off
	lastAcked buko.UpdateID // highest id reported through OnAcked
	ackFrom   time.Time     // receipt of the oldest update covered by the watermark but not yet acked
	lanes     []lane
	peak      int  // most entries held at once, for tests
	released  bool // the session ended: the pending gauge was settled
}

type acceptResult int

const (
	acceptNew       acceptResult = iota // a new update: hand it off
	acceptDuplicate                     // already in memory: drop
	acceptOld                           // at or below the watermark, handed off already: drop, re-ack
	acceptRefused                       // new, but the session is draining: never acked, redelivered later
)

func (w *window) init(lanes int) {
	w.lanes = make([]lane, lanes)
}

// accept files u. Only acceptNew returns an entry; it is then in pending
// (sorted by id, so an out-of-order server cannot break the cumulative ack).
func (w *window) accept(u *buko.Update, now time.Time, refuse bool) (acceptResult, *entry) {
	id := u.UpdateID
	if w.watermark != "" && !w.watermark.Less(id) {
		return acceptOld, nil
	}
	n := len(w.pending)
	i := n
	if n > 0 && !w.pending[n-1].id.Less(id) { // not the usual append at the end
		i = sort.Search(n, func(k int) bool { return !w.pending[k].id.Less(id) })
		if w.pending[i].id == id {
			return acceptDuplicate, nil
		}
	}
	if refuse {
		return acceptRefused, nil
	}
	e := &entry{id: id, u: u, recv: now}
	w.pending = append(w.pending, nil)
	copy(w.pending[i+1:], w.pending[i:])
	w.pending[i] = e
	w.undone++
	w.peak = max(w.peak, len(w.pending))
	return acceptNew, e
}

// complete marks e handed off and advances the watermark over the done prefix.
// It reports whether the watermark moved.
func (w *window) complete(e *entry) bool {
	if e.done {
		return false
	}
	e.done = true
	e.u = nil
	e.dl = nil
	w.undone--
	n := 0
	for n < len(w.pending) && w.pending[n].done {
		n++
	}
	if n == 0 {
		return false
	}
	if w.ackFrom.IsZero() {
		w.ackFrom = w.pending[0].recv
	}
	w.watermark = w.pending[n-1].id
	clear(w.pending[:n])
	w.pending = w.pending[n:]
	if len(w.pending) == 0 {
		w.pending = nil // an idle bot holds no backing array
	}
	return true
}

// noteAcked records that id was acked (written, or confirmed by a poll
// offset). It returns whether id is new (to report through OnAcked) and the
// lag since receipt of the oldest update it newly covers (0 if unknown).
func (w *window) noteAcked(id buko.UpdateID, now time.Time) (bool, time.Duration) {
	if !w.lastAcked.Less(id) {
		return false, 0
	}
	w.lastAcked = id
	var lag time.Duration
	if !w.ackFrom.IsZero() {
		lag = now.Sub(w.ackFrom)
		w.ackFrom = time.Time{}
	}
	return true, lag
}

// laneOf spreads chats over n lanes (FNV-1a of the chat id).
func laneOf(chatID string, n int) int {
	h := uint32(2166136261)
	for i := 0; i < len(chatID); i++ {
		h ^= uint32(chatID[i])
		h *= 16777619
	}
	return int(h % uint32(n))
}

// release settles the window when the session ends: it returns how many
// accepted updates were never handed off (they stay unacked; the server
// redelivers them), once.
func (w *window) release() int {
	if w.released {
		return 0
	}
	w.released = true
	return w.undone
}
