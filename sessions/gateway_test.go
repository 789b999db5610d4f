package sessions

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/buko/sim"
	"buko.app/agentrunner/internal/testsupport"
)

// fakeGateway is a hand-driven Gateway for the cases the simulator does not
// produce: silence, garbage, unknown frame types and close codes.
type fakeGateway struct {
	srv   *httptest.Server
	conns chan *fakeConn
	n     atomic.Int32
}

type fakeConn struct {
	c      *websocket.Conn
	frames chan buko.Frame // frames the client sent
	done   chan struct{}
}

func newFakeGateway(t *testing.T) *fakeGateway {
	g := &fakeGateway{conns: make(chan *fakeConn, 16)}
	var wg sync.WaitGroup
	g.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bot bot_fake_token" {
			http.Error(w, `{"ok":false,"error_code":401,"code":"UNAUTHORIZED"}`, http.StatusUnauthorized)
			return
		}
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		wg.Add(1)
		defer wg.Done()
		g.n.Add(1)
		fc := &fakeConn{c: c, frames: make(chan buko.Frame, 64), done: make(chan struct{})}
		g.conns <- fc
		defer close(fc.done)
		for {
			_, data, err := c.Read(context.Background())
			if err != nil {
				return
			}
			if f, err := buko.DecodeFrame(data); err == nil {
				select {
				case fc.frames <- f:
				default:
				}
			}
		}
	}))
	t.Cleanup(func() {
		g.srv.CloseClientConnections()
		g.srv.Close()
		wg.Wait()
	})
	return g
}

func (g *fakeGateway) next(t *testing.T) *fakeConn {
	t.Helper()
	return testsupport.Receive(t, "a Gateway connection", g.conns)
}

func (fc *fakeConn) send(t *testing.T, typ websocket.MessageType, data string) {
	t.Helper()
	if err := fc.c.Write(context.Background(), typ, []byte(data)); err != nil {
		t.Fatal(err)
	}
}

// expect waits for a client frame of type typ (skipping others).
func (fc *fakeConn) expect(t *testing.T, typ string) buko.Frame {
	t.Helper()
	for {
		if f := testsupport.Receive(t, fmt.Sprintf("a %q frame from the client", typ), fc.frames); f.Type == typ {
			return f
		}
	}
}

func fakeConfig(t *testing.T, g *fakeGateway, rec *recorder) Config {
	return Config{
		BotID:          "bot_1",
		Client:         buko.NewClient(g.srv.URL, nil),
		Tokens:         newTokens("bot_1", "bot_fake_token"),
		Handoff:        rec,
		Logger:         testLogger(t),
		BackoffBase:    10 * time.Millisecond,
		BackoffMax:     50 * time.Millisecond,
		PingInterval:   150 * time.Millisecond,
		SilenceTimeout: 600 * time.Millisecond,
	}
}

func TestSilenceIsDeath(t *testing.T) {
	g := newFakeGateway(t)
	states := &stateLog{}
	cfg := fakeConfig(t, g, newRecorder())
	cfg.OnState = states.on
	s := startSession(t, cfg)
	fc := g.next(t)
	fc.expect(t, buko.FramePing) // the client pings into the silence
	<-fc.done                    // then gives the socket up
	testsupport.Eventually(t, "backoff/silence", func() bool { return states.has("backoff/silence") })
	g.next(t) // and dials again
	stop(t, s)
}

func TestServerTrafficKeepsSocketAlive(t *testing.T) {
	g := newFakeGateway(t)
	states := &stateLog{}
	cfg := fakeConfig(t, g, newRecorder())
	cfg.OnState = states.on
	s := startSession(t, cfg)
	fc := g.next(t)
	for range 8 { // 8 × 100 ms > SilenceTimeout, with server pings in between
		fc.send(t, websocket.MessageText, `{"type":"ping"}`)
		fc.expect(t, buko.FramePong)
		time.Sleep(100 * time.Millisecond) // deliberate: the time passing is what the test is about
	}
	if states.has("backoff/silence") {
		t.Fatal("a socket with traffic was declared silent")
	}
	stop(t, s)
}

