package sessions

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/buko/sim"
	"buko.app/agentrunner/internal/testsupport"
	"buko.app/agentrunner/permanent"
)

// memSink is an in-memory DeadLetterSink for these unit tests of the
// session's side (the Postgres one is tested in runner): it can hold stores
// back (gate) or fail them.
type memSink struct {
	mu      sync.Mutex
	letters []DeadLetter
	gate    chan struct{}
	fail    error
	calls   int
}

func (m *memSink) DeadLetter(ctx context.Context, botID string, d DeadLetter) error {
	m.mu.Lock()
	m.calls++
	gate, fail := m.gate, m.fail
	m.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if fail != nil {
		return fail
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, l := range m.letters {
		if l.UpdateID != "" && l.UpdateID == d.UpdateID {
			return nil
		}
	}
	m.letters = append(m.letters, d)
	return nil
}

func (m *memSink) all() []DeadLetter {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]DeadLetter(nil), m.letters...)
}

func (m *memSink) set(gate chan struct{}, fail error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.gate, m.fail = gate, fail
}

func (m *memSink) attempts() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.calls
}

// rawUpdate queues raw (with $ID replaced) at the simulator and returns its id.
func (e *simEnv) rawUpdate(botID, raw string) buko.UpdateID {
	e.t.Helper()
	id, err := e.ctl().RawUpdate(context.Background(), botID, raw)
	e.must(err)
	return buko.UpdateID(id)
}

// acked is the simulator's confirmed cursor of the bot.
func (f *chatFixture) simAcked() buko.UpdateID {
	return buko.UpdateID(f.e.bot(f.botID).AckedUpdateID)
}

// freeChat is a chat of f (made with 2 chats, in distinct lanes) whose lane
// is not the lane of an update without a chat, so it is not held behind one.
func (f *chatFixture) freeChat() int {
	if laneOf(f.chats[0], DefaultLanes) == laneOf("", DefaultLanes) {
		return 1
	}
	return 0
}

func deliveries() []string { return []string{DeliveryGateway, DeliveryPolling} }

// Ids sent as JSON integers decode: the update is handed off like any other.
// Before lenient ids this batch failed as a whole and polling retried the
// same offset forever (the Gateway dropped the frame).
func TestNumericIDsHandedOff(t *testing.T) {
	for _, delivery := range deliveries() {
		t.Run(delivery, func(t *testing.T) {
			e := newSim(t, sim.Options{})
			f := newFixture(t, e, 1, nil)
			cfg := f.config()
			cfg.Delivery = delivery
			cfg.DeadLetters = &memSink{}
			s := startSession(t, cfg)
			id := e.rawUpdate(f.botID, `{"update_id":$ID,"message":{"message_id":77,"chat":{"id":"`+f.chats[0]+
				`","type":"private"},"from":{"id":5,"is_bot":false},"text":"numeric"}}`)
			e.post(f.chats[0], f.users[0], "after")
			testsupport.Eventually(t, "both handed off", func() bool { return len(f.rec.texts(f.chats[0])) == 3 })
			if got := strings.Join(f.rec.texts(f.chats[0]), ","); got != "/start,numeric,after" {
				t.Fatalf("texts %s", got)
			}
			testsupport.Eventually(t, "acked past it", func() bool { return id.Less(f.simAcked()) })
			stop(t, s)
		})
	}
}

