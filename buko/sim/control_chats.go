package sim

// The control API's chats: the /start flow, groups, listing, block and stop,
// group members.

import (
	"net/http"
	"strings"
	"unicode/utf8"

	"buko.app/agentrunner/buko"
)

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

func (s *Server) newChatLocked(typ, title string) *chat {
	c := &chat{id: s.state.newID("spc_"), typ: typ, title: title, created: s.now().Unix()}
	s.state.chats[c.id] = c
	s.state.chatList = append(s.state.chatList, c)
	return c
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
