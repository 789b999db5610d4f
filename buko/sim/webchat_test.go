package sim_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"buko.app/agentrunner/buko/sim"
	"buko.app/agentrunner/buko/sim/web/browser"
)

// TestWebChat drives the simulator's web chat page in a headless Chromium
// against a real simulator: create a user, start a bot, send a message (which
// must stay text), see the bot's reply, typing indicator, photo and document
// appear live without a reload, then reply, edit a message, make a group,
// block and restart the bot, and check the phone layout. Screenshots go to
// $AGENTRUNNER_TEST_ARTIFACTS (default test-artifacts/ at the repo root).
func TestWebChat(t *testing.T) {
	browser.Require(t)
	srv := httptest.NewServer(sim.New(sim.Options{}))
	t.Cleanup(srv.Close)
	api := &control{t: t, base: srv.URL}

	bot, err := api.sc().CreateBot(context.Background(), sim.BotSettings{Handle: "echo_bot", DisplayName: "Echo Bot"})
	api.must(err)
	if bot.BotID == "" || bot.Token == "" {
		t.Fatal("POST /sim/bots returned no bot_id or no token")
	}

	b := browser.New(t)

	// A page that keeps this marker was never reloaded.
	b.Do("open the page", chromedp.Navigate(srv.URL+"/"))
	b.WaitFn("the page to start", `() => document.body.dataset.ready === 'true'`)
	b.Do("mark the page", chromedp.Evaluate[chromedp.Void](`window.__notReloaded = true`))

	// Create a user; with no users yet the "New user" form is open.
	b.WaitFn("the New user form to be open", `() => document.getElementById('new-user').open`)
	b.Do("create a user",
		chromedp.WaitVisible(chromedp.ID("new-user-name")),
		chromedp.SendKeys(chromedp.ID("new-user-name"), "Ada Lovelace"),
		chromedp.SendKeys(chromedp.ID("new-user-handle"), "ada"),
		chromedp.Click(chromedp.ID("create-user")),
	)
	b.WaitFn("the new user to be picked",
		`() => document.getElementById('current-user').textContent.includes('Ada Lovelace')`)
	users, err := api.sc().Users(context.Background())
	api.must(err)
	if len(users) != 1 || users[0].DisplayName != "Ada Lovelace" {
		t.Fatalf("GET /sim/users = %+v, want the one user the page created", users)
	}
	userID := users[0].UserID

	// Start the bot: the private chat opens with the /start message.
	startSel := browser.TestID("start-bot-" + bot.BotID)
	b.WaitFn("the Start button to be enabled", `(sel) => { const b = document.querySelector(sel); return b && !b.disabled; }`, startSel)
	b.Do("start the bot", chromedp.Click(chromedp.CSS(startSel)))
	b.Do("the chat to open", chromedp.WaitVisible(chromedp.ID("chat-view")))
	b.WaitFn("/start in the transcript", `() => [...document.querySelectorAll('#transcript .msg-own .text')].some(e => e.textContent === '/start')`)
	chatID := b.Eval(`document.querySelector('#chat-list button.chat.active').dataset.chatId`)
	if chatID == "" {
		t.Fatal("the open chat is not marked active in the chat list")
	}

	// Send a message (with markup in it, which must stay text).
	const hello = `hello <b>bot</b> & <img src=x onerror="window.__xss=1">`
	b.Do("type and send a message",
		chromedp.SendKeys(chromedp.ID("composer-text"), hello),
		chromedp.Click(chromedp.ID("send")),
	)
	helloID := b.WaitChatMessage("the sent message", "user", hello)
	if got := b.Eval(`String(document.querySelectorAll('#transcript .text b, #transcript .text img').length) + String(window.__xss || '')`); got != "0" {
		t.Fatalf("message text was rendered as HTML (elements+xss marker = %q)", got)
	}
	msgs := api.messages(chatID)
	if m := find(msgs, helloID); m == nil || m.Text != hello || m.FromKind != "user" || m.FromID != userID {
		t.Fatalf("the simulator's transcript lacks the sent message %s: %+v", helloID, msgs)
	}

	// The bot answers through the Bot API; the reply shows up without a reload.
	const pong = "pong: hello, Ada"
	replyID := api.botSend(bot.Token, map[string]any{"chat_id": chatID, "text": pong, "reply_to_message_id": helloID})
	gotID := b.WaitChatMessage("the bot's reply", "bot", pong)
	if gotID != replyID {
		t.Fatalf("the bot reply shows as message %s, the Bot API said %s", gotID, replyID)
	}
	b.WaitFn("the bot reply to quote the message", `(id) => { const q = document.querySelector('[data-testid="quote-' + id + '"]'); return q && q.textContent.includes('You'); }`, replyID)

	// A chat action shows under the chat title while it lasts (5 s).
	b.UntilShown("the typing indicator", func() {
		if st, body := api.botCall(bot.Token, "sendChatAction", map[string]any{"chat_id": chatID, "action": "typing"}); st != http.StatusOK {
			t.Fatalf("sendChatAction: HTTP %d %s", st, body)
		}
	}, `() => document.getElementById('chat-subtitle').textContent === 'Echo Bot is typing…'`)

	// Media from the bot: a photo shows inline, a document as a download.
	photoID := api.botUpload(bot.Token, "sendPhoto", chatID, "photo", "chart.png", "image/png", testPNG(t, 48, 32), "the chart")
	b.WaitFn("the photo to load", `(sel) => { const i = document.querySelector(sel); return i && i.complete && i.naturalWidth === 48; }`, browser.TestID("photo-"+photoID))
	b.WaitChatMessage("the photo's caption", "bot", "the chart")
	docID := api.botUpload(bot.Token, "sendDocument", chatID, "document", "notes.txt", "text/plain", []byte("some notes"), "")
	b.WaitFn("the document", `(sel) => { const d = document.querySelector(sel); return d && d.textContent.includes('notes.txt'); }`, browser.TestID("document-"+docID))

	if b.Eval(`String(window.__notReloaded === true)`) != "true" {
		t.Fatal("the page reloaded to show the bot's messages")
	}
	b.Screenshot("webchat.png")

	// Reply to the bot's message.
	b.Do("reply to the bot", chromedp.Click(chromedp.CSS(browser.TestID("reply-"+replyID))))
	b.Do("the reply banner", chromedp.WaitVisible(chromedp.ID("reply-banner")))
	b.Do("send the reply",
		chromedp.SendKeys(chromedp.ID("composer-text"), "thanks, bot"),
		chromedp.Click(chromedp.ID("send")),
	)
	thanksID := b.WaitChatMessage("the reply", "user", "thanks, bot")
	b.Do("the reply banner to close", chromedp.WaitNotVisible(chromedp.ID("reply-banner")))
	if m := find(api.messages(chatID), thanksID); m == nil || m.ReplyTo != replyID {
		t.Fatalf("message %s should reply to %s: %+v", thanksID, replyID, m)
	}

	// Edit the first message.
	b.Do("edit the first message",
		chromedp.Click(chromedp.CSS(browser.TestID("edit-"+helloID))),
		chromedp.WaitVisible(chromedp.ID("edit-banner")),
		chromedp.SetValue(chromedp.ID("composer-text"), "hello, edited"),
		chromedp.Click(chromedp.ID("send")),
	)
	b.WaitFn("the edited text", `(sel) => { const n = document.querySelector(sel); return n && n.querySelector('.text').textContent === 'hello, edited' && !!n.querySelector('.edited'); }`, browser.TestID("msg-"+helloID))
	if m := find(api.messages(chatID), helloID); m == nil || m.Text != "hello, edited" {
		t.Fatalf("the simulator did not take the edit of %s: %+v", helloID, m)
	}

	// A group with the bot.
	b.Do("open the group form", chromedp.Click(chromedp.CSS("#new-group summary")))
	b.Do("create a group",
		chromedp.WaitVisible(chromedp.ID("group-title")),
		chromedp.SendKeys(chromedp.ID("group-title"), "Lab notes"),
		chromedp.Click(chromedp.CSS(browser.TestID("group-bot-"+bot.BotID))),
		chromedp.Click(chromedp.ID("create-group")),
	)
	b.WaitFn("the group to open", `() => document.getElementById('chat-title').textContent === 'Lab notes'`)
	groupID := b.Eval(`document.querySelector('#chat-list button.chat.active').dataset.chatId`)
	b.Do("write in the group",
		chromedp.SendKeys(chromedp.ID("composer-text"), "@echo_bot ping"),
		chromedp.Click(chromedp.ID("send")),
	)
	b.WaitChatMessage("the group message", "user", "@echo_bot ping")
	api.botSend(bot.Token, map[string]any{"chat_id": groupID, "text": "pong from the group"})
	b.WaitChatMessage("the bot's group message", "bot", "pong from the group")

	// Back to the private chat, and block the bot there.
	b.Do("reopen the private chat", chromedp.Click(chromedp.CSS(browser.TestID("chat-"+chatID))))
	b.WaitChatMessage("the private transcript", "bot", pong)
	b.Do("block the bot",
		chromedp.Click(chromedp.ID("block-bot")),
		chromedp.WaitVisible(chromedp.ID("chat-closed")),
		chromedp.WaitNotVisible(chromedp.ID("composer")),
	)
	status, body := api.botSendErr(bot.Token, map[string]any{"chat_id": chatID, "text": "are you there?"})
	if status != http.StatusForbidden || !strings.Contains(string(body), "BOT_BLOCKED") {
		t.Fatalf("sendMessage to a user who blocked the bot: HTTP %d %s, want 403 BOT_BLOCKED", status, body)
	}
	b.Do("start the bot again",
		chromedp.Click(chromedp.ID("restart-bot")),
		chromedp.WaitVisible(chromedp.ID("composer-text")),
		chromedp.WaitNotVisible(chromedp.ID("chat-closed")),
	)
	api.botSend(bot.Token, map[string]any{"chat_id": chatID, "text": "welcome back"})
	b.WaitChatMessage("the bot's message after the restart", "bot", "welcome back")

	// The same page on a phone-sized screen.
	b.Do("shrink to a phone", chromedp.EmulateViewport(390, 844, chromedp.EmulateMobile))
	b.Do("the chat fits the phone", chromedp.WaitVisible(chromedp.ID("composer-text")))
	b.Screenshot("webchat-phone.png")
	b.Do("back to the list on the phone",
		chromedp.Click(chromedp.ID("back")),
		chromedp.WaitVisible(chromedp.ID("bot-list")),
		chromedp.WaitNotVisible(chromedp.ID("chat-view")),
	)
	b.Screenshot("webchat-phone-list.png")
	b.NoExceptions()
}

