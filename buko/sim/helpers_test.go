package sim_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/buko/sim"
	"buko.app/agentrunner/internal/testsupport"
)

// wait is the generous deadline of every await in these tests.
const wait = 15 * time.Second

// token is a bot token as a buko.Credential.
type token string

func (t token) Reveal() string { return string(t) }

// fakeClock drives quota windows.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock(t time.Time) *fakeClock { return &fakeClock{now: t} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	c.now = t
	c.mu.Unlock()
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// env is a simulator on a real loopback listener, with a Bot API client.
type env struct {
	t     testing.TB
	sim   *sim.Server
	srv   *httptest.Server
	api   *buko.Client
	wsURL string
	admin string
	sc    *sim.Control // the control API

	mu    sync.Mutex
	botOf map[token]string // token → bot id, for waiting on socket counts
}

func newEnv(t testing.TB, opts sim.Options) *env {
	t.Helper()
	s := sim.New(opts)
	srv := httptest.NewServer(s)
	e := &env{t: t, sim: s, srv: srv, admin: opts.AdminToken, botOf: make(map[token]string)}
	e.api = buko.NewClient(srv.URL, srv.Client())
	e.wsURL = e.api.GatewayURL()
	e.sc = sim.NewControl(srv.URL, sim.ControlOptions{AdminToken: opts.AdminToken, HTTPClient: srv.Client()})
	t.Cleanup(func() {
		s.Close()
		srv.Close()
	})
	return e
}

func ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), wait)
	t.Cleanup(cancel)
	return c
}

func ctxWithTimeout() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), wait)
}

// ctl sends one control-API request through the typed client's Do (for
// the tests of the API's own validation, which send what the typed methods
// cannot) and returns the HTTP status; out (if not nil) receives a 200's answer.
func (e *env) ctl(method, path string, body, out any) int {
	e.t.Helper()
	err := e.sc.Do(ctx(e.t), method, path, body, out)
	var ce *sim.ControlError
	switch {
	case err == nil:
		return http.StatusOK
	case errors.As(err, &ce):
		return ce.Status
	}
	e.t.Fatal(err)
	return 0
}

// must fails the test on a control-API error.
func (e *env) must(err error) {
	e.t.Helper()
	if err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) bot(s sim.BotSettings) (string, token) {
	e.t.Helper()
	out, err := e.sc.CreateBot(ctx(e.t), s)
	e.must(err)
	if out.BotID == "" || !strings.HasPrefix(out.Token, "bot_") {
		e.t.Fatalf("POST /sim/bots: unexpected answer %+v", out.BotID)
	}
	e.mu.Lock()
	e.botOf[token(out.Token)] = out.BotID
	e.mu.Unlock()
	return out.BotID, token(out.Token)
}

func (e *env) user(name string) string {
	e.t.Helper()
	out, err := e.sc.CreateUser(ctx(e.t), name, "")
	e.must(err)
	return out.UserID
}

func (e *env) start(userID, botID string) string {
	e.t.Helper()
	out, err := e.sc.OpenPrivateChat(ctx(e.t), userID, botID)
	e.must(err)
	return out.ChatID
}

func (e *env) group(title string, userIDs, botIDs []string) string {
	e.t.Helper()
	id, err := e.sc.CreateGroup(ctx(e.t), title, userIDs, botIDs)
	e.must(err)
	return id
}

func (e *env) say(chatID, userID, text string, replyTo ...string) string {
	e.t.Helper()
	p := sim.Post{UserID: userID, Text: text}
	if len(replyTo) > 0 {
		p.ReplyToMessageID = replyTo[0]
	}
	id, err := e.sc.PostMessage(ctx(e.t), chatID, p)
	e.must(err)
	return id
}

func (e *env) stats() sim.Stats {
	e.t.Helper()
	st, err := e.sc.Stats(ctx(e.t))
	e.must(err)
	return st
}

