package sim

import (
	"net/http"
	"strconv"
	"strings"
	"unicode/utf8"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/httpapi"
)

// controlMux routes the control API (ARCHITECTURE.md §4, plus the reads the
// web page needs). Answers are bare JSON; errors use the Bot API envelope.
func (s *Server) controlMux() *http.ServeMux {
	m := http.NewServeMux()
	m.HandleFunc("POST /sim/bots", s.control.Func(s.ctlCreateBot))
	m.HandleFunc("GET /sim/bots", s.control.Func(s.ctlListBots))
	m.HandleFunc("GET /sim/bots/{bot_id}", s.control.Func(s.ctlGetBot))
	m.HandleFunc("PATCH /sim/bots/{bot_id}", s.control.Func(s.ctlPatchBot))
	m.HandleFunc("POST /sim/bots/{bot_id}/rotate-token", s.control.Func(s.ctlRotateToken))
	m.HandleFunc("POST /sim/bots/{bot_id}/raw-updates", s.control.Func(s.ctlRawUpdate))
	m.HandleFunc("POST /sim/users", s.control.Func(s.ctlCreateUser))
	m.HandleFunc("GET /sim/users", s.control.Func(s.ctlListUsers))
	m.HandleFunc("POST /sim/chats/private", s.control.Func(s.ctlStartPrivate))
	m.HandleFunc("POST /sim/chats/group", s.control.Func(s.ctlCreateGroup))
	m.HandleFunc("GET /sim/chats", s.control.Func(s.ctlListChats))
	m.HandleFunc("GET /sim/chats/{chat_id}", s.control.Func(s.ctlGetChat))
	m.HandleFunc("POST /sim/chats/{chat_id}/messages", s.control.Func(s.ctlPostMessage))
	m.HandleFunc("GET /sim/chats/{chat_id}/messages", s.control.Func(s.ctlTranscript))
	m.HandleFunc("PATCH /sim/chats/{chat_id}/messages/{message_id}", s.control.Func(s.ctlEditMessage))
	m.HandleFunc("POST /sim/chats/{chat_id}/block", s.control.Func(s.ctlBlock))
	m.HandleFunc("POST /sim/chats/{chat_id}/stop", s.control.Func(s.ctlStop))
	m.HandleFunc("POST /sim/chats/{chat_id}/members", s.control.Func(s.ctlAddMember))
	m.HandleFunc("DELETE /sim/chats/{chat_id}/members/{member_id}", s.control.Func(s.ctlRemoveMember))
	m.HandleFunc("GET /sim/media/{chat_id}/{file}", s.control.Func(s.ctlMedia))
	m.HandleFunc("GET /sim/stats", s.control.Func(s.ctlStats))
	m.HandleFunc("GET /sim/chaos", s.control.Func(s.ctlGetChaos))
	m.HandleFunc("PUT /sim/chaos", s.control.Func(s.ctlPutChaos))
	m.HandleFunc("/sim/", s.control.Func(func(w http.ResponseWriter, r *http.Request) (any, error) {
		return nil, errNotFound("no control endpoint %s %s", r.Method, sanitize(r.URL.Path, 100))
	}))
	return m
}

// ---- bots ----

// BotView is a bot as the control API lists it (never with its token).
type BotView struct {
	BotID                  string `json:"bot_id"`
	Handle                 string `json:"handle"`
	DisplayName            string `json:"display_name"`
	Tier                   string `json:"tier"`
	Official               bool   `json:"official"`
	GatewayConnectionLimit int    `json:"gateway_connection_limit"`
	ConnectionPolicy       string `json:"connection_policy"`
	GatewayOpen            int    `json:"gateway_open"`
	PendingUpdates         int    `json:"pending_updates"`
	LastUpdateID           string `json:"last_update_id"`
	AckedUpdateID          string `json:"acked_update_id"`
}

