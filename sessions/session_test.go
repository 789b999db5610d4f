package sessions

import (
	"bytes"
	"context"
	"errors"
	"fmt"
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

// chatFixture is a bot with users in private chats, each started (so each
// chat begins with my_chat_member and "/start" updates).
type chatFixture struct {
	e      *simEnv
	botID  string
	token  string
	users  []string
	chats  []string
	tokens *mapTokens
	rec    *recorder
}

func newFixture(t *testing.T, e *simEnv, nChats int, bot *sim.BotSettings) *chatFixture {
	t.Helper()
	f := &chatFixture{e: e, rec: newRecorder()}
	f.botID, f.token = e.createBot(bot)
	f.tokens = newTokens(f.botID, f.token)
	lanes := map[int]bool{}
	for i := 0; len(f.chats) < nChats; i++ {
		u := e.createUser(fmt.Sprintf("user %d", i))
		chat := e.startChat(u, f.botID)
		// Chats sharing a lane are handed off one after the other; tests that
		// hold one chat back want the others to move, so each gets its own
		// lane (with the default lane count). Skipped chats' updates are
		// handed off all the same.
		if l := laneOf(chat, DefaultLanes); !lanes[l] || nChats > DefaultLanes {
			lanes[l] = true
			f.users = append(f.users, u)
			f.chats = append(f.chats, chat)
		}
	}
	return f
}

func (f *chatFixture) config() Config {
	cfg := fastConfig(f.e, f.botID, f.tokens, f.rec)
	cfg.OnAcked = f.rec.onAcked
	return cfg
}

// postAll posts n messages "c<chat>-<i>" in every chat: one goroutine per
// chat (chats interleave), in order within a chat.
func (f *chatFixture) postAll(n int) {
	var wg sync.WaitGroup
	for ci := range f.chats {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range n {
				f.e.post(f.chats[ci], f.users[ci], fmt.Sprintf("c%d-%d", ci, i))
			}
		}()
	}
	wg.Wait()
}

// wantTexts checks every chat got "/start" then its n messages, in order.
func (f *chatFixture) wantTexts(t *testing.T, from, n int) {
	t.Helper()
	for ci, chat := range f.chats {
		got := f.rec.texts(chat)
		var want []string
		if from == 0 {
			want = append(want, "/start")
		}
		for i := from; i < from+n; i++ {
			want = append(want, fmt.Sprintf("c%d-%d", ci, i))
		}
		if strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("chat %d texts:\n got %v\nwant %v", ci, got, want)
		}
	}
}

// waitAllHandedOff waits until the recorder holds every update the simulator created.
func (f *chatFixture) waitAllHandedOff(t *testing.T) {
	t.Helper()
	testsupport.Eventually(t, "every created update handed off", func() bool {
		return int64(f.rec.total()) >= f.e.stats().UpdatesCreated
	})
}

// waitAcked waits until the simulator's cursor is at the bot's last update.
func (f *chatFixture) waitAcked(t *testing.T) {
	t.Helper()
	testsupport.Eventually(t, "the simulator's cursor at the last update", func() bool {
		v := f.e.bot(f.botID)
		return v.AckedUpdateID == v.LastUpdateID
	})
}

func TestOrderPerChatParallelAcrossChats(t *testing.T) {
	e := newSim(t, sim.Options{})
	f := newFixture(t, e, 6, nil)
	f.rec.delay = 3 * time.Millisecond
	reg := prometheus.NewRegistry()
	cfg := f.config()
	cfg.Metrics = NewMetrics(reg)
	s := startSession(t, cfg)
	testsupport.Eventually(t, "live", func() bool { return s.State() == StateLive })

	f.postAll(25)
	f.waitAllHandedOff(t)
	f.waitAcked(t)
	f.rec.check(t)
	f.wantTexts(t, 0, 25)
	if f.rec.maxActive < 2 {
		t.Errorf("at most %d handoffs ran at once; want chats in parallel", f.rec.maxActive)
	}
	if got := f.rec.lastAcked(); got != buko.UpdateID(e.bot(f.botID).LastUpdateID) {
		t.Errorf("last OnAcked %s, want %s", got, e.bot(f.botID).LastUpdateID)
	}
	stop(t, s)
	if s.State() != StateStopped {
		t.Errorf("state after Stop: %v", s.State())
	}
	created := float64(e.stats().UpdatesCreated)
	if got := testsupport.MetricValue(t, reg, "agentrunner_sessions_updates_received_total"); got < created {
		t.Errorf("updates_received_total %v < %v created", got, created)
	}
	if got := testsupport.MetricValue(t, reg, "agentrunner_sessions_handoff_duration_seconds"); got != created {
		t.Errorf("handoff histogram count %v, want %v", got, created)
	}
	if got := testsupport.MetricValue(t, reg, "agentrunner_sessions_acks_sent_total"); got < 1 {
		t.Errorf("acks_sent_total %v", got)
	}
	if got := testsupport.MetricValue(t, reg, "agentrunner_sessions_pending_updates"); got != 0 {
		t.Errorf("pending_updates %v after Stop, want 0", got)
	}
	if got := testsupport.MetricValue(t, reg, "agentrunner_sessions_sessions"); got != 0 {
		t.Errorf("sessions gauge %v after Stop, want 0", got)
	}
}

