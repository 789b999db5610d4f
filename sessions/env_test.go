package sessions

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/rs/zerolog"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/buko/sim"
	"buko.app/agentrunner/internal/testsupport"
)

// ---- the simulator ----

type simEnv struct {
	t      testing.TB
	sim    *sim.Server
	srv    *httptest.Server
	client *buko.Client
}

func newSim(t testing.TB, opts sim.Options) *simEnv {
	t.Helper()
	s := sim.New(opts)
	srv := httptest.NewServer(s)
	t.Cleanup(func() {
		s.Close()
		srv.Close()
	})
	return &simEnv{t: t, sim: s, srv: srv, client: buko.NewClient(srv.URL, nil)}
}

// ctl is the simulator's control API; must fails the test on an error.
func (e *simEnv) ctl() *sim.Control {
	return sim.NewControl(e.srv.URL, sim.ControlOptions{HTTPClient: http.DefaultClient})
}

func (e *simEnv) must(err error) {
	e.t.Helper()
	if err != nil {
		e.t.Fatal(err)
	}
}

// createBot returns a new bot's id and token. extra (if not nil) sets more
// fields of POST /sim/bots.
func (e *simEnv) createBot(extra *sim.BotSettings) (string, string) {
	e.t.Helper()
	var in sim.BotSettings
	if extra != nil {
		in = *extra
	}
	out, err := e.ctl().CreateBot(context.Background(), in)
	e.must(err)
	return out.BotID, out.Token
}

func (e *simEnv) createUser(name string) string {
	e.t.Helper()
	out, err := e.ctl().CreateUser(context.Background(), name, "")
	e.must(err)
	return out.UserID
}

// startChat runs the /start flow; the bot gets my_chat_member and "/start".
func (e *simEnv) startChat(userID, botID string) string {
	e.t.Helper()
	out, err := e.ctl().OpenPrivateChat(context.Background(), userID, botID)
	e.must(err)
	return out.ChatID
}

func (e *simEnv) post(chatID, userID, text string) {
	e.t.Helper()
	_, err := e.ctl().Say(context.Background(), chatID, userID, text)
	e.must(err)
}

func (e *simEnv) rotate(botID string) string {
	e.t.Helper()
	tok, err := e.ctl().RotateToken(context.Background(), botID)
	e.must(err)
	return tok
}

func (e *simEnv) chaos(cfg sim.ChaosConfig) {
	e.t.Helper()
	_, err := e.ctl().SetChaos(context.Background(), cfg)
	e.must(err)
}

func (e *simEnv) stats() sim.Stats {
	e.t.Helper()
	st, err := e.ctl().Stats(context.Background())
	e.must(err)
	return st
}

func (e *simEnv) bot(botID string) sim.BotView {
	e.t.Helper()
	v, err := e.ctl().Bot(context.Background(), botID)
	e.must(err)
	return v
}

// rawConn holds a Gateway socket for a bot outside any session. It reads in
// the background (so close frames are handled) and records its close code.
type rawConn struct {
	c      *websocket.Conn
	closed chan websocket.StatusCode
}

func (e *simEnv) dialRaw(token string) (*rawConn, *http.Response, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, e.client.GatewayURL(), &websocket.DialOptions{
		HTTPHeader: buko.AuthHeader(testCred(token)),
	})
	if err != nil {
		return nil, resp, err
	}
	r := &rawConn{c: c, closed: make(chan websocket.StatusCode, 1)}
	go func() {
		for {
			_, data, err := c.Read(context.Background())
			if err != nil {
				r.closed <- websocket.CloseStatus(err)
				return
			}
			if f, err := buko.DecodeFrame(data); err == nil && f.Type == buko.FramePing {
				_ = c.Write(context.Background(), websocket.MessageText, buko.PongFrame())
			}
		}
	}()
	e.t.Cleanup(func() { r.close() })
	return r, resp, nil
}

func (r *rawConn) close() {
	_ = r.c.Close(websocket.StatusNormalClosure, "")
	_ = r.c.CloseNow()
}

// ---- tokens ----

type testCred string

func (c testCred) Reveal() string { return string(c) }

// mapTokens is a TokenSource over a map standing in for the vault, with a
// cache in front of it (as the vault token cache): a changed token is seen
// only after Invalidate.
type mapTokens struct {
	mu            sync.Mutex
	store         map[string]string
	cache         map[string]string
	reads         int
	invalidations int
}

func newTokens(botID, token string) *mapTokens {
	return &mapTokens{store: map[string]string{botID: token}, cache: map[string]string{}}
}

func (m *mapTokens) Token(_ context.Context, botID string) (buko.Credential, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if tok, ok := m.cache[botID]; ok {
		return testCred(tok), nil
	}
	tok, ok := m.store[botID]
	if !ok {
		return nil, errors.New("no such bot")
	}
	m.reads++
	m.cache[botID] = tok
	return testCred(tok), nil
}

func (m *mapTokens) Invalidate(botID string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.invalidations++
	delete(m.cache, botID)
}

func (m *mapTokens) set(botID, token string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.store[botID] = token
}

func (m *mapTokens) counts() (reads, invalidations int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.reads, m.invalidations
}

// ---- the recording handoff ----

type event struct {
	acked bool // an OnAcked call; otherwise a completed handoff
	id    buko.UpdateID
}