// botViewLocked needs Server.mu (read) held.
func botViewLocked(b *bot) BotView {
	v := BotView{
		BotID: b.id, Handle: b.handle, DisplayName: b.prof.displayName, Tier: b.prof.tier,
		Official: b.prof.official, GatewayConnectionLimit: b.prof.connLimit, ConnectionPolicy: b.prof.policy,
	}
	b.mu.Lock()
	v.GatewayOpen = len(b.conns)
	v.PendingUpdates = len(b.log)
	v.LastUpdateID = strconv.FormatUint(b.lastID, 10)
	if b.acked > 0 {
		v.AckedUpdateID = strconv.FormatUint(b.acked, 10)
	}
	b.mu.Unlock()
	return v
}

type botReq struct {
	Handle                 string  `json:"handle"`
	DisplayName            *string `json:"display_name"`
	Tier                   *string `json:"tier"`
	Official               *bool   `json:"official"`
	GatewayConnectionLimit *int    `json:"gateway_connection_limit"`
	ConnectionPolicy       *string `json:"connection_policy"`
}

// apply checks the settable fields of req and sets them on p.
func (req *botReq) apply(p *profile) *apiError {
	if req.DisplayName != nil {
		n := utf8.RuneCountInString(*req.DisplayName)
		if n < 1 || n > 64 || !utf8.ValidString(*req.DisplayName) {
			return errBadRequest("display_name must have 1 to 64 characters")
		}
		p.displayName = *req.DisplayName
	}
	if req.Tier != nil {
		if _, ok := limitsFor(*req.Tier); !ok {
			return errBadRequest("tier must be free, pro, team or official")
		}
		p.tier = *req.Tier
	}
	if req.Official != nil {
		p.official = *req.Official
	}
	if req.GatewayConnectionLimit != nil {
		if n := *req.GatewayConnectionLimit; n < 1 || n > 100 {
			return errBadRequest("gateway_connection_limit must be between 1 and 100")
		}
		p.connLimit = *req.GatewayConnectionLimit
	}
	if req.ConnectionPolicy != nil {
		if v := *req.ConnectionPolicy; v != PolicyRejectNew && v != PolicyReplaceOldest {
			return errBadRequest("connection_policy must be reject_new or replace_oldest")
		}
		p.policy = *req.ConnectionPolicy
	}
	return nil
}

// CreatedBot is the answer of POST /sim/bots: the bot and its token, the
// only time the simulator shows it (as Buko shows a token once).
type CreatedBot struct {
	BotView
	Token string `json:"token"`
}

func (s *Server) ctlCreateBot(w http.ResponseWriter, r *http.Request) (any, error) {
	var req botReq
	if aerr := readJSON(w, r, false, &req); aerr != nil {
		return nil, aerr
	}
	p := profile{tier: TierOfficial, official: true, connLimit: 1, policy: PolicyRejectNew}
	if aerr := req.apply(&p); aerr != nil {
		return nil, aerr
	}
	if req.Handle != "" && !handleRE.MatchString(req.Handle) {
		return nil, errBadRequest("handle must be 3 to 32 of [A-Za-z0-9_], starting with a letter")
	}
	tok, sum := newToken()
	s.mu.Lock()
	num := uint64(len(s.state.botList)) + 1
	handle := req.Handle
	if handle == "" {
		handle = "sim_bot_" + strconv.FormatUint(num, 10)
		for s.state.handles[lower(handle)] != "" {
			handle += "x"
		}
	}
	if s.state.handles[lower(handle)] != "" {
		s.mu.Unlock()
		return nil, errConflict("handle @%s is taken", handle)
	}
	if p.displayName == "" {
		p.displayName = handle
	}
	b := &bot{id: s.state.newID("bot_"), handle: handle, num: num, prof: p, tokenHash: sum}
	newBotDelivery(b, s.state.seed)
	s.state.bots[b.id] = b
	s.state.botList = append(s.state.botList, b)
	s.state.byToken[sum] = b
	s.state.handles[lower(handle)] = b.id
	out := CreatedBot{BotView: botViewLocked(b), Token: tok}
	s.mu.Unlock()
	s.log.Debug().Str("bot_id", b.id).Msg("sim: bot created")
	return out, nil
}

