package sim

// The control API's messages: a user posts and edits, the transcript of a
// chat, and the uploaded media files.

import (
	"net/http"
	"strconv"

	"buko.app/agentrunner/buko"
	"buko.app/agentrunner/httpapi"
)

// postUserMessageLocked appends a user's message and delivers it.
func (s *Server) postUserMessageLocked(c *chat, u *user, text string, reply *message) *message {
	ents, targets := parseEntities(text)
	m := &message{user: u, text: text, entities: ents, targets: targets, replyTo: reply, date: s.now().Unix()}
	c.append(m)
	s.deliverLocked(c, m)
	return m
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