func TestUnknownFramesAndCloseCodesSurvived(t *testing.T) {
	g := newFakeGateway(t)
	rec := newRecorder()
	states := &stateLog{}
	cfg := fakeConfig(t, g, rec)
	cfg.OnState = states.on
	cfg.OnAcked = rec.onAcked
	s := startSession(t, cfg)

	fc := g.next(t)
	fc.send(t, websocket.MessageBinary, "\x00\x01")
	fc.send(t, websocket.MessageText, "not json")
	fc.send(t, websocket.MessageText, `{"type":"hello","session":"x"}`)
	fc.send(t, websocket.MessageText, `{"type":"update","update":{"update_id":"zz"}}`)
	fc.send(t, websocket.MessageText, `{"type":"update","update":{"update_id":"41","message":{"message_id":"1","chat":{"id":"c1","type":"private"},"text":"one"}}}`)
	if f := fc.expect(t, buko.FrameAck); f.UpdateID != "41" {
		t.Fatalf("ack %s", f.UpdateID)
	}
	if err := fc.c.Close(4321, "something new"); err != nil {
		t.Logf("close: %v", err)
	}
	testsupport.Eventually(t, "backoff/close_other", func() bool { return states.has("backoff/close_other") })

	fc = g.next(t)
	// The server forgot our ack: it redelivers 41 (handed off already → re-ack, no second handoff).
	fc.send(t, websocket.MessageText, `{"type":"update","update":{"update_id":"41","message":{"message_id":"1","chat":{"id":"c1","type":"private"},"text":"one"}}}`)
	fc.send(t, websocket.MessageText, `{"type":"update","update":{"update_id":"43","edited_message":{"message_id":"1","chat":{"id":"c1","type":"private"},"text":"one!"}}}`)
	fc.send(t, websocket.MessageText, `{"type":"update","update":{"update_id":"44","some_future_kind":{"x":1}}}`)
	testsupport.Eventually(t, "ack 44", func() bool { return rec.lastAcked() == "44" })
	rec.check(t)
	if n := rec.total(); n != 3 {
		t.Errorf("%d updates handed off, want 3", n)
	}
	if s.State() != StateLive {
		t.Errorf("state %v", s.State())
	}
	stop(t, s)
}

func TestFallbackToPollingAndBack(t *testing.T) {
	e := newSim(t, sim.Options{})
	f := newFixture(t, e, 2, nil)
	target, _ := url.Parse(e.srv.URL)
	proxy := httputil.NewSingleHostReverseProxy(target)
	var blocked atomic.Bool
	blocked.Store(true)
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == buko.GatewayPath && blocked.Load() {
			http.Error(w, "<html>502 Bad Gateway</html>", http.StatusBadGateway)
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(func() {
		front.CloseClientConnections()
		front.Close()
	})
	states := &stateLog{}
	cfg := f.config()
	cfg.Client = buko.NewClient(front.URL, nil)
	cfg.FallbackAfter = 2
	cfg.GatewayRetry = 300 * time.Millisecond
	cfg.OnState = states.on
	s := startSession(t, cfg)
	testsupport.Eventually(t, "polling fallback", func() bool { return states.has("polling/fallback") })
	f.postAll(5)
	f.waitAllHandedOff(t)
	if st := e.stats(); st.GatewayConnections != 0 || st.RestCalls["getUpdates"] == 0 {
		t.Fatalf("stats %+v: want deliveries by getUpdates only", st)
	}
	blocked.Store(false)
	testsupport.Eventually(t, "back on the Gateway", func() bool { return s.State() == StateLive })
	for ci := range f.chats {
		e.post(f.chats[ci], f.users[ci], "c"+string(rune('0'+ci))+"-5")
	}
	f.waitAllHandedOff(t)
	f.waitAcked(t)
	f.rec.check(t)
	f.wantTexts(t, 0, 6)
	stop(t, s)
}