// An update that cannot be read becomes a dead letter with its update_id;
// the updates around it are handed off; the ack covers it only once the
// dead letter is stored; then the cursor moves past it (polling is not stuck).
func TestUndecodableUpdateDeadLettered(t *testing.T) {
	for _, delivery := range deliveries() {
		t.Run(delivery, func(t *testing.T) {
			e := newSim(t, sim.Options{})
			f := newFixture(t, e, 2, nil)
			var logs syncBuffer
			reg := prometheus.NewRegistry()
			cfg := f.config()
			cfg.Delivery = delivery
			cfg.Metrics = NewMetrics(reg)
			cfg.Logger = zerolog.New(&logs)
			sink := &memSink{}
			gate := make(chan struct{})
			sink.set(gate, nil)
			cfg.DeadLetters = sink
			s := startSession(t, cfg)
			e.post(f.chats[0], f.users[0], "before")
			testsupport.Eventually(t, "before handed off", func() bool { return len(f.rec.texts(f.chats[0])) == 2 })
			testsupport.Eventually(t, "before acked", func() bool { return f.simAcked() != "" })
			bad := e.rawUpdate(f.botID, `{"update_id":"$ID","message":{"message_id":"9","chat":{"id":"`+f.chats[0]+`"},"text":{"secret":"user text"}}}`)
			// "after" is in another chat (another lane): it does not wait
			// for the dead letter; polling fetches one batch at a time, so
			// there it may wait for the next batch.
			e.post(f.chats[1], f.users[1], "after")
			if delivery == DeliveryGateway {
				testsupport.Eventually(t, "after handed off", func() bool { return len(f.rec.texts(f.chats[1])) == 2 })
			}
			testsupport.Eventually(t, "the sink is asked", func() bool { return sink.attempts() > 0 })
			if acked := f.simAcked(); !acked.Less(bad) {
				t.Fatalf("acked %s covers the undecodable %s before its dead letter was stored", acked, bad)
			}
			close(gate)
			testsupport.Eventually(t, "after handed off", func() bool { return len(f.rec.texts(f.chats[1])) == 2 })
			testsupport.Eventually(t, "acked past the dead letter", func() bool { return bad.Less(f.simAcked()) })
			stop(t, s)
			got := sink.all()
			if len(got) != 1 {
				t.Fatalf("dead letters %+v", got)
			}
			d := got[0]
			wantRaw := `{"update_id":"` + string(bad) + `","message":{"message_id":"9","chat":{"id":"` + f.chats[0] + `"},"text":{"secret":"user text"}}}`
			if d.UpdateID != bad || d.ChatID != f.chats[0] || d.Reason != ReasonUndecodable || string(d.Payload) != wantRaw ||
				d.Error == "" || d.ReceivedAt.IsZero() {
				t.Fatalf("dead letter %+v (payload %s)", d, d.Payload)
			}
			if got := strings.Join(f.rec.texts(f.chats[0]), ",") + "|" + strings.Join(f.rec.texts(f.chats[1]), ","); got != "/start,before|/start,after" {
				t.Fatalf("texts %s", got)
			}
			if n := testsupport.MetricValue(t, reg, "agentrunner_sessions_dead_letters_total", "reason", ReasonUndecodable); n != 1 {
				t.Errorf("dead letters counted %v", n)
			}
			for _, secret := range []string{f.token, "user text"} {
				if strings.Contains(logs.String(), secret) || strings.Contains(d.Error, secret) {
					t.Errorf("%q in the logs or the error", secret)
				}
			}
			f.rec.check(t)
		})
	}
}

