package sim_test

import (
	"slices"
	"testing"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/buko/sim"
)

func TestGroupPrivacyMode(t *testing.T) {
	e := newEnv(t, sim.Options{})
	a, tokA := e.bot(sim.BotSettings{Handle: "alpha_bot"})
	b, tokB := e.bot(sim.BotSettings{Handle: "beta_bot"})
	u := e.user("Gus")
	v := e.user("Vera")
	grp := e.group("Team", []string{u, v}, []string{a, b})

	for _, tk := range []token{tokA, tokB} {
		ups := e.poll(tk)
		if len(ups) != 1 || ups[0].MyChatMember == nil || ups[0].MyChatMember.NewChatMember.Status != "member" ||
			ups[0].MyChatMember.Chat.Type != "group" || ups[0].MyChatMember.Chat.Title != "Team" {
			t.Fatalf("group join: %+v", ups)
		}
	}

	e.say(grp, u, "hello everyone")             // nobody
	e.say(grp, u, "/help")                      // bare command: nobody
	e.say(grp, v, "/help@alpha_bot please")     // A
	e.say(grp, u, "hey @beta_bot look at this") // B
	e.say(grp, u, "@ALPHA_BOT in capitals")     // A
	e.say(grp, u, "mail me at x@beta_bot.com")  // nobody: not a mention
	e.say(grp, u, "/start@gamma_bot")           // nobody

	am, err := e.api.SendMessage(ctx(t), tokA, buko.SendMessageParams{ChatID: grp, Text: "I am alpha"})
	if err != nil {
		t.Fatal(err)
	}
	if am.Chat.Type != "group" || am.Chat.Title != "Team" {
		t.Fatalf("group chat in result: %+v", am.Chat)
	}
	bm, err := e.api.SendMessage(ctx(t), tokB, buko.SendMessageParams{ChatID: grp, Text: "@alpha_bot I am beta"})
	if err != nil {
		t.Fatal(err)
	}
	e.say(grp, v, "replying to alpha", am.MessageID) // A (reply to its own message)
	e.say(grp, v, "replying to beta", bm.MessageID)  // B

	upsA := e.poll(tokA)
	upsB := e.poll(tokB)
	wantA := []string{"/help@alpha_bot please", "@ALPHA_BOT in capitals", "replying to alpha"}
	wantB := []string{"hey @beta_bot look at this", "replying to beta"}
	if got := texts(upsA); !slices.Equal(got, wantA) {
		t.Errorf("alpha got %q, want %q", got, wantA)
	}
	if got := texts(upsB); !slices.Equal(got, wantB) {
		t.Errorf("beta got %q, want %q", got, wantB)
	}
	strictlyIncreasing(t, ids(upsA))

	cmd := upsA[0].Message
	if len(cmd.Entities) != 1 || cmd.Entities[0] != (buko.Entity{Type: "bot_command", Offset: 0, Length: 15}) {
		t.Errorf("command entity: %+v", cmd.Entities)
	}
	if cmd.Chat.Type != "group" || cmd.Chat.Title != "Team" || cmd.From == nil || cmd.From.DisplayName != "Vera" {
		t.Errorf("group message: %+v", cmd)
	}
	men := upsB[0].Message
	if len(men.Entities) != 1 || men.Entities[0] != (buko.Entity{Type: "mention", Offset: 4, Length: 9}) {
		t.Errorf("mention entity: %+v", men.Entities)
	}
	rep := upsA[2].Message
	if rep.ReplyToMessage == nil || rep.ReplyToMessage.MessageID != am.MessageID || rep.ReplyToMessage.From == nil ||
		rep.ReplyToMessage.From.ID != a || !rep.ReplyToMessage.From.IsBot {
		t.Errorf("reply: %+v", rep.ReplyToMessage)
	}
}

func TestEntitiesUTF16(t *testing.T) {
	e := newEnv(t, sim.Options{})
	a, tok := e.bot(sim.BotSettings{Handle: "utf_bot"})
	u := e.user("Uli")
	chat := e.start(u, a)
	e.poll(tok)
	e.say(chat, u, "😀 /go@utf_bot and @someone")
	ups := e.poll(tok)
	want := []buko.Entity{{Type: "bot_command", Offset: 3, Length: 11}, {Type: "mention", Offset: 19, Length: 8}}
	if len(ups) != 1 || !slices.Equal(ups[0].Message.Entities, want) {
		t.Fatalf("entities: %+v, want %+v", ups[0].Message.Entities, want)
	}
}

