package sim_test

import (
	"bytes"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"strings"
	"testing"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/buko/sim"
)

func TestGetMeAndAuth(t *testing.T) {
	e := newEnv(t, sim.Options{})
	botID, tok := e.bot(sim.BotSettings{Handle: "echo_bot", DisplayName: "Echo"})
	me, err := e.api.GetMe(ctx(t), tok)
	if err != nil {
		t.Fatal(err)
	}
	if me.ID != botID || !me.IsBot || me.Handle != "echo_bot" || me.DisplayName != "Echo" ||
		me.QuotaTier != "official" || !me.Official || me.GatewayConnectionLimit != 1 ||
		!me.Capabilities.EditDeleteMessages || me.Status != "active" {
		t.Fatalf("getMe: %+v", me)
	}
	_, free := e.bot(sim.BotSettings{Handle: "free_bot", Tier: "free", Official: new(bool)})
	me, err = e.api.GetMe(ctx(t), free)
	if err != nil {
		t.Fatal(err)
	}
	if me.QuotaTier != "free" || me.Official || me.Capabilities.EditDeleteMessages {
		t.Fatalf("free getMe: %+v", me)
	}

	for name, tk := range map[string]token{"missing": "", "unknown": "bot_nope", "malformed": "x"} {
		status, _, env := e.rawCall(tk, "getMe", "", nil)
		if status != 401 || env.Code != buko.CodeUnauthorized || env.ErrorCode != 401 || env.OK {
			t.Errorf("%s token: HTTP %d %+v", name, status, env)
		}
	}
	// "Basic" instead of "Bot".
	req, _ := http.NewRequest("POST", e.srv.URL+"/bot/getMe", nil)
	req.Header.Set("Authorization", "Bearer "+string(tok))
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Errorf("Bearer scheme: HTTP %d", resp.StatusCode)
	}

	status, _, env := e.rawCall(tok, "getChat", "application/json", []byte(`{}`))
	if status != 404 || env.OK {
		t.Errorf("unknown method: HTTP %d %+v", status, env)
	}
	status, _, env = e.rawCall(tok, "getMe", "text/plain", []byte(`{}`))
	if status != 400 || env.Code != buko.CodeBadRequest {
		t.Errorf("wrong content type: HTTP %d %+v", status, env)
	}
	status, _, _ = e.rawCall(tok, "sendMessage", "application/json", []byte(`{"chat_id":`))
	if status != 400 {
		t.Errorf("truncated JSON: HTTP %d", status)
	}
}

func TestStartFlowAndScopedIDs(t *testing.T) {
	e := newEnv(t, sim.Options{Seed: 42})
	a, tokA := e.bot(sim.BotSettings{Handle: "alpha_bot"})
	b, tokB := e.bot(sim.BotSettings{Handle: "beta_bot"})
	alice := e.user("Alice")
	chatA := e.start(alice, a)
	chatB := e.start(alice, b)
	if chatA == chatB {
		t.Fatal("two bots share a private chat")
	}

	upsA := e.poll(tokA)
	if len(upsA) != 2 {
		t.Fatalf("want my_chat_member and /start, got %d updates", len(upsA))
	}
	strictlyIncreasing(t, ids(upsA))
	mcm := upsA[0].MyChatMember
	if mcm == nil || mcm.OldChatMember.Status != "left" || mcm.NewChatMember.Status != "member" ||
		mcm.Chat.ID != chatA || mcm.Chat.Type != "private" || mcm.From == nil || mcm.Date == 0 {
		t.Fatalf("my_chat_member: %+v", upsA[0])
	}
	m := upsA[1].Message
	if m == nil || m.Text != "/start" || m.Chat.ID != chatA || m.Chat.Type != "private" || m.Date == 0 ||
		len(m.Entities) != 1 || m.Entities[0] != (buko.Entity{Type: "bot_command", Offset: 0, Length: 6}) {
		t.Fatalf("/start message: %+v", upsA[1])
	}
	if m.From == nil || m.From.IsBot || m.From.DisplayName != "Alice" || m.From.ID == alice || m.From.ID != mcm.From.ID {
		t.Fatalf("/start from: %+v (control id %s)", m.From, alice)
	}
	upsB := e.poll(tokB)
	if len(upsB) != 2 || upsB[1].Message == nil {
		t.Fatalf("bot B: %d updates", len(upsB))
	}
	if upsB[1].Message.From.ID == m.From.ID {
		t.Fatal("the same user has the same from.id for two bots")
	}

	// Stable per bot: a later message carries the same scoped id.
	e.say(chatA, alice, "hello")
	again := e.poll(tokA)
	if len(again) != 1 || again[0].Message.From.ID != m.From.ID || !upsA[1].UpdateID.Less(again[0].UpdateID) {
		t.Fatalf("second message: %+v", again)
	}

	// Starting again while started: only the /start message, no my_chat_member.
	e.start(alice, a)
	re := e.poll(tokA)
	if len(re) != 1 || re[0].Message == nil || re[0].Message.Text != "/start" {
		t.Fatalf("restart: %+v", re)
	}
}