// poll drains the bot's pending updates with getUpdates (timeout 0) and
// confirms them.
func (e *env) poll(tok token) []buko.Update {
	e.t.Helper()
	ups, err := e.api.GetUpdates(ctx(e.t), tok, buko.GetUpdatesParams{})
	if err != nil {
		e.t.Fatalf("getUpdates: %v", err)
	}
	if len(ups) > 0 {
		if _, err := e.api.GetUpdates(ctx(e.t), tok, buko.GetUpdatesParams{Offset: ups[len(ups)-1].UpdateID.Next()}); err != nil {
			e.t.Fatalf("getUpdates (confirm): %v", err)
		}
	}
	return ups
}

// rawCall posts to /bot/<method> with any body and returns status, headers
// and the decoded envelope.
func (e *env) rawCall(tok token, method, contentType string, body []byte) (int, http.Header, buko.Envelope) {
	e.t.Helper()
	req, err := http.NewRequestWithContext(ctx(e.t), "POST", e.srv.URL+"/bot/"+method, bytes.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bot "+string(tok))
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		e.t.Fatalf("POST /bot/%s: %v", method, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	env, err := buko.DecodeEnvelope(data)
	if err != nil {
		e.t.Fatalf("POST /bot/%s: HTTP %d, body %q: %v", method, resp.StatusCode, data, err)
	}
	return resp.StatusCode, resp.Header, env
}

// wantCode fails unless err is a *buko.Error with the given status and code.
func wantCode(t testing.TB, err error, status int, code string) *buko.Error {
	t.Helper()
	var ae *buko.Error
	if !errors.As(err, &ae) {
		t.Fatalf("want HTTP %d %s, got %v", status, code, err)
	}
	if ae.Status != status || ae.Code != code {
		t.Fatalf("want HTTP %d %s, got HTTP %d %s (%s)", status, code, ae.Status, ae.Code, ae.Description)
	}
	return ae
}

// wsClient is a test Gateway client: a background reader feeds frames into
// a channel so the test can wait with deadlines without closing the socket.
type wsClient struct {
	t      testing.TB
	e      *env
	botID  string
	c      *websocket.Conn
	frames chan buko.Frame
	done   chan struct{}
	err    error // the read error that ended the socket, set before done closes
}

// dial opens a Gateway socket; it returns the HTTP answer when the upgrade
// is refused.
func (e *env) dial(tok token) (*wsClient, *http.Response, error) {
	e.t.Helper()
	dctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	c, resp, err := websocket.Dial(dctx, e.wsURL, &websocket.DialOptions{HTTPHeader: buko.AuthHeader(tok), HTTPClient: e.srv.Client()})
	if err != nil {
		return nil, resp, err
	}
	e.mu.Lock()
	botID := e.botOf[tok]
	e.mu.Unlock()
	w := &wsClient{t: e.t, e: e, botID: botID, c: c, frames: make(chan buko.Frame, 4096), done: make(chan struct{})}
	go w.readLoop()
	e.t.Cleanup(func() {
		_ = c.CloseNow()
		<-w.done
	})
	return w, resp, nil
}

func (e *env) connect(tok token) *wsClient {
	e.t.Helper()
	w, resp, err := e.dial(tok)
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		e.t.Fatalf("dial gateway: HTTP %d: %v", status, err)
	}
	return w
}

func (w *wsClient) readLoop() {
	defer close(w.done)
	for {
		typ, data, err := w.c.Read(context.Background())
		if err != nil {
			w.err = err
			return
		}
		if typ != websocket.MessageText {
			w.t.Errorf("server sent a binary frame")
			continue
		}
		f, err := buko.DecodeFrame(data)
		if err != nil {
			w.t.Errorf("server sent a bad frame %q: %v", data, err)
			continue
		}
		w.frames <- f
	}
}

// next returns the next frame.
func (w *wsClient) next() buko.Frame {
	w.t.Helper()
	timeout := time.NewTimer(testsupport.Timeout(wait))
	defer timeout.Stop()
	select {
	case f := <-w.frames:
		return f
	case <-w.done:
		select {
		case f := <-w.frames:
			return f
		default:
		}
		w.t.Fatalf("socket closed while waiting for a frame: %v", w.err)
	case <-timeout.C:
		w.t.Fatalf("no frame within %v", testsupport.Timeout(wait))
	}
	return buko.Frame{}
}

// update returns the next update, answering pings on the way.
func (w *wsClient) update() buko.Update {
	w.t.Helper()
	for {
		f := w.next()
		switch f.Type {
		case buko.FrameUpdate:
			return *f.Update
		case buko.FramePing:
			w.send(buko.PongFrame())
		}
	}
}

func (w *wsClient) updates(n int) []buko.Update {
	w.t.Helper()
	out := make([]buko.Update, 0, n)
	for len(out) < n {
		out = append(out, w.update())
	}
	return out
}

// quiet reports whether no update frame arrives within d. It is only used
// to show that something does NOT happen, so a slow machine cannot fail it.
func (w *wsClient) quiet(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case f := <-w.frames:
			if f.Type == buko.FrameUpdate {
				return false
			}
		case <-t.C:
			return true
		case <-w.done:
			return true
		}
	}
}