// TestWebChatAdminToken checks the page against a simulator guarded by an
// admin token: without it the page says what is missing; with ?admin_token=
// it works, and the token leaves the address bar.
func TestWebChatAdminToken(t *testing.T) {
	browser.Require(t)
	const admin = "web-admin-secret"
	srv := httptest.NewServer(sim.New(sim.Options{AdminToken: admin}))
	t.Cleanup(srv.Close)
	api := &control{t: t, base: srv.URL, admin: admin}
	bot, err := api.sc().CreateBot(context.Background(), sim.BotSettings{Handle: "guarded_bot", DisplayName: "Guarded"})
	api.must(err)

	b := browser.New(t)
	b.Do("open the page without the token", chromedp.Navigate(srv.URL+"/"))
	b.WaitFn("the page to ask for the token", `() => document.getElementById('status').textContent.includes('admin token')`)
	if n := b.Eval(`String(document.querySelectorAll('#bot-list li').length)`); n != "0" {
		t.Fatalf("without the admin token the page lists %s bots", n)
	}

	b.Do("open the page with the token", chromedp.Navigate(srv.URL+"/?admin_token="+admin))
	b.WaitFn("the bot list", `(sel) => !!document.querySelector(sel)`, browser.TestID("bot-"+bot.BotID))
	if u := b.Eval(`location.href`); strings.Contains(u, admin) {
		t.Fatalf("the admin token stayed in the address bar: %s", u)
	}
	// Writes carry the token too.
	b.WaitFn("the New user form to be open", `() => document.getElementById('new-user').open`)
	b.Do("create a user",
		chromedp.SendKeys(chromedp.ID("new-user-name"), "Grace Hopper"),
		chromedp.Click(chromedp.ID("create-user")),
	)
	b.WaitFn("the new user to be picked",
		`() => document.getElementById('current-user').textContent.includes('Grace Hopper')`)
	b.NoExceptions()
}

