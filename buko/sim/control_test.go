package sim_test

import (
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/buko/sim"
	"buko.app/agentrunner/internal/testsupport"
)

func TestControlAPIAdminToken(t *testing.T) {
	e := newEnv(t, sim.Options{AdminToken: "s3cret"})
	botID, tok := e.bot(sim.BotSettings{Handle: "guarded"})
	for _, auth := range []string{"", "Bearer wrong", "Bot s3cret"} {
		req, _ := http.NewRequest("GET", e.srv.URL+"/sim/bots", nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := e.srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 401 {
			t.Errorf("auth %q: HTTP %d", auth, resp.StatusCode)
		}
	}
	// The Bot API is not behind the admin token.
	if me, err := e.api.GetMe(ctx(t), tok); err != nil || me.ID != botID {
		t.Fatalf("getMe: %v", err)
	}
	// Nor is the web page.
	resp, err := e.srv.Client().Get(e.srv.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("GET /: HTTP %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
}

func TestControlAPIListsAndTranscript(t *testing.T) {
	e := newEnv(t, sim.Options{})
	botID, tok := e.bot(sim.BotSettings{Handle: "list_bot", DisplayName: "Lister", Tier: "pro"})
	var bots []map[string]any // the wire's fields: no "token" among them
	e.must(e.sc.Do(ctx(t), "GET", "/sim/bots", nil, &bots))
	if len(bots) != 1 || bots[0]["bot_id"] != botID || bots[0]["handle"] != "list_bot" || bots[0]["display_name"] != "Lister" || bots[0]["tier"] != "pro" {
		t.Fatalf("GET /sim/bots: %v", bots)
	}
	if _, ok := bots[0]["token"]; ok {
		t.Fatal("GET /sim/bots shows a token")
	}
	raw := e.rawGet("/sim/bots")
	if strings.Contains(raw, string(tok)) {
		t.Fatal("a token leaked into GET /sim/bots")
	}

	u1, err := e.sc.CreateUser(ctx(t), "Ada", "ada")
	e.must(err)
	u2 := e.user("Bob")
	users, err := e.sc.Users(ctx(e.t))
	e.must(err)
	if len(users) != 2 || users[0] != (sim.UserView{UserID: u1.UserID, DisplayName: "Ada", Handle: "ada"}) {
		t.Fatalf("GET /sim/users: %+v", users)
	}
	if code := e.ctl("POST", "/sim/users", map[string]any{"display_name": "Other", "handle": "ADA"}, nil); code != 409 {
		t.Fatalf("duplicate handle: HTTP %d", code)
	}
	if code := e.ctl("POST", "/sim/bots", map[string]any{"handle": "list_bot"}, nil); code != 409 {
		t.Fatalf("duplicate bot handle: HTTP %d", code)
	}
	if code := e.ctl("POST", "/sim/bots", map[string]any{"handle": "x", "tier": "gold"}, nil); code != 400 {
		t.Fatalf("bad tier: HTTP %d", code)
	}

	priv := e.start(u1.UserID, botID)
	grp := e.group("Pair", []string{u1.UserID, u2}, []string{botID})
	chats, err := e.sc.Chats(ctx(e.t), u2, "")
	e.must(err)
	if len(chats) != 1 || chats[0].ChatID != grp || chats[0].Type != "group" || chats[0].Title != "Pair" ||
		!slices.Equal(chats[0].BotIDs, []string{botID}) || !slices.Equal(chats[0].UserIDs, []string{u1.UserID, u2}) {
		t.Fatalf("GET /sim/chats?user_id: %+v", chats)
	}
	chats, err = e.sc.Chats(ctx(e.t), u1.UserID, "")
	e.must(err)
	if len(chats) != 2 || chats[0].ChatID != priv || chats[0].Status != "member" || !slices.Equal(chats[0].BotIDs, []string{botID}) {
		t.Fatalf("chats of u1: %+v", chats)
	}
	if code := e.ctl("GET", "/sim/chats?user_id=usr_nobody", nil, nil); code != 404 {
		t.Fatalf("unknown user: HTTP %d", code)
	}

	m2 := e.say(priv, u1.UserID, "second")
	if _, err := e.api.SendMessage(ctx(t), tok, buko.SendMessageParams{ChatID: priv, Text: "third", ReplyToMessageID: m2}); err != nil {
		t.Fatal(err)
	}
	tr, err := e.sc.Transcript(ctx(e.t), priv, "")
	e.must(err)
	if len(tr) != 3 || tr[0].Text != "/start" || tr[0].FromKind != "user" || tr[0].FromID != u1.UserID || tr[0].Date == 0 ||
		tr[2].FromKind != "bot" || tr[2].FromID != botID || tr[2].ReplyToMessageID != m2 {
		t.Fatalf("transcript: %+v", tr)
	}
	tr, err = e.sc.Transcript(ctx(e.t), priv, m2)
	e.must(err)
	if len(tr) != 1 || tr[0].Text != "third" {
		t.Fatalf("after=%s: %+v", m2, tr)
	}
	tr, err = e.sc.Transcript(ctx(e.t), priv, "99")
	e.must(err)
	if len(tr) != 0 {
		t.Fatalf("after=99: %+v", tr)
	}
	if code := e.ctl("GET", "/sim/chats/"+priv+"/messages?after=x", nil, nil); code != 400 {
		t.Fatalf("after=x: HTTP %d", code)
	}
	if code := e.ctl("GET", "/sim/chats/spc_nope/messages", nil, nil); code != 404 {
		t.Fatalf("unknown chat: HTTP %d", code)
	}
	if code := e.ctl("POST", "/sim/chats/"+grp+"/messages", map[string]any{"user_id": e.user("Outsider"), "text": "hi"}, nil); code != 403 {
		t.Fatalf("non-member posts: HTTP %d", code)
	}
	if code := e.ctl("GET", "/sim/nothing", nil, nil); code != 404 {
		t.Fatalf("unknown control path: HTTP %d", code)
	}
	// curl -d sends form content type with a JSON body; the control API takes it.
	req, _ := http.NewRequest("POST", e.srv.URL+"/sim/users", strings.NewReader(`{"display_name":"Curl"}`))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("curl-style POST: HTTP %d", resp.StatusCode)
	}
}

func (e *env) rawGet(path string) string {
	e.t.Helper()
	resp, err := e.srv.Client().Get(e.srv.URL + path)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func TestStatsCounters(t *testing.T) {
	e := newEnv(t, sim.Options{})
	_, tok, u, chat := chatWithBot(e, sim.BotSettings{}) // 2 updates created, delivered by getUpdates, confirmed
	for i := 0; i < 3; i++ {
		if _, err := e.api.GetMe(ctx(t), tok); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.api.SendMessage(ctx(t), tok, buko.SendMessageParams{ChatID: chat, Text: "hi"}); err != nil {
		t.Fatal(err)
	}
	e.say(chat, u, "one")
	ws := e.connect(tok)
	up := ws.update()
	ws.ack(up.UpdateID)
	testsupport.Within(t, "ack counted", wait, func() bool { return e.stats().Acked == 3 })

	raw := e.rawGet("/sim/stats")
	var m map[string]any
	if err := json.Unmarshal([]byte(raw), &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"updates_created", "updates_delivered", "updates_redelivered", "acked", "gateway_open",
		"gateway_rejected_limit", "gateway_replaced", "max_concurrent_gateway_per_bot", "rest_calls", "rate_limited",
		"messages_sent_by_bots"} {
		if _, ok := m[k]; !ok {
			t.Errorf("stats lack %q", k)
		}
	}
	st := e.stats()
	if st.UpdatesCreated != 3 || st.UpdatesDelivered != 3 || st.UpdatesRedelivered != 0 || st.Acked != 3 ||
		st.GatewayOpen != 1 || st.MaxConcurrentGatewayPerBot != 1 || st.MessagesSentByBots != 1 ||
		st.RestCalls["getMe"] != 3 || st.RestCalls["sendMessage"] != 1 || st.RestCalls["getUpdates"] != 2 ||
		st.RestCalls["sendPhoto"] != 0 || st.Bots != 1 || st.Users != 1 || st.Chats != 1 {
		t.Fatalf("stats: %+v", st)
	}
	ws.close()
	testsupport.Within(t, "gateway_open = 0", wait, func() bool { return e.stats().GatewayOpen == 0 })
}

func TestPatchBot(t *testing.T) {
	e := newEnv(t, sim.Options{})
	botID, tok := e.bot(sim.BotSettings{Handle: "patch_bot", Tier: "free"})
	u := e.user("Pam")
	chat := e.start(u, botID)
	m, err := e.api.SendMessage(ctx(t), tok, buko.SendMessageParams{ChatID: chat, Text: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.api.EditMessageText(ctx(t), tok, buko.EditMessageTextParams{ChatID: chat, MessageID: m.MessageID, Text: "v2"})
	wantCode(t, err, 403, buko.CodeMethodNotAllowedForTier)
	v, err := e.sc.PatchBot(ctx(e.t), botID, sim.BotSettings{Tier: "team", DisplayName: "Patched", GatewayConnectionLimit: 3, ConnectionPolicy: "replace_oldest"})
	e.must(err)
	if v.Tier != "team" || v.DisplayName != "Patched" || v.GatewayConnectionLimit != 3 || v.ConnectionPolicy != "replace_oldest" {
		t.Fatalf("PATCH answer: %+v", v)
	}
	if _, err := e.api.EditMessageText(ctx(t), tok, buko.EditMessageTextParams{ChatID: chat, MessageID: m.MessageID, Text: "v2"}); err != nil {
		t.Fatalf("edit after the tier change: %v", err)
	}
	me, err := e.api.GetMe(ctx(t), tok)
	if err != nil || me.QuotaTier != "team" || me.GatewayConnectionLimit != 3 || !me.Capabilities.EditDeleteMessages {
		t.Fatalf("getMe after PATCH: %+v %v", me, err)
	}
	for _, bad := range []map[string]any{{"tier": "gold"}, {"gateway_connection_limit": 0}, {"connection_policy": "random"}, {"handle": "renamed"}} {
		if code := e.ctl("PATCH", "/sim/bots/"+botID, bad, nil); code != 400 {
			t.Errorf("PATCH %v: HTTP %d", bad, code)
		}
	}
	if code := e.ctl("PATCH", "/sim/bots/bot_nope", map[string]any{"tier": "pro"}, nil); code != 404 {
		t.Errorf("PATCH unknown bot: HTTP %d", code)
	}
	cfg, err := e.sc.Chaos(ctx(e.t))
	e.must(err)
	if cfg != (sim.ChaosConfig{}) {
		t.Errorf("GET /sim/chaos at start: %+v", cfg)
	}
}