func TestSendMessageValidation(t *testing.T) {
	e := newEnv(t, sim.Options{})
	botID, tok := e.bot(sim.BotSettings{Handle: "val_bot"})
	other, _ := e.bot(sim.BotSettings{Handle: "other_bot"})
	u := e.user("Val")
	chat := e.start(u, botID)
	otherChat := e.start(u, other)
	userMsg := e.say(chat, u, "question")
	e.say(otherChat, u, "one")
	e.say(otherChat, u, "two")
	e.say(otherChat, u, "three") // message 4 exists only in otherChat... and in chat? (chat has 2)

	send := func(p buko.SendMessageParams) (*buko.Message, error) {
		return e.api.SendMessage(ctx(t), tok, p)
	}
	for name, p := range map[string]buko.SendMessageParams{
		"empty text":        {ChatID: chat, Text: ""},
		"blank text":        {ChatID: chat, Text: "  \n "},
		"5001 chars":        {ChatID: chat, Text: strings.Repeat("a", 5001)},
		"5001 emoji":        {ChatID: chat, Text: strings.Repeat("😀", 5001)},
		"markdown":          {ChatID: chat, Text: "hi", ParseMode: "markdown"},
		"missing chat":      {Text: "hi"},
		"reply unknown":     {ChatID: chat, Text: "hi", ReplyToMessageID: "99"},
		"reply other chat":  {ChatID: chat, Text: "hi", ReplyToMessageID: "4"},
		"reply not numeric": {ChatID: chat, Text: "hi", ReplyToMessageID: "x1"},
	} {
		_, err := send(p)
		ae := wantCode(t, err, 400, buko.CodeBadRequest)
		if ae.Description == "" {
			t.Errorf("%s: no description", name)
		}
	}
	// 5000 code points of a 4-byte character (10,000 UTF-16 units) is fine.
	if _, err := send(buko.SendMessageParams{ChatID: chat, Text: strings.Repeat("😀", 5000)}); err != nil {
		t.Fatalf("5000 emoji: %v", err)
	}
	msg, err := send(buko.SendMessageParams{ChatID: chat, Text: "answer", ReplyToMessageID: userMsg, ParseMode: "plain"})
	if err != nil {
		t.Fatal(err)
	}
	if msg.MessageID == "" || msg.Chat.ID != chat || msg.Chat.Type != "private" || msg.Text != "answer" || msg.Date == 0 ||
		msg.ReplyToMessage == nil || msg.ReplyToMessage.MessageID != userMsg || msg.From == nil || msg.From.ID != botID || !msg.From.IsBot {
		t.Fatalf("sendMessage result: %+v", msg)
	}

	tr, err := e.sc.Transcript(ctx(e.t), chat, "")
	e.must(err)
	last := tr[len(tr)-1]
	if last.FromKind != "bot" || last.FromID != botID || last.Text != "answer" || last.ReplyToMessageID != userMsg {
		t.Fatalf("transcript: %+v", last)
	}
	if e.stats().MessagesSentByBots != 2 {
		t.Fatalf("messages_sent_by_bots: %d", e.stats().MessagesSentByBots)
	}
}