func TestGroupJoinLeave(t *testing.T) {
	e := newEnv(t, sim.Options{})
	a, tok := e.bot(sim.BotSettings{Handle: "jl_bot"})
	u := e.user("Jo")
	grp := e.group("Lobby", []string{u}, nil)
	e.must(errOf(e.sc.AddMember(ctx(e.t), grp, sim.Member{BotID: a, ByUserID: u})))
	if _, err := e.api.SendMessage(ctx(t), tok, buko.SendMessageParams{ChatID: grp, Text: "hi all"}); err != nil {
		t.Fatal(err)
	}
	e.must(errOf(e.sc.RemoveMember(ctx(e.t), grp, a, "")))
	_, err := e.api.SendMessage(ctx(t), tok, buko.SendMessageParams{ChatID: grp, Text: "still here?"})
	wantCode(t, err, 403, buko.CodeChatForbidden)
	ups := e.poll(tok)
	if len(ups) != 2 || ups[0].MyChatMember == nil || ups[1].MyChatMember == nil ||
		ups[0].MyChatMember.OldChatMember.Status != "left" || ups[0].MyChatMember.NewChatMember.Status != "member" ||
		ups[1].MyChatMember.OldChatMember.Status != "member" || ups[1].MyChatMember.NewChatMember.Status != "left" {
		t.Fatalf("join/leave updates: %+v", ups)
	}
	if ups[0].MyChatMember.From == nil || ups[0].MyChatMember.From.DisplayName != "Jo" {
		t.Fatalf("join from: %+v", ups[0].MyChatMember.From)
	}
	// A user joins: no update for the bot (it is not a member any more anyway).
	w := e.user("Wes")
	cv, err := e.sc.AddMember(ctx(e.t), grp, sim.Member{UserID: w})
	e.must(err)
	if !slices.Contains(cv.UserIDs, w) || len(cv.BotIDs) != 0 {
		t.Fatalf("members: %+v", cv)
	}
}

func TestHumanEdits(t *testing.T) {
	e := newEnv(t, sim.Options{})
	a, tokA := e.bot(sim.BotSettings{Handle: "edit_a"})
	b, tokB := e.bot(sim.BotSettings{Handle: "edit_b"})
	u := e.user("Ed")
	chat := e.start(u, a)
	mid := e.say(chat, u, "helo")
	grp := e.group("G", []string{u}, []string{a, b})
	gmid := e.say(grp, u, "@edit_a hi")
	e.poll(tokA)
	e.poll(tokB)

	res, err := e.sc.EditMessage(ctx(e.t), chat, mid, "", "hello")
	e.must(err)
	if res.MessageID != mid || res.EditDate == 0 {
		t.Fatalf("PATCH answer: %+v", res)
	}
	ups := e.poll(tokA)
	if len(ups) != 1 || ups[0].EditedMessage == nil || ups[0].EditedMessage.MessageID != mid ||
		ups[0].EditedMessage.Text != "hello" || ups[0].EditedMessage.EditDate == 0 || ups[0].EditedMessage.From == nil {
		t.Fatalf("edited_message: %+v", ups)
	}

	// In the group only the bot that saw the message gets the edit...
	e.must(errOf(e.sc.EditMessage(ctx(e.t), grp, gmid, "", "@edit_a hi there")))
	if ups := e.poll(tokA); len(ups) != 1 || ups[0].EditedMessage == nil {
		t.Fatalf("group edit to a: %+v", ups)
	}
	if ups := e.poll(tokB); len(ups) != 0 {
		t.Fatalf("group edit leaked to b: %+v", ups)
	}
	// ...and a bot the new text addresses gets it too.
	e.must(errOf(e.sc.EditMessage(ctx(e.t), grp, gmid, "", "@edit_a @edit_b hi")))
	if ups := e.poll(tokB); len(ups) != 1 || ups[0].EditedMessage == nil || ups[0].EditedMessage.Text != "@edit_a @edit_b hi" {
		t.Fatalf("group edit to b: %+v", ups)
	}

	// Bots' messages cannot be edited through the control API.
	bm, err := e.api.SendMessage(ctx(t), tokA, buko.SendMessageParams{ChatID: chat, Text: "bot text"})
	if err != nil {
		t.Fatal(err)
	}
	if code := e.ctl("PATCH", "/sim/chats/"+chat+"/messages/"+bm.MessageID, map[string]any{"text": "x"}, nil); code != 403 {
		t.Fatalf("editing a bot's message: HTTP %d", code)
	}
}
