package sim

import (
	"crypto/sha256"
	"net/http"
	"strings"
	"time"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/httpapi"
)

// authenticate finds the bot of "Authorization: Bot <token>" and returns the
// token's hash and a copy of the bot's profile.
func (s *Server) authenticate(r *http.Request) (*bot, [32]byte, profile, *apiError) {
	h := r.Header.Get("Authorization")
	scheme, tok, ok := strings.Cut(h, " ")
	if h == "" {
		return nil, [32]byte{}, profile{}, errUnauthorized("missing Authorization header; send Authorization: Bot <token>")
	}
	tok = strings.TrimSpace(tok)
	if !ok || !strings.EqualFold(scheme, buko.AuthScheme) || tok == "" {
		return nil, [32]byte{}, profile{}, errUnauthorized("malformed Authorization header; send Authorization: Bot <token>")
	}
	sum := sha256.Sum256([]byte(tok))
	s.mu.RLock()
	defer s.mu.RUnlock()
	b := s.state.byToken[sum]
	if b == nil {
		return nil, [32]byte{}, profile{}, errUnauthorized("unknown or revoked bot token")
	}
	return b, sum, b.prof, nil
}

// call is one authenticated Bot API request.
type call struct {
	w    http.ResponseWriter
	r    *http.Request
	b    *bot
	prof profile
	lim  tierLimits
}

// serveREST answers POST /bot/<method>: auth, chaos, the method (quota first,
// then validation, then the chat checks), chaos again for a lost response.
func (s *Server) serveREST(w http.ResponseWriter, r *http.Request) {
	result, err := s.restCall(w, r)
	s.rest.Answer(w, r, result, err)
}

func (s *Server) restCall(w http.ResponseWriter, r *http.Request) (any, error) {
	method := strings.TrimPrefix(r.URL.Path, "/bot/")
	handler := s.restHandler(method)
	if handler == nil {
		return nil, errNotFound("unknown method %q", sanitize(method, 40))
	}
	s.stats.restCalls[method].Add(1)
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return nil, &apiError{Status: http.StatusMethodNotAllowed, Code: buko.CodeBadRequest, Message: "Bot API methods are called with POST"}
	}
	b, _, prof, aerr := s.authenticate(r)
	if aerr != nil {
		return nil, aerr
	}
	lim, _ := limitsFor(prof.tier)
	fault := s.chaos.restCall()
	if fault.latency > 0 {
		t := time.NewTimer(fault.latency)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return httpapi.Written, nil
		}
	}
	switch {
	case fault.fail5xx:
		s.stats.chaos5xx.Add(1)
		return nil, errInternal("temporary failure (injected by chaos)")
	case fault.fail429:
		s.stats.chaos429.Add(1)
		return nil, errRateLimited(1, "rate limited (injected by chaos)")
	}
	result, err := handler(&call{w: w, r: r, b: b, prof: prof, lim: lim})
	if fault.responseLost {
		// The call took effect; the client never learns it.
		s.stats.chaosResponseLost.Add(1)
		panic(http.ErrAbortHandler)
	}
	return result, err
}

// restFunc is one Bot API method: the result, or an error (an *apiError).
type restFunc func(*call) (any, error)

func (s *Server) restHandler(method string) restFunc {
	switch method {
	case "getMe":
		return s.getMe
	case "sendMessage":
		return s.sendMessage
	case "sendChatAction":
		return s.sendChatAction
	case "editMessageText":
		return s.editMessageText
	case "deleteMessage":
		return s.deleteMessage
	case "sendPhoto":
		return s.sendPhoto
	case "sendDocument":
		return s.sendDocument
	case "getUpdates":
		return s.getUpdates
	}
	return nil
}

// takeQuota counts one call against a quota of the bot.
func (s *Server) takeQuota(c *call, q func(*bot) *window, perMinute, perDay int, what string) *apiError {
	c.b.mu.Lock()
	wait := q(c.b).take(s.now(), perMinute, perDay)
	c.b.mu.Unlock()
	if wait > 0 {
		s.stats.rateLimited.Add(1)
		return errRateLimited(wait, what+" quota of the bot's tier exceeded")
	}
	return nil
}

func msgQuota(b *bot) *window    { return &b.msgQuota }
func pollQuota(b *bot) *window   { return &b.pollQuota }
func actionQuota(b *bot) *window { return &b.actionQuota }

func (s *Server) getMe(c *call) (any, error) {
	if aerr := readJSON(c.w, c.r, true, &struct{}{}); aerr != nil {
		return nil, aerr
	}
	p := c.prof
	return buko.Me{
		ID:                     c.b.id,
		IsBot:                  true,
		DisplayName:            p.displayName,
		Handle:                 c.b.handle,
		Status:                 "active",
		Verified:               p.official,
		Official:               p.official,
		QuotaTier:              p.tier,
		GatewayConnectionLimit: p.connLimit,
		Capabilities:           buko.Capabilities{EditDeleteMessages: c.lim.editDelete},
	}, nil
}