func TestAckWaitsForEveryLowerHandoff(t *testing.T) {
	e := newSim(t, sim.Options{})
	f := newFixture(t, e, 3, nil)
	s := startSession(t, f.config())
	f.waitAllHandedOff(t) // the /start updates
	f.waitAcked(t)
	before := e.bot(f.botID).AckedUpdateID

	f.rec.hold(f.chats[0])
	e.post(f.chats[0], f.users[0], "c0-0") // the lowest new id, held back
	held := buko.UpdateID(e.bot(f.botID).LastUpdateID)
	for i := range 5 {
		e.post(f.chats[1], f.users[1], fmt.Sprintf("c1-%d", i))
		e.post(f.chats[2], f.users[2], fmt.Sprintf("c2-%d", i))
	}
	testsupport.Eventually(t, "the other chats handed off", func() bool { return len(f.rec.texts(f.chats[2])) == 6 && len(f.rec.texts(f.chats[1])) == 6 })
	// Nothing at or above the held update may be acked while it is held.
	if got := f.rec.lastAcked(); !got.Less(held) {
		t.Fatalf("acked %s while %s was not handed off", got, held)
	}
	if got := e.bot(f.botID).AckedUpdateID; got != before {
		t.Fatalf("simulator cursor moved to %s while %s was held (was %s)", got, held, before)
	}
	f.rec.release(f.chats[0])
	f.waitAllHandedOff(t)
	f.waitAcked(t)
	f.rec.check(t)
	stop(t, s)
}

func TestBackPressureNeverDrops(t *testing.T) {
	e := newSim(t, sim.Options{})
	f := newFixture(t, e, 3, nil)
	reg := prometheus.NewRegistry()
	cfg := f.config()
	cfg.MaxPending = 4
	cfg.Lanes = 4
	cfg.Metrics = NewMetrics(reg)
	f.rec.delay = 2 * time.Millisecond
	for _, c := range f.chats {
		f.rec.hold(c)
	}
	s := startSession(t, cfg)
	f.postAll(20) // 66 updates; the server sends up to 100 unacked at once
	testsupport.Eventually(t, "reading paused", func() bool {
		return testsupport.MetricValue(t, reg, "agentrunner_sessions_backpressure_pauses_total") > 0
	})
	for _, c := range f.chats {
		f.rec.release(c)
	}
	f.waitAllHandedOff(t)
	f.waitAcked(t)
	f.rec.check(t)
	f.wantTexts(t, 0, 20)
	s.mu.Lock()
	peak := s.w.peak
	s.mu.Unlock()
	if peak > cfg.MaxPending {
		t.Errorf("held %d updates at once, MaxPending %d", peak, cfg.MaxPending)
	}
	stop(t, s)
}