func (s *Server) ctlListBots(w http.ResponseWriter, r *http.Request) (any, error) {
	s.mu.RLock()
	out := make([]BotView, 0, len(s.state.botList))
	for _, b := range s.state.botList {
		out = append(out, botViewLocked(b))
	}
	s.mu.RUnlock()
	return out, nil
}

func (s *Server) ctlGetBot(w http.ResponseWriter, r *http.Request) (any, error) {
	s.mu.RLock()
	b := s.state.bots[r.PathValue("bot_id")]
	if b == nil {
		s.mu.RUnlock()
		return nil, errNotFound("no bot %q", sanitize(r.PathValue("bot_id"), 40))
	}
	v := botViewLocked(b)
	s.mu.RUnlock()
	return v, nil
}

// ctlPatchBot changes a bot's settings. A lower connection limit applies to
// new connections only; open sockets stay.
func (s *Server) ctlPatchBot(w http.ResponseWriter, r *http.Request) (any, error) {
	var req botReq
	if aerr := readJSON(w, r, false, &req); aerr != nil {
		return nil, aerr
	}
	if req.Handle != "" {
		return nil, errBadRequest("a bot's handle cannot change")
	}
	s.mu.Lock()
	b := s.state.bots[r.PathValue("bot_id")]
	if b == nil {
		s.mu.Unlock()
		return nil, errNotFound("no bot %q", sanitize(r.PathValue("bot_id"), 40))
	}
	p := b.prof
	if aerr := req.apply(&p); aerr != nil {
		s.mu.Unlock()
		return nil, aerr
	}
	b.prof = p
	v := botViewLocked(b)
	s.mu.Unlock()
	return v, nil
}

// ctlRotateToken issues a new token: the old one fails at once, and open
// Gateway sockets are closed with 4001.
func (s *Server) ctlRotateToken(w http.ResponseWriter, r *http.Request) (any, error) {
	tok, sum := newToken()
	s.mu.Lock()
	b := s.state.bots[r.PathValue("bot_id")]
	if b == nil {
		s.mu.Unlock()
		return nil, errNotFound("no bot %q", sanitize(r.PathValue("bot_id"), 40))
	}
	delete(s.state.byToken, b.tokenHash)
	b.tokenHash = sum
	s.state.byToken[sum] = b
	b.mu.Lock()
	for len(b.conns) > 0 {
		b.conns[0].closeLocked(closeTokenRevoked, "token rotated")
	}
	b.mu.Unlock()
	s.mu.Unlock()
	s.log.Info().Str("bot_id", b.id).Msg("sim: bot token rotated")
	return map[string]string{"token": tok}, nil
}

// ---- users ----

// UserView is a user of the control API.
type UserView struct {
	UserID      string `json:"user_id"`
	DisplayName string `json:"display_name"`
	Handle      string `json:"handle,omitempty"`
}

func (s *Server) ctlCreateUser(w http.ResponseWriter, r *http.Request) (any, error) {
	var req struct {
		DisplayName string `json:"display_name"`
		Handle      string `json:"handle"`
	}
	if aerr := readJSON(w, r, false, &req); aerr != nil {
		return nil, aerr
	}
	if req.DisplayName == "" {
		req.DisplayName = req.Handle
	}
	if n := utf8.RuneCountInString(req.DisplayName); n < 1 || n > 64 || !utf8.ValidString(req.DisplayName) {
		return nil, errBadRequest("display_name must have 1 to 64 characters")
	}
	if req.Handle != "" && !handleRE.MatchString(req.Handle) {
		return nil, errBadRequest("handle must be 3 to 32 of [A-Za-z0-9_], starting with a letter")
	}
	s.mu.Lock()
	if req.Handle != "" && s.state.handles[lower(req.Handle)] != "" {
		s.mu.Unlock()
		return nil, errConflict("handle @%s is taken", req.Handle)
	}
	u := &user{id: s.state.newID("usr_"), displayName: req.DisplayName, handle: req.Handle}
	s.state.users[u.id] = u
	s.state.userList = append(s.state.userList, u)
	if u.handle != "" {
		s.state.handles[lower(u.handle)] = u.id
	}
	s.mu.Unlock()
	return UserView{UserID: u.id, DisplayName: u.displayName, Handle: u.handle}, nil
}

