package buko_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/buko/sim"
	"buko.app/agentrunner/internal/testsupport"
)

// simEnv is a simulator on a loopback port, with the client pointed at it.
type simEnv struct {
	srv *httptest.Server
	c   *buko.Client
	sc  *sim.Control // the control API
}

func newSimEnv(t *testing.T, opts sim.Options) *simEnv {
	t.Helper()
	s := sim.New(opts)
	srv := httptest.NewServer(s)
	t.Cleanup(func() {
		s.Close() // closes Gateway sockets first, then the listener
		srv.Close()
	})
	return &simEnv{srv: srv, c: buko.NewClient(srv.URL, nil), sc: sim.NewControl(srv.URL, sim.ControlOptions{HTTPClient: srv.Client()})}
}

// must fails the test on a control-API error.
func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

type simBot struct {
	BotID string
	Token string
}

func (b simBot) cred() buko.Credential { return cred(b.Token) }

func (e *simEnv) bot(t *testing.T, req sim.BotSettings) simBot {
	t.Helper()
	cb, err := e.sc.CreateBot(context.Background(), req)
	must(t, err)
	b := simBot{BotID: cb.BotID, Token: cb.Token}
	if b.BotID == "" || !strings.HasPrefix(b.Token, "bot_") {
		t.Fatalf("created bot = %+v", b.BotID)
	}
	return b
}

func (e *simEnv) user(t *testing.T, name string) string {
	t.Helper()
	u, err := e.sc.CreateUser(context.Background(), name, "")
	must(t, err)
	return u.UserID
}

// start runs the /start flow and returns the chat and the /start message ids.
func (e *simEnv) start(t *testing.T, userID, botID string) (chatID, messageID string) {
	t.Helper()
	r, err := e.sc.OpenPrivateChat(context.Background(), userID, botID)
	must(t, err)
	return r.ChatID, r.MessageID
}

// wantCode checks err is the sim's *buko.Error with code and status, naming
// the method and leaking none of the tokens.
func wantCode(t *testing.T, err error, method string, status int, code string, tokens ...string) *buko.Error {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: want %d %s, got success", method, status, code)
	}
	for _, tok := range tokens {
		if strings.Contains(err.Error(), tok) || strings.Contains(fmt.Sprintf("%#v", err), tok) {
			t.Fatalf("%s: error leaks a token: %v", method, err)
		}
	}
	var e *buko.Error
	if !errors.As(err, &e) {
		t.Fatalf("%s: want *buko.Error %s, got %T: %v", method, code, err, err)
	}
	if e.Method != method || e.Status != status || e.Code != code || !buko.IsCode(err, code) || e.Malformed() || e.Local() {
		t.Fatalf("%s: want %d %s, got %+v", method, status, code, e)
	}
	if !strings.Contains(e.Error(), method) || e.Description == "" {
		t.Fatalf("%s: unclear error %q", method, e)
	}
	return e
}

