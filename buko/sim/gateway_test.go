package sim_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/coder/websocket"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/buko/sim"
	"buko.app/agentrunner/internal/testsupport"
)

// chatWithBot makes a bot, a user and a started private chat, and drains
// the start updates.
func chatWithBot(e *env, fields sim.BotSettings) (botID string, tok token, userID, chatID string) {
	e.t.Helper()
	botID, tok = e.bot(fields)
	userID = e.user("Gail")
	chatID = e.start(userID, botID)
	e.poll(tok)
	return
}

func TestGatewayDeliveryAckAndRedelivery(t *testing.T) {
	e := newEnv(t, sim.Options{})
	_, tok, u, chat := chatWithBot(e, sim.BotSettings{})
	base := e.stats() // the start updates, delivered and confirmed by polling
	for i := 1; i <= 3; i++ {
		e.say(chat, u, "m"+strconv.Itoa(i))
	}
	ws := e.connect(tok)
	got := ws.updates(3)
	if !slices.Equal(texts(got), []string{"m1", "m2", "m3"}) {
		t.Fatalf("first connection: %q", texts(got))
	}
	strictlyIncreasing(t, ids(got))

	// Cumulative ack of the second confirms the first two.
	ws.ack(got[1].UpdateID)
	testsupport.Within(t, "acked = 2", wait, func() bool { return e.stats().Acked-base.Acked == 2 })
	ws.close()

	// Reconnect without acking the third: it comes again, same id, in order
	// before anything new.
	e.say(chat, u, "m4")
	ws2 := e.connect(tok)
	again := ws2.updates(2)
	if again[0].UpdateID != got[2].UpdateID || again[0].Message.Text != "m3" || again[1].Message.Text != "m4" {
		t.Fatalf("after reconnect: %v %q", ids(again), texts(again))
	}
	st := e.stats()
	if st.UpdatesRedelivered != 1 || st.UpdatesDelivered-base.UpdatesDelivered != 5 || st.GatewayConnections != 2 {
		t.Fatalf("stats: %+v", st)
	}
	// Acking an older id after a newer one changes nothing; acking the last confirms all.
	ws2.ack(got[0].UpdateID)
	ws2.ack(again[1].UpdateID)
	testsupport.Within(t, "acked = 4", wait, func() bool { return e.stats().Acked-base.Acked == 4 })
	ws2.close()
	ws3 := e.connect(tok)
	if !ws3.quiet(200 * time.Millisecond) {
		t.Fatal("acked updates were delivered again")
	}
}

func TestGatewayWindowOf100(t *testing.T) {
	e := newEnv(t, sim.Options{})
	_, tok, u, chat := chatWithBot(e, sim.BotSettings{})
	base := e.stats()
	for i := 1; i <= 150; i++ {
		e.say(chat, u, "w"+strconv.Itoa(i))
	}
	ws := e.connect(tok)
	first := ws.updates(100)
	if first[99].Message.Text != "w100" {
		t.Fatalf("100th: %q", first[99].Message.Text)
	}
	if !ws.quiet(300 * time.Millisecond) {
		t.Fatal("more than 100 unacked updates in flight")
	}
	if d := e.stats().UpdatesDelivered - base.UpdatesDelivered; d != 100 {
		t.Fatalf("updates_delivered = %d with a full window", d)
	}
	// Acking the 50th opens 50 slots: exactly w101..w150 follow.
	ws.ack(first[49].UpdateID)
	next := ws.updates(50)
	if next[0].Message.Text != "w101" || next[49].Message.Text != "w150" {
		t.Fatalf("after ack: %q … %q", next[0].Message.Text, next[49].Message.Text)
	}
	all := append(first, next...)
	strictlyIncreasing(t, ids(all))
}