func (s *Server) ctlListUsers(w http.ResponseWriter, r *http.Request) (any, error) {
	s.mu.RLock()
	out := make([]UserView, 0, len(s.state.userList))
	for _, u := range s.state.userList {
		out = append(out, UserView{UserID: u.id, DisplayName: u.displayName, Handle: u.handle})
	}
	s.mu.RUnlock()
	return out, nil
}

// ---- chats ----

// ChatView is a chat of the control API. Status is the bot's status in a
// private chat (member, left, kicked).
type ChatView struct {
	ChatID        string       `json:"chat_id"`
	Type          string       `json:"type"`
	Title         string       `json:"title,omitempty"`
	BotIDs        []string     `json:"bot_ids"`
	UserIDs       []string     `json:"user_ids"`
	Status        string       `json:"status,omitempty"`
	LastMessageID string       `json:"last_message_id,omitempty"`
	Actions       []ActionView `json:"actions,omitempty"`
}

// ActionView is a bot's chat action still showing.
type ActionView struct {
	BotID  string `json:"bot_id"`
	Action string `json:"action"`
}

func (s *Server) chatViewLocked(c *chat) ChatView {
	v := ChatView{ChatID: c.id, Type: c.typ, Title: c.title, BotIDs: []string{}, UserIDs: []string{}}
	if c.typ == buko.ChatPrivate {
		v.BotIDs = append(v.BotIDs, c.bot.id)
		v.UserIDs = append(v.UserIDs, c.user.id)
		v.Status = c.status
	} else {
		for _, b := range c.bots {
			v.BotIDs = append(v.BotIDs, b.id)
		}
		for _, u := range c.users {
			v.UserIDs = append(v.UserIDs, u.id)
		}
	}
	for i := len(c.msgs) - 1; i >= 0; i-- {
		if !c.msgs[i].deleted {
			v.LastMessageID = c.msgs[i].id
			break
		}
	}
	now := s.now()
	for _, b := range s.chatBots(c) {
		if a, ok := c.actions[b]; ok && now.Before(a.expires) {
			v.Actions = append(v.Actions, ActionView{BotID: b.id, Action: a.action})
		}
	}
	return v
}

// lookupLocked resolves the ids of a control request; a missing id is an
// error only if required. Server.mu is held.
func (s *Server) lookupUserLocked(id string, required bool) (*user, *apiError) {
	if id == "" {
		if required {
			return nil, errBadRequest("user_id is required")
		}
		return nil, nil
	}
	u := s.state.users[id]
	if u == nil {
		return nil, errNotFound("no user %q", sanitize(id, 40))
	}
	return u, nil
}

func (s *Server) lookupBotLocked(id string) (*bot, *apiError) {
	if id == "" {
		return nil, errBadRequest("bot_id is required")
	}
	b := s.state.bots[id]
	if b == nil {
		return nil, errNotFound("no bot %q", sanitize(id, 40))
	}
	return b, nil
}

func (s *Server) lookupChatLocked(id string) (*chat, *apiError) {
	c := s.state.chats[id]
	if c == nil {
		return nil, errNotFound("no chat %q", sanitize(id, 40))
	}
	return c, nil
}

func (s *Server) newChatLocked(typ, title string) *chat {
	c := &chat{id: s.state.newID("spc_"), typ: typ, title: title, created: s.now().Unix()}
	s.state.chats[c.id] = c
	s.state.chatList = append(s.state.chatList, c)
	return c
}

// postUserMessageLocked appends a user's message and delivers it.
func (s *Server) postUserMessageLocked(c *chat, u *user, text string, reply *message) *message {
	ents, targets := parseEntities(text)
	m := &message{user: u, text: text, entities: ents, targets: targets, replyTo: reply, date: s.now().Unix()}
	c.append(m)
	s.deliverLocked(c, m)
	return m
}