func TestRedeliveryAfterDroppedSocketsAndDuplicates(t *testing.T) {
	e := newSim(t, sim.Options{GatewayAttemptsPerMinute: 100000})
	f := newFixture(t, e, 4, nil)
	reg := prometheus.NewRegistry()
	cfg := f.config()
	cfg.Metrics = NewMetrics(reg)
	f.rec.delay = time.Millisecond
	s := startSession(t, cfg)
	testsupport.Eventually(t, "live", func() bool { return s.State() == StateLive })
	e.chaos(sim.ChaosConfig{Seed: 7, DropConnectionRate: 0.05, DuplicateDeliveryRate: 0.2})
	f.postAll(40)
	f.waitAllHandedOff(t)
	e.chaos(sim.ChaosConfig{})
	f.waitAcked(t)
	f.rec.check(t)
	f.wantTexts(t, 0, 40)
	st := e.stats()
	if st.Chaos.DroppedConnection == 0 || st.Chaos.Duplicated == 0 {
		t.Errorf("chaos did nothing: %+v", st.Chaos)
	}
	if got := testsupport.MetricValue(t, reg, "agentrunner_sessions_reconnects_total"); got == 0 {
		t.Error("no reconnect counted")
	}
	if got := testsupport.MetricValue(t, reg, "agentrunner_sessions_duplicates_dropped_total"); got == 0 {
		t.Error("no duplicate dropped")
	}
	if st.MaxConcurrentGatewayPerBot != 1 {
		t.Errorf("max_concurrent_gateway_per_bot %d", st.MaxConcurrentGatewayPerBot)
	}
	stop(t, s)
}

func TestTokenRotationRereadsToken(t *testing.T) {
	e := newSim(t, sim.Options{})
	f := newFixture(t, e, 1, nil)
	var logs syncBuffer
	cfg := f.config()
	cfg.Logger = zerolog.New(&logs).Level(zerolog.DebugLevel)
	states := &stateLog{}
	cfg.OnState = states.on
	s := startSession(t, cfg)
	testsupport.Eventually(t, "live", func() bool { return s.State() == StateLive })
	f.waitAllHandedOff(t)

	newTok := e.rotate(f.botID) // the socket is closed with 4001
	f.tokens.set(f.botID, newTok)
	testsupport.Eventually(t, "a re-read of the token", func() bool { reads, inv := f.tokens.counts(); return reads >= 2 && inv >= 1 })
	testsupport.Eventually(t, "live again", func() bool { return s.State() == StateLive && states.has("backoff/token_revoked") })
	e.post(f.chats[0], f.users[0], "after rotation")
	f.waitAllHandedOff(t)
	f.waitAcked(t)
	f.rec.check(t)
	stop(t, s)
	for _, tok := range []string{f.token, newTok} {
		if strings.Contains(logs.String(), tok) {
			t.Fatal("a token appeared in the logs")
		}
	}
}

func TestRepeatedUnauthorizedGivesUp(t *testing.T) {
	for _, delivery := range []string{DeliveryGateway, DeliveryPolling} {
		t.Run(delivery, func(t *testing.T) {
			e := newSim(t, sim.Options{})
			botID, tok := e.createBot(nil)
			tokens := newTokens(botID, "bot_wrong_token_"+strings.Repeat("x", 20))
			var logs syncBuffer
			authFailed := make(chan struct{})
			cfg := fastConfig(e, botID, tokens, newRecorder())
			cfg.Delivery = delivery
			cfg.Logger = zerolog.New(&logs).Level(zerolog.DebugLevel)
			cfg.OnAuthFailed = func() { close(authFailed) }
			s := startSession(t, cfg)
			testsupport.Until(t, "OnAuthFailed", 60*time.Second, func() (bool, string) {
				select {
				case <-authFailed:
					return true, ""
				default:
					return false, fmt.Sprintf("state %v", s.State())
				}
			})
			if s.State() != StateAuthFailed {
				t.Errorf("state %v, want auth_failed", s.State())
			}
			reads, inv := tokens.counts()
			if inv < DefaultMaxAuthFailures || reads < DefaultMaxAuthFailures {
				t.Errorf("token reads %d, invalidations %d: want each 401 to re-read the token", reads, inv)
			}
			stop(t, s)
			if strings.Contains(logs.String(), tok) || strings.Contains(logs.String(), "bot_wrong_token") {
				t.Fatal("a token appeared in the logs")
			}
		})
	}
}