func TestGatewayAckForUnknownIDIgnored(t *testing.T) {
	e := newEnv(t, sim.Options{})
	_, tok, u, chat := chatWithBot(e, sim.BotSettings{})
	base := e.stats()
	e.say(chat, u, "only")
	ws := e.connect(tok)
	up := ws.update()
	// An id never sent (far above), then garbage-free but huge ids.
	ws.ack(up.UpdateID.Next().Next())
	ws.ack("99999999999999999999999999")
	ws.send(buko.PingFrame()) // a round trip, so the acks were surely read
	for f := ws.next(); f.Type != buko.FramePong; f = ws.next() {
	}
	if a := e.stats().Acked - base.Acked; a != 0 {
		t.Fatalf("acked = %d after acks for ids never sent", a)
	}
	ws.close()
	ws2 := e.connect(tok)
	if again := ws2.update(); again.UpdateID != up.UpdateID {
		t.Fatalf("redelivered %s, want %s", again.UpdateID, up.UpdateID)
	}
}

func TestGatewayBadFrames(t *testing.T) {
	e := newEnv(t, sim.Options{})
	_, tok, _, _ := chatWithBot(e, sim.BotSettings{})
	for name, frame := range map[string]string{
		"not json":        "garbage",
		"no type":         `{"update_id":"1"}`,
		"ack without id":  `{"type":"ack"}`,
		"ack bad id":      `{"type":"ack","update_id":"01"}`,
		"update frame":    `{"type":"update","update":{"update_id":"1"}}`,
		"unknown type":    `{"type":"subscribe"}`,
		"json array":      `[1,2]`,
		"ack negative id": `{"type":"ack","update_id":-5}`,
	} {
		ws := e.connect(tok)
		ws.send([]byte(frame))
		if code := ws.closed(); code != buko.CloseBadFrame {
			t.Errorf("%s: close code %d, want 4002", name, code)
		}
	}
	ws := e.connect(tok)
	c, cancel := ctxWithTimeout()
	defer cancel()
	if err := ws.c.Write(c, websocket.MessageBinary, []byte(`{"type":"ping"}`)); err != nil {
		t.Fatal(err)
	}
	if code := ws.closed(); code != buko.CloseBadFrame {
		t.Errorf("binary frame: close code %d, want 4002", code)
	}
	if n := e.stats().GatewayCloses["4002"]; n != 9 {
		t.Errorf("gateway_closes[4002] = %d, want 9", n)
	}
}

func TestGatewayActiveBlocksPolling(t *testing.T) {
	e := newEnv(t, sim.Options{})
	_, tok, u, chat := chatWithBot(e, sim.BotSettings{})
	base := e.stats()
	ws := e.connect(tok)
	_, err := e.api.GetUpdates(ctx(t), tok, buko.GetUpdatesParams{})
	wantCode(t, err, 409, buko.CodeGatewayActive)

	// Acks over the Gateway and the polling offset share one cursor.
	e.say(chat, u, "one")
	e.say(chat, u, "two")
	got := ws.updates(2)
	ws.ack(got[0].UpdateID)
	testsupport.Within(t, "ack", wait, func() bool { return e.stats().Acked-base.Acked == 1 })
	ws.close()
	var ups []buko.Update
	testsupport.Within(t, "polling allowed after the socket closed", wait, func() bool {
		ups, err = e.api.GetUpdates(ctx(t), tok, buko.GetUpdatesParams{})
		return err == nil
	})
	if len(ups) != 1 || ups[0].UpdateID != got[1].UpdateID {
		t.Fatalf("poll after gateway ack: %v", ids(ups))
	}
}