// ctlStartPrivate is the /start flow: it creates (or reopens) the private
// chat of the user and the bot, sends my_chat_member (→ member) if the bot
// was not a member, then posts a visible /start message from the user.
func (s *Server) ctlStartPrivate(w http.ResponseWriter, r *http.Request) (any, error) {
	var req struct {
		UserID string `json:"user_id"`
		BotID  string `json:"bot_id"`
	}
	if aerr := readJSON(w, r, false, &req); aerr != nil {
		return nil, aerr
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	u, aerr := s.lookupUserLocked(req.UserID, true)
	if aerr != nil {
		return nil, aerr
	}
	b, aerr := s.lookupBotLocked(req.BotID)
	if aerr != nil {
		return nil, aerr
	}
	key := [2]string{u.id, b.id}
	c := s.state.private[key]
	if c == nil {
		c = s.newChatLocked(buko.ChatPrivate, "")
		c.user, c.bot, c.status = u, b, buko.MemberLeft
		s.state.private[key] = c
	}
	if c.status != buko.MemberMember {
		old := c.status
		c.status = buko.MemberMember
		s.memberChangeLocked(b, c, u, old, buko.MemberMember)
	}
	m := s.postUserMessageLocked(c, u, "/start", nil)
	return map[string]string{"chat_id": c.id, "message_id": m.id}, nil
}

// ctlCreateGroup creates a group; every bot in it gets my_chat_member
// (left → member) from the first user.
func (s *Server) ctlCreateGroup(w http.ResponseWriter, r *http.Request) (any, error) {
	var req struct {
		Title   string   `json:"title"`
		UserIDs []string `json:"user_ids"`
		BotIDs  []string `json:"bot_ids"`
	}
	if aerr := readJSON(w, r, false, &req); aerr != nil {
		return nil, aerr
	}
	if n := utf8.RuneCountInString(req.Title); n < 1 || n > 128 || strings.TrimSpace(req.Title) == "" {
		return nil, errBadRequest("title must have 1 to 128 characters")
	}
	if len(req.UserIDs) == 0 {
		return nil, errBadRequest("user_ids must name at least one user (the first one creates the group)")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var users []*user
	var bots []*bot
	for _, id := range req.UserIDs {
		u, aerr := s.lookupUserLocked(id, true)
		if aerr != nil {
			return nil, aerr
		}
		if !containsUser(users, u) {
			users = append(users, u)
		}
	}
	for _, id := range req.BotIDs {
		b, aerr := s.lookupBotLocked(id)
		if aerr != nil {
			return nil, aerr
		}
		if !containsBot(bots, b) {
			bots = append(bots, b)
		}
	}
	c := s.newChatLocked(buko.ChatGroup, req.Title)
	c.users, c.bots = users, bots
	for _, b := range bots {
		s.memberChangeLocked(b, c, users[0], buko.MemberLeft, buko.MemberMember)
	}
	return map[string]string{"chat_id": c.id}, nil
}

func containsUser(list []*user, u *user) bool {
	for _, x := range list {
		if x == u {
			return true
		}
	}
	return false
}

func containsBot(list []*bot, b *bot) bool {
	for _, x := range list {
		if x == b {
			return true
		}
	}
	return false
}

func (s *Server) ctlListChats(w http.ResponseWriter, r *http.Request) (any, error) {
	userID, botID := r.URL.Query().Get("user_id"), r.URL.Query().Get("bot_id")
	s.mu.RLock()
	defer s.mu.RUnlock()
	u, aerr := s.lookupUserLocked(userID, false)
	if aerr != nil {
		return nil, aerr
	}
	var b *bot
	if botID != "" {
		if b, aerr = s.lookupBotLocked(botID); aerr != nil {
			return nil, aerr
		}
	}
	out := []ChatView{}
	for _, c := range s.state.chatList {
		if u != nil && !c.hasUser(u) || b != nil && !c.hasBot(b) {
			continue
		}
		out = append(out, s.chatViewLocked(c))
	}
	return out, nil
}

func (s *Server) ctlGetChat(w http.ResponseWriter, r *http.Request) (any, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	c, aerr := s.lookupChatLocked(r.PathValue("chat_id"))
	if aerr != nil {
		return nil, aerr
	}
	return s.chatViewLocked(c), nil
}

// ctlPostMessage posts a user's message: into a private chat the bot has
// been started in, or a group the user belongs to.
func (s *Server) ctlPostMessage(w http.ResponseWriter, r *http.Request) (any, error) {
	var req struct {
		UserID           string `json:"user_id"`
		Text             string `json:"text"`
		ReplyToMessageID string `json:"reply_to_message_id"`
	}
	if aerr := readJSON(w, r, false, &req); aerr != nil {
		return nil, aerr
	}
	if aerr := checkText("text", req.Text, true); aerr != nil {
		return nil, aerr
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c, aerr := s.lookupChatLocked(r.PathValue("chat_id"))
	if aerr != nil {
		return nil, aerr
	}
	u, aerr := s.lookupUserLocked(req.UserID, true)
	if aerr != nil {
		return nil, aerr
	}
	if !c.hasUser(u) {
		return nil, errForbidden("NOT_A_MEMBER", "the user is not in this chat")
	}
	if c.typ == buko.ChatPrivate && c.status != buko.MemberMember {
		return nil, errConflict("the user has %s the bot; start it again (POST /sim/chats/private) first", map[string]string{buko.MemberKicked: "blocked", buko.MemberLeft: "stopped"}[c.status])
	}
	reply, aerr := replyTargetLocked(c, req.ReplyToMessageID)
	if aerr != nil {
		return nil, aerr
	}
	m := s.postUserMessageLocked(c, u, req.Text, reply)
	return map[string]string{"message_id": m.id}, nil
}

// ctlEditMessage is a human edit: the bots that saw the message (and any the
// new text addresses) get edited_message with edit_date.
func (s *Server) ctlEditMessage(w http.ResponseWriter, r *http.Request) (any, error) {
	var req struct {
		UserID string `json:"user_id"`
		Text   string `json:"text"`
	}
	if aerr := readJSON(w, r, false, &req); aerr != nil {
		return nil, aerr
	}
	if aerr := checkText("text", req.Text, true); aerr != nil {
		return nil, aerr
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c, aerr := s.lookupChatLocked(r.PathValue("chat_id"))
	if aerr != nil {
		return nil, aerr
	}
	m := c.message(r.PathValue("message_id"))
	if m == nil {
		return nil, errNotFound("no message %q in this chat", sanitize(r.PathValue("message_id"), 30))
	}
	if m.user == nil {
		return nil, errForbidden("NOT_AUTHOR", "only a user's own messages can be edited here; bots edit with editMessageText")
	}
	if req.UserID != "" && req.UserID != m.user.id {
		return nil, errForbidden("NOT_AUTHOR", "the message was written by another user")
	}
	if m.text == "" {
		return nil, errBadRequest("the message has no text")
	}
	m.text = req.Text
	m.entities, m.targets = parseEntities(req.Text)
	m.editDate = s.now().Unix()
	s.deliverEditLocked(c, m)
	return map[string]any{"message_id": m.id, "edit_date": m.editDate}, nil
}

// TranscriptMessage is one message of GET /sim/chats/{chat_id}/messages.
type TranscriptMessage struct {
	MessageID        string           `json:"message_id"`
	FromKind         string           `json:"from_kind"` // "user" or "bot"
	FromID           string           `json:"from_id"`   // control-API user id or bot id
	FromName         string           `json:"from_name"`
	Text             string           `json:"text"`
	Caption          string           `json:"caption,omitempty"`
	ReplyToMessageID string           `json:"reply_to_message_id,omitempty"`
	Date             int64            `json:"date"`
	EditDate         int64            `json:"edit_date,omitempty"`
	Entities         []buko.Entity    `json:"entities,omitempty"`
	Photo            []buko.PhotoSize `json:"photo,omitempty"`
	Document         *buko.Document   `json:"document,omitempty"`
}

// ctlTranscript lists a chat's messages oldest first, without deleted ones;
// ?after=<message_id> lists only newer ones.
func (s *Server) ctlTranscript(w http.ResponseWriter, r *http.Request) (any, error) {
	var after uint64
	if a := r.URL.Query().Get("after"); a != "" {
		v, err := strconv.ParseUint(a, 10, 64)
		if err != nil {
			return nil, errBadRequest("after must be a message_id")
		}
		after = v
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	c, aerr := s.lookupChatLocked(r.PathValue("chat_id"))
	if aerr != nil {
		return nil, aerr
	}
	out := []TranscriptMessage{}
	for i := min(after, uint64(len(c.msgs))); i < uint64(len(c.msgs)); i++ {
		m := c.msgs[i]
		if m.deleted {
			continue
		}
		t := TranscriptMessage{MessageID: m.id, Text: m.text, Caption: m.caption, Date: m.date,
			EditDate: m.editDate, Entities: m.entities, Photo: m.photo, Document: m.doc}
		if m.bot != nil {
			t.FromKind, t.FromID, t.FromName = "bot", m.bot.id, m.bot.prof.displayName
		} else {
			t.FromKind, t.FromID, t.FromName = "user", m.user.id, m.user.displayName
		}
		if m.replyTo != nil {
			t.ReplyToMessageID = m.replyTo.id
		}
		out = append(out, t)
	}
	return out, nil
}

// privateOfUserLocked resolves a private chat and checks the user is its user.
func (s *Server) privateOfUserLocked(r *http.Request, userID string) (*chat, *user, *apiError) {
	c, aerr := s.lookupChatLocked(r.PathValue("chat_id"))
	if aerr != nil {
		return nil, nil, aerr
	}
	if c.typ != buko.ChatPrivate {
		return nil, nil, errBadRequest("only a private bot chat can be blocked or stopped")
	}
	u, aerr := s.lookupUserLocked(userID, true)
	if aerr != nil {
		return nil, nil, aerr
	}
	if c.user != u {
		return nil, nil, errForbidden("NOT_A_MEMBER", "the user is not in this chat")
	}
	return c, u, nil
}

// ctlBlock: the user blocks the bot (my_chat_member → kicked); the bot then
// gets BOT_BLOCKED. Starting the bot again unblocks it.
func (s *Server) ctlBlock(w http.ResponseWriter, r *http.Request) (any, error) {
	return s.setPrivateStatus(w, r, buko.MemberKicked)
}

// ctlStop: the user stops the bot without blocking it (my_chat_member →
// left); the bot then gets CHAT_FORBIDDEN until the user starts it again.
func (s *Server) ctlStop(w http.ResponseWriter, r *http.Request) (any, error) {
	return s.setPrivateStatus(w, r, buko.MemberLeft)
}

func (s *Server) setPrivateStatus(w http.ResponseWriter, r *http.Request, status string) (any, error) {
	var req struct {
		UserID string `json:"user_id"`
	}
	if aerr := readJSON(w, r, false, &req); aerr != nil {
		return nil, aerr
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c, u, aerr := s.privateOfUserLocked(r, req.UserID)
	if aerr != nil {
		return nil, aerr
	}
	if c.status != status {
		old := c.status
		c.status = status
		if old == buko.MemberMember || status == buko.MemberMember {
			s.memberChangeLocked(c.bot, c, u, old, status)
		}
	}
	return map[string]string{"chat_id": c.id, "status": status}, nil
}

// ctlAddMember adds a user or a bot to a group; a bot gets my_chat_member
// (left → member) from by_user_id, or the group's first user.
func (s *Server) ctlAddMember(w http.ResponseWriter, r *http.Request) (any, error) {
	var req struct {
		UserID   string `json:"user_id"`
		BotID    string `json:"bot_id"`
		ByUserID string `json:"by_user_id"`
	}
	if aerr := readJSON(w, r, false, &req); aerr != nil {
		return nil, aerr
	}
	if (req.UserID == "") == (req.BotID == "") {
		return nil, errBadRequest("give exactly one of user_id and bot_id")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c, by, aerr := s.groupAndActorLocked(r, req.ByUserID)
	if aerr != nil {
		return nil, aerr
	}
	if req.UserID != "" {
		u, aerr := s.lookupUserLocked(req.UserID, true)
		if aerr != nil {
			return nil, aerr
		}
		if !c.hasUser(u) {
			c.users = append(c.users, u)
		}
	} else {
		b, aerr := s.lookupBotLocked(req.BotID)
		if aerr != nil {
			return nil, aerr
		}
		if !c.hasBot(b) {
			c.bots = append(c.bots, b)
			s.memberChangeLocked(b, c, by, buko.MemberLeft, buko.MemberMember)
		}
	}
	return s.chatViewLocked(c), nil
}

// ctlRemoveMember removes a user or a bot from a group; a bot gets
// my_chat_member (member → left) from ?by_user_id=, or the group's first user.
func (s *Server) ctlRemoveMember(w http.ResponseWriter, r *http.Request) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, by, aerr := s.groupAndActorLocked(r, r.URL.Query().Get("by_user_id"))
	if aerr != nil {
		return nil, aerr
	}
	id := r.PathValue("member_id")
	if b := s.state.bots[id]; b != nil {
		if c.hasBot(b) {
			c.bots = removeBot(c.bots, b)
			s.memberChangeLocked(b, c, by, buko.MemberMember, buko.MemberLeft)
		}
	} else if u := s.state.users[id]; u != nil {
		c.users = removeUser(c.users, u)
	} else {
		return nil, errNotFound("no user or bot %q", sanitize(id, 40))
	}
	return s.chatViewLocked(c), nil
}

func (s *Server) groupAndActorLocked(r *http.Request, byUserID string) (*chat, *user, *apiError) {
	c, aerr := s.lookupChatLocked(r.PathValue("chat_id"))
	if aerr != nil {
		return nil, nil, aerr
	}
	if c.typ != buko.ChatGroup {
		return nil, nil, errBadRequest("members can only be added to or removed from groups")
	}
	by, aerr := s.lookupUserLocked(byUserID, false)
	if aerr != nil {
		return nil, nil, aerr
	}
	if by == nil && len(c.users) > 0 {
		by = c.users[0]
	}
	return c, by, nil
}

// ctlMedia serves an uploaded file by its file_id (media/<chat>/<id>).
func (s *Server) ctlMedia(w http.ResponseWriter, r *http.Request) (any, error) {
	id := "media/" + r.PathValue("chat_id") + "/" + r.PathValue("file")
	s.mu.RLock()
	f := s.state.files[id]
	s.mu.RUnlock()
	if f == nil {
		return nil, errNotFound("no file %q", sanitize(id, 80))
	}
	h := w.Header()
	h.Set("Content-Type", f.mime)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Disposition", "attachment")
	h.Set("Content-Length", strconv.Itoa(len(f.data)))
	_, _ = w.Write(f.data)
	return httpapi.Written, nil
}

// ---- stats and chaos ----

func (s *Server) ctlStats(w http.ResponseWriter, r *http.Request) (any, error) {
	st := s.stats.snapshot()
	s.mu.RLock()
	st.Bots, st.Users, st.Chats = len(s.state.bots), len(s.state.users), len(s.state.chats)
	s.mu.RUnlock()
	return st, nil
}

func (s *Server) ctlGetChaos(w http.ResponseWriter, r *http.Request) (any, error) {
	return s.chaos.get(), nil
}

func (s *Server) ctlPutChaos(w http.ResponseWriter, r *http.Request) (any, error) {
	var cfg ChaosConfig
	if aerr := readJSON(w, r, false, &cfg); aerr != nil {
		return nil, aerr
	}
	if aerr := cfg.validate(); aerr != nil {
		return nil, aerr
	}
	s.chaos.set(cfg)
	s.log.Info().Uint64("seed", cfg.Seed).Msg("sim: chaos configured")
	return cfg, nil
}