func TestChatAccessErrors(t *testing.T) {
	e := newEnv(t, sim.Options{})
	a, tokA := e.bot(sim.BotSettings{Handle: "acc_a"})
	b, _ := e.bot(sim.BotSettings{Handle: "acc_b"})
	u := e.user("Ann")
	chatA := e.start(u, a)
	chatB := e.start(u, b)
	grp := e.group("No bots here", []string{u}, nil)
	e.poll(tokA)

	send := func(chat string) error {
		_, err := e.api.SendMessage(ctx(t), tokA, buko.SendMessageParams{ChatID: chat, Text: "hi"})
		return err
	}
	wantCode(t, send("spc_unknown"), 404, buko.CodeChatNotFound)
	wantCode(t, send(chatB), 404, buko.CodeChatNotFound) // another bot's private chat is invisible
	wantCode(t, send(grp), 403, buko.CodeChatForbidden)  // a group the bot is not in
	wantCode(t, e.api.SendChatAction(ctx(t), tokA, grp, "typing"), 403, buko.CodeChatForbidden)

	// Stop → CHAT_FORBIDDEN; block → BOT_BLOCKED; start again → fine.
	e.must(e.sc.Stop(ctx(e.t), chatA, u))
	wantCode(t, send(chatA), 403, buko.CodeChatForbidden)
	e.start(u, a)
	if err := send(chatA); err != nil {
		t.Fatal(err)
	}
	e.poll(tokA)
	e.must(e.sc.Block(ctx(e.t), chatA, u))
	wantCode(t, send(chatA), 403, buko.CodeBotBlocked)
	wantCode(t, e.api.SendChatAction(ctx(t), tokA, chatA, "typing"), 403, buko.CodeBotBlocked)
	ups := e.poll(tokA)
	if len(ups) != 1 || ups[0].MyChatMember == nil || ups[0].MyChatMember.OldChatMember.Status != "member" ||
		ups[0].MyChatMember.NewChatMember.Status != "kicked" {
		t.Fatalf("block: want my_chat_member kicked, got %+v", ups)
	}
	if code := e.ctl("POST", "/sim/chats/"+chatA+"/messages", map[string]any{"user_id": u, "text": "hi"}, nil); code != http.StatusConflict {
		t.Fatalf("user writes into a blocked chat: HTTP %d", code)
	}
	e.start(u, a)
	ups = e.poll(tokA)
	if len(ups) != 2 || ups[0].MyChatMember == nil || ups[0].MyChatMember.OldChatMember.Status != "kicked" ||
		ups[0].MyChatMember.NewChatMember.Status != "member" || ups[1].Message.Text != "/start" {
		t.Fatalf("unblock by /start: %+v", ups)
	}
	if err := send(chatA); err != nil {
		t.Fatal(err)
	}
}