// While the sink fails the update is never acked (retried with backoff);
// once it works the update is stored and acked. Without a sink the update is
// never acked at all.
func TestDeadLetterStoreFailureNotAcked(t *testing.T) {
	for _, delivery := range deliveries() {
		t.Run(delivery, func(t *testing.T) {
			e := newSim(t, sim.Options{})
			f := newFixture(t, e, 2, nil)
			c := f.freeChat()
			reg := prometheus.NewRegistry()
			cfg := f.config()
			cfg.Delivery = delivery
			cfg.Metrics = NewMetrics(reg)
			sink := &memSink{}
			sink.set(nil, errors.New("postgres: connection refused"))
			cfg.DeadLetters = sink
			s := startSession(t, cfg)
			bad := e.rawUpdate(f.botID, `{"update_id":"$ID","message":7}`)
			e.post(f.chats[c], f.users[c], "after")
			if delivery == DeliveryGateway {
				testsupport.Eventually(t, "after handed off", func() bool { return len(f.rec.texts(f.chats[c])) == 2 })
			}
			testsupport.Eventually(t, "retried", func() bool { return sink.attempts() >= 3 })
			if acked := f.simAcked(); !acked.Less(bad) {
				t.Fatalf("acked %s past the unstored dead letter %s", acked, bad)
			}
			if n := testsupport.MetricValue(t, reg, "agentrunner_sessions_dead_letter_errors_total"); n < 2 {
				t.Errorf("store failures counted %v", n)
			}
			sink.set(nil, nil)
			testsupport.Eventually(t, "after handed off", func() bool { return len(f.rec.texts(f.chats[c])) == 2 })
			testsupport.Eventually(t, "acked once stored", func() bool { return bad.Less(f.simAcked()) })
			stop(t, s)
			if got := sink.all(); len(got) != 1 || got[0].UpdateID != bad {
				t.Fatalf("dead letters %+v", got)
			}
		})
	}
	t.Run("no sink", func(t *testing.T) {
		e := newSim(t, sim.Options{})
		f := newFixture(t, e, 2, nil)
		c := f.freeChat()
		cfg := f.config()
		s := startSession(t, cfg)
		e.post(f.chats[c], f.users[c], "before")
		testsupport.Eventually(t, "before acked", func() bool { return f.simAcked() != "" && len(f.rec.texts(f.chats[c])) == 2 })
		bad := e.rawUpdate(f.botID, `{"update_id":"$ID","message":7}`)
		e.post(f.chats[c], f.users[c], "after")
		testsupport.Eventually(t, "after handed off", func() bool { return len(f.rec.texts(f.chats[c])) == 3 })
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		if err := s.Stop(ctx); err == nil {
			t.Error("Stop drained although the dead letter could not be kept")
		}
		if acked := f.simAcked(); !acked.Less(bad) {
			t.Fatalf("acked %s past %s without a sink", acked, bad)
		}
	})
}

// A Gateway frame with no readable update_id cannot be acked by id: it is
// kept (whole, update_id empty), counted, and logged by size only.
func TestUnreadableFrameWithoutID(t *testing.T) {
	e := newSim(t, sim.Options{})
	f := newFixture(t, e, 1, nil)
	var logs syncBuffer
	reg := prometheus.NewRegistry()
	cfg := f.config()
	cfg.Metrics = NewMetrics(reg)
	cfg.Logger = zerolog.New(&logs)
	sink := &memSink{}
	cfg.DeadLetters = sink
	s := startSession(t, cfg)
	e.rawUpdate(f.botID, `{"message":{"text":"private words"`) // the frame is cut short
	e.post(f.chats[0], f.users[0], "after")
	testsupport.Eventually(t, "after handed off", func() bool { return len(f.rec.texts(f.chats[0])) == 2 })
	testsupport.Eventually(t, "kept", func() bool { return len(sink.all()) == 1 })
	stop(t, s)
	d := sink.all()[0]
	if d.UpdateID != "" || d.Reason != ReasonUnreadableFrame || !bytes.HasPrefix(d.Payload, []byte(`{"type":"update","update":{"message"`)) {
		t.Fatalf("dead letter %+v (%s)", d, d.Payload)
	}
	if n := testsupport.MetricValue(t, reg, "agentrunner_sessions_frames_received_total", "type", "invalid"); n != 1 {
		t.Errorf("invalid frames %v", n)
	}
	if strings.Contains(logs.String(), "private words") || strings.Contains(logs.String(), f.token) {
		t.Error("the payload or the token reached the log")
	}
}

