package sim

import (
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"sort"
	"strconv"
	"time"

	"buko.app/agentrunner/buko"
)

const framePrefix = `{"type":"update","update":`

// newBotDelivery sets up a bot's update log. Update ids start at a base drawn
// from the seed (between 9,900 and 999,899) so no client can assume they start
// at 1, and they cross a power of ten early for some bots.
func newBotDelivery(b *bot, seed uint64) {
	b.idRand = rand.NewPCG(seed, b.num)
	b.lastID = 9_900 + b.idRand.Uint64()%990_000
	b.pollWake = make(chan struct{})
}

// nextIDLocked returns a new update id: strictly increasing, usually by one,
// with a gap of 1–4 now and then (gaps are allowed by docs/architecture.md §3).
func (b *bot) nextIDLocked() uint64 {
	r := b.idRand.Uint64()
	step := uint64(1)
	if r%4 == 0 {
		step += 1 + (r>>8)%4
	}
	b.lastID += step
	return b.lastID
}

// enqueue appends an update to b's log and wakes its sockets and long polls.
func (s *Server) enqueue(b *bot, u *buko.Update) {
	b.mu.Lock()
	defer b.mu.Unlock()
	id := b.nextIDLocked()
	u.UpdateID = buko.UpdateID(strconv.FormatUint(id, 10))
	data, err := json.Marshal(u)
	if err != nil { // cannot happen with these types; never lose an id silently
		s.log.Error().Err(err).Str("bot_id", b.id).Msg("sim: encoding an update failed")
		return
	}
	frame := make([]byte, 0, len(framePrefix)+len(data)+1)
	frame = append(append(append(frame, framePrefix...), data...), '}')
	b.log = append(b.log, entry{id: id, frame: frame})
	s.stats.updatesCreated.Add(1)
	for _, c := range b.conns {
		c.kickLocked()
	}
	b.wakePollsLocked()
}

func (b *bot) wakePollsLocked() {
	close(b.pollWake)
	b.pollWake = make(chan struct{})
}

// confirmLocked confirms (drops) every update with an id ≤ upTo: the one
// cursor shared by Gateway acks and the getUpdates offset.
func (s *Server) confirmLocked(b *bot, upTo uint64) {
	if upTo <= b.acked {
		return
	}
	n := sort.Search(len(b.log), func(i int) bool { return b.log[i].id > upTo })
	for i := 0; i < n; i++ {
		b.log[i] = entry{} // let the frames go
	}
	if n == len(b.log) {
		b.log = nil
	} else {
		b.log = b.log[n:]
	}
	b.acked = upTo
	s.stats.acked.Add(int64(n))
	for _, c := range b.conns {
		c.kickLocked()
	}
}

// parseCursor reads a canonical update id as a number; ids too large for
// uint64 report ok=false with huge=true.
func parseCursor(id buko.UpdateID) (v uint64, huge bool, ok bool) {
	v, err := strconv.ParseUint(string(id), 10, 64)
	if err != nil {
		var ne *strconv.NumError
		if errors.As(err, &ne) && errors.Is(ne.Err, strconv.ErrRange) {
			return 0, true, false
		}
		return 0, false, false
	}
	return v, false, true
}

// poll answers getUpdates: it first confirms every id below offset (clamped
// to ids that exist), then returns up to limit unconfirmed updates, waiting
// up to timeout for the first one. A Gateway socket opening during the wait
// ends it with an empty result.
func (s *Server) poll(ctx context.Context, b *bot, offset buko.UpdateID, limit int, timeout time.Duration) (json.RawMessage, *apiError) {
	var deadline <-chan time.Time
	if timeout > 0 {
		t := time.NewTimer(timeout)
		defer t.Stop()
		deadline = t.C
	}
	first := true
	for {
		b.mu.Lock()
		if len(b.conns) > 0 {
			b.mu.Unlock()
			if first {
				return nil, &apiError{Status: 409, Code: buko.CodeGatewayActive,
					Message: "getUpdates is not available while the bot has an open Gateway connection"}
			}
			return json.RawMessage("[]"), nil
		}
		if first && offset != "" {
			v, huge, ok := parseCursor(offset)
			switch {
			case huge:
				s.confirmLocked(b, b.lastID)
			case ok && v > 0:
				s.confirmLocked(b, min(v-1, b.lastID))
			}
		}
		first = false
		if len(b.log) > 0 || deadline == nil {
			out := s.takeForPollLocked(b, limit)
			b.mu.Unlock()
			return out, nil
		}
		wake := b.pollWake
		b.mu.Unlock()
		select {
		case <-wake:
		case <-deadline:
			deadline = nil // answer with what there is (nothing) on the next turn
		case <-ctx.Done():
			return nil, errInternal("request cancelled")
		case <-s.done:
			return json.RawMessage("[]"), nil
		}
	}
}

func (s *Server) takeForPollLocked(b *bot, limit int) json.RawMessage {
	n := min(limit, len(b.log))
	size := 2
	for i := 0; i < n; i++ {
		size += len(b.log[i].frame) - len(framePrefix) - 1 + 1
	}
	out := make([]byte, 0, size)
	out = append(out, '[')
	for i := 0; i < n; i++ {
		e := &b.log[i]
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, e.frame[len(framePrefix):len(e.frame)-1]...)
		s.stats.updatesDelivered.Add(1)
		if e.delivered {
			s.stats.updatesRedelivered.Add(1)
		}
		e.delivered = true
		b.sentMax = max(b.sentMax, e.id)
	}
	return append(out, ']')
}
