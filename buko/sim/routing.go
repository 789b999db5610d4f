package sim

import (
	"unicode"
	"unicode/utf16"

	"buko.app/agentrunner/buko"
)

// parseEntities finds the bot_command and mention entities of a user's text
// (offsets and lengths in UTF-16 code units) and the lower-case handles it
// addresses: the @handle of /cmd@handle and of every @handle mention.
//
// A command is "/" at the start of the text or after white space, then 1–64
// of [A-Za-z0-9_], then optionally "@" and a handle. A mention is "@" not
// preceded by a word character, then 1–32 of [A-Za-z0-9_].
func parseEntities(text string) (ents []buko.Entity, targets []string) {
	rs := []rune(text)
	off := make([]int, len(rs)+1) // UTF-16 offset of each rune
	for i, r := range rs {
		off[i+1] = off[i] + utf16.RuneLen(r)
		if off[i+1] < off[i] { // invalid rune: counted as U+FFFD, one unit
			off[i+1] = off[i] + 1
		}
	}
	word := func(i int) int { // end of the run of [A-Za-z0-9_] starting at i
		for i < len(rs) && isWordRune(rs[i]) {
			i++
		}
		return i
	}
	for i := 0; i < len(rs); {
		r := rs[i]
		switch {
		case r == '/' && (i == 0 || unicode.IsSpace(rs[i-1])):
			end := word(i + 1)
			if end == i+1 || end-(i+1) > 64 {
				i++
				continue
			}
			if end < len(rs) && rs[end] == '@' {
				if hEnd := word(end + 1); hEnd > end+1 && hEnd-(end+1) <= 32 {
					targets = append(targets, lower(string(rs[end+1:hEnd])))
					end = hEnd
				}
			}
			ents = append(ents, buko.Entity{Type: buko.EntityCommand, Offset: off[i], Length: off[end] - off[i]})
			i = end
		case r == '@' && (i == 0 || !isWordRune(rs[i-1])):
			end := word(i + 1)
			if end == i+1 || end-(i+1) > 32 {
				i++
				continue
			}
			ents = append(ents, buko.Entity{Type: buko.EntityMention, Offset: off[i], Length: off[end] - off[i]})
			targets = append(targets, lower(string(rs[i+1:end])))
			i = end
		default:
			i++
		}
	}
	return ents, targets
}

func isWordRune(r rune) bool {
	return r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9'
}

// sees reports whether bot b gets message m of chat c as an update. In a
// private chat the bot sees every message of its user. In a group, privacy
// mode: only /cmd@its_handle, mentions of @its_handle and replies to its own
// messages; a bare /cmd reaches no bot. Bots never see messages written by a
// bot, their own included.
func sees(b *bot, c *chat, m *message) bool {
	if m.bot != nil {
		return false
	}
	if c.typ == buko.ChatPrivate {
		return c.bot == b && c.status == buko.MemberMember
	}
	if m.replyTo != nil && m.replyTo.bot == b {
		return true
	}
	h := lower(b.handle)
	for _, t := range m.targets {
		if t == h {
			return true
		}
	}
	return false
}

// renderMessage is m as bot b sees it. The replied-to message is included
// one level deep.
func (s *Server) renderMessage(b *bot, c *chat, m *message, withReply bool) *buko.Message {
	out := &buko.Message{
		MessageID: m.id,
		Date:      m.date,
		EditDate:  m.editDate,
		Chat:      c.wire(),
		From:      s.renderFrom(b, m),
		Text:      m.text,
		Caption:   m.caption,
		Entities:  m.entities,
		Photo:     m.photo,
		Document:  m.doc,
	}
	if withReply && m.replyTo != nil && !m.replyTo.deleted {
		out.ReplyToMessage = s.renderMessage(b, c, m.replyTo, false)
	}
	return out
}

func (s *Server) renderFrom(b *bot, m *message) *buko.User {
	if m.bot != nil {
		return &buko.User{ID: m.bot.id, IsBot: true, DisplayName: m.bot.prof.displayName, Handle: m.bot.handle}
	}
	return s.renderUser(b, m.user)
}

// renderUser is user u as bot b sees it: with the bot-scoped id.
func (s *Server) renderUser(b *bot, u *user) *buko.User {
	if u == nil {
		return nil
	}
	return &buko.User{ID: s.state.scopedUserID(b, u), DisplayName: u.displayName, Handle: u.handle}
}

// deliverLocked hands a new user message to every bot that sees it.
// Server.mu is held.
func (s *Server) deliverLocked(c *chat, m *message) {
	for _, b := range s.chatBots(c) {
		if !sees(b, c, m) {
			continue
		}
		m.seenBy = append(m.seenBy, b)
		s.enqueue(b, &buko.Update{Message: s.renderMessage(b, c, m, true)})
	}
}

// deliverEditLocked sends edited_message to the bots that got the message,
// and to those the new text now addresses. Server.mu is held.
func (s *Server) deliverEditLocked(c *chat, m *message) {
	for _, b := range s.chatBots(c) {
		seen := false
		for _, x := range m.seenBy {
			if x == b {
				seen = true
				break
			}
		}
		if !seen && !sees(b, c, m) {
			continue
		}
		if !seen {
			m.seenBy = append(m.seenBy, b)
		}
		if c.typ == buko.ChatPrivate && c.status != buko.MemberMember {
			continue
		}
		s.enqueue(b, &buko.Update{EditedMessage: s.renderMessage(b, c, m, true)})
	}
}

// chatBots lists the bots currently in c.
func (s *Server) chatBots(c *chat) []*bot {
	if c.typ == buko.ChatPrivate {
		return []*bot{c.bot}
	}
	return c.bots
}

// memberChangeLocked sends my_chat_member to b. by may be nil. Server.mu is held.
func (s *Server) memberChangeLocked(b *bot, c *chat, by *user, from, to string) {
	s.enqueue(b, &buko.Update{MyChatMember: &buko.ChatMemberUpdated{
		Chat:          c.wire(),
		From:          s.renderUser(b, by),
		Date:          s.now().Unix(),
		OldChatMember: buko.MemberStatus{Status: from},
		NewChatMember: buko.MemberStatus{Status: to},
	}})
}