// chatForBotLocked resolves chatID for bot b: 404 CHAT_NOT_FOUND for an
// unknown chat or another bot's private chat; 403 BOT_BLOCKED after the user
// blocked the bot; 403 CHAT_FORBIDDEN before /start (or after a stop) and in
// groups the bot is not a member of. Server.mu is held.
func (s *Server) chatForBotLocked(b *bot, chatID string) (*chat, *apiError) {
	if chatID == "" {
		return nil, errBadRequest("chat_id is required")
	}
	ch := s.state.chats[chatID]
	if ch == nil || ch.typ == buko.ChatPrivate && ch.bot != b {
		return nil, &apiError{Status: http.StatusNotFound, Code: buko.CodeChatNotFound, Message: "chat not found"}
	}
	if ch.typ == buko.ChatPrivate {
		switch ch.status {
		case buko.MemberKicked:
			return nil, errForbidden(buko.CodeBotBlocked, "The user has blocked this bot.")
		case buko.MemberMember:
			return ch, nil
		default:
			return nil, errForbidden(buko.CodeChatForbidden, "User has not started this bot.")
		}
	}
	if !ch.hasBot(b) {
		return nil, errForbidden(buko.CodeChatForbidden, "The bot is not a member of this chat.")
	}
	return ch, nil
}

// replyTargetLocked resolves reply_to_message_id within ch.
func replyTargetLocked(ch *chat, id string) (*message, *apiError) {
	if id == "" {
		return nil, nil
	}
	m := ch.message(id)
	if m == nil {
		return nil, errBadRequest("reply_to_message_id %q is not a message of this chat", sanitize(id, 30))
	}
	return m, nil
}

// postBotMessageLocked appends a bot's message to ch. Bots' messages reach
// no bot. Server.mu is held.
func (s *Server) postBotMessageLocked(b *bot, ch *chat, m *message) *buko.Message {
	m.bot = b
	m.date = s.now().Unix()
	ch.append(m)
	delete(ch.actions, b) // the message ends the bot's chat action, as in Buko's clients
	s.stats.messagesSentByBots.Add(1)
	return s.renderMessage(b, ch, m, true)
}

type sendMessageReq struct {
	ChatID           string `json:"chat_id"`
	Text             string `json:"text"`
	ReplyToMessageID string `json:"reply_to_message_id"`
	ParseMode        string `json:"parse_mode"`
}