func TestConnectionLimitBacksOffUntilFree(t *testing.T) {
	e := newSim(t, sim.Options{GatewayAttemptsPerMinute: 100000})
	f := newFixture(t, e, 1, nil)
	raw, _, err := e.dialRaw(f.token)
	if err != nil {
		t.Fatal(err)
	}
	states := &stateLog{}
	cfg := f.config()
	cfg.OnState = states.on
	s := startSession(t, cfg)
	testsupport.Eventually(t, "backoff on the connection limit", func() bool { return states.has("backoff/connection_limit") })
	if s.State() == StateLive {
		t.Fatal("live while another socket holds the only slot")
	}
	raw.close()
	testsupport.Eventually(t, "live", func() bool { return s.State() == StateLive })
	f.waitAllHandedOff(t)
	f.waitAcked(t)
	if st := e.stats(); st.MaxConcurrentGatewayPerBot != 1 || st.GatewayRejectedLimit == 0 {
		t.Errorf("stats: max concurrent %d, rejected %d", st.MaxConcurrentGatewayPerBot, st.GatewayRejectedLimit)
	}
	stop(t, s)
}

func TestReplacedDoesNotFight(t *testing.T) {
	e := newSim(t, sim.Options{})
	f := newFixture(t, e, 1, &sim.BotSettings{ConnectionPolicy: sim.PolicyReplaceOldest})
	states := &stateLog{}
	cfg := f.config()
	cfg.OnState = states.on
	s := startSession(t, cfg)
	testsupport.Eventually(t, "live", func() bool { return s.State() == StateLive })
	f.waitAllHandedOff(t)

	raw, _, err := e.dialRaw(f.token) // replaces the session's socket (4009)
	if err != nil {
		t.Fatal(err)
	}
	testsupport.Eventually(t, "backoff after 4009", func() bool { return states.has("backoff/replaced") })
	if got := s.State(); got != StateBackoff {
		t.Fatalf("state %v right after being replaced, want backoff", got)
	}
	select {
	case code := <-raw.closed:
		t.Fatalf("the session took the bot back (close %d)", code)
	default:
	}
	raw.close()
	testsupport.Eventually(t, "the other socket gone", func() bool { return e.bot(f.botID).GatewayOpen == 0 })
	s.Reconnect() // skip the rest of the long wait
	testsupport.Eventually(t, "live again", func() bool { return s.State() == StateLive })
	if got := e.stats().GatewayReplaced; got != 1 {
		t.Errorf("gateway_replaced %d, want 1", got)
	}
	stop(t, s)
}

func TestRateLimitedUpgradeHonoursRetryAfter(t *testing.T) {
	clock := &fakeClock{t: time.Date(2030, 1, 1, 0, 0, 10, 0, time.UTC)}
	e := newSim(t, sim.Options{GatewayAttemptsPerMinute: 2, Now: clock.now})
	// Two connections allowed: the server may still count the socket a
	// Reconnect is closing when the next upgrade arrives, and a 409 for it
	// would use up one of the two attempts this test counts.
	f := newFixture(t, e, 1, &sim.BotSettings{GatewayConnectionLimit: 2})
	states := &stateLog{}
	cfg := f.config()
	cfg.OnState = states.on
	s := startSession(t, cfg)
	testsupport.Eventually(t, "live", func() bool { return s.State() == StateLive })
	s.Reconnect() // attempt 2 of 2 this minute
	testsupport.Eventually(t, "second socket", func() bool { return e.stats().GatewayConnections == 2 && s.State() == StateLive })
	s.Reconnect() // attempt 3: 429 with retry_after until the minute ends
	testsupport.Eventually(t, "backoff on 429", func() bool { return states.has("backoff/rate_limited") })
	time.Sleep(50 * time.Millisecond) // far shorter than retry_after (≥ 1 s): must still wait
	if s.State() != StateBackoff {
		t.Fatalf("state %v during retry_after", s.State())
	}
	if got := e.stats().RateLimited; got != 1 {
		t.Fatalf("rate_limited %d: the session retried inside retry_after", got)
	}
	clock.add(time.Minute)
	s.Reconnect()
	testsupport.Eventually(t, "live after the window", func() bool { return s.State() == StateLive })
	stop(t, s)
}