// TestClientAgainstSimulator runs every method and every error the simulator
// produces through the client.
func TestClientAgainstSimulator(t *testing.T) {
	// A fixed clock keeps every quota window still: the free bot's 21st
	// message of "this minute" is refused however slow the machine is.
	clock := time.Date(2026, 7, 1, 12, 0, 30, 0, time.UTC)
	env := newSimEnv(t, sim.Options{Now: func() time.Time { return clock }})
	ctx := context.Background()
	c := env.c

	official := env.bot(t, sim.BotSettings{Handle: "helper_bot", DisplayName: "Helper"})
	free := env.bot(t, sim.BotSettings{Handle: "free_bot", Tier: "free", Official: new(bool)})
	other := env.bot(t, sim.BotSettings{Handle: "other_bot"})
	tokens := []string{official.Token, free.Token, other.Token}
	alice, bob := env.user(t, "Alice"), env.user(t, "Bob")

	t.Run("UNAUTHORIZED", func(t *testing.T) {
		_, err := c.GetMe(ctx, cred("bot_not_a_real_token"))
		wantCode(t, err, "getMe", 401, buko.CodeUnauthorized, "bot_not_a_real_token")
		_, err = c.SendMessage(ctx, cred("bot_not_a_real_token"), buko.SendMessageParams{ChatID: "x", Text: "hi"})
		wantCode(t, err, "sendMessage", 401, buko.CodeUnauthorized, "bot_not_a_real_token")
	})

	t.Run("getMe", func(t *testing.T) {
		me, err := c.GetMe(ctx, official.cred())
		if err != nil {
			t.Fatal(err)
		}
		if me.ID != official.BotID || !me.IsBot || me.Handle != "helper_bot" || me.DisplayName != "Helper" || me.QuotaTier != "official" ||
			!me.Official || me.GatewayConnectionLimit != 1 || !me.Capabilities.EditDeleteMessages || me.Status != "active" {
			t.Fatalf("getMe = %+v", me)
		}
		me, err = c.GetMe(ctx, free.cred())
		if err != nil || me.QuotaTier != "free" || me.Capabilities.EditDeleteMessages {
			t.Fatalf("free getMe = %+v, %v", me, err)
		}
	})

	chatID, startID := env.start(t, alice, official.BotID)
	var offset buko.UpdateID

	t.Run("getUpdates", func(t *testing.T) {
		ups, err := c.GetUpdates(ctx, official.cred(), buko.GetUpdatesParams{Limit: 100})
		if err != nil {
			t.Fatal(err)
		}
		var sawStart, sawMember bool
		for i, u := range ups {
			if i > 0 && !ups[i-1].UpdateID.Less(u.UpdateID) {
				t.Fatalf("update ids not increasing: %s then %s", ups[i-1].UpdateID, u.UpdateID)
			}
			switch u.Kind() {
			case buko.KindMessage:
				m := u.Message
				sawStart = m.Text == "/start" && m.MessageID == startID && m.Chat.ID == chatID && m.Chat.Type == buko.ChatPrivate &&
					len(m.Entities) == 1 && m.Entities[0].Type == buko.EntityCommand && m.From != nil && !m.From.IsBot
			case buko.KindMyChatMember:
				sawMember = u.MyChatMember.NewChatMember.Status == buko.MemberMember && u.ChatID() == chatID
			}
			offset = u.UpdateID
		}
		if !sawStart || !sawMember {
			t.Fatalf("want my_chat_member and /start, got %+v", ups)
		}
		// The offset confirms them: the next poll is empty.
		ups, err = c.GetUpdates(ctx, official.cred(), buko.GetUpdatesParams{Offset: offset.Next(), Timeout: 0})
		if err != nil || len(ups) != 0 {
			t.Fatalf("after confirming: %+v, %v", ups, err)
		}
		// A long poll wakes for a message posted while it waits.
		type res struct {
			ups []buko.Update
			err error
		}
		done := make(chan res, 1)
		go func() {
			ups, err := c.GetUpdates(ctx, official.cred(), buko.GetUpdatesParams{Offset: offset.Next(), Timeout: buko.MaxPollTimeout})
			done <- res{ups, err}
		}()
		_, err = env.sc.Say(ctx, chatID, alice, "hello bot")
		must(t, err)
		r := <-done
		if r.err != nil || len(r.ups) == 0 || r.ups[len(r.ups)-1].Message == nil || r.ups[len(r.ups)-1].Message.Text != "hello bot" {
			t.Fatalf("long poll: %+v, %v", r.ups, r.err)
		}
		offset = r.ups[len(r.ups)-1].UpdateID
		if ups, err := c.GetUpdates(ctx, official.cred(), buko.GetUpdatesParams{Offset: offset.Next()}); err != nil || len(ups) != 0 {
			t.Fatalf("confirming the long poll's updates: %+v, %v", ups, err)
		}
		// Out-of-range poll parameters are the server's to refuse.
		_, err = c.GetUpdates(ctx, official.cred(), buko.GetUpdatesParams{Limit: 101})
		wantCode(t, err, "getUpdates", 400, buko.CodeBadRequest, tokens...)
	})

	var sentID string
	t.Run("sendMessage", func(t *testing.T) {
		m, err := c.SendMessage(ctx, official.cred(), buko.SendMessageParams{ChatID: chatID, Text: "Got it.", ReplyToMessageID: startID, ParseMode: buko.ParseModePlain})
		if err != nil {
			t.Fatal(err)
		}
		if m.MessageID == "" || m.Chat.ID != chatID || m.Text != "Got it." || m.Date != clock.Unix() {
			t.Fatalf("sendMessage = %+v", m)
		}
		sentID = m.MessageID
		tr, err := env.sc.Transcript(ctx, chatID, "")
		must(t, err)
		last := tr[len(tr)-1]
		if last.MessageID != sentID || last.FromKind != "bot" || last.Text != "Got it." || last.ReplyToMessageID != startID {
			t.Fatalf("transcript ends with %+v", last)
		}
	})

	t.Run("sendChatAction", func(t *testing.T) {
		if err := c.SendChatAction(ctx, official.cred(), chatID, buko.ActionTyping); err != nil {
			t.Fatal(err)
		}
		err := c.SendChatAction(ctx, official.cred(), chatID, "dancing")
		wantCode(t, err, "sendChatAction", 400, buko.CodeBadRequest, tokens...)
	})

	t.Run("editMessageText", func(t *testing.T) {
		m, err := c.EditMessageText(ctx, official.cred(), buko.EditMessageTextParams{ChatID: chatID, MessageID: sentID, Text: "Got it, really."})
		if err != nil {
			t.Fatal(err)
		}
		if m.MessageID != sentID || m.Text != "Got it, really." || m.EditDate == 0 {
			t.Fatalf("editMessageText = %+v", m)
		}
		_, err = c.EditMessageText(ctx, official.cred(), buko.EditMessageTextParams{ChatID: chatID, MessageID: startID, Text: "hijack"})
		wantCode(t, err, "editMessageText", 403, buko.CodeMessageForbidden, tokens...)
	})

	t.Run("sendPhoto and sendDocument", func(t *testing.T) {
		m, err := c.SendPhoto(ctx, official.cred(), buko.SendMediaParams{ChatID: chatID, Caption: "Here is the chart.", ReplyToMessageID: startID, FileName: "chart.png", Data: pngBytes})
		if err != nil {
			t.Fatal(err)
		}
		if len(m.Photo) != 1 || m.Photo[0].MimeType != "image/png" || m.Photo[0].FileSize != int64(len(pngBytes)) || m.Caption != "Here is the chart." {
			t.Fatalf("sendPhoto = %+v", m)
		}
		doc := []byte("%PDF-1.4\n% a tiny file\n")
		m, err = c.SendDocument(ctx, official.cred(), buko.SendMediaParams{ChatID: chatID, FileName: "report.pdf", MimeType: "application/pdf", Data: doc})
		if err != nil {
			t.Fatal(err)
		}
		if m.Document == nil || m.Document.FileName != "report.pdf" || m.Document.MimeType != "application/pdf" || m.Document.FileSize != int64(len(doc)) {
			t.Fatalf("sendDocument = %+v", m)
		}
		// The stored bytes are the uploaded ones.
		got, _, err := env.sc.Media(ctx, m.Document.FileID)
		if err != nil || !bytes.Equal(got, doc) {
			t.Fatalf("stored document: %v, %q", err, got)
		}
		// Over-long caption: the server's BAD_REQUEST comes through the multipart path.
		_, err = c.SendDocument(ctx, official.cred(), buko.SendMediaParams{ChatID: chatID, Caption: strings.Repeat("é", buko.MaxTextLen+1), Data: doc})
		wantCode(t, err, "sendDocument", 400, buko.CodeBadRequest, tokens...)
		_, err = c.SendPhoto(ctx, official.cred(), buko.SendMediaParams{ChatID: "spc_nope", Data: pngBytes})
		wantCode(t, err, "sendPhoto", 404, buko.CodeChatNotFound, tokens...)
	})

	t.Run("deleteMessage", func(t *testing.T) {
		err := c.DeleteMessage(ctx, official.cred(), chatID, startID)
		wantCode(t, err, "deleteMessage", 403, buko.CodeMessageForbidden, tokens...)
		if err := c.DeleteMessage(ctx, official.cred(), chatID, sentID); err != nil {
			t.Fatal(err)
		}
		tr, err := env.sc.Transcript(ctx, chatID, "")
		must(t, err)
		for _, m := range tr {
			if m.MessageID == sentID {
				t.Fatal("deleted message still in the transcript")
			}
		}
	})

	t.Run("BAD_REQUEST", func(t *testing.T) {
		for _, p := range []buko.SendMessageParams{
			{ChatID: chatID, Text: ""},
			{ChatID: chatID, Text: "   "},
			{ChatID: chatID, Text: strings.Repeat("ж", buko.MaxTextLen+1)},
			{ChatID: chatID, Text: "hi", ParseMode: "markdown"},
			{ChatID: chatID, Text: "hi", ParseMode: "HTML"},
			{ChatID: "", Text: "hi"},
			{ChatID: chatID, Text: "hi", ReplyToMessageID: "999999"},
		} {
			_, err := c.SendMessage(ctx, official.cred(), p)
			wantCode(t, err, "sendMessage", 400, buko.CodeBadRequest, tokens...)
		}
		// Exactly the limit passes.
		if _, err := c.SendMessage(ctx, official.cred(), buko.SendMessageParams{ChatID: chatID, Text: strings.Repeat("ж", buko.MaxTextLen)}); err != nil {
			t.Fatalf("5000 characters refused: %v", err)
		}
		_, err := c.EditMessageText(ctx, official.cred(), buko.EditMessageTextParams{ChatID: chatID, MessageID: startID, Text: "x", ParseMode: "markdown"})
		wantCode(t, err, "editMessageText", 400, buko.CodeBadRequest, tokens...)
	})

	t.Run("PAYLOAD_TOO_LARGE", func(t *testing.T) {
		// Media over the limit never leaves the client; the server's 413 is
		// reached through a JSON body over its 1 MiB request limit.
		_, err := c.SendMessage(ctx, official.cred(), buko.SendMessageParams{ChatID: chatID, Text: strings.Repeat("a", 1<<20+1)})
		wantCode(t, err, "sendMessage", 413, buko.CodePayloadTooLarge, tokens...)
	})

	t.Run("CHAT_NOT_FOUND", func(t *testing.T) {
		_, err := c.SendMessage(ctx, official.cred(), buko.SendMessageParams{ChatID: "spc_does_not_exist", Text: "hi"})
		wantCode(t, err, "sendMessage", 404, buko.CodeChatNotFound, tokens...)
		// Another bot's private chat is invisible, not forbidden.
		otherChat, _ := env.start(t, bob, other.BotID)
		_, err = c.SendMessage(ctx, official.cred(), buko.SendMessageParams{ChatID: otherChat, Text: "hi"})
		wantCode(t, err, "sendMessage", 404, buko.CodeChatNotFound, tokens...)
		err = c.SendChatAction(ctx, official.cred(), otherChat, buko.ActionTyping)
		wantCode(t, err, "sendChatAction", 404, buko.CodeChatNotFound, tokens...)
	})

	t.Run("CHAT_FORBIDDEN", func(t *testing.T) {
		// A group the bot is not in.
		group, err := env.sc.CreateGroup(ctx, "Team", []string{alice, bob}, []string{other.BotID})
		must(t, err)
		_, err = c.SendMessage(ctx, official.cred(), buko.SendMessageParams{ChatID: group, Text: "hi"})
		wantCode(t, err, "sendMessage", 403, buko.CodeChatForbidden, tokens...)
		// A private chat whose user stopped the bot ("not started" again).
		must(t, env.sc.Stop(ctx, chatID, alice))
		_, err = c.SendMessage(ctx, official.cred(), buko.SendMessageParams{ChatID: chatID, Text: "hi"})
		e := wantCode(t, err, "sendMessage", 403, buko.CodeChatForbidden, tokens...)
		if buko.IsRetryable(e) {
			t.Fatal("CHAT_FORBIDDEN retryable")
		}
		env.start(t, alice, official.BotID)
		if _, err := c.SendMessage(ctx, official.cred(), buko.SendMessageParams{ChatID: chatID, Text: "welcome back"}); err != nil {
			t.Fatalf("after /start again: %v", err)
		}
	})

	t.Run("BOT_BLOCKED", func(t *testing.T) {
		must(t, env.sc.Block(ctx, chatID, alice))
		_, err := c.SendMessage(ctx, official.cred(), buko.SendMessageParams{ChatID: chatID, Text: "hi"})
		wantCode(t, err, "sendMessage", 403, buko.CodeBotBlocked, tokens...)
		_, err = c.SendPhoto(ctx, official.cred(), buko.SendMediaParams{ChatID: chatID, Data: pngBytes})
		wantCode(t, err, "sendPhoto", 403, buko.CodeBotBlocked, tokens...)
		err = c.SendChatAction(ctx, official.cred(), chatID, buko.ActionTyping)
		wantCode(t, err, "sendChatAction", 403, buko.CodeBotBlocked, tokens...)
		env.start(t, alice, official.BotID) // unblocks
	})

	freeChat, freeStart := env.start(t, alice, free.BotID)

	t.Run("METHOD_NOT_ALLOWED_FOR_TIER", func(t *testing.T) {
		m, err := c.SendMessage(ctx, free.cred(), buko.SendMessageParams{ChatID: freeChat, Text: "hi"})
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.EditMessageText(ctx, free.cred(), buko.EditMessageTextParams{ChatID: freeChat, MessageID: m.MessageID, Text: "edited"})
		wantCode(t, err, "editMessageText", 403, buko.CodeMethodNotAllowedForTier, tokens...)
		err = c.DeleteMessage(ctx, free.cred(), freeChat, m.MessageID)
		wantCode(t, err, "deleteMessage", 403, buko.CodeMethodNotAllowedForTier, tokens...)
		_ = freeStart
	})

	t.Run("RATE_LIMITED", func(t *testing.T) {
		// The free tier allows 20 messages a minute; one was sent above.
		var err error
		sent := 1
		for ; sent <= 25; sent++ {
			if _, err = c.SendMessage(ctx, free.cred(), buko.SendMessageParams{ChatID: freeChat, Text: fmt.Sprint("n", sent)}); err != nil {
				break
			}
		}
		if sent != 20 {
			t.Fatalf("refused after %d messages, want after 20 (err %v)", sent, err)
		}
		e := wantCode(t, err, "sendMessage", 429, buko.CodeRateLimited, tokens...)
		// The fixed clock stands at :30, so the minute resets in 30 s.
		if e.RetryAfter != 30*time.Second || !buko.IsRetryable(e) {
			t.Fatalf("RetryAfter = %v", e.RetryAfter)
		}
		// Media counts as messages too.
		_, err = c.SendPhoto(ctx, free.cred(), buko.SendMediaParams{ChatID: freeChat, Data: pngBytes})
		wantCode(t, err, "sendPhoto", 429, buko.CodeRateLimited, tokens...)
	})

	t.Run("GATEWAY_ACTIVE and GATEWAY_CONNECTION_LIMIT", func(t *testing.T) {
		dctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		// Something to deliver, left unconfirmed by polling.
		_, err := env.sc.Say(ctx, chatID, alice, "over the gateway")
		must(t, err)
		ws, resp, err := websocket.Dial(dctx, c.GatewayURL(), &websocket.DialOptions{HTTPHeader: buko.AuthHeader(official.cred())})
		if err != nil {
			t.Fatalf("gateway dial: %v (resp %v)", err, resp)
		}
		defer ws.CloseNow()

		_, err = c.GetUpdates(ctx, official.cred(), buko.GetUpdatesParams{Offset: offset.Next()})
		e := wantCode(t, err, "getUpdates", 409, buko.CodeGatewayActive, tokens...)
		if buko.IsRetryable(e) {
			t.Fatal("GATEWAY_ACTIVE retryable")
		}

		// The gateway delivers, in order, what polling left unconfirmed (member
		// changes from the stop/block/start above, then our message); our
		// decoders read it and our acks confirm it.
		last := offset
		var f buko.Frame
		for f.Update == nil || f.Update.Message == nil || f.Update.Message.Text != "over the gateway" {
			_, data, err := ws.Read(dctx)
			if err != nil {
				t.Fatal(err)
			}
			if f, err = buko.DecodeFrame(data); err != nil {
				t.Fatalf("frame %s: %v", data, err)
			}
			switch f.Type {
			case buko.FramePing:
				err = ws.Write(dctx, websocket.MessageText, buko.PongFrame())
			case buko.FrameUpdate:
				if !last.Less(f.Update.UpdateID) {
					t.Fatalf("update %s after %s", f.Update.UpdateID, last)
				}
				last = f.Update.UpdateID
				err = ws.Write(dctx, websocket.MessageText, buko.AckFrame(last))
			}
			if err != nil {
				t.Fatal(err)
			}
		}

		// A second socket is over the limit: 409 with the envelope.
		_, resp, err = websocket.Dial(dctx, c.GatewayURL(), &websocket.DialOptions{HTTPHeader: buko.AuthHeader(official.cred())})
		if err == nil || resp == nil {
			t.Fatalf("second dial: want 409, got %v", err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		env2, derr := buko.DecodeEnvelope(body)
		if resp.StatusCode != 409 || derr != nil || env2.Code != buko.CodeGatewayConnectionLimit || env2.ErrorCode != 409 {
			t.Fatalf("second dial: HTTP %d %s (%v)", resp.StatusCode, body, derr)
		}
		// A bad token is refused at the upgrade with 401 and the envelope.
		_, resp, err = websocket.Dial(dctx, c.GatewayURL(), &websocket.DialOptions{HTTPHeader: buko.AuthHeader(cred("bot_nope"))})
		if err == nil || resp == nil || resp.StatusCode != 401 {
			t.Fatalf("bad token dial: %v", err)
		}
		body, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		if env3, err := buko.DecodeEnvelope(body); err != nil || env3.Code != buko.CodeUnauthorized {
			t.Fatalf("bad token dial body %s", body)
		}

		// After the socket closes, polling works again.
		ws.Close(websocket.StatusNormalClosure, "done")
		testsupport.Until(t, "polling to work after the socket closed", time.Minute, func() (bool, string) {
			_, err := c.GetUpdates(ctx, official.cred(), buko.GetUpdatesParams{Offset: f.Update.UpdateID.Next()})
			if err != nil && !buko.IsCode(err, buko.CodeGatewayActive) {
				t.Fatalf("polling after the socket closed: %v", err)
			}
			return err == nil, fmt.Sprint(err)
		})
	})

	t.Run("INTERNAL and lost responses (chaos)", func(t *testing.T) {
		chaos := func(cfg sim.ChaosConfig) { _, err := env.sc.SetChaos(ctx, cfg); must(t, err) }
		defer chaos(sim.ChaosConfig{})
		chaos(sim.ChaosConfig{Seed: 1, Rest5xxRate: 1})
		_, err := c.GetMe(ctx, official.cred())
		if e := wantCode(t, err, "getMe", 500, buko.CodeInternal, tokens...); !buko.IsRetryable(e) {
			t.Fatal("INTERNAL not retryable")
		}
		chaos(sim.ChaosConfig{Seed: 1, Rest429Rate: 1})
		_, err = c.SendMessage(ctx, official.cred(), buko.SendMessageParams{ChatID: chatID, Text: "x"})
		if e := wantCode(t, err, "sendMessage", 429, buko.CodeRateLimited, tokens...); e.RetryAfter < time.Second {
			t.Fatalf("chaos 429 RetryAfter = %v", e.RetryAfter)
		}
		// The call takes effect but the connection drops before the answer.
		chaos(sim.ChaosConfig{Seed: 1, ResponseLostRate: 1})
		_, err = c.SendMessage(ctx, official.cred(), buko.SendMessageParams{ChatID: chatID, Text: "maybe sent"})
		var re *buko.RequestError
		if !errors.As(err, &re) || re.Method != "sendMessage" || !buko.IsRetryable(err) {
			t.Fatalf("lost response: %T %v", err, err)
		}
		for _, tok := range tokens {
			if strings.Contains(err.Error(), tok) {
				t.Fatal("lost-response error leaks the token")
			}
		}
	})

	t.Run("rotated token", func(t *testing.T) {
		newToken, err := env.sc.RotateToken(ctx, official.BotID)
		must(t, err)
		_, err = c.GetMe(ctx, official.cred())
		wantCode(t, err, "getMe", 401, buko.CodeUnauthorized, append(tokens, newToken)...)
		if _, err := c.GetMe(ctx, cred(newToken)); err != nil {
			t.Fatalf("new token: %v", err)
		}
	})
}