func TestEditAndDelete(t *testing.T) {
	e := newEnv(t, sim.Options{})
	official, tok := e.bot(sim.BotSettings{Handle: "ed_bot"})
	free, freeTok := e.bot(sim.BotSettings{Handle: "ed_free", Tier: "free"})
	other, otherTok := e.bot(sim.BotSettings{Handle: "ed_other"})
	u := e.user("Eve")
	chat := e.start(u, official)
	freeChat := e.start(u, free)
	userMsg := e.say(chat, u, "mine")

	fm, err := e.api.SendMessage(ctx(t), freeTok, buko.SendMessageParams{ChatID: freeChat, Text: "free"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.api.EditMessageText(ctx(t), freeTok, buko.EditMessageTextParams{ChatID: freeChat, MessageID: fm.MessageID, Text: "x"})
	wantCode(t, err, 403, buko.CodeMethodNotAllowedForTier)
	wantCode(t, e.api.DeleteMessage(ctx(t), freeTok, freeChat, fm.MessageID), 403, buko.CodeMethodNotAllowedForTier)

	m, err := e.api.SendMessage(ctx(t), tok, buko.SendMessageParams{ChatID: chat, Text: "draft"})
	if err != nil {
		t.Fatal(err)
	}
	ed, err := e.api.EditMessageText(ctx(t), tok, buko.EditMessageTextParams{ChatID: chat, MessageID: m.MessageID, Text: "final", ParseMode: "plain"})
	if err != nil {
		t.Fatal(err)
	}
	if ed.MessageID != m.MessageID || ed.Text != "final" || ed.EditDate == 0 {
		t.Fatalf("edit result: %+v", ed)
	}
	_, err = e.api.EditMessageText(ctx(t), tok, buko.EditMessageTextParams{ChatID: chat, MessageID: userMsg, Text: "hacked"})
	wantCode(t, err, 403, buko.CodeMessageForbidden)
	wantCode(t, e.api.DeleteMessage(ctx(t), tok, chat, userMsg), 403, buko.CodeMessageForbidden)
	_, err = e.api.EditMessageText(ctx(t), tok, buko.EditMessageTextParams{ChatID: chat, MessageID: "999", Text: "x"})
	wantCode(t, err, 400, buko.CodeBadRequest)
	_, err = e.api.EditMessageText(ctx(t), tok, buko.EditMessageTextParams{ChatID: chat, MessageID: m.MessageID, Text: ""})
	wantCode(t, err, 400, buko.CodeBadRequest)

	// Another bot's message in a shared group.
	grp := e.group("Both", []string{u}, []string{official, other})
	om, err := e.api.SendMessage(ctx(t), otherTok, buko.SendMessageParams{ChatID: grp, Text: "other's"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.api.EditMessageText(ctx(t), tok, buko.EditMessageTextParams{ChatID: grp, MessageID: om.MessageID, Text: "x"})
	wantCode(t, err, 403, buko.CodeMessageForbidden)
	wantCode(t, e.api.DeleteMessage(ctx(t), tok, grp, om.MessageID), 403, buko.CodeMessageForbidden)

	if err := e.api.DeleteMessage(ctx(t), tok, chat, m.MessageID); err != nil {
		t.Fatal(err)
	}
	tr, err := e.sc.Transcript(ctx(e.t), chat, "")
	e.must(err)
	for _, x := range tr {
		if x.MessageID == m.MessageID {
			t.Fatal("deleted message still in the transcript")
		}
	}
	wantCode(t, e.api.DeleteMessage(ctx(t), tok, chat, m.MessageID), 400, buko.CodeBadRequest)
	_, err = e.api.SendMessage(ctx(t), tok, buko.SendMessageParams{ChatID: chat, Text: "re", ReplyToMessageID: m.MessageID})
	wantCode(t, err, 400, buko.CodeBadRequest)
}

func TestChatAction(t *testing.T) {
	e := newEnv(t, sim.Options{})
	botID, tok := e.bot(sim.BotSettings{Handle: "act_bot"})
	u := e.user("Tom")
	chat := e.start(u, botID)
	if err := e.api.SendChatAction(ctx(t), tok, chat, "typing"); err != nil {
		t.Fatal(err)
	}
	cv, err := e.sc.Chat(ctx(e.t), chat)
	e.must(err)
	if len(cv.Actions) != 1 || cv.Actions[0].Action != "typing" || cv.Actions[0].BotID != botID {
		t.Fatalf("chat view actions: %+v", cv.Actions)
	}
	status, _, env := e.rawCall(tok, "sendChatAction", "application/json", []byte(`{"chat_id":"`+chat+`","action":"dancing"}`))
	if status != 400 || env.Code != buko.CodeBadRequest {
		t.Fatalf("bad action: HTTP %d %+v", status, env)
	}
	status, _, env = e.rawCall(tok, "sendChatAction", "application/json", []byte(`{"chat_id":"`+chat+`","action":"upload_photo"}`))
	if status != 200 || !env.OK || string(env.Result) != "true" {
		t.Fatalf("sendChatAction result: HTTP %d %+v", status, env)
	}
}

// multipartBody builds a form; files maps a field to (filename, content type, data).
type part struct {
	name, filename, ctype string
	data                  []byte
}

func multipartBody(t *testing.T, parts ...part) (string, []byte) {
	t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	for _, p := range parts {
		h := textproto.MIMEHeader{}
		if p.filename != "" {
			h.Set("Content-Disposition", multipart.FileContentDisposition(p.name, p.filename))
		} else {
			h.Set("Content-Disposition", `form-data; name="`+p.name+`"`)
		}
		if p.ctype != "" {
			h.Set("Content-Type", p.ctype)
		}
		w, err := mw.CreatePart(h)
		if err != nil {
			t.Fatal(err)
		}
		w.Write(p.data)
	}
	mw.Close()
	return mw.FormDataContentType(), buf.Bytes()
}

func TestMedia(t *testing.T) {
	e := newEnv(t, sim.Options{})
	botID, tok := e.bot(sim.BotSettings{Handle: "media_bot"})
	u := e.user("Mia")
	chat := e.start(u, botID)
	q := e.say(chat, u, "send me the chart")
	png := []byte("\x89PNG\r\n\x1a\n" + strings.Repeat("x", 100))

	m, err := e.api.SendPhoto(ctx(t), tok, buko.SendMediaParams{ChatID: chat, Caption: "Here is the chart.", ReplyToMessageID: q, FileName: "chart.png", MimeType: "image/png", Data: png})
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Photo) != 1 || m.Photo[0].MimeType != "image/png" || m.Photo[0].FileSize != int64(len(png)) ||
		!strings.HasPrefix(m.Photo[0].FileID, "media/"+chat+"/") || m.Caption != "Here is the chart." || m.ReplyToMessage == nil {
		t.Fatalf("sendPhoto result: %+v", m)
	}
	resp, err := e.srv.Client().Get(e.srv.URL + "/sim/" + m.Photo[0].FileID)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "image/png" || resp.ContentLength != int64(len(png)) {
		t.Fatalf("GET the file: HTTP %d %s %d", resp.StatusCode, resp.Header.Get("Content-Type"), resp.ContentLength)
	}

	d, err := e.api.SendDocument(ctx(t), tok, buko.SendMediaParams{ChatID: chat, FileName: "report.pdf", MimeType: "application/pdf", Data: []byte("%PDF-1.4 test")})
	if err != nil {
		t.Fatal(err)
	}
	if d.Document == nil || d.Document.FileName != "report.pdf" || d.Document.MimeType != "application/pdf" || d.Document.FileSize != 13 {
		t.Fatalf("sendDocument result: %+v", d)
	}

	chatField := part{name: "chat_id", data: []byte(chat)}
	cases := []struct {
		name, method string
		parts        []part
		status       int
		code         string
	}{
		{"photo not an image", "sendPhoto", []part{chatField, {name: "photo", filename: "a.txt", ctype: "text/plain", data: []byte("hi")}}, 400, buko.CodeBadRequest},
		{"photo as URL field", "sendPhoto", []part{chatField, {name: "photo_url", data: []byte("http://169.254.169.254/")}}, 400, buko.CodeBadRequest},
		{"url field", "sendDocument", []part{chatField, {name: "url", data: []byte("http://example.com/x")}, {name: "document", filename: "x", data: []byte("x")}}, 400, buko.CodeBadRequest},
		{"file_url field", "sendDocument", []part{chatField, {name: "file_url", data: []byte("http://example.com/x")}}, 400, buko.CodeBadRequest},
		{"document_url field", "sendDocument", []part{chatField, {name: "document_url", data: []byte("http://example.com/x")}}, 400, buko.CodeBadRequest},
		{"photo as text", "sendPhoto", []part{chatField, {name: "photo", data: []byte("http://example.com/a.png")}}, 400, buko.CodeBadRequest},
		{"no file", "sendDocument", []part{chatField}, 400, buko.CodeBadRequest},
		{"no chat", "sendDocument", []part{{name: "document", filename: "x", data: []byte("x")}}, 400, buko.CodeBadRequest},
		{"long caption", "sendDocument", []part{chatField, {name: "caption", data: []byte(strings.Repeat("c", 5001))}, {name: "document", filename: "x", data: []byte("x")}}, 400, buko.CodeBadRequest},
		{"photo over 20 MB", "sendPhoto", []part{chatField, {name: "photo", filename: "big.png", ctype: "image/png", data: make([]byte, buko.MaxPhotoBytes+1)}}, 413, buko.CodePayloadTooLarge},
		{"document over 50 MB", "sendDocument", []part{chatField, {name: "document", filename: "big.bin", data: make([]byte, buko.MaxDocumentSize+1)}}, 413, buko.CodePayloadTooLarge},
		{"unknown chat", "sendDocument", []part{{name: "chat_id", data: []byte("spc_nope")}, {name: "document", filename: "x", data: []byte("x")}}, 404, buko.CodeChatNotFound},
	}
	for _, c := range cases {
		ct, body := multipartBody(t, c.parts...)
		status, _, env := e.rawCall(tok, c.method, ct, body)
		if status != c.status || env.Code != c.code {
			t.Errorf("%s: want HTTP %d %s, got %d %s (%s)", c.name, c.status, c.code, status, env.Code, env.Description)
		}
	}
	// Exactly at the limit is accepted.
	ct, body := multipartBody(t, chatField, part{name: "photo", filename: "max.png", ctype: "image/png", data: make([]byte, buko.MaxPhotoBytes)})
	if status, _, env := e.rawCall(tok, "sendPhoto", ct, body); status != 200 {
		t.Errorf("photo of exactly 20 MB: HTTP %d %+v", status, env)
	}
	// JSON is not a media upload.
	if status, _, _ := e.rawCall(tok, "sendPhoto", "application/json", []byte(`{"chat_id":"`+chat+`","photo":"http://x/y.png"}`)); status != 400 {
		t.Errorf("JSON sendPhoto: HTTP %d", status)
	}
}