func (w *wsClient) send(frame []byte) {
	w.t.Helper()
	c, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := w.c.Write(c, websocket.MessageText, frame); err != nil {
		w.t.Fatalf("write frame: %v", err)
	}
}

func (w *wsClient) ack(id buko.UpdateID) { w.t.Helper(); w.send(buko.AckFrame(id)) }

// closed waits for the server to end the socket and returns its close code.
func (w *wsClient) closed() websocket.StatusCode {
	w.t.Helper()
	timeout := time.NewTimer(testsupport.Timeout(wait)) // for the close, whatever frames come first
	defer timeout.Stop()
	for {
		select {
		case <-w.frames:
			continue
		case <-w.done:
			return websocket.CloseStatus(w.err)
		case <-timeout.C:
			w.t.Fatalf("socket not closed within %v", testsupport.Timeout(wait))
		}
	}
}

// close ends the socket from the client side, waits for the reader, and
// then until the server no longer counts the socket as open (it notices a
// client's close a moment after the client, as a real server would).
func (w *wsClient) close() {
	w.t.Helper()
	before := -1
	if w.botID != "" {
		before = w.e.openSockets(w.botID)
	}
	_ = w.c.Close(websocket.StatusNormalClosure, "bye")
	<-w.done
	if before > 0 {
		testsupport.Within(w.t, "the server to see the socket closed", wait, func() bool { return w.e.openSockets(w.botID) < before })
	}
}

func (e *env) openSockets(botID string) int {
	e.t.Helper()
	v, err := e.sc.Bot(ctx(e.t), botID)
	e.must(err)
	return v.GatewayOpen
}

func ids(ups []buko.Update) []buko.UpdateID {
	out := make([]buko.UpdateID, len(ups))
	for i, u := range ups {
		out[i] = u.UpdateID
	}
	return out
}

func texts(ups []buko.Update) []string {
	var out []string
	for _, u := range ups {
		if u.Message != nil {
			out = append(out, u.Message.Text)
		}
	}
	return out
}

// strictlyIncreasing fails unless ids are canonical and strictly increasing.
func strictlyIncreasing(t testing.TB, list []buko.UpdateID) {
	t.Helper()
	for i, id := range list {
		if !id.Valid() {
			t.Fatalf("update_id %q is not canonical", id)
		}
		if i > 0 && !list[i-1].Less(id) {
			t.Fatalf("update ids not strictly increasing: %v", list)
		}
	}
}

// errOf is the error of a call whose value the test does not need.
func errOf[T any](_ T, err error) error { return err }
