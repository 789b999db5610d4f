package sessions

// Dead letters: an update that cannot be handed off — it does not decode, or
// the processing side refuses it permanently — is not acked silently. It is
// given to the Config's DeadLetterSink (the runner stores it in Postgres,
// encrypted) and only then counts as done, so the ack that covers it is sent
// only once it is durably kept. While the sink fails the update is retried
// with backoff and never acked: the bot waits at that update, nothing is lost.

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"strings"
	"time"

	"buko.app/agentrunner/buko"
)

// Dead-letter reasons: short categories, the reason label of
// agentrunner_sessions_dead_letters_total and the reason column of dead_letters.
const (
	// ReasonUndecodable: an update (a getUpdates item or a Gateway update
	// frame) that does not decode, with an update_id that could be read.
	ReasonUndecodable = "undecodable"
	// ReasonUnreadableFrame: a Gateway frame (or getUpdates item) that may
	// be an update but has no readable update_id: it cannot be acked by id.
	ReasonUnreadableFrame = "unreadable_frame"
	// ReasonHandoffRefused: Handoff failed permanently (permanent.Is).
	ReasonHandoffRefused = "handoff_refused"
)

// DeadLetterReasons lists every reason, for metrics and the admin API.
func DeadLetterReasons() []string {
	return []string{ReasonUndecodable, ReasonUnreadableFrame, ReasonHandoffRefused}
}

// DeadLetter is one update kept aside. Payload holds user content: a sink
// must encrypt it at rest and never log it.
type DeadLetter struct {
	UpdateID   buko.UpdateID // "" when none could be read
	ChatID     string        // "" when unknown
	Reason     string        // one of the Reason constants
	Error      string        // why, scrubbed (no token, no control characters, bounded)
	Payload    []byte        // the raw update (or frame) as received, or the update re-encoded
	ReceivedAt time.Time
}

// DeadLetterSink keeps dead letters durably. DeadLetter returns nil only once
// d is durable; the session acks past d only then. A redelivery of the same
// (botID, UpdateID) must not create a second record (it may be offered again
// after a reconnect). It must honour ctx.
type DeadLetterSink interface {
	DeadLetter(ctx context.Context, botID string, d DeadLetter) error
}

// errNoSink is the error of a session without a DeadLetterSink.
var errNoSink = errors.New("sessions: no dead-letter sink configured")

// maxDeadLetterError bounds DeadLetter.Error (runes).
const maxDeadLetterError = 300

// maxUnackableInFlight bounds the dead letters without an update_id being
// stored at once per session (they do not hold the ack window, so nothing
// else holds them back); more are counted, logged and dropped.
const maxUnackableInFlight = 8

// maxUnackableSeen is how many digests of stored id-less dead letters a
// session remembers, so a server resending the same broken frame does not
// fill the table.
const maxUnackableSeen = 64

// storeDeadLetter offers d to the sink until it is stored (true) or the
// session is stopped hard (false: d stays unacked and is redelivered).
func (s *Session) storeDeadLetter(d DeadLetter) bool {
	d.Error = s.scrub(d.Error)
	for attempt := 0; ; attempt++ {
		err := errNoSink
		if s.cfg.DeadLetters != nil {
			err = s.cfg.DeadLetters.DeadLetter(s.runCtx, s.cfg.BotID, d)
		}
		if err == nil {
			s.m.deadLettered(d.Reason)
			s.log.Warn().Str("update_id", string(d.UpdateID)).Str("reason", d.Reason).
				Int("bytes", len(d.Payload)).Str("error", d.Error).Msg("update kept as a dead letter")
			return true
		}
		if s.runCtx.Err() != nil {
			return false
		}
		s.m.deadLetterFailed()
		wait := backoff(attempt, s.cfg.BackoffBase, s.cfg.BackoffMax)
		s.log.Error().Err(err).Str("update_id", string(d.UpdateID)).Str("reason", d.Reason).
			Int("attempt", attempt+1).Dur("retry_in", wait).
			Msg("dead letter not stored; the update stays unacked and is retried")
		if !sleepCtx(s.runCtx, wait) {
			return false
		}
	}
}