func TestGatewayTokenRotation(t *testing.T) {
	e := newEnv(t, sim.Options{})
	botID, tok, u, chat := chatWithBot(e, sim.BotSettings{})
	ws := e.connect(tok)
	rotated, err := e.sc.RotateToken(ctx(t), botID)
	e.must(err)
	rot := struct{ Token string }{rotated}
	if code := ws.closed(); code != buko.CloseTokenRevoked {
		t.Fatalf("close code %d, want 4001", code)
	}
	_, err = e.api.GetMe(ctx(t), tok)
	wantCode(t, err, 401, buko.CodeUnauthorized)
	if _, resp, err := e.dial(tok); err == nil || resp == nil || resp.StatusCode != 401 {
		t.Fatalf("dial with the old token: %v", err)
	}
	newTok := token(rot.Token)
	if newTok == tok || rot.Token == "" {
		t.Fatal("rotation returned the same token")
	}
	ws2 := e.connect(newTok) // not refused by the limit: the old socket is gone
	e.say(chat, u, "after rotation")
	if up := ws2.update(); up.Message.Text != "after rotation" {
		t.Fatalf("update: %+v", up)
	}
	if e.stats().GatewayCloses["4001"] != 1 {
		t.Fatal("gateway_closes[4001] != 1")
	}
}

func TestGatewayPingPong(t *testing.T) {
	e := newEnv(t, sim.Options{PingInterval: 30 * time.Millisecond})
	_, tok, _, _ := chatWithBot(e, sim.BotSettings{})

	// A client that answers stays through many pings.
	ws := e.connect(tok)
	for i := 0; i < 6; i++ {
		f := ws.next()
		if f.Type != buko.FramePing {
			t.Fatalf("frame %d: %q, want ping", i, f.Type)
		}
		ws.send(buko.PongFrame())
	}
	// The server answers a client ping.
	ws.send(buko.PingFrame())
	for f := ws.next(); f.Type != buko.FramePong; f = ws.next() {
		if f.Type == buko.FramePing {
			ws.send(buko.PongFrame())
		}
	}
	ws.close()

	// A client that never answers is closed with 4000 after two missed pongs.
	silent := e.connect(tok)
	if code := silent.closed(); code != buko.ClosePingTimeout {
		t.Fatalf("close code %d, want 4000", code)
	}
}

func TestGatewayAuthAndAttemptLimit(t *testing.T) {
	clock := newFakeClock(time.Date(2026, 3, 1, 12, 0, 10, 0, time.UTC))
	e := newEnv(t, sim.Options{Now: clock.Now, GatewayAttemptsPerMinute: 3})
	_, tok, _, _ := chatWithBot(e, sim.BotSettings{})

	for name, tk := range map[string]token{"missing": "", "unknown": "bot_unknown"} {
		_, resp, err := e.dial(tk)
		if err == nil || resp == nil || resp.StatusCode != 401 {
			t.Fatalf("%s token: %v", name, err)
		}
	}
	req, _ := http.NewRequest("GET", e.srv.URL+"/bot/ws", nil)
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	env, err := buko.DecodeEnvelope(body)
	if resp.StatusCode != 401 || err != nil || env.Code != buko.CodeUnauthorized {
		t.Fatalf("unauthenticated upgrade: HTTP %d %q", resp.StatusCode, body)
	}
	if e.stats().GatewayUnauthorized != 3 {
		t.Fatalf("gateway_unauthorized = %d", e.stats().GatewayUnauthorized)
	}

	for i := 0; i < 3; i++ {
		e.connect(tok).close()
	}
	_, resp, err = e.dial(tok)
	if err == nil || resp == nil || resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "50" {
		t.Fatalf("4th attempt in a minute: %v (resp %v)", err, resp)
	}
	clock.Advance(50 * time.Second)
	e.connect(tok).close()
}