func TestPollingEndToEnd(t *testing.T) {
	e := newSim(t, sim.Options{})
	f := newFixture(t, e, 3, nil)
	cfg := f.config()
	cfg.Delivery = DeliveryPolling
	f.rec.delay = time.Millisecond
	s := startSession(t, cfg)
	testsupport.Eventually(t, "polling", func() bool { return s.State() == StatePolling })
	f.postAll(15)
	f.waitAllHandedOff(t)
	stop(t, s) // confirms the last offset
	v := e.bot(f.botID)
	if v.AckedUpdateID != v.LastUpdateID {
		t.Errorf("cursor %s after Stop, want %s", v.AckedUpdateID, v.LastUpdateID)
	}
	f.rec.check(t)
	f.wantTexts(t, 0, 15)
	if got := f.rec.lastAcked(); got != buko.UpdateID(v.LastUpdateID) {
		t.Errorf("last OnAcked %s, want %s", got, v.LastUpdateID)
	}
	if e.stats().GatewayConnections != 0 {
		t.Error("a polling session opened a Gateway socket")
	}
}

func TestPollingGatewayActive(t *testing.T) {
	e := newSim(t, sim.Options{})
	f := newFixture(t, e, 1, nil)
	raw, _, err := e.dialRaw(f.token)
	if err != nil {
		t.Fatal(err)
	}
	states := &stateLog{}
	cfg := f.config()
	cfg.Delivery = DeliveryPolling
	cfg.OnState = states.on
	s := startSession(t, cfg)
	testsupport.Eventually(t, "backoff on GATEWAY_ACTIVE", func() bool { return states.has("backoff/gateway_active") })
	raw.close()
	e.post(f.chats[0], f.users[0], "c0-0")
	f.waitAllHandedOff(t)
	stop(t, s)
	f.wantTexts(t, 0, 1)
	f.rec.check(t)
}

func TestStopDrainsAndAcks(t *testing.T) {
	e := newSim(t, sim.Options{})
	f := newFixture(t, e, 2, nil)
	s := startSession(t, f.config())
	f.waitAllHandedOff(t)
	f.waitAcked(t)

	f.rec.hold(f.chats[0])
	e.post(f.chats[0], f.users[0], "c0-0")
	e.post(f.chats[1], f.users[1], "c1-0")
	testsupport.Eventually(t, "both in flight", func() bool {
		f.rec.mu.Lock()
		active := f.rec.active
		f.rec.mu.Unlock()
		return active == 1 && len(f.rec.texts(f.chats[1])) == 2
	})
	stopped := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		stopped <- s.Stop(ctx)
	}()
	testsupport.Eventually(t, "draining", func() bool { return s.State() == StateDraining })
	drainedTo := buko.UpdateID(e.bot(f.botID).LastUpdateID)
	e.post(f.chats[1], f.users[1], "c1-1") // arrives during the drain: not taken
	f.rec.release(f.chats[0])
	if err := <-stopped; err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if v := e.bot(f.botID); buko.UpdateID(v.AckedUpdateID) != drainedTo {
		t.Errorf("cursor %s after drain, want %s", v.AckedUpdateID, drainedTo)
	}
	if got := f.rec.texts(f.chats[1]); len(got) != 2 {
		t.Errorf("chat 1 got %v: an update arriving during the drain was handed off", got)
	}
	noSessionGoroutines(t)

	// The next owner gets exactly what was not acked.
	s2 := startSession(t, f.config())
	testsupport.Eventually(t, "the leftover update", func() bool { return len(f.rec.texts(f.chats[1])) == 3 })
	f.waitAcked(t)
	stop(t, s2)
	f.rec.check(t)
}

func TestStopBoundedByContext(t *testing.T) {
	e := newSim(t, sim.Options{})
	f := newFixture(t, e, 1, nil)
	f.rec.hold(f.chats[0])
	s := startSession(t, f.config())
	testsupport.Eventually(t, "a handoff in flight", func() bool {
		f.rec.mu.Lock()
		defer f.rec.mu.Unlock()
		return f.rec.active == 1
	})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	err := s.Stop(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Stop: %v, want deadline exceeded", err)
	}
	if s.State() != StateStopped {
		t.Errorf("state %v", s.State())
	}
	noSessionGoroutines(t)
	if v := e.bot(f.botID); v.AckedUpdateID != "" {
		t.Errorf("cursor %s, want nothing acked", v.AckedUpdateID)
	}
}

func TestStartContextEndsHard(t *testing.T) {
	e := newSim(t, sim.Options{})
	f := newFixture(t, e, 1, nil)
	ctx, cancel := context.WithCancel(context.Background())
	states := &stateLog{}
	cfg := f.config()
	cfg.OnState = states.on
	s, err := Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	testsupport.Eventually(t, "live", func() bool { return s.State() == StateLive })
	cancel()
	testsupport.Eventually(t, "stopped", func() bool { return s.State() == StateStopped })
	noSessionGoroutines(t)
	if err := s.Stop(context.Background()); err != nil {
		t.Errorf("Stop after the context ended: %v", err)
	}
	testsupport.Eventually(t, "socket closed at the simulator", func() bool { return e.stats().GatewayOpen == 0 })
}