// scrub makes an error text safe to store: without the bot's token (as the
// token source has it cached), control characters or more than
// maxDeadLetterError runes.
func (s *Session) scrub(msg string) string {
	ctx, cancel := context.WithTimeout(s.runCtx, 5*time.Second)
	tok, err := s.cfg.Tokens.Token(ctx, s.cfg.BotID)
	cancel()
	if err == nil && tok != nil {
		if t := tok.Reveal(); t != "" {
			msg = strings.ReplaceAll(msg, t, "[redacted]")
		}
	}
	return buko.SanitizeText(msg, maxDeadLetterError)
}

// undecodableLetter is the dead letter of an update that did not decode.
func undecodableLetter(u *buko.Undecodable, recv time.Time) DeadLetter {
	reason := ReasonUndecodable
	if u.UpdateID == "" {
		reason = ReasonUnreadableFrame
	}
	return DeadLetter{UpdateID: u.UpdateID, ChatID: u.ChatID, Reason: reason, Error: u.Err.Error(),
		Payload: u.Raw, ReceivedAt: recv}
}

// refusedLetter is the dead letter of an update Handoff refused permanently.
func refusedLetter(u *buko.Update, recv time.Time, err error) DeadLetter {
	payload, merr := json.Marshal(u)
	if merr != nil { // cannot happen with these types; keep what identifies it
		payload = nil
	}
	return DeadLetter{UpdateID: u.UpdateID, ChatID: u.ChatID(), Reason: ReasonHandoffRefused, Error: err.Error(),
		Payload: payload, ReceivedAt: recv}
}

// receiveUndecodable files an update that did not decode. With an update_id
// it takes its place in the ack window like any update (a duplicate is
// dropped, one at or below the watermark is re-acked), and its "handoff" is
// storing the dead letter. Without one it cannot be acked by id: it is counted,
// logged (size only) and stored in the background, at most once per content.
func (s *Session) receiveUndecodable(bad *buko.Undecodable) {
	now := time.Now()
	if bad.UpdateID != "" {
		d := undecodableLetter(bad, now)
		s.receiveEntry(&buko.Update{UpdateID: bad.UpdateID}, &d)
		return
	}
	s.m.updateReceived()
	sum := sha256.Sum256(bad.Raw)
	s.mu.Lock()
	if s.unackableSeen[sum] || s.unackableInFlight >= maxUnackableInFlight || s.runCtx.Err() != nil {
		seen := s.unackableSeen[sum]
		s.mu.Unlock()
		if seen {
			s.m.duplicate()
			s.log.Debug().Int("bytes", len(bad.Raw)).Msg("unreadable update without an update_id seen again; kept already")
		} else {
			s.m.deadLetterFailed()
			s.log.Error().Int("bytes", len(bad.Raw)).Msg("unreadable update without an update_id dropped: too many being stored")
		}
		return
	}
	s.unackableInFlight++
	s.bg.Add(1)
	s.mu.Unlock()
	s.log.Warn().Int("bytes", len(bad.Raw)).Msg("unreadable update without an update_id; keeping it as a dead letter")
	go func() {
		defer s.bg.Done()
		ok := s.storeDeadLetter(undecodableLetter(bad, now))
		if !ok {
			// Stopped first: with no id it held no ack back, so it is gone.
			s.m.deadLetterFailed()
			s.log.Error().Int("bytes", len(bad.Raw)).Msg("unreadable update without an update_id not stored before the session stopped")
		}
		s.mu.Lock()
		s.unackableInFlight--
		if ok {
			if len(s.unackableSeen) >= maxUnackableSeen {
				clear(s.unackableSeen)
			}
			s.unackableSeen[sum] = true
		}
		s.mu.Unlock()
	}()
}