func TestConnectionLimitRejectNew(t *testing.T) {
	e := newEnv(t, sim.Options{})
	_, tok, _, _ := chatWithBot(e, sim.BotSettings{})
	ws := e.connect(tok)
	_, resp, err := e.dial(tok)
	if err == nil || resp == nil || resp.StatusCode != 409 {
		t.Fatalf("second socket at limit 1: %v", err)
	}
	st := e.stats()
	if st.GatewayRejectedLimit != 1 || st.MaxConcurrentGatewayPerBot != 1 || st.GatewayOpen != 1 {
		t.Fatalf("stats: %+v", st)
	}
	ws.close()
	testsupport.Within(t, "slot freed", wait, func() bool { return e.stats().GatewayOpen == 0 })
	e.connect(tok)

	// Limit 2: two sockets, both get every update; the third is refused.
	_, tok2, u, chat := chatWithBot(e, sim.BotSettings{GatewayConnectionLimit: 2})
	a, b := e.connect(tok2), e.connect(tok2)
	if _, resp, err := e.dial(tok2); err == nil || resp.StatusCode != 409 {
		t.Fatalf("third socket at limit 2: %v", err)
	}
	e.say(chat, u, "both")
	if a.update().Message.Text != "both" || b.update().Message.Text != "both" {
		t.Fatal("update not on both sockets")
	}
	if m := e.stats().MaxConcurrentGatewayPerBot; m != 2 {
		t.Fatalf("max_concurrent_gateway_per_bot = %d", m)
	}
}

func TestConnectionLimitReplaceOldest(t *testing.T) {
	e := newEnv(t, sim.Options{})
	_, tok, u, chat := chatWithBot(e, sim.BotSettings{ConnectionPolicy: "replace_oldest"})
	e.say(chat, u, "early")
	old := e.connect(tok)
	if old.update().Message.Text != "early" {
		t.Fatal("old socket missed the update")
	}
	fresh := e.connect(tok)
	if code := old.closed(); code != buko.CloseReplaced {
		t.Fatalf("old socket close code %d, want 4009", code)
	}
	// The new socket gets the unacked update again, then new ones.
	e.say(chat, u, "late")
	got := fresh.updates(2)
	if !slices.Equal(texts(got), []string{"early", "late"}) {
		t.Fatalf("new socket: %q", texts(got))
	}
	st := e.stats()
	if st.GatewayReplaced != 1 || st.MaxConcurrentGatewayPerBot != 1 || st.GatewayRejectedLimit != 0 {
		t.Fatalf("stats: replaced %d max %d rejected %d", st.GatewayReplaced, st.MaxConcurrentGatewayPerBot, st.GatewayRejectedLimit)
	}
}

func TestCloseGoingAway(t *testing.T) {
	e := newEnv(t, sim.Options{})
	_, tok, _, _ := chatWithBot(e, sim.BotSettings{})
	ws := e.connect(tok)
	done := make(chan struct{})
	go func() { e.sim.Close(); close(done) }()
	if code := ws.closed(); code != buko.CloseGoingAway {
		t.Fatalf("close code %d, want 1001", code)
	}
	<-done
	if _, resp, err := e.dial(tok); err == nil || resp == nil || resp.StatusCode != 503 {
		t.Fatalf("dial after Close: %v", err)
	}
}