func (s *Server) sendMessage(c *call) (any, error) {
	if aerr := s.takeQuota(c, msgQuota, c.lim.msgPerMin, c.lim.msgPerDay, "message"); aerr != nil {
		return nil, aerr
	}
	var req sendMessageReq
	if aerr := readJSON(c.w, c.r, true, &req); aerr != nil {
		return nil, aerr
	}
	if req.ChatID == "" {
		return nil, errBadRequest("chat_id is required")
	}
	if aerr := checkText("text", req.Text, true); aerr != nil {
		return nil, aerr
	}
	if aerr := checkParseMode(req.ParseMode); aerr != nil {
		return nil, aerr
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	ch, aerr := s.chatForBotLocked(c.b, req.ChatID)
	if aerr != nil {
		return nil, aerr
	}
	reply, aerr := replyTargetLocked(ch, req.ReplyToMessageID)
	if aerr != nil {
		return nil, aerr
	}
	return s.postBotMessageLocked(c.b, ch, &message{text: req.Text, replyTo: reply}), nil
}

type chatActionReq struct {
	ChatID string `json:"chat_id"`
	Action string `json:"action"`
}

// chatActionTTL is how long a chat action shows (Telegram's 5 s).
const chatActionTTL = 5 * time.Second

func (s *Server) sendChatAction(c *call) (any, error) {
	if aerr := s.takeQuota(c, actionQuota, c.lim.actionPerMin, 0, "chat action"); aerr != nil {
		return nil, aerr
	}
	var req chatActionReq
	if aerr := readJSON(c.w, c.r, true, &req); aerr != nil {
		return nil, aerr
	}
	if req.ChatID == "" {
		return nil, errBadRequest("chat_id is required")
	}
	if !buko.ValidChatAction(req.Action) {
		return nil, errBadRequest("action %q is not one of typing, upload_photo, upload_document, record_voice, upload_voice", sanitize(req.Action, 30))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	ch, aerr := s.chatForBotLocked(c.b, req.ChatID)
	if aerr != nil {
		return nil, aerr
	}
	if ch.actions == nil {
		ch.actions = make(map[*bot]chatAction)
	}
	ch.actions[c.b] = chatAction{action: req.Action, expires: s.now().Add(chatActionTTL)}
	return true, nil
}

type editReq struct {
	ChatID    string `json:"chat_id"`
	MessageID string `json:"message_id"`
	Text      string `json:"text"`
	ParseMode string `json:"parse_mode"`
}

// ownMessageLocked resolves a message the bot wants to edit or delete.
func (s *Server) ownMessageLocked(b *bot, chatID, messageID string) (*chat, *message, *apiError) {
	ch, aerr := s.chatForBotLocked(b, chatID)
	if aerr != nil {
		return nil, nil, aerr
	}
	m := ch.message(messageID)
	if m == nil {
		return nil, nil, errBadRequest("message_id %q is not a message of this chat", sanitize(messageID, 30))
	}
	if m.bot != b {
		return nil, nil, errForbidden(buko.CodeMessageForbidden, "The bot can only edit or delete its own messages.")
	}
	return ch, m, nil
}

func tierRefusal(c *call) *apiError {
	if c.lim.editDelete {
		return nil
	}
	return errForbidden(buko.CodeMethodNotAllowedForTier, "The bot's quota tier ("+c.prof.tier+") does not allow editing or deleting messages.")
}

func (s *Server) editMessageText(c *call) (any, error) {
	if aerr := tierRefusal(c); aerr != nil {
		return nil, aerr
	}
	var req editReq
	if aerr := readJSON(c.w, c.r, true, &req); aerr != nil {
		return nil, aerr
	}
	if req.ChatID == "" || req.MessageID == "" {
		return nil, errBadRequest("chat_id and message_id are required")
	}
	if aerr := checkText("text", req.Text, true); aerr != nil {
		return nil, aerr
	}
	if aerr := checkParseMode(req.ParseMode); aerr != nil {
		return nil, aerr
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	ch, m, aerr := s.ownMessageLocked(c.b, req.ChatID, req.MessageID)
	if aerr != nil {
		return nil, aerr
	}
	if m.text == "" {
		return nil, errBadRequest("the message has no text to edit (media captions cannot be edited)")
	}
	m.text = req.Text
	m.editDate = s.now().Unix()
	return s.renderMessage(c.b, ch, m, true), nil
}

type deleteReq struct {
	ChatID    string `json:"chat_id"`
	MessageID string `json:"message_id"`
}

func (s *Server) deleteMessage(c *call) (any, error) {
	if aerr := tierRefusal(c); aerr != nil {
		return nil, aerr
	}
	var req deleteReq
	if aerr := readJSON(c.w, c.r, true, &req); aerr != nil {
		return nil, aerr
	}
	if req.ChatID == "" || req.MessageID == "" {
		return nil, errBadRequest("chat_id and message_id are required")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	_, m, aerr := s.ownMessageLocked(c.b, req.ChatID, req.MessageID)
	if aerr != nil {
		return nil, aerr
	}
	m.deleted = true
	m.text, m.caption, m.entities, m.targets = "", "", nil, nil
	if m.photo != nil || m.doc != nil {
		for _, id := range fileIDs(m) {
			delete(s.state.files, id)
		}
		m.photo, m.doc = nil, nil
	}
	return true, nil
}

type getUpdatesReq struct {
	Offset  buko.UpdateID `json:"offset"`
	Limit   *int          `json:"limit"`
	Timeout *int          `json:"timeout"`
}

func (s *Server) getUpdates(c *call) (any, error) {
	c.b.mu.Lock()
	active := len(c.b.conns) > 0
	c.b.mu.Unlock()
	if active {
		return nil, &apiError{Status: http.StatusConflict, Code: buko.CodeGatewayActive,
			Message: "getUpdates is not available while the bot has an open Gateway connection"}
	}
	if aerr := s.takeQuota(c, pollQuota, c.lim.pollPerMin, c.lim.pollPerDay, "poll"); aerr != nil {
		return nil, aerr
	}
	var req getUpdatesReq
	if aerr := readJSON(c.w, c.r, true, &req); aerr != nil {
		return nil, aerr
	}
	limit := buko.MaxPollLimit
	if req.Limit != nil {
		limit = *req.Limit
		if limit < 1 || limit > buko.MaxPollLimit {
			return nil, errBadRequest("limit must be between 1 and %d", buko.MaxPollLimit)
		}
	}
	timeout := 0
	if req.Timeout != nil {
		timeout = *req.Timeout
		if timeout < 0 || timeout > buko.MaxPollTimeout {
			return nil, errBadRequest("timeout must be between 0 and %d seconds", buko.MaxPollTimeout)
		}
	}
	out, aerr := s.poll(c.r.Context(), c.b, req.Offset, limit, time.Duration(timeout)*time.Second)
	if aerr != nil {
		return nil, aerr
	}
	return out, nil
}

// fileIDs lists the stored files of a media message.
func fileIDs(m *message) []string {
	var ids []string
	for _, p := range m.photo {
		ids = append(ids, p.FileID)
	}
	if m.doc != nil {
		ids = append(ids, m.doc.FileID)
	}
	return ids
}