// testPNG is a w×h PNG in two colours.
func testPNG(t *testing.T, w, h int) []byte {
	t.Helper()
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			c := color.RGBA{R: 0x2f, G: 0x6f, B: 0xed, A: 0xff}
			if x < w/2 {
				c = color.RGBA{R: 0xf5, G: 0xa6, B: 0x23, A: 0xff}
			}
			img.Set(x, y, c)
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// ---- the control API and the Bot API, plain net/http ----

type control struct {
	t     *testing.T
	base  string
	admin string // the simulator's admin token, if it has one
}

type transcriptMessage struct {
	MessageID string `json:"message_id"`
	FromKind  string `json:"from_kind"`
	FromID    string `json:"from_id"`
	Text      string `json:"text"`
	ReplyTo   string `json:"reply_to_message_id"`
}

func find(msgs []transcriptMessage, id string) *transcriptMessage {
	for i := range msgs {
		if msgs[i].MessageID == id {
			return &msgs[i]
		}
	}
	return nil
}

func (c *control) messages(chatID string) []transcriptMessage {
	var out []transcriptMessage // the wire's fields, as the page reads them
	c.must(c.sc().Do(context.Background(), http.MethodGet, "/sim/chats/"+chatID+"/messages", nil, &out))
	return out
}

// sc is the simulator's control API (with the admin token, if any).
func (c *control) sc() *sim.Control {
	return sim.NewControl(c.base, sim.ControlOptions{AdminToken: c.admin})
}

func (c *control) must(err error) {
	c.t.Helper()
	if err != nil {
		c.t.Fatal(err)
	}
}

// botSend calls sendMessage as the bot and returns the new message id.
func (c *control) botSend(token string, params map[string]any) string {
	c.t.Helper()
	status, body := c.botSendErr(token, params)
	if status != http.StatusOK {
		c.t.Fatalf("sendMessage: HTTP %d: %s", status, body)
	}
	var res struct {
		OK     bool `json:"ok"`
		Result struct {
			MessageID string `json:"message_id"`
		} `json:"result"`
	}
	if err := json.Unmarshal(body, &res); err != nil || !res.OK || res.Result.MessageID == "" {
		c.t.Fatalf("sendMessage: unexpected answer %s (%v)", body, err)
	}
	return res.Result.MessageID
}

// botUpload sends a file as the bot with sendPhoto or sendDocument and
// returns the new message id.
func (c *control) botUpload(token, method, chatID, field, name, mimeType string, data []byte, caption string) string {
	c.t.Helper()
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	_ = mw.WriteField("chat_id", chatID)
	if caption != "" {
		_ = mw.WriteField("caption", caption)
	}
	hdr := textproto.MIMEHeader{}
	hdr.Set("Content-Disposition", fmt.Sprintf(`form-data; name=%q; filename=%q`, field, name))
	hdr.Set("Content-Type", mimeType)
	part, err := mw.CreatePart(hdr)
	if err != nil {
		c.t.Fatal(err)
	}
	_, _ = part.Write(data)
	if err := mw.Close(); err != nil {
		c.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+"/bot/"+method, &body)
	if err != nil {
		c.t.Fatal(err)
	}
	req.Header.Set("Content-Type", mw.FormDataContentType())
	req.Header.Set("Authorization", "Bot "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatalf("%s: %v", method, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var res struct {
		OK     bool `json:"ok"`
		Result struct {
			MessageID string `json:"message_id"`
		} `json:"result"`
	}
	if err := json.Unmarshal(b, &res); err != nil || resp.StatusCode != http.StatusOK || !res.OK || res.Result.MessageID == "" {
		c.t.Fatalf("%s: HTTP %d %s (%v)", method, resp.StatusCode, b, err)
	}
	return res.Result.MessageID
}

func (c *control) botSendErr(token string, params map[string]any) (int, []byte) {
	c.t.Helper()
	return c.botCall(token, "sendMessage", params)
}

// botCall calls a Bot API method with a JSON body.
func (c *control) botCall(token, method string, params map[string]any) (int, []byte) {
	c.t.Helper()
	return c.call(http.MethodPost, "/bot/"+method, "Bot "+token, params)
}

func (c *control) call(method, path, auth string, in any) (int, []byte) {
	c.t.Helper()
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			c.t.Fatal(err)
		}
		body = bytes.NewReader(b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		c.t.Fatal(err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		// The error names the URL, never the token (it is in a header).
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatalf("%s %s: reading the answer: %v", method, path, err)
	}
	return resp.StatusCode, b
}