func TestPollingCursor(t *testing.T) {
	e := newEnv(t, sim.Options{})
	_, tok, u, chat := chatWithBot(e, sim.BotSettings{})
	for i := 1; i <= 3; i++ {
		e.say(chat, u, fmt.Sprint("p", i))
	}
	gu := func(p buko.GetUpdatesParams) []buko.Update {
		t.Helper()
		ups, err := e.api.GetUpdates(ctx(t), tok, p)
		if err != nil {
			t.Fatal(err)
		}
		return ups
	}
	all := gu(buko.GetUpdatesParams{})
	if !slices.Equal(texts(all), []string{"p1", "p2", "p3"}) {
		t.Fatalf("poll: %q", texts(all))
	}
	if again := gu(buko.GetUpdatesParams{}); !slices.Equal(ids(again), ids(all)) {
		t.Fatal("unconfirmed updates not returned again")
	}
	if one := gu(buko.GetUpdatesParams{Limit: 1}); len(one) != 1 || one[0].UpdateID != all[0].UpdateID {
		t.Fatalf("limit 1: %v", ids(one))
	}
	rest := gu(buko.GetUpdatesParams{Offset: all[1].UpdateID.Next()})
	if len(rest) != 1 || rest[0].UpdateID != all[2].UpdateID {
		t.Fatalf("offset: %v", ids(rest))
	}
	// An offset far beyond every id confirms only what exists.
	if ups := gu(buko.GetUpdatesParams{Offset: "999999999999"}); len(ups) != 0 {
		t.Fatalf("huge offset: %v", ids(ups))
	}
	e.say(chat, u, "p4")
	if ups := gu(buko.GetUpdatesParams{}); len(ups) != 1 || ups[0].Message.Text != "p4" {
		t.Fatalf("update after a huge offset: %q", texts(ups))
	}

	// A long poll waits for the next update.
	res := make(chan []buko.Update, 1)
	go func() {
		ups, err := e.api.GetUpdates(ctx(t), tok, buko.GetUpdatesParams{Offset: "999999999999", Timeout: 30})
		if err != nil {
			t.Error(err)
		}
		res <- ups
	}()
	// Wait until the poll has confirmed p4, then post.
	testsupport.Within(t, "long poll started", wait, func() bool {
		bv, err := e.sc.Bot(ctx(e.t), e.firstBot())
		e.must(err)
		return bv.PendingUpdates == 0
	})
	e.say(chat, u, "p5")
	if ups := testsupport.ReceiveWithin(t, "the long poll to return", wait, res); len(ups) != 1 || ups[0].Message.Text != "p5" {
		t.Fatalf("long poll: %q", texts(ups))
	}

	for name, body := range map[string]string{
		"limit 0":     `{"limit":0}`,
		"limit 101":   `{"limit":101}`,
		"timeout -1":  `{"timeout":-1}`,
		"timeout 51":  `{"timeout":51}`,
		"offset junk": `{"offset":"abc"}`,
	} {
		status, _, env := e.rawCall(tok, "getUpdates", "application/json", []byte(body))
		if status != 400 || env.Code != buko.CodeBadRequest {
			t.Errorf("%s: HTTP %d %+v", name, status, env)
		}
	}
	// The result is an array of updates in the envelope.
	status, _, env := e.rawCall(tok, "getUpdates", "application/json", []byte(`{"offset":"0","limit":100,"timeout":0}`))
	var arr []json.RawMessage
	if status != 200 || json.Unmarshal(env.Result, &arr) != nil {
		t.Fatalf("raw getUpdates: HTTP %d %s", status, env.Result)
	}
}

func (e *env) firstBot() string {
	e.t.Helper()
	bots, err := e.sc.Bots(ctx(e.t))
	e.must(err)
	return bots[0].BotID
}

// TestCloseLeavesNoGoroutines: after Close (and the HTTP server's), every
// socket goroutine of the simulator, and of its clients, has ended.
func TestCloseLeavesNoGoroutines(t *testing.T) {
	base := runtime.NumGoroutine()
	// Pings every 20 ms keep the ping timers busy while Close runs; the
	// clients do not read until the end, so unanswered pings must not close
	// them with 4000 first (they did on a loaded machine).
	s := sim.New(sim.Options{PingInterval: 20 * time.Millisecond, PongTimeout: time.Hour})
	srv := httptest.NewServer(s)
	e := &env{t: t, sim: s, srv: srv, botOf: map[token]string{}}
	e.api = buko.NewClient(srv.URL, srv.Client())
	e.wsURL = e.api.GatewayURL()
	e.sc = sim.NewControl(srv.URL, sim.ControlOptions{HTTPClient: srv.Client()})
	var clients []*wsClient
	for i := 0; i < 5; i++ {
		_, tok, u, chat := chatWithBot(e, sim.BotSettings{})
		e.say(chat, u, "hi")
		ws := e.connect(tok)
		ws.update()
		clients = append(clients, ws)
	}
	s.Close()
	for _, ws := range clients {
		if code := ws.closed(); code != buko.CloseGoingAway {
			t.Errorf("close code %d", code)
		}
	}
	srv.Close()
	srv.Client().CloseIdleConnections()
	testsupport.Within(t, "goroutines back to the baseline", wait, func() bool { return runtime.NumGoroutine() <= base })
}