// recorder is an in-memory Handoff: it records every completed handoff in
// order, per chat and in one event log shared with OnAcked, can hold chats
// back (gates) and can fail some attempts.
type recorder struct {
	mu        sync.Mutex
	events    []event
	count     map[buko.UpdateID]int
	byChat    map[string][]buko.Update
	gates     map[string]chan struct{}
	entered   map[buko.UpdateID]bool
	active    int
	maxActive int
	delay     time.Duration
	fail      func(u buko.Update, attempt int) error
	attempts  map[buko.UpdateID]int
}

func newRecorder() *recorder {
	return &recorder{
		count:    map[buko.UpdateID]int{},
		byChat:   map[string][]buko.Update{},
		gates:    map[string]chan struct{}{},
		entered:  map[buko.UpdateID]bool{},
		attempts: map[buko.UpdateID]int{},
	}
}

// hold makes handoffs of chatID wait until release.
func (r *recorder) hold(chatID string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.gates[chatID] = make(chan struct{})
}

func (r *recorder) release(chatID string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if g, ok := r.gates[chatID]; ok {
		close(g)
		delete(r.gates, chatID)
	}
}

func (r *recorder) Handoff(ctx context.Context, botID string, u buko.Update) error {
	if botID == "" {
		return errors.New("no bot id")
	}
	r.mu.Lock()
	r.entered[u.UpdateID] = true
	r.attempts[u.UpdateID]++
	attempt := r.attempts[u.UpdateID]
	gate := r.gates[u.ChatID()]
	fail := r.fail
	delay := r.delay
	r.active++
	r.maxActive = max(r.maxActive, r.active)
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		r.active--
		r.mu.Unlock()
	}()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if fail != nil {
		if err := fail(u, attempt); err != nil {
			return err
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.count[u.UpdateID]++
	r.byChat[u.ChatID()] = append(r.byChat[u.ChatID()], u)
	r.events = append(r.events, event{id: u.UpdateID})
	return nil
}

func (r *recorder) onAcked(id buko.UpdateID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, event{acked: true, id: id})
}

func (r *recorder) total() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.count)
}

func (r *recorder) lastAcked() buko.UpdateID {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := len(r.events) - 1; i >= 0; i-- {
		if r.events[i].acked {
			return r.events[i].id
		}
	}
	return ""
}

// texts returns the texts handed off for chatID, in order.
func (r *recorder) texts(chatID string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, u := range r.byChat[chatID] {
		if u.Message != nil {
			out = append(out, u.Message.Text)
		}
	}
	return out
}

// check verifies the recorder's invariants: every update handed off exactly
// once; within a chat, ids strictly increasing; acks strictly increasing, and
// each ack only after every handed-off id at or below it had completed.
func (r *recorder) check(t testing.TB) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for id, n := range r.count {
		if n != 1 {
			t.Errorf("update %s handed off %d times", id, n)
		}
	}
	for chat, us := range r.byChat {
		for i := 1; i < len(us); i++ {
			if !us[i-1].UpdateID.Less(us[i].UpdateID) {
				t.Errorf("chat %s: update %s handed off after %s", chat, us[i].UpdateID, us[i-1].UpdateID)
			}
		}
	}
	done := map[buko.UpdateID]bool{}
	var last buko.UpdateID
	for _, ev := range r.events {
		if !ev.acked {
			done[ev.id] = true
			continue
		}
		if !last.Less(ev.id) {
			t.Errorf("ack %s after ack %s", ev.id, last)
		}
		last = ev.id
		for id := range r.count {
			if !ev.id.Less(id) && !done[id] {
				t.Errorf("ack %s sent before update %s was handed off", ev.id, id)
			}
		}
	}
}

// ---- sessions ----

// testLogger logs to the test at info level and above.
func testLogger(t testing.TB) zerolog.Logger {
	return zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.InfoLevel).With().Timestamp().Logger()
}

// fastConfig is a Config with test-sized timings.
func fastConfig(e *simEnv, botID string, tokens TokenSource, h Handoff) Config {
	return Config{
		BotID:           botID,
		Client:          e.client,
		Tokens:          tokens,
		Handoff:         h,
		Logger:          testLogger(e.t),
		BackoffBase:     20 * time.Millisecond,
		BackoffMax:      300 * time.Millisecond,
		ReplacedBackoff: 30 * time.Second,
		StableAfter:     time.Second,
		PollTimeout:     time.Second,
		GatewayRetry:    time.Second,
	}
}

// stateLog records OnState calls.
type stateLog struct {
	mu  sync.Mutex
	all []string
}

func (l *stateLog) on(st State, cause string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.all = append(l.all, st.String()+"/"+cause)
}

func (l *stateLog) has(s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Contains(l.all, s)
}

func (l *stateLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.all, " ")
}

func startSession(t testing.TB, cfg Config) *Session {
	t.Helper()
	s, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = s.Stop(ctx)
		noSessionGoroutines(t)
	})
	return s
}

func stop(t testing.TB, s *Session) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := s.Stop(ctx); err != nil {
		t.Fatalf("Stop: %v", err)
	}
}

// noSessionGoroutines waits until no goroutine runs this package's code.
func noSessionGoroutines(t testing.TB) {
	t.Helper()
	var dump string
	ok := func() bool {
		buf := make([]byte, 1<<20)
		n := runtime.Stack(buf, true)
		dump = ""
		for _, g := range strings.Split(string(buf[:n]), "\n\n") {
			if strings.Contains(g, "agentrunner/sessions.(*Session)") || strings.Contains(g, "agentrunner/sessions.(*gwConn)") {
				dump += g + "\n\n"
			}
		}
		return dump == ""
	}
	testsupport.Until(t, "no session goroutines", 30*time.Second, func() (bool, string) {
		return ok(), "session goroutines left behind:\n" + dump
	})
}
