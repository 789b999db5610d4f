package sim

import (
	"net/http"
)

// controlMux routes the control API (docs/architecture.md §4, plus the reads the
// web page needs). Answers are bare JSON; errors use the Bot API envelope
// (s.control, reply.go). The handlers live by resource: control_bots.go,
// control_users.go, control_chats.go, control_messages.go,
// control_stats.go (stats and chaos) and rawupdate.go; client.go is the
// typed Go client of this API.
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