type permErr struct{}

func (permErr) Error() string   { return "workflows: malformed update" }
func (permErr) Permanent() bool { return true }

func TestHandoffRetriesAndPermanentErrors(t *testing.T) {
	e := newSim(t, sim.Options{})
	f := newFixture(t, e, 1, nil)
	reg := prometheus.NewRegistry()
	cfg := f.config()
	cfg.Metrics = NewMetrics(reg)
	sink := &memSink{}
	cfg.DeadLetters = sink
	f.rec.fail = func(u buko.Update, attempt int) error {
		if u.Message == nil {
			return nil
		}
		switch u.Message.Text {
		case "flaky":
			if attempt < 3 {
				return errors.New("temporal unavailable")
			}
		case "poison":
			return fmt.Errorf("wrapped: %w", permErr{})
		case "poison2":
			return permanent.Mark(errors.New("bad"))
		}
		return nil
	}
	s := startSession(t, cfg)
	for _, txt := range []string{"flaky", "poison", "poison2", "fine"} {
		e.post(f.chats[0], f.users[0], txt)
	}
	testsupport.Eventually(t, "fine handed off", func() bool { return len(f.rec.texts(f.chats[0])) == 3 })
	f.waitAcked(t)
	if got := f.rec.texts(f.chats[0]); strings.Join(got, ",") != "/start,flaky,fine" {
		t.Errorf("texts %v", got)
	}
	if got := testsupport.MetricValue(t, reg, "agentrunner_sessions_handoff_errors_total", "kind", "permanent"); got != 2 {
		t.Errorf("permanent errors %v, want 2", got)
	}
	if got := testsupport.MetricValue(t, reg, "agentrunner_sessions_handoff_errors_total", "kind", "retryable"); got != 2 {
		t.Errorf("retryable errors %v, want 2", got)
	}
	stop(t, s)
	// The permanent failures were kept as dead letters before they were acked.
	if got := sink.all(); len(got) != 2 || got[0].Reason != ReasonHandoffRefused || got[1].Reason != ReasonHandoffRefused {
		t.Errorf("dead letters %+v", got)
	}
	if got := testsupport.MetricValue(t, reg, "agentrunner_sessions_dead_letters_total", "reason", ReasonHandoffRefused); got != 2 {
		t.Errorf("dead letters counted %v, want 2", got)
	}
}

func TestChaosLosesNothing(t *testing.T) {
	for _, tc := range []struct {
		delivery string
		chaos    sim.ChaosConfig
	}{
		{DeliveryGateway, sim.ChaosConfig{Seed: 42, DropConnectionRate: 0.05, DuplicateDeliveryRate: 0.1}},
		{DeliveryPolling, sim.ChaosConfig{Seed: 43, Rest5xxRate: 0.1, Rest429Rate: 0.1, ResponseLostRate: 0.1}},
	} {
		t.Run(tc.delivery, func(t *testing.T) {
			e := newSim(t, sim.Options{GatewayAttemptsPerMinute: 100000})
			f := newFixture(t, e, 5, nil)
			cfg := f.config()
			cfg.Delivery = tc.delivery
			f.rec.fail = func(u buko.Update, attempt int) error {
				if attempt == 1 && len(u.UpdateID)%2 == 0 && u.UpdateID[len(u.UpdateID)-1]%3 == 0 {
					return errors.New("transient")
				}
				return nil
			}
			s := startSession(t, cfg)
			e.chaos(tc.chaos)
			f.postAll(30)
			f.waitAllHandedOff(t)
			e.chaos(sim.ChaosConfig{})
			stop(t, s)
			f.rec.check(t)
			f.wantTexts(t, 0, 30)
			st := e.stats()
			if st.MaxConcurrentGatewayPerBot > 1 {
				t.Errorf("max_concurrent_gateway_per_bot %d", st.MaxConcurrentGatewayPerBot)
			}
			t.Logf("chaos: %+v", st.Chaos)
		})
	}
}

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