// A permanent handoff failure is stored as a dead letter (the update as it
// decoded), and only then acked.
func TestPermanentFailureDeadLettered(t *testing.T) {
	e := newSim(t, sim.Options{})
	f := newFixture(t, e, 1, nil)
	cfg := f.config()
	sink := &memSink{}
	gate := make(chan struct{})
	sink.set(gate, nil)
	cfg.DeadLetters = sink
	f.rec.fail = func(u buko.Update, attempt int) error {
		if u.Message != nil && u.Message.Text == "poison" {
			return permanent.Mark(errors.New("refused by Temporal: bad payload"))
		}
		return nil
	}
	s := startSession(t, cfg)
	e.post(f.chats[0], f.users[0], "poison")
	testsupport.Eventually(t, "the sink is asked", func() bool { return sink.attempts() > 0 })
	var poison buko.UpdateID
	if v := e.bot(f.botID); v.LastUpdateID != "" {
		poison = buko.UpdateID(v.LastUpdateID)
	}
	if acked := f.simAcked(); !acked.Less(poison) {
		t.Fatalf("acked %s before the dead letter of %s was stored", acked, poison)
	}
	close(gate)
	testsupport.Eventually(t, "acked", func() bool { return !f.simAcked().Less(poison) })
	stop(t, s)
	got := sink.all()
	if len(got) != 1 || got[0].Reason != ReasonHandoffRefused || got[0].UpdateID != poison || got[0].ChatID != f.chats[0] {
		t.Fatalf("dead letters %+v", got)
	}
	u, err := buko.DecodeUpdate(got[0].Payload)
	if err != nil || u.Message.Text != "poison" || !strings.Contains(got[0].Error, "bad payload") {
		t.Fatalf("payload %s: %v; error %q", got[0].Payload, err, got[0].Error)
	}
	var raw map[string]any
	if json.Unmarshal(got[0].Payload, &raw) != nil {
		t.Fatal("payload is not JSON")
	}
}

// One poll returns an undecodable item followed by a good one: the good one
// must not be handed off (moving the watermark) before the bad one is filed,
// or the bad one would fall below the watermark and be dropped as a redelivery.
func TestPollingBatchKeepsIDOrder(t *testing.T) {
	e := newSim(t, sim.Options{})
	f := newFixture(t, e, 2, nil)
	c := f.freeChat()
	cfg := f.config()
	cfg.Delivery = DeliveryPolling
	sink := &memSink{}
	cfg.DeadLetters = sink
	bad := e.rawUpdate(f.botID, `{"update_id":"$ID","message":7}`)
	e.post(f.chats[c], f.users[c], "after")
	s := startSession(t, cfg) // the first poll gets /start, /start, bad, after
	testsupport.Eventually(t, "after handed off", func() bool { return len(f.rec.texts(f.chats[c])) == 2 })
	testsupport.Eventually(t, "acked past both", func() bool { return bad.Less(f.simAcked()) })
	stop(t, s)
	if got := sink.all(); len(got) != 1 || got[0].UpdateID != bad {
		t.Fatalf("dead letters %+v", got)
	}
}

// Polling an item without an update_id: kept once (not once per poll), and
// the session does not spin on it (the offset cannot pass it, so every poll
// returns it again); a later update still goes through.
func TestPollingIDLessItem(t *testing.T) {
	e := newSim(t, sim.Options{})
	f := newFixture(t, e, 1, nil)
	cfg := f.config()
	cfg.Delivery = DeliveryPolling
	sink := &memSink{}
	cfg.DeadLetters = sink
	s := startSession(t, cfg)
	testsupport.Eventually(t, "/start handed off", func() bool { return len(f.rec.texts(f.chats[0])) == 1 })
	before := e.stats().UpdatesRedelivered
	e.rawUpdate(f.botID, `{"message":{"text":"no id here"}}`)
	testsupport.Eventually(t, "kept", func() bool { return len(sink.all()) == 1 })
	// Observe a second of polling: with BackoffMax 300 ms a handful of
	// polls, not hundreds (a window to measure, not a wait for a condition).
	<-time.After(time.Second)
	if n := e.stats().UpdatesRedelivered - before; n > 20 {
		t.Errorf("the id-less item was polled %d times in a second", n)
	}
	if got := sink.all(); len(got) != 1 || got[0].UpdateID != "" || got[0].Reason != ReasonUnreadableFrame {
		t.Fatalf("dead letters %+v", got)
	}
	e.post(f.chats[0], f.users[0], "after")
	testsupport.Eventually(t, "after handed off", func() bool { return len(f.rec.texts(f.chats[0])) == 2 })
	stop(t, s)
}
